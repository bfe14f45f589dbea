//! Copies bytes between two SSH channels both ways, carrying EOF and close through and
//! counting what went each way.
//!
//! Data moves as the `Bytes` russh decoded, without copying into an intermediate buffer.
//! Each direction reads its source in order, so everything a side sent before its close is
//! forwarded before the close is passed on: nothing acknowledged is lost.

use russh::ChannelMsg;
use russh::ChannelReadHalf;
use russh::ChannelWriteHalf;
use russh::server::Msg;

/// Bytes moved in each direction.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Transferred {
    pub a_to_b: u64,
    pub b_to_a: u64,
}

/// One channel of a splice: its read half and the write half used to send to it.
pub struct End {
    pub read: ChannelReadHalf,
    pub write: ChannelWriteHalf<Msg>,
}

impl End {
    pub fn new(channel: russh::Channel<Msg>) -> Self {
        let (read, write) = channel.split();
        Self { read, write }
    }
}

/// Runs until one side closes (or its session goes away), then closes both.
pub async fn splice(mut a: End, mut b: End) -> Transferred {
    let mut moved = Transferred::default();
    // The direction whose source closed first ends the splice; the other one is cancelled
    // because its destination has just closed and can receive nothing more.
    tokio::select! {
        _ = pipe(&mut a.read, &b.write, &mut moved.a_to_b) => {},
        _ = pipe(&mut b.read, &a.write, &mut moved.b_to_a) => {},
    }
    let _ = a.write.close().await;
    let _ = b.write.close().await;
    moved
}

/// Forwards data and EOF from `from` to `to` until `from` closes or a write fails.
async fn pipe(from: &mut ChannelReadHalf, to: &ChannelWriteHalf<Msg>, count: &mut u64) {
    while let Some(msg) = from.wait().await {
        match msg {
            ChannelMsg::Data { data } => {
                let len = data.len() as u64;
                if to.data_bytes(data).await.is_err() {
                    return;
                }
                *count += len;
            }
            ChannelMsg::Eof if to.eof().await.is_err() => return,
            ChannelMsg::Close => return,
            // TCP-like channels carry nothing else worth relaying.
            _ => {}
        }
    }
}

//! Copies bytes between two SSH channels both ways, carrying EOF and close through and
//! counting what went each way.
//!
//! Data moves as the `Bytes` russh decoded, without copying into an intermediate buffer.
//! Each direction reads its source in order, so everything a side sent before its close is
//! forwarded before the close is passed on: nothing acknowledged is lost.
//!
//! Why each direction has a reader and a writer with a byte budget between them: russh
//! grants window on receipt and delivers to a channel by awaiting a bounded queue inside
//! the session loop. If a direction stopped reading whenever its destination had no window,
//! the source session's loop would stop too — including reading the window adjusts that
//! the *other* direction waits for — and two busy directions could wedge each other. The
//! reader keeps draining into up to [`DIRECTION_BUDGET`] bytes; only past that does it
//! push back on the source session. Protocols relayed here (SSH, HTTP) keep far less than
//! that in flight, so the budget bounds memory without ever being reached in normal use.
//! A raw full-duplex stream with no flow control of its own (e.g. `ssh -W` to an echo
//! server) can still fill both budgets; russh has no consumption-based window to stop
//! its peers (upstream russh PR #730). Such a hop is detected after [`STALL_TIMEOUT`]
//! without progress and closed, which also frees both sessions.

use std::sync::Arc;
use std::time::Duration;

use russh::{ChannelId, ChannelMsg, ChannelReadHalf, ChannelWriteHalf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

/// Bytes one direction may hold between reading its source and writing its destination.
pub const DIRECTION_BUDGET: usize = 16 * 1024 * 1024;

/// How long a direction may sit on a full budget without writing anything before the hop
/// is declared wedged and closed.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long closing a channel may take; a wedged session may not take the message at all.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Bytes moved in each direction, in the hop's words: the first end given to [`splice`] is
/// the engineer's, the second the device's.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Transferred {
    pub to_device: u64,
    pub from_device: u64,
}

/// The message type of a channel's session: the relay's own sessions (server side) and its
/// links to other nodes (client side) both take part in splices.
pub trait SessionMsg: From<(ChannelId, ChannelMsg)> + Send + Sync + 'static {}

impl<S: From<(ChannelId, ChannelMsg)> + Send + Sync + 'static> SessionMsg for S {}

/// One channel of a splice: its read half and the write half used to send to it.
pub struct End<S: SessionMsg> {
    pub read: ChannelReadHalf,
    pub write: ChannelWriteHalf<S>,
    /// Whether stderr-style notices (extended data 1) from the other end are passed to
    /// this one: the agent says there why it closes an engineer's session. Only for
    /// clients known to take them; stock OpenSSH logs "bad ext data" on a `-W` channel.
    pub takes_notices: bool,
}

impl<S: SessionMsg> End<S> {
    pub fn new(channel: russh::Channel<S>) -> Self {
        let (read, write) = channel.split();
        Self {
            read,
            write,
            takes_notices: false,
        }
    }
}

/// Longest notice passed on; a reason is a sentence.
const MAX_NOTICE: usize = 1024;

/// Runs until one side has closed and everything it sent was passed on (or a session went
/// away, or `stop` is cancelled), then closes both.
pub async fn splice<E: SessionMsg, D: SessionMsg>(
    mut engineer: End<E>,
    mut device: End<D>,
    stop: &tokio_util::sync::CancellationToken,
) -> Transferred {
    let mut moved = Transferred::default();
    // The direction whose source closed first ends the splice; the other one is cancelled
    // because its destination has just closed and can receive nothing more.
    let (to_engineer, to_device) = (engineer.takes_notices, device.takes_notices);
    tokio::select! {
        _ = direction(&mut engineer.read, &device.write, to_device, &mut moved.to_device) => {},
        _ = direction(&mut device.read, &engineer.write, to_engineer, &mut moved.from_device) => {},
        () = stop.cancelled() => {},
    }
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        let _ = engineer.write.close().await;
        let _ = device.write.close().await;
    })
    .await;
    moved
}

/// Data or EOF from the source, with the share of the budget that data holds until written.
type Item = (ChannelMsg, Option<OwnedSemaphorePermit>);

async fn direction<S: SessionMsg>(
    from: &mut ChannelReadHalf,
    to: &ChannelWriteHalf<S>,
    notices: bool,
    count: &mut u64,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let budget = Arc::new(Semaphore::new(DIRECTION_BUDGET));
    let reader = read_into(from, tx, budget, notices);
    let writer = write_from(rx, to, count);
    tokio::pin!(reader, writer);
    tokio::select! {
        // The destination failed, or the reader finished and everything was written.
        _ = &mut writer => return,
        finished = &mut reader => if finished == Reader::Stalled {
            return;
        },
    }
    writer.await;
}

#[derive(Debug, PartialEq, Eq)]
enum Reader {
    /// The source closed (or went away); the writer finishes what is queued.
    Done,
    /// The budget stayed full for [`STALL_TIMEOUT`]: the hop is wedged.
    Stalled,
}

/// Reads until the source closes; the queue's end tells the writer.
async fn read_into(
    from: &mut ChannelReadHalf,
    tx: mpsc::UnboundedSender<Item>,
    budget: Arc<Semaphore>,
    notices: bool,
) -> Reader {
    while let Some(msg) = from.wait().await {
        let item = match msg {
            ChannelMsg::Data { ref data } => {
                // A packet is at most the negotiated maximum, far below the budget.
                let want = u32::try_from(data.len()).unwrap_or(u32::MAX);
                let acquire = Arc::clone(&budget).acquire_many_owned(want);
                match tokio::time::timeout(STALL_TIMEOUT, acquire).await {
                    Ok(Ok(permit)) => (msg, Some(permit)),
                    Ok(Err(_)) => return Reader::Done,
                    Err(_) => {
                        tracing::warn!("hop made no progress with a full buffer; closing it");
                        return Reader::Stalled;
                    }
                }
            }
            ChannelMsg::Eof => (msg, None),
            ChannelMsg::ExtendedData { ext: 1, ref data }
                if notices && data.len() <= MAX_NOTICE =>
            {
                (msg, None)
            }
            ChannelMsg::Close => return Reader::Done,
            // TCP-like channels carry nothing else worth relaying.
            _ => continue,
        };
        if tx.send(item).is_err() {
            return Reader::Done;
        }
    }
    Reader::Done
}

async fn write_from<S: SessionMsg>(
    mut rx: mpsc::UnboundedReceiver<Item>,
    to: &ChannelWriteHalf<S>,
    count: &mut u64,
) {
    while let Some((msg, permit)) = rx.recv().await {
        match msg {
            ChannelMsg::Data { data } => {
                let len = data.len() as u64;
                if to.data_bytes(data).await.is_err() {
                    return;
                }
                *count += len;
            }
            ChannelMsg::Eof if to.eof().await.is_err() => return,
            // A notice is a sentence: the clone is a reference count, not a copy.
            ChannelMsg::ExtendedData { ref data, ext }
                if to.extended_data_bytes(ext, data.clone()).await.is_err() =>
            {
                return;
            }
            _ => {}
        }
        drop(permit);
    }
}

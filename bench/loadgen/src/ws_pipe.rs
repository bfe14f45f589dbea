//! The WebSocket framing's own cost, without SSH around it: one process sends MiB through
//! loopback TCP, framed as a client (masking) and read back as the jump host reads it, or
//! raw, the way russh writes and reads (32 KiB packets, each read as its 16-byte first
//! block and then the rest). Run under `valgrind --tool=callgrind` for instruction counts
//! that do not depend on what else the machine is doing (bench/NOTES.md).

use anyhow::Context;
use assist_proto::ws::{Io, Role, WsStream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(clap::Args)]
pub struct Args {
    /// How much to send.
    #[arg(long, default_value_t = 256)]
    mib: usize,
    /// `raw` (TCP as is), `up` (a client's frames read by a server, as the jump host
    /// receives from an engineer or agent) or `down` (a server's frames read by a client).
    #[arg(long, default_value = "up")]
    mode: String,
}

const PACKET: usize = 32 * 1024;
const FIRST_BLOCK: usize = 16;

pub async fn run(args: Args) -> anyhow::Result<()> {
    let (writer_role, reader_role) = match args.mode.as_str() {
        "raw" => (None, None),
        "up" => (Some(Role::Client), Some(Role::Server)),
        "down" => (Some(Role::Server), Some(Role::Client)),
        other => anyhow::bail!("--mode {other}: raw, up or down"),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let total = args.mib * 1024 * 1024;
    let send = tokio::spawn(async move {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let mut io: Box<dyn Io> = match writer_role {
            Some(role) => Box::new(WsStream::new(tcp, role)),
            None => Box::new(tcp),
        };
        let packet = vec![0x5a_u8; PACKET];
        for _ in 0..total / PACKET {
            io.write_all(&packet).await?;
            io.flush().await?;
        }
        io.shutdown().await?;
        anyhow::Ok(())
    });
    let (tcp, _) = listener.accept().await.context("accepting")?;
    tcp.set_nodelay(true)?;
    let mut io: Box<dyn Io> = match reader_role {
        Some(role) => Box::new(WsStream::new(tcp, role)),
        None => Box::new(tcp),
    };
    let mut got = 0usize;
    let mut first = [0u8; FIRST_BLOCK];
    while got < total {
        io.read_exact(&mut first).await?;
        let mut rest = Vec::with_capacity(PACKET - FIRST_BLOCK);
        while rest.len() < PACKET - FIRST_BLOCK {
            let want = (PACKET - FIRST_BLOCK - rest.len()) as u64;
            if (&mut io).take(want).read_buf(&mut rest).await? == 0 {
                anyhow::bail!("ended after {got} bytes");
            }
        }
        got += PACKET;
    }
    send.await??;
    println!("moved {got} bytes ({})", args.mode);
    Ok(())
}

//! Benchmark load generator: many device tunnels from one process (idle cost, reconnect
//! storm), an in-process timer of the key derivation, and the WebSocket framing's cost.
//!
//! Events go to stdout, one per line, so the driver (bench/run.py) can count and time them:
//! `try IDX MS`, `up IDX MS`, `down IDX MS`, `fail IDX MS REASON` (MS = Unix time in ms).

mod tunnels;
mod ws_pipe;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "bench-loadgen", about = "Load generator for bench/run.py")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Holds COUNT device sessions, each with one reverse forward, until stdin closes.
    Tunnels(tunnels::Args),
    /// Times the derivation of a code's two keys (login and attestation, side by side as
    /// support-cli does) in this process and prints `derive_ms MEDIAN MIN MAX`.
    Derive {
        #[arg(long, default_value = "BENCH-0")]
        serial: String,
        #[arg(long, default_value = "7K3QM-2XPD9")]
        code: String,
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Also write the login key here (OpenSSH format), for a stand-in device that
        /// cannot prove the code and so gets no key from `support-cli key`.
        #[arg(long)]
        out: Option<std::path::PathBuf>,
    },
    /// Sends MiB through loopback TCP in one process, raw or in WebSocket frames, to
    /// count what the framing costs (under callgrind).
    WsPipe(ws_pipe::Args),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Tunnels(args) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(tunnels::run(args)),
        Cmd::WsPipe(args) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(ws_pipe::run(args)),
        Cmd::Derive {
            serial,
            code,
            rounds,
            out,
        } => derive(&serial, &code, rounds, out.as_deref()),
    }
}

fn derive(
    serial: &str,
    code: &str,
    rounds: usize,
    out: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let code = assist_proto::OneTimeCode::parse(code)?;
    let mut times = Vec::with_capacity(rounds.max(1));
    for _ in 0..rounds.max(1) {
        let start = std::time::Instant::now();
        let login = assist_proto::attest::derive_keys(serial, &code)?.login;
        times.push(start.elapsed().as_secs_f64() * 1000.0);
        if let Some(out) = out {
            let pem = login.to_openssh(russh::keys::ssh_key::LineEnding::LF)?;
            assist_proto::private_file::write_private(
                out,
                pem.as_bytes(),
                assist_proto::private_file::Existing::Replace,
            )?;
        }
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    let (min, max) = (times[0], times[times.len() - 1]);
    println!("derive_ms {median:.1} {min:.1} {max:.1}");
    Ok(())
}

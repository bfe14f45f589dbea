//! Many device sessions against a jump host (ours or OpenSSH's), each logged in with one
//! shared device key and holding one `tcpip-forward`, reconnecting with the agent's backoff.

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use russh::client;
use russh::keys::PrivateKeyWithHashAlg;
use russh::keys::PublicKeyOrCertificate;
use tokio::io::AsyncReadExt;
use tokio::sync::Semaphore;

#[derive(clap::Args)]
pub struct Args {
    /// The jump host's SSH address.
    #[arg(long)]
    addr: String,
    /// The device key (OpenSSH private key file), shared by every session.
    #[arg(long)]
    key: std::path::PathBuf,
    /// How many sessions.
    #[arg(long)]
    count: usize,
    /// Index of the first session (to add sessions to those another run already holds).
    #[arg(long, default_value_t = 0)]
    first: usize,
    /// Session IDX logs in as PREFIX<IDX> ...
    #[arg(long, default_value = "BENCH-")]
    user_prefix: String,
    /// ... unless a fixed user is given (OpenSSH's jump host: root).
    #[arg(long)]
    user: Option<String>,
    /// The port asked in tcpip-forward (OpenSSH: 0, a port is allocated per tunnel).
    #[arg(long, default_value_t = 22)]
    forward_port: u32,
    #[arg(long, default_value = "127.0.0.1")]
    forward_address: String,
    /// Logins in flight at once during the initial ramp (keep below the server's MaxStartups).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Reconnect after a lost session (the agent's behaviour), instead of giving up.
    #[arg(long)]
    reconnect: bool,
    /// Failed attempts before a session gives up when not reconnecting.
    #[arg(long, default_value_t = 5)]
    max_failures: u32,
    /// `--addr` is the jump host's API address: SSH inside a WebSocket at /v1/ssh.
    #[arg(long)]
    ws: bool,
    /// Spread the sessions over this many loopback source addresses (127.0.0.1, .2, ...):
    /// one source address reaches one port of the jump host through at most as many
    /// connections as there are ephemeral ports (about 28,000 by default).
    #[arg(long, default_value_t = 1)]
    sources: u8,
}

struct Device;

impl client::Handler for Device {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        _key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        // Loopback benchmark against a jump host started by the same script.
        Ok(true)
    }
}

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

fn event(kind: &str, idx: usize, extra: &str) {
    let mut out = std::io::stdout().lock();
    // A closed stdout means the driver is gone; the process ends with stdin anyway.
    let _ = writeln!(out, "{kind} {idx} {}{extra}", now_ms());
    let _ = out.flush();
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let key = russh::keys::load_secret_key(&args.key, None)
        .with_context(|| format!("load device key {}", args.key.display()))?;
    let key = Arc::new(key);
    // The agent's own settings, so each simulated device costs the jump host what a real one does.
    let config = assist_proto::ssh::client_config();
    let args = Arc::new(args);
    let gate = Arc::new(Semaphore::new(args.concurrency.max(1)));
    for idx in args.first..args.first + args.count {
        let (args, key, config, gate) = (args.clone(), key.clone(), config.clone(), gate.clone());
        tokio::spawn(async move { device(idx, &args, key, config, &gate).await });
    }
    // The driver ends the run by closing stdin.
    let mut sink = [0u8; 256];
    let mut stdin = tokio::io::stdin();
    while stdin.read(&mut sink).await.unwrap_or(0) > 0 {}
    std::process::exit(0)
}

async fn device(
    idx: usize,
    args: &Args,
    key: Arc<russh::keys::PrivateKey>,
    config: Arc<client::Config>,
    gate: &Semaphore,
) {
    let user = match &args.user {
        Some(u) => u.clone(),
        None => format!("{}{idx}", args.user_prefix),
    };
    let mut failures = 0u32;
    let mut ever_up = false;
    loop {
        let attempt = {
            // Only the initial ramp is bounded; reconnects are independent devices, each on
            // its own backoff, as a real fleet after a jump-host restart.
            let _permit = if ever_up {
                None
            } else {
                let Ok(permit) = gate.acquire().await else {
                    return;
                };
                Some(permit)
            };
            event("try", idx, "");
            tokio::time::timeout(
                Duration::from_secs(60),
                login(args, idx, &user, key.clone(), config.clone()),
            )
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("timeout")))
        };
        match attempt {
            Ok(session) => {
                event("up", idx, "");
                ever_up = true;
                let _ = session.await;
                event("down", idx, "");
                if !args.reconnect {
                    return;
                }
                // As the agent: a session that worked starts the backoff over.
                failures = 1;
            }
            Err(e) => {
                let reason = format!("{e:#}").replace(char::is_whitespace, "_");
                event("fail", idx, &format!(" {reason}"));
                failures += 1;
                if !args.reconnect && failures > args.max_failures {
                    return;
                }
            }
        }
        tokio::time::sleep(assist_proto::backoff::backoff(failures)).await;
    }
}

async fn login(
    args: &Args,
    idx: usize,
    user: &str,
    key: Arc<russh::keys::PrivateKey>,
    config: Arc<client::Config>,
) -> anyhow::Result<client::Handle<Device>> {
    let mut session = if args.ws {
        let url = assist_proto::ws::WsUrl::parse(&format!("ws://{}/v1/ssh", args.addr))
            .map_err(anyhow::Error::msg)?;
        let io = assist_proto::ws::connect(&url, None, None, Duration::from_secs(30))
            .await
            .map_err(anyhow::Error::msg)?;
        client::connect_stream(config, io, Device).await?
    } else if args.sources > 1 {
        let addr: std::net::SocketAddr = args.addr.parse().context("--addr with --sources")?;
        let source =
            std::net::Ipv4Addr::new(127, 0, 0, 1 + (idx % usize::from(args.sources)) as u8);
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind((source, 0).into())?;
        let tcp = socket.connect(addr).await?;
        tcp.set_nodelay(true)?;
        client::connect_stream(config, tcp, Device).await?
    } else {
        client::connect(config, args.addr.as_str(), Device).await?
    };
    let auth = session
        .authenticate_publickey(user, PrivateKeyWithHashAlg::new(key, None))
        .await?;
    anyhow::ensure!(auth.success(), "auth refused");
    session
        .tcpip_forward(args.forward_address.as_str(), args.forward_port)
        .await
        .context("tcpip-forward")?;
    Ok(session)
}

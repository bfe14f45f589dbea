//! `support-cli forward`: a local listener whose every connection is relayed to one service
//! of a device, all over one jump host session.

use anyhow::Context;
use std::io::Write;
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};

use crate::config::Settings;
use crate::error::UsageError;
use crate::hop::{self, Jump, JumpLogin};
use crate::key;
use crate::progress::Progress;

/// A device service: a name the agent knows, or a port number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub name: String,
    pub port: u32,
}

impl Service {
    pub fn parse(s: &str) -> Result<Self, UsageError> {
        let port = match s {
            "ssh" => assist_proto::limits::SSH_SERVICE_PORT,
            "http" => assist_proto::limits::HTTP_SERVICE_PORT,
            n => n
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .map(u32::from)
                .ok_or_else(|| {
                    UsageError(format!(
                        "--service {s:?}: expected ssh, http or a port number"
                    ))
                })?,
        };
        Ok(Self {
            name: s.to_string(),
            port,
        })
    }
}

/// Arguments of `forward`.
pub struct ForwardArgs {
    pub serial: String,
    pub service: String,
    pub listen: String,
}

pub async fn run(
    settings: &Settings,
    args: ForwardArgs,
    progress: &Progress,
) -> anyhow::Result<i32> {
    key::check_serial(&args.serial)?;
    let service = Service::parse(&args.service)?;
    let addr = settings.jump_addr()?;
    let listener = TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let local = listener
        .local_addr()
        .context("reading the listening address")?;

    let login = JumpLogin {
        addr: &addr,
        engineer: settings.engineer()?,
        identity: &settings.identity,
        known_hosts: &settings.known_hosts,
    };
    let jump = Arc::new(hop::connect_jump(login, progress).await?);
    progress.done(None);
    progress.stop();
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "forwarding {local} -> {}:{}",
        args.serial, service.name
    )?;
    out.flush()?;
    drop(out);

    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("watching SIGTERM")?;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = terminate.recv() => break,
            _ = jump.closed.cancelled() => {
                return Err(crate::error::HopError::JumpLost.into());
            }
            accepted = listener.accept() => {
                let (tcp, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: keep serving the others.
                        tracing::warn!("accepting a connection on {local}: {e}");
                        continue;
                    }
                };
                let jump = jump.clone();
                let serial = args.serial.clone();
                let port = service.port;
                let progress = progress.clone();
                tokio::spawn(async move {
                    if let Err(e) = relay(&jump, tcp, &serial, port).await {
                        progress.note(&format!("connection from {peer}: {e}"));
                    }
                });
            }
        }
    }
    jump.disconnect().await;
    Ok(0)
}

async fn relay(jump: &Jump, mut tcp: TcpStream, serial: &str, port: u32) -> anyhow::Result<()> {
    let _ = tcp.set_nodelay(true);
    let peer = tcp.peer_addr().context("reading the peer address")?;
    let channel = jump.open(serial, port, peer).await?;
    let mut stream = channel.into_stream();
    let (up, down) = tokio::io::copy_bidirectional(&mut tcp, &mut stream)
        .await
        .context("relaying")?;
    tracing::debug!(%peer, up, down, "connection relayed");
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn services() {
        assert_eq!(Service::parse("ssh").unwrap().port, 22);
        assert_eq!(Service::parse("http").unwrap().port, 80);
        assert_eq!(Service::parse("8080").unwrap().port, 8080);
        for bad in ["", "0", "70000", "https", "-1"] {
            assert!(Service::parse(bad).is_err(), "{bad}");
        }
    }
}

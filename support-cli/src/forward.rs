//! `support-cli forward`: a local listener whose every connection is relayed to one service
//! of a device, all over one jump host session: ssh straight to the device's virtual ssh
//! port, every other service inside the SSH session that the code opens.

use anyhow::Context;
use assist_proto::OneTimeCode;
use assist_proto::limits::SSH_SERVICE_PORT as SSH_PORT;
use std::io::Write;
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};

use crate::config::Settings;
use crate::error::UsageError;
use crate::hop::{self, Device, Jump};
use crate::keys;
use crate::progress::Progress;
use crate::prove;

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
    /// The one-time code: needed for every service but ssh.
    pub code: Option<String>,
    pub user: String,
    /// `HOST:PORT` of the service as the device reaches it; default `127.0.0.1:PORT`.
    pub to: Option<String>,
}

/// Where a service other than ssh is reached on the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    pub port: u32,
}

/// Checks the flags before anything is sent: ssh goes straight through the jump host (its
/// stream is SSH already), every other service needs the code and goes inside the session.
pub fn plan(
    service: &Service,
    code: Option<&str>,
    to: Option<&str>,
) -> Result<Option<(OneTimeCode, Target)>, UsageError> {
    if service.port == SSH_PORT {
        if code.is_some() || to.is_some() {
            return Err(UsageError(
                "--service ssh takes no --code or --to: its stream is SSH already and goes \
                 straight to the device's sshd"
                    .into(),
            ));
        }
        return Ok(None);
    }
    let Some(code) = code else {
        return Err(UsageError(format!(
            "--service {} travels inside the device's SSH session, which the code opens: pass \
             --code CODE (the customer's one-time code)",
            service.name
        )));
    };
    let code = keys::parse_code(code)?;
    let target = match to {
        None => Target {
            host: "127.0.0.1".into(),
            port: service.port,
        },
        Some(to) => {
            let bad = || UsageError(format!("--to {to:?}: expected HOST:PORT"));
            let (host, port) = to.rsplit_once(':').ok_or_else(bad)?;
            let port = port
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(bad)?;
            if host.is_empty() {
                return Err(bad());
            }
            Target {
                host: host.trim_start_matches('[').trim_end_matches(']').into(),
                port: u32::from(port),
            }
        }
    };
    Ok(Some((code, target)))
}

/// Says whether the device is online now (the other routes prove the code, which needs it
/// online). Offline is not an error: the listener serves once the customer enables
/// assistance. A refusal that waiting cannot change (outside the engineer's serials) is.
async fn online(jump: &Jump, serial: &str, progress: &Progress) -> anyhow::Result<()> {
    let origin = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    // The attestation port asks the agent for nothing but its public proof; a device
    // without it (stock ssh -R) is refused as connected without that port.
    match jump
        .open(serial, assist_proto::limits::ATTESTATION_PORT, origin)
        .await
    {
        Ok(channel) => {
            let _ = channel.close().await;
            progress.note(&format!("device {serial} is online"));
        }
        Err(crate::error::HopError::ChannelRefused { reason, .. })
            if reason.contains("offers no port") =>
        {
            progress.note(&format!("device {serial} is online"));
        }
        Err(crate::error::HopError::DeviceNotConnected { .. }) => {
            progress.note(&format!(
                "device {serial} is not connected yet (the customer has not enabled \
                 assistance, or its tunnel is down); listening anyway: connections made before \
                 it is online are refused"
            ));
        }
        Err(e) => return Err(e.into()),
    }
    Ok(())
}

/// Where accepted connections go.
enum Route {
    /// Through the jump host to the device's virtual ssh port.
    Jump { port: u32 },
    /// Inside the SSH session the code opened, to `target` on the device.
    Session { device: Device, target: Target },
}

pub async fn run(
    settings: &Settings,
    args: ForwardArgs,
    progress: &Progress,
) -> anyhow::Result<i32> {
    keys::check_serial(&args.serial)?;
    let service = Service::parse(&args.service)?;
    let inside = plan(&service, args.code.as_deref(), args.to.as_deref())?;
    let addrs = settings.jump_addrs()?;
    let listener = TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let local = listener
        .local_addr()
        .context("reading the listening address")?;

    // Argon2 and the jump host login each take a good part of the startup; overlap them.
    let inside = inside.map(|(code, target)| {
        let derivation = prove::start_derivation(&args.serial, &code);
        (code, derivation, target)
    });
    let jump = Arc::new(hop::connect_first(settings, &addrs, progress).await?.0);
    let route = match inside {
        Some((code, derivation, target)) => {
            let proven = prove::prove(&jump, &args.serial, &code, derivation, progress).await?;
            let device = jump
                .login_device(proven, &args.user, &settings.known_hosts, progress)
                .await?;
            Route::Session { device, target }
        }
        None => {
            online(&jump, &args.serial, progress).await?;
            Route::Jump { port: service.port }
        }
    };
    let route = Arc::new(route);
    progress.done(None);
    progress.stop();
    let mut out = std::io::stdout().lock();
    match route.as_ref() {
        Route::Jump { .. } => writeln!(
            out,
            "forwarding {local} -> {}:{}",
            args.serial, service.name
        )?,
        Route::Session { target, .. } => writeln!(
            out,
            "forwarding {local} -> {}:{} (inside the SSH session, to {}:{} on the device)",
            args.serial, service.name, target.host, target.port
        )?,
    }
    out.flush()?;
    drop(out);

    let session_closed = match route.as_ref() {
        Route::Session { device, .. } => device.closed.clone(),
        Route::Jump { .. } => tokio_util::sync::CancellationToken::new(),
    };
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("watching SIGTERM")?;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = terminate.recv() => break,
            _ = jump.closed.cancelled() => {
                return Err(crate::error::HopError::JumpLost.into());
            }
            _ = session_closed.cancelled() => {
                let said = match route.as_ref() {
                    Route::Session { device, .. } => device.farewell(),
                    _ => None,
                };
                return Err(match said {
                    Some(why) => crate::error::HopError::Ended { serial: args.serial, why },
                    None => crate::error::HopError::SessionEnded { serial: args.serial },
                }
                .into());
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
                let route = route.clone();
                let serial = args.serial.clone();
                let progress = progress.clone();
                tokio::spawn(async move {
                    if let Err(e) = relay(&jump, &route, tcp, &serial).await {
                        progress.note(&format!("connection from {peer}: {e:#}"));
                    }
                });
            }
        }
    }
    if let Route::Session { device, .. } = route.as_ref() {
        let _ = device
            .handle
            .disconnect(russh::Disconnect::ByApplication, "", "en")
            .await;
    }
    jump.disconnect().await;
    Ok(0)
}

async fn relay(jump: &Jump, route: &Route, mut tcp: TcpStream, serial: &str) -> anyhow::Result<()> {
    let _ = tcp.set_nodelay(true);
    let peer = tcp.peer_addr().context("reading the peer address")?;
    let channel = match route {
        Route::Jump { port } => jump.open(serial, *port, peer).await?,
        Route::Session { device, target } => {
            device.open(serial, &target.host, target.port, peer).await?
        }
    };
    let relayed = assist_proto::ssh::relay_channel(&mut tcp, channel)
        .await
        .context("relaying")?;
    tracing::debug!(
        %peer,
        up = relayed.to_channel,
        down = relayed.from_channel,
        "connection relayed"
    );
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

    #[test]
    fn only_ssh_goes_without_the_code_and_targets_are_checked() {
        let ssh = Service::parse("ssh").unwrap();
        let http = Service::parse("http").unwrap();
        assert!(plan(&ssh, None, None).unwrap().is_none());
        assert!(plan(&ssh, Some("7K3QM-2XPD9"), None).is_err());
        let err = plan(&http, None, None).unwrap_err().0;
        assert!(err.contains("pass --code CODE"), "{err}");
        let (_, target) = plan(&http, Some("7K3QM-2XPD9"), None).unwrap().unwrap();
        assert_eq!(
            target,
            Target {
                host: "127.0.0.1".into(),
                port: 80
            }
        );
        let (_, target) = plan(&http, Some("7K3QM-2XPD9"), Some("[::1]:8080"))
            .unwrap()
            .unwrap();
        assert_eq!((target.host.as_str(), target.port), ("::1", 8080));
        for bad in ["host", ":80", "h:0", "h:x"] {
            assert!(
                plan(&http, Some("7K3QM-2XPD9"), Some(bad)).is_err(),
                "{bad}"
            );
        }
        assert!(plan(&http, Some("bad"), None).is_err());
    }
}

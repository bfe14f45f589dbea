//! `direct-tcpip` on the built-in target: to the configured services only, by their local
//! address (the way the `http` service reaches the engineer end to end with this target).

use super::Connection;
use russh::ChannelOpenFailure;
use russh::server::{ChannelOpenHandle, Msg};
use std::sync::Arc;
use std::time::Duration;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

pub(super) async fn run(
    channel: russh::Channel<Msg>,
    reply: ChannelOpenHandle,
    host: String,
    port: u32,
    conn: Arc<Connection>,
) {
    let asked = format!("{host}:{port}");
    let allowed = conn.user == conn.window.account.name
        && conn
            .window
            .forwards
            .iter()
            .any(|s| same_address(&s.target, &host, port));
    if !allowed {
        tracing::warn!(
            to = %asked,
            "direct-tcpip refused: not a configured service of this device (or not the \
             target user's login)"
        );
        reply
            .reject(ChannelOpenFailure::AdministrativelyProhibited)
            .await;
        return;
    }
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(&asked)).await;
    let mut tcp = match tcp {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(e)) => {
            tracing::warn!(to = %asked, "cannot connect to the service: {e}");
            reply.reject(ChannelOpenFailure::ConnectFailed).await;
            return;
        }
        Err(_) => {
            tracing::warn!(to = %asked, "timed out connecting to the service");
            reply.reject(ChannelOpenFailure::ConnectFailed).await;
            return;
        }
    };
    reply.accept().await;
    tracing::info!(to = %asked, "forwarding to a service");
    tokio::select! {
        r = assist_proto::ssh::relay_channel(&mut tcp, channel) => {
            if let Err(e) = r {
                tracing::debug!(to = %asked, "forward ended: {e}");
            }
        }
        () = conn.stop.cancelled() => {}
    }
}

/// Whether `host:port` names the service at `target` (`HOST:PORT` as configured).
fn same_address(target: &str, host: &str, port: u32) -> bool {
    let Some((t_host, t_port)) = crate::config::split_host_port(target) else {
        return false;
    };
    let t_host = t_host.trim_start_matches('[').trim_end_matches(']');
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if u32::from(t_port) != port {
        return false;
    }
    match (
        t_host.parse::<std::net::IpAddr>(),
        host.parse::<std::net::IpAddr>(),
    ) {
        (Ok(a), Ok(b)) => a == b,
        _ => t_host.eq_ignore_ascii_case(host),
    }
}

#[cfg(test)]
mod tests {
    use super::same_address;

    #[test]
    fn only_the_configured_address_matches() {
        assert!(same_address("127.0.0.1:80", "127.0.0.1", 80));
        assert!(same_address("localhost:8080", "LOCALHOST", 8080));
        assert!(same_address("[::1]:80", "::1", 80));
        assert!(!same_address("127.0.0.1:80", "127.0.0.1", 81));
        assert!(!same_address("127.0.0.1:80", "127.0.0.2", 80));
        assert!(!same_address("127.0.0.1:80", "localhost", 80));
    }
}

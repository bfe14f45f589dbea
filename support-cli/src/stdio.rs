//! `support-cli stdio SERIAL[:PORT]`: one relayed connection on stdin/stdout, as a
//! `ProxyCommand` for stock ssh (`ssh -o ProxyCommand='support-cli stdio %h' root@SN-0001`),
//! so stock tools reach a device over whatever transport support-cli speaks (a `wss://`
//! jump host through a 443-only firewall included).

use std::net::{Ipv4Addr, SocketAddr};

use anyhow::Context;

use crate::config::Settings;
use crate::error::UsageError;
use crate::hop;
use crate::keys;
use crate::progress::Progress;

/// `SERIAL` or `SERIAL:PORT` (port 22, the device's ssh service, when absent).
pub fn parse_target(target: &str) -> Result<(String, u32), UsageError> {
    let (serial, port) = match target.rsplit_once(':') {
        Some((serial, port)) => {
            let port = port
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| UsageError(format!("{target:?}: {port:?} is not a port")))?;
            (serial, u32::from(port))
        }
        None => (target, assist_proto::limits::SSH_SERVICE_PORT),
    };
    Ok((serial.to_owned(), port))
}

pub async fn run(settings: &Settings, target: &str, progress: &Progress) -> anyhow::Result<i32> {
    let (serial, port) = parse_target(target)?;
    keys::check_serial(&serial)?;
    let addrs = settings.jump_addrs()?;
    let (jump, _) = hop::connect_first(settings, &addrs, progress).await?;
    progress.stop();
    let channel = jump
        .open(&serial, port, SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .await?;
    let mut stdio = tokio::io::join(crate::stdin::Stdin::open(), tokio::io::stdout());
    assist_proto::ssh::relay_channel(&mut stdio, channel)
        .await
        .context("relaying stdin/stdout")?;
    jump.disconnect().await;
    Ok(0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        assert_eq!(parse_target("SN-1").unwrap(), ("SN-1".into(), 22));
        assert_eq!(parse_target("sn-1:80").unwrap(), ("sn-1".into(), 80));
        assert!(parse_target("SN-1:0").is_err());
        assert!(parse_target("SN-1:x").is_err());
    }
}

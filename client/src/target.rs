//! The customer's SSH server (the `ssh` service): which one it is (the identification line it
//! sends), so the key line uses options it understands, and whether it really lets the code's
//! key in, checked by logging in once at enable.

use russh::client;
use russh::keys::{PrivateKey, PrivateKeyWithHashAlg};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;

/// How long reaching the SSH server, and the login check, may take.
const TIMEOUT: Duration = Duration::from_secs(10);
/// RFC 4253: the identification line is at most 255 bytes; lines before it may come first.
const MAX_PREAMBLE: usize = 8 * 1024;

/// The SSH server families whose key options differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Reads `expiry-time=` and `from=`: the server enforces the window and loopback-only.
    OpenSsh,
    /// Rejects a line with `expiry-time=` or `from=` outright: the agent alone enforces both.
    Dropbear,
    /// Anything else gets the OpenSSH form; the login check tells whether it took.
    Other,
}

/// What the agent knows of the server, shown on `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Server {
    /// `HOST:PORT` of the `ssh` service.
    pub address: String,
    /// The software part of its identification line (`OpenSSH_9.2p1`, `dropbear_2022.83`).
    pub software: String,
    pub kind: Kind,
}

impl Server {
    /// Whether the server itself enforces the window's end and loopback-only.
    pub fn enforces_expiry(&self) -> bool {
        self.kind != Kind::Dropbear
    }

    /// One sentence on who enforces what, for `status` and the logs.
    pub fn guarantees(&self) -> String {
        match self.kind {
            Kind::Dropbear => format!(
                "{} has no expiry-time or from options: the window's end is enforced by this \
                 agent alone (the key line goes when the window ends, at stop, and when the \
                 agent starts again after a crash), and the key is not limited to loopback",
                self.software
            ),
            Kind::OpenSsh => format!(
                "{} enforces the window's end (expiry-time) and loopback-only (from) itself",
                self.software
            ),
            Kind::Other => format!(
                "{} is not a server this agent knows; it got OpenSSH's key options, and the \
                 login check at enable showed that it takes them",
                self.software
            ),
        }
    }
}

/// Reads the server's identification line (`SSH-2.0-dropbear_2022.83 …`).
pub async fn identify(address: &str) -> Result<Server, String> {
    let read = async {
        let mut tcp = tokio::net::TcpStream::connect(address)
            .await
            .map_err(|e| format!("cannot reach the SSH server at {address}: {e}"))?;
        let mut seen = Vec::new();
        let mut chunk = [0u8; 512];
        loop {
            let n = tcp
                .read(&mut chunk)
                .await
                .map_err(|e| format!("the SSH server at {address} did not say hello: {e}"))?;
            if n == 0 {
                return Err(format!(
                    "the SSH server at {address} closed the connection before saying hello"
                ));
            }
            seen.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&seen);
            // Only a whole line: the last one may still be arriving.
            if let Some(line) = text
                .split_inclusive('\n')
                .find(|l| l.starts_with("SSH-") && l.ends_with('\n'))
            {
                return Ok(parse_identification(address, line));
            }
            if seen.len() > MAX_PREAMBLE {
                return Err(format!("{address} does not speak SSH"));
            }
        }
    };
    tokio::time::timeout(TIMEOUT, read)
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "the SSH server at {address} did not answer in time"
            ))
        })
}

fn parse_identification(address: &str, line: &str) -> Server {
    // SSH-protoversion-softwareversion SP comments
    let software = line
        .trim_end()
        .splitn(3, '-')
        .nth(2)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or("")
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(64)
        .collect::<String>();
    let lower = software.to_ascii_lowercase();
    let kind = if lower.starts_with("openssh") {
        Kind::OpenSsh
    } else if lower.starts_with("dropbear") {
        Kind::Dropbear
    } else {
        Kind::Other
    };
    Server {
        address: address.to_string(),
        software: if software.is_empty() {
            "an unnamed SSH server".into()
        } else {
            software
        },
        kind,
    }
}

/// Logs in to the server as `user` with the code's key, as the engineer will, and logs out.
/// Returns how long it took.
pub async fn check_login(
    server: &Server,
    user: &str,
    key: &PrivateKey,
    keys_file: &std::path::Path,
) -> Result<Duration, String> {
    let started = Instant::now();
    let refused = || {
        let hint = match server.kind {
            Kind::OpenSsh => {
                " (check sshd_config: AuthorizedKeysFile, AllowUsers/DenyUsers, \
                 PubkeyAuthentication, PermitRootLogin)"
            }
            Kind::Dropbear => {
                " (Dropbear reads only ~/.ssh/authorized_keys, and refuses it when the home \
                 folder, .ssh or the file is writable by others)"
            }
            Kind::Other => "",
        };
        format!(
            "the SSH server on {} ({}) refused the key: it does not read {} or rejects its \
             options{hint}",
            server.address,
            server.software,
            keys_file.display()
        )
    };
    let attempt = async {
        let tcp = tokio::net::TcpStream::connect(&server.address)
            .await
            .map_err(|e| format!("cannot reach the SSH server at {}: {e}", server.address))?;
        let config = Arc::new(client::Config::default());
        let any_host_key = crate::attest::Scan {
            seen: Arc::default(),
            accept: true,
        };
        let mut handle = client::connect_stream(config, tcp, any_host_key)
            .await
            .map_err(|e| {
                format!(
                    "SSH with the server on {} ({}) failed: {e}",
                    server.address, server.software
                )
            })?;
        let key = PrivateKeyWithHashAlg::new(Arc::new(key.clone()), None);
        let auth = handle
            .authenticate_publickey(user, key)
            .await
            .map_err(|e| format!("logging in to {} failed: {e}", server.address))?;
        let _ = handle
            .disconnect(russh::Disconnect::ByApplication, "", "en")
            .await;
        if auth.success() {
            Ok(())
        } else {
            Err(refused())
        }
    };
    tokio::time::timeout(TIMEOUT, attempt)
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "the SSH server on {} did not finish the login check in time",
                server.address
            ))
        })?;
    Ok(started.elapsed())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn identification_lines_name_the_server() {
        let s = parse_identification("127.0.0.1:22", "SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r");
        assert_eq!(
            (s.software.as_str(), s.kind),
            ("OpenSSH_9.2p1", Kind::OpenSsh)
        );
        assert!(s.enforces_expiry());
        let s = parse_identification("127.0.0.1:22", "SSH-2.0-dropbear_2022.83");
        assert_eq!(
            (s.software.as_str(), s.kind),
            ("dropbear_2022.83", Kind::Dropbear)
        );
        assert!(!s.enforces_expiry());
        assert!(s.guarantees().contains("agent alone"));
        let s = parse_identification("h:22", "SSH-2.0-Go");
        assert_eq!(s.kind, Kind::Other);
        let s = parse_identification("h:22", "SSH-2.0-");
        assert_eq!(s.software, "an unnamed SSH server");
        let s = parse_identification("h:22", "SSH-2.0-evil\u{1b}[31mred");
        assert!(!s.software.contains('\u{1b}'));
    }

    #[tokio::test]
    async fn identify_reads_the_line_after_a_preamble() {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.unwrap();
            tcp.write_all(b"hello there\r\nSSH-2.0-dropbear_2022.83\r\n")
                .await
                .unwrap();
            let _ = tcp.read(&mut [0u8; 1]).await;
        });
        let s = identify(&addr).await.unwrap();
        assert_eq!(s.kind, Kind::Dropbear);
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gone = closed.local_addr().unwrap().to_string();
        drop(closed);
        assert!(identify(&gone).await.unwrap_err().contains("cannot reach"));
    }
}

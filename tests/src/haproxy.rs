//! A stock HAProxy (Debian's) in TCP mode in front of the jump host's API, sending the PROXY
//! protocol header, configured with the block the README gives operators. Its connections to
//! the jump host come from their own loopback address, so a test can tell the proxy's address
//! from the client's.

use std::fs;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::Command;

use crate::process::Proc;

pub struct Haproxy {
    pub proc: Proc,
    pub addr: SocketAddr,
}

/// The README's haproxy block, between its `haproxy-snippet` markers.
pub fn readme_snippet() -> String {
    crate::files::readme_snippet("haproxy", "haproxy")
}

impl Haproxy {
    /// Starts HAProxy forwarding to `api`, connecting from `source`.
    pub fn start(dir: &Path, api: SocketAddr, source: IpAddr) -> Haproxy {
        let dir = dir.join("haproxy");
        fs::create_dir_all(&dir).expect("create haproxy dir");
        let (proc, addr) = crate::process::start_on_free_port("haproxy", |port| {
            let listen = SocketAddr::from(([127, 0, 0, 1], port));
            let proxied = readme_snippet()
                .replace("LISTEN", &listen.to_string())
                .replace("API", &api.to_string())
                .replace("send-proxy-v2", &format!("send-proxy-v2 source {source}"));
            let conf = dir.join("haproxy.cfg");
            fs::write(
                &conf,
                format!(
                    "global\n    log stderr format raw local0 info\n\
                     defaults\n    log global\n    option tcplog\n    timeout connect 5s\n\
                     \x20   timeout client 1h\n    timeout server 1h\n{proxied}\n"
                ),
            )
            .expect("write haproxy.cfg");
            let mut cmd = Command::new("haproxy");
            cmd.arg("-db").arg("-f").arg(&conf);
            Proc::spawn(cmd, "haproxy")
        });
        Haproxy { proc, addr }
    }
}

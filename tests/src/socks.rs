//! A stock SOCKS5 proxy (Debian's microsocks) on a free loopback port, for customers and
//! engineers whose only way out is one. Its outgoing address is `bind`, so a jump host whose
//! `client_cidrs` holds only that address admits devices through the proxy alone.

use std::net::SocketAddr;
use std::process::Command;

use crate::process::Proc;

pub struct Microsocks {
    pub proc: Proc,
    pub addr: SocketAddr,
}

impl Microsocks {
    /// Starts microsocks; `auth` is `(user, password)` for RFC 1929 authentication, which it
    /// then requires of every client.
    pub fn start(bind: Option<&str>, auth: Option<(&str, &str)>) -> Microsocks {
        let (proc, addr) = crate::process::start_on_free_port("microsocks", |port| {
            let mut cmd = Command::new("microsocks");
            cmd.args(["-i", "127.0.0.1", "-p", &port.to_string()]);
            if let Some(bind) = bind {
                cmd.args(["-b", bind]);
            }
            if let Some((user, password)) = auth {
                cmd.args(["-u", user, "-P", password]);
            }
            Proc::spawn(cmd, "microsocks")
        });
        Microsocks { proc, addr }
    }

    /// What microsocks has logged: a `client[N] SOURCE: connected to HOST:PORT` line for
    /// each connection it made.
    pub fn log(&self) -> String {
        self.proc.stderr()
    }
}

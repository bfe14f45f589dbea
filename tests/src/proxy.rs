//! A stock forward proxy (Debian's tinyproxy) on a free loopback port, for the tests of
//! customers who can leave only through one. Its outgoing address is `bind`, so a jump host
//! whose `client_cidrs` holds only that address admits devices through the proxy alone.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::process::Proc;

pub struct Tinyproxy {
    pub proc: Proc,
    pub addr: SocketAddr,
    pub log: PathBuf,
}

impl Tinyproxy {
    /// Starts tinyproxy in the foreground; `auth` is `(user, password)` for Basic auth.
    pub fn start(dir: &Path, bind: &str, auth: Option<(&str, &str)>) -> Tinyproxy {
        let dir = dir.join("tinyproxy");
        fs::create_dir_all(&dir).expect("create tinyproxy dir");
        let log = dir.join("tinyproxy.log");
        let (proc, addr) = crate::process::start_on_free_port("tinyproxy", |port| {
            let mut conf = format!(
                "Port {port}\nListen 127.0.0.1\nBind {bind}\nTimeout 600\nMaxClients 200\n\
                 LogFile \"{}\"\nLogLevel Connect\nAllow 127.0.0.1\n",
                log.display()
            );
            if let Some((user, password)) = auth {
                conf.push_str(&format!("BasicAuth {user} {password}\n"));
            }
            let conf_file = dir.join("tinyproxy.conf");
            fs::write(&conf_file, conf).expect("write tinyproxy.conf");
            let mut cmd = Command::new("tinyproxy");
            cmd.arg("-d").arg("-c").arg(&conf_file);
            Proc::spawn(cmd, "tinyproxy")
        });
        Tinyproxy { proc, addr, log }
    }

    /// What tinyproxy has logged (its CONNECT lines among them).
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

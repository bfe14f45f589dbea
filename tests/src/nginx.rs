//! A stock nginx (Debian's) terminating TLS on a free loopback port in front of the jump
//! host's API, configured with the server block the README gives operators.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::process::Proc;

pub struct Nginx {
    pub proc: Proc,
    pub addr: SocketAddr,
    /// The CA (a self-signed certificate for `localhost` and 127.0.0.1) clients trust.
    pub cert: PathBuf,
    pub dir: PathBuf,
}

/// The README's nginx block, between its `nginx-snippet` markers.
pub fn readme_snippet() -> String {
    crate::files::readme_snippet("nginx", "nginx")
}

impl Nginx {
    /// Starts nginx proxying to `api` with a certificate it makes for localhost.
    pub fn start(dir: &Path, api: SocketAddr) -> Nginx {
        let dir = dir.join("nginx");
        fs::create_dir_all(dir.join("tmp")).expect("create nginx dir");
        let cert = dir.join("cert.pem");
        let key = dir.join("key.pem");
        let mut openssl = Command::new("openssl");
        openssl
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
            ])
            .args(["-nodes", "-days", "1", "-subj", "/CN=localhost"])
            .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
            // A server certificate that is its own anchor: webpki refuses a CA as a leaf.
            .args(["-addext", "basicConstraints=critical,CA:FALSE"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert);
        crate::process::run_ok(&mut openssl, "openssl");
        let (proc, addr) = crate::process::start_on_free_port("nginx", |port| {
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let server = readme_snippet()
                .replace("LISTEN", &addr.to_string())
                .replace("API", &api.to_string())
                .replace("CERT", &cert.display().to_string())
                .replace("KEY", &key.display().to_string());
            let d = dir.display();
            // One process: a master's worker outlives the master's SIGKILL on drop, and an
            // orphaned worker keeps the files its parent held (seen: the build lock).
            let conf = format!(
                "daemon off;\nmaster_process off;\nworker_processes 1;\nuser root;\n\
                 pid {d}/nginx.pid;\nerror_log {d}/error.log info;\n\
                 events {{ worker_connections 256; }}\n\
                 http {{\n  access_log {d}/access.log;\n  client_body_temp_path {d}/tmp;\n\
                 proxy_temp_path {d}/tmp;\n  fastcgi_temp_path {d}/tmp;\n  \
                 uwsgi_temp_path {d}/tmp;\n  scgi_temp_path {d}/tmp;\n{server}\n}}\n"
            );
            let conf_file = dir.join("nginx.conf");
            fs::write(&conf_file, conf).expect("write nginx.conf");
            let mut cmd = Command::new("nginx");
            cmd.arg("-p").arg(&dir).arg("-c").arg(&conf_file);
            Proc::spawn(cmd, "nginx")
        });
        Nginx {
            proc,
            addr,
            cert,
            dir,
        }
    }

    /// nginx's access log (one line per request, the WebSocket upgrades among them).
    pub fn access_log(&self) -> String {
        fs::read_to_string(self.dir.join("access.log")).unwrap_or_default()
    }
}

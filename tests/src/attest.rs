//! The agent's proof of the code, made by the test for worlds whose "device" is stock
//! `ssh -R` in front of a stock sshd: a loopback listener that hands every connection the
//! signed attestation of the given host keys, as the agent does on its reserved port.

use std::io::Write;
use std::net::{SocketAddr, TcpListener};

use russh::keys::PublicKey;

/// The document the agent would sign for `serial`, `code` and these host key lines.
pub fn document(serial: &str, code: &str, host_keys: &[&str]) -> String {
    let code = assist_proto::OneTimeCode::parse(code).expect("code");
    let key = assist_proto::attest::derive_attestation_key(serial, &code).expect("derive");
    let host_keys = host_keys
        .iter()
        .map(|line| PublicKey::from_openssh(line).expect("host key line"))
        .collect();
    assist_proto::attest::Attestation {
        serial: serial.to_string(),
        host_keys,
    }
    .sign(&key)
    .expect("sign")
}

/// Serves `document` to every connection on a free loopback port, for the life of the test
/// process; returns the address (for `ssh -R 1:ADDR`).
pub fn serve(document: String) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind attestation listener");
    let addr = listener.local_addr().expect("local addr");
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let _ = conn.write_all(document.as_bytes());
        }
    });
    addr
}

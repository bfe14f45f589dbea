//! The agent's half of the device's proof that it knows the code: it reads its SSH server's
//! host keys with a handshake per key type (as `ssh-keyscan` does), signs them with the
//! window's attestation key (`assist_proto::attest`), and hands the document to each engineer
//! that asks for it on the reserved port `ATTESTATION_PORT` of the tunnel.

use assist_proto::attest::{Attestation, MAX_HOST_KEYS};
use assist_proto::lock;
use russh::keys::{Algorithm, EcdsaCurve, HashAlg, PrivateKey, PublicKey};
use russh::{Preferred, client};
use std::borrow::Cow;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long one handshake with the local SSH server may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// The host key types asked for, one handshake each; a server without one of them just
/// fails that handshake.
const KEY_TYPES: &[Algorithm] = &[
    Algorithm::Ed25519,
    Algorithm::Ecdsa {
        curve: EcdsaCurve::NistP256,
    },
    Algorithm::Ecdsa {
        curve: EcdsaCurve::NistP384,
    },
    Algorithm::Ecdsa {
        curve: EcdsaCurve::NistP521,
    },
    Algorithm::Rsa {
        hash: Some(HashAlg::Sha512),
    },
];

/// Where the attested host keys come from.
pub enum HostKeys {
    /// Read from the SSH server at `HOST:PORT` (the `ssh` service's target).
    Scan(String),
    /// Already known: the built-in target's, derived from the code.
    Known(Vec<PublicKey>),
}

/// Signs the window's attestation, reading the host keys once they are first needed (and
/// again after a failure, so an SSH server started after enable is still attested).
pub struct Attestor {
    serial: String,
    host_keys: HostKeys,
    key: PrivateKey,
    document: tokio::sync::Mutex<Option<Arc<String>>>,
}

impl Attestor {
    pub fn new(serial: String, host_keys: HostKeys, key: PrivateKey) -> Self {
        Self {
            serial,
            host_keys,
            key,
            document: tokio::sync::Mutex::new(None),
        }
    }

    /// The signed document, made on first use.
    pub async fn document(&self) -> Result<Arc<String>, String> {
        let mut slot = self.document.lock().await;
        if let Some(doc) = slot.as_ref() {
            return Ok(doc.clone());
        }
        let host_keys = match &self.host_keys {
            HostKeys::Scan(target) => host_keys(target).await?,
            HostKeys::Known(keys) => keys.clone(),
        };
        let doc = Attestation {
            serial: self.serial.clone(),
            host_keys,
        }
        .sign(&self.key)
        .map_err(|e| e.to_string())?;
        let doc = Arc::new(doc);
        *slot = Some(doc.clone());
        Ok(doc)
    }
}

/// The host keys the SSH server at `target` presents, one per key type it has.
pub async fn host_keys(target: &str) -> Result<Vec<PublicKey>, String> {
    let mut scans = tokio::task::JoinSet::new();
    for (i, alg) in KEY_TYPES.iter().enumerate() {
        let (target, alg) = (target.to_string(), alg.clone());
        scans.spawn(async move { (i, scan(&target, alg).await) });
    }
    // In KEY_TYPES order, so the document does not depend on which handshake won.
    let mut results = scans.join_all().await;
    results.sort_by_key(|(i, _)| *i);
    let mut keys: Vec<PublicKey> = Vec::new();
    let mut first_error = None;
    for (_, result) in results {
        match result {
            Ok(key) if !keys.iter().any(|k| k.key_data() == key.key_data()) => keys.push(key),
            Ok(_) => {}
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    keys.truncate(MAX_HOST_KEYS);
    if keys.is_empty() {
        return Err(format!(
            "cannot read the host keys of the SSH server at {target}: {}",
            first_error.unwrap_or_else(|| "no key offered".into())
        ));
    }
    Ok(keys)
}

/// One handshake that asks for host key type `alg` and stops once the key is seen.
async fn scan(target: &str, alg: Algorithm) -> Result<PublicKey, String> {
    let seen = Arc::new(Mutex::new(None));
    let handler = Scan {
        seen: seen.clone(),
        accept: false,
    };
    let config = Arc::new(client::Config {
        preferred: Preferred {
            key: Cow::Owned(vec![alg]),
            ..Preferred::default()
        },
        ..Default::default()
    });
    let attempt = async {
        let tcp = tokio::net::TcpStream::connect(target)
            .await
            .map_err(|e| e.to_string())?;
        // The handler refuses the key once it has it, which ends the handshake; an error here
        // is only news when no key was seen.
        let _ = client::connect_stream(config, tcp, handler).await;
        Ok::<(), String>(())
    };
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, attempt).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e),
        Err(_) => return Err("the SSH handshake timed out".into()),
    }
    let key = lock::mutex(&seen).take();
    key.ok_or_else(|| "no host key of this type".into())
}

/// The client side of a handshake with the target's SSH server that notes the host key it
/// shows. A scan refuses the key once seen, which ends the handshake; the login check
/// (`target::check_login`) accepts any: the server is the agent's own configured one, and
/// which key it shows is what the attestation reports. One handler type for both, so
/// russh's client is compiled once for them (50 KB of the static agent each).
pub(crate) struct Scan {
    pub(crate) seen: Arc<Mutex<Option<PublicKey>>>,
    pub(crate) accept: bool,
}

impl client::Handler for Scan {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        *lock::mutex(&self.seen) = Some(key.public_key().clone());
        Ok(self.accept)
    }
}

//! The API's certificate, replaced while serving: an ACME client renews the configured files
//! every few weeks, and a restart just for that would drop every hop in progress.
//!
//! The files are checked every second (size and modification time, following symlinks as
//! certbot's `live/` folder uses them) and re-read on SIGHUP; a new pair is served from the
//! next handshake on. A pair that cannot be read, or whose key does not fit, is logged and
//! the certificate in use kept, so a half-written renewal changes nothing.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use anyhow::Context;
use assist_proto::cert_fingerprint::CertFingerprint;
use assist_proto::lock;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_util::sync::CancellationToken;

use super::cert::read_pair;

/// The certificate handshakes get now, since when, and why the latest reload failed.
pub struct LiveCert {
    current: RwLock<(Arc<CertifiedKey>, SystemTime)>,
    error: Mutex<Option<String>>,
}

/// What `assist-jumphost status` shows of it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CertState {
    /// `sha256:…` of the leaf served.
    pub fingerprint: String,
    /// When it was loaded (Unix seconds): at start, or by the latest good reload.
    pub since: u64,
    /// Why the latest reload failed (the certificate above is still served); none once a
    /// reload works again.
    pub reload_error: Option<String>,
}

impl LiveCert {
    pub fn new(first: Arc<CertifiedKey>) -> Self {
        Self {
            current: RwLock::new((first, SystemTime::now())),
            error: Mutex::new(None),
        }
    }

    pub fn current(&self) -> Arc<CertifiedKey> {
        let current = lock::read(&self.current);
        Arc::clone(&current.0)
    }

    fn replace(&self, next: Arc<CertifiedKey>) {
        *lock::write(&self.current) = (next, SystemTime::now());
        self.set_error(None);
    }

    fn set_error(&self, error: Option<String>) {
        *lock::mutex(&self.error) = error;
    }

    /// SHA-256 of the leaf in use, as printed at start and pinned by agents.
    pub fn fingerprint(&self) -> Option<CertFingerprint> {
        self.current()
            .cert
            .first()
            .map(|leaf| CertFingerprint::of_der(leaf))
    }

    /// When the leaf in use expires (its notAfter, Unix seconds), if it can be read.
    pub fn expiry(&self) -> Option<i64> {
        let current = self.current();
        let leaf = current.cert.first()?;
        let (_, cert) = x509_parser::parse_x509_certificate(leaf).ok()?;
        Some(cert.validity().not_after.timestamp())
    }

    pub fn state(&self) -> CertState {
        let since = lock::read(&self.current).1;
        CertState {
            fingerprint: self
                .fingerprint()
                .map(|fp| fp.to_string())
                .unwrap_or_default(),
            since: since
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            reload_error: lock::mutex(&self.error).clone(),
        }
    }
}

/// A rustls server config on the ring provider, TLS 1.2 and 1.3, HTTP/1.1 by ALPN, serving
/// whatever certificate `live` holds at each handshake.
pub fn server_config(live: Arc<LiveCert>) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("choosing TLS versions")?
        .with_no_client_auth()
        .with_cert_resolver(live);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

impl fmt::Debug for LiveCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LiveCert")
            .field("fingerprint", &self.fingerprint().map(|fp| fp.to_string()))
            .finish()
    }
}

impl ResolvesServerCert for LiveCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// Re-reads `cert` and `key` into `live` when either changes or on SIGHUP, until `shutdown`.
pub fn spawn_reloader(
    cert: PathBuf,
    key: PathBuf,
    live: Arc<LiveCert>,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let (stamp_cert, stamp_key) = (cert.clone(), key.clone());
    crate::reload::spawn_on_change(
        "API certificate",
        move || stamp(&stamp_cert, &stamp_key),
        move |trigger| {
            reload(&cert, &key, &live, trigger);
            std::future::ready(())
        },
        shutdown,
    )
}

/// Reads the pair and serves it if it is whole; says in the log what happened either way.
pub fn reload(cert: &Path, key: &Path, live: &LiveCert, trigger: &'static str) {
    let before = live
        .fingerprint()
        .map(|fp| fp.to_string())
        .unwrap_or_default();
    let next =
        read_pair(cert, "api_tls.cert", key, "api_tls.key").and_then(|pair| pair.certified_key());
    match next {
        Ok(next) => {
            live.replace(next);
            let after = live
                .fingerprint()
                .map(|fp| fp.to_string())
                .unwrap_or_default();
            if after == before {
                tracing::info!(trigger, fingerprint = %after, "api tls certificate re-read; unchanged");
            } else {
                tracing::info!(trigger, fingerprint = %after, previous = %before, "api tls certificate reloaded");
            }
        }
        Err(err) => {
            // State first, then the log line: whoever reads the log can ask status at once.
            let error = format!("{err:#}");
            live.set_error(Some(error.clone()));
            tracing::error!(
                trigger,
                error,
                serving = %before,
                "api tls certificate not reloaded; still serving the previous one"
            );
        }
    }
}

type Stamp = [Option<(u64, SystemTime)>; 2];

fn stamp(cert: &Path, key: &Path) -> Stamp {
    let one = |path: &Path| {
        let meta = std::fs::metadata(path).ok()?;
        Some((meta.len(), meta.modified().ok()?))
    };
    [one(cert), one(key)]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::cert::load;
    use crate::config::ApiTls;

    /// A fresh self-signed pair in `dir` (made through the self-signed path, then used as
    /// configured files).
    fn pair(dir: &Path) -> (PathBuf, PathBuf) {
        let tls = ApiTls::SelfSigned { names: vec![] };
        load(&tls, dir, "127.0.0.1:0".parse().unwrap()).unwrap();
        (
            dir.join(super::super::cert::SELF_SIGNED_CERT_FILE),
            dir.join(super::super::cert::SELF_SIGNED_KEY_FILE),
        )
    }

    fn live_from(cert: &Path, key: &Path) -> LiveCert {
        let first = read_pair(cert, "c", key, "k")
            .unwrap()
            .certified_key()
            .unwrap();
        LiveCert::new(first)
    }

    #[test]
    fn a_new_pair_is_served_and_a_broken_one_changes_nothing() {
        let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (cert_a, key_a) = pair(one.path());
        let (cert_b, key_b) = pair(two.path());
        let live = live_from(&cert_a, &key_a);
        let first = live.fingerprint().unwrap();

        // The renewal: both files replaced.
        std::fs::copy(&cert_b, &cert_a).unwrap();
        std::fs::copy(&key_b, &key_a).unwrap();
        reload(&cert_a, &key_a, &live, "test");
        let second = live.fingerprint().unwrap();
        assert_ne!(first, second);
        assert_eq!(Some(second), live_from(&cert_b, &key_b).fingerprint());

        // Half a renewal: a new certificate whose key has not been written yet.
        let three = tempfile::tempdir().unwrap();
        let (cert_c, _) = pair(three.path());
        std::fs::copy(&cert_c, &cert_a).unwrap();
        reload(&cert_a, &key_a, &live, "test");
        assert_eq!(live.fingerprint().unwrap(), second);
        let state = live.state();
        assert_eq!(state.fingerprint, second.to_string());
        let error = state.reload_error.unwrap();
        assert!(error.contains("does not fit the certificate"), "{error}");
        // Garbage, and a missing file.
        std::fs::write(&cert_a, "not a certificate").unwrap();
        reload(&cert_a, &key_a, &live, "test");
        std::fs::remove_file(&key_a).unwrap();
        reload(&cert_a, &key_a, &live, "test");
        assert_eq!(live.fingerprint().unwrap(), second);
        // A good pair again clears the error.
        std::fs::copy(&cert_b, &cert_a).unwrap();
        std::fs::copy(&key_b, &key_a).unwrap();
        reload(&cert_a, &key_a, &live, "test");
        assert_eq!(live.state().reload_error, None);
    }

    #[test]
    fn expiry_is_the_leafs_not_after_and_follows_a_renewal() {
        let dir = tempfile::tempdir().unwrap();
        let write = |year: i32| {
            let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
            params.not_after = rcgen::date_time_ymd(year, 5, 17);
            let key = rcgen::KeyPair::generate().unwrap();
            let cert = params.self_signed(&key).unwrap();
            let (c, k) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
            std::fs::write(&c, cert.pem()).unwrap();
            std::fs::write(&k, key.serialize_pem()).unwrap();
            (c, k)
        };
        let (cert, key) = write(2031);
        let live = live_from(&cert, &key);
        // 2031-05-17T00:00:00Z (`date -u -d 2031-05-17 +%s`).
        assert_eq!(live.expiry(), Some(1_936_742_400));
        let (cert, key) = write(2032);
        reload(&cert, &key, &live, "test");
        // 2032-05-17T00:00:00Z: a year and a leap day later.
        assert_eq!(live.expiry(), Some(1_936_742_400 + 366 * 86_400));
    }

    #[test]
    fn stamp_changes_with_either_file() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = pair(dir.path());
        let before = stamp(&cert, &key);
        assert_eq!(before, stamp(&cert, &key));
        std::fs::write(&key, "shorter").unwrap();
        assert_ne!(before, stamp(&cert, &key));
        std::fs::remove_file(&cert).unwrap();
        assert_eq!(stamp(&cert, &key)[0], None);
    }
}

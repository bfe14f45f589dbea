//! The registration API's TLS certificate: PEM files named in `[api_tls]`, or a self-signed
//! one made on first start in `data_dir` and reused afterwards (so pinned fingerprints stay
//! valid across restarts).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use assist_proto::private_file;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::sign::CertifiedKey;

use crate::config::ApiTls;

/// The self-signed certificate (PEM) in `data_dir`.
pub const SELF_SIGNED_CERT_FILE: &str = "api-cert.pem";
/// Its private key (PEM, mode 0600) in `data_dir`.
pub const SELF_SIGNED_KEY_FILE: &str = "api-key.pem";

/// A certificate chain (leaf first) with its key, ready for rustls.
pub struct ApiCert {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    /// The two files, for error messages.
    files: String,
}

impl ApiCert {
    /// SHA-256 of the leaf, as `LiveCert::fingerprint` gives it for the one served.
    #[cfg(test)]
    pub fn fingerprint(&self) -> Option<assist_proto::cert_fingerprint::CertFingerprint> {
        use assist_proto::cert_fingerprint::CertFingerprint;
        self.chain.first().map(|leaf| CertFingerprint::of_der(leaf))
    }

    /// The chain and its key as rustls serves them; fails if the key does not fit the leaf.
    pub fn certified_key(self) -> anyhow::Result<Arc<CertifiedKey>> {
        let provider = rustls::crypto::ring::default_provider();
        let certified =
            CertifiedKey::from_der(self.chain, self.key, &provider).with_context(|| {
                format!(
                    "{}: the private key does not fit the certificate, or is of a kind rustls \
                 cannot use",
                    self.files
                )
            })?;
        Ok(Arc::new(certified))
    }
}

/// Loads the configured files, or loads (creating on first start) the self-signed pair in
/// `data_dir`. Errors name the config key and the file.
pub fn load(tls: &ApiTls, data_dir: &Path, api_listen: SocketAddr) -> anyhow::Result<ApiCert> {
    match tls {
        ApiTls::Files { cert, key } => read_pair(cert, "api_tls.cert", key, "api_tls.key"),
        ApiTls::SelfSigned { names } => {
            let cert = data_dir.join(SELF_SIGNED_CERT_FILE);
            let key = data_dir.join(SELF_SIGNED_KEY_FILE);
            // The certificate is written last, so its presence means the pair is complete.
            if !cert.exists() {
                create_self_signed(&cert, &key, &subject_alt_names(api_listen, names))?;
            }
            let pair = read_pair(&cert, "api_tls.self_signed", &key, "api_tls.self_signed")?;
            let missing = names_not_covered(&pair.chain[0], names);
            if !missing.is_empty() {
                // Not made anew on its own: that would change the fingerprint agents pin.
                let warning = format!(
                    "api_tls.names {} are not in {}, which was made before they were \
                     configured; delete it and {} and restart to make a new certificate \
                     (its fingerprint changes)",
                    missing.join(", "),
                    cert.display(),
                    key.display()
                );
                tracing::warn!("{warning}");
            }
            Ok(pair)
        }
    }
}

pub fn read_pair(
    cert: &Path,
    cert_key: &str,
    key_path: &Path,
    key_key: &str,
) -> anyhow::Result<ApiCert> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("{cert_key}: reading certificate {}", cert.display()))?;
    if chain.is_empty() {
        anyhow::bail!(
            "{cert_key}: {} holds no certificate (expected -----BEGIN CERTIFICATE-----)",
            cert.display()
        );
    }
    let key = PrivateKeyDer::from_pem_file(key_path).with_context(|| {
        format!(
            "{key_key}: reading private key {} (PEM: PKCS#8, PKCS#1 or SEC1)",
            key_path.display()
        )
    })?;
    let files = format!(
        "{cert_key} {} and {key_key} {}",
        cert.display(),
        key_path.display()
    );
    Ok(ApiCert { chain, key, files })
}

/// The configured names the certificate is not valid for.
fn names_not_covered(leaf: &CertificateDer<'_>, names: &[String]) -> Vec<String> {
    let Ok(cert) = webpki::EndEntityCert::try_from(leaf) else {
        return names.to_vec();
    };
    names
        .iter()
        .filter(|name| {
            ServerName::try_from(name.as_str())
                .map_or(true, |n| cert.verify_is_valid_for_subject_name(&n).is_err())
        })
        .cloned()
        .collect()
}

/// localhost and the loopback addresses (so a local health check verifies), the listen
/// address unless it is a wildcard, and the configured names.
fn subject_alt_names(api_listen: SocketAddr, names: &[String]) -> Vec<String> {
    let mut all: BTreeSet<String> = ["localhost", "127.0.0.1", "::1"]
        .into_iter()
        .map(String::from)
        .collect();
    if !api_listen.ip().is_unspecified() {
        all.insert(api_listen.ip().to_string());
    }
    all.extend(names.iter().cloned());
    all.into_iter().collect()
}

fn create_self_signed(cert: &Path, key: &Path, names: &[String]) -> anyhow::Result<()> {
    let key_pair = rcgen::KeyPair::generate().context("making a key for the API certificate")?;
    let mut params =
        rcgen::CertificateParams::new(names.to_vec()).context("naming the API certificate")?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        "assist-jumphost registration API",
    );
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let certificate = params
        .self_signed(&key_pair)
        .context("signing the API certificate")?;
    write_file(key, key_pair.serialize_pem().as_bytes(), 0o600)
        .with_context(|| format!("writing {}", key.display()))?;
    write_file(cert, certificate.pem().as_bytes(), 0o644)
        .with_context(|| format!("writing {}", cert.display()))?;
    tracing::info!(
        cert = %cert.display(),
        names = %names.join(","),
        "created a self-signed API certificate"
    );
    Ok(())
}

/// A crash leaves either no file or a whole one, and a key is never readable by others,
/// even briefly.
fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), private_file::PrivateFileError> {
    let options = private_file::WriteOptions {
        mode,
        owner: None,
        existing: private_file::Existing::Replace,
    };
    private_file::write(path, bytes, &options)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn listen() -> SocketAddr {
        "192.0.2.10:8443".parse().unwrap()
    }

    #[test]
    fn self_signed_is_made_once_with_a_private_key_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let tls = ApiTls::SelfSigned {
            names: vec!["jump.example.com".into()],
        };
        let first = load(&tls, dir.path(), listen()).unwrap();
        let second = load(&tls, dir.path(), listen()).unwrap();
        assert_eq!(first.fingerprint(), second.fingerprint());
        assert_eq!(first.chain.len(), 1);
        let mode = |f: &str| {
            std::fs::metadata(dir.path().join(f))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode(SELF_SIGNED_KEY_FILE), 0o600);
        assert_eq!(mode(SELF_SIGNED_CERT_FILE), 0o644);
        first.certified_key().unwrap();
    }

    #[test]
    fn names_added_after_the_certificate_was_made_are_found_missing() {
        let dir = tempfile::tempdir().unwrap();
        let tls = ApiTls::SelfSigned {
            names: vec!["jump.example.com".into(), "203.0.113.7".into()],
        };
        let made = load(&tls, dir.path(), listen()).unwrap();
        let leaf = &made.chain[0];
        let now = ["jump.example.com", "203.0.113.7", "localhost", "::1"].map(String::from);
        assert!(names_not_covered(leaf, &now).is_empty());
        let later = ["jump.example.com", "new.example.com", "198.51.100.1"].map(String::from);
        assert_eq!(
            names_not_covered(leaf, &later),
            ["new.example.com", "198.51.100.1"]
        );
        // Loading with the new names keeps the old certificate (and its fingerprint).
        let grown = ApiTls::SelfSigned {
            names: later.to_vec(),
        };
        let again = load(&grown, dir.path(), listen()).unwrap();
        assert_eq!(again.fingerprint(), made.fingerprint());
    }

    #[test]
    fn self_signed_names_cover_loopback_the_listen_address_and_the_configured_names() {
        let names = subject_alt_names(listen(), &["jump.example.com".into()]);
        for want in [
            "localhost",
            "127.0.0.1",
            "::1",
            "192.0.2.10",
            "jump.example.com",
        ] {
            assert!(names.iter().any(|n| n == want), "{want}: {names:?}");
        }
        let wildcard = subject_alt_names("0.0.0.0:0".parse().unwrap(), &[]);
        assert!(!wildcard.iter().any(|n| n == "0.0.0.0"), "{wildcard:?}");
    }

    #[test]
    fn configured_files_are_served_and_errors_name_key_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let made = ApiTls::SelfSigned { names: vec![] };
        let want = load(&made, dir.path(), listen()).unwrap().fingerprint();
        let files = ApiTls::Files {
            cert: dir.path().join(SELF_SIGNED_CERT_FILE),
            key: dir.path().join(SELF_SIGNED_KEY_FILE),
        };
        assert_eq!(
            load(&files, dir.path(), listen()).unwrap().fingerprint(),
            want
        );

        let missing = ApiTls::Files {
            cert: dir.path().join("nope.crt"),
            key: dir.path().join(SELF_SIGNED_KEY_FILE),
        };
        let err = format!("{:#}", load(&missing, dir.path(), listen()).err().unwrap());
        assert!(
            err.contains("api_tls.cert") && err.contains("nope.crt"),
            "{err}"
        );

        std::fs::write(dir.path().join("empty.pem"), "not pem\n").unwrap();
        let no_cert = ApiTls::Files {
            cert: dir.path().join("empty.pem"),
            key: dir.path().join(SELF_SIGNED_KEY_FILE),
        };
        let err = format!("{:#}", load(&no_cert, dir.path(), listen()).err().unwrap());
        assert!(err.contains("holds no certificate"), "{err}");

        let key_is_cert = ApiTls::Files {
            cert: dir.path().join(SELF_SIGNED_CERT_FILE),
            key: dir.path().join(SELF_SIGNED_CERT_FILE),
        };
        let err = format!(
            "{:#}",
            load(&key_is_cert, dir.path(), listen()).err().unwrap()
        );
        assert!(err.contains("api_tls.key"), "{err}");
    }

    #[test]
    fn a_key_that_does_not_fit_the_certificate_is_refused() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let made = ApiTls::SelfSigned { names: vec![] };
        load(&made, a.path(), listen()).unwrap();
        load(&made, b.path(), listen()).unwrap();
        let mixed = ApiTls::Files {
            cert: a.path().join(SELF_SIGNED_CERT_FILE),
            key: b.path().join(SELF_SIGNED_KEY_FILE),
        };
        let err = format!(
            "{:#}",
            load(&mixed, a.path(), listen())
                .unwrap()
                .certified_key()
                .err()
                .unwrap()
        );
        assert!(err.contains("does not fit"), "{err}");
    }
}

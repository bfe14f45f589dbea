//! How the agent trusts an `https://` jump host API: the system's CA certificates, a CA
//! file from the config (`api_ca_file`), or exactly one pinned certificate
//! (`api_fingerprint`, as the jump host prints it). rustls on the ring provider.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use assist_proto::cert_fingerprint::CertFingerprint;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, OtherError, RootCertStore, SignatureScheme};

/// Which certificates the agent accepts from the jump host API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiTrust {
    /// The operating system's CA certificates (a certificate from a public or company CA).
    SystemRoots,
    /// The CA certificates (or the self-signed certificate itself) in this PEM file.
    CaFile(PathBuf),
    /// Exactly the certificate with this fingerprint, whatever its names, issuer or dates.
    Fingerprint(CertFingerprint),
}

/// The pinned certificate was not the one offered. Carried inside the rustls error so the
/// registration can report it in these words.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "the jump host API's certificate fingerprint {offered} does not match api_fingerprint \
     {pinned}"
)]
pub struct PinMismatch {
    pub offered: CertFingerprint,
    pub pinned: CertFingerprint,
}

/// Reads the certificates of a PEM file; at least one.
pub fn read_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read certificates from {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{} holds no certificate (expected -----BEGIN CERTIFICATE-----)",
            path.display()
        ));
    }
    Ok(certs)
}

/// The rustls client config for `trust`.
pub fn client_config(trust: &ApiTrust) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("choosing TLS versions: {e}"))?;
    let config = match trust {
        ApiTrust::Fingerprint(pinned) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinVerifier::new(*pinned, &provider)))
            .with_no_client_auth(),
        ApiTrust::CaFile(path) => {
            let mut roots = RootCertStore::empty();
            for cert in read_ca_file(path)? {
                roots
                    .add(cert)
                    .map_err(|e| format!("api_ca_file {}: {e}", path.display()))?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        ApiTrust::SystemRoots => builder
            .with_root_certificates(system_roots()?)
            .with_no_client_auth(),
    };
    Ok(config)
}

fn system_roots() -> Result<RootCertStore, String> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let why: Vec<String> = found.errors.iter().map(ToString::to_string).collect();
        return Err(format!(
            "no CA certificates found on this system ({}); install ca-certificates, or set \
             api_ca_file or api_fingerprint",
            why.join("; ")
        ));
    }
    Ok(roots)
}

/// Accepts exactly the pinned leaf certificate. Names, issuer and dates are not looked at:
/// the pin says which certificate this is. The handshake signature is still verified with
/// the provider's algorithms, so only the holder of that certificate's key gets through.
#[derive(Debug)]
pub struct PinVerifier {
    pinned: CertFingerprint,
    algorithms: WebPkiSupportedAlgorithms,
}

impl PinVerifier {
    pub fn new(pinned: CertFingerprint, provider: &CryptoProvider) -> Self {
        Self {
            pinned,
            algorithms: provider.signature_verification_algorithms,
        }
    }
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let offered = CertFingerprint::of_der(end_entity);
        if offered == self.pinned {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                OtherError(Arc::new(PinMismatch {
                    offered,
                    pinned: self.pinned,
                })),
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The TLS failure somewhere in an error's source chain, in words an operator can act on.
pub fn describe_tls_failure(error: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(tls) = as_rustls(e) {
            return Some(describe(tls));
        }
        current = e.source();
    }
    None
}

/// The rustls error that `e` is or wraps: tokio-rustls puts it in an io::Error, and
/// hyper-rustls wraps that in another; `Display` shows through, but `source()` skips them.
fn as_rustls<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    if let Some(tls) = e.downcast_ref::<rustls::Error>() {
        return Some(tls);
    }
    let inner = e.downcast_ref::<std::io::Error>()?.get_ref()?;
    as_rustls(inner)
}

fn describe(error: &rustls::Error) -> String {
    match error {
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(inner))) => {
            match inner.downcast_ref::<PinMismatch>() {
                Some(mismatch) => mismatch.to_string(),
                None => format!("{error}"),
            }
        }
        rustls::Error::InvalidCertificate(_) => format!(
            "the jump host API's certificate is not trusted ({error}); trust it with \
             api_ca_file or pin it with api_fingerprint (the jump host prints it at start)"
        ),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn self_signed(name: &str) -> (CertificateDer<'static>, rcgen::KeyPair) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (cert.der().clone(), key)
    }

    fn verifier(pinned: CertFingerprint) -> PinVerifier {
        PinVerifier::new(pinned, &rustls::crypto::ring::default_provider())
    }

    fn check(
        v: &PinVerifier,
        cert: &CertificateDer<'_>,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let name = ServerName::try_from("anything.invalid").unwrap();
        v.verify_server_cert(cert, &[], &name, &[], UnixTime::now())
    }

    #[test]
    fn the_pinned_certificate_passes_whatever_its_name() {
        let (cert, _) = self_signed("jump.example.com");
        let v = verifier(CertFingerprint::of_der(&cert));
        check(&v, &cert).unwrap();
        assert!(!v.supported_verify_schemes().is_empty());
    }

    #[test]
    fn another_certificate_is_refused_with_both_fingerprints() {
        let (pinned, _) = self_signed("jump.example.com");
        let (offered, _) = self_signed("jump.example.com");
        let v = verifier(CertFingerprint::of_der(&pinned));
        let err = check(&v, &offered).unwrap_err();
        let message = describe(&err);
        assert_eq!(
            message,
            format!(
                "the jump host API's certificate fingerprint {} does not match api_fingerprint {}",
                CertFingerprint::of_der(&offered),
                CertFingerprint::of_der(&pinned)
            )
        );
        // The same words come out of the io::Errors tokio-rustls and hyper-rustls wrap it in.
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, err);
        let twice = std::io::Error::other(io);
        assert_eq!(
            describe_tls_failure(&twice).as_deref(),
            Some(message.as_str())
        );
    }

    #[test]
    fn an_untrusted_certificate_points_at_the_config_keys() {
        let err = rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer);
        let message = describe(&err);
        assert!(message.contains("not trusted"), "{message}");
        assert!(message.contains("api_fingerprint"), "{message}");
        let plain = std::io::Error::other("connection refused");
        assert_eq!(describe_tls_failure(&plain), None);
    }

    #[test]
    fn ca_files_are_read_and_bad_ones_named() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, _) = self_signed("localhost");
        let pem = dir.path().join("ca.pem");
        let text = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .self_signed(&rcgen::KeyPair::generate().unwrap())
            .unwrap()
            .pem();
        std::fs::write(&pem, text).unwrap();
        assert_eq!(read_ca_file(&pem).unwrap().len(), 1);
        client_config(&ApiTrust::CaFile(pem)).unwrap();
        client_config(&ApiTrust::Fingerprint(CertFingerprint::of_der(&cert))).unwrap();

        let err = read_ca_file(&dir.path().join("missing.pem")).unwrap_err();
        assert!(err.contains("missing.pem"), "{err}");
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "hello\n").unwrap();
        let err = read_ca_file(&junk).unwrap_err();
        assert!(err.contains("holds no certificate"), "{err}");
    }
}

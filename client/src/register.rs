//! Registration (or renewal) of the device key with the jump host's `POST /v1/register`,
//! over HTTPS verified as `client.toml` says ([`ApiTrust`]) or plain HTTP, through the proxy
//! the tunnel uses.

use crate::api_tls::{self, ApiTrust};
use crate::http_client::{self, Outgoing, RequestError, Target};
use assist_proto::Secret;
use assist_proto::api::{EnrollmentProof, ErrorBody, RegisterRequest, RegisterResponse};
use axum::http::Method;
use std::sync::Arc;
use std::time::Duration;

/// How long a registration call may take before the agent gives up.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    #[error(
        "serial {serial} is bound to another device key on the jump host ({message}); \
         ask the jump host admin to run `assist-jumphost serial reset {serial}`, then enable again"
    )]
    BoundToOtherKey { serial: String, message: String },
    #[error(
        "the jump host's policy does not allow serial {serial} ({message}); ask the vendor to \
         add it to [serials] allow"
    )]
    NotAllowed { serial: String, message: String },
    #[error(
        "the jump host requires this device's enrollment secret to register serial {serial} \
         ({message}); set enrollment_secret or enrollment_secret_file in client.toml to the \
         secret the vendor shipped with this device"
    )]
    Enrollment { serial: String, message: String },
    #[error(
        "the proxy refused: authentication required or wrong ({message}); check the user and password in the proxy URL"
    )]
    ProxyAuth { message: String },
    /// The proxy on the way said no, in its own words (a SOCKS5 refusal, an unreachable
    /// proxy), as the tunnel would have found it.
    #[error("{message}")]
    Proxy { message: String },
    #[error("the jump host refused the registration with HTTP {status}: {message}")]
    Refused { status: u16, message: String },
    #[error("TLS with the jump host API at {url} failed: {message}")]
    Tls { url: String, message: String },
    #[error("cannot reach the jump host API at {url}: {message}; check api_url and the network")]
    Unreachable { url: String, message: String },
    #[error("the jump host API at {url} answered something unexpected: {message}")]
    BadAnswer { url: String, message: String },
}

/// Where and how this device's key is registered: at enable, at extend, and again when a
/// login is refused.
pub struct Registration {
    /// The API's URLs, tried in order: several jump hosts on one database each serve it, so
    /// the first that answers decides.
    pub api_urls: Vec<String>,
    pub trust: ApiTrust,
    pub serial: String,
    /// The device key's public line.
    pub public_key: String,
    /// The serial's enrollment secret, for a registration that binds anew (after a reset).
    pub enrollment_secret: Option<Secret>,
    /// The configured proxy; `None`: the environment's, if any.
    pub proxy: Option<assist_proto::proxy::Proxy>,
}

impl Registration {
    /// Registers (or renews) the key now, at the first API URL that answers.
    pub async fn send(&self) -> Result<RegisterResponse, RegisterError> {
        self.send_from(0).await
    }

    /// As [`Registration::send`], starting with `api_urls[first]` (the API of the jump host
    /// that refused the device key, when each jump host has its own) and going round.
    pub async fn send_from(&self, first: usize) -> Result<RegisterResponse, RegisterError> {
        let n = self.api_urls.len();
        let mut last = None;
        for url in (0..n).map(|i| &self.api_urls[(first + i) % n]) {
            let sent = register(
                url,
                &self.trust,
                &self.serial,
                &self.public_key,
                self.enrollment_secret.as_ref(),
                self.proxy.as_ref(),
            )
            .await;
            match sent {
                Err(e) if n > 1 && e.another_url_may_answer() => {
                    tracing::warn!(api_url = %url, "registration failed, trying the next API URL: {e}");
                    last = Some(e);
                }
                answer => return answer,
            }
        }
        Err(last.unwrap_or_else(|| RegisterError::Unreachable {
            url: String::new(),
            message: "no api_url configured".to_owned(),
        }))
    }
}

impl RegisterError {
    /// Whether this says nothing about the serial or its key, only about one API server or
    /// the way to it: another jump host's API may well answer.
    fn another_url_may_answer(&self) -> bool {
        match self {
            RegisterError::Tls { .. }
            | RegisterError::Unreachable { .. }
            | RegisterError::BadAnswer { .. }
            | RegisterError::Proxy { .. } => true,
            RegisterError::Refused { status, .. } => *status >= 500,
            RegisterError::BoundToOtherKey { .. }
            | RegisterError::NotAllowed { .. }
            | RegisterError::Enrollment { .. }
            | RegisterError::ProxyAuth { .. } => false,
        }
    }
}

/// Registers `public_key` for `serial` at `api_url` (without trailing slash); an
/// `https://` URL is verified according to `trust`. With the serial's enrollment `secret`,
/// the request carries a proof of it made now.
pub async fn register(
    api_url: &str,
    trust: &ApiTrust,
    serial: &str,
    public_key: &str,
    secret: Option<&Secret>,
    proxy: Option<&assist_proto::proxy::Proxy>,
) -> Result<RegisterResponse, RegisterError> {
    let url = format!("{api_url}/v1/register");
    let target = Target::parse(&url).map_err(|message| RegisterError::Unreachable {
        url: url.clone(),
        message,
    })?;
    // Without a configured proxy, the environment's, read as the tunnel reads it.
    let from_env = match proxy {
        Some(_) => None,
        None => {
            let env = |k: &str| std::env::var(k).ok();
            assist_proto::proxy::Proxy::from_env(&target.host, &env)
                .transpose()
                .map_err(|message| RegisterError::Proxy { message })?
        }
    };
    let proxy = proxy.or(from_env.as_ref());
    let tls = match target.tls {
        true => Some(Arc::new(api_tls::client_config(trust).map_err(
            |message| RegisterError::Tls {
                url: url.clone(),
                message,
            },
        )?)),
        false => None,
    };
    let enrollment = match secret {
        None => None,
        Some(secret) => {
            let at = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs();
            let mac = assist_proto::enroll::proof(secret, serial, public_key, at).map_err(|e| {
                RegisterError::Enrollment {
                    serial: serial.to_owned(),
                    message: format!("the configured secret {e}"),
                }
            })?;
            Some(EnrollmentProof { at, mac })
        }
    };
    let request = RegisterRequest {
        serial: serial.to_owned(),
        public_key: public_key.to_owned(),
        rotation_proof: None,
        enrollment,
    };
    let json = serde_json::to_vec(&request).map_err(|e| RegisterError::BadAnswer {
        url: url.clone(),
        message: format!("cannot encode the request: {e}"),
    })?;
    let outgoing = Outgoing {
        method: Method::POST,
        bearer: None,
        json: Some(json),
    };
    let response = match http_client::send(&target, outgoing, tls, proxy, REGISTER_TIMEOUT).await {
        Ok(response) => response,
        Err(RequestError::Tls(e)) => {
            let message =
                api_tls::describe_tls_failure(&e).unwrap_or_else(|| http_client::chain(&e));
            return Err(RegisterError::Tls { url, message });
        }
        // An HTTP proxy's 401 or 407 to CONNECT: its credentials, not the jump host.
        Err(RequestError::Connect(message))
            if proxy.is_some()
                && (message.contains("refused: 407") || message.contains("refused: 401")) =>
        {
            return Err(RegisterError::ProxyAuth { message });
        }
        Err(RequestError::Connect(message)) if proxy.is_some() => {
            return Err(RegisterError::Proxy { message });
        }
        Err(e) => {
            return Err(RegisterError::Unreachable {
                url,
                message: e.to_string(),
            });
        }
    };
    let status = response.status;
    let body = match response.body {
        Ok(body) => body,
        // A proxy refusing us may hang up before its body: the status says enough.
        Err(_) if status == 401 || status == 407 => String::new(),
        Err(message) => return Err(RegisterError::Unreachable { url, message }),
    };
    if status == 200 || status == 201 {
        return serde_json::from_str(&body).map_err(|e| RegisterError::BadAnswer {
            url,
            message: e.to_string(),
        });
    }
    let from_jumphost = serde_json::from_str::<ErrorBody>(&body).ok();
    // A proxy on the way answers in its own words (HTML), not with the API's JSON.
    if status == 407 || (status == 401 && from_jumphost.is_none()) {
        return Err(RegisterError::ProxyAuth {
            message: format!("HTTP {status} from the proxy on the way to {url}"),
        });
    }
    let message = from_jumphost
        .map(|b| b.error)
        .unwrap_or_else(|| body.chars().take(200).collect());
    let serial = serial.to_owned();
    Err(match status {
        409 => RegisterError::BoundToOtherKey { serial, message },
        401 => RegisterError::Enrollment { serial, message },
        403 => RegisterError::NotAllowed { serial, message },
        status => RegisterError::Refused { status, message },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// An API on loopback answering every registration with `status` and `body`; counts them.
    async fn api(status: &'static str, body: &'static str) -> (String, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let asked = Arc::new(AtomicUsize::new(0));
        let count = asked.clone();
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                let mut seen = Vec::new();
                let mut buf = [0u8; 4096];
                while !seen.ends_with(b"}") {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                count.fetch_add(1, Ordering::SeqCst);
                let answer = format!(
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tcp.write_all(answer.as_bytes()).await;
            }
        });
        (url, asked)
    }

    fn registration(api_urls: Vec<String>) -> Registration {
        Registration {
            api_urls,
            trust: ApiTrust::SystemRoots,
            serial: "SN-1".into(),
            public_key: "ssh-ed25519 AAAA".into(),
            enrollment_secret: None,
            proxy: None,
        }
    }

    const BOUND: &str =
        r#"{"serial":"SN-1","fingerprint":"SHA256:x","expires_at":1,"max_assistance_secs":60}"#;

    #[tokio::test]
    async fn the_next_api_url_is_tried_only_when_the_first_says_nothing_about_the_serial() {
        let dead = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            format!("http://{}", l.local_addr().unwrap())
        };
        let (busy, _) = api("503 Service Unavailable", "later").await;
        let (good, good_asked) = api("201 Created", BOUND).await;
        // Nothing listening, then a 503: both passed over, the third binds.
        let r = registration(vec![dead.clone(), busy, good.clone()]);
        assert_eq!(r.send().await.unwrap().max_assistance_secs, 60);
        assert_eq!(good_asked.load(Ordering::SeqCst), 1);

        // A 409 is the database's answer about the serial: the next URL (the same database
        // behind another jump host) is not asked.
        let (taken, _) = api("409 Conflict", r#"{"error":"bound to another key"}"#).await;
        let r = registration(vec![taken, good.clone()]);
        let err = r.send().await.unwrap_err();
        assert!(
            matches!(err, RegisterError::BoundToOtherKey { .. }),
            "{err}"
        );
        assert_eq!(good_asked.load(Ordering::SeqCst), 1);

        // send_from starts at the given URL and goes round.
        let r = registration(vec![dead.clone(), good]);
        r.send_from(1).await.unwrap();
        assert_eq!(good_asked.load(Ordering::SeqCst), 2);

        // All unreachable: the last one's reason.
        let err = registration(vec![dead.clone(), dead.clone()])
            .send()
            .await
            .unwrap_err();
        assert!(matches!(err, RegisterError::Unreachable { .. }), "{err}");
        assert!(err.to_string().contains(&dead), "{err}");
    }
}

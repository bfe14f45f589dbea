//! The page's defences: the `Host` check against DNS rebinding, the security headers, and
//! page sessions (a random HttpOnly SameSite=Strict cookie) with a per-session CSRF token.

use assist_proto::{Secret, lock};
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use cookie::{Cookie, SameSite};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const COOKIE: &str = "assist_session";
pub const CSRF_HEADER: &str = "x-csrf-token";
/// How long a page session lives without use.
const SESSION_IDLE: Duration = Duration::from_secs(12 * 3600);
/// Sessions kept at once; logging in again past this drops the least recently used.
const MAX_SESSIONS: usize = 32;

pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
    img-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; \
    form-action 'self'; frame-ancestors 'none'";

/// Accepts only `Host`s a page on this machine can legitimately carry: `localhost` (and
/// `*.localhost`, which browsers resolve to loopback) or an IP literal, with any port.
/// A DNS-rebinding page always sends its own domain name, so names are refused; an IP
/// literal can only come from a browser that opened that address itself.
pub fn host_allowed(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        // [v6]:port or [v6]
        match rest.split_once(']') {
            Some((ip, tail)) if tail.is_empty() || valid_port(tail.strip_prefix(':')) => {
                return ip.parse::<std::net::Ipv6Addr>().is_ok();
            }
            _ => return false,
        }
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) if valid_port(Some(port)) => name,
            Some(_) => return false,
            None => host,
        }
    };
    let name = name.to_ascii_lowercase();
    name == "localhost"
        || name.ends_with(".localhost")
        || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_ipv4())
}

fn valid_port(port: Option<&str>) -> bool {
    port.is_some_and(|p| !p.is_empty() && p.parse::<u16>().is_ok())
}

/// Refuses (421 Misdirected Request) any request whose `Host` is not ours.
pub async fn check_host(request: Request, next: Next) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| request.uri().authority().map(|a| a.as_str()));
    match host {
        Some(h) if host_allowed(h) => next.run(request).await,
        _ => (
            StatusCode::MISDIRECTED_REQUEST,
            "this page only answers on localhost or its IP address\n",
        )
            .into_response(),
    }
}

/// Adds the security headers to every answer of the page, refusals included.
pub async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        "cross-origin-resource-policy",
        HeaderValue::from_static("same-origin"),
    );
    response
}

struct Session {
    csrf: String,
    last_used: Instant,
}

/// Page sessions by cookie value. Only a hash-map lookup: the cookie is 256 random bits.
#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    /// A new session; returns (cookie value, CSRF token).
    pub fn create(&self) -> (String, String) {
        let (id, csrf) = (random_hex(), random_hex());
        let mut map = lock::mutex(&self.map);
        map.retain(|_, s| s.last_used.elapsed() < SESSION_IDLE);
        if map.len() >= MAX_SESSIONS
            && let Some(oldest) = map
                .iter()
                .min_by_key(|(_, s)| s.last_used)
                .map(|(k, _)| k.clone())
        {
            map.remove(&oldest);
        }
        map.insert(
            id.clone(),
            Session {
                csrf: csrf.clone(),
                last_used: Instant::now(),
            },
        );
        drop(map);
        (id, csrf)
    }

    /// The CSRF token of the session named by the request's cookie, if it is alive.
    pub fn csrf_for(&self, headers: &HeaderMap) -> Option<String> {
        let id = cookie(headers, COOKIE)?;
        let mut map = lock::mutex(&self.map);
        let session = map.get_mut(&id)?;
        if session.last_used.elapsed() >= SESSION_IDLE {
            map.remove(&id);
            return None;
        }
        session.last_used = Instant::now();
        Some(session.csrf.clone())
    }

    /// True when the cookie names a live session and the CSRF header matches it.
    pub fn check_change(&self, headers: &HeaderMap) -> bool {
        let Some(expected) = self.csrf_for(headers) else {
            return false;
        };
        let presented = headers
            .get(CSRF_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        Secret::new(expected).matches(presented)
    }

    pub fn remove(&self, headers: &HeaderMap) {
        if let Some(id) = cookie(headers, COOKIE) {
            lock::mutex(&self.map).remove(&id);
        }
    }
}

/// The `Set-Cookie` value for a session (no `Secure`: the page is plain HTTP on loopback).
pub fn session_cookie(id: &str) -> String {
    session(id).build().to_string()
}

/// The `Set-Cookie` value that ends the session cookie in the browser.
pub fn clear_cookie() -> String {
    session("")
        .max_age(cookie::time::Duration::ZERO)
        .build()
        .to_string()
}

fn session(value: &str) -> cookie::CookieBuilder<'_> {
    Cookie::build((COOKIE, value))
        .path("/")
        .http_only(true)
        .same_site(SameSite::Strict)
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(Cookie::split_parse)
        .filter_map(Result::ok)
        .find(|c| c.name() == name)
        .map(|c| c.value().to_owned())
}

fn random_hex() -> String {
    let mut bytes = [0u8; 32];
    rand::fill(&mut bytes[..]);
    hex::encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_of_this_machine_pass_and_names_do_not() {
        for ok in [
            "localhost",
            "localhost:7070",
            "LOCALHOST:1",
            "app.localhost:80",
            "127.0.0.1",
            "127.0.0.1:7070",
            "192.168.1.5:7070",
            "[::1]:7070",
            "[::1]",
        ] {
            assert!(host_allowed(ok), "{ok}");
        }
        for bad in [
            "",
            "evil.example",
            "evil.example:7070",
            "127.0.0.1.nip.io:7070",
            "localhost.evil.example",
            "127.0.0.1:notaport",
            "127.0.0.1:99999",
            "[::1]x",
            "::1",
            "localhost:",
        ] {
            assert!(!host_allowed(bad), "{bad}");
        }
    }

    #[test]
    fn the_session_cookie_is_written_read_back_and_cleared() {
        let set = session_cookie("abc");
        for part in [
            "assist_session=abc",
            "Path=/",
            "HttpOnly",
            "SameSite=Strict",
        ] {
            assert!(set.split("; ").any(|p| p == part), "{part}: {set}");
        }
        let mut headers = HeaderMap::new();
        headers.append(header::COOKIE, HeaderValue::from_static("other=1"));
        headers.append(
            header::COOKIE,
            HeaderValue::from_static("x=2; assist_session=abc"),
        );
        assert_eq!(cookie(&headers, COOKIE).as_deref(), Some("abc"));
        assert_eq!(cookie(&headers, "missing"), None);
        let clear = clear_cookie();
        assert!(clear.starts_with("assist_session=;"), "{clear}");
        assert!(clear.contains("Max-Age=0"), "{clear}");
    }
}

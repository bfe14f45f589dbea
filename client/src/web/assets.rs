//! The page's files, embedded gzipped by `build.rs` (xterm.js is 480 KB as text, 120 KB
//! packed; the agent's size target is 4 MiB): sent as they are to a browser that takes gzip
//! (every one does), unpacked for a client that does not.

use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::io::Read;

pub struct Asset {
    gzipped: &'static [u8],
    content_type: &'static str,
}

macro_rules! asset {
    ($file:literal, $content_type:literal) => {
        Asset {
            gzipped: include_bytes!(concat!(env!("OUT_DIR"), "/", $file, ".gz")),
            content_type: $content_type,
        }
    };
}

pub static INDEX_HTML: Asset = asset!("index.html", "text/html; charset=utf-8");
pub static APP_JS: Asset = asset!("app.js", "text/javascript; charset=utf-8");
pub static APP_CSS: Asset = asset!("app.css", "text/css; charset=utf-8");
pub static TERMINAL_JS: Asset = asset!("terminal.js", "text/javascript; charset=utf-8");
/// xterm.js, pinned in `assets/package-lock.json` and fetched by `build.rs` (`npm ci`).
pub static XTERM_JS: Asset = asset!("xterm.js", "text/javascript; charset=utf-8");
pub static XTERM_CSS: Asset = asset!("xterm.css", "text/css; charset=utf-8");

impl Asset {
    pub async fn serve(&'static self, request: HeaderMap) -> Response {
        let content_type = (header::CONTENT_TYPE, self.content_type);
        let vary = (header::VARY, "accept-encoding");
        if accepts_gzip(&request) {
            let encoding = (header::CONTENT_ENCODING, "gzip");
            return ([content_type, encoding, vary], self.gzipped).into_response();
        }
        match self.unpacked() {
            Ok(text) => ([content_type, vary], text).into_response(),
            // Cannot happen with what build.rs wrote; still an answer rather than a panic.
            Err(e) => {
                tracing::error!("unpacking an embedded page asset: {e}");
                StatusCode::INTERNAL_SERVER_ERROR.into_response()
            }
        }
    }

    fn unpacked(&self) -> std::io::Result<Vec<u8>> {
        let mut text = Vec::new();
        flate2::read::GzDecoder::new(self.gzipped).read_to_end(&mut text)?;
        Ok(text)
    }
}

/// Whether `Accept-Encoding` lists gzip (or `*`) without refusing it with `q=0`.
fn accepts_gzip(request: &HeaderMap) -> bool {
    request
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|item| {
            let mut parts = item.split(';').map(str::trim);
            let coding = parts.next().unwrap_or_default();
            let refused = parts.any(|p| {
                p.strip_prefix("q=")
                    .and_then(|q| q.parse::<f32>().ok())
                    .is_some_and(|q| q == 0.0)
            });
            ["gzip", "x-gzip", "*"]
                .iter()
                .any(|c| coding.eq_ignore_ascii_case(c))
                && !refused
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::to_bytes;
    use axum::http::HeaderValue;

    fn asking(accept: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(a) = accept {
            h.insert(header::ACCEPT_ENCODING, HeaderValue::from_str(a).unwrap());
        }
        h
    }

    #[test]
    fn gzip_is_taken_when_listed_and_not_refused() {
        for yes in [
            "gzip",
            "gzip, deflate, br, zstd",
            "br;q=1.0, GZIP;q=0.5",
            "*",
        ] {
            assert!(accepts_gzip(&asking(Some(yes))), "{yes}");
        }
        for no in ["identity", "br", "gzip;q=0", "gzip; q=0.0", "gzipped", ""] {
            assert!(!accepts_gzip(&asking(Some(no))), "{no}");
        }
        assert!(!accepts_gzip(&asking(None)));
    }

    /// Both answers carry the real file: gzipped for a browser, as text for curl.
    #[tokio::test]
    async fn xterm_js_is_sent_gzipped_or_unpacked() {
        let on_disk = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/assets/node_modules/@xterm/xterm/lib/xterm.js"
        ))
        .unwrap();

        let response = XTERM_JS.serve(asking(Some("gzip, deflate"))).await;
        assert_eq!(response.headers()[header::CONTENT_ENCODING], "gzip");
        assert_eq!(response.headers()[header::VARY], "accept-encoding");
        let body = to_bytes(response.into_body(), usize::MAX).await.unwrap();
        assert!(body.len() < on_disk.len() / 3, "{} bytes", body.len());
        let mut text = Vec::new();
        flate2::read::GzDecoder::new(&body[..])
            .read_to_end(&mut text)
            .unwrap();
        assert!(text == on_disk, "gzipped xterm.js differs from the file");

        let response = XTERM_JS.serve(asking(None)).await;
        assert!(response.headers().get(header::CONTENT_ENCODING).is_none());
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "text/javascript; charset=utf-8"
        );
        let body = to_bytes(response.into_body(), usize::MAX).await.unwrap();
        assert!(body == on_disk, "unpacked xterm.js differs from the file");
    }
}

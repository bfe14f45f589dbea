//! Driving the customer's page in headless Chromium over WebDriver (chromedriver, fantoccini):
//! shared by the page's browser tests, each of which uses a part.
#![allow(dead_code)]

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use assist_e2e::{Proc, READY_TIMEOUT};
use fantoccini::{Client, ClientBuilder, Locator};

/// How long the page may take to show a change.
pub const UI: Duration = Duration::from_secs(30);

/// Where screenshots go: the README's folder only when asked, so a test run never changes
/// tracked files; otherwise a folder under target/.
pub fn screenshots_dir() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = if std::env::var_os("UPDATE_SCREENSHOTS").is_some() {
        root.join("docs/screenshots")
    } else {
        root.join("target/screenshots")
    };
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// chromedriver on a free port (it cannot pick one itself): bind :0, read, release, pass.
pub fn start_chromedriver() -> (Proc, u16) {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cmd = Command::new("chromedriver");
    cmd.arg(format!("--port={port}"));
    let mut proc = Proc::spawn(cmd, "chromedriver");
    proc.wait_line("ChromeDriver was started successfully", READY_TIMEOUT);
    (proc, port)
}

pub async fn browser(port: u16, profile: &Path) -> Client {
    let caps = serde_json::json!({
        "browserName": "chrome",
        "goog:chromeOptions": {
            "binary": "/usr/bin/chromium",
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--window-size=480,1100",
                format!("--user-data-dir={}", profile.display()),
            ],
        },
    });
    let serde_json::Value::Object(caps) = caps else {
        unreachable!()
    };
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .expect("connect to chromedriver")
}

/// Text of `css`, polled until `ok` holds or the deadline passes.
pub async fn wait_text(c: &Client, css: &str, what: &str, ok: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + UI;
    let mut last = String::new();
    loop {
        if let Ok(el) = c.find(Locator::Css(css)).await
            && let Ok(t) = el.text().await
        {
            if ok(&t) {
                return t;
            }
            last = t;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what} in {css}; last text {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn shot(c: &Client, name: &str) {
    let png = c.screenshot().await.expect("screenshot");
    assert!(png.starts_with(b"\x89PNG"), "screenshot is a PNG");
    fs::write(screenshots_dir().join(name), png).unwrap();
}

pub async fn click(c: &Client, css: &str) {
    c.find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("find {css}: {e}"))
        .click()
        .await
        .unwrap_or_else(|e| panic!("click {css}: {e}"));
}

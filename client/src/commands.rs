//! `assist-client enable|disable|status|page`: talk to the running agent over its local API
//! with the token it left in `data_dir`; `history` reads the agent's file itself.

use crate::agent::DisableReport;
use crate::config::Config;
use crate::http_client::{self, Outgoing, Target};
use crate::local_api::{ApiErrorBody, EnableRequest, EnableResponse};
use crate::state::{Status, TunnelState};
use anyhow::{Context, bail};
use axum::http::Method;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Where the agent listens and the token it accepts.
struct AgentEndpoint {
    base: String,
    addr: String,
    token: String,
}

impl AgentEndpoint {
    fn find(config: &Config) -> anyhow::Result<Self> {
        let hint = || {
            format!(
                "is `assist-client run --config {}` running (as a user that can read {})?",
                config.path.display(),
                config.data_dir.display()
            )
        };
        let addr_path = config.web_addr_path();
        let addr = std::fs::read_to_string(&addr_path)
            .with_context(|| format!("cannot read {}: {}", addr_path.display(), hint()))?;
        let token_path = config.control_token_path();
        let token = std::fs::read_to_string(&token_path)
            .with_context(|| format!("cannot read {}: {}", token_path.display(), hint()))?;
        Ok(Self {
            base: format!("http://{}", addr.trim()),
            addr: addr.trim().to_owned(),
            token: token.trim().to_owned(),
        })
    }

    /// `method` on `path` of the agent's API, with the token and, if given, a JSON body.
    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        json: Option<Vec<u8>>,
    ) -> anyhow::Result<T> {
        let url = format!("{}{path}", self.base);
        let target = Target::parse(&url).map_err(anyhow::Error::msg)?;
        let outgoing = Outgoing {
            method,
            bearer: Some(&self.token),
            json,
        };
        let response = http_client::send(&target, outgoing, None, None, REQUEST_TIMEOUT)
            .await
            .with_context(|| {
                format!(
                    "cannot reach the agent at {}: is `assist-client run` running?",
                    self.base
                )
            })?;
        let status = response.status;
        let body = response
            .body
            .map_err(anyhow::Error::msg)
            .context("cannot read the agent's answer")?;
        if !(200..300).contains(&status) {
            let message = serde_json::from_str::<ApiErrorBody>(&body)
                .map(|b| b.error)
                .unwrap_or(body);
            bail!("{message}");
        }
        serde_json::from_str(&body).context("the agent answered something unexpected")
    }
}

pub async fn enable(config: &Config, minutes: Option<u64>) -> anyhow::Result<()> {
    let agent = AgentEndpoint::find(config)?;
    let body = serde_json::to_vec(&EnableRequest { minutes }).context("cannot encode")?;
    let r: EnableResponse = agent.call(Method::POST, "/api/enable", Some(body)).await?;
    println!("code: {}", r.code);
    println!("until: {}", r.until);
    if let Some(pending) = &r.tunnel_pending {
        println!("tunnel still connecting: {pending}");
    }
    if r.seconds < minutes.unwrap_or(0).saturating_mul(60) {
        println!(
            "note: the jump host's policy allows at most {}",
            humanize(r.max_seconds)
        );
    }
    println!("Read the code to the support engineer. Stop with `assist-client disable`.");
    Ok(())
}

fn humanize(secs: u64) -> String {
    match secs {
        s if s % 3600 == 0 => format!("{} h", s / 3600),
        s if s % 60 == 0 => format!("{} min", s / 60),
        s => format!("{s} s"),
    }
}

pub async fn disable(config: &Config) -> anyhow::Result<()> {
    let agent = AgentEndpoint::find(config)?;
    let r: DisableReport = agent.call(Method::POST, "/api/disable", None).await?;
    if r.was_enabled {
        println!("remote assistance disabled");
    } else {
        println!("remote assistance was not enabled");
    }
    println!(
        "tunnel closed, {} relayed connection(s) ended",
        r.connections_closed
    );
    println!(
        "{} key line(s) removed from authorized_keys",
        r.key_lines_removed
    );
    Ok(())
}

pub async fn status(config: &Config, json: bool) -> anyhow::Result<()> {
    let agent = AgentEndpoint::find(config)?;
    let s: Status = agent.call(Method::GET, "/api/status", None).await?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&s).context("cannot encode status")?
        );
        return Ok(());
    }
    println!("serial: {}", s.serial);
    match (&s.until, s.enabled) {
        (Some(until), true) => println!(
            "assistance: enabled until {until} ({} min left)",
            s.remaining_secs.unwrap_or(0) / 60
        ),
        _ => println!("assistance: disabled"),
    }
    let state = match s.tunnel.state {
        TunnelState::Disabled => "disabled",
        TunnelState::Connecting => "connecting",
        TunnelState::Connected => "connected",
        TunnelState::Reconnecting => "reconnecting",
        TunnelState::Failed => "failed",
    };
    let at = match (&s.tunnel.jumphost, s.tunnel.state) {
        (Some(j), TunnelState::Connected) => format!(" to {j}"),
        (Some(j), _) => format!(", trying {j}"),
        (None, _) => String::new(),
    };
    match &s.tunnel.last_error {
        Some(e) => println!("tunnel: {state}{at} (last error: {e})"),
        None => println!("tunnel: {state}{at}"),
    }
    println!(
        "connections: {} now, {} in this window",
        s.connections.active, s.connections.total
    );
    for session in s.connections.sessions.iter().filter(|x| x.ended.is_none()) {
        println!("  {}", session.line());
    }
    if let Some(server) = &s.ssh_server {
        println!(
            "ssh server: {} at {}: {}",
            server.software,
            server.address,
            server.guarantees()
        );
    }
    println!("device key: {}", s.device_fingerprint);
    println!(
        "web page: run `assist-client page --config {}` to open it logged in",
        config.path.display()
    );
    Ok(())
}

/// `assist-client history`: the windows and connections in `data_dir/history.jsonl`.
pub fn history(config: &Config, json: bool) -> anyhow::Result<()> {
    let events = crate::history::read_events(&config.history_path())?;
    let windows = crate::history::fold(&events);
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&windows).context("cannot encode the history")?
        );
    } else {
        print!("{}", crate::history::print(&windows));
    }
    Ok(())
}

/// `assist-client page`: prints the page's address with the access key in its fragment and,
/// in a desktop session, opens it in the desktop's browser.
pub async fn page(config: &Config, open: bool) -> anyhow::Result<()> {
    let agent = AgentEndpoint::find(config)?;
    // A token left by an agent that is gone would print a link that does not log in.
    let _: Status = agent.call(Method::GET, "/api/status", None).await?;
    let addr: SocketAddr = agent.addr.parse().with_context(|| {
        format!(
            "{} holds {:?}, not an address",
            config.web_addr_path().display(),
            agent.addr
        )
    })?;
    let url = page_url(addr, &agent.token);
    println!("{url}");
    let Some(opener) = open.then(desktop_opener).flatten() else {
        eprintln!("open this address in a browser on this machine (it logs in by itself)");
        return Ok(());
    };
    Command::new(&opener)
        .arg(&url)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot run {}", opener.display()))?;
    eprintln!("opened in the desktop's browser ({})", opener.display());
    Ok(())
}

/// `http://ADDR/#token=T`; a page bound to a wildcard address is reached on loopback (the page
/// answers only to localhost or an IP address).
fn page_url(addr: SocketAddr, token: &str) -> String {
    let host = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), addr.port())
        }
        _ => addr,
    };
    format!("http://{host}/#token={token}")
}

/// `xdg-open` from `PATH` when a desktop session is there (`DISPLAY` or `WAYLAND_DISPLAY`).
fn desktop_opener() -> Option<PathBuf> {
    let desktop = ["DISPLAY", "WAYLAND_DISPLAY"]
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|s| !s.is_empty()));
    if !desktop {
        return None;
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("xdg-open"))
        .find(|p| is_executable(p))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_page_url_carries_the_token_in_the_fragment_and_a_reachable_host() {
        let url = |a: &str| page_url(a.parse().unwrap(), "ab12");
        assert_eq!(url("127.0.0.1:7070"), "http://127.0.0.1:7070/#token=ab12");
        assert_eq!(url("0.0.0.0:7070"), "http://127.0.0.1:7070/#token=ab12");
        assert_eq!(url("[::]:7070"), "http://[::1]:7070/#token=ab12");
        assert_eq!(url("192.0.2.7:80"), "http://192.0.2.7:80/#token=ab12");
    }
}

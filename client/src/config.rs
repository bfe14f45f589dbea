//! `client.toml`: what the agent reads at start, parsed strictly and validated with errors
//! that name the file and the key.

use crate::api_tls::{self, ApiTrust};
use assist_proto::Secret;
use assist_proto::cert_fingerprint::CertFingerprint;
use assist_proto::limits::{HTTP_SERVICE_PORT, SSH_SERVICE_PORT};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Name of the file in `data_dir` holding the device's private key.
pub const DEVICE_KEY_FILE: &str = "device_key";
/// Name of the file in `data_dir` holding the pinned jump host key.
pub const PINNED_HOST_KEY_FILE: &str = "jumphost_host_key";
/// Name of the file in `data_dir` holding the control API's bearer token.
pub const CONTROL_TOKEN_FILE: &str = "control-token";
/// Name of the file in `data_dir` holding the address the control API is bound to.
pub const WEB_ADDR_FILE: &str = "web.addr";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config {path}: key `{key}`: {message}")]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },
}

/// The file as written; see [`Config`] for the validated form.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    serial: String,
    /// One jump host, or a list tried in order (the agent moves on when one fails).
    jumphost: OneOrMany,
    /// Optional when `jumphost` is (or holds) a ws(s):// URL: the API is then at that URL's
    /// origin. A list is tried in order.
    #[serde(default)]
    api_url: Option<OneOrMany>,
    data_dir: PathBuf,
    web_listen: SocketAddr,
    target_user: String,
    #[serde(default)]
    authorized_keys: Option<PathBuf>,
    #[serde(default)]
    services: BTreeMap<String, String>,
    /// Optional `SHA256:…` fingerprint of the jump host key (or a list, one per key of the
    /// jump hosts); without it each jump host's key is pinned on first use.
    #[serde(default)]
    jumphost_fingerprint: Option<OneOrMany>,
    /// Optional PEM file of the CA (or the self-signed certificate) to trust for an
    /// `https://` api_url instead of the system's CAs.
    #[serde(default)]
    api_ca_file: Option<PathBuf>,
    /// Optional `sha256:…` of the API's certificate, as the jump host prints it.
    #[serde(default)]
    api_fingerprint: Option<String>,
    /// Optional: the serial's enrollment secret (`assist-jumphost serial secret`), needed
    /// where the jump host has an `enrollment_key`.
    #[serde(default)]
    enrollment_secret: Option<String>,
    /// Optional, instead of `enrollment_secret`: a file holding it (0600).
    #[serde(default)]
    enrollment_secret_file: Option<PathBuf>,
    /// Optional `http://[USER:PASS@]HOST:PORT`: reach the jump host (API and tunnel)
    /// through this HTTP proxy. Absent: `HTTPS_PROXY` / `ALL_PROXY` / `NO_PROXY`.
    #[serde(default)]
    proxy: Option<String>,
    /// Optional: how long the history of windows and connections is kept (`90d`).
    #[serde(default)]
    history_keep: Option<String>,
    /// Optional: each engineer connection waits for the customer's Allow on the page.
    #[serde(default)]
    approve_connections: bool,
    /// Optional: how long the built-in target's recordings are kept (`30d`).
    #[serde(default)]
    recordings_keep: Option<String>,
}

/// A key that takes one string or a list of them.
#[derive(Debug)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl<'de> Deserialize<'de> for OneOrMany {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = OneOrMany;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string or a list of strings")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<OneOrMany, E> {
                Ok(OneOrMany::One(v.to_owned()))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<OneOrMany, A::Error> {
                let mut list = Vec::new();
                while let Some(item) = seq.next_element::<String>()? {
                    list.push(item);
                }
                Ok(OneOrMany::Many(list))
            }
        }
        d.deserialize_any(Visitor)
    }
}

impl OneOrMany {
    fn to_vec(&self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

/// Where the serial's enrollment secret comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnrollmentSecret {
    Inline(Secret),
    /// Read when needed, so a secret installed later is picked up without a restart.
    File(PathBuf),
}

/// One reverse-forwarded service: the virtual port asked of the jump host and the local
/// address its connections go to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub name: String,
    pub port: u32,
    /// `HOST:PORT`, or [`BUILTIN`] for the ssh service.
    pub target: String,
}

/// The ssh service's target that makes the agent's own SSH server the end of the session.
pub const BUILTIN: &str = "builtin";

impl Service {
    /// Whether the agent itself serves this service (`ssh = "builtin"`).
    pub fn is_builtin(&self) -> bool {
        self.target == BUILTIN
    }
}

/// A validated agent configuration with every path absolute.
#[derive(Debug, Clone)]
pub struct Config {
    pub path: PathBuf,
    pub serial: String,
    /// The jump hosts in the order they are tried; never empty.
    pub jumphosts: Vec<String>,
    /// The registration API's URLs (without trailing slash) in the order they are tried;
    /// never empty. When there are as many as jump hosts, `api_urls[i]` is `jumphosts[i]`'s.
    pub api_urls: Vec<String>,
    pub data_dir: PathBuf,
    pub web_listen: SocketAddr,
    pub target_user: String,
    /// `None`: the target user's `~/.ssh/authorized_keys`, looked up when needed.
    pub authorized_keys: Option<PathBuf>,
    pub services: Vec<Service>,
    /// Fingerprints the jump hosts' keys must have; empty: pinned on first use.
    pub jumphost_fingerprints: Vec<String>,
    /// How an `https://` api_url is verified; unused for `http://`.
    pub api_trust: ApiTrust,
    /// The serial's enrollment secret, if configured.
    pub enrollment: Option<EnrollmentSecret>,
    /// The configured HTTP proxy; `None`: the environment's, if any.
    pub proxy: Option<assist_proto::proxy::Proxy>,
    /// How long the history keeps a window (and its connections) after it ended.
    pub history_keep: std::time::Duration,
    /// Each engineer connection waits for the customer's Allow on the page.
    pub approve_connections: bool,
    /// How long a recording of the built-in target is kept after it started.
    pub recordings_keep: std::time::Duration,
}

/// `history_keep` when the config does not say.
pub const DEFAULT_HISTORY_KEEP: std::time::Duration =
    std::time::Duration::from_secs(90 * 24 * 3600);
/// The history file in `data_dir`.
pub const HISTORY_FILE: &str = "history.jsonl";
/// `recordings_keep` when the config does not say.
pub const DEFAULT_RECORDINGS_KEEP: std::time::Duration =
    std::time::Duration::from_secs(30 * 24 * 3600);
/// The built-in target's recordings, in `data_dir`.
pub const RECORDINGS_DIR: &str = "recordings";

impl Config {
    /// Reads, parses and validates `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let config = Self::parse(path, &text)?;
        // Checked at start rather than at the first `enable`, when nobody reads the log.
        config.enrollment_secret()?;
        if let ApiTrust::CaFile(file) = &config.api_trust {
            api_tls::read_ca_file(file).map_err(|message| ConfigError::Invalid {
                path: path.to_owned(),
                key: "api_ca_file".to_owned(),
                message,
            })?;
        }
        Ok(config)
    }

    /// Parses `text` as if read from `path`; relative paths are taken from `path`'s folder.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            path: path.to_owned(),
            key: key.to_owned(),
            message,
        };
        assist_proto::validate_name(&raw.serial).map_err(|e| invalid("serial", e.to_string()))?;
        let jumphosts = jumphost_list(&raw.jumphost).map_err(|m| invalid("jumphost", m))?;
        let api_urls =
            api_url_list(raw.api_url.as_ref(), &jumphosts).map_err(|m| invalid("api_url", m))?;
        if raw.target_user.is_empty() || raw.target_user.contains([':', '/', '\n']) {
            return Err(invalid(
                "target_user",
                format!("{:?} is not a user name", raw.target_user),
            ));
        }
        let jumphost_fingerprints = raw
            .jumphost_fingerprint
            .as_ref()
            .map(OneOrMany::to_vec)
            .unwrap_or_default();
        if let Some(fp) = jumphost_fingerprints
            .iter()
            .find(|fp| !fp.starts_with("SHA256:"))
        {
            return Err(invalid(
                "jumphost_fingerprint",
                format!("{fp:?} must look like SHA256:… (as `ssh-keygen -lf` prints)"),
            ));
        }
        let api_trust = api_trust(&raw, &api_urls, path.parent().unwrap_or(Path::new(".")))
            .map_err(|(key, message)| invalid(key, message))?;
        let mut services = Vec::new();
        for (name, target) in &raw.services {
            let key = format!("services.{name}");
            let port = service_port(name).ok_or_else(|| {
                invalid(
                    &key,
                    "unknown service name: use `ssh` (port 22), `http` (port 80) or a port \
                     number such as `8443`"
                        .to_owned(),
                )
            })?;
            if target == BUILTIN {
                if port != assist_proto::limits::SSH_SERVICE_PORT {
                    return Err(invalid(
                        &key,
                        "\"builtin\" is only for the ssh service (the agent's own SSH server); \
                         give this service HOST:PORT (like 127.0.0.1:80)"
                            .to_owned(),
                    ));
                }
            } else if split_host_port(target).is_none() {
                return Err(invalid(
                    &key,
                    format!(
                        "{target:?} is not HOST:PORT (like 127.0.0.1:22) or, for ssh, \"builtin\""
                    ),
                ));
            }
            if services.iter().any(|s: &Service| s.port == port) {
                return Err(invalid(&key, format!("port {port} is configured twice")));
            }
            services.push(Service {
                name: name.clone(),
                port,
                target: target.clone(),
            });
        }
        if services.is_empty() {
            return Err(invalid(
                "services",
                "no service configured; add for example `ssh = \"127.0.0.1:22\"` under [services]"
                    .to_owned(),
            ));
        }
        let base = path.parent().unwrap_or(Path::new("."));
        let enrollment = match (raw.enrollment_secret, raw.enrollment_secret_file) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "enrollment_secret_file",
                    "set enrollment_secret or enrollment_secret_file, not both".to_owned(),
                ));
            }
            (Some(text), None) => {
                check_secret(&text).map_err(|m| invalid("enrollment_secret", m))?;
                Some(EnrollmentSecret::Inline(Secret::new(text.trim())))
            }
            (None, Some(file)) if file.as_os_str().is_empty() => {
                return Err(invalid(
                    "enrollment_secret_file",
                    "must not be empty".to_owned(),
                ));
            }
            (None, Some(file)) => Some(EnrollmentSecret::File(base.join(file))),
            (None, None) => None,
        };
        let proxy = raw
            .proxy
            .as_deref()
            .map(assist_proto::proxy::Proxy::parse)
            .transpose()
            .map_err(|e| invalid("proxy", e))?;
        let keep = |key: &str, value: Option<&str>, default, example: &str| match value {
            None => Ok(default),
            Some(text) => humantime::parse_duration(text).map_err(|e| {
                invalid(
                    key,
                    format!("{text:?} is not a duration like \"{example}\": {e}"),
                )
            }),
        };
        let history_keep = keep(
            "history_keep",
            raw.history_keep.as_deref(),
            DEFAULT_HISTORY_KEEP,
            "90d",
        )?;
        let recordings_keep = keep(
            "recordings_keep",
            raw.recordings_keep.as_deref(),
            DEFAULT_RECORDINGS_KEEP,
            "30d",
        )?;
        Ok(Config {
            proxy,
            history_keep,
            recordings_keep,
            approve_connections: raw.approve_connections,
            path: path.to_owned(),
            serial: raw.serial,
            jumphosts,
            api_urls,
            data_dir: base.join(raw.data_dir),
            web_listen: raw.web_listen,
            target_user: raw.target_user,
            authorized_keys: raw.authorized_keys.map(|p| base.join(p)),
            services,
            jumphost_fingerprints,
            api_trust,
            enrollment,
        })
    }

    /// The serial's enrollment secret, read from its file if it comes from one (which must
    /// not be readable by others).
    pub fn enrollment_secret(&self) -> Result<Option<Secret>, ConfigError> {
        let file = match &self.enrollment {
            None => return Ok(None),
            Some(EnrollmentSecret::Inline(secret)) => return Ok(Some(secret.clone())),
            Some(EnrollmentSecret::File(file)) => file,
        };
        let invalid = |message: String| ConfigError::Invalid {
            path: self.path.clone(),
            key: "enrollment_secret_file".to_owned(),
            message,
        };
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(file)
            .map_err(|e| invalid(format!("cannot read {}: {e}", file.display())))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(invalid(format!(
                "{} may be read by others (mode {mode:o}); run `chmod 600 {}`",
                file.display(),
                file.display()
            )));
        }
        let text = Secret::new(
            std::fs::read_to_string(file)
                .map_err(|e| invalid(format!("cannot read {}: {e}", file.display())))?,
        );
        check_secret(text.expose()).map_err(|m| invalid(format!("{}: {m}", file.display())))?;
        Ok(Some(Secret::new(text.expose().trim())))
    }

    pub fn device_key_path(&self) -> PathBuf {
        self.data_dir.join(DEVICE_KEY_FILE)
    }

    pub fn history_path(&self) -> PathBuf {
        self.data_dir.join(HISTORY_FILE)
    }

    pub fn recordings_dir(&self) -> PathBuf {
        self.data_dir.join(RECORDINGS_DIR)
    }

    pub fn pinned_host_key_path(&self) -> PathBuf {
        self.data_dir.join(PINNED_HOST_KEY_FILE)
    }

    pub fn control_token_path(&self) -> PathBuf {
        self.data_dir.join(CONTROL_TOKEN_FILE)
    }

    pub fn web_addr_path(&self) -> PathBuf {
        self.data_dir.join(WEB_ADDR_FILE)
    }
}

/// `jumphost`: each entry `HOST:PORT` or a `ws://` / `wss://` URL, at least one, none twice.
fn jumphost_list(value: &OneOrMany) -> Result<Vec<String>, String> {
    let list = value.to_vec();
    if list.is_empty() {
        return Err("the list is empty: name at least one jump host".to_owned());
    }
    for (i, entry) in list.iter().enumerate() {
        let at = entry_place(&list, i);
        if entry.starts_with("ws://") || entry.starts_with("wss://") {
            assist_proto::ws::WsUrl::parse(entry).map_err(|e| format!("{at}{e}"))?;
        } else if split_host_port(entry).is_none() {
            return Err(format!(
                "{at}{entry:?} is not HOST:PORT (like jump.example.com:2222) or a wss:// URL \
                 (like wss://jump.example.com/v1/ssh)"
            ));
        }
        if list[..i].contains(entry) {
            return Err(format!("{at}{entry:?} is listed twice"));
        }
    }
    Ok(list)
}

/// `api_url`: the given URL or list (`http://` / `https://`, trailing slash dropped), else
/// the origins of the `ws://` / `wss://` jump hosts.
fn api_url_list(value: Option<&OneOrMany>, jumphosts: &[String]) -> Result<Vec<String>, String> {
    let list = match value {
        Some(value) => value.to_vec(),
        None => {
            let origins: Vec<String> = jumphosts.iter().filter_map(|j| api_origin(j)).collect();
            if origins.is_empty() {
                return Err(format!(
                    "missing: with jumphost = {:?} (raw SSH) the registration API's URL \
                     cannot be guessed; set api_url = \"https://HOST[:PORT]\", or use a \
                     wss:// jumphost, whose origin the API then shares",
                    jumphosts.join(", ")
                ));
            }
            origins
        }
    };
    if list.is_empty() {
        return Err(
            "the list is empty: name at least one API URL, or leave api_url out \
                    with a wss:// jumphost"
                .to_owned(),
        );
    }
    let mut urls: Vec<String> = Vec::new();
    for (i, url) in list.iter().enumerate() {
        let at = entry_place(&list, i);
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(format!("{at}{url:?} must start with http:// or https://"));
        }
        let url = url.trim_end_matches('/').to_owned();
        if urls.contains(&url) {
            return Err(format!("{at}{url:?} is listed twice"));
        }
        urls.push(url);
    }
    Ok(urls)
}

/// Which entry an error is about, when the key holds a list: `entry 2: `.
fn entry_place(list: &[String], i: usize) -> String {
    if list.len() > 1 {
        format!("entry {}: ", i + 1)
    } else {
        String::new()
    }
}

/// The API's URL for a `ws://` / `wss://` jumphost: the same scheme's HTTP origin
/// (`wss://jump.example.com/v1/ssh` → `https://jump.example.com:443`).
fn api_origin(jumphost: &str) -> Option<String> {
    let url = assist_proto::ws::WsUrl::parse(jumphost).ok()?;
    let scheme = if url.tls { "https" } else { "http" };
    let host = if url.host.contains(':') {
        format!("[{}]", url.host)
    } else {
        url.host
    };
    Some(format!("{scheme}://{host}:{}", url.port))
}

/// `api_ca_file` / `api_fingerprint`: at most one, and only for an `https://` api_url.
fn api_trust(
    raw: &RawConfig,
    api_urls: &[String],
    base: &Path,
) -> Result<ApiTrust, (&'static str, String)> {
    let https = api_urls.iter().any(|u| u.starts_with("https://"));
    match (&raw.api_ca_file, &raw.api_fingerprint) {
        (Some(_), Some(_)) => Err((
            "api_fingerprint",
            "set api_fingerprint (pin one certificate) or api_ca_file (trust a CA), not both"
                .to_owned(),
        )),
        (Some(_), None) | (None, Some(_)) if !https => {
            let key = if raw.api_ca_file.is_some() {
                "api_ca_file"
            } else {
                "api_fingerprint"
            };
            Err((
                key,
                format!("only applies to an https:// api_url, and api_url is {api_urls:?}"),
            ))
        }
        (Some(file), None) if file.as_os_str().is_empty() => {
            Err(("api_ca_file", "must not be empty".to_owned()))
        }
        (Some(file), None) => Ok(ApiTrust::CaFile(base.join(file))),
        (None, Some(fp)) => CertFingerprint::parse(fp)
            .map(ApiTrust::Fingerprint)
            .map_err(|e| ("api_fingerprint", e.to_string())),
        (None, None) => Ok(ApiTrust::SystemRoots),
    }
}

/// The virtual port of a service name: `ssh`, `http`, or a port number.
fn service_port(name: &str) -> Option<u32> {
    match name {
        "ssh" => Some(SSH_SERVICE_PORT),
        "http" => Some(HTTP_SERVICE_PORT),
        n => n.parse::<u16>().ok().filter(|p| *p != 0).map(u32::from),
    }
}

/// An enrollment secret is what `assist-jumphost serial secret` prints: 64 hex digits.
fn check_secret(text: &str) -> Result<(), String> {
    assist_proto::enroll::parse_hex_key(text)
        .map(|_| ())
        .map_err(|e| format!("the secret {e} (as `assist-jumphost serial secret` prints it)"))
}

/// Splits `host:port` (IPv6 in brackets) when both parts are present and the port is a number.
pub(crate) fn split_host_port(s: &str) -> Option<(&str, u16)> {
    let (host, port) = s.rsplit_once(':')?;
    let port = port.parse::<u16>().ok().filter(|p| *p != 0)?;
    (!host.is_empty()).then_some((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
serial = "SN-0001"
jumphost = "jump.example.com:2222"
api_url = "http://jump.example.com:8080/"
data_dir = "state"
web_listen = "127.0.0.1:7070"
target_user = "root"

[services]
ssh = "127.0.0.1:22"
http = "127.0.0.1:80"
8443 = "127.0.0.1:8443"
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("/etc/assist/client.toml"), text)
    }

    #[test]
    fn a_websocket_jumphost_gives_the_api_its_origin() {
        let ws = |jumphost: &str| {
            GOOD.replace(
                "jumphost = \"jump.example.com:2222\"",
                &format!("jumphost = \"{jumphost}\""),
            )
            .replace("api_url = \"http://jump.example.com:8080/\"\n", "")
        };
        let c = parse(&ws("wss://jump.example.com/v1/ssh")).unwrap();
        assert_eq!(c.api_urls, ["https://jump.example.com:443"]);
        let c = parse(&ws("ws://[::1]:8080/v1/ssh")).unwrap();
        assert_eq!(c.api_urls, ["http://[::1]:8080"]);
        // An api_url given still wins.
        let both = GOOD.replace(
            "jumphost = \"jump.example.com:2222\"",
            "jumphost = \"wss://jump.example.com/v1/ssh\"",
        );
        assert_eq!(
            parse(&both).unwrap().api_urls,
            ["http://jump.example.com:8080"]
        );
        // Raw SSH gives no clue where the API is.
        let err = parse(&GOOD.replace("api_url = \"http://jump.example.com:8080/\"\n", ""))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("api_url") && err.contains("cannot be guessed"),
            "{err}"
        );
    }

    #[test]
    fn jumphost_and_api_url_take_lists() {
        let c = parse(&GOOD.replace(
            "jumphost = \"jump.example.com:2222\"\napi_url = \"http://jump.example.com:8080/\"",
            "jumphost = [\"a.example.com:2222\", \"wss://b.example.com/v1/ssh\"]\n\
             api_url = [\"https://a.example.com:8443/\", \"https://b.example.com\"]",
        ))
        .unwrap();
        assert_eq!(
            c.jumphosts,
            ["a.example.com:2222", "wss://b.example.com/v1/ssh"]
        );
        assert_eq!(
            c.api_urls,
            ["https://a.example.com:8443", "https://b.example.com"]
        );
        // Without api_url, the WebSocket jump hosts' origins, in order.
        let c = parse(&GOOD.replace(
            "jumphost = \"jump.example.com:2222\"\napi_url = \"http://jump.example.com:8080/\"",
            "jumphost = [\"wss://a.example.com/v1/ssh\", \"b.example.com:2222\", \
             \"ws://c.example.com:8080/v1/ssh\"]",
        ))
        .unwrap();
        assert_eq!(
            c.api_urls,
            ["https://a.example.com:443", "http://c.example.com:8080"]
        );
        // Several fingerprints: one per key of the jump hosts.
        let c = parse(&GOOD.replace(
            "target_user = \"root\"",
            "target_user = \"root\"\njumphost_fingerprint = [\"SHA256:a\", \"SHA256:b\"]",
        ))
        .unwrap();
        assert_eq!(c.jumphost_fingerprints, ["SHA256:a", "SHA256:b"]);
    }

    #[test]
    fn bad_lists_name_the_key_and_the_entry() {
        let top = |jumphost: &str, api_url: &str| {
            GOOD.replace(
                "jumphost = \"jump.example.com:2222\"\napi_url = \"http://jump.example.com:8080/\"",
                &format!("jumphost = {jumphost}\napi_url = {api_url}"),
            )
        };
        let ok_api = "\"http://a:1\"";
        let cases = [
            (top("[]", ok_api), "jumphost", "empty"),
            (
                top("[\"a.example.com:2222\", \"b.example.com\"]", ok_api),
                "jumphost",
                "entry 2: \"b.example.com\" is not HOST:PORT",
            ),
            (
                top("[\"a:1\", \"a:1\"]", ok_api),
                "jumphost",
                "entry 2: \"a:1\" is listed twice",
            ),
            (top("[\"a:1\", 5]", ok_api), "jumphost", "a string"),
            (
                top("5", ok_api),
                "jumphost",
                "a string or a list of strings",
            ),
            (
                top("\"a:1\"", "[\"http://a:1\", \"ftp://b\"]"),
                "api_url",
                "entry 2: \"ftp://b\" must start with http://",
            ),
            (top("\"a:1\"", "[]"), "api_url", "empty"),
            (
                GOOD.replace(
                    "target_user = \"root\"",
                    "target_user = \"root\"\njumphost_fingerprint = [\"SHA256:a\", \"md5:b\"]",
                ),
                "jumphost_fingerprint",
                "\"md5:b\" must look like SHA256:",
            ),
        ];
        for (text, key, words) in cases {
            let err = parse(&text).unwrap_err().to_string();
            assert!(err.contains(key), "{key}: {err}");
            assert!(err.contains(words), "{key}: {words}: {err}");
            assert!(err.contains("/etc/assist/client.toml"), "{err}");
        }
    }

    #[test]
    fn the_contract_keys_alone_work() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.serial, "SN-0001");
        assert_eq!(c.api_urls, ["http://jump.example.com:8080"]);
        assert_eq!(c.jumphosts, ["jump.example.com:2222"]);
        assert_eq!(c.data_dir, Path::new("/etc/assist/state"));
        assert_eq!(c.authorized_keys, None);
        let ports: Vec<_> = c
            .services
            .iter()
            .map(|s| (s.name.as_str(), s.port))
            .collect();
        assert_eq!(ports, [("8443", 8443), ("http", 80), ("ssh", 22)]);
    }

    #[test]
    fn the_example_file_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/client.toml");
        let c = Config::load(&path).unwrap();
        assert!(c.data_dir.is_absolute());
    }

    #[test]
    fn optional_keys_and_absolute_paths() {
        let text = GOOD
            .replace(
                "target_user = \"root\"",
                "target_user = \"root\"\nauthorized_keys = \"/srv/keys\"\njumphost_fingerprint = \"SHA256:abc\"",
            )
            .replace("ssh = \"127.0.0.1:22\"", "22 = \"127.0.0.1:2222\"");
        let c = parse(&text).unwrap();
        assert_eq!(c.authorized_keys.as_deref(), Some(Path::new("/srv/keys")));
        assert_eq!(c.jumphost_fingerprints, ["SHA256:abc"]);
        assert!(
            c.services
                .iter()
                .any(|s| s.port == 22 && s.target == "127.0.0.1:2222")
        );
    }

    #[test]
    fn an_enrollment_secret_comes_inline_or_from_a_private_file() {
        let secret = "0e8625406c4997564857ecc5e2562d800b421c01d25aac1990b0b9866c195167";
        let c = parse(&GOOD.replace(
            "target_user = \"root\"",
            &format!("target_user = \"root\"\nenrollment_secret = \"{secret}\""),
        ))
        .unwrap();
        assert_eq!(c.enrollment_secret().unwrap().unwrap().expose(), secret);
        assert!(
            !format!("{c:?}").contains(secret),
            "the secret reached Debug"
        );
        assert_eq!(parse(GOOD).unwrap().enrollment_secret().unwrap(), None);

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secret");
        std::fs::write(&file, format!("{secret}\n")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let text = GOOD.replace(
            "target_user = \"root\"",
            &format!(
                "target_user = \"root\"\nenrollment_secret_file = \"{}\"",
                file.display()
            ),
        );
        let c = parse(&text).unwrap();
        assert_eq!(c.enrollment_secret().unwrap().unwrap().expose(), secret);
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = c.enrollment_secret().unwrap_err().to_string();
        assert!(
            err.contains("enrollment_secret_file") && err.contains("chmod 600"),
            "{err}"
        );

        for (extra, key) in [
            ("enrollment_secret = \"abc\"", "enrollment_secret"),
            (
                &format!("enrollment_secret = \"{secret}\"\nenrollment_secret_file = \"x\"")[..],
                "enrollment_secret_file",
            ),
        ] {
            let err = parse(&GOOD.replace(
                "target_user = \"root\"",
                &format!("target_user = \"root\"\n{extra}"),
            ))
            .unwrap_err()
            .to_string();
            assert!(err.contains(key), "{extra}: {err}");
        }
    }

    #[test]
    fn history_keep_is_a_duration_ninety_days_by_default() {
        assert_eq!(parse(GOOD).unwrap().history_keep, DEFAULT_HISTORY_KEEP);
        let with = |value: &str| {
            parse(&GOOD.replace(
                "target_user = \"root\"",
                &format!("target_user = \"root\"\nhistory_keep = \"{value}\""),
            ))
        };
        assert_eq!(
            with("30d").unwrap().history_keep,
            std::time::Duration::from_secs(30 * 24 * 3600)
        );
        let err = with("forever").unwrap_err().to_string();
        assert!(err.contains("history_keep"), "{err}");
    }

    #[test]
    fn approval_is_off_and_recordings_keep_thirty_days_by_default() {
        let c = parse(GOOD).unwrap();
        assert!(!c.approve_connections);
        assert_eq!(c.recordings_keep, DEFAULT_RECORDINGS_KEEP);
        let c = parse(&GOOD.replace(
            "target_user = \"root\"",
            "target_user = \"root\"\napprove_connections = true\nrecordings_keep = \"2h\"",
        ))
        .unwrap();
        assert!(c.approve_connections);
        assert_eq!(c.recordings_keep, std::time::Duration::from_secs(7200));
        for (extra, key) in [
            ("recordings_keep = \"a month\"", "recordings_keep"),
            ("approve_connections = \"yes\"", "approve_connections"),
        ] {
            let err = parse(&GOOD.replace(
                "target_user = \"root\"",
                &format!("target_user = \"root\"\n{extra}"),
            ))
            .unwrap_err()
            .to_string();
            assert!(err.contains(key), "{extra}: {err}");
        }
    }

    #[test]
    fn ssh_may_be_the_builtin_target() {
        let c = parse(&GOOD.replace("\"127.0.0.1:22\"", "\"builtin\"")).unwrap();
        let ssh = c.services.iter().find(|s| s.name == "ssh").unwrap();
        assert!(ssh.is_builtin());
        assert!(
            !c.services
                .iter()
                .any(|s| s.name == "http" && s.is_builtin())
        );
    }

    #[test]
    fn bad_configs_name_the_key() {
        let cases = [
            (GOOD.replace("SN-0001", "-bad"), "serial"),
            (
                GOOD.replace("jump.example.com:2222", "jump.example.com"),
                "jumphost",
            ),
            (GOOD.replace("http://jump", "ftp://jump"), "api_url"),
            (GOOD.replace("8443 =", "web ="), "services.web"),
            (
                GOOD.replace("\"127.0.0.1:80\"", "\"localhost\""),
                "services.http",
            ),
            (GOOD.replace("8443 =", "22 ="), "services.ssh"),
        ];
        for (text, key) in cases {
            let err = parse(&text).unwrap_err().to_string();
            assert!(err.contains(&format!("key `{key}`")), "{key}: {err}");
            assert!(err.contains("/etc/assist/client.toml"), "{err}");
        }
        let err = parse(&GOOD.replace("\"127.0.0.1:80\"", "\"builtin\""))
            .unwrap_err()
            .to_string();
        assert!(err.contains("key `services.http`"), "{err}");
        assert!(err.contains("only for the ssh service"), "{err}");
        let no_services = GOOD.split("[services]").next().unwrap();
        assert!(
            parse(no_services)
                .unwrap_err()
                .to_string()
                .contains("services")
        );
    }

    const FP: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn https(extra: &str) -> String {
        GOOD.replace("http://jump", "https://jump").replace(
            "target_user = \"root\"",
            &format!("target_user = \"root\"\n{extra}"),
        )
    }

    #[test]
    fn api_trust_keys_are_read() {
        assert_eq!(parse(&https("")).unwrap().api_trust, ApiTrust::SystemRoots);
        assert_eq!(parse(GOOD).unwrap().api_trust, ApiTrust::SystemRoots);
        let c = parse(&https("api_ca_file = \"ca.pem\"")).unwrap();
        assert_eq!(
            c.api_trust,
            ApiTrust::CaFile(PathBuf::from("/etc/assist/ca.pem"))
        );
        let c = parse(&https(&format!("api_fingerprint = \"{FP}\""))).unwrap();
        assert_eq!(
            c.api_trust,
            ApiTrust::Fingerprint(CertFingerprint::parse(FP).unwrap())
        );
        let colons = FP[7..]
            .to_uppercase()
            .as_bytes()
            .chunks(2)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect::<Vec<_>>()
            .join(":");
        let c = parse(&https(&format!("api_fingerprint = \"{colons}\""))).unwrap();
        assert_eq!(
            c.api_trust,
            ApiTrust::Fingerprint(CertFingerprint::parse(FP).unwrap())
        );
    }

    #[test]
    fn bad_api_trust_keys_are_named() {
        let both = https(&format!(
            "api_ca_file = \"ca.pem\"\napi_fingerprint = \"{FP}\""
        ));
        let cases = [
            (both, "api_fingerprint", "not both"),
            (
                GOOD.replace(
                    "target_user = \"root\"",
                    "target_user = \"root\"\napi_ca_file = \"ca.pem\"",
                ),
                "api_ca_file",
                "https://",
            ),
            (
                GOOD.replace(
                    "target_user = \"root\"",
                    &format!("target_user = \"root\"\napi_fingerprint = \"{FP}\""),
                ),
                "api_fingerprint",
                "https://",
            ),
            (
                https("api_fingerprint = \"sha256:abc\""),
                "api_fingerprint",
                "64 hex digits",
            ),
            (
                https("api_fingerprint = \"SHA256:tLKN6HA4MRIIEKQx/ZzJlkCmIU+D1o5VD4tNOkF+fns\""),
                "api_fingerprint",
                "64 hex digits",
            ),
            (https("api_ca_file = \"\""), "api_ca_file", "empty"),
        ];
        for (text, key, words) in cases {
            let err = parse(&text).unwrap_err().to_string();
            assert!(err.contains(&format!("key `{key}`")), "{key}: {err}");
            assert!(err.contains(words), "{key}: {err}");
        }
    }

    #[test]
    fn a_missing_or_empty_ca_file_fails_the_load() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("client.toml");
        std::fs::write(&file, https("api_ca_file = \"ca.pem\"")).unwrap();
        let err = Config::load(&file).unwrap_err().to_string();
        assert!(err.contains("key `api_ca_file`"), "{err}");
        assert!(
            err.contains(&dir.path().join("ca.pem").display().to_string()),
            "{err}"
        );
        std::fs::write(dir.path().join("ca.pem"), "not a certificate\n").unwrap();
        let err = Config::load(&file).unwrap_err().to_string();
        assert!(err.contains("holds no certificate"), "{err}");
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .self_signed(&rcgen::KeyPair::generate().unwrap())
            .unwrap();
        std::fs::write(dir.path().join("ca.pem"), cert.pem()).unwrap();
        let c = Config::load(&file).unwrap();
        assert_eq!(c.api_trust, ApiTrust::CaFile(dir.path().join("ca.pem")));
    }

    #[test]
    fn unknown_and_missing_keys_are_refused() {
        let err = parse(&format!("colour = \"red\"\n{GOOD}"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("colour"), "{err}");
        let err = parse(&GOOD.replace("target_user = \"root\"", ""))
            .unwrap_err()
            .to_string();
        assert!(err.contains("target_user"), "{err}");
        let err = parse(&GOOD.replace("7070", "x")).unwrap_err().to_string();
        assert!(err.contains("web_listen"), "{err}");
    }
}

//! `jumphost.toml`: where the jump host listens and keeps its state and policies.
//!
//! The four contract keys (`ssh_listen`, `api_listen`, `data_dir`, `policies_dir`) are
//! required; everything else is optional with a named default. Relative paths are resolved
//! against the folder holding the config file, so a config works from any working directory.
//!
//! Without `[api_tls]` the registration API speaks plain HTTP, as the contract's four-key
//! configs expect; [`plain_api_warning`] says when that is risky.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use assist_proto::limits;

use crate::store::{Backend, DatabaseUrl, LOCAL_NODE};
use crate::toml_error;

#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JumphostConfig {
    pub ssh_listen: SocketAddr,
    pub api_listen: SocketAddr,
    pub data_dir: PathBuf,
    pub policies_dir: PathBuf,
    /// How long an unauthenticated SSH connection may take to log in (`"30s"`).
    #[serde(default = "default_login_grace", with = "humantime_serde")]
    pub login_grace: Duration,
    /// Unauthenticated SSH connections in their handshake at once (default 128 per core);
    /// more wait for a place in the startup queue.
    #[serde(default = "default_max_startups")]
    pub max_startups: usize,
    /// Connections that may wait for one of those places, each at most 10 s; more are
    /// refused at once. Default: 64 per place of `max_startups`; 0 refuses at once.
    #[serde(default)]
    pub startup_queue: Option<usize>,
    /// Unauthenticated SSH connections one source may hold at once; more are dropped.
    #[serde(default = "default_max_startups_per_source")]
    pub max_startups_per_source: usize,
    /// Reverse forwards one device session may hold; more are refused.
    #[serde(default = "default_max_forwards_per_device")]
    pub max_forwards_per_device: usize,
    /// File of the key that enrollment secrets are derived from (made on first start, 0600).
    /// Set: the first registration of a serial must prove its secret. Absent: any serial
    /// can be claimed by whoever registers it first.
    #[serde(default)]
    pub enrollment_key: Option<PathBuf>,
    /// Reverse proxies (CIDRs) in front of the API whose `X-Forwarded-For` gives the
    /// client's address for allowlists, penalties and audit. Absent: none is believed.
    #[serde(default)]
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Connections to the API port from `trusted_proxies` start with a PROXY protocol
    /// header (v1 or v2, as HAProxy's `send-proxy` and TCP load balancers send), whose
    /// source address is the client's. Others' connections are taken as they are.
    #[serde(default)]
    pub proxy_protocol: bool,
    /// `[api_tls]`: serve the registration API over HTTPS. Absent: plain HTTP.
    #[serde(default)]
    pub api_tls: Option<ApiTls>,
    /// `GET /metrics` in the Prometheus text format on this address. Absent: no metrics.
    #[serde(default)]
    pub metrics_listen: Option<SocketAddr>,
    /// `postgresql://USER@HOST:PORT/DB`: the store in this PostgreSQL database, which
    /// several jump hosts (nodes) can share. Absent: SQLite in `data_dir`.
    #[serde(default)]
    pub database: Option<DatabaseUrl>,
    /// File holding the database password (its first line), so it stays out of this file.
    /// Without it and without a password in the URL, `PGPASSWORD` is used when set.
    #[serde(default)]
    pub database_password_file: Option<PathBuf>,
    /// `[cluster]`: this jump host as one node of several sharing `database`.
    #[serde(default)]
    pub cluster: Cluster,
}

/// `[cluster]` as written.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    /// The name stamped on the hops and audit rows this node writes, and shown by `status`.
    /// Absent: the machine's host name.
    #[serde(default)]
    pub node: Option<String>,
    /// Where this node listens for the other nodes' peer links (SSH between nodes, which
    /// carries an engineer's hop to the node holding the device). Needs `database`. Absent:
    /// hops reach only devices connected to this node.
    #[serde(default)]
    pub peer_listen: Option<SocketAddr>,
    /// `HOST:PORT` the other nodes dial to reach `peer_listen`, when that is not the bound
    /// address (a wildcard address, NAT, a DNS name). Absent: `peer_listen` as bound.
    #[serde(default)]
    pub advertise: Option<String>,
}

impl<'de> serde::Deserialize<'de> for DatabaseUrl {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        DatabaseUrl::parse(&text)
            .map_err(|e| serde::de::Error::custom(format!("key database: {e}")))
    }
}

/// Where the API's certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "RawApiTls")]
pub enum ApiTls {
    /// PEM files made elsewhere (an ACME client, the company CA): the chain, leaf first,
    /// and its private key.
    Files { cert: PathBuf, key: PathBuf },
    /// A certificate the jump host makes on first start in `data_dir` and reuses; `names`
    /// are extra subject alternative names (DNS names or IP addresses) besides the API's
    /// listen address and localhost.
    SelfSigned { names: Vec<String> },
}

/// `[api_tls]` as written; [`ApiTls`] is the checked form.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApiTls {
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    #[serde(default)]
    self_signed: bool,
    names: Option<Vec<String>>,
}

impl TryFrom<RawApiTls> for ApiTls {
    type Error = String;

    fn try_from(raw: RawApiTls) -> Result<Self, String> {
        match (raw.self_signed, raw.cert, raw.key) {
            (true, None, None) => {
                let names = raw.names.unwrap_or_default();
                for name in &names {
                    if rustls::pki_types::ServerName::try_from(name.as_str()).is_err() {
                        return Err(format!(
                            "key api_tls.names: {name:?} is not a DNS name or an IP address"
                        ));
                    }
                }
                Ok(ApiTls::SelfSigned { names })
            }
            (true, _, _) => Err("key api_tls.self_signed: set either self_signed = true or \
                                 cert and key, not both"
                .into()),
            (false, Some(cert), Some(key)) => {
                if raw.names.is_some() {
                    return Err("key api_tls.names: only used with self_signed = true; the \
                                names of a certificate file are in the file"
                        .into());
                }
                if cert.as_os_str().is_empty() || key.as_os_str().is_empty() {
                    return Err("key api_tls.cert/api_tls.key: must not be empty".into());
                }
                Ok(ApiTls::Files { cert, key })
            }
            (false, Some(_), None) => Err("key api_tls.key: required with api_tls.cert (the \
                                           certificate's private key, PEM)"
                .into()),
            (false, None, Some(_)) => Err("key api_tls.cert: required with api_tls.key (the \
                                           certificate chain, PEM)"
                .into()),
            (false, None, None) => Err("key api_tls: set cert and key (PEM files), or \
                                        self_signed = true; remove [api_tls] for plain HTTP"
                .into()),
        }
    }
}

fn default_login_grace() -> Duration {
    limits::LOGIN_GRACE
}

fn default_max_startups() -> usize {
    limits::max_startups()
}

fn default_max_startups_per_source() -> usize {
    limits::MAX_STARTUPS_PER_SOURCE
}

fn default_max_forwards_per_device() -> usize {
    limits::MAX_FORWARDS_PER_DEVICE
}

impl JumphostConfig {
    /// Reads and validates the file; relative paths are resolved against the file's folder.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config {}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new(""));
        Self::parse(&text, base).with_context(|| format!("config {}", path.display()))
    }

    /// Parses config text; relative paths are resolved against `base`.
    pub fn parse(text: &str, base: &Path) -> anyhow::Result<Self> {
        let mut config: JumphostConfig =
            toml::from_str(text).map_err(|e| anyhow::anyhow!(toml_error::one_line(&e, text)))?;
        config.validate()?;
        config.data_dir = resolve(base, &config.data_dir);
        config.policies_dir = resolve(base, &config.policies_dir);
        if let Some(file) = &mut config.enrollment_key {
            *file = resolve(base, file);
        }
        if let Some(file) = &mut config.database_password_file {
            *file = resolve(base, file);
        }
        if let Some(ApiTls::Files { cert, key }) = &mut config.api_tls {
            *cert = resolve(base, cert);
            *key = resolve(base, key);
        }
        Ok(config)
    }

    fn validate(&self) -> anyhow::Result<()> {
        if self.data_dir.as_os_str().is_empty() {
            anyhow::bail!("key data_dir: must not be empty");
        }
        if self.policies_dir.as_os_str().is_empty() {
            anyhow::bail!("key policies_dir: must not be empty");
        }
        if self.login_grace.is_zero() {
            anyhow::bail!("key login_grace: must be longer than zero");
        }
        if self.max_startups == 0 {
            anyhow::bail!("key max_startups: must be at least 1");
        }
        if self.max_startups_per_source == 0 {
            anyhow::bail!("key max_startups_per_source: must be at least 1");
        }
        if self.max_forwards_per_device == 0 {
            anyhow::bail!("key max_forwards_per_device: must be at least 1");
        }
        if self.proxy_protocol && self.trusted_proxies.is_empty() {
            anyhow::bail!(
                "key proxy_protocol: needs trusted_proxies, the proxies whose PROXY header is \
                 believed (nobody else's is)"
            );
        }
        if self
            .enrollment_key
            .as_ref()
            .is_some_and(|f| f.as_os_str().is_empty())
        {
            anyhow::bail!("key enrollment_key: must not be empty (a file path)");
        }
        match (&self.database, &self.database_password_file) {
            (None, Some(_)) => {
                anyhow::bail!(
                    "key database_password_file: only used with database = \"postgresql://…\""
                )
            }
            (Some(url), Some(_)) if url.has_password() => anyhow::bail!(
                "key database_password_file: the database URL has a password already; keep one"
            ),
            _ => {}
        }
        if let Some(node) = &self.cluster.node {
            assist_proto::validate_name(node)
                .map_err(|e| anyhow::anyhow!("key cluster.node: {node:?}: {e}"))?;
        }
        self.validate_peer_keys()
    }

    /// `peer_listen` needs the shared database (the nodes find each other there) and an
    /// address the other nodes can dial; `advertise` needs `peer_listen`.
    fn validate_peer_keys(&self) -> anyhow::Result<()> {
        let cluster = &self.cluster;
        let Some(listen) = cluster.peer_listen else {
            if cluster.advertise.is_some() {
                anyhow::bail!("key cluster.advertise: only used with cluster.peer_listen");
            }
            return Ok(());
        };
        if self.database.is_none() {
            anyhow::bail!(
                "key cluster.peer_listen: needs database = \"postgresql://…\" (the nodes \
                 find each other and their devices in the shared database)"
            );
        }
        match &cluster.advertise {
            Some(advertise) => {
                check_advertise(advertise)
                    .map_err(|e| anyhow::anyhow!("key cluster.advertise: {advertise:?}: {e}"))?;
            }
            None if listen.ip().is_unspecified() => anyhow::bail!(
                "key cluster.peer_listen: {listen} is no address the other nodes can dial; \
                 set cluster.advertise = \"HOST:PORT\" to the one they should"
            ),
            None => {}
        }
        Ok(())
    }

    /// This jump host's node name: `[cluster] node`, else the host name, else `local`.
    pub fn node(&self) -> String {
        if let Some(node) = &self.cluster.node {
            return node.clone();
        }
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|name| name.trim().to_owned())
            .filter(|name| assist_proto::validate_name(name).is_ok())
            .unwrap_or_else(|| LOCAL_NODE.to_owned())
    }

    /// Where the store lives, with the database password read from
    /// `database_password_file` or `PGPASSWORD` when the URL has none.
    pub fn store_backend(&self) -> anyhow::Result<Backend> {
        let Some(url) = &self.database else {
            return Ok(Backend::Sqlite(self.data_dir.clone()));
        };
        let mut url = url.clone();
        if let Some(file) = &self.database_password_file {
            let text =
                zeroize::Zeroizing::new(std::fs::read_to_string(file).with_context(|| {
                    format!("key database_password_file: reading {}", file.display())
                })?);
            let password = text.lines().next().unwrap_or_default();
            if password.is_empty() {
                anyhow::bail!(
                    "key database_password_file: {} holds no password",
                    file.display()
                );
            }
            url.set_password(password.as_bytes());
        } else if !url.has_password()
            && let Some(password) = std::env::var_os("PGPASSWORD").filter(|p| !p.is_empty())
        {
            use std::os::unix::ffi::OsStrExt;
            url.set_password(password.as_bytes());
        }
        Ok(Backend::Postgres(Box::new(url)))
    }
}

/// `HOST:PORT` with a host name or IP address and a port other nodes can dial.
fn check_advertise(text: &str) -> Result<(), String> {
    let (host, port) = text
        .rsplit_once(':')
        .ok_or("must be HOST:PORT (the address other nodes dial for peer_listen)")?;
    let port: u16 = port
        .parse()
        .map_err(|_| format!("{port:?} is not a port number"))?;
    if port == 0 {
        return Err("port 0 cannot be dialled".into());
    }
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if let Ok(ip) = host.parse::<IpAddr>() {
        if ip.is_unspecified() {
            return Err(format!("{ip} cannot be dialled"));
        }
        return Ok(());
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if host.is_empty() || host.len() > 253 || !host.split('.').all(label_ok) {
        return Err(format!("{host:?} is not a host name or IP address"));
    }
    Ok(())
}

/// Said at every start without `enrollment_key`.
pub const NO_ENROLLMENT_WARNING: &str = "no enrollment_key: any serial the policy allows can \
    be claimed by whoever registers it first; set enrollment_key = \"FILE\" in the config and \
    ship each device its `assist-jumphost serial secret`";

/// The warning to shout at start when the API would carry device keys and serials in clear
/// over a network: no TLS and a listen address other than loopback.
pub fn plain_api_warning(api_listen: SocketAddr, tls: bool) -> Option<String> {
    let ip = match api_listen.ip() {
        IpAddr::V6(v6) => v6.to_canonical(),
        v4 => v4,
    };
    (!tls && !ip.is_loopback()).then(|| {
        format!(
            "registration API on {api_listen} without TLS: device keys and serials travel in \
             clear and can be tampered with; set [api_tls] in the config (self_signed = true, \
             or cert and key)"
        )
    })
}

fn resolve(base: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() || base.as_os_str().is_empty() {
        path.to_path_buf()
    } else {
        base.join(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FOUR_KEYS: &str = r#"
ssh_listen = "127.0.0.1:2222"
api_listen = "127.0.0.1:8080"
data_dir = "data"
policies_dir = "/etc/assist/policies"
"#;

    #[test]
    fn four_keys_are_enough_and_relative_paths_follow_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("jumphost.toml");
        std::fs::write(&file, FOUR_KEYS).unwrap();
        let config = JumphostConfig::load(&file).unwrap();
        assert_eq!(config.ssh_listen, "127.0.0.1:2222".parse().unwrap());
        assert_eq!(config.api_listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(config.data_dir, dir.path().join("data"));
        assert_eq!(config.policies_dir, PathBuf::from("/etc/assist/policies"));
        assert_eq!(config.login_grace, limits::LOGIN_GRACE);
        assert_eq!(config.max_startups, limits::max_startups());
        assert_eq!(config.startup_queue, None);
        assert_eq!(
            config.max_startups_per_source,
            limits::MAX_STARTUPS_PER_SOURCE
        );
    }

    #[test]
    fn optional_keys_are_read() {
        let text = format!(
            "{FOUR_KEYS}login_grace = \"5s\"\nmax_startups = 3\nmax_startups_per_source = 2\n\
             max_forwards_per_device = 4\nenrollment_key = \"enroll.key\"\n"
        );
        let config = JumphostConfig::parse(&text, Path::new("/x")).unwrap();
        assert_eq!(config.enrollment_key, Some(PathBuf::from("/x/enroll.key")));
        assert_eq!(config.login_grace, Duration::from_secs(5));
        assert_eq!(config.max_startups, 3);
        assert_eq!(config.data_dir, PathBuf::from("/x/data"));
    }

    #[test]
    fn unknown_key_is_named_with_its_line_and_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("jumphost.toml");
        std::fs::write(&file, format!("{FOUR_KEYS}sssh_port = 22\n")).unwrap();
        let err = format!("{:#}", JumphostConfig::load(&file).unwrap_err());
        assert!(err.contains("jumphost.toml"), "{err}");
        assert!(err.contains("sssh_port"), "{err}");
        assert!(err.contains("line 6"), "{err}");
    }

    #[test]
    fn missing_and_bad_keys_are_named() {
        let err = JumphostConfig::parse("ssh_listen = \"127.0.0.1:1\"", Path::new(""))
            .unwrap_err()
            .to_string();
        assert!(err.contains("api_listen"), "{err}");
        let bad = FOUR_KEYS.replace("127.0.0.1:2222", "localhost");
        let err = JumphostConfig::parse(&bad, Path::new(""))
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 2"), "{err}");
        let err = JumphostConfig::parse(&format!("{FOUR_KEYS}max_startups = 0"), Path::new(""))
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_startups"), "{err}");
        let zero = format!("{FOUR_KEYS}max_startups_per_source = 0");
        let err = JumphostConfig::parse(&zero, Path::new(""))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("key max_startups_per_source: must be at least 1"),
            "{err}"
        );
    }

    #[test]
    fn missing_file_names_the_path() {
        let err = format!(
            "{:#}",
            JumphostConfig::load(Path::new("/nonexistent/j.toml")).unwrap_err()
        );
        assert!(err.contains("/nonexistent/j.toml"), "{err}");
    }

    #[test]
    fn api_tls_self_signed_and_files_are_read() {
        let text = format!(
            "{FOUR_KEYS}[api_tls]\nself_signed = true\nnames = [\"jump.example.com\", \"203.0.113.7\"]\n"
        );
        let config = JumphostConfig::parse(&text, Path::new("/x")).unwrap();
        assert_eq!(
            config.api_tls,
            Some(ApiTls::SelfSigned {
                names: vec!["jump.example.com".into(), "203.0.113.7".into()]
            })
        );
        let text = format!("{FOUR_KEYS}[api_tls]\ncert = \"tls/api.crt\"\nkey = \"/k.pem\"\n");
        let config = JumphostConfig::parse(&text, Path::new("/x")).unwrap();
        assert_eq!(
            config.api_tls,
            Some(ApiTls::Files {
                cert: PathBuf::from("/x/tls/api.crt"),
                key: PathBuf::from("/k.pem"),
            })
        );
        let config = JumphostConfig::parse(FOUR_KEYS, Path::new("/x")).unwrap();
        assert_eq!(config.api_tls, None);
    }

    #[test]
    fn bad_api_tls_tables_name_the_key_and_line() {
        let cases = [
            (
                "self_signed = true\ncert = \"c\"\nkey = \"k\"",
                "api_tls.self_signed",
            ),
            ("cert = \"c\"", "api_tls.key"),
            ("key = \"k\"", "api_tls.cert"),
            ("", "set cert and key"),
            ("self_signed = false", "set cert and key"),
            (
                "cert = \"c\"\nkey = \"k\"\nnames = [\"a\"]",
                "api_tls.names",
            ),
            (
                "self_signed = true\nnames = [\"not a name\"]",
                "api_tls.names",
            ),
            ("self_signed = \"yes\"", "expected a boolean"),
            ("sel_signed = true", "sel_signed"),
        ];
        for (table, want) in cases {
            let text = format!("{FOUR_KEYS}[api_tls]\n{table}\n");
            let err = format!(
                "{:#}",
                JumphostConfig::parse(&text, Path::new("")).unwrap_err()
            );
            assert!(err.contains(want), "{table:?}: {err}");
            assert!(err.contains("line "), "{table:?}: {err}");
        }
    }

    #[test]
    fn database_and_cluster_keys_are_read_and_the_password_file_is_used() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pw"), "s3cret-from-file\nignored\n").unwrap();
        let text = format!(
            "{FOUR_KEYS}database = \"postgresql://assist@db.example:5433/relay\"\n\
             database_password_file = \"pw\"\n[cluster]\nnode = \"eu-1\"\n"
        );
        let config = JumphostConfig::parse(&text, dir.path()).unwrap();
        assert_eq!(config.node(), "eu-1");
        let Backend::Postgres(url) = config.store_backend().unwrap() else {
            panic!("not on PostgreSQL");
        };
        assert!(url.has_password());
        let shown = format!("{url} {url:?} {config:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(
            shown.contains("postgresql://assist:***@db.example:5433/relay"),
            "{shown}"
        );

        let config = JumphostConfig::parse(FOUR_KEYS, dir.path()).unwrap();
        assert!(
            matches!(config.store_backend().unwrap(), Backend::Sqlite(d) if d == dir.path().join("data"))
        );
        assert!(!config.node().is_empty());
    }

    #[test]
    fn bad_database_and_cluster_keys_are_named_and_hide_the_password() {
        let cases = [
            ("database = \"mysql://a:pw-x@b/c\"", "key database"),
            (
                "database = \"postgresql://a:pw-x@b:nope/c\"",
                "key database",
            ),
            (
                "database = \"postgresql://a:pw-x@b/c\"\ndatabase_password_file = \"f\"",
                "key database_password_file",
            ),
            ("database_password_file = \"f\"", "only used with database"),
            ("[cluster]\nnode = \"a b\"", "key cluster.node"),
            ("[cluster]\npeers = []", "peers"),
            (
                "[cluster]\npeer_listen = \"127.0.0.1:7000\"",
                "key cluster.peer_listen: needs database",
            ),
            (
                "[cluster]\nadvertise = \"a.example:7000\"",
                "key cluster.advertise: only used with cluster.peer_listen",
            ),
        ];
        for (extra, want) in cases {
            let text = format!("{FOUR_KEYS}{extra}\n");
            let err = format!(
                "{:#}",
                JumphostConfig::parse(&text, Path::new("")).unwrap_err()
            );
            assert!(err.contains(want), "{extra:?}: {err}");
            assert!(!err.contains("pw-x"), "{extra:?}: {err}");
        }
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "{FOUR_KEYS}database = \"postgresql://a@b/c\"\ndatabase_password_file = \"missing\"\n"
        );
        let config = JumphostConfig::parse(&text, dir.path()).unwrap();
        let err = format!("{:#}", config.store_backend().unwrap_err());
        assert!(
            err.contains("key database_password_file") && err.contains("missing"),
            "{err}"
        );
    }

    #[test]
    fn peer_keys_are_read_and_bad_advertise_addresses_named() {
        let db = "database = \"postgresql://a@b/c\"\n";
        let text = format!(
            "{FOUR_KEYS}{db}[cluster]\npeer_listen = \"0.0.0.0:7000\"\n\
             advertise = \"node1.internal:7000\"\n"
        );
        let config = JumphostConfig::parse(&text, Path::new("")).unwrap();
        assert_eq!(
            config.cluster.peer_listen,
            Some("0.0.0.0:7000".parse().unwrap())
        );
        for ok in ["10.0.0.5:7000", "[fd00::5]:7000", "node-1.eu.internal:7"] {
            assert_eq!(check_advertise(ok), Ok(()), "{ok}");
        }
        for (advertise, want) in [
            ("node1", "must be HOST:PORT"),
            ("node1:http", "not a port number"),
            ("node1:0", "port 0"),
            ("0.0.0.0:7000", "cannot be dialled"),
            ("bad_host!:7000", "not a host name"),
            (":7000", "not a host name"),
        ] {
            let text = format!(
                "{FOUR_KEYS}{db}[cluster]\npeer_listen = \"127.0.0.1:7000\"\n\
                 advertise = \"{advertise}\"\n"
            );
            let err = format!(
                "{:#}",
                JumphostConfig::parse(&text, Path::new("")).unwrap_err()
            );
            assert!(
                err.contains("key cluster.advertise") && err.contains(want),
                "{advertise}: {err}"
            );
        }
        let text = format!("{FOUR_KEYS}{db}[cluster]\npeer_listen = \"0.0.0.0:7000\"\n");
        let err = format!(
            "{:#}",
            JumphostConfig::parse(&text, Path::new("")).unwrap_err()
        );
        assert!(err.contains("set cluster.advertise"), "{err}");
    }

    #[test]
    fn plain_http_is_loud_only_off_loopback() {
        for addr in [
            "127.0.0.1:8080",
            "[::1]:8080",
            "[::ffff:127.0.0.1]:80",
            "127.0.0.2:0",
        ] {
            assert_eq!(
                plain_api_warning(addr.parse().unwrap(), false),
                None,
                "{addr}"
            );
        }
        for addr in [
            "0.0.0.0:8080",
            "[::]:0",
            "192.0.2.1:443",
            "[2001:db8::1]:8080",
        ] {
            let warning = plain_api_warning(addr.parse().unwrap(), false).unwrap();
            assert!(warning.contains("without TLS"), "{warning}");
            assert!(warning.contains("[api_tls]"), "{warning}");
            assert_eq!(
                plain_api_warning(addr.parse().unwrap(), true),
                None,
                "{addr}"
            );
        }
    }

    #[test]
    fn example_config_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/jumphost.toml");
        let config = JumphostConfig::load(&path).unwrap();
        assert!(config.policies_dir.ends_with("policies"), "{config:?}");
        assert!(
            matches!(config.api_tls, Some(ApiTls::SelfSigned { .. })),
            "{config:?}"
        );
        assert_eq!(config.node(), "eu-1");
    }
}

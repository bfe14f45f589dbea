//! `jumphost.toml`: where the jump host listens and keeps its state and policies.
//!
//! The four contract keys (`ssh_listen`, `api_listen`, `data_dir`, `policies_dir`) are
//! required; everything else is optional with a named default. Relative paths are resolved
//! against the folder holding the config file, so a config works from any working directory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use assist_proto::limits;

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
    /// Unauthenticated SSH connections held at once before new ones are dropped.
    #[serde(default = "default_max_startups")]
    pub max_startups: usize,
}

fn default_login_grace() -> Duration {
    limits::LOGIN_GRACE
}

fn default_max_startups() -> usize {
    limits::MAX_STARTUPS
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
            toml::from_str(text).map_err(|e| anyhow::anyhow!(one_line_toml_error(&e, text)))?;
        config.validate()?;
        config.data_dir = resolve(base, &config.data_dir);
        config.policies_dir = resolve(base, &config.policies_dir);
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
        Ok(())
    }
}

fn resolve(base: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() || base.as_os_str().is_empty() {
        path.to_path_buf()
    } else {
        base.join(path)
    }
}

/// `line L, column C: message` — toml's own rendering spans several lines with a code excerpt,
/// which reads badly in a log line.
pub(crate) fn one_line_toml_error(err: &toml::de::Error, text: &str) -> String {
    // The bare message may span lines too ("invalid table header\nexpected newline, `#`").
    let message = err
        .message()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    match err.span() {
        Some(span) => {
            let (line, col) = line_col(text, span.start);
            format!("line {line}, column {col}: {message}")
        }
        None => message,
    }
}

/// 1-based line and column of a byte offset.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
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
        assert_eq!(config.max_startups, limits::MAX_STARTUPS);
    }

    #[test]
    fn optional_keys_are_read() {
        let text = format!("{FOUR_KEYS}login_grace = \"5s\"\nmax_startups = 3\n");
        let config = JumphostConfig::parse(&text, Path::new("/x")).unwrap();
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

    /// Found by the `policy` fuzz target: toml's message for a broken table header has two
    /// lines, and a policy error must stay one log line.
    #[test]
    fn toml_errors_are_one_line() {
        let text = "[se]asirl\n";
        let err = toml::from_str::<toml::Value>(text).unwrap_err();
        assert!(
            err.message().contains('\n'),
            "toml changed: {:?}",
            err.message()
        );
        let line = one_line_toml_error(&err, text);
        assert!(!line.contains('\n'), "{line:?}");
        assert!(
            line.starts_with("line 1, column 5: invalid table header; "),
            "{line}"
        );
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
    fn example_config_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/jumphost.toml");
        let config = JumphostConfig::load(&path).unwrap();
        assert!(config.policies_dir.ends_with("policies"), "{config:?}");
    }
}

//! Where the CLI's settings come from: flags, then `ASSIST_*` variables, then
//! `~/.config/assist/support.toml`, then built-in defaults.

use anyhow::Context;
use serde::Deserialize;
use std::fmt;
use std::path::{Path, PathBuf};

use crate::error::UsageError;

/// Port used when `--jumphost` names no port (the SSH default, like `ssh`).
const DEFAULT_SSH_PORT: u16 = 22;

/// The optional settings file, relative to the config directory.
const CONFIG_FILE: &str = "assist/support.toml";

/// The settings file: every key is optional, unknown keys are errors.
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub jumphost: Option<String>,
    pub engineer: Option<String>,
    pub identity: Option<PathBuf>,
    pub known_hosts: Option<PathBuf>,
}

/// What the command line said (the global options).
#[derive(Debug, Default, Clone)]
pub struct Flags {
    pub jumphost: Option<String>,
    pub engineer: Option<String>,
    pub identity: Option<PathBuf>,
    pub known_hosts: Option<PathBuf>,
}

/// A jump host address: `HOST:PORT`, `HOST` (port 22) or `[V6]:PORT`; or the jump host's
/// SSH-over-WebSocket URL, `wss://HOST[:PORT][/v1/ssh]` (`ws://` on loopback tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JumpAddr {
    pub host: String,
    pub port: u16,
    /// Set for a `ws://`/`wss://` address: SSH travels inside a WebSocket.
    pub ws: Option<assist_proto::ws::WsUrl>,
    /// The address named no port and `port` is the SSH default: said wherever it matters,
    /// since jump hosts mostly listen elsewhere.
    pub port_assumed: bool,
}

impl JumpAddr {
    pub fn parse(s: &str) -> Result<Self, UsageError> {
        if s.starts_with("ws://") || s.starts_with("wss://") {
            let url = assist_proto::ws::WsUrl::parse(s)
                .map_err(|e| UsageError(format!("--jumphost {e}")))?;
            return Ok(Self {
                host: url.host.clone(),
                port: url.port,
                ws: Some(url),
                port_assumed: false,
            });
        }
        let bad = || {
            UsageError(format!(
                "--jumphost {s:?} is not HOST:PORT (like jump.example.com:2222)"
            ))
        };
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (host, after) = rest.split_once(']').ok_or_else(bad)?;
            match after {
                "" => (host, None),
                p => (host, Some(p.strip_prefix(':').ok_or_else(bad)?)),
            }
        } else {
            match s.rsplit_once(':') {
                Some((h, p)) if !h.contains(':') => (h, Some(p)),
                Some(_) => (s, None),
                None => (s, None),
            }
        };
        if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c == '/') {
            return Err(bad());
        }
        let port_assumed = port.is_none();
        let port = match port {
            Some(p) => p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(bad)?,
            None => DEFAULT_SSH_PORT,
        };
        Ok(Self {
            host: host.to_string(),
            port,
            ws: None,
            port_assumed,
        })
    }

    /// What to tell the person when the port was not given, if it was not.
    pub fn assumed_port_note(&self) -> Option<String> {
        self.port_assumed.then(|| {
            format!(
                "the jump host address {:?} names no port: assumed {} (the SSH default); \
                 give HOST:PORT if the jump host listens elsewhere (often 2222)",
                self.host, self.port
            )
        })
    }
}

impl fmt::Display for JumpAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(url) = &self.ws {
            return f.write_str(&url.url());
        }
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Where the engineer's key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentitySource {
    /// A file named by flag, variable or config: only that key is used.
    File(PathBuf),
    /// Nothing named: the ssh-agent's keys, then this file if it exists.
    Default(PathBuf),
}

/// Where the engineer name came from, for messages about a name the jump host refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineerOrigin {
    Flag,
    Env,
    File,
    User,
}

impl EngineerOrigin {
    /// How the name was given, and how to give another one.
    pub fn describe(self, name: &str) -> String {
        let how = "pass --engineer NAME, set ASSIST_ENGINEER, or put engineer = \"NAME\" in \
                   ~/.config/assist/support.toml";
        match self {
            EngineerOrigin::Flag => format!("{name} came from --engineer"),
            EngineerOrigin::Env => {
                format!("{name} came from ASSIST_ENGINEER; to use another, {how}")
            }
            EngineerOrigin::File => {
                format!("{name} came from the settings file; to use another, {how}")
            }
            EngineerOrigin::User => {
                format!("{name} came from $USER, as no engineer name was given; {how}")
            }
        }
    }
}

/// The resolved settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// `None` when nowhere given; commands that need it say how to set it.
    pub jumphost: Option<String>,
    /// Checked when used: `key` needs no engineer.
    pub engineer: Option<String>,
    pub engineer_origin: EngineerOrigin,
    pub identity: IdentitySource,
    pub known_hosts: PathBuf,
}

impl Settings {
    /// The jump hosts, in the order to try them (`A,B,…`), or a usage error saying the
    /// three ways to give them.
    pub fn jump_addrs(&self) -> Result<Vec<JumpAddr>, UsageError> {
        let s = self.jumphost.as_deref().ok_or_else(|| {
            UsageError(
                "no jump host given: pass --jumphost HOST:PORT, set ASSIST_JUMPHOST, or put \
                 jumphost = \"HOST:PORT\" in ~/.config/assist/support.toml"
                    .into(),
            )
        })?;
        let mut addrs = Vec::new();
        for entry in s.split(',').map(str::trim) {
            if entry.is_empty() {
                return Err(UsageError(format!(
                    "--jumphost {s:?} has an empty entry: give HOST:PORT or a comma-separated \
                     list of them (A:2222,B:2222)"
                )));
            }
            addrs.push(JumpAddr::parse(entry)?);
        }
        Ok(addrs)
    }

    /// The engineer name, checked, or a usage error saying how to give it.
    pub fn engineer(&self) -> Result<&str, UsageError> {
        let name = self.engineer.as_deref().ok_or_else(|| {
            UsageError("no engineer name: pass --engineer NAME or set ASSIST_ENGINEER".into())
        })?;
        assist_proto::validate_name(name)
            .map_err(|e| UsageError(format!("engineer name {name:?} {e}")))?;
        Ok(name)
    }
}

/// Reads the settings file at `path` if it exists.
pub fn read_file(path: &Path) -> anyhow::Result<FileConfig> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(FileConfig::default()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    toml::from_str(&text).with_context(|| format!("in {}", path.display()))
}

/// The settings file location: `$XDG_CONFIG_HOME/assist/support.toml` or
/// `~/.config/assist/support.toml`.
pub fn file_path(env: &dyn Fn(&str) -> Option<String>) -> Option<PathBuf> {
    match env("XDG_CONFIG_HOME").filter(|s| !s.is_empty()) {
        Some(dir) => Some(PathBuf::from(dir).join(CONFIG_FILE)),
        None => env("HOME").map(|h| PathBuf::from(h).join(".config").join(CONFIG_FILE)),
    }
}

/// Merges flags, environment and file, in that order of precedence.
pub fn resolve(flags: Flags, env: &dyn Fn(&str) -> Option<String>, file: FileConfig) -> Settings {
    let var = |k: &str| env(k).filter(|v| !v.is_empty());
    let home = var("HOME").map(PathBuf::from);
    let expand = |p: PathBuf| expand_home(p, home.as_deref());

    let jumphost = flags
        .jumphost
        .or_else(|| var("ASSIST_JUMPHOST"))
        .or(file.jumphost);
    let (engineer, engineer_origin) = if let Some(name) = flags.engineer {
        (Some(name), EngineerOrigin::Flag)
    } else if let Some(name) = var("ASSIST_ENGINEER") {
        (Some(name), EngineerOrigin::Env)
    } else if let Some(name) = file.engineer {
        (Some(name), EngineerOrigin::File)
    } else {
        (var("USER"), EngineerOrigin::User)
    };
    let identity = match flags
        .identity
        .or_else(|| var("ASSIST_IDENTITY").map(PathBuf::from))
        .or(file.identity)
    {
        Some(p) => IdentitySource::File(expand(p)),
        None => IdentitySource::Default(in_home(home.as_deref(), ".ssh/id_ed25519")),
    };
    let known_hosts = flags
        .known_hosts
        .or_else(|| var("ASSIST_KNOWN_HOSTS").map(PathBuf::from))
        .or(file.known_hosts)
        .map(expand)
        .unwrap_or_else(|| in_home(home.as_deref(), ".ssh/known_hosts"));
    Settings {
        jumphost,
        engineer,
        engineer_origin,
        identity,
        known_hosts,
    }
}

fn in_home(home: Option<&Path>, rel: &str) -> PathBuf {
    home.unwrap_or(Path::new("/")).join(rel)
}

/// `~/x` in the settings file means the home directory, as in ssh_config.
fn expand_home(p: PathBuf, home: Option<&Path>) -> PathBuf {
    match (p.strip_prefix("~"), home) {
        (Ok(rest), Some(home)) => home.join(rest),
        _ => p,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    fn file() -> FileConfig {
        FileConfig {
            jumphost: Some("file:1".into()),
            engineer: Some("file-eng".into()),
            identity: Some("~/file_id".into()),
            known_hosts: Some("/file/kh".into()),
        }
    }

    #[test]
    fn flags_beat_env_beat_file() {
        let e = env(&[
            ("HOME", "/home/me"),
            ("USER", "me"),
            ("ASSIST_JUMPHOST", "env:2"),
            ("ASSIST_ENGINEER", "env-eng"),
        ]);
        let flags = Flags {
            jumphost: Some("flag:3".into()),
            engineer: Some("flag-eng".into()),
            identity: Some("/flag/id".into()),
            known_hosts: None,
        };
        let s = resolve(flags, &e, file());
        assert_eq!(s.jumphost.as_deref(), Some("flag:3"));
        assert_eq!(s.engineer().unwrap(), "flag-eng");
        assert_eq!(s.identity, IdentitySource::File("/flag/id".into()));
        assert_eq!(s.known_hosts, PathBuf::from("/file/kh"));

        let s = resolve(Flags::default(), &e, file());
        assert_eq!(s.jumphost.as_deref(), Some("env:2"));
        assert_eq!(s.engineer().unwrap(), "env-eng");
        assert_eq!(s.identity, IdentitySource::File("/home/me/file_id".into()));
    }

    #[test]
    fn file_beats_user_and_defaults() {
        let e = env(&[("HOME", "/home/me"), ("USER", "me")]);
        let s = resolve(Flags::default(), &e, file());
        assert_eq!(s.engineer().unwrap(), "file-eng");
        assert_eq!(s.jumphost.as_deref(), Some("file:1"));

        let s = resolve(Flags::default(), &e, FileConfig::default());
        assert_eq!(s.engineer().unwrap(), "me");
        assert_eq!(s.engineer_origin, EngineerOrigin::User);
        let told = s.engineer_origin.describe("me");
        assert!(
            told.contains("$USER") && told.contains("--engineer"),
            "{told}"
        );
        assert_eq!(s.jumphost, None);
        assert!(s.jump_addrs().unwrap_err().0.contains("ASSIST_JUMPHOST"));
        assert_eq!(
            s.identity,
            IdentitySource::Default("/home/me/.ssh/id_ed25519".into())
        );
        assert_eq!(s.known_hosts, PathBuf::from("/home/me/.ssh/known_hosts"));
    }

    #[test]
    fn bad_engineer_name_is_a_usage_error() {
        let e = env(&[("USER", "not a name")]);
        let s = resolve(Flags::default(), &e, FileConfig::default());
        let err = s.engineer().unwrap_err();
        assert!(err.0.contains("engineer name"), "{}", err.0);
        let s = resolve(Flags::default(), &env(&[]), FileConfig::default());
        assert!(s.engineer().unwrap_err().0.contains("ASSIST_ENGINEER"));
    }

    #[test]
    fn settings_file_is_strict() {
        let ok: FileConfig = toml::from_str("jumphost = \"j:1\"\nengineer = \"bob\"").unwrap();
        assert_eq!(ok.engineer.as_deref(), Some("bob"));
        let err = toml::from_str::<FileConfig>("jumphots = \"j:1\"").unwrap_err();
        assert!(err.to_string().contains("jumphots"), "{err}");

        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            read_file(&dir.path().join("missing.toml")).unwrap(),
            FileConfig::default()
        );
        let p = dir.path().join("support.toml");
        std::fs::write(&p, "identity = 3").unwrap();
        let err = format!("{:#}", read_file(&p).unwrap_err());
        assert!(err.contains("support.toml"), "{err}");
    }

    #[test]
    fn config_file_location() {
        let p = file_path(&env(&[("HOME", "/h")])).unwrap();
        assert_eq!(p, PathBuf::from("/h/.config/assist/support.toml"));
        let p = file_path(&env(&[("HOME", "/h"), ("XDG_CONFIG_HOME", "/x")])).unwrap();
        assert_eq!(p, PathBuf::from("/x/assist/support.toml"));
    }

    #[test]
    fn jump_addresses() {
        let a = JumpAddr::parse("jump.example.com:2222").unwrap();
        assert_eq!((a.host.as_str(), a.port), ("jump.example.com", 2222));
        assert_eq!(JumpAddr::parse("jump").unwrap().port, 22);
        let note = JumpAddr::parse("jump")
            .unwrap()
            .assumed_port_note()
            .unwrap();
        assert!(note.contains("assumed 22"), "{note}");
        assert_eq!(a.assumed_port_note(), None);
        let v6 = JumpAddr::parse("[::1]:2222").unwrap();
        assert_eq!((v6.host.as_str(), v6.port), ("::1", 2222));
        assert_eq!(v6.to_string(), "[::1]:2222");
        assert_eq!(JumpAddr::parse("::1").unwrap().host, "::1");
        let ws = JumpAddr::parse("wss://jump.example.com").unwrap();
        assert_eq!((ws.host.as_str(), ws.port), ("jump.example.com", 443));
        assert_eq!(ws.to_string(), "wss://jump.example.com:443/v1/ssh");
        assert!(JumpAddr::parse("ws://:1").is_err());
        for bad in ["", ":22", "j:0", "j:x", "j:70000", "[::1]x", "a b:1"] {
            assert!(JumpAddr::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_comma_separated_list_of_jump_hosts() {
        let with = |jumphost: &str| Settings {
            jumphost: Some(jumphost.to_owned()),
            ..resolve(Flags::default(), &env(&[]), FileConfig::default())
        };
        let addrs = with("a.example:2222, wss://b.example/v1/ssh,[::1]:22")
            .jump_addrs()
            .unwrap();
        let shown: Vec<String> = addrs.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            ["a.example:2222", "wss://b.example:443/v1/ssh", "[::1]:22"]
        );
        assert_eq!(with("a:1").jump_addrs().unwrap().len(), 1);
        for bad in ["a:1,", ",a:1", "a:1,,b:2", "a:1,b:x"] {
            let err = with(bad).jump_addrs().unwrap_err().0;
            assert!(err.contains("--jumphost"), "{bad}: {err}");
        }
    }
}

//! Admin policies: every `*.toml` in the policy folder, merged into one [`Policy`].
//!
//! Each file may hold any section; files are read in name order. Lists (`support_cidrs`,
//! `client_cidrs`, `[[support]]`, `[serials] allow`) concatenate across files; a scalar
//! (`[keys] client_key_ttl`, `[keys] max_assistance`) may be set in one file only. Every
//! error names the file and the key or line.
//!
//! Defaults when a section is absent — deliberately closed:
//! - `support_cidrs` empty: no engineer may connect from anywhere;
//! - `client_cidrs` empty: devices may connect from anywhere (they still need a registered key);
//! - `[serials] allow` empty: no serial may register;
//! - `client_key_ttl` 30 days, `max_assistance` 8 hours ([`assist_proto::limits`]);
//! - `[penalties]` (optional, one file only): [`PenaltySettings::default`];
//! - `[[support]] serials` / `[[support_ca]] serials` absent: that engineer key or CA may
//!   reach every serial; present: only serials matching one of its glob patterns.
//!
//! An engineer logs in either with a key listed in a `[[support]]` entry, or with an OpenSSH
//! user certificate signed by a `[[support_ca]]` key whose principals include the engineer
//! name. The scope that applies is the one of the entry (or CA) that let the engineer in.

mod parse;
pub mod watch;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use russh::keys::PublicKey;

use crate::penalty::PenaltySettings;

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("{}: cannot read the policy folder: {source}", dir.display())]
    Folder {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: no *.toml policy files in this folder", dir.display())]
    NoFiles { dir: PathBuf },
    #[error("{}: cannot read: {source}", file.display())]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    /// `message` starts with the line and column when known, and names the key.
    #[error("{}: {message}", file.display())]
    Invalid { file: PathBuf, message: String },
    #[error("{key} is set in both {} and {} (set it in one file only)", first.display(), second.display())]
    Duplicate {
        key: &'static str,
        first: PathBuf,
        second: PathBuf,
    },
}

/// Which serials an engineer key or a CA's certificates may reach.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scope {
    /// `None`: every serial (`serials` absent).
    patterns: Option<Vec<glob::Pattern>>,
}

impl Scope {
    /// Every serial.
    pub fn all() -> Self {
        Self { patterns: None }
    }

    pub(crate) fn only(patterns: Vec<glob::Pattern>) -> Self {
        Self {
            patterns: Some(patterns),
        }
    }

    /// Whether `serial` (as the device authenticated with it) is inside the scope.
    pub fn covers(&self, serial: &str) -> bool {
        match &self.patterns {
            None => true,
            Some(patterns) => patterns.iter().any(|p| p.matches(serial)),
        }
    }

    /// The union of two scopes, for one key listed twice.
    fn widen(&mut self, other: &Scope) {
        match (&mut self.patterns, &other.patterns) {
            (Some(mine), Some(theirs)) => mine.extend(theirs.iter().cloned()),
            (mine, _) => *mine = None,
        }
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.patterns {
            None => write!(f, "every serial"),
            Some(p) if p.is_empty() => write!(f, "no serial"),
            Some(p) => {
                let list: Vec<&str> = p.iter().map(glob::Pattern::as_str).collect();
                write!(f, "serials {}", list.join(", "))
            }
        }
    }
}

/// One key of a `[[support]]` entry with the serials it may reach.
#[derive(Debug, Clone)]
struct EngineerKey {
    key: PublicKey,
    scope: Scope,
}

/// A `[[support_ca]]`: an OpenSSH user CA whose certificates log engineers in.
#[derive(Debug, Clone)]
pub struct SupportCa {
    pub key: PublicKey,
    pub scope: Scope,
}

/// The merged policy in force.
#[derive(Debug, Clone)]
pub struct Policy {
    files: Vec<PathBuf>,
    support_cidrs: Vec<IpNet>,
    client_cidrs: Vec<IpNet>,
    engineers: BTreeMap<String, Vec<EngineerKey>>,
    support_cas: Vec<SupportCa>,
    serial_patterns: Vec<glob::Pattern>,
    client_key_ttl: Duration,
    max_assistance: Duration,
    penalties: PenaltySettings,
}

/// The closed defaults of the module docs: nobody may connect or register.
impl Default for Policy {
    fn default() -> Self {
        Self {
            files: Vec::new(),
            support_cidrs: Vec::new(),
            client_cidrs: Vec::new(),
            engineers: BTreeMap::new(),
            support_cas: Vec::new(),
            serial_patterns: Vec::new(),
            client_key_ttl: assist_proto::limits::DEFAULT_CLIENT_KEY_TTL,
            max_assistance: assist_proto::limits::DEFAULT_MAX_ASSISTANCE,
            penalties: PenaltySettings::default(),
        }
    }
}

impl Policy {
    /// Reads and merges every `*.toml` in `dir` (names starting with `.` are skipped, as
    /// editors leave lock and backup files there).
    pub fn load_dir(dir: &Path) -> Result<Policy, PolicyError> {
        let mut texts = Vec::new();
        for file in policy_files(dir)? {
            let text = std::fs::read_to_string(&file).map_err(|source| PolicyError::Read {
                file: file.clone(),
                source,
            })?;
            texts.push((file, text));
        }
        Policy::from_texts(texts.iter().map(|(f, t)| (f.as_path(), t.as_str())))
    }

    /// Parses and merges policy documents in the order given, as [`Policy::load_dir`] does
    /// with the files of a folder; each path names its text in errors. Touches no disk.
    pub fn from_texts<'a>(
        files: impl IntoIterator<Item = (&'a Path, &'a str)>,
    ) -> Result<Policy, PolicyError> {
        let mut merger = parse::Merger::default();
        for (file, text) in files {
            merger.add(file, text)?;
        }
        Ok(merger.finish())
    }

    /// Parses one policy document; `origin` names it in errors. Handy for tests and tools.
    pub fn from_toml(origin: &Path, text: &str) -> Result<Policy, PolicyError> {
        Policy::from_texts([(origin, text)])
    }

    /// Per-source throttling of logins and registrations (`[penalties]`).
    pub fn penalties(&self) -> &PenaltySettings {
        &self.penalties
    }

    pub fn engineer_from_allowed(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.support_cidrs.iter().any(|net| net.contains(&ip))
    }

    /// Empty `client_cidrs` means devices may connect from anywhere.
    pub fn client_from_allowed(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.client_cidrs.is_empty() || self.client_cidrs.iter().any(|net| net.contains(&ip))
    }

    /// Whether a `[[support]]` entry names this engineer (with any key).
    pub fn is_engineer(&self, name: &str) -> bool {
        self.engineers.contains_key(name)
    }

    /// The scope of `key` if it is listed for engineer `name`.
    pub fn engineer_key(&self, name: &str, key: &PublicKey) -> Option<&Scope> {
        self.engineers
            .get(name)?
            .iter()
            .find(|k| k.key.key_data() == key.key_data())
            .map(|k| &k.scope)
    }

    /// The comment of engineer `name`'s listed key `key` (`alice@laptop`), if it has one:
    /// the key a client presents carries none, the policy's line does.
    pub fn engineer_key_comment(&self, name: &str, key: &PublicKey) -> Option<&str> {
        self.engineers
            .get(name)?
            .iter()
            .find(|k| k.key.key_data() == key.key_data())
            .map(|k| AsRef::<str>::as_ref(k.key.comment()))
            .filter(|c| !c.is_empty())
    }

    /// The `[[support_ca]]` with this signing key, if it is listed.
    pub fn support_ca(&self, key: &russh::keys::ssh_key::public::KeyData) -> Option<&SupportCa> {
        self.support_cas.iter().find(|ca| ca.key.key_data() == key)
    }

    /// Whether any `[[support_ca]]` is listed (certificate logins are possible at all).
    pub fn has_support_cas(&self) -> bool {
        !self.support_cas.is_empty()
    }

    /// Whether a serial matches one of the `[serials] allow` patterns (its format is checked
    /// separately, by `assist_proto::validate_name`).
    pub fn serial_allowed(&self, serial: &str) -> bool {
        self.serial_patterns.iter().any(|p| p.matches(serial))
    }

    pub fn client_key_ttl(&self) -> Duration {
        self.client_key_ttl
    }

    pub fn max_assistance(&self) -> Duration {
        self.max_assistance
    }

    /// The files this policy was read from, in merge order.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// Engineer names with their number of keys.
    pub fn engineers(&self) -> impl Iterator<Item = (&str, usize)> {
        self.engineers.iter().map(|(n, k)| (n.as_str(), k.len()))
    }

    pub fn serial_patterns(&self) -> impl Iterator<Item = &str> {
        self.serial_patterns.iter().map(|p| p.as_str())
    }

    pub fn support_cidrs(&self) -> &[IpNet] {
        &self.support_cidrs
    }

    pub fn client_cidrs(&self) -> &[IpNet] {
        &self.client_cidrs
    }

    /// A few lines an admin can read to see what is in force.
    pub fn summary(&self) -> String {
        let names = |files: &[PathBuf]| -> Vec<String> {
            files
                .iter()
                .map(|f| {
                    f.file_name().map_or_else(
                        || f.display().to_string(),
                        |n| n.to_string_lossy().into_owned(),
                    )
                })
                .collect()
        };
        let engineers: Vec<String> = self
            .engineers
            .iter()
            .map(|(name, keys)| {
                let n = keys.len();
                let mut scope = Scope::only(Vec::new());
                keys.iter().for_each(|k| scope.widen(&k.scope));
                format!("{name} ({n} key{}, {scope})", if n == 1 { "" } else { "s" })
            })
            .collect();
        let cas: Vec<String> = self
            .support_cas
            .iter()
            .map(|ca| {
                format!(
                    "{} ({})",
                    ca.key.fingerprint(russh::keys::HashAlg::Sha256),
                    ca.scope
                )
            })
            .collect();
        let nets = |nets: &[IpNet], empty: &str| -> String {
            if nets.is_empty() {
                empty.to_string()
            } else {
                nets.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        };
        let patterns: Vec<&str> = self.serial_patterns().collect();
        let mut out = String::new();
        let _ = writeln!(
            out,
            "files ({}): {}",
            self.files.len(),
            names(&self.files).join(", ")
        );
        let _ = writeln!(
            out,
            "engineers ({}): {}",
            engineers.len(),
            or_none(&engineers.join(", "))
        );
        let _ = writeln!(
            out,
            "engineer certificate CAs ({}): {}",
            cas.len(),
            or_none(&cas.join(", "))
        );
        let _ = writeln!(
            out,
            "serial patterns ({}): {}",
            patterns.len(),
            or_none(&patterns.join(", "))
        );
        let _ = writeln!(
            out,
            "support_cidrs: {}",
            nets(&self.support_cidrs, "none (no engineer may connect)")
        );
        let _ = writeln!(out, "client_cidrs: {}", nets(&self.client_cidrs, "any"));
        let _ = write!(
            out,
            "client_key_ttl: {}, max_assistance: {}",
            humantime::format_duration(self.client_key_ttl),
            humantime::format_duration(self.max_assistance)
        );
        out
    }

    /// Things that are valid but probably not what the admin meant.
    pub fn warnings(&self) -> Vec<&'static str> {
        let mut warnings = Vec::new();
        if self.support_cidrs.is_empty() {
            warnings.push("[allowlist] support_cidrs is empty: no engineer can connect");
        }
        if self.engineers.is_empty() && self.support_cas.is_empty() {
            warnings.push("no [[support]] engineers or [[support_ca]]: nobody can hop to a device");
        }
        if self.serial_patterns.is_empty() {
            warnings.push("[serials] allow is empty: no device can register");
        }
        warnings
    }
}

fn or_none(s: &str) -> &str {
    if s.is_empty() { "none" } else { s }
}

/// The `*.toml` files of `dir`, sorted by name.
fn policy_files(dir: &Path) -> Result<Vec<PathBuf>, PolicyError> {
    let folder_err = |source| PolicyError::Folder {
        dir: dir.to_path_buf(),
        source,
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(folder_err)? {
        let entry = entry.map_err(folder_err)?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') || !name.ends_with(".toml") {
            continue;
        }
        let path = entry.path();
        if path.is_file() {
            files.push(path);
        }
    }
    if files.is_empty() {
        return Err(PolicyError::NoFiles {
            dir: dir.to_path_buf(),
        });
    }
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests;

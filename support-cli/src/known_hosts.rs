//! Host key pinning in OpenSSH's `known_hosts` format: the jump host under `[host]:port`
//! (plain `host` on port 22), each customer machine under its serial.
//!
//! Each line is read as an `ssh-key` known_hosts [`Entry`] here rather than through
//! `russh::keys::known_hosts` or ssh-key's file iterator: the former miscounts lines after
//! comments and the latter skips them (the line to remove must be right), and both fail on
//! any line they cannot parse, where OpenSSH passes over it.

use hmac::{Hmac, KeyInit, Mac};
use russh::keys::ssh_key::known_hosts::{Entry, HostPatterns};
use russh::keys::{HashAlg, PublicKey};
use sha1::Sha1;
use std::io::Write;
use std::path::{Path, PathBuf};

/// What the file says about a host's key.
#[derive(Debug, PartialEq, Eq)]
pub enum Check {
    /// Recorded with this very key.
    Known,
    /// Not recorded at all.
    Unknown,
    /// Recorded with another key: `line` (1-based) is the first entry that disagrees.
    Changed { line: usize },
}

/// The name a host is recorded under, as OpenSSH writes it.
pub fn host_name(host: &str, port: u16) -> String {
    if port == 22 {
        host.to_string()
    } else {
        format!("[{host}]:{port}")
    }
}

/// Looks `name` up in the file; a missing file knows nothing.
pub fn check(path: &Path, name: &str, key: &PublicKey) -> std::io::Result<Check> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Check::Unknown),
        Err(e) => return Err(e),
    };
    let mut changed = None;
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Ok(entry) = line.parse::<Entry>() else {
            continue;
        };
        // Markers (@cert-authority, @revoked) are not plain host keys; skip them.
        if entry.marker().is_some() || !hosts_match(entry.host_patterns(), name) {
            continue;
        }
        if entry.public_key().key_data() == key.key_data() {
            return Ok(Check::Known);
        }
        // A key of another type counts as a change too: stricter than OpenSSH's prompt, and
        // the programs here only ever present ed25519 host keys.
        changed.get_or_insert(i + 1);
    }
    Ok(match changed {
        Some(line) => Check::Changed { line },
        None => Check::Unknown,
    })
}

/// Appends `name key` to the file, creating it and its directories if needed.
pub fn learn(path: &Path, name: &str, key: &PublicKey) -> std::io::Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    let existing = std::fs::read(path).unwrap_or_default();
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    let mut line = String::new();
    if existing.last().is_some_and(|b| *b != b'\n') {
        line.push('\n');
    }
    line.push_str(&entry(name, key)?);
    file.write_all(line.as_bytes())
}

/// The line `name type base64\n` (the comment of a host key means nothing to the reader).
pub fn entry(name: &str, key: &PublicKey) -> std::io::Result<String> {
    let openssh = key.to_openssh().map_err(std::io::Error::other)?;
    let mut parts = openssh.split_whitespace();
    Ok(format!(
        "{name} {} {}\n",
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default()
    ))
}

/// OpenSSH's host patterns: comma-separated names with `*`/`?` wildcards and `!` negation,
/// or one hashed name (`|1|salt|hash`, HMAC-SHA1 of the name keyed with the salt).
fn hosts_match(patterns: &HostPatterns, name: &str) -> bool {
    match patterns {
        HostPatterns::Patterns(patterns) => {
            let mut matched = false;
            for pattern in patterns {
                if let Some(negated) = pattern.strip_prefix('!') {
                    if glob_match(negated.as_bytes(), name.as_bytes()) {
                        return false;
                    }
                } else {
                    matched |= glob_match(pattern.as_bytes(), name.as_bytes());
                }
            }
            matched
        }
        HostPatterns::HashedName { salt, hash } => match Hmac::<Sha1>::new_from_slice(salt) {
            Ok(mac) => mac.chain_update(name.as_bytes()).verify_slice(hash).is_ok(),
            Err(_) => false,
        },
    }
}

fn glob_match(pattern: &[u8], name: &[u8]) -> bool {
    match (pattern.first(), name.first()) {
        (None, None) => true,
        (Some(b'*'), _) => {
            glob_match(&pattern[1..], name) || (!name.is_empty() && glob_match(pattern, &name[1..]))
        }
        (Some(b'?'), Some(_)) => glob_match(&pattern[1..], &name[1..]),
        (Some(p), Some(n)) if p.eq_ignore_ascii_case(n) => glob_match(&pattern[1..], &name[1..]),
        _ => false,
    }
}

/// What a connection checks a presented host key against, and how it talks about it.
#[derive(Debug, Clone)]
pub struct Pin {
    pub path: PathBuf,
    /// The name in the file.
    pub name: String,
    /// How to call the host in messages: "the jump host", "the device SN-1".
    pub label: String,
}

/// The result of verifying a presented key when it was accepted.
#[derive(Debug, PartialEq, Eq)]
pub enum Accepted {
    Known,
    /// First use: the key was recorded; the text says so for stderr.
    Learned(String),
}

impl Pin {
    /// Accepts a known key, records an unknown one, and refuses a changed one with a warning
    /// in OpenSSH's words.
    pub fn verify(&self, key: &PublicKey) -> Result<Accepted, String> {
        let fingerprint = key.fingerprint(HashAlg::Sha256);
        let path = self.path.display();
        match check(&self.path, &self.name, key) {
            Ok(Check::Known) => Ok(Accepted::Known),
            Ok(Check::Unknown) => {
                learn(&self.path, &self.name, key)
                    .map_err(|e| format!("cannot record the host key in {path}: {e}"))?;
                Ok(Accepted::Learned(format!(
                    "Permanently added {} ({}) with {} key {fingerprint} to {path}.",
                    self.label,
                    self.name,
                    key.algorithm()
                )))
            }
            Ok(Check::Changed { line }) => Err(format!(
                "@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@\n\
                 @    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @\n\
                 @@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@\n\
                 IT IS POSSIBLE THAT SOMEONE IS DOING SOMETHING NASTY!\n\
                 Someone could be eavesdropping on you right now (man-in-the-middle attack)!\n\
                 It is also possible that the host key of {label} has just been changed.\n\
                 The fingerprint for the {alg} key sent by {label} ({name}) is\n\
                 {fingerprint}.\n\
                 Offending key in {path}:{line}\n\
                 If you know why it changed, remove that line (ssh-keygen -R '{name}' -f {path}) \
                 and connect again.\n\
                 Host key verification failed.",
                label = self.label,
                name = self.name,
                alg = key.algorithm(),
            )),
            Err(e) => Err(format!("cannot read {path}: {e}")),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use base64::Engine;
    use russh::keys::PrivateKey;
    use russh::keys::ssh_key::private::Ed25519Keypair;

    /// Host patterns as the file spells them.
    fn matches(patterns: &str, name: &str) -> bool {
        hosts_match(&patterns.parse().unwrap(), name)
    }

    fn key(seed: u8) -> PublicKey {
        PrivateKey::from(Ed25519Keypair::from_seed(&[seed; 32]))
            .public_key()
            .clone()
    }

    fn pin(dir: &Path) -> Pin {
        Pin {
            path: dir.join("sub/dir/known_hosts"),
            name: "[127.0.0.1]:2222".into(),
            label: "the jump host".into(),
        }
    }

    #[test]
    fn names_like_openssh() {
        assert_eq!(host_name("jump", 22), "jump");
        assert_eq!(host_name("127.0.0.1", 2222), "[127.0.0.1]:2222");
    }

    #[test]
    fn accepts_records_then_refuses_a_change() {
        let dir = tempfile::tempdir().unwrap();
        let pin = pin(dir.path());
        let learned = pin.verify(&key(1)).unwrap();
        assert!(
            matches!(learned, Accepted::Learned(ref s) if s.contains("SHA256:")),
            "{learned:?}"
        );
        let text = std::fs::read_to_string(&pin.path).unwrap();
        assert!(
            text.starts_with("[127.0.0.1]:2222 ssh-ed25519 AAAA"),
            "{text}"
        );
        assert_eq!(pin.verify(&key(1)).unwrap(), Accepted::Known);

        let warning = pin.verify(&key(2)).unwrap_err();
        assert!(
            warning.contains("REMOTE HOST IDENTIFICATION HAS CHANGED"),
            "{warning}"
        );
        assert!(
            warning.contains(&format!("{}:1", pin.path.display())),
            "{warning}"
        );
        assert!(warning.contains(&key(2).fingerprint(HashAlg::Sha256).to_string()));
        // Nothing was written for the refused key.
        assert_eq!(std::fs::read_to_string(&pin.path).unwrap(), text);
    }

    #[test]
    fn line_numbers_count_comments_and_odd_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kh");
        let k1 = key(1).to_openssh().unwrap();
        std::fs::write(
            &path,
            format!("# comment\n\ngarbage\nother {k1}\n@cert-authority SN-1 {k1}\nSN-1 {k1}"),
        )
        .unwrap();
        assert_eq!(check(&path, "SN-1", &key(1)).unwrap(), Check::Known);
        assert_eq!(
            check(&path, "SN-1", &key(2)).unwrap(),
            Check::Changed { line: 6 }
        );
        assert_eq!(check(&path, "SN-2", &key(2)).unwrap(), Check::Unknown);
        // Appending to a file without a final newline starts a new line.
        learn(&path, "SN-2", &key(2)).unwrap();
        assert_eq!(check(&path, "SN-2", &key(2)).unwrap(), Check::Known);
        assert_eq!(check(&path, "SN-1", &key(1)).unwrap(), Check::Known);
    }

    #[test]
    fn patterns_and_hashed_names() {
        assert!(matches("a,SN-*", "SN-7"));
        assert!(!matches("SN-*,!SN-7", "SN-7"));
        assert!(matches("[127.0.0.1]:2222", "[127.0.0.1]:2222"));
        assert!(!matches("[127.0.0.1]:2223", "[127.0.0.1]:2222"));
        assert!(matches("SN-?", "SN-1") && !matches("SN-?", "SN-12"));
        // `ssh-keygen -H` output for "SN-1" with a fixed salt.
        let salt = [7u8; 20];
        let mac = Hmac::<Sha1>::new_from_slice(&salt)
            .unwrap()
            .chain_update(b"SN-1");
        let b64 = base64::engine::general_purpose::STANDARD;
        let entry = format!(
            "|1|{}|{}",
            b64.encode(salt),
            b64.encode(mac.finalize().into_bytes())
        );
        assert!(matches(&entry, "SN-1"));
        assert!(!matches(&entry, "SN-2"));
    }

    #[test]
    fn missing_file_knows_nothing() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            check(&dir.path().join("none"), "x", &key(1)).unwrap(),
            Check::Unknown
        );
    }
}

//! Parsing one policy file and merging it into the policy being built.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use russh::keys::PublicKey;
use serde::Deserialize;
use toml::Spanned;

use super::{EngineerKey, Policy, PolicyError, Scope, SupportCa};
use crate::toml_error::{line_col, one_line};

/// What one file may contain; every section optional.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    allowlist: Option<Allowlist>,
    #[serde(default)]
    support: Vec<Support>,
    #[serde(default)]
    support_ca: Vec<SupportCaEntry>,
    serials: Option<Serials>,
    keys: Option<Keys>,
    penalties: Option<Penalties>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Allowlist {
    #[serde(default)]
    support_cidrs: Vec<Spanned<String>>,
    #[serde(default)]
    client_cidrs: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Support {
    name: Spanned<String>,
    public_key: Spanned<String>,
    serials: Option<Vec<Spanned<String>>>,
}

/// `[[support_ca]]`: an OpenSSH user CA (`ssh-keygen -s`) trusted to name engineers.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SupportCaEntry {
    public_key: Spanned<String>,
    serials: Option<Vec<Spanned<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Serials {
    #[serde(default)]
    allow: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Keys {
    client_key_ttl: Option<Spanned<String>>,
    max_assistance: Option<Spanned<String>>,
}

/// `[penalties]`: per-source throttling (see [`crate::penalty`]); every key optional.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Penalties {
    free_failures: Option<u32>,
    penalty: Option<Spanned<String>>,
    max_failures: Option<u32>,
    ban: Option<Spanned<String>>,
    register_burst: Option<u32>,
    register_per_minute: Option<u32>,
}

/// Accumulates files in order; remembers which file set each scalar to report duplicates.
#[derive(Default)]
pub(super) struct Merger {
    policy: Policy,
    client_key_ttl: Option<PathBuf>,
    max_assistance: Option<PathBuf>,
    penalties: Option<PathBuf>,
}

impl Merger {
    pub(super) fn add(&mut self, file: &Path, text: &str) -> Result<(), PolicyError> {
        let invalid = |message: String| PolicyError::Invalid {
            file: file.to_path_buf(),
            message,
        };
        // Every semantic error points at the value's line, like toml's own errors do.
        let at = |span: std::ops::Range<usize>, message: String| {
            let (line, col) = line_col(text, span.start);
            invalid(format!("line {line}, column {col}: {message}"))
        };
        let doc: PolicyFile = toml::from_str(text).map_err(|e| invalid(one_line(&e, text)))?;
        let policy = &mut self.policy;

        if let Some(allowlist) = doc.allowlist {
            for (key, values, target) in [
                (
                    "support_cidrs",
                    allowlist.support_cidrs,
                    &mut policy.support_cidrs,
                ),
                (
                    "client_cidrs",
                    allowlist.client_cidrs,
                    &mut policy.client_cidrs,
                ),
            ] {
                for value in values {
                    let net = parse_net(value.get_ref()).map_err(|e| {
                        at(
                            value.span(),
                            format!("[allowlist] {key}: {:?} {e}", value.get_ref()),
                        )
                    })?;
                    target.push(net);
                }
            }
        }

        // `serials` of an entry: absent is every serial, a list is only those patterns.
        let scope =
            |what: &str, values: Option<Vec<Spanned<String>>>| -> Result<Scope, PolicyError> {
                let Some(values) = values else {
                    return Ok(Scope::all());
                };
                let mut patterns = Vec::new();
                for value in values {
                    let pattern = parse_pattern(value.get_ref()).map_err(|e| {
                        at(
                            value.span(),
                            format!("{what} serials: {:?} {e}", value.get_ref()),
                        )
                    })?;
                    patterns.push(pattern);
                }
                Ok(Scope::only(patterns))
            };

        for entry in doc.support {
            let name = entry.name.get_ref();
            assist_proto::validate_name(name)
                .map_err(|e| at(entry.name.span(), format!("[[support]] name: {name:?} {e}")))?;
            let key = PublicKey::from_openssh(entry.public_key.get_ref().trim()).map_err(|e| {
                at(
                    entry.public_key.span(),
                    format!(
                        "[[support]] public_key of {name:?}: not an OpenSSH public key line ({e})"
                    ),
                )
            })?;
            let scope = scope(&format!("[[support]] {name:?}"), entry.serials)?;
            let keys = policy.engineers.entry(name.clone()).or_default();
            match keys.iter_mut().find(|k| k.key.key_data() == key.key_data()) {
                Some(listed) => listed.scope.widen(&scope),
                None => keys.push(EngineerKey { key, scope }),
            }
        }

        for entry in doc.support_ca {
            let key = PublicKey::from_openssh(entry.public_key.get_ref().trim()).map_err(|e| {
                at(
                    entry.public_key.span(),
                    format!("[[support_ca]] public_key: not an OpenSSH public key line ({e})"),
                )
            })?;
            let scope = scope("[[support_ca]]", entry.serials)?;
            match policy
                .support_cas
                .iter_mut()
                .find(|ca| ca.key.key_data() == key.key_data())
            {
                Some(listed) => listed.scope.widen(&scope),
                None => policy.support_cas.push(SupportCa { key, scope }),
            }
        }

        if let Some(serials) = doc.serials {
            for value in serials.allow {
                let pattern = parse_pattern(value.get_ref()).map_err(|e| {
                    at(
                        value.span(),
                        format!("[serials] allow: {:?} {e}", value.get_ref()),
                    )
                })?;
                policy.serial_patterns.push(pattern);
            }
        }

        if let Some(keys) = doc.keys {
            for (key, value, target, set_in) in [
                (
                    "[keys] client_key_ttl",
                    keys.client_key_ttl,
                    &mut policy.client_key_ttl,
                    &mut self.client_key_ttl,
                ),
                (
                    "[keys] max_assistance",
                    keys.max_assistance,
                    &mut policy.max_assistance,
                    &mut self.max_assistance,
                ),
            ] {
                let Some(value) = value else { continue };
                if let Some(first) = set_in {
                    return Err(PolicyError::Duplicate {
                        key,
                        first: first.clone(),
                        second: file.to_path_buf(),
                    });
                }
                *target = parse_duration(value.get_ref())
                    .map_err(|e| at(value.span(), format!("{key}: {:?} {e}", value.get_ref())))?;
                *set_in = Some(file.to_path_buf());
            }
        }

        if let Some(section) = doc.penalties {
            if let Some(first) = &self.penalties {
                return Err(PolicyError::Duplicate {
                    key: "[penalties]",
                    first: first.clone(),
                    second: file.to_path_buf(),
                });
            }
            let p = &mut policy.penalties;
            for (key, value, target) in [
                ("[penalties] penalty", section.penalty, &mut p.penalty),
                ("[penalties] ban", section.ban, &mut p.ban),
            ] {
                if let Some(value) = value {
                    *target = parse_duration(value.get_ref()).map_err(|e| {
                        at(value.span(), format!("{key}: {:?} {e}", value.get_ref()))
                    })?;
                }
            }
            for (key, value, target) in [
                ("free_failures", section.free_failures, &mut p.free_failures),
                ("max_failures", section.max_failures, &mut p.max_failures),
                (
                    "register_burst",
                    section.register_burst,
                    &mut p.register_burst,
                ),
                (
                    "register_per_minute",
                    section.register_per_minute,
                    &mut p.register_per_minute,
                ),
            ] {
                if let Some(value) = value {
                    if value == 0 && key != "free_failures" {
                        return Err(invalid(format!("[penalties] {key} must be at least 1")));
                    }
                    *target = value;
                }
            }
            self.penalties = Some(file.to_path_buf());
        }

        policy.files.push(file.to_path_buf());
        Ok(())
    }

    pub(super) fn finish(self) -> Policy {
        self.policy
    }
}

/// A network in CIDR notation, or a bare address meaning just that host.
fn parse_net(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    if let Ok(net) = s.parse::<IpNet>() {
        return Ok(net);
    }
    match s.parse::<std::net::IpAddr>() {
        Ok(ip) => Ok(IpNet::from(ip)),
        Err(_) => Err("is not an IP network (like \"10.0.0.0/8\") or address".into()),
    }
}

fn parse_pattern(s: &str) -> Result<glob::Pattern, String> {
    if s.trim().is_empty() {
        return Err("is empty; use \"*\" to allow every serial".into());
    }
    glob::Pattern::new(s).map_err(|e| format!("is not a glob pattern ({e})"))
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s)
        .map_err(|e| format!("is not a duration like \"30d\" or \"8h\" ({e})"))?;
    if d.is_zero() {
        return Err("must be longer than zero".into());
    }
    Ok(d)
}

//! The jump host's note to a device about who opens a relayed connection: one JSON line on a
//! `forwarded-tcpip` channel to the reserved [`NOTES_PORT`](crate::limits::NOTES_PORT),
//! opened before the hop's own channel and carrying the same originator address and port, so
//! the agent can tell its customer the engineer's name rather than an address.
//!
//! Only devices that asked `tcpip-forward` for that port get notes (a stock `ssh -R` device
//! never does), and the jump host refuses any engineer's `direct-tcpip` to it, so a note
//! always comes from the jump host.

use serde::{Deserialize, Serialize};

/// Longest note line a device reads; a longer one is dropped.
pub const MAX_NOTE: usize = 4096;

/// Who opens a relayed connection, as the jump host authenticated them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HopNote {
    /// The engineer's name: the `[[support]]` entry, or the certificate's principal.
    pub engineer: String,
    pub via: NoteVia,
    /// The engineer's address as the jump host saw it (`ip:port`).
    pub source: String,
}

/// How the engineer logged in to the jump host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum NoteVia {
    /// A key listed in the policy's `[[support]]` entry.
    Key {
        /// The listed key's comment (`alice@laptop`), if it has one.
        comment: Option<String>,
        /// `SHA256:…`
        fingerprint: String,
    },
    /// An OpenSSH user certificate of a `[[support_ca]]`.
    Certificate {
        /// The certificate's key id (who the CA issued it to).
        key_id: String,
        /// The CA's `SHA256:…` fingerprint.
        ca: String,
    },
}

impl HopNote {
    /// The line the device reads.
    pub fn to_line(&self) -> String {
        let mut line = serde_json::to_string(self).unwrap_or_default();
        line.push('\n');
        line
    }

    /// Parses one note line, `None` if it is not a note.
    pub fn parse(bytes: &[u8]) -> Option<HopNote> {
        let text = std::str::from_utf8(bytes).ok()?;
        let note: HopNote = serde_json::from_str(text.trim_end()).ok()?;
        crate::validate_name(&note.engineer).ok()?;
        Some(note)
    }

    /// The engineer as a customer reads it: `alice (vendor key 'alice@laptop')`,
    /// `alice (certificate 'alice@corp' of CA SHA256:…)`.
    pub fn who(&self) -> String {
        let name = &self.engineer;
        match &self.via {
            NoteVia::Key {
                comment: Some(c), ..
            } if !c.is_empty() => format!("{name} (vendor key '{}')", printable(c)),
            NoteVia::Key { fingerprint, .. } => format!("{name} (vendor key {fingerprint})"),
            NoteVia::Certificate { key_id, ca } => {
                format!("{name} (certificate '{}' of CA {ca})", printable(key_id))
            }
        }
    }
}

/// A comment or key id with control characters replaced, so a note cannot rewrite a terminal.
fn printable(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_note_round_trips_and_reads_as_the_customer_sees_it() {
        let key = HopNote {
            engineer: "alice".into(),
            via: NoteVia::Key {
                comment: Some("alice@laptop".into()),
                fingerprint: "SHA256:x".into(),
            },
            source: "203.0.113.5:41644".into(),
        };
        let line = key.to_line();
        assert!(line.ends_with('\n') && !line[..line.len() - 1].contains('\n'));
        assert_eq!(HopNote::parse(line.as_bytes()), Some(key.clone()));
        assert_eq!(key.who(), "alice (vendor key 'alice@laptop')");
        let cert = HopNote {
            engineer: "bob".into(),
            via: NoteVia::Certificate {
                key_id: "bob@corp\x1b[2J".into(),
                ca: "SHA256:ca".into(),
            },
            source: "127.0.0.1:1".into(),
        };
        assert_eq!(
            cert.who(),
            "bob (certificate 'bob@corp?[2J' of CA SHA256:ca)"
        );
    }

    #[test]
    fn junk_and_bad_names_are_not_notes() {
        assert_eq!(HopNote::parse(b"hello\n"), None);
        assert_eq!(HopNote::parse(b"\xff"), None);
        let bad = r#"{"engineer":"a b","via":{"kind":"key","comment":null,"fingerprint":"x"},"source":"1"}"#;
        assert_eq!(HopNote::parse(bad.as_bytes()), None);
    }
}

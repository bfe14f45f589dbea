//! The customer's recording of each built-in session, in asciicast v2 (what `asciinema play`
//! replays): a JSON header line, then one `[seconds, "o"|"i"|"r", data]` line per event,
//! written and flushed as it happens so a crash loses nothing already shown.
//!
//! Files are `data_dir/recordings/YYYYMMDDTHHMMSSZ-<engineer>-<n>.cast`, the folder 0700 and
//! each file 0600, created without following a link planted at either name.

use crate::config::RECORDINGS_DIR;
use crate::recordings::EXTENSION;
use assist_proto::private_file::{Folder, PrivateFileError};
use std::ffi::OsStr;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;
use time::OffsetDateTime;

/// Numbers recordings within one run, so two sessions in the same second differ.
static NEXT: AtomicU64 = AtomicU64::new(1);

/// Largest recording of one session. A bulk transfer through a command (`tar c / | ssh …`)
/// is recorded as JSON text, up to 6 bytes for each byte that is not printable UTF-8, and
/// must not fill a small device's disk: past this, the recording ends with a line saying so
/// (shown when it is played back) and the session goes on unrecorded.
pub const MAX_RECORDING: u64 = 64 * 1024 * 1024;

/// What a recording's header says about its session.
#[derive(Debug, Clone)]
pub struct Header {
    pub engineer: String,
    pub from: String,
    /// `None` for an interactive shell.
    pub command: Option<String>,
    pub cols: u16,
    pub rows: u16,
    pub term: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error(transparent)]
    File(#[from] PrivateFileError),
    #[error("cannot write the recording {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// One session's recording, open for appending.
pub struct Recording {
    file: File,
    path: PathBuf,
    started: Instant,
    output: Utf8Carry,
    input: Utf8Carry,
    /// One event's line, reused: a busy session writes thousands a second.
    line: Vec<u8>,
    /// Bytes in the file so far, and the most it may hold ([`MAX_RECORDING`]).
    written: u64,
    limit: u64,
    /// Whether the limit was reached: later events are not written.
    full: bool,
}

impl Recording {
    /// Creates the session's file in `data_dir/recordings` and writes its header.
    pub fn create(data_dir: &Path, header: &Header) -> Result<Self, RecordError> {
        Self::create_limited(data_dir, header, MAX_RECORDING)
    }

    /// As [`Recording::create`], holding at most `limit` bytes.
    fn create_limited(data_dir: &Path, header: &Header, limit: u64) -> Result<Self, RecordError> {
        let folder =
            Folder::open(data_dir)?.create_folder(OsStr::new(RECORDINGS_DIR), 0o700, None)?;
        let now = OffsetDateTime::now_utc();
        let stamp = now
            .format(time::macros::format_description!(
                "[year][month][day]T[hour][minute][second]Z"
            ))
            .unwrap_or_else(|_| now.unix_timestamp().to_string());
        let engineer = file_safe(&header.engineer);
        let (file, path) = loop {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let name = format!("{stamp}-{engineer}-{n}.{EXTENSION}");
            match folder.create_new(OsStr::new(&name), 0o600) {
                Ok(file) => break (file, folder.path().join(name)),
                Err(PrivateFileError::Exists { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        };
        let title = format!(
            "{} from {}: {}",
            header.engineer,
            header.from,
            header.command.as_deref().unwrap_or("shell")
        );
        let mut env = serde_json::Map::new();
        if let Some(term) = &header.term {
            env.insert("TERM".into(), term.clone().into());
        }
        let line = serde_json::json!({
            "version": 2,
            "width": header.cols,
            "height": header.rows,
            "timestamp": now.unix_timestamp(),
            "title": title,
            "env": env,
            "assist": {
                "engineer": header.engineer,
                "from": header.from,
                "command": header.command,
                "service": "ssh",
            },
        });
        let mut recording = Recording {
            file,
            path,
            started: Instant::now(),
            output: Utf8Carry::default(),
            input: Utf8Carry::default(),
            line: Vec::new(),
            written: 0,
            limit,
            full: false,
        };
        recording.line = line.to_string().into_bytes();
        recording.write_line()?;
        Ok(recording)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What the session printed.
    pub fn output(&mut self, bytes: &[u8]) -> Result<(), RecordError> {
        let text = self.output.decode(bytes);
        self.event("o", &text)
    }

    /// What the engineer typed (or sent to the command's stdin).
    pub fn input(&mut self, bytes: &[u8]) -> Result<(), RecordError> {
        let text = self.input.decode(bytes);
        self.event("i", &text)
    }

    /// The engineer's terminal changed size.
    pub fn resize(&mut self, cols: u16, rows: u16) -> Result<(), RecordError> {
        self.event("r", &format!("{cols}x{rows}"))
    }

    fn event(&mut self, kind: &str, data: &str) -> Result<(), RecordError> {
        if data.is_empty() || self.full {
            return Ok(());
        }
        self.encode(kind, data)?;
        // The closing line's room is kept, so the file never passes the limit.
        if self.written + self.line.len() as u64 + 1 + CLOSING_ROOM > self.limit {
            self.full = true;
            let note = format!(
                "\r\n[assist-client: this recording stops here, at its limit of {} MiB; the \
                 session went on unrecorded]\r\n",
                self.limit >> 20
            );
            self.encode("o", &note)?;
            tracing::warn!(path = %self.path.display(), "recording reached its limit; the rest of the session is not recorded");
        }
        self.write_line()
    }

    /// Puts one event in `self.line`, straight from the text: no JSON value in between.
    fn encode(&mut self, kind: &str, data: &str) -> Result<(), RecordError> {
        let t = (self.started.elapsed().as_secs_f64() * 1e6).round() / 1e6;
        self.line.clear();
        serde_json::to_writer(&mut self.line, &(t, kind, data))
            .map_err(std::io::Error::from)
            .map_err(|source| RecordError::Write {
                path: self.path.clone(),
                source,
            })
    }

    /// Writes `self.line` and its newline.
    fn write_line(&mut self) -> Result<(), RecordError> {
        self.line.push(b'\n');
        // One write per event, unbuffered: what was shown is on disk, whatever follows.
        self.file
            .write_all(&self.line)
            .map_err(|source| RecordError::Write {
                path: self.path.clone(),
                source,
            })?;
        self.written += self.line.len() as u64;
        Ok(())
    }
}

/// Room kept under the limit for the line that says the recording stopped.
const CLOSING_ROOM: u64 = 256;

/// An engineer's name as a file name's part: `[A-Za-z0-9._-]`, anything else `_`.
fn file_safe(name: &str) -> String {
    let safe: String = name
        .chars()
        .take(64)
        .map(|c| match c {
            'A'..='Z' | 'a'..='z' | '0'..='9' | '.' | '_' | '-' => c,
            _ => '_',
        })
        .collect();
    match safe.trim_start_matches('.') {
        "" => "unknown".to_owned(),
        s => s.to_owned(),
    }
}

/// Text from a byte stream cut anywhere: a character split between two reads is kept until
/// its end arrives; bytes that are no UTF-8 become U+FFFD.
#[derive(Default)]
struct Utf8Carry {
    pending: Vec<u8>,
}

impl Utf8Carry {
    fn decode<'a>(&mut self, bytes: &'a [u8]) -> std::borrow::Cow<'a, str> {
        // The usual case, whole characters only: the text is the bytes, not a copy.
        if self.pending.is_empty()
            && let Ok(text) = std::str::from_utf8(bytes)
        {
            return std::borrow::Cow::Borrowed(text);
        }
        self.pending.extend_from_slice(bytes);
        let mut text = String::new();
        let mut rest: &[u8] = &self.pending;
        loop {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    text.push_str(s);
                    rest = &[];
                    break;
                }
                Err(e) => {
                    let (good, after) = rest.split_at(e.valid_up_to());
                    text.push_str(std::str::from_utf8(good).unwrap_or_default());
                    match e.error_len() {
                        Some(bad) => {
                            text.push(char::REPLACEMENT_CHARACTER);
                            rest = &after[bad..];
                        }
                        // An incomplete character at the end: wait for the rest.
                        None => {
                            rest = after;
                            break;
                        }
                    }
                }
            }
        }
        self.pending = rest.to_vec();
        std::borrow::Cow::Owned(text)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn header() -> Header {
        Header {
            engineer: "alice/../x y".into(),
            from: "127.0.0.1:5000".into(),
            command: None,
            cols: 100,
            rows: 30,
            term: Some("xterm-256color".into()),
        }
    }

    #[test]
    fn a_recording_is_asciicast_v2_with_input_output_and_resizes() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = Recording::create(dir.path(), &header()).unwrap();
        r.output(b"$ ").unwrap();
        r.input(b"echo \xc3").unwrap();
        r.input(b"\xa9\r").unwrap();
        r.resize(120, 40).unwrap();
        r.output(b"\xff").unwrap();
        let path = r.path().to_owned();
        drop(r);
        let name = path.file_name().unwrap().to_str().unwrap();
        assert!(name.ends_with(".cast"), "{name}");
        assert!(name.contains("-alice_.._x_y-"), "{name}");
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let folder = std::fs::metadata(dir.path().join(RECORDINGS_DIR)).unwrap();
        assert_eq!(folder.permissions().mode() & 0o777, 0o700);
        let text = std::fs::read_to_string(&path).unwrap();
        let mut lines = text.lines();
        let head: serde_json::Value = serde_json::from_str(lines.next().unwrap()).unwrap();
        assert_eq!(head["version"], 2);
        assert_eq!(head["width"], 100);
        assert_eq!(head["height"], 30);
        assert_eq!(head["env"]["TERM"], "xterm-256color");
        assert_eq!(head["title"], "alice/../x y from 127.0.0.1:5000: shell");
        assert_eq!(head["assist"]["command"], serde_json::Value::Null);
        assert_eq!(head["assist"]["service"], "ssh");
        let events: Vec<serde_json::Value> =
            lines.map(|l| serde_json::from_str(l).unwrap()).collect();
        let kinds: Vec<(&str, &str)> = events
            .iter()
            .map(|e| (e[1].as_str().unwrap(), e[2].as_str().unwrap()))
            .collect();
        assert_eq!(
            kinds,
            [
                ("o", "$ "),
                ("i", "echo "),
                ("i", "é\r"),
                ("r", "120x40"),
                ("o", "\u{fffd}")
            ]
        );
        assert!(
            events
                .windows(2)
                .all(|w| w[0][0].as_f64() <= w[1][0].as_f64())
        );
    }

    #[test]
    fn a_recording_stops_at_its_limit_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let limit = 4096;
        let mut r = Recording::create_limited(dir.path(), &header(), limit).unwrap();
        r.output(b"kept\r\n").unwrap();
        // Zero bytes are 6 JSON bytes each: the worst case of a bulk binary transfer.
        for _ in 0..100 {
            r.output(&[0u8; 1000]).unwrap();
        }
        r.input(b"typed after the limit").unwrap();
        let path = r.path().to_owned();
        drop(r);
        let size = std::fs::metadata(&path).unwrap().len();
        assert!(size <= limit, "{size} > {limit}");
        let text = std::fs::read_to_string(&path).unwrap();
        let events: Vec<serde_json::Value> = text
            .lines()
            .skip(1)
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(events[0][2], "kept\r\n");
        let last = events.last().unwrap();
        assert_eq!(last[1], "o");
        assert!(
            last[2]
                .as_str()
                .unwrap()
                .contains("stops here, at its limit"),
            "{last}"
        );
        assert!(!text.contains("typed after the limit"));
    }

    #[test]
    fn a_planted_link_does_not_redirect_the_recordings() {
        let dir = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(elsewhere.path(), dir.path().join(RECORDINGS_DIR)).unwrap();
        let err = Recording::create(dir.path(), &header()).err().unwrap();
        assert!(err.to_string().contains("link"), "{err}");
        assert_eq!(std::fs::read_dir(elsewhere.path()).unwrap().count(), 0);
    }
}

//! The local terminal during an interactive session: raw mode that is always undone, and
//! stdin read on a thread of its own.

use tokio::sync::mpsc;

/// Raw mode for as long as this lives; dropping it (normal return, error, panic unwinding)
/// restores the terminal.
pub struct RawMode(());

impl RawMode {
    pub fn enable() -> std::io::Result<Self> {
        crossterm::terminal::enable_raw_mode()?;
        // A panic hook runs before unwinding prints the message: restore first so the
        // message is readable, then the Drop below is a harmless repeat.
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let _ = crossterm::terminal::disable_raw_mode();
            previous(info);
        }));
        Ok(Self(()))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = crossterm::terminal::disable_raw_mode();
    }
}

/// Size of the local terminal as (columns, rows), 80x24 when unknown.
pub fn size() -> (u32, u32) {
    crossterm::terminal::size()
        .map(|(c, r)| (u32::from(c), u32::from(r)))
        .unwrap_or((80, 24))
}

/// Bytes read from stdin, by a plain thread: tokio's stdin cannot be cancelled and would
/// keep the process alive at exit waiting for a key press. `None`-terminated by closing.
pub fn stdin_chunks() -> mpsc::Receiver<Vec<u8>> {
    const CHUNK: usize = 256 * 1024;
    let (tx, rx) = mpsc::channel(8);
    std::thread::spawn(move || {
        use std::io::Read;
        let mut stdin = std::io::stdin().lock();
        let mut buf = vec![0u8; CHUNK];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if tx.blocking_send(buf[..n].to_vec()).is_err() {
                        break;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::debug!("reading stdin: {e}");
                    break;
                }
            }
        }
    });
    rx
}

/// The engineer's stdout or stderr, written in place from the async task that has the
/// bytes. tokio's own stdout hands every chunk to a blocking-pool thread and waits for it
/// (and std's `Stdout` scans each chunk for a newline to flush at): under a loaded CPU
/// those hand-offs, not the network, set the pace of a download (bench/NOTES.md, fan-in).
/// The runtime is single-threaded (main.rs), so a write that blocks (the reader is slow)
/// pauses the session until the reader catches up: the same back-pressure a full window
/// gives, and nothing is buffered without bound.
pub struct Output {
    file: std::fs::File,
}

impl Output {
    pub fn stdout() -> std::io::Result<Self> {
        use std::os::fd::AsFd;
        Ok(Self {
            file: std::io::stdout().as_fd().try_clone_to_owned()?.into(),
        })
    }

    pub fn stderr() -> std::io::Result<Self> {
        use std::os::fd::AsFd;
        Ok(Self {
            file: std::io::stderr().as_fd().try_clone_to_owned()?.into(),
        })
    }

    pub fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        use std::io::Write;
        self.file.write_all(bytes)
    }
}

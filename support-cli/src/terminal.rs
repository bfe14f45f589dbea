//! The local terminal during an interactive session: raw mode that is always undone, and
//! stdout and stderr written in place.

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

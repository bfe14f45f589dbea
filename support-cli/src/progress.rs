//! Stage reporting on stderr: a spinner with the current stage and a check mark with its
//! duration once done, only when stderr is a terminal and `-q` was not given.

use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use assist_proto::lock;

const FRAMES: &[&str] = &["⠋", "⠙", "⠹", "⠸", "⠼", "⠴", "⠦", "⠧", "⠇", "⠏"];
const TICK: Duration = Duration::from_millis(80);

#[derive(Default)]
struct State {
    current: Option<(String, Instant)>,
    stopped: bool,
}

/// Cheap to clone; all clones report into the same line.
#[derive(Clone)]
pub struct Progress {
    /// Stages shown at all (a terminal, not quiet).
    live: bool,
    /// Notes (such as a newly recorded host key) shown: everything but `-q`.
    notes: bool,
    state: Arc<Mutex<State>>,
}

impl Progress {
    pub fn new(quiet: bool) -> Self {
        let live = !quiet && std::io::stderr().is_terminal();
        let progress = Self {
            live,
            notes: !quiet,
            state: Arc::default(),
        };
        if live {
            let state = progress.state.clone();
            std::thread::spawn(move || spin(&state));
        }
        progress
    }

    /// Ends the previous stage (with its duration) and starts showing `what`.
    pub fn stage(&self, what: impl Into<String>) {
        if !self.live {
            return;
        }
        let mut state = lock::mutex(&self.state);
        finish_line(&mut state, None);
        state.current = Some((what.into(), Instant::now()));
    }

    /// Ends the current stage with a detail after the check mark, like "(212 ms)".
    pub fn done(&self, detail: Option<String>) {
        if !self.live {
            return;
        }
        finish_line(&mut lock::mutex(&self.state), detail);
    }

    /// Clears the spinner line before something else writes to the terminal.
    pub fn stop(&self) {
        if !self.live {
            return;
        }
        let mut state = lock::mutex(&self.state);
        if state.current.take().is_some() {
            eprint!("\r\x1b[2K");
        }
        state.stopped = true;
    }

    /// A message that must be seen even when stages are not shown (unless `-q`).
    pub fn note(&self, text: &str) {
        if !self.notes {
            return;
        }
        // Held while printing, so the spinner does not draw over the note.
        let state = lock::mutex(&self.state);
        if self.live && state.current.is_some() {
            eprintln!("\r\x1b[2K{text}");
        } else {
            eprintln!("{text}");
        }
    }

    /// Runs `f` (a passphrase prompt) with the spinner paused.
    pub fn paused<T>(&self, f: impl FnOnce() -> T) -> T {
        let _state = lock::mutex(&self.state);
        if self.live {
            eprint!("\r\x1b[2K");
        }
        f()
    }
}

fn finish_line(state: &mut State, detail: Option<String>) {
    if let Some((what, started)) = state.current.take() {
        let detail = detail.unwrap_or_else(|| format!("{} ms", started.elapsed().as_millis()));
        eprintln!("\r\x1b[2K✓ {what} ({detail})");
    }
}

fn spin(state: &Mutex<State>) {
    for frame in FRAMES.iter().cycle() {
        std::thread::sleep(TICK);
        let state = lock::mutex(state);
        if state.stopped {
            return;
        }
        if let Some((what, _)) = &state.current {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K{frame} {what}…");
            let _ = err.flush();
        }
    }
}

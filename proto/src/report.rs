//! How the three programs end on an error: the chain of causes as one sentence on stderr,
//! never a stack trace, whatever `RUST_BACKTRACE` says; `--debug` or `ASSIST_DEBUG=1` adds
//! the chain one cause a line (and the backtrace, when one was captured).

/// The variable that asks for the debug report without the flag.
pub const DEBUG_VAR: &str = "ASSIST_DEBUG";

/// Whether the debug report is wanted: the flag, or `ASSIST_DEBUG` set to anything but
/// empty, `0` or `false`.
pub fn debug_wanted(flag: bool, env: &dyn Fn(&str) -> Option<String>) -> bool {
    flag || env(DEBUG_VAR).is_some_and(|v| !matches!(v.trim(), "" | "0" | "false"))
}

/// The error as a person reads it: `program: what failed: why`.
pub fn sentence(program: &str, err: &anyhow::Error) -> String {
    format!("{program}: {}", format!("{err:#}").trim_end())
}

/// Prints the error to stderr as [`sentence`] says, plus the debug report if wanted.
pub fn print(program: &str, err: &anyhow::Error, debug: bool) {
    eprintln!("{}", sentence(program, err));
    if debug {
        eprintln!("\n{err:?}");
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn one_line_whatever_the_chain() {
        let err = anyhow::anyhow!("no such file").context("cannot load the configuration");
        assert_eq!(
            sentence("assist-client", &err),
            "assist-client: cannot load the configuration: no such file"
        );
    }

    #[test]
    fn debug_from_flag_or_variable() {
        let none = |_: &str| None;
        assert!(!debug_wanted(false, &none));
        assert!(debug_wanted(true, &none));
        let set = |_: &str| Some("1".to_owned());
        assert!(debug_wanted(false, &set));
        let off = |_: &str| Some("0".to_owned());
        assert!(!debug_wanted(false, &off));
    }
}

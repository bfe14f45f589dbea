//! Log setup shared by the three programs: to stderr, filtered by `RUST_LOG`, with colours
//! only when a person is watching (log files, journald and tests read plain text).
//!
//! `RUST_LOG` is a list of `level` and `target=level` (`info,assist_client=debug`), read by
//! tracing-subscriber's `Targets`: the same syntax as its `EnvFilter` without span and field
//! filters, whose regex engine was a quarter MiB of the agent's binary (bench/NOTES.md).

use std::io::IsTerminal;

use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Installs the global subscriber; `default_filter` applies when `RUST_LOG` is unset or is
/// not a valid filter.
pub fn init(default_filter: &str) {
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::stderr().is_terminal()),
        )
        .with(filter(
            std::env::var("RUST_LOG").ok().as_deref(),
            default_filter,
        ))
        .init();
}

/// `RUST_LOG`'s filter, or `default_filter`'s when it is unset, empty or invalid.
fn filter(rust_log: Option<&str>, default_filter: &str) -> Targets {
    rust_log
        .filter(|s| !s.trim().is_empty())
        .and_then(|s| s.parse().ok())
        .or_else(|| default_filter.parse().ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::filter;
    use tracing::Level;

    #[test]
    fn rust_log_sets_levels_per_target_and_falls_back_when_unset_or_invalid() {
        let f = filter(Some("warn,assist_client=debug"), "info");
        assert!(f.would_enable("assist_client::tunnel", &Level::DEBUG));
        assert!(!f.would_enable("assist_client::tunnel", &Level::TRACE));
        assert!(f.would_enable("russh::client", &Level::WARN));
        assert!(!f.would_enable("russh::client", &Level::INFO));

        for unset in [None, Some(""), Some("assist_client=loud")] {
            let f = filter(unset, "info");
            assert!(f.would_enable("russh", &Level::INFO), "{unset:?}");
            assert!(!f.would_enable("russh", &Level::DEBUG), "{unset:?}");
        }
    }
}

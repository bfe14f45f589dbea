//! `assist-client run`: the long-running agent. Sets up its data folder, purges stale key
//! lines, serves the control API, and disables assistance on SIGTERM/SIGINT.

use crate::agent::Agent;
use crate::config::Config;
use crate::control;
use anyhow::Context;
use assist_proto::private_file::{self, Existing};
use std::io::Write;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Runs the agent until `shutdown` is cancelled, then disables assistance and returns.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&config.data_dir)
        .with_context(|| format!("cannot create data_dir {}", config.data_dir.display()))?;
    let web_listen = config.web_listen;
    let token_path = config.control_token_path();
    let addr_path = config.web_addr_path();
    let (recordings, recordings_keep) = (config.recordings_dir(), config.recordings_keep);
    let agent = Arc::new(Agent::new(config).context("cannot start the agent")?);
    println!("device key fingerprint: {}", agent.device_fingerprint());

    let purged = agent
        .purge_stale()
        .context("cannot remove stale lines from authorized_keys")?;
    if purged > 0 {
        tracing::warn!(
            purged,
            file = %agent.keys_file().path.display(),
            "removed key lines left by an earlier run"
        );
    }

    agent
        .recover_history()
        .context("cannot prepare the history file")?;

    let sweeper = tokio::spawn(sweep_recordings(
        recordings,
        recordings_keep,
        shutdown.clone(),
    ));

    let token = control::new_token();
    write_private(&token_path, token.expose())?;
    let listener = tokio::net::TcpListener::bind(web_listen)
        .await
        .with_context(|| format!("cannot listen on web_listen {web_listen}"))?;
    let local = listener
        .local_addr()
        .context("cannot read the bound address")?;
    write_private(&addr_path, &local.to_string())?;
    println!("web listening on http://{local}");
    std::io::stdout()
        .flush()
        .context("cannot write to stdout")?;

    let server_stop = CancellationToken::new();
    let server = tokio::spawn(control::serve(
        listener,
        control::router(agent.clone(), token),
        server_stop.clone(),
    ));
    shutdown.cancelled().await;
    tracing::info!("stopping: disabling assistance");
    let report = agent
        .disable(
            "agent stopping",
            "the assistance agent on the customer's machine was stopped",
        )
        .await;
    server_stop.cancel();
    let _ = server.await;
    let _ = sweeper.await;
    let _ = std::fs::remove_file(&addr_path);
    let report = report.context("cannot disable assistance cleanly")?;
    tracing::info!(?report, "stopped");
    Ok(())
}

/// Removes recordings older than `recordings_keep` at start and then every
/// [`SWEEP_INTERVAL`](crate::recordings::SWEEP_INTERVAL) until `shutdown`.
async fn sweep_recordings(dir: PathBuf, keep: std::time::Duration, shutdown: CancellationToken) {
    loop {
        let d = dir.clone();
        let swept = tokio::task::spawn_blocking(move || {
            crate::recordings::sweep(&d, keep, std::time::SystemTime::now())
        })
        .await;
        if let Err(e) = swept {
            tracing::warn!("the recordings sweep failed: {e}");
        }
        tokio::select! {
            () = tokio::time::sleep(crate::recordings::SWEEP_INTERVAL) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

/// Writes `text` and a newline to `path`, readable by the owner only and replaced atomically
/// so a reader never sees half a token.
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    private_file::write_private(path, format!("{text}\n").as_bytes(), Existing::Replace)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Resolves when SIGTERM or SIGINT arrives.
pub async fn signalled() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

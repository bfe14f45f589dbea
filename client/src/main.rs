//! Entry point of `assist-client`: parses the command line and runs the agent or a command.

use anyhow::Context;
use assist_client::{commands, config::Config, daemon};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

/// Customer-side agent for remote assistance over reverse SSH.
///
/// The same can be done on the agent's local web page: `assist-client page --config FILE`
/// prints its address with the access key and opens it in a desktop session.
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// On an error, also show each cause on its own line and the backtrace, if one was
    /// captured (also ASSIST_DEBUG=1).
    #[arg(long, global = true)]
    debug: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent (foreground; stop with SIGTERM or Ctrl-C).
    Run {
        /// The agent's configuration file (client.toml).
        #[arg(long)]
        config: PathBuf,
    },
    /// Enable remote assistance and print the one-time code for the engineer.
    Enable {
        /// The agent's configuration file (client.toml).
        #[arg(long)]
        config: PathBuf,
        /// Length of the window in minutes (default 60, capped by the jump host's policy).
        #[arg(long)]
        minutes: Option<u64>,
    },
    /// Disable remote assistance now: close every session and remove the key.
    Disable {
        /// The agent's configuration file (client.toml).
        #[arg(long)]
        config: PathBuf,
    },
    /// Print the local web page's address with its access key (`http://…/#token=…`), which
    /// logs a browser straight in, and open it with xdg-open when a desktop session is there
    /// (DISPLAY or WAYLAND_DISPLAY set). Needs to read data_dir/control-token (root).
    Page {
        /// The agent's configuration file (client.toml).
        #[arg(long)]
        config: PathBuf,
        /// Only print the address, never start a browser.
        #[arg(long)]
        no_open: bool,
    },
    /// Past assistance windows and their connections (who, from where, when, bytes), read
    /// from data_dir/history.jsonl; works with the agent stopped.
    History {
        #[arg(long)]
        config: PathBuf,
        /// Print JSON (a list of windows, oldest first) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Show whether assistance is enabled and the tunnel's state (and how to open the page).
    Status {
        /// The agent's configuration file (client.toml).
        #[arg(long)]
        config: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// (internal) How the built-in target starts an engineer's program: as USER, in a
    /// session of its own (with stdin as its terminal with --tty), in USER's home.
    #[command(hide = true)]
    AsUser {
        #[arg(long)]
        user: String,
        #[arg(long)]
        tty: bool,
        /// argv[0] of the program (`-bash` for a login shell).
        #[arg(long)]
        login_as: Option<String>,
        #[arg(last = true, required = true)]
        program: Vec<String>,
    },
}

fn main() -> ExitCode {
    assist_heap::init();
    let cli = Cli::parse();
    // Before any thread or log exists: this process becomes the engineer's program.
    if let Command::AsUser {
        user,
        tty,
        login_as,
        program,
    } = cli.command
    {
        let mut program = program.into_iter();
        let error = assist_client::builtin::become_user_and_exec(assist_client::builtin::AsUser {
            user,
            tty,
            login_as,
            program: program.next().unwrap_or_default(),
            args: program.collect(),
        });
        eprintln!("assist-client: {error}");
        return ExitCode::from(127);
    }
    assist_proto::logging::init("info");
    let env = |k: &str| std::env::var(k).ok();
    let debug = assist_proto::report::debug_wanted(cli.debug, &env);
    let done = tokio::runtime::Runtime::new()
        .context("starting the async runtime")
        .and_then(|rt| rt.block_on(run(cli.command)));
    match done {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            assist_proto::report::print("assist-client", &e, debug);
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    let load = |path: &PathBuf| Config::load(path).context("cannot load the configuration");
    match command {
        Command::Run { config } => {
            let config = load(&config)?;
            let shutdown = CancellationToken::new();
            let stop = shutdown.clone();
            tokio::spawn(async move {
                if let Err(e) = daemon::signalled().await {
                    tracing::error!("{e:#}");
                }
                stop.cancel();
            });
            daemon::run(config, shutdown).await
        }
        Command::Enable { config, minutes } => commands::enable(&load(&config)?, minutes).await,
        Command::Disable { config } => commands::disable(&load(&config)?).await,
        Command::Status { config, json } => commands::status(&load(&config)?, json).await,
        Command::History { config, json } => commands::history(&load(&config)?, json),
        Command::Page { config, no_open } => commands::page(&load(&config)?, !no_open).await,
        Command::AsUser { .. } => anyhow::bail!("as-user runs before the runtime starts"),
    }
}

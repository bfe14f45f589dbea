//! `assist-jumphost`: parse the command line, set up logging, call the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

/// SSH jump host for remote assistance: devices hold virtual reverse tunnels, engineers hop
/// through to them by serial, and every hop is audited.
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
    /// Run the jump host (SSH relay and registration API) in the foreground.
    Serve {
        /// Path of jumphost.toml (ssh_listen, api_listen, data_dir, policies_dir).
        #[arg(long)]
        config: PathBuf,
    },
    /// Show what the running jump host holds: devices online with their ports, hops in
    /// progress, and sources penalized or banned for failed logins. Asks the `serve` process
    /// over data_dir/admin.sock, so run it as the user that runs the jump host.
    Status {
        /// Path of jumphost.toml.
        #[arg(long)]
        config: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Work with policy files.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Administer device registrations.
    #[command(subcommand)]
    Serial(SerialCommand),
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Check every *.toml in a policy folder; exit 0 when valid, non-zero with the reason.
    Check {
        /// The policy folder (every *.toml in it is read and merged).
        #[arg(long)]
        policies: PathBuf,
    },
}

#[derive(Subcommand)]
enum SerialCommand {
    /// Forget the key bound to a serial so a replaced device can register again. With a jump
    /// host running on this config, the device's live session is ended at once too.
    Reset {
        /// Path of jumphost.toml.
        #[arg(long)]
        config: PathBuf,
        /// The serial to reset.
        serial: String,
    },
    /// Print the serial's enrollment secret as "secret: <S>": ship it with that device (its
    /// client.toml `enrollment_secret`). Needs `enrollment_key` in jumphost.toml; the same
    /// key always gives the same secret, so a licensing system can compute them offline.
    Secret {
        /// Path of jumphost.toml.
        #[arg(long)]
        config: PathBuf,
        /// The serial.
        serial: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    assist_proto::logging::init("info");
    let env = |k: &str| std::env::var(k).ok();
    let debug = assist_proto::report::debug_wanted(cli.debug, &env);
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            assist_proto::report::print("assist-jumphost", &e, debug);
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> Result<()> {
    match command {
        Command::Serve { config } => assist_jumphost::serve::run(&config),
        Command::Status { config, json } => {
            assist_jumphost::commands::status_command(&config, json)
        }
        Command::Policy(PolicyCommand::Check { policies }) => {
            assist_jumphost::commands::check_command(&policies)
        }
        Command::Serial(SerialCommand::Reset { config, serial }) => {
            assist_jumphost::commands::reset_command(&config, &serial)
        }
        Command::Serial(SerialCommand::Secret { config, serial }) => {
            assist_jumphost::commands::secret_command(&config, &serial)
        }
    }
}

//! `support-cli`: the support engineer's side of remote assistance. Hops through the jump
//! host into a customer's machine with the one-time code the customer reads out.
#![forbid(unsafe_code)]

mod config;
mod connect;
mod error;
mod forward;
mod hop;
mod key;
mod keys;
mod known_hosts;
mod progress;
mod prove;
mod stdin;
mod stdio;
mod terminal;

use clap::{Parser, Subcommand};
use std::io::Write;
use std::path::PathBuf;

const AFTER_HELP: &str = "\
Settings come from flags, then ASSIST_JUMPHOST / ASSIST_ENGINEER / ASSIST_IDENTITY /
ASSIST_KNOWN_HOSTS, then ~/.config/assist/support.toml (keys: jumphost, engineer, identity,
known_hosts).

Exit status:
  0..254  connect -- COMMAND: the remote command's status (128+N when killed by signal N)
  1       a local failure (a file that cannot be written, ...)
  2       usage: bad flags, a malformed code or serial, an existing --out file
  255     connection: jump host unreachable or refusing, device not connected, device
          cannot prove it knows the code (wrong code, or not the customer's machine), code
          refused, host key changed

Examples:
  support-cli --jumphost jump.example.com:2222 connect SN-0001 --code 7K3QM-2XPD9
  support-cli --jumphost jump1.example.com:2222,jump2.example.com:2222 connect SN-0001 --code …";

/// Reach a customer's machine through the assistance jump host.
///
/// The customer enables assistance and reads you a one-time code; `connect` turns it into
/// the key the customer's machine accepts for as long as assistance stays enabled.
#[derive(Parser)]
#[command(name = "support-cli", version, after_help = AFTER_HELP)]
struct Cli {
    /// Jump host as HOST:PORT or wss://HOST[:PORT]/v1/ssh, or a comma-separated list of
    /// them tried in order: one that cannot be reached or refuses the connection is
    /// reported and the next one tried [env: ASSIST_JUMPHOST].
    #[arg(long, global = true, value_name = "HOST:PORT[,…]")]
    jumphost: Option<String>,
    /// Your engineer name in the jump host's policy [env: ASSIST_ENGINEER, default: $USER].
    #[arg(long, global = true, value_name = "NAME")]
    engineer: Option<String>,
    /// Your SSH private key [env: ASSIST_IDENTITY; default: the ssh-agent's keys, then
    /// ~/.ssh/id_ed25519]. A certificate beside it (FILE-cert.pub, as `ssh-keygen -s`
    /// writes it) is offered first, for jump hosts that trust your organisation's SSH CA.
    #[arg(long, global = true, value_name = "FILE")]
    identity: Option<PathBuf>,
    /// Host keys seen so far, OpenSSH format [env: ASSIST_KNOWN_HOSTS, default:
    /// ~/.ssh/known_hosts]. The jump host is recorded as [HOST]:PORT, devices by serial.
    #[arg(long = "known-hosts", global = true, value_name = "FILE")]
    known_hosts: Option<PathBuf>,
    /// No progress or notes on stderr, only errors.
    #[arg(short, long, global = true)]
    quiet: bool,
    /// On an error, also show each cause on its own line and the backtrace, if one was
    /// captured (also ASSIST_DEBUG=1).
    #[arg(long, global = true)]
    debug: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Open a shell on the device, or run COMMAND there.
    ///
    /// Without COMMAND: an interactive shell on a remote terminal. With `-- COMMAND ARGS…`:
    /// stdin, stdout and stderr pass through and the exit status is the command's. A single
    /// COMMAND word is a command line for the remote shell, like ssh's; several words are
    /// quoted one by one.
    Connect {
        /// The device's serial number, as the customer's assistance page shows it.
        serial: String,
        /// The one-time code the customer reads out (XXXXX-XXXXX; case, dashes and spaces
        /// do not matter).
        #[arg(long)]
        code: String,
        /// Account to log in to on the device.
        #[arg(long, default_value = "root")]
        user: String,
        /// Command to run instead of a shell.
        #[arg(last = true, value_name = "COMMAND")]
        command: Vec<String>,
    },
    /// Relay local TCP connections to a service of the device (for stock ssh, a browser…).
    ///
    /// ssh goes straight to the device's sshd (the stream is SSH already). Every other service
    /// travels inside the device's SSH session, which the code opens: the jump host never
    /// sees its bytes. Prints `forwarding ADDR -> SERIAL:SERVICE` once listening; runs until
    /// Ctrl-C.
    Forward {
        /// The device's serial number.
        serial: String,
        /// The device service: ssh, http, or a port number the customer configured.
        #[arg(long, value_name = "ssh|http|PORT")]
        service: String,
        /// Local address to listen on (port 0 picks a free one).
        #[arg(long, value_name = "ADDR:PORT")]
        listen: String,
        /// The one-time code (every service but ssh).
        #[arg(long)]
        code: Option<String>,
        /// Account to log in to on the device (every service but ssh).
        #[arg(long, default_value = "root")]
        user: String,
        /// The service's address as the device reaches it, as the customer's [services]
        /// names it (default 127.0.0.1:80 for http, 127.0.0.1:PORT for a port).
        #[arg(long, value_name = "HOST:PORT")]
        to: Option<String>,
    },
    /// Relay one connection to SERIAL[:PORT] (port 22 when absent) on stdin/stdout: a
    /// ProxyCommand for stock ssh, over any jump host address support-cli takes
    /// (`ssh -o ProxyCommand='support-cli --jumphost wss://jump/v1/ssh stdio %h' root@SN-1`).
    Stdio {
        /// SERIAL or SERIAL:PORT.
        #[arg(value_name = "SERIAL[:PORT]")]
        target: String,
    },
    /// Write the key derived from a code as an OpenSSH private key file (mode 0600),
    /// FILE.known_hosts with the host keys the device proved with that code, and
    /// FILE.ssh_config for stock OpenSSH.
    ///
    /// Asks the device, through the jump host, to prove it knows the code first (as
    /// `connect` does), so the files are only written for the customer's real machine.
    /// Prints the public key and its fingerprint, and on stderr the commands to use:
    /// `ssh -F FILE.ssh_config SERIAL` and `scp -F FILE.ssh_config …` (the jump host, your
    /// engineer name, key and known_hosts are in the file; stock `-J` would not pass `-i`
    /// or `-o` to the jump hop), and a one-line `ssh … -o ProxyCommand=…` without it.
    Key {
        /// The device's serial number.
        serial: String,
        /// The one-time code the customer reads out.
        #[arg(long)]
        code: String,
        /// Where to write the private key.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// Overwrite FILE if it exists.
        #[arg(long)]
        force: bool,
    },
}

fn main() {
    // Freed packet buffers stay in the heap for the next ones (assist-heap's `init`).
    assist_heap::init();
    let cli = Cli::parse();
    assist_proto::logging::init("off");
    let progress = progress::Progress::new(cli.quiet);
    let env = |k: &str| std::env::var(k).ok();
    let debug = assist_proto::report::debug_wanted(cli.debug, &env);
    // One thread runs the whole session: the engineer's one connection needs no work
    // stealing, and with a hundred engineers on one machine (bench/ fan-in) the hand-offs
    // between a multi-threaded runtime's threads cost more than the decryption itself.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let status = match runtime {
        Ok(rt) => rt.block_on(run(cli, &progress)),
        Err(e) => Err(anyhow::Error::new(e).context("starting the async runtime")),
    };
    let code = status.unwrap_or_else(|err| {
        progress.stop();
        let _ = std::io::stdout().flush();
        assist_proto::report::print("support-cli", &err, debug);
        error::exit_code(&err)
    });
    let _ = std::io::stdout().flush();
    // Exit at once: a thread reading a terminal or a file may still wait for input that
    // will never matter.
    std::process::exit(code);
}

async fn run(cli: Cli, progress: &progress::Progress) -> anyhow::Result<i32> {
    let env = |k: &str| std::env::var(k).ok();
    let file = match config::file_path(&env) {
        Some(path) => config::read_file(&path)?,
        None => config::FileConfig::default(),
    };
    let flags = config::Flags {
        jumphost: cli.jumphost,
        engineer: cli.engineer,
        identity: cli.identity,
        known_hosts: cli.known_hosts,
    };
    let settings = config::resolve(flags, &env, file);
    match cli.command {
        Command::Connect {
            serial,
            code,
            user,
            command,
        } => {
            let args = connect::ConnectArgs {
                serial,
                code,
                user,
                command,
            };
            connect::run(&settings, args, progress).await
        }
        Command::Forward {
            serial,
            service,
            listen,
            code,
            user,
            to,
        } => {
            let args = forward::ForwardArgs {
                serial,
                service,
                listen,
                code,
                user,
                to,
            };
            forward::run(&settings, args, progress).await
        }
        Command::Stdio { target } => stdio::run(&settings, &target, progress).await,
        Command::Key {
            serial,
            code,
            out,
            force,
        } => {
            key::run(
                &settings,
                key::KeyArgs {
                    serial,
                    code,
                    out,
                    force,
                },
                progress,
            )
            .await
        }
    }
}

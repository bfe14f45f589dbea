//! `support-cli connect`: from the code on the phone to a shell (or a command) on the device.

use anyhow::Context;
use bytes::BytesMut;
use russh::client::Msg;
use russh::{Channel, ChannelMsg, ChannelReadHalf, Sig};
use std::io::IsTerminal;

use crate::config::Settings;
use crate::error::HopError;
use crate::hop;
use crate::keys;
use crate::progress::Progress;
use crate::prove;
use crate::stdin::Stdin;
use crate::terminal::{self, RawMode};

/// Arguments of `connect`.
pub struct ConnectArgs {
    pub serial: String,
    pub code: String,
    pub user: String,
    pub command: Vec<String>,
}

pub async fn run(
    settings: &Settings,
    args: ConnectArgs,
    progress: &Progress,
) -> anyhow::Result<i32> {
    keys::check_serial(&args.serial)?;
    let code = keys::parse_code(&args.code)?;
    let addrs = settings.jump_addrs()?;

    // Argon2 and the jump host login each take a good part of the startup; overlap them.
    let derivation = prove::start_derivation(&args.serial, &code);
    let (jump, _) = hop::connect_first(settings, &addrs, progress).await?;
    let proven = prove::prove(&jump, &args.serial, &code, derivation, progress).await?;
    let serial = proven.serial.clone();
    let device = jump
        .login_device(proven, &args.user, &settings.known_hosts, progress)
        .await?;
    progress.done(None);
    progress.stop();

    let status = session(&device, &serial, args.command, progress).await;
    // A session cut short is explained by the device's end when it said why (the customer
    // stopped assistance, the window ended): that is the cause of whatever failed here.
    let status = match (status, device.farewell()) {
        (Err(_), Some(why)) => Err(HopError::Ended { serial, why }.into()),
        (status, _) => status,
    };
    let _ = device
        .handle
        .disconnect(russh::Disconnect::ByApplication, "", "en")
        .await;
    jump.disconnect().await;
    status
}

/// Runs the shell or the command on the device; its exit status.
async fn session(
    device: &hop::Device,
    serial: &str,
    command: Vec<String>,
    progress: &Progress,
) -> anyhow::Result<i32> {
    let session = device
        .handle
        .channel_open_session()
        .await
        .map_err(|cause| HopError::Ssh {
            what: format!("opening a session on {serial}"),
            cause,
        })?;
    let interactive = command.is_empty() && std::io::stdin().is_terminal();
    if interactive {
        let status = shell(session).await;
        progress.note(&format!("Connection to {serial} closed."));
        status
    } else {
        let command = (!command.is_empty()).then(|| command_line(&command));
        exec(session, command).await
    }
}

/// An interactive shell on a remote PTY the size of ours.
async fn shell(channel: Channel<Msg>) -> anyhow::Result<i32> {
    let term = std::env::var("TERM").unwrap_or_else(|_| "xterm".into());
    let (cols, rows) = terminal::size();
    let refused = |cause| HopError::Ssh {
        what: "starting a shell".into(),
        cause,
    };
    channel
        .request_pty(false, &term, cols, rows, 0, 0, &[])
        .await
        .map_err(refused)?;
    channel.request_shell(true).await.map_err(refused)?;

    let raw = RawMode::enable().context("switching the terminal to raw mode")?;
    let (mut rx, tx) = channel.split();
    let mut stdin = Stdin::open();
    let mut winch = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())
        .context("watching window size changes")?;
    let input = tokio::spawn(async move {
        let mut buffer = BytesMut::new();
        loop {
            tokio::select! {
                chunk = stdin.piece(&mut buffer) => match chunk {
                    Some(bytes) => {
                        if tx.data_bytes(bytes).await.is_err() {
                            return;
                        }
                    }
                    None => {
                        let _ = tx.eof().await;
                        return;
                    }
                },
                _ = winch.recv() => {
                    let (cols, rows) = terminal::size();
                    let _ = tx.window_change(cols, rows, 0, 0).await;
                }
            }
        }
    });
    let status = pump(&mut rx).await;
    input.abort();
    drop(raw);
    status
}

/// A command (or a shell without PTY when stdin is not a terminal), stdin/stdout/stderr
/// passed through byte for byte, EOF included.
async fn exec(channel: Channel<Msg>, command: Option<String>) -> anyhow::Result<i32> {
    let what = if command.is_some() {
        "running the command"
    } else {
        "starting a shell"
    };
    let refused = |cause| HopError::Ssh {
        what: what.into(),
        cause,
    };
    match command {
        Some(command) => channel.exec(true, command).await.map_err(refused)?,
        None => channel.request_shell(true).await.map_err(refused)?,
    }
    let (mut rx, tx) = channel.split();
    let mut stdin = Stdin::open();
    let input = tokio::spawn(async move {
        let mut buffer = BytesMut::new();
        while let Some(bytes) = stdin.piece(&mut buffer).await {
            if tx.data_bytes(bytes).await.is_err() {
                return;
            }
        }
        let _ = tx.eof().await;
    });
    let status = pump(&mut rx).await;
    input.abort();
    status
}

/// Copies the channel to stdout/stderr until it closes; returns the remote exit status
/// (128 + signal number for a signal, as ssh and shells do).
async fn pump(rx: &mut ChannelReadHalf) -> anyhow::Result<i32> {
    let mut stdout = terminal::Output::stdout().context("opening stdout")?;
    let mut stderr = terminal::Output::stderr().context("opening stderr")?;
    let mut status = None;
    while let Some(msg) = rx.wait().await {
        match msg {
            ChannelMsg::Data { data } => {
                stdout.write_all(&data).context("writing to stdout")?;
            }
            ChannelMsg::ExtendedData { data, ext: 1 } => {
                stderr.write_all(&data).context("writing to stderr")?;
            }
            ChannelMsg::Failure => {
                return Err(HopError::Ssh {
                    what: "the device refused to run it".into(),
                    cause: russh::Error::RequestDenied,
                }
                .into());
            }
            ChannelMsg::ExitStatus { exit_status } => {
                status = Some(i32::try_from(exit_status).unwrap_or(255));
            }
            ChannelMsg::ExitSignal {
                signal_name,
                core_dumped,
                error_message,
                ..
            } => {
                let dumped = if core_dumped { " (core dumped)" } else { "" };
                eprintln!(
                    "remote command killed by signal {signal_name:?}{dumped} {error_message}"
                );
                status = Some(128 + signal_number(&signal_name));
            }
            ChannelMsg::Close => break,
            _ => {}
        }
    }
    status.ok_or_else(|| HopError::NoExitStatus.into())
}

/// Linux numbers of the signals SSH names (RFC 4254 6.10).
fn signal_number(sig: &Sig) -> i32 {
    match sig {
        Sig::HUP => 1,
        Sig::INT => 2,
        Sig::QUIT => 3,
        Sig::ILL => 4,
        Sig::ABRT => 6,
        Sig::FPE => 8,
        Sig::KILL => 9,
        Sig::USR1 => 10,
        Sig::SEGV => 11,
        Sig::PIPE => 13,
        Sig::ALRM => 14,
        Sig::TERM => 15,
        Sig::Custom(name) if name == "USR2" => 12,
        Sig::Custom(_) => 127,
    }
}

/// The remote command line. One argument is taken as a command line as ssh does
/// (`-- 'ls | wc -l'`); several are quoted one by one so each arrives as one argument
/// (`-- sh -c 'exit 3'`).
pub fn command_line(args: &[String]) -> String {
    match args {
        [one] => one.clone(),
        many => many.iter().map(|a| quote(a)).collect::<Vec<_>>().join(" "),
    }
}

fn quote(arg: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "_-./=:,+@%^".contains(c);
    if !arg.is_empty() && arg.chars().all(safe) {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn v(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn one_argument_is_a_command_line() {
        assert_eq!(command_line(&v(&["ls -l | wc -l"])), "ls -l | wc -l");
    }

    #[test]
    fn several_arguments_are_quoted_each() {
        assert_eq!(command_line(&v(&["sh", "-c", "exit 3"])), "sh -c 'exit 3'");
        assert_eq!(
            command_line(&v(&["echo", "it's", ""])),
            r"echo 'it'\''s' ''"
        );
        assert_eq!(
            command_line(&v(&["printf", "%s\n", "$HOME"])),
            "printf '%s\n' '$HOME'"
        );
        assert_eq!(
            command_line(&v(&["cat", "/a/b.txt", "k=v"])),
            "cat /a/b.txt k=v"
        );
    }

    #[test]
    fn signals_map_like_shells() {
        assert_eq!(signal_number(&Sig::KILL), 9);
        assert_eq!(signal_number(&Sig::TERM), 15);
        assert_eq!(signal_number(&Sig::Custom("USR2".into())), 12);
    }
}

//! One session channel of the built-in target: its requests (pty-req, env, window-change),
//! then the program it asked for (shell, exec, sftp) as the target user, with its output to
//! the engineer, the recording and the customer's live view, until it exits or is stopped.

use super::Connection;
use super::child::{self, Program, Pty};
use super::record::{Header, Recording};
use russh::server::{Handle, Msg};
use russh::{Channel, ChannelId, ChannelMsg, ChannelReadHalf, ChannelWriteHalf, Sig};
use std::os::fd::OwnedFd;
use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;

/// How long output may still trickle in after the program exited (a background job that
/// keeps the terminal open must not keep the session).
const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(200);
/// Bytes read from the program at once.
const CHUNK: usize = 32 * 1024;
/// Told to the engineer when the customer stops the session on the page.
const STOPPED_ON_PAGE: &str = "the customer stopped this session";

/// What the engineer's client asked for before starting the program.
struct Request {
    pty: Option<PtyRequest>,
    lang: Option<String>,
}

struct PtyRequest {
    term: String,
    cols: u16,
    rows: u16,
}

/// How the program ended, as the engineer is told.
enum End {
    Exited(ExitStatus),
    /// Stopped by the customer or by the end of assistance; the text says why.
    Stopped(String),
    /// The engineer closed the channel.
    Closed,
}

pub(super) async fn run(channel: Channel<Msg>, handle: Handle, conn: Arc<Connection>) {
    let id = channel.id();
    let (mut read, write) = channel.split();
    let mut request = Request {
        pty: None,
        lang: None,
    };
    let (program, want_reply) = loop {
        let msg = tokio::select! {
            m = read.wait() => m,
            () = conn.stop.cancelled() => None,
        };
        let Some(msg) = msg else { return };
        match msg {
            ChannelMsg::RequestPty {
                want_reply,
                term,
                col_width,
                row_height,
                ..
            } => {
                request.pty = Some(PtyRequest {
                    term,
                    cols: clamp(col_width, 80),
                    rows: clamp(row_height, 24),
                });
                reply(&handle, id, want_reply, true).await;
            }
            ChannelMsg::SetEnv {
                want_reply,
                variable_name,
                variable_value,
            } => {
                // Only the locale passes: the session's environment is the user's, not
                // whatever the engineer's machine has.
                let ok = variable_name == "LANG";
                if ok {
                    request.lang = Some(variable_value);
                }
                reply(&handle, id, want_reply, ok).await;
            }
            ChannelMsg::WindowChange {
                col_width,
                row_height,
                ..
            } => {
                if let Some(p) = request.pty.as_mut() {
                    (p.cols, p.rows) = (clamp(col_width, 80), clamp(row_height, 24));
                }
            }
            ChannelMsg::RequestShell { want_reply } => break (Program::Shell, want_reply),
            ChannelMsg::Exec {
                want_reply,
                command,
            } => {
                break (
                    Program::Command(String::from_utf8_lossy(&command).into_owned()),
                    want_reply,
                );
            }
            ChannelMsg::RequestSubsystem { want_reply, name } if name == "sftp" => {
                break (Program::Sftp, want_reply);
            }
            ChannelMsg::RequestSubsystem { want_reply, name } => {
                tracing::info!(subsystem = %name, "refused: only sftp is served");
                reply(&handle, id, want_reply, false).await;
            }
            ChannelMsg::RequestX11 { want_reply, .. } | ChannelMsg::AgentForward { want_reply } => {
                reply(&handle, id, want_reply, false).await;
            }
            ChannelMsg::Eof | ChannelMsg::Close => return,
            _ => {}
        }
    };
    let account = &conn.window.account;
    if conn.user != account.name {
        reply(&handle, id, want_reply, true).await;
        let why = format!(
            "this device's built-in SSH target serves only user {0}; log in as {0} (ssh -l {0})\r\n",
            account.name
        );
        let _ = write.extended_data(1, why.as_bytes()).await;
        finish(
            &write,
            &handle,
            id,
            End::Exited(ExitStatus::from_raw(1 << 8)),
        )
        .await;
        return;
    }
    let started = start(&conn, &program, &request);
    let (child, io) = match started {
        Ok(started) => started,
        Err(why) => {
            tracing::warn!("cannot start {program:?}: {why}");
            reply(&handle, id, want_reply, false).await;
            let _ = write
                .extended_data(1, format!("{why}\r\n").as_bytes())
                .await;
            let _ = write.close().await;
            return;
        }
    };
    reply(&handle, id, want_reply, true).await;
    let what = match &program {
        Program::Shell => "shell".to_owned(),
        Program::Command(c) => c.clone(),
        Program::Sftp => "sftp".to_owned(),
    };
    tracing::info!(program = %what, user = %account.name, pid = child.id(), "session started");
    let end = match io {
        Io::Pty {
            master,
            reader,
            writer,
            recording,
        } => {
            let p = request.pty.as_ref();
            let (cols, rows) = p.map_or((80, 24), |p| (p.cols, p.rows));
            let command = match &program {
                Program::Command(c) => Some(c.clone()),
                _ => None,
            };
            let terminal =
                conn.shared
                    .live()
                    .open(&conn.engineer(), &conn.from, command, cols, rows);
            let pty = PtyIo {
                master,
                reader,
                writer,
            };
            pump_pty(child, pty, recording, &terminal, &mut read, &write, &conn).await
        }
        Io::Pipes { recording } => pump_pipes(child, recording, &mut read, &write, &conn).await,
    };
    tracing::info!(program = %what, "session ended");
    finish(&write, &handle, id, end).await;
}

/// The program's side of the session as the agent holds it.
enum Io {
    Pty {
        /// Kept for resizing.
        master: OwnedFd,
        reader: pipe::Receiver,
        writer: pipe::Sender,
        recording: Recording,
    },
    /// stdin, stdout and stderr are the child's pipes; sftp is not recorded (it is a binary
    /// protocol, not a terminal).
    Pipes { recording: Option<Recording> },
}

fn start(
    conn: &Connection,
    program: &Program,
    request: &Request,
) -> Result<(tokio::process::Child, Io), String> {
    let pty = request.pty.as_ref().filter(|_| *program != Program::Sftp);
    let term = request.pty.as_ref().map(|p| p.term.as_str());
    let mut cmd = child::command(
        &conn.window.account,
        program,
        term,
        request.lang.as_deref(),
        pty.is_some(),
    )?;
    let header = |cols, rows| Header {
        engineer: conn.engineer(),
        from: conn.from.clone(),
        command: match program {
            Program::Command(c) => Some(c.clone()),
            _ => None,
        },
        cols,
        rows,
        term: term.map(str::to_owned),
    };
    let record = |cols, rows| {
        Recording::create(&conn.window.data_dir, &header(cols, rows))
            .map_err(|e| format!("the session cannot be recorded, so it is refused: {e}"))
    };
    let io = match pty {
        Some(p) => {
            let opened =
                Pty::open(p.cols, p.rows).map_err(|e| format!("cannot open a PTY: {e}"))?;
            let (i, o, e) = opened
                .stdio()
                .map_err(|e| format!("cannot hand the PTY over: {e}"))?;
            cmd.stdin(i).stdout(o).stderr(e);
            // The master as tokio's pipe ends: a reader and a writer on copies of it, which
            // tokio accepts for any non-blocking descriptor.
            let watch = |e: std::io::Error| format!("cannot watch the PTY: {e}");
            let reader =
                pipe::Receiver::from_owned_fd_unchecked(opened.master.try_clone().map_err(watch)?)
                    .map_err(watch)?;
            let writer =
                pipe::Sender::from_owned_fd_unchecked(opened.master.try_clone().map_err(watch)?)
                    .map_err(watch)?;
            Io::Pty {
                master: opened.master,
                reader,
                writer,
                recording: record(p.cols, p.rows)?,
            }
        }
        None => {
            cmd.stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            let recording = match program {
                Program::Sftp => None,
                _ => Some(record(80, 24)?),
            };
            Io::Pipes { recording }
        }
    };
    let child = tokio::process::Command::from(cmd)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start the session's program: {e}"))?;
    Ok((child, io))
}

/// The agent's side of a PTY.
struct PtyIo {
    master: OwnedFd,
    reader: pipe::Receiver,
    writer: pipe::Sender,
}

async fn pump_pty(
    mut child: tokio::process::Child,
    mut pty: PtyIo,
    mut recording: Recording,
    terminal: &crate::live::Terminal,
    read: &mut ChannelReadHalf,
    write: &ChannelWriteHalf<Msg>,
    conn: &Connection,
) -> End {
    let pid = child.id();
    let stopped = terminal.stopped();
    let mut buf = vec![0u8; CHUNK];
    let mut exited: Option<ExitStatus> = None;
    let record = |r: Result<(), super::record::RecordError>| {
        if let Err(e) = r {
            tracing::error!("{e}");
        }
    };
    loop {
        let output = async {
            match exited {
                Some(_) => tokio::time::timeout(DRAIN_AFTER_EXIT, pty.reader.read(&mut buf))
                    .await
                    .unwrap_or(Ok(0)),
                None => pty.reader.read(&mut buf).await,
            }
        };
        tokio::select! {
            r = output => match r {
                Ok(n) if n > 0 => {
                    let bytes = &buf[..n];
                    terminal.output(bytes);
                    record(recording.output(bytes));
                    if write.data(bytes).await.is_err() {
                        break kill(pid, &mut child, End::Closed).await;
                    }
                }
                // EIO once every holder of the terminal closed it: the output is complete.
                _ => match exited {
                    Some(status) => break End::Exited(status),
                    None => {
                        let status = child.wait().await;
                        break status.map_or(End::Closed, End::Exited);
                    }
                },
            },
            msg = read.wait() => match msg {
                Some(ChannelMsg::Data { data }) => {
                    record(recording.input(&data));
                    if let Err(e) = pty.writer.write_all(&data).await {
                        tracing::debug!("the terminal took no input: {e}");
                    }
                }
                Some(ChannelMsg::WindowChange { col_width, row_height, .. }) => {
                    let (cols, rows) = (clamp(col_width, 80), clamp(row_height, 24));
                    if let Err(e) = child::resize(&pty.master, cols, rows) {
                        tracing::debug!("cannot resize the terminal: {e}");
                    }
                    terminal.resize(cols, rows);
                    record(recording.resize(cols, rows));
                }
                Some(ChannelMsg::Close) | None => break kill(pid, &mut child, End::Closed).await,
                // A terminal has no half-close: the shell ends on exit or ^D, as with sshd.
                _ => {}
            },
            status = child.wait(), if exited.is_none() => {
                exited = Some(status.unwrap_or_else(|_| ExitStatus::from_raw(255 << 8)));
            }
            () = stopped.cancelled() => {
                break kill(pid, &mut child, End::Stopped(STOPPED_ON_PAGE.into())).await;
            }
            () = conn.stop.cancelled() => {
                break kill(pid, &mut child, End::Stopped(conn.farewell())).await;
            }
        }
    }
}

async fn pump_pipes(
    mut child: tokio::process::Child,
    mut recording: Option<Recording>,
    read: &mut ChannelReadHalf,
    write: &ChannelWriteHalf<Msg>,
    conn: &Connection,
) -> End {
    let pid = child.id();
    let (Some(mut stdout), Some(mut stderr)) = (child.stdout.take(), child.stderr.take()) else {
        return kill(pid, &mut child, End::Closed).await;
    };
    let mut stdin = child.stdin.take();
    let (mut out_buf, mut err_buf) = (vec![0u8; CHUNK], vec![0u8; CHUNK]);
    let (mut out_done, mut err_done) = (false, false);
    let mut exited: Option<ExitStatus> = None;
    let mut record = |bytes: &[u8], input: bool| {
        if let Some(r) = recording.as_mut() {
            let done = if input {
                r.input(bytes)
            } else {
                r.output(bytes)
            };
            if let Err(e) = done {
                tracing::error!("{e}");
            }
        }
    };
    loop {
        if out_done
            && err_done
            && let Some(status) = exited
        {
            break End::Exited(status);
        }
        tokio::select! {
            r = stdout.read(&mut out_buf), if !out_done => match r {
                Ok(n) if n > 0 => {
                    record(&out_buf[..n], false);
                    if write.data(&out_buf[..n]).await.is_err() {
                        break kill(pid, &mut child, End::Closed).await;
                    }
                }
                _ => out_done = true,
            },
            r = stderr.read(&mut err_buf), if !err_done => match r {
                Ok(n) if n > 0 => {
                    record(&err_buf[..n], false);
                    if write.extended_data(1, &err_buf[..n]).await.is_err() {
                        break kill(pid, &mut child, End::Closed).await;
                    }
                }
                _ => err_done = true,
            },
            msg = read.wait() => match msg {
                Some(ChannelMsg::Data { data }) => {
                    record(&data, true);
                    if let Some(s) = stdin.as_mut()
                        && s.write_all(&data).await.is_err()
                    {
                        stdin = None;
                    }
                }
                // The engineer's EOF is the program's.
                Some(ChannelMsg::Eof) => stdin = None,
                Some(ChannelMsg::Close) | None => break kill(pid, &mut child, End::Closed).await,
                _ => {}
            },
            status = child.wait(), if exited.is_none() => {
                exited = Some(status.unwrap_or_else(|_| ExitStatus::from_raw(255 << 8)));
            }
            () = conn.stop.cancelled() => {
                break kill(pid, &mut child, End::Stopped(conn.farewell())).await;
            }
        }
    }
}

/// Ends the program's whole process group and reaps it.
async fn kill(pid: Option<u32>, child: &mut tokio::process::Child, end: End) -> End {
    if let Some(pid) = pid {
        child::kill_group(pid);
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), child.wait()).await;
    end
}

/// Tells the engineer how it ended, then EOF and close.
async fn finish(write: &ChannelWriteHalf<Msg>, handle: &Handle, id: ChannelId, end: End) {
    match end {
        End::Exited(status) => match (status.code(), status.signal()) {
            (Some(code), _) => {
                let _ = write.exit_status(code as u32).await;
            }
            (None, Some(signal)) => {
                let _ = handle
                    .exit_signal_request(
                        id,
                        signal_name(signal),
                        status.core_dumped(),
                        String::new(),
                        "en".into(),
                    )
                    .await;
            }
            (None, None) => {}
        },
        End::Stopped(why) => {
            let _ = write
                .extended_data(1, format!("\r\n{why}\r\n").as_bytes())
                .await;
            let _ = handle
                .exit_signal_request(id, Sig::HUP, false, why, "en".into())
                .await;
        }
        End::Closed => {}
    }
    let _ = write.eof().await;
    let _ = write.close().await;
}

fn signal_name(signal: i32) -> Sig {
    use nix::sys::signal::Signal;
    match Signal::try_from(signal) {
        Ok(Signal::SIGABRT) => Sig::ABRT,
        Ok(Signal::SIGALRM) => Sig::ALRM,
        Ok(Signal::SIGFPE) => Sig::FPE,
        Ok(Signal::SIGHUP) => Sig::HUP,
        Ok(Signal::SIGILL) => Sig::ILL,
        Ok(Signal::SIGINT) => Sig::INT,
        Ok(Signal::SIGKILL) => Sig::KILL,
        Ok(Signal::SIGPIPE) => Sig::PIPE,
        Ok(Signal::SIGQUIT) => Sig::QUIT,
        Ok(Signal::SIGSEGV) => Sig::SEGV,
        Ok(Signal::SIGTERM) => Sig::TERM,
        Ok(Signal::SIGUSR1) => Sig::USR1,
        Ok(other) => Sig::Custom(other.as_str().trim_start_matches("SIG").to_owned()),
        Err(_) => Sig::Custom(signal.to_string()),
    }
}

async fn reply(handle: &Handle, id: ChannelId, want_reply: bool, ok: bool) {
    if !want_reply {
        return;
    }
    let _ = match ok {
        true => handle.channel_success(id).await,
        false => handle.channel_failure(id).await,
    };
}

/// A terminal dimension as the PTY takes it (0, "unknown", becomes 80 columns or 24 rows).
fn clamp(n: u32, unknown: u16) -> u16 {
    match n {
        0 => unknown,
        n => n.min(u16::MAX as u32) as u16,
    }
}

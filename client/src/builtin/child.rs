//! The programs the built-in target runs for an engineer: a shell on a PTY, a command, or the
//! SFTP server, each as the configured `target_user`.
//!
//! The agent starts them through itself: `assist-client as-user` (hidden) is exec'd with a
//! clean environment, makes itself a session leader (with the PTY as its controlling
//! terminal), takes the user's groups (`initgroups`), gid and uid when the agent runs as
//! root, moves to the user's home and execs the program. Doing it in a fresh process keeps
//! every privilege change out of the agent and needs no code between fork and exec.

use crate::authorized_keys::Account;
use nix::unistd::{Gid, Pid, Uid, User};
use std::ffi::CString;
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::process::Stdio;

/// The search path of a session: the user's own is set by their shell's profile.
const PATH: &str = "/usr/local/bin:/usr/bin:/bin";
/// Where the system's SFTP server is on the distributions it was checked on.
const SFTP_SERVERS: &[&str] = &[
    "/usr/lib/openssh/sftp-server",
    "/usr/libexec/openssh/sftp-server",
    "/usr/libexec/sftp-server",
    "/usr/lib/ssh/sftp-server",
    "/usr/lib/sftp-server",
];

/// What the engineer asked to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Program {
    /// The user's login shell.
    Shell,
    /// `shell -c COMMAND`.
    Command(String),
    /// The system's SFTP server.
    Sftp,
}

/// Builds the `as-user` command that runs `program` as `account`, with the session's
/// environment (`term`, `lang` as the engineer's client sent them) and nothing of the
/// agent's.
pub fn command(
    account: &Account,
    program: &Program,
    term: Option<&str>,
    lang: Option<&str>,
    tty: bool,
) -> Result<std::process::Command, String> {
    let me = Uid::effective();
    if !me.is_root() && me.as_raw() != account.uid {
        return Err(format!(
            "the agent runs as uid {me} and cannot start a session as {} (run it as root, or \
             as that user)",
            account.name
        ));
    }
    let user = User::from_name(&account.name)
        .map_err(|e| format!("cannot look up user {}: {e}", account.name))?
        .ok_or_else(|| format!("user {} no longer exists", account.name))?;
    let shell = match user.shell.as_os_str().is_empty() {
        true => std::path::PathBuf::from("/bin/sh"),
        false => user.shell.clone(),
    };
    let exe =
        std::env::current_exe().map_err(|e| format!("cannot find the agent's binary: {e}"))?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("as-user").arg("--user").arg(&account.name);
    if tty {
        cmd.arg("--tty");
    }
    match program {
        Program::Shell => {
            let name = shell.file_name().map(|n| n.to_string_lossy().into_owned());
            // With `=`: the value starts with a dash.
            cmd.arg(format!(
                "--login-as=-{}",
                name.unwrap_or_else(|| "sh".into())
            ));
            cmd.arg("--").arg(&shell);
        }
        Program::Command(line) => {
            cmd.arg("--").arg(&shell).arg("-c").arg(line);
        }
        Program::Sftp => {
            let server = SFTP_SERVERS
                .iter()
                .find(|p| std::path::Path::new(p).is_file())
                .ok_or(
                    "no sftp-server on this machine (Debian: apt install openssh-sftp-server)",
                )?;
            cmd.arg("--").arg(server);
        }
    }
    cmd.env_clear()
        .env("HOME", &user.dir)
        .env("USER", &user.name)
        .env("LOGNAME", &user.name)
        .env("SHELL", &shell)
        .env("PATH", PATH);
    if let Some(term) = term {
        cmd.env("TERM", term);
    }
    if let Some(lang) = lang {
        cmd.env("LANG", lang);
    }
    Ok(cmd)
}

/// A PTY: the agent keeps the master; the program gets the slave as its terminal.
pub struct Pty {
    pub master: OwnedFd,
    pub slave: OwnedFd,
}

impl Pty {
    pub fn open(cols: u16, rows: u16) -> std::io::Result<Self> {
        let size = nix::pty::Winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let pty = nix::pty::openpty(Some(&size), None).map_err(std::io::Error::from)?;
        for fd in [&pty.master, &pty.slave] {
            rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::CLOEXEC)?;
        }
        rustix::fs::fcntl_setfl(&pty.master, rustix::fs::OFlags::NONBLOCK)?;
        Ok(Self {
            master: pty.master,
            slave: pty.slave,
        })
    }

    /// The slave as the program's stdin, stdout and stderr.
    pub fn stdio(&self) -> std::io::Result<(Stdio, Stdio, Stdio)> {
        Ok((
            Stdio::from(self.slave.try_clone()?),
            Stdio::from(self.slave.try_clone()?),
            Stdio::from(self.slave.try_clone()?),
        ))
    }
}

/// Tells a PTY its new size (the program gets SIGWINCH).
pub fn resize(master: &OwnedFd, cols: u16, rows: u16) -> std::io::Result<()> {
    rustix::termios::tcsetwinsize(
        master,
        rustix::termios::Winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        },
    )?;
    Ok(())
}

/// Ends a program and everything in its session's process group at once.
pub fn kill_group(pid: u32) {
    let pid = Pid::from_raw(pid as i32);
    let _ = nix::sys::signal::killpg(pid, nix::sys::signal::Signal::SIGHUP);
    let _ = nix::sys::signal::killpg(pid, nix::sys::signal::Signal::SIGKILL);
}

/// What `assist-client as-user` was told to do.
#[derive(Debug)]
pub struct AsUser {
    pub user: String,
    pub tty: bool,
    /// `argv[0]` of the program (`-bash` starts a login shell).
    pub login_as: Option<String>,
    pub program: String,
    pub args: Vec<String>,
}

/// The child's side (`assist-client as-user`): a session of its own, the user's identity,
/// the user's home, then the program. Returns only on failure.
pub fn become_user_and_exec(a: AsUser) -> std::io::Error {
    let fail = |what: &str, e: &dyn std::fmt::Display| {
        std::io::Error::other(format!("as-user {}: {what}: {e}", a.user))
    };
    if let Err(e) = nix::unistd::setsid() {
        return fail("setsid", &e);
    }
    if a.tty
        && let Err(e) = rustix::process::ioctl_tiocsctty(std::io::stdin())
    {
        return fail("taking the terminal", &e);
    }
    let user = match User::from_name(&a.user) {
        Ok(Some(user)) => user,
        Ok(None) => return fail("lookup", &"no such user"),
        Err(e) => return fail("lookup", &e),
    };
    if Uid::effective().is_root() {
        let Ok(name) = CString::new(user.name.as_bytes()) else {
            return fail("user name", &"contains NUL");
        };
        if let Err(e) = nix::unistd::initgroups(&name, user.gid) {
            return fail("initgroups", &e);
        }
        if let Err(e) = nix::unistd::setgid(user.gid) {
            return fail("setgid", &e);
        }
        if let Err(e) = nix::unistd::setuid(user.uid) {
            return fail("setuid", &e);
        }
        // Proves the change is for good: a process that could become root again is not
        // the user's.
        if user.uid.as_raw() != 0 && nix::unistd::setuid(Uid::from_raw(0)).is_ok() {
            return fail("setuid", &"root could be regained");
        }
    } else if Uid::effective() != user.uid || Gid::effective() != user.gid {
        return fail("identity", &"the agent is neither root nor this user");
    }
    if std::env::set_current_dir(&user.dir).is_err() {
        let _ = std::env::set_current_dir("/");
    }
    let mut cmd = std::process::Command::new(&a.program);
    if let Some(argv0) = &a.login_as {
        cmd.arg0(argv0);
    }
    cmd.args(&a.args).exec()
}

//! `support-cli connect` end to end: commands, stdin and exit status, a real PTY, refusals
//! with advice, a changed host key, the engineer allowlist. The world is in support_world.

mod support_world;

use std::fs;
use std::process::{Command, Stdio};
use std::time::Instant;

use assist_e2e::{keygen, random_file, sha256_file, ssh, text};
use support_world::World;

#[test]
fn command_output_exit_status_and_large_binary_stdin() {
    let mut w = World::start(1);
    let code = w.device("SN-CMD");

    let out = w.connect(
        0,
        "SN-CMD",
        &code,
        &["sh", "-c", "echo out-$((6*7)); echo err >&2; exit 7"],
        Stdio::null(),
    );
    assert_eq!(out.status.code(), Some(7), "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "out-42\n");
    assert!(text(&out.stderr).contains("err\n"), "{}", text(&out.stderr));
    // First use recorded both host keys, named as OpenSSH would.
    let known = fs::read_to_string(w.known_hosts(0)).unwrap();
    assert!(
        known.contains(&format!("[127.0.0.1]:{} ssh-ed25519 ", w.jump.ssh_port())),
        "{known}"
    );
    assert!(
        known.lines().any(|l| l.starts_with("SN-CMD ssh-ed25519 ")),
        "{known}"
    );

    // 64 MiB of random bytes through stdin, EOF carried, checked by hash on the far side.
    let big = w.path("big.bin");
    random_file(&big, 64 << 20);
    let started = Instant::now();
    let out = w.connect(
        0,
        "SN-CMD",
        &code,
        &["sha256sum"],
        Stdio::from(fs::File::open(&big).unwrap()),
    );
    let took = started.elapsed();
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let remote = text(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    assert_eq!(remote, sha256_file(&big));
    eprintln!("64 MiB stdin through support-cli connect: {took:?}");

    // And binary data back out: the same file via stdout.
    let out = w.connect(
        0,
        "SN-CMD",
        &code,
        &["cat", big.to_str().unwrap()],
        Stdio::null(),
    );
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let copy = w.path("copy.bin");
    fs::write(&copy, &out.stdout).unwrap();
    assert_eq!(sha256_file(&copy), sha256_file(&big));

    // The figure the lead reports: wall time of `connect … -- true` (not an assertion).
    let mut times = Vec::new();
    for _ in 0..3 {
        let started = Instant::now();
        let out = w.connect(0, "SN-CMD", &code, &["true"], Stdio::null());
        times.push(started.elapsed());
        assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    }
    eprintln!("support-cli connect … -- true wall times: {times:?}");
    // The same hop with stock OpenSSH (ProxyCommand -W through the same jump host), for
    // comparison in the report.
    let key = w.path("stock-key");
    assist_e2e::write_derived_key(&key, "SN-CMD", &code);
    let proxy = format!(
        "ProxyCommand=ssh {} -i {} -p {} -W %h:%p eng0@127.0.0.1",
        assist_e2e::ssh_options("ERROR").join(" "),
        w.path("eng0").display(),
        w.jump.ssh_port()
    );
    let mut stock = Vec::new();
    for _ in 0..3 {
        let started = Instant::now();
        let out = ssh(&[
            "-o",
            &proxy,
            "-i",
            key.to_str().unwrap(),
            "root@SN-CMD",
            "true",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
        stock.push(started.elapsed());
        assert!(out.status.success(), "stock ssh: {}", text(&out.stderr));
    }
    eprintln!("stock ssh (ProxyCommand -W) … true wall times: {stock:?}");
}

/// Drives `support-cli connect` in a real PTY with python3's `pty` module: type, read, resize,
/// exit, then check the local terminal left raw mode.
const PTY_DRIVER: &str = r#"
import os, pty, sys, time, select, fcntl, termios, struct

def winsize(fd, rows, cols):
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

pid, fd = pty.fork()
if pid == 0:
    winsize(0, 33, 101)
    os.execvp("sh", ["sh", "-c", '"$@"; echo "STATUS=$?"; stty -a; echo STTY-END', "sh"] + sys.argv[1:])

seen = b""
def expect(pattern, timeout=30, resend=None):
    global seen, before
    deadline = time.time() + timeout
    next_send = 0
    while pattern.encode() not in seen:
        if time.time() > deadline:
            sys.stdout.write(seen.decode(errors="replace"))
            sys.exit("timed out waiting for %r" % pattern)
        if resend and time.time() >= next_send:
            os.write(fd, resend.encode())
            next_send = time.time() + 1
        r, _, _ = select.select([fd], [], [], 0.1)
        if r:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                chunk = b""
            if not chunk:
                sys.stdout.write(seen.decode(errors="replace"))
                sys.exit("pty closed waiting for %r" % pattern)
            seen += chunk
    at = seen.index(pattern.encode())
    before = seen[:at]
    seen = seen[at + len(pattern):]

expect("authenticating to")
expect("ms)")
os.write(fd, b"echo hello-$((6*7)) T=$TERM\n")
expect("hello-42 T=vt100")
os.write(fd, b"stty size\n")
expect("33 101")
winsize(fd, 40, 120)
expect("40 120", resend="stty size\n")
os.write(fd, b"exit 0\n")
expect("STATUS=0")
# stty -a writes several lines, and they may arrive in several reads: wait for the marker
# echoed after it, so the flags (icanon, echo) are all in hand before they are checked.
expect("STTY-END", timeout=10)
mode = before.decode(errors="replace")
print("STTY:" + mode.replace("\r", " ").replace("\n", " ") + " ")
"#;

/// Both directions at once through the whole chain: 64 MiB into `cat` on the customer's
/// machine and back out while it is still going in, and beside it a second hop through the
/// same tunnel downloading 64 MiB. A session that waited on a channel's reader, or did not
/// read while it wrote, stalled on this (patches/russh/README.md); a stall fails the test
/// after two minutes instead of hanging it.
#[test]
fn echo_at_once_and_a_second_hop_stream_through_one_tunnel() {
    use std::io::Read;
    const ECHOES: usize = 3;
    let mut w = World::start(1);
    let code = w.device("SN-ECHO");
    let big = w.path("echo.bin");
    random_file(&big, 64 << 20);
    let args = |cmd: &[&str]| {
        let mut args = vec!["connect", "SN-ECHO", "--code", &code, "--"];
        args.extend_from_slice(cmd);
        args.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let spawn = |cmd: &[&str], stdin: Stdio| {
        let args = args(cmd);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        w.cli(0, &args)
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut children = Vec::new();
    for _ in 0..ECHOES {
        children.push((
            "echo",
            spawn(&["cat"], Stdio::from(fs::File::open(&big).unwrap())),
        ));
    }
    children.push((
        "download",
        spawn(&["head", "-c", "67108864", "/dev/zero"], Stdio::null()),
    ));
    let (done, finished) = std::sync::mpsc::channel();
    let mut readers = Vec::new();
    for (_, child) in &mut children {
        let mut stdout = child.stdout.take().unwrap();
        let done = done.clone();
        readers.push(std::thread::spawn(move || {
            let mut out = Vec::new();
            let read = stdout.read_to_end(&mut out);
            let _ = done.send(());
            read.map(|_| out)
        }));
    }
    for _ in 0..children.len() {
        if finished
            .recv_timeout(std::time::Duration::from_secs(120))
            .is_err()
        {
            for (_, child) in &mut children {
                let _ = child.kill();
            }
            panic!("stalled: not every stream ended within two minutes");
        }
    }
    let want = sha256_file(&big);
    for ((what, child), reader) in children.into_iter().zip(readers) {
        let out = reader.join().unwrap().unwrap();
        let child = child.wait_with_output().unwrap();
        assert!(child.status.success(), "{what}: {}", text(&child.stderr));
        if what == "echo" {
            let copy = w.path("echoed.bin");
            fs::write(&copy, &out).unwrap();
            assert_eq!(sha256_file(&copy), want, "the echo came back changed");
        } else {
            assert_eq!(out.len(), 64 << 20);
            assert!(out.iter().all(|&b| b == 0));
        }
    }
}

/// Whether the open file description behind `fd` is non-blocking, as the kernel says.
fn nonblocking(fd: &impl std::os::fd::AsRawFd) -> bool {
    let info = fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd())).unwrap();
    let flags = info
        .lines()
        .find_map(|l| l.strip_prefix("flags:"))
        .map(|f| u32::from_str_radix(f.trim(), 8).unwrap())
        .unwrap();
    flags & 0o4000 != 0
}

/// A pipe or a socket on stdin is read by support-cli's runtime (non-blocking while it
/// reads): the bytes arrive whole with the EOF, the pipe is left blocking for whoever shares
/// it, and a command that stops reading early ends the session all the same.
#[test]
fn piped_and_socket_stdin_arrive_whole_and_the_pipe_is_left_as_found() {
    use std::io::Write;
    let mut w = World::start(1);
    let code = w.device("SN-PIPE");
    let big = w.path("big.bin");
    random_file(&big, 64 << 20);
    let want = sha256_file(&big);
    let connect = |cmd: &[&str]| {
        let mut args = vec!["connect", "SN-PIPE", "--code", &code, "--"];
        args.extend_from_slice(cmd);
        let mut c = w.cli(0, &args);
        c.stdout(Stdio::piped()).stderr(Stdio::piped());
        c
    };
    let remote_hash = |out: &std::process::Output| {
        assert!(out.status.success(), "stderr: {}", text(&out.stderr));
        text(&out.stdout)
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string()
    };

    // `cat big.bin | support-cli connect … -- sha256sum`
    let (reader, mut writer) = std::io::pipe().unwrap();
    let ours = reader.try_clone().unwrap();
    let child = connect(&["sha256sum"]).stdin(reader).spawn().unwrap();
    let path = big.clone();
    let feeding = std::thread::spawn(move || {
        let mut file = fs::File::open(path).unwrap();
        // Past the pipe's 64 KiB, support-cli has started reading it.
        std::io::copy(&mut std::io::Read::take(&mut file, 1 << 20), &mut writer).unwrap();
        let while_reading = nonblocking(&ours);
        std::io::copy(&mut file, &mut writer).unwrap();
        (while_reading, ours)
    });
    let out = child.wait_with_output().unwrap();
    let (while_reading, ours) = feeding.join().unwrap();
    assert_eq!(remote_hash(&out), want);
    assert!(while_reading, "the pipe was not read through the runtime");
    assert!(!nonblocking(&ours), "the pipe was left non-blocking");

    // A socket (a program that hands its child one end of a socketpair).
    let (theirs, mut feeder) = std::os::unix::net::UnixStream::pair().unwrap();
    let child = connect(&["sha256sum"])
        .stdin(std::os::fd::OwnedFd::from(theirs))
        .spawn()
        .unwrap();
    let path = big.clone();
    let feeding = std::thread::spawn(move || {
        std::io::copy(&mut fs::File::open(path).unwrap(), &mut feeder).unwrap();
    });
    let out = child.wait_with_output().unwrap();
    feeding.join().unwrap();
    assert_eq!(remote_hash(&out), want);

    // `yes | support-cli connect … -- head -c 1000`: the command's end is the session's,
    // though stdin never ends.
    let (reader, mut writer) = std::io::pipe().unwrap();
    let child = connect(&["head", "-c", "1000"])
        .stdin(reader)
        .spawn()
        .unwrap();
    let feeding = std::thread::spawn(move || {
        let line = [b'y'; 4096];
        while writer.write_all(&line).is_ok() {}
    });
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    assert_eq!(out.stdout, vec![b'y'; 1000]);
    feeding.join().unwrap();
}

#[test]
fn interactive_shell_in_a_real_pty() {
    let mut w = World::start(1);
    let code = w.device("SN-PTY");
    let driver = w.path("pty_driver.py");
    fs::write(&driver, PTY_DRIVER).unwrap();
    let cli = w.cli(0, &["connect", "SN-PTY", "--code", &code]);
    let mut python = Command::new("python3");
    python.arg(&driver).arg(cli.get_program());
    python.args(cli.get_args());
    for (k, v) in cli.get_envs() {
        if let Some(v) = v {
            python.env(k, v);
        }
    }
    python.env("TERM", "vt100").env("HOME", w.dir.path());
    let out = python.stdin(Stdio::null()).output().unwrap();
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "pty driver failed: {}\n{stdout}",
        text(&out.stderr)
    );
    let stty = stdout
        .lines()
        .find_map(|l| l.strip_prefix("STTY:"))
        .unwrap_or_default();
    // Raw mode was undone: canonical input and echo are back on.
    assert!(
        stty.contains(" icanon") && !stty.contains("-icanon"),
        "{stty}"
    );
    assert!(
        stty.contains(" echo ") && !stty.contains("-echo "),
        "{stty}"
    );
}

#[test]
fn refusals_say_what_to_do() {
    let mut w = World::start(2);
    let code = w.device("SN-NO");

    // Malformed: exit 2, and the jump host never sees a login.
    let logins_before = w.jump.proc.stderr().matches("eng0").count();
    let out = w.connect(0, "SN-NO", "12345", &["true"], Stdio::null());
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("malformed code"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(w.jump.proc.stderr().matches("eng0").count(), logins_before);

    // Well formed but wrong.
    let wrong = if code.starts_with('0') {
        "11111-11111"
    } else {
        "00000-00000"
    };
    let out = w.connect(0, "SN-NO", wrong, &["true"], Stdio::null());
    assert_eq!(out.status.code(), Some(255), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("could not prove that it knows this code: check the code"),
        "{}",
        text(&out.stderr)
    );

    // A device without a tunnel.
    let out = w.connect(0, "SN-GONE", &code, &["true"], Stdio::null());
    assert_eq!(out.status.code(), Some(255), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr)
            .contains("device SN-GONE is not connected (has the customer enabled assistance?)"),
        "{}",
        text(&out.stderr)
    );

    // An engineer key the policy does not list.
    let stranger = w.path("stranger");
    keygen(&stranger);
    let out = w
        .cli(
            1,
            &[
                "--identity",
                stranger.to_str().unwrap(),
                "connect",
                "SN-NO",
                "--code",
                &code,
                "--",
                "true",
            ],
        )
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(255), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("does not know engineer eng1"),
        "{}",
        text(&out.stderr)
    );

    // Nothing listening.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap().to_string();
    drop(closed);
    let out = w
        .cli(
            0,
            &[
                "--jumphost",
                &addr,
                "connect",
                "SN-NO",
                "--code",
                &code,
                "--",
                "true",
            ],
        )
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(255), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains(&format!("cannot reach the jump host at {addr}")),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn changed_host_key_is_refused() {
    let mut w = World::start(1);
    let code = w.device("SN-HK");
    let out = w.connect(0, "SN-HK", &code, &["true"], Stdio::null());
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("Permanently added"),
        "{}",
        text(&out.stderr)
    );

    // Someone else answers as SN-HK now: pretend by recording another key for it.
    let other = keygen(&w.path("other-host"));
    let known = w.known_hosts(0);
    let text_before = fs::read_to_string(&known).unwrap();
    let (line_no, _) = text_before
        .lines()
        .enumerate()
        .find(|(_, l)| l.starts_with("SN-HK "))
        .unwrap();
    let replaced: Vec<String> = text_before
        .lines()
        .map(|l| {
            if l.starts_with("SN-HK ") {
                format!("SN-HK {other}")
            } else {
                l.to_string()
            }
        })
        .collect();
    fs::write(&known, replaced.join("\n") + "\n").unwrap();

    let out = w.connect(0, "SN-HK", &code, &["echo", "must-not-run"], Stdio::null());
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(255), "{stderr}");
    assert!(
        stderr.contains("REMOTE HOST IDENTIFICATION HAS CHANGED"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("{}:{}", known.display(), line_no + 1)),
        "{stderr}"
    );
    assert!(!text(&out.stdout).contains("must-not-run"));
}

#[test]
fn engineer_outside_the_allowlist_is_told_so() {
    let mut w = World::start_with(1, "10.99.0.0/16");
    let code = w.device("SN-AL");
    let out = w.connect(0, "SN-AL", &code, &["true"], Stdio::null());
    assert_eq!(out.status.code(), Some(255), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains(
            "the jump host refused the connection: engineer eng0 is not allowed from 127.0.0.1 \
             (not in support_cidrs); ask the jump host admin to add your address"
        ),
        "{}",
        text(&out.stderr)
    );
}

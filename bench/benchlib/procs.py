"""Process helpers for the benchmark: children with line-read stdout, readiness by polling
with a deadline (never a fixed sleep), free loopback ports, and memory of a process tree."""

import os
import queue
import signal
import socket
import subprocess
import threading
import time


class BenchError(Exception):
    """Gross breakage: a transfer failed, a count was not reached, a program did not start."""


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def free_port():
    """A port the kernel just handed out on 127.0.0.1 (racy in theory, fine for a bench)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_tcp(port, timeout, what, alive=None):
    """Polls a TCP connect to 127.0.0.1:port until it succeeds or the deadline passes (or
    the process that should listen, `alive()`, has exited)."""
    deadline = time.monotonic() + timeout
    pause = 0.005
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            pass
        if alive is not None and not alive():
            raise BenchError(f"{what} exited before listening on port {port}")
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout}s waiting for {what} on port {port}")
        time.sleep(pause)
        pause = min(pause * 2, 0.1)


def wait_until(timeout, what, check):
    deadline = time.monotonic() + timeout
    pause = 0.005
    while not check():
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(pause)
        pause = min(pause * 2, 0.1)


class Proc:
    """A child whose stdout lines are queued (and kept) and whose stderr goes to a log file."""

    def __init__(self, argv, label, logdir, stdin=subprocess.DEVNULL, env=None, on_line=None):
        self.label = label
        self.stderr_path = os.path.join(logdir, f"{label}.stderr")
        self._err = open(self.stderr_path, "ab")
        self.p = subprocess.Popen(
            argv, stdin=stdin, stdout=subprocess.PIPE, stderr=self._err, env=env,
            start_new_session=True,
        )
        self.lines = queue.Queue()
        # A consumer of every line (the load generator's events) instead of the queue.
        self.on_line = on_line
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for raw in self.p.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            if self.on_line is not None:
                self.on_line(line)
            else:
                self.lines.put(line)
        self.lines.put(None)

    @property
    def pid(self):
        return self.p.pid

    def wait_line(self, prefix, timeout=60):
        """The rest of the first stdout line starting with `prefix`."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(f"{self.label}: no line {prefix!r} within {timeout}s; "
                                 f"stderr: {self.stderr_tail()}")
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                raise BenchError(f"{self.label}: exited ({self.p.poll()}) before {prefix!r}; "
                                 f"stderr: {self.stderr_tail()}")
            if line.startswith(prefix):
                return line[len(prefix):].strip()

    def stderr_tail(self, n=2000):
        try:
            with open(self.stderr_path, "rb") as f:
                return f.read()[-n:].decode(errors="replace")
        except OSError:
            return ""

    def running(self):
        return self.p.poll() is None

    def kill_tree(self, sig=signal.SIGKILL):
        """Signals this process and every descendant of it, by pid (nothing else)."""
        pids = descendants(self.p.pid) + [self.p.pid]
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        try:
            self.p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait(timeout=20)

    def close(self):
        if self.running():
            self.kill_tree()
        self._err.close()


def _ppid_map():
    children = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        fields = _stat_fields(name)
        if fields is None:
            continue
        # Field 4 of stat (ppid).
        children.setdefault(int(fields[1]), []).append(int(name))
    return children


def descendants(pid):
    children = _ppid_map()
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def memory_kib(pids):
    """(RSS, PSS) in KiB summed over `pids`, from /proc/PID/smaps_rollup."""
    rss = pss = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Rss:"):
                        rss += int(line.split()[1])
                    elif line.startswith("Pss:"):
                        pss += int(line.split()[1])
        except OSError:
            pass
    return rss, pss


def tree_memory_kib(pid):
    """(RSS, PSS, process count) of a process and all its descendants."""
    pids = [pid] + descendants(pid)
    rss, pss = memory_kib(pids)
    return rss, pss, len(pids)


CLK_TCK = os.sysconf("SC_CLK_TCK")


def tree_cpu_s(pid):
    """CPU seconds (user + system) of a process tree: each live process's own time plus what
    it reaped from children that have exited, so every process is counted once."""
    return sum(cpu_s(p) or 0 for p in [pid] + descendants(pid))


def _stat_fields(pid):
    """The fields of /proc/PID/stat after the command name's ")" (the name may hold spaces
    and parentheses; field N of proc(5) is at index N - 3); None if the process is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().decode(errors="replace").rsplit(")", 1)[1].split()
    except OSError:
        return None


def cpu_s(pid, reaped=True):
    """CPU seconds (user + system) of one process, with what it reaped from exited children
    unless `reaped` is false; None if it is gone."""
    fields = _stat_fields(pid)
    if fields is None:
        return None
    # Fields 14-17 of stat (utime stime cutime cstime).
    return sum(int(x) for x in fields[11:15 if reaped else 13]) / CLK_TCK


def tree_minflt(pid):
    """Minor page faults of a process tree so far, counted like `tree_cpu_s`: each fault is a
    page the kernel had to map (and zero) because the process touched it for the first time
    since it was mapped or given back."""
    return sum(minflt(p) or 0 for p in [pid] + descendants(pid))


def minflt(pid):
    """Minor page faults of one process with those it reaped from exited children; None if it
    is gone."""
    fields = _stat_fields(pid)
    if fields is None:
        return None
    # Fields 10 and 11 of stat (minflt cminflt).
    return int(fields[7]) + int(fields[8])


def run(argv, timeout=120, **kw):
    """Runs a short command; raises BenchError with its stderr if it fails."""
    try:
        r = subprocess.run(argv, capture_output=True, timeout=timeout, **kw)
    except subprocess.TimeoutExpired as e:
        raise BenchError(f"{argv[0]} timed out after {timeout}s") from e
    if r.returncode != 0:
        raise BenchError(f"{' '.join(map(str, argv))} exited {r.returncode}: "
                         f"{r.stderr.decode(errors='replace')[-2000:]}")
    return r.stdout.decode(errors="replace")


def keygen(path, comment="bench"):
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", path])
    with open(path + ".pub") as f:
        return f.read().strip()

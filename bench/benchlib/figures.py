"""The measurements: each takes the chains (OpenSSH first, ours second, alternated where
repeated) and returns plain numbers for the report. Failures that mean breakage raise
BenchError; timing never does."""

import fcntl
import hashlib
import os
import resource
import selectors
import shutil
import statistics
import subprocess
import tempfile
import threading
from collections import Counter
import time
from concurrent.futures import ThreadPoolExecutor

from .chains import ENGINEER
from .procs import (BenchError, Proc, _ppid_map, cpu_s, log, memory_kib, run, tree_cpu_s,
                    tree_minflt, wait_until)

MB = 1_000_000
CHUNK = 1 << 20


# No transfer may hang the run: a watchdog kills it after this long.
TRANSFER_TIMEOUT = 600


def _watchdog(p):
    timer = threading.Timer(TRANSFER_TIMEOUT, p.kill)
    timer.daemon = True
    timer.start()
    return timer


def _rate(nbytes, seconds):
    return nbytes / MB / seconds if seconds > 0 else float("nan")


def download(chain, size, marker, on_start=None):
    """`head -c SIZE /dev/zero` remotely, read here; MB/s after the first `marker` bytes
    (so login and buffer fill are not counted) and over the whole command."""
    start = time.monotonic()
    p = subprocess.Popen(chain.cmd(["head", "-c", str(size), "/dev/zero"]),
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if on_start:
        on_start(p.pid)
    timer = _watchdog(p)
    got, t_mark = 0, None
    fd = p.stdout.fileno()
    while True:
        block = os.read(fd, CHUNK)
        if not block:
            break
        got += len(block)
        if t_mark is None and got >= marker:
            t_mark = time.monotonic()
    end = time.monotonic()
    err = p.stderr.read().decode(errors="replace")
    rc = p.wait(timeout=60)
    timer.cancel()
    if rc != 0 or got != size:
        raise BenchError(f"{chain.name} download: exit {rc}, {got}/{size} bytes; {err[-500:]}")
    return {"steady": _rate(size - marker, end - t_mark), "wall": _rate(size, end - start)}


def upload(chain, path, size, marker, on_start=None):
    """A local file fed on stdin to `wc -c` remotely (as `cat > /dev/null`, but the byte
    count comes back to be checked)."""
    start = time.monotonic()
    p = subprocess.Popen(chain.cmd(["wc", "-c"]), stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if on_start:
        on_start(p.pid)
    timer = _watchdog(p)
    sent, t_mark = 0, None
    try:
        with open(path, "rb") as f:
            while True:
                block = f.read(CHUNK)
                if not block:
                    break
                p.stdin.write(block)
                sent += len(block)
                if t_mark is None and sent >= marker:
                    t_mark = time.monotonic()
        p.stdin.close()
    except BrokenPipeError:
        pass
    out = p.stdout.read()
    end = time.monotonic()
    err = p.stderr.read()
    p.wait(timeout=60)
    timer.cancel()
    counted = out.decode(errors="replace").split()
    if p.returncode != 0 or not counted or int(counted[0]) != size:
        raise BenchError(f"{chain.name} upload: exit {p.returncode}, remote counted {counted}"
                         f" of {size}; {err.decode(errors='replace')[-500:]}")
    return {"steady": _rate(size - marker, end - t_mark), "wall": _rate(size, end - start)}


_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def device_footprint(chains, size, shipped):
    """The device side's cost: the size on disk of the agent as shipped (`shipped`, built with
    the `dist` profile; None when not built), and for each chain the RSS of its device
    process (stock `ssh -R`, or the agent) idle with the tunnel up and assistance enabled,
    and the most seen (sampled every 20 ms) while a `size` download runs through it."""
    out = {"binary_bytes": os.path.getsize(shipped) if shipped else None,
           "binary": os.path.relpath(shipped, _ROOT) if shipped else None}
    for chain in chains:
        pid = chain.device.pid
        idle = memory_kib([pid])[0]
        peak = [idle]
        done = threading.Event()

        def sample():
            while not done.wait(0.02):
                peak[0] = max(peak[0], memory_kib([pid])[0])

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            download(chain, size, 0)
        finally:
            done.set()
            sampler.join()
        out[chain.name] = {"idle_rss_kib": idle, "idle_anon_kib": _anon_kib(pid),
                           "relaying_rss_kib": peak[0]}
        log(f"{chain.name} device: RSS {idle} KiB idle, {peak[0]} KiB relaying")
    return out


def _anon_kib(pid):
    """Of a process's RSS, what is its own memory (heap, stacks) rather than mapped files
    (its program's and libraries' pages)."""
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Anonymous:"):
                return int(line.split()[1])
    return 0


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def verify_integrity(chain, path):
    """Random bytes both ways with checksums: the gross-breakage check of the smoke run."""
    want = sha256(path)
    with open(path, "rb") as f:
        r = subprocess.run(chain.cmd(["sha256sum"]), stdin=f, capture_output=True, timeout=120)
    got = r.stdout.decode().split()[:1]
    if r.returncode != 0 or got != [want]:
        raise BenchError(f"{chain.name} upload checksum: exit {r.returncode}, {got} != {want}")
    r = subprocess.run(chain.cmd(["cat", path]), stdin=subprocess.DEVNULL,
                       capture_output=True, timeout=120)
    if r.returncode != 0 or hashlib.sha256(r.stdout).hexdigest() != want:
        raise BenchError(f"{chain.name} download checksum mismatch (exit {r.returncode})")


def with_cpu(chain, target, size, transfer):
    """Runs `transfer()` and adds the CPU seconds per GB each role spent on it: the engineer
    (this script's reaped children), the jump host, the device and the target sshd."""
    before = chain.cpu_roles()
    before["target"] = tree_cpu_s(target.proc.pid)
    faults = chain.fault_roles()
    faults["target"] = tree_minflt(target.proc.pid)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = transfer()
    kids_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    after = chain.cpu_roles()
    after["target"] = tree_cpu_s(target.proc.pid)
    faults_after = chain.fault_roles()
    faults_after["target"] = tree_minflt(target.proc.pid)
    gb = size / 1e9
    cpu = {"engineer": (kids_after.ru_utime + kids_after.ru_stime
                        - kids.ru_utime - kids.ru_stime) / gb}
    cpu.update({role: (after[role] - before[role]) / gb for role in before})
    out["cpu_s_per_gb"] = cpu
    # Pages first touched per MB moved: a buffer allocated afresh for each packet shows here.
    mb = size / 1e6
    out["faults_per_mb"] = {"engineer": (kids_after.ru_minflt - kids.ru_minflt) / mb}
    out["faults_per_mb"].update({role: (faults_after[role] - faults[role]) / mb
                                 for role in faults})
    return out


def throughput(chains, target, path, size, reps, marker):
    """Upload then download on each chain in turn, `reps` rounds; medians per chain."""
    res = {c.name: {"up": [], "down": []} for c in chains}
    for rep in range(reps):
        for c in chains:
            up = with_cpu(c, target, size, lambda: upload(c, path, size, marker))
            down = with_cpu(c, target, size, lambda: download(c, size, marker))
            res[c.name]["up"].append(up)
            res[c.name]["down"].append(down)
            log(f"throughput rep {rep + 1}/{reps} {c.name}: up {up['steady']:.0f} MB/s, "
                f"down {down['steady']:.0f} MB/s")
    return {n: {d: {"steady": statistics.median(x["steady"] for x in v[d]),
                    "wall": statistics.median(x["wall"] for x in v[d]),
                    "runs": [round(x["steady"], 1) for x in v[d]],
                    "cpu_s_per_gb": {role: statistics.median(x["cpu_s_per_gb"][role]
                                                             for x in v[d])
                                     for role in v[d][0]["cpu_s_per_gb"]},
                    "faults_per_mb": {role: round(statistics.median(x["faults_per_mb"][role]
                                                                    for x in v[d]), 1)
                                      for role in v[d][0]["faults_per_mb"]}}
                for d in ("up", "down")}
            for n, v in res.items()}


def timed(argv, timeout=60):
    start = time.monotonic()
    r = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)
    took = time.monotonic() - start
    if r.returncode != 0:
        raise BenchError(f"{argv[0]} exited {r.returncode}: {r.stderr.decode()[-500:]}")
    return took * 1000


def login(chains, runs):
    times = {c.name: [] for c in chains}
    for _ in range(runs):
        for c in chains:
            times[c.name].append(timed(c.cmd(["true"])))
    return {n: {"median_ms": statistics.median(v), "runs": [round(x) for x in v]}
            for n, v in times.items()}


def derivation(bins, loadgen, tmp, ours):
    """The derivation of a code's two keys alone, in process (release), and `support-cli key`
    end to end (jump host login, the device's proof, derivation, files)."""
    out = run([loadgen, "derive", "--rounds", "5"])
    in_process = float(out.split()[1])
    cli = [timed([bins["support-cli"], "--jumphost", ours.jumphost(), "--engineer", ENGINEER,
                  "--identity", ours.keys.engineer, "--known-hosts", ours.known_hosts,
                  "key", ours.serial, "--code", ours.code,
                  "--out", os.path.join(tmp, f"derived_{i}")]) for i in range(3)]
    return {"in_process_ms": in_process, "support_cli_key_ms": statistics.median(cli)}


class Loadgen:
    """One bench-loadgen process; keeps its events and who is up."""

    def __init__(self, loadgen, chain, key, count, logdir, label, first=0, reconnect=False,
                 concurrency=64):
        self.events = []
        self.up = set()
        self.lock = threading.Lock()
        # Over WebSocket every login is first an HTTP connection, of which the jump host
        # lets one address hold 32 at a time.
        concurrency = min(concurrency, getattr(chain, "max_login_concurrency", concurrency))
        argv = [loadgen, "tunnels", "--addr", f"{chain.jump_addr[0]}:{chain.jump_addr[1]}",
                "--key", key, "--count", str(count), "--first", str(first),
                "--concurrency", str(concurrency), *chain.loadgen_args()]
        if reconnect:
            argv.append("--reconnect")
        if "--ws" not in argv and first + count > 20000:
            # One loopback source address has about 28,000 ephemeral ports to one port.
            argv += ["--sources", str((first + count) // 20000 + 1)]
        self.proc = Proc(argv, label, logdir, stdin=subprocess.PIPE, on_line=self._event)

    def _event(self, line):
        parts = line.split()
        if len(parts) < 3:
            return
        kind, idx, ms = parts[0], int(parts[1]), int(parts[2])
        with self.lock:
            self.events.append((kind, idx, ms, " ".join(parts[3:])))
            if kind == "up":
                self.up.add(idx)
            elif kind == "down":
                self.up.discard(idx)

    def up_count(self):
        with self.lock:
            return len(self.up)

    def wait_up(self, n, timeout, what):
        try:
            wait_until(timeout, what, lambda: self.up_count() >= n or not self.proc.running())
        except BenchError:
            raise BenchError(f"{what}: {self.up_count()}/{n} up; last failures: "
                             f"{self.failures()[-3:]}")
        if self.up_count() < n:
            raise BenchError(f"{what}: loadgen exited with {self.up_count()}/{n} up; "
                             f"{self.failures()[-3:]} {self.proc.stderr_tail(500)}")

    def failures(self):
        with self.lock:
            return [e for e in self.events if e[0] == "fail"]

    def close(self):
        try:
            self.proc.p.stdin.close()
            self.proc.p.wait(timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            pass
        self.proc.close()


def settled_memory(chain):
    """Memory once it stops moving (allocations after the last login settle), bounded."""
    last = chain.memory()
    for _ in range(10):
        time.sleep(0.3)
        now = chain.memory()
        if abs(now[1] - last[1]) < 256:
            return now
        last = now
    return last


def register_all(chain, serials, public_key):
    def one(serial):
        status, body = chain.register(serial, public_key)
        if status not in (200, 201):
            raise BenchError(f"register {serial}: {status} {body}")
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, serials))


def idle(chain, loadgen, key, levels, logdir, timeout, hops=0):
    """Jump-host memory before and after holding each level of idle tunnels (cumulative).
    The jump host is restarted first, so memory freed by earlier figures (and kept by the
    allocator) does not hide the first tunnels' cost. With `hops`, also how long an
    engineer's hop (login and `true`) takes with no tunnel held and with the last level
    held: the jump host must answer while it sits on them."""
    chain.restart()
    out = {"levels": []}
    if hops:
        wait_until(60, f"{chain.name}: the device back after the restart", chain.works)
        out["hop_ms_empty"] = statistics.median(timed(chain.cmd(["true"]))
                                                for _ in range(hops))
    base = settled_memory(chain)
    out.update(base_rss_kib=base[0], base_pss_kib=base[1])
    gens, held = [], 0
    try:
        for level in levels:
            gen = Loadgen(loadgen, chain, key, level - held, logdir,
                          f"loadgen-idle-{chain.name}-{level}", first=held)
            gens.append(gen)
            gen.wait_up(level - held, timeout, f"{chain.name}: {level} idle tunnels")
            held = level
            rss, pss, procs = settled_memory(chain)
            per = (pss - base[1]) / level
            out["levels"].append({"tunnels": level, "rss_kib": rss, "pss_kib": pss,
                                  "processes": procs, "per_tunnel_kib": per,
                                  "per_tunnel_rss_kib": (rss - base[0]) / level})
            log(f"idle {chain.name} {level} tunnels: PSS {pss / 1024:.1f} MiB, "
                f"{per:.1f} KiB/tunnel ({procs} processes)")
        if hops:
            out["hop_ms_loaded"] = statistics.median(timed(chain.cmd(["true"]))
                                                     for _ in range(hops))
            log(f"idle {chain.name}: a hop takes {out['hop_ms_loaded']:.0f} ms with {held} "
                f"tunnels held, {out['hop_ms_empty']:.0f} ms with none")
    finally:
        for gen in gens:
            gen.close()
    return out


def fan_in(chains, hops, size, target=None):
    """`hops` engineers downloading `size` bytes each at once through one device tunnel.

    Every hop logs in and says it is ready before any transfer starts, then all start
    together: slowest ÷ fastest then measures how the chain shares one tunnel, not how far
    apart the logins happened to finish (a hop that logs in last used to find the tunnel
    nearly free). How far apart the logins finished is reported beside it.

    The go is a lock on a file, held by this process while the hops log in: each hop's
    command waits for it with `flock -s` on the customer's machine (this one), and its
    release wakes all of them at the same instant. A go sent down each hop's session
    instead reached the hops over 0.1–0.3 s, one after the other through the loaded chain,
    and the first few had the tunnel to themselves for that long: in our chain they were
    the fastest hops in every run, 10–16 % ahead of the median (bench/NOTES.md)."""
    res = {}
    gate_dir = tempfile.mkdtemp(prefix="assist-fan-in.")
    os.chmod(gate_dir, 0o755)
    gate = os.path.join(gate_dir, "go")
    remote = f"echo R; flock -s {gate} true; exec head -c {size} /dev/zero"
    for c in chains:
        gate_fd = os.open(gate, os.O_RDWR | os.O_CREAT, 0o644)
        os.fchmod(gate_fd, 0o644)
        fcntl.flock(gate_fd, fcntl.LOCK_EX)
        procs = [subprocess.Popen(c.cmd([remote]), stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
                 for _ in range(hops)]
        timers = [_watchdog(p) for p in procs]
        sel = selectors.DefaultSelector()
        stat = {}
        for i, p in enumerate(procs):
            sel.register(p.stdout, selectors.EVENT_READ, i)
            stat[i] = {"got": 0, "first": None, "last": None, "ready": None, "head": b""}
        open_ = hops
        ready = 0
        started = False
        # This one thread reads every hop; on two cores shared with hundreds of the chains'
        # processes its fair share of CPU was too small to keep up, and hops waited on it
        # (their client had written, the reader had not read: seen with timestamps on both
        # sides). It reads at a higher priority than the chains, into one buffer, as a
        # hundred engineers on their own machines would not be short of CPU to read with.
        nice = os.getpriority(os.PRIO_PROCESS, 0)
        try:
            os.setpriority(os.PRIO_PROCESS, 0, -10)
        except PermissionError:
            log("fan-in: cannot raise the reader's priority (not root); hops may wait on it")
        buf = bytearray(CHUNK)
        deadline = time.monotonic() + 600
        # The engineers' CPU: each process of each engineer's tree (`ssh -J` has its
        # ProxyJump child, which nobody reaps in time to count it otherwise), last seen.
        seen, sampled = {}, 0.0
        while open_ and time.monotonic() < deadline:
            if started and time.monotonic() - sampled > 0.25:
                _sample_cpu(procs, seen)
                sampled = time.monotonic()
            for key, _ in sel.select(timeout=5):
                i = key.data
                n = os.readv(key.fileobj.fileno(), [buf])
                now = time.monotonic()
                block = buf[:n] if stat[i]["ready"] is None else n
                if not n:
                    sel.unregister(key.fileobj)
                    open_ -= 1
                    continue
                s = stat[i]
                if s["ready"] is None:
                    s["head"] += block
                    if len(s["head"]) < 2:
                        continue
                    if not s["head"].startswith(b"R\n"):
                        raise BenchError(f"{c.name} fan-in: hop {i} said {s['head'][:20]!r}")
                    s["ready"] = now
                    ready += 1
                    block = len(s["head"]) - 2
                    if not block:
                        continue
                s["got"] += block
                s["first"] = s["first"] or now
                s["last"] = now
            if ready == hops and not started:
                # CPU from here on is the transfers' (the logins and derivations are done).
                at_go = c.cpu_roles()
                if target:
                    at_go["target"] = tree_cpu_s(target.proc.pid)
                _sample_cpu(procs, seen)
                engineers_at_go = sum(seen.values())
                # Everybody is logged in: the same go for all, at once.
                fcntl.flock(gate_fd, fcntl.LOCK_UN)
                os.close(gate_fd)
                gate_fd = None
                for p in procs:
                    p.stdin.close()
                started = True
        if started:
            _sample_cpu(procs, seen)
        if gate_fd is not None:
            os.close(gate_fd)
        os.setpriority(os.PRIO_PROCESS, 0, nice)
        for p in procs:
            if p.poll() is None and open_:
                p.kill()
        rcs = [p.wait(timeout=60) for p in procs]
        for timer in timers:
            timer.cancel()
        cpu = None
        if started:
            end = c.cpu_roles()
            if target:
                end["target"] = tree_cpu_s(target.proc.pid)
            gb = size * hops / 1e9
            cpu = {"engineer": (sum(seen.values()) - engineers_at_go) / gb}
            cpu.update({role: (end[role] - at_go[role]) / gb for role in at_go})
        bad = [i for i in range(hops) if rcs[i] != 0 or stat[i]["got"] != size]
        if bad:
            raise BenchError(f"{c.name} fan-in: {len(bad)}/{hops} hops failed "
                             f"(e.g. exit {rcs[bad[0]]}, {stat[bad[0]]['got']}/{size} bytes, "
                             f"{ready} logged in)")
        rates = [_rate(size, s["last"] - s["first"]) for s in stat.values()]
        span = max(s["last"] for s in stat.values()) - min(s["first"] for s in stat.values())
        firsts = [s["first"] for s in stat.values()]
        readies = [s["ready"] for s in stat.values()]
        res[c.name] = {"aggregate": _rate(size * hops, span), "slowest": min(rates),
                       "fastest": max(rates), "fairness": min(rates) / max(rates),
                       "median_hop": statistics.median(rates),
                       "first_byte_spread_s": max(firsts) - min(firsts),
                       "login_spread_s": max(readies) - min(readies), "cpu_s_per_gb": cpu,
                       "hops": sorted((round(s["first"] - min(firsts), 3),
                                       round(s["last"] - min(firsts), 3)) for s in stat.values())}
        log(f"fan-in {c.name}: {res[c.name]['aggregate']:.0f} MB/s aggregate, "
            f"slowest/fastest {res[c.name]['fairness']:.2f}, logins spread "
            f"{res[c.name]['login_spread_s']:.1f} s, first bytes "
            f"{res[c.name]['first_byte_spread_s']:.2f} s")
    shutil.rmtree(gate_dir, ignore_errors=True)
    return res


def _sample_cpu(procs, seen):
    """Records in `seen` each process's own CPU seconds so far, for every process of the
    trees under `procs` that is still there."""
    children = _ppid_map()
    todo = [p.pid for p in procs]
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, []))
        own = cpu_s(pid, reaped=False)
        if own is not None:
            seen[pid] = own


def _peak(times_ms, window_ms):
    """Most events within any window of `window_ms` (times sorted)."""
    peak, j = 0, 0
    for i, t in enumerate(times_ms):
        while times_ms[j] <= t - window_ms:
            j += 1
        peak = max(peak, i - j + 1)
    return peak


def storm(chain, loadgen, key, count, logdir, timeout):
    """`count` reconnecting devices; the jump host is killed and started on the same ports.
    Time from the kill until every device is back, and the peak logins per second."""
    gen = Loadgen(loadgen, chain, key, count, logdir, f"loadgen-storm-{chain.name}",
                  reconnect=True)
    try:
        gen.wait_up(count, timeout, f"{chain.name}: {count} storm devices before the restart")
        t0 = int(time.time() * 1000)
        chain.restart()
        ready_ms = int(time.time() * 1000) - t0

        def all_back():
            with gen.lock:
                back = {e[1] for e in gen.events if e[0] == "up" and e[2] >= t0}
            return len(back) >= count

        wait_until(timeout, f"{chain.name}: {count} devices back after the restart", all_back)
        with gen.lock:
            ups = sorted(e[2] for e in gen.events if e[0] == "up" and e[2] >= t0)
            tries = sum(1 for e in gen.events if e[0] == "try" and e[2] >= t0)
            fails = sum(1 for e in gen.events if e[0] == "fail" and e[2] >= t0)
            reasons = Counter(e[3][:80] for e in gen.events if e[0] == "fail" and e[2] >= t0)
        first = {}
        for e in gen.events:
            if e[0] == "up" and e[2] >= t0:
                first.setdefault(e[1], e[2])
        back = sorted(first.values())
        peak, peak_100ms = _peak(ups, 1000), _peak(ups, 100)
        out = {"devices": count, "restart_ms": ready_ms, "all_back_s": (back[-1] - t0) / 1000,
               "first_back_s": (back[0] - t0) / 1000, "peak_per_s": peak,
               "peak_per_100ms": peak_100ms,
               "attempts": tries, "failed_attempts": fails,
               "fail_reasons": dict(reasons.most_common(4))}
        log(f"storm {chain.name}: all {count} back in {out['all_back_s']:.1f} s, "
            f"peak {peak} logins/s, {tries} attempts ({fails} failed: {out['fail_reasons']})")
        return out
    finally:
        gen.close()

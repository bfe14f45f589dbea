#!/usr/bin/env python3
"""Cost of a hop through a peer node (issue 18, item 5): one device on node A of a two-node
cluster, the engineer landing on A (direct) or on B (B carries the hop to A over the peer
link), alternated in one run on loopback.

    python3 bench/peer.py [--profile release|debug] [--mib 256] [--reps 3] [--logins 15]

Figures, each as direct, through the peer, and their ratio:
- throughput: `support-cli connect … -- head -c N /dev/zero` read and counted here, and an
  upload of N random bytes to a remote `wc -c`; MB/s over the whole command;
- login: `support-cli connect … -- true` to exit (key derivation included), median;
- hop open: `support-cli stdio SERIAL` until the customer's sshd banner arrives, median
  (the hop alone: engineer login to the jump host, lease lookup and peer channel, no key
  derivation).
Targets: the peer hop keeps >= 80 % of direct throughput and adds < 20 ms to the login.

PostgreSQL is a throwaway cluster (as bench/store.py makes it); the customer's machine a
stock sshd; the device the real agent. Run as root.
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from benchlib.chains import TARGET_EXTRA, Sshd  # noqa: E402
from benchlib.procs import BenchError, Proc, keygen, run, wait_until  # noqa: E402
from store import start_postgres  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SERIAL = "BENCH-PEER"
ENGINEER = "bench"


def start_node(bins, work, name, url, policy, logdir, host_key=None):
    """assist-jumphost as node `name` with a peer listener; returns (proc, ssh address, api)."""
    folder = os.path.join(work, name)
    os.makedirs(os.path.join(folder, "policies"))
    os.makedirs(os.path.join(folder, "data"), mode=0o700)
    if host_key:
        # One service to agents and engineers: every node has the first one's host key.
        shutil.copy(host_key, os.path.join(folder, "data", "host_key"))
    with open(os.path.join(folder, "policies", "bench.toml"), "w") as f:
        f.write(policy)
    config = os.path.join(folder, "jumphost.toml")
    with open(config, "w") as f:
        f.write('ssh_listen = "127.0.0.1:0"\napi_listen = "127.0.0.1:0"\n'
                f'data_dir = "data"\npolicies_dir = "policies"\ndatabase = "{url}"\n'
                f'[cluster]\nnode = "{name}"\npeer_listen = "127.0.0.1:0"\n')
    env = dict(os.environ, RUST_LOG="warn")
    proc = Proc([bins["assist-jumphost"], "serve", "--config", config], name, logdir, env=env)
    ssh = proc.wait_line("ssh listening on")
    api = proc.wait_line("api listening on")
    return proc, ssh, api, os.path.join(folder, "data", "host_key")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--profile", choices=["debug", "release"], default="release")
    p.add_argument("--mib", type=int, default=256, help="MiB per transfer")
    p.add_argument("--reps", type=int, default=3, help="transfers each way per node, alternated")
    p.add_argument("--logins", type=int, default=15, help="logins and hop opens per node")
    args = p.parse_args()
    bins = {b: os.path.join(ROOT, "target", args.profile, b)
            for b in ("assist-jumphost", "assist-client", "support-cli")}
    work = tempfile.mkdtemp(prefix="assist-peer-bench-")
    os.chmod(work, 0o755)  # the postgres account reaches its folder inside
    logdir = os.path.join(work, "logs")
    os.makedirs(logdir)
    procs = []
    try:
        engineer = os.path.join(work, "engineer")
        engineer_pub = keygen(engineer)
        policy = ('[allowlist]\nsupport_cidrs = ["127.0.0.0/8"]\n\n'
                  f'[[support]]\nname = "{ENGINEER}"\npublic_key = "{engineer_pub}"\n\n'
                  '[serials]\nallow = ["BENCH-*"]\n')
        pg, url = start_postgres(work)
        procs.append(pg)
        a, a_ssh, a_api, host_key = start_node(bins, work, "a", url, policy, logdir)
        procs.append(a)
        b, b_ssh, _, _ = start_node(bins, work, "b", url, policy, logdir, host_key)
        procs.append(b)
        target = Sshd(os.path.join(work, "target"), "target-sshd", [], TARGET_EXTRA, logdir)
        procs.append(target)

        cdir = os.path.join(work, "agent")
        os.makedirs(cdir)
        cfg = os.path.join(cdir, "client.toml")
        with open(cfg, "w") as f:
            f.write(f'serial = "{SERIAL}"\njumphost = "{a_ssh}"\napi_url = "{a_api}"\n'
                    f'data_dir = "{cdir}/data"\nweb_listen = "127.0.0.1:0"\n'
                    f'target_user = "root"\nauthorized_keys = "{target.authorized_keys}"\n\n'
                    f'[services]\nssh = "127.0.0.1:{target.port}"\n')
        agent = Proc([bins["assist-client"], "run", "--config", cfg], "agent", logdir,
                     env=dict(os.environ, RUST_LOG="warn"))
        procs.append(agent)
        agent.wait_line("web listening on")
        out = run([bins["assist-client"], "enable", "--config", cfg], timeout=60)
        code = [l.split(":", 1)[1].strip() for l in out.splitlines() if l.startswith("code:")][0]
        known_hosts = os.path.join(work, "known_hosts")

        def cli(node, *rest):
            return [bins["support-cli"], "--jumphost", node, "--engineer", ENGINEER,
                    "--identity", engineer, "--known-hosts", known_hosts, *rest]

        def connect(node, *remote):
            return cli(node, "connect", SERIAL, "--code", code, "--", *remote)

        def works():
            return subprocess.run(connect(a_ssh, "true"), capture_output=True,
                                  stdin=subprocess.DEVNULL, timeout=60).returncode == 0
        wait_until(60, "the device to carry a command", works)

        nodes = {"direct": a_ssh, "peer": b_ssh}
        size = args.mib * 1024 * 1024
        payload = os.path.join(work, "payload")
        with open(payload, "wb") as f:
            f.write(os.urandom(size))
        down = {k: [] for k in nodes}
        up = {k: [] for k in nodes}
        for _ in range(args.reps):
            for name, node in nodes.items():
                started = time.perf_counter()
                r = subprocess.run(connect(node, "head", "-c", str(size), "/dev/zero"),
                                   stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, timeout=600)
                took = time.perf_counter() - started
                if r.returncode != 0 or len(r.stdout) != size:
                    raise BenchError(f"download via {name}: {r.stderr[-500:]!r}")
                down[name].append(size / took / 1e6)
                with open(payload, "rb") as f:
                    started = time.perf_counter()
                    out = subprocess.run(connect(node, "wc", "-c"), stdin=f,
                                         capture_output=True, timeout=600)
                    took = time.perf_counter() - started
                if out.returncode != 0 or out.stdout.decode().strip() != str(size):
                    raise BenchError(f"upload via {name}: {out.stderr[-500:]!r}")
                up[name].append(size / took / 1e6)

        login = {k: [] for k in nodes}
        hop = {k: [] for k in nodes}
        for _ in range(args.logins):
            for name, node in nodes.items():
                started = time.perf_counter()
                subprocess.run(connect(node, "true"), check=True, capture_output=True,
                               stdin=subprocess.DEVNULL, timeout=60)
                login[name].append((time.perf_counter() - started) * 1000)
                started = time.perf_counter()
                stdio = subprocess.Popen(cli(node, "stdio", SERIAL), stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
                banner = stdio.stdout.readline()
                hop[name].append((time.perf_counter() - started) * 1000)
                stdio.stdin.close()
                stdio.wait(timeout=30)
                if not banner.startswith(b"SSH-2.0-"):
                    raise BenchError(f"hop via {name}: no sshd banner ({banner!r})")

        med = statistics.median
        rows = [
            ("download MB/s", med(down["direct"]), med(down["peer"])),
            ("upload MB/s", med(up["direct"]), med(up["peer"])),
            ("login ms (connect -- true)", med(login["direct"]), med(login["peer"])),
            ("hop open ms (stdio to banner)", med(hop["direct"]), med(hop["peer"])),
        ]
        print(f"{args.profile} build, {args.mib} MiB x {args.reps} each way, "
              f"{args.logins} logins; medians")
        print(f"{'figure':<32}{'direct':>10}{'peer':>10}{'peer/direct':>13}{'added':>10}")
        for figure, direct, peer in rows:
            added = f"{peer - direct:+.1f}" if "ms" in figure else ""
            print(f"{figure:<32}{direct:>10.1f}{peer:>10.1f}{peer / direct:>13.2f}{added:>10}")
        print("raw:", {"down": down, "up": up, "login_ms": login, "hop_ms": hop})
    finally:
        for proc in reversed(procs):
            if hasattr(proc, "close"):
                proc.close()
            else:
                proc.terminate()
                proc.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Registration cost on the two stores: SQLite in data_dir against a private PostgreSQL.

    python3 bench/store.py [--profile debug|release] [-n 300] [--threads 8]

For each store it starts one assist-jumphost on loopback and POSTs /v1/register for fresh
serials: first one at a time (latency of an acknowledged, committed registration: p50 and
p99), then from --threads clients at once (registrations per second). PostgreSQL is
Debian's `postgresql` package, a throwaway cluster made with initdb in a temporary folder
and run as the `postgres` account (as tests/src/postgres.rs does). Run as root.
"""

import argparse
import concurrent.futures
import glob
import http.client
import json
import os
import pwd
import shutil
import socket
import statistics
import subprocess
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
POLICY = ('[serials]\nallow = ["SN-*"]\n\n'
          # The bench measures the store, not the per-source rate limit.
          '[penalties]\nregister_burst = 1000000\nregister_per_minute = 1000000\n')
# A fixed, valid key line: registrations of fresh serials never conflict.
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJqE7egDfQoF+LPGvaRdEJjNURSRmJ2U+vQ9XSbMvnLX"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check, what, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.02)
    raise SystemExit(f"{what}: not ready within {timeout}s")


def start_postgres(work):
    bindir = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]))[-1]
    pg = pwd.getpwnam("postgres")
    folder = os.path.join(work, "pg")
    os.makedirs(folder)
    os.chown(folder, pg.pw_uid, pg.pw_gid)

    def as_postgres():
        os.setgid(pg.pw_gid)
        os.setuid(pg.pw_uid)

    subprocess.run([f"{bindir}/initdb", "-D", f"{folder}/data", "-U", "assist", "--auth=trust",
                    "--encoding=UTF8", "--locale=C.UTF-8"], check=True, cwd=folder,
                   preexec_fn=as_postgres, stdout=subprocess.DEVNULL)
    port = free_port()
    proc = subprocess.Popen([f"{bindir}/postgres", "-D", f"{folder}/data", "-p", str(port),
                             "-k", folder, "-c", "listen_addresses=127.0.0.1"], cwd=folder,
                            preexec_fn=as_postgres, stderr=subprocess.DEVNULL)
    psql = shutil.which("psql")

    def ready():
        return subprocess.run([psql, "-h", "127.0.0.1", "-p", str(port), "-U", "assist",
                               "-d", "postgres", "-c", "select 1"],
                              capture_output=True).returncode == 0
    wait_for(ready, "postgres")
    subprocess.run([psql, "-h", "127.0.0.1", "-p", str(port), "-U", "assist", "-d", "postgres",
                    "-c", "create database assist"], check=True, capture_output=True)
    return proc, f"postgresql://assist@127.0.0.1:{port}/assist"


def start_jumphost(binary, work, name, extra):
    folder = os.path.join(work, name)
    os.makedirs(os.path.join(folder, "policies"))
    with open(os.path.join(folder, "policies", "p.toml"), "w") as f:
        f.write(POLICY)
    config = os.path.join(folder, "jumphost.toml")
    with open(config, "w") as f:
        f.write('ssh_listen = "127.0.0.1:0"\napi_listen = "127.0.0.1:0"\n'
                f'data_dir = "data"\npolicies_dir = "policies"\n{extra}')
    proc = subprocess.Popen([binary, "serve", "--config", config], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    for line in proc.stdout:
        if line.startswith("api listening on http://"):
            host, port = line.split("http://")[1].strip().rsplit(":", 1)
            return proc, (host, int(port))
    raise SystemExit(f"{name}: the jump host exited before it was ready")


def register(api, serial):
    conn = http.client.HTTPConnection(*api, timeout=30)
    body = json.dumps({"serial": serial, "public_key": KEY})
    started = time.perf_counter()
    conn.request("POST", "/v1/register", body, {"Content-Type": "application/json"})
    status = conn.getresponse().status
    took = time.perf_counter() - started
    conn.close()
    if status != 201:
        raise SystemExit(f"register {serial}: HTTP {status}")
    return took


def measure(api, name, n, threads):
    for i in range(20):  # warm up: connections, caches
        register(api, f"SN-WARM-{name}-{i}")
    lat = sorted(register(api, f"SN-SEQ-{name}-{i}") for i in range(n))
    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda i: register(api, f"SN-PAR-{name}-{i}"), range(n * 2)))
    rate = n * 2 / (time.perf_counter() - started)
    return {"p50_ms": statistics.median(lat) * 1000, "p99_ms": lat[int(len(lat) * 0.99) - 1] * 1000,
            "per_s": rate}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--profile", choices=["debug", "release"], default="debug")
    p.add_argument("-n", type=int, default=300, help="registrations one at a time (twice as many in parallel)")
    p.add_argument("--threads", type=int, default=8)
    args = p.parse_args()
    binary = os.path.join(ROOT, "target", args.profile, "assist-jumphost")
    work = tempfile.mkdtemp(prefix="assist-store-bench-")
    os.chmod(work, 0o755)  # the postgres account reaches its folder inside
    procs = []
    try:
        results = {}
        jump, api = start_jumphost(binary, work, "sqlite", "")
        procs.append(jump)
        results["sqlite"] = measure(api, "sqlite", args.n, args.threads)
        pg, url = start_postgres(work)
        procs.append(pg)
        jump, api = start_jumphost(binary, work, "postgres", f'database = "{url}"\n')
        procs.append(jump)
        results["postgresql"] = measure(api, "postgresql", args.n, args.threads)
        print(f"{'store':<12}{'p50 ms':>10}{'p99 ms':>10}{'reg/s (' + str(args.threads) + ' clients)':>22}")
        for name, r in results.items():
            print(f"{name:<12}{r['p50_ms']:>10.2f}{r['p99_ms']:>10.2f}{r['per_s']:>22.0f}")
    finally:
        for proc in reversed(procs):
            proc.terminate()
            proc.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

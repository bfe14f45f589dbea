#!/usr/bin/env python3
"""Benchmarks this project against stock OpenSSH doing the same job, on loopback, in one run.

    python3 bench/run.py                 # full run: writes bench/RESULTS.md and bench/results.png
    python3 bench/run.py --smoke         # < 3 min; exits non-zero only on gross breakage

See bench/README.md for what each figure means.
"""

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from types import SimpleNamespace

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from benchlib import figures, report  # noqa: E402
from benchlib import profile as perf_profile  # noqa: E402
from benchlib.chains import OpenSshChain, OurChain, Sshd, TARGET_EXTRA  # noqa: E402
from benchlib.procs import BenchError, keygen, log  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BINS = ("assist-jumphost", "assist-client", "support-cli", "bench-loadgen")
# The agent as shipped (Cargo.toml's dist-agent profile, packaging/build-static-agent.sh):
# the static musl build for x86_64, which the device figures run, and the ARM builds, whose
# sizes are reported beside it. The dynamic dist-agent build stands in when no static one
# is built.
SHIPPED_TARGETS = ("x86_64-unknown-linux-musl", "aarch64-unknown-linux-musl",
                   "armv7-unknown-linux-musleabihf")
SHIPPED = (os.path.join(ROOT, "target", "musl", SHIPPED_TARGETS[0], "dist-agent",
                        "assist-client"),
           os.path.join(ROOT, "target", "dist-agent", "assist-client"))
SHIPPED_ARM = {t: os.path.join(ROOT, "target", "musl", t, "dist-agent", "assist-client")
               for t in SHIPPED_TARGETS[1:]}
FIGURES = ("throughput", "device", "login", "fan_in", "idle", "storm")

# OpenSSH's jump host forks a process per tunnel (~1.6 MiB PSS each), so it is measured
# at levels this machine can hold, and the ratios are per tunnel or per device.
FULL = dict(transfer_mib=512, reps=5, marker_mib=16, login_runs=10,
            idle_ours=[1000, 10000, 100000], idle_openssh=[100], idle_hops=5, fan_in_hops=100,
            fan_in_mib=16, storm=10000, storm_openssh=1000, ramp_timeout=900, storm_timeout=300)
SMOKE = dict(transfer_mib=32, reps=1, marker_mib=8, login_runs=3, idle_ours=[100],
             idle_openssh=[20], idle_hops=1, fan_in_hops=10, fan_in_mib=8, storm=50,
             storm_openssh=50, ramp_timeout=60, storm_timeout=60)
# Open files a tunnel level leaves for everything else in the jump host and load generator.
FD_SPARE = 1000


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="small and fast; for CI")
    p.add_argument("--out", help="where RESULTS.md, results.png and results.json go "
                   "(default: bench/ for a full run, the temp dir for --smoke)")
    p.add_argument("--profile", choices=["release", "debug"], default=None,
                   help="which build of our binaries (default: release, debug with --smoke)")
    p.add_argument("--no-build", action="store_true", help="use the binaries already built")
    p.add_argument("--only-openssh", action="store_true",
                   help="measure only the OpenSSH chain (while ours is not usable)")
    p.add_argument("--device", choices=["agent", "stock"], default="agent",
                   help="our chain's device: assist-client, or stock `ssh -R` as the serial")
    p.add_argument("--engineer", choices=["cli", "ssh"], default="cli",
                   help="our chain's engineer: support-cli, or stock `ssh -J` with the derived key")
    p.add_argument("--skip", action="append", default=[], choices=FIGURES,
                   help="leave a figure out (repeatable)")
    p.add_argument("--ws", action=argparse.BooleanOptionalAction, default=None,
                   help="also measure our chain over SSH-in-WebSocket (throughput, idle "
                        "memory per tunnel); default: on in full runs, off with --smoke")
    p.add_argument("--builtin", action=argparse.BooleanOptionalAction, default=None,
                   help="also measure our chain ending at the agent's built-in SSH target "
                        "(throughput); default: on in full runs, off with --smoke")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (logs) afterwards")
    p.add_argument("--note", default="2 shared CPUs; expect noise of tens of percent on the "
                   "timings", help="what to say about the run's conditions in RESULTS.md")
    p.add_argument("--perf", action="store_true",
                   help="also profile our chain with perf (one download, one upload)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                   help="override a size, e.g. --set idle_ours=[1000] --set storm=200")
    return p.parse_args()


def raise_fd_limit():
    """Thousands of tunnels need thousands of sockets in the jump host and the load
    generator; children inherit the raised soft limit. Returns the limit now in force. The
    hard limit is raised too where the process may (CAP_SYS_RESOURCE); where it may not,
    the hard limit caps how many tunnels one jump host process can hold here."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with open("/proc/sys/fs/nr_open") as f:
        wanted = min(int(f.read()), 1_048_576)
    if hard != resource.RLIM_INFINITY and hard < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
            return wanted
        except (ValueError, OSError):
            pass
    if hard == resource.RLIM_INFINITY or hard > 1_048_576:
        hard = 1_048_576
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def build(profile, only_loadgen):
    cmd = ["cargo", "build", "--quiet"]
    if profile == "release":
        cmd.append("--release")
    cmd += ["-p", "assist-bench"] if only_loadgen else ["--workspace", "--bins"]
    cargo(cmd)
    if profile == "release" and not only_loadgen:
        # The agent as shipped: its static builds (musl linked in) for each target; the
        # device figures run the x86_64 one, the others are reported by size.
        for target in SHIPPED_TARGETS:
            cargo(["packaging/build-static-agent.sh", "dist-agent", target])


def cargo(cmd):
    log(" ".join(cmd))
    r = subprocess.run(cmd, cwd=ROOT)
    if r.returncode != 0:
        raise BenchError("build failed")


def main():
    args = parse_args()
    cfg = dict(SMOKE if args.smoke else FULL)
    for item in args.set:
        key, _, value = item.partition("=")
        if key not in cfg:
            raise BenchError(f"--set {key}: not one of {', '.join(cfg)}")
        cfg[key] = json.loads(value)
    profile = args.profile or ("debug" if args.smoke else "release")
    fd_limit = raise_fd_limit()
    if not args.no_build:
        build(profile, args.only_openssh)
    target_dir = os.path.join(ROOT, "target", profile)
    bins = {b: os.path.join(target_dir, b) for b in BINS}
    # The agent as shipped, when built: its RSS is a target of its own (issue 20). The static
    # build (packaging/build-static-agent.sh) when there is one, else the dist profile's.
    shipped = next((p for p in SHIPPED if os.path.exists(p)), None)
    if profile == "release" and shipped:
        bins["assist-client"] = shipped
    for b, path in bins.items():
        if (b == "bench-loadgen" or not args.only_openssh) and not os.path.exists(path):
            raise BenchError(f"{path} missing (build it, or drop --no-build)")
    # A tunnel is a socket in the jump host and one in the load generator. Where the hard
    # limit on open files cannot be raised (no CAP_SYS_RESOURCE), a level above it is
    # measured at the largest level that fits, and the report says so.
    most = (fd_limit - FD_SPARE) // 1000 * 1000
    clamped = None
    if max(cfg["idle_ours"]) > most:
        wanted = max(cfg["idle_ours"])
        cfg["idle_ours"] = sorted({min(n, most) for n in cfg["idle_ours"]})
        clamped = {"wanted": wanted, "measured": max(cfg["idle_ours"]), "fd_limit": fd_limit}
        log(f"idle: {wanted} tunnels wanted, but open files are limited to {fd_limit} here; "
            f"measuring up to {most}")
    if not args.only_openssh and cfg["storm"] > most:
        raise BenchError(f"file descriptor limit {fd_limit} too low for {cfg['storm']} tunnels")

    tmp = tempfile.mkdtemp(prefix="assist-bench.")
    logdir = os.path.join(tmp, "logs")
    os.makedirs(logdir)
    # A smoke run's report is printed and goes with the temp dir unless the run failed.
    out_dir = args.out or (os.path.join(tmp, "out") if args.smoke
                           else os.path.join(ROOT, "bench"))
    os.makedirs(out_dir, exist_ok=True)
    log(f"work dir {tmp}, results to {out_dir}")
    started = time.monotonic()
    closers = []
    result = {"machine": report.machine(), "sizes": cfg, "build": profile,
              "command": " ".join(["python3 bench/run.py"] + [
                  a for a in ("--smoke", "--perf", "--only-openssh") if getattr(
                      args, a[2:].replace("-", "_"))]),
              "note": args.note}
    ok = False
    try:
        keys = SimpleNamespace()
        for role in ("engineer", "device"):
            path = os.path.join(tmp, f"{role}_ed25519")
            setattr(keys, role, path)
            setattr(keys, f"{role}_pub", keygen(path, f"bench-{role}"))
        size = cfg["transfer_mib"] << 20
        random_file = os.path.join(tmp, "random.bin")
        with open(random_file, "wb") as f:
            for _ in range(cfg["transfer_mib"]):
                f.write(os.urandom(1 << 20))

        target = Sshd(os.path.join(tmp, "target"), "target-sshd", [keys.engineer_pub],
                      TARGET_EXTRA, logdir)
        closers.append(target)
        openssh = OpenSshChain(tmp, target, keys, logdir)
        closers.append(openssh)
        chains = [openssh]
        # Reference only: OpenSSH with the AES-GCM cipher pinned (what ours prefers on AES-NI).
        openssh_aes = None
        if "throughput" not in args.skip:
            openssh_aes = OpenSshChain(tmp, target, keys, logdir, "aes128-gcm@openssh.com",
                                       "OpenSSH AES-GCM")
            closers.append(openssh_aes)
        ours = None
        ours_ws = None
        ours_builtin = None
        if not args.only_openssh:
            ours = OurChain(tmp, target, keys, bins, logdir, args.device, args.engineer)
            closers.append(ours)
            chains.append(ours)
            if args.ws if args.ws is not None else not args.smoke:
                ours_ws = OurChain(tmp, target, keys, bins, logdir, args.device, args.engineer,
                                   transport="ws")
                closers.append(ours_ws)
            if args.builtin if args.builtin is not None else not args.smoke:
                ours_builtin = OurChain(tmp, target, keys, bins, logdir, "agent",
                                        args.engineer, builtin=True)
                closers.append(ours_builtin)
        log(f"chains up: {', '.join(c.name for c in chains)}")

        # Integrity first: a chain that corrupts data makes every other figure moot.
        check = os.path.join(tmp, "check.bin")
        with open(check, "wb") as f:
            f.write(os.urandom(min(size, 8 << 20)))
        side = [c for c in (ours_ws, ours_builtin) if c]
        for c in chains + side:
            figures.verify_integrity(c, check)
        log("integrity: checksums match both ways on every chain")

        if "throughput" not in args.skip:
            extra = [openssh_aes] + side
            result["throughput"] = figures.throughput(chains + extra, target, random_file, size,
                                                      cfg["reps"], cfg["marker_mib"] << 20)
            openssh_aes.close()
        if ours and "device" not in args.skip:
            result["device"] = figures.device_footprint(
                [openssh, ours], size, shipped if shipped and bins["assist-client"] == shipped else None)
            result["device"]["binaries"] = {
                t: os.path.getsize(p) for t, p in SHIPPED_ARM.items() if os.path.exists(p)}
        if args.perf and ours:
            result["perf"] = perf_profile.profile_ours(ours, random_file, size, out_dir)
            if ours_ws:
                result["perf_ws"] = perf_profile.profile_ours(ours_ws, random_file, size,
                                                              out_dir, label="ours-ws")
        if "login" not in args.skip:
            result["login"] = figures.login(chains, cfg["login_runs"])
            if ours:
                result["derivation"] = figures.derivation(bins, bins["bench-loadgen"], tmp, ours)
            log(f"login: {json.dumps(result['login'])} derivation "
                f"{json.dumps(result.get('derivation'))}")
        if "fan_in" not in args.skip:
            result["fan_in"] = figures.fan_in(chains, cfg["fan_in_hops"],
                                              cfg["fan_in_mib"] << 20, target)
        if ours and ("idle" not in args.skip or "storm" not in args.skip):
            n = max(cfg["idle_ours"] + [cfg["storm"]])
            t = time.monotonic()
            figures.register_all(ours, [f"BENCH-{i}" for i in range(n)], keys.device_pub)
            log(f"registered {n} serials in {time.monotonic() - t:.1f} s")
            if ours_ws and "idle" not in args.skip:
                figures.register_all(ours_ws, [f"BENCH-{i}" for i in range(cfg["idle_ours"][0])],
                                     keys.device_pub)
        if "idle" not in args.skip:
            result["idle"] = {"OpenSSH": figures.idle(openssh, bins["bench-loadgen"],
                                                      keys.device, cfg["idle_openssh"],
                                                      logdir, cfg["ramp_timeout"])}
            if ours:
                result["idle"]["ours"] = figures.idle(ours, bins["bench-loadgen"], keys.device,
                                                      cfg["idle_ours"], logdir,
                                                      cfg["ramp_timeout"], cfg["idle_hops"])
                if clamped:
                    result["idle"]["ours"]["clamped"] = clamped
            if ours_ws:
                # One level: the WebSocket's cost per tunnel next to raw SSH's at that level.
                result["idle"][ours_ws.name] = figures.idle(
                    ours_ws, bins["bench-loadgen"], keys.device, cfg["idle_ours"][:1], logdir,
                    cfg["ramp_timeout"])
        if "storm" not in args.skip:
            result["storm"] = {}
            if ours:
                # Side by side at OpenSSH's size (its fork per device bounds it here), and
                # alone at the target's size when that is larger.
                result["storm"]["ours"] = figures.storm(ours, bins["bench-loadgen"],
                                                        keys.device, cfg["storm_openssh"],
                                                        logdir, cfg["storm_timeout"])
                if cfg["storm"] > cfg["storm_openssh"]:
                    result["storm_large"] = {"ours": figures.storm(
                        ours, bins["bench-loadgen"], keys.device, cfg["storm"], logdir,
                        cfg["storm_timeout"])}
            result["storm"]["OpenSSH"] = figures.storm(openssh, bins["bench-loadgen"],
                                                       keys.device, cfg["storm_openssh"],
                                                       logdir, cfg["storm_timeout"])
        ok = True
    finally:
        for c in reversed(closers):
            try:
                c.close()
            except Exception:  # noqa: BLE001 - cleanup must go on
                traceback.print_exc()
        result["elapsed_s"] = round(time.monotonic() - started)
        with open(os.path.join(out_dir, "results.json"), "w") as f:
            json.dump(result, f, indent=2)
        if ok:
            md = report.write(result, out_dir, allow_install=not args.smoke)
            print(md)
        log(f"done in {result['elapsed_s']} s; logs in {logdir}")
        if not args.keep and ok:
            shutil.rmtree(tmp, onerror=lambda f, p, e: log(f"cleanup: {p}: {e[1]}"))


if __name__ == "__main__":
    try:
        main()
    except BenchError as e:
        log(f"FAILED: {e}")
        sys.exit(1)

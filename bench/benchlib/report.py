"""Turns the figures into RESULTS.md (machine, date, one table per figure with both chains and
the ratio) and a PNG of throughput and memory against OpenSSH."""

import os
import platform
import subprocess
import sys
import time

from .procs import log


def machine():
    def sh(cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return "?"
    model = "?"
    for line in sh(["lscpu"]).splitlines():
        if line.startswith("Model name:"):
            model = line.split(":", 1)[1].strip()
    flags = open("/proc/cpuinfo").read()
    mem_kib = 0
    for line in open("/proc/meminfo"):
        if line.startswith("MemTotal:"):
            mem_kib = int(line.split()[1])
    ssh_v = subprocess.run(["ssh", "-V"], capture_output=True, text=True).stderr.strip()
    return {"cpus": sh(["nproc"]), "model": model, "aes_ni": " aes " in flags,
            "memory_gib": round(mem_kib / 1024 / 1024, 1), "kernel": platform.release(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "openssh": ssh_v}


def ratio(ours, theirs, lower_is_better=False):
    if ours is None or theirs is None or not theirs or not ours:
        return "–"
    r = theirs / ours if lower_is_better else ours / theirs
    return f"{r:.2f}×"


def fmt(x, digits=0):
    return "–" if x is None else f"{x:.{digits}f}"


def markdown(r, png_name):
    m = r["machine"]
    o, u = "OpenSSH", "ours"
    lines = [
        "# Benchmark results: this project against stock OpenSSH",
        "",
        f"Run `{r['command']}` on {m['date']}.",
        "",
        f"- machine: {m['cpus']} CPUs, {m['model']} (AES-NI: {'yes' if m['aes_ni'] else 'no'}), "
        f"{m['memory_gib']} GiB, kernel {m['kernel']}",
        f"- OpenSSH: {m['openssh']} (stock settings and cipher choice; see README.md)",
        f"- ours: {r.get('build', '?')} build",
        f"- note: {r.get('note', '')}",
        "",
        "Ratios are ours ÷ OpenSSH for rates and OpenSSH ÷ ours for costs, so > 1× means we "
        "are better. MB = 10⁶ bytes.",
        "",
    ]
    if png_name:
        lines += [f"![throughput and memory against OpenSSH]({png_name})", ""]
    t = r.get("throughput")
    if t:
        lines += [f"## Throughput through the whole chain ({r['sizes']['transfer_mib']} MiB, "
                  f"median of {r['sizes']['reps']}, MB/s after the first "
                  f"{r['sizes']['marker_mib']} MiB)", "",
                  "| direction | OpenSSH | ours | ratio | OpenSSH incl. login | ours incl. login |",
                  "|---|---:|---:|---:|---:|---:|"]
        for d, label in (("up", "upload"), ("down", "download")):
            a, b = t.get(o, {}).get(d, {}), t.get(u, {}).get(d, {})
            lines.append(f"| {label} | {fmt(a.get('steady'))} | {fmt(b.get('steady'))} | "
                         f"{ratio(b.get('steady'), a.get('steady'))} | {fmt(a.get('wall'))} | "
                         f"{fmt(b.get('wall'))} |")
        lines.append("")
    lg = r.get("login")
    if lg:
        a, b = lg.get(o, {}).get("median_ms"), lg.get(u, {}).get("median_ms")
        d = r.get("derivation", {})
        lines += [f"## Login latency (command `true`, median of {len(lg[o]['runs'])}, ms)", "",
                  "| | OpenSSH `ssh -J` | ours `support-cli connect` | ratio |",
                  "|---|---:|---:|---:|",
                  f"| login + `true` | {fmt(a)} | {fmt(b)} | {ratio(b, a, True)} |",
                  f"| key derivation alone, in process | | {fmt(d.get('in_process_ms'), 1)} | |",
                  f"| `support-cli key` (process, derivation, file) | | "
                  f"{fmt(d.get('support_cli_key_ms'))} | |",
                  f"| ours minus derivation | {fmt(a)} | "
                  f"{fmt(b - d['in_process_ms'] if b and d.get('in_process_ms') else None)} | "
                  f"{ratio(b - d['in_process_ms'] if b and d.get('in_process_ms') else None, a, True)} |",
                  ""]
    idle = r.get("idle")
    if idle:
        a_levels = idle.get(o, {}).get("levels", [])
        a = a_levels[-1]["per_tunnel_kib"] if a_levels else None
        lines += ["## Idle cost: jump-host memory per idle device tunnel (PSS, KiB)", "",
                  "| tunnels | OpenSSH (all sshd processes) | ours (one process) | ratio |",
                  "|---:|---:|---:|---:|"]
        for lv in a_levels:
            lines.append(f"| OpenSSH {lv['tunnels']} | {fmt(lv['per_tunnel_kib'], 1)} "
                         f"({lv['processes']} processes) | | |")
        for lv in idle.get(u, {}).get("levels", []):
            lines.append(f"| ours {lv['tunnels']} | {fmt(a, 1)} (at {a_levels[-1]['tunnels']}) "
                         f"| {fmt(lv['per_tunnel_kib'], 1)} (RSS {fmt(lv['per_tunnel_rss_kib'], 1)}) "
                         f"| {ratio(lv['per_tunnel_kib'], a, True)} |")
        lines.append("")
    f = r.get("fan_in")
    if f:
        lines += [f"## Fan-in: {r['sizes']['fan_in_hops']} hops at once, each downloading "
                  f"{r['sizes']['fan_in_mib']} MiB through one device tunnel", "",
                  "| | OpenSSH | ours | ratio |", "|---|---:|---:|---:|"]
        for k, label in (("aggregate", "aggregate MB/s"), ("slowest", "slowest hop MB/s"),
                         ("fastest", "fastest hop MB/s"), ("fairness", "slowest ÷ fastest")):
            a, b = f.get(o, {}).get(k), f.get(u, {}).get(k)
            lines.append(f"| {label} | {fmt(a, 2 if k == 'fairness' else 0)} | "
                         f"{fmt(b, 2 if k == 'fairness' else 0)} | {ratio(b, a)} |")
        lines.append("")
    s = r.get("storm")
    if s:
        n = next(iter(s.values()))["devices"]
        lines += [f"## Reconnect storm: {n} devices, jump host killed and restarted on the same "
                  "ports", "",
                  "| | OpenSSH | ours | ratio |", "|---|---:|---:|---:|"]
        rows = (("restart_ms", "restart until listening (ms)", 0, True),
                ("first_back_s", "first device back (s)", 2, True),
                ("all_back_s", "all devices back (s)", 1, True),
                ("peak_per_s", "peak logins per second", 0, None),
                ("attempts", "connection attempts", 0, None),
                ("failed_attempts", "failed attempts", 0, None))
        for k, label, digits, lower in rows:
            a, b = s.get(o, {}).get(k), s.get(u, {}).get(k)
            lines.append(f"| {label} | {fmt(a, digits)} | {fmt(b, digits)} | "
                         f"{ratio(b, a, True) if lower else ''} |")
        lines += ["", "Devices back off exponentially with full jitter (250 ms doubling to a "
                  "30 s cap), as the agent does; the peak rate is the most logins that "
                  "completed within any one second.", ""]
    return "\n".join(lines) + "\n"


def ensure_matplotlib(allow_install):
    try:
        import matplotlib  # noqa: F401
        return True
    except ImportError:
        if not allow_install:
            return False
    log("installing matplotlib (pip) for the plot")
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "matplotlib"],
                       capture_output=True, text=True)
    if r.returncode != 0:
        r = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet",
                            "--break-system-packages", "matplotlib"],
                           capture_output=True, text=True)
    try:
        import matplotlib  # noqa: F401
        return True
    except ImportError:
        log(f"no matplotlib, no plot: {r.stderr[-300:]}")
        return False


def plot(r, path, allow_install):
    if not ensure_matplotlib(allow_install):
        return False
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    t = r.get("throughput") or {}
    labels = ["upload", "download"]
    for i, (name, color) in enumerate((("OpenSSH", "#888888"), ("ours", "#2a7ab9"))):
        vals = [t.get(name, {}).get(d, {}).get("steady", 0) for d in ("up", "down")]
        ax1.bar([x + i * 0.38 for x in range(2)], vals, 0.38, label=name, color=color)
    ax1.set_xticks([x + 0.19 for x in range(2)], labels)
    ax1.set_ylabel("MB/s")
    ax1.set_title(f"Throughput, {r['sizes']['transfer_mib']} MiB through the chain")
    ax1.legend()
    idle = r.get("idle") or {}
    names, vals, colors = [], [], []
    for lv in idle.get("OpenSSH", {}).get("levels", []):
        names.append(f"OpenSSH\n{lv['tunnels']}")
        vals.append(lv["per_tunnel_kib"])
        colors.append("#888888")
    for lv in idle.get("ours", {}).get("levels", []):
        names.append(f"ours\n{lv['tunnels']}")
        vals.append(lv["per_tunnel_kib"])
        colors.append("#2a7ab9")
    ax2.bar(range(len(vals)), vals, color=colors)
    ax2.set_xticks(range(len(vals)), names)
    ax2.set_yscale("log")
    ax2.set_ylabel("KiB per idle tunnel (PSS, log)")
    ax2.set_title("Jump-host memory per idle tunnel")
    ax2.axhline(64, color="#c0392b", linestyle="--", linewidth=1)
    ax2.text(len(vals) - 0.5, 70, "target 64 KiB", color="#c0392b", ha="right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write(r, out_dir, allow_install):
    png = os.path.join(out_dir, "results.png")
    has_png = plot(r, png, allow_install)
    md = markdown(r, "results.png" if has_png else None)
    with open(os.path.join(out_dir, "RESULTS.md"), "w") as f:
        f.write(md)
    return md

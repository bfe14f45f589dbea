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
                  "| direction | OpenSSH | ours | ratio | OpenSSH incl. login | ours incl. login "
                  "| OpenSSH with AES-GCM pinned (reference) | ratio to it |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for d, label in (("up", "upload"), ("down", "download")):
            a, b = t.get(o, {}).get(d, {}), t.get(u, {}).get(d, {})
            c = t.get("OpenSSH AES-GCM", {}).get(d, {})
            lines.append(f"| {label} | {fmt(a.get('steady'))} | {fmt(b.get('steady'))} | "
                         f"{ratio(b.get('steady'), a.get('steady'))} | {fmt(a.get('wall'))} | "
                         f"{fmt(b.get('wall'))} | {fmt(c.get('steady'))} | "
                         f"{ratio(b.get('steady'), c.get('steady'))} |")
        lines += ["", "Each repetition (MB/s): " + "; ".join(
            f"{n} {d} {v[d]['runs']}" for n, v in t.items() for d in ("up", "down")), ""]
        roles = ("engineer", "jump host", "device", "target")
        lines += ["Where the CPU goes: CPU seconds (user + system) per GB moved, by role, median "
                  "over the repetitions (login included; the target is the customer's sshd and "
                  "its `head`/`wc`; the engineer includes `ssh -J`'s ProxyJump child):", "",
                  "| chain | direction | " + " | ".join(roles) + " | total |",
                  "|---|---|" + "---:|" * (len(roles) + 1)]
        for n, v in t.items():
            for d in ("up", "down"):
                cpu = v[d].get("cpu_s_per_gb")
                if cpu:
                    lines.append(f"| {n} | {d} | " + " | ".join(fmt(cpu[x], 1) for x in roles)
                                 + f" | {fmt(sum(cpu.values()), 1)} |")
        lines.append("")
        if any(v[d].get("faults_per_mb") for v in t.values() for d in ("up", "down")):
            lines += ["Pages touched afresh: minor page faults per MB moved, by role, median over "
                      "the repetitions (a buffer allocated per packet, or freed memory given "
                      "back and faulted in again, shows here):", "",
                      "| chain | direction | " + " | ".join(roles) + " |",
                      "|---|---|" + "---:|" * len(roles)]
            for n, v in t.items():
                for d in ("up", "down"):
                    faults = v[d].get("faults_per_mb")
                    if faults:
                        lines.append(f"| {n} | {d} | "
                                     + " | ".join(fmt(faults[x], 1) for x in roles) + " |")
            lines.append("")
        if r.get("perf"):
            lines += ["Profiles of our processes during one transfer (`--perf`): " + ", ".join(
                f"[{d}]({name})" for d, name in r["perf"].items()), ""]
    lg = r.get("login")
    if lg:
        a, b = lg.get(o, {}).get("median_ms"), lg.get(u, {}).get("median_ms")
        d = r.get("derivation", {})
        lines += [f"## Login latency (command `true`, median of {len(lg[o]['runs'])}, ms)", "",
                  "| | OpenSSH `ssh -J` | ours `support-cli connect` | ratio |",
                  "|---|---:|---:|---:|",
                  f"| login + `true` | {fmt(a)} | {fmt(b)} | {ratio(b, a, True)} |",
                  f"| both keys' derivation alone, in process | | {fmt(d.get('in_process_ms'), 1)} | |",
                  f"| `support-cli key` (process, jump login, device's proof, derivation, files) | | "
                  f"{fmt(d.get('support_cli_key_ms'))} | |",
                  f"| ours minus derivation | {fmt(a)} | "
                  f"{fmt(b - d['in_process_ms'] if b and d.get('in_process_ms') else None)} | "
                  f"{ratio(b - d['in_process_ms'] if b and d.get('in_process_ms') else None, a, True)} |",
                  ""]
    idle = r.get("idle")
    if idle:
        a_levels = idle.get(o, {}).get("levels", [])
        a = a_levels[-1]["per_tunnel_kib"] if a_levels else None
        lines += ["## Idle cost: jump-host memory per idle device tunnel", "",
                  "| jump host | tunnels held | processes | PSS before (MiB) | PSS with the "
                  "tunnels (MiB) | per tunnel, PSS (KiB) | per tunnel, RSS (KiB) | ratio to "
                  "OpenSSH |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for name in (o, u):
            side = idle.get(name, {})
            for lv in side.get("levels", []):
                lines.append(
                    f"| {name} | {lv['tunnels']} | {lv['processes']} | "
                    f"{fmt(side['base_pss_kib'] / 1024, 1)} | {fmt(lv['pss_kib'] / 1024, 1)} | "
                    f"{fmt(lv['per_tunnel_kib'], 1)} | {fmt(lv['per_tunnel_rss_kib'], 1)} | "
                    f"{ratio(lv['per_tunnel_kib'], a, True)} |")
        lines += ["", "OpenSSH forks a session process per connection, so its cost per tunnel "
                  "does not depend on how many are held; PSS splits shared pages between the "
                  "processes that map them."]
        ours_idle = idle.get(u, {})
        if ours_idle.get("clamped"):
            c = ours_idle["clamped"]
            lines += ["", f"{c['wanted']:,} tunnels were asked for; this machine's hard limit "
                      f"on open files ({c['fd_limit']:,}, which only a process with "
                      "CAP_SYS_RESOURCE may raise) caps one process's sockets, so the largest "
                      f"level measured is {c['measured']:,}."]
        if ours_idle.get("hop_ms_loaded"):
            lines += ["", f"An engineer's hop (login and `true`, median of "
                      f"{r['sizes'].get('idle_hops', 1)}) took "
                      f"{ours_idle['hop_ms_loaded']:.0f} ms while our jump host held the "
                      f"last level, {ours_idle['hop_ms_empty']:.0f} ms with no tunnel held."]
        lines.append("")
    f = r.get("fan_in")
    if f:
        lines += [f"## Fan-in: {r['sizes']['fan_in_hops']} hops at once, each downloading "
                  f"{r['sizes']['fan_in_mib']} MiB through one device tunnel", "",
                  "| | OpenSSH | ours | ratio |", "|---|---:|---:|---:|"]
        for k, label, digits in (("aggregate", "aggregate MB/s", 0),
                                 ("slowest", "slowest hop MB/s", 2),
                                 ("median_hop", "median hop MB/s", 2),
                                 ("fastest", "fastest hop MB/s", 2),
                                 ("fairness", "slowest ÷ fastest", 2),
                                 ("login_spread_s", "logins spread over (s)", 1),
                                 ("first_byte_spread_s", "first bytes spread over (s)", 2)):
            a, b = f.get(o, {}).get(k), f.get(u, {}).get(k)
            r_ = ratio(b, a) if not k.endswith("spread_s") else ""
            lines.append(f"| {label} | {fmt(a, digits)} | {fmt(b, digits)} | {r_} |")
        lines += ["", "Every hop logs in and says so before any transfer starts; then all "
                  "start at once, and a hop's rate runs from its first byte to its last. The "
                  "logins' spread is how far apart they finished.", ""]
        cpu = {name: f.get(name, {}).get("cpu_s_per_gb") for name in (o, u)}
        if all(cpu.values()):
            roles = [k for k in cpu[u] if k in cpu[o]]
            lines += ["CPU seconds per GB during the transfers (from the go to the last byte), "
                      "by role:", "", "| chain | " + " | ".join(roles) + " | total |",
                      "|---|" + "---:|" * (len(roles) + 1)]
            for name in (o, u):
                lines.append(f"| {name} | " + " | ".join(fmt(cpu[name][k], 1) for k in roles)
                             + f" | {fmt(sum(cpu[name][k] for k in roles), 1)} |")
            lines.append("")
        lines.append("")
    s = r.get("storm")
    if s:
        counts = {name: v["devices"] for name, v in s.items()}
        # Ratios only between storms of the same size.
        same = len(set(counts.values())) == 1
        if same:
            n = f"{next(iter(counts.values())):,} devices"
        else:
            n = ", ".join(f"{v:,} devices for {k}" for k, v in counts.items())
        lines += [f"## Reconnect storm: {n}, jump host killed and restarted on the same "
                  "ports", "",
                  "| | OpenSSH | ours | ratio |", "|---|---:|---:|---:|"]
        rows = (("restart_ms", "restart until listening (ms)", 0, True),
                ("first_back_s", "first device back (s)", 2, True),
                ("all_back_s", "all devices back (s)", 1, True),
                ("peak_per_s", "peak logins per second", 0, None),
                ("peak_per_100ms", "peak logins in any 100 ms", 0, None),
                ("attempts", "connection attempts", 0, None),
                ("failed_attempts", "failed attempts", 0, None))
        for k, label, digits, lower in rows:
            a, b = s.get(o, {}).get(k), s.get(u, {}).get(k)
            lines.append(f"| {label} | {fmt(a, digits)} | {fmt(b, digits)} | "
                         f"{ratio(b, a, True) if lower and same else ''} |")
        big = (r.get("storm_large") or {}).get(u)
        if big:
            lines += ["", f"Ours alone with {big['devices']:,} devices: all back in "
                      f"{big['all_back_s']:.1f} s (first after {big['first_back_s']:.2f} s), "
                      f"peak {big['peak_per_s']:,} logins per second, {big['attempts']:,} "
                      f"connection attempts of which {big['failed_attempts']:,} failed and "
                      "were retried."]
        lines += ["", "Devices reconnect with the agent's own backoff: before attempt n, "
                  "uniform in [0, min(30 s, 250 ms·2ⁿ)] (full jitter, the same function as the "
                  "agent's), so even the first wave after the restart is spread. "
                  "The peak rates count logins completed (forward granted) within any one "
                  "window; failed attempts include connects refused while the host was down "
                  "and logins dropped over the unauthenticated-connection ceiling.", ""]
    dev = r.get("device") or {}
    if "ours" in dev:
        lines += ["## The device side: agent against stock `ssh -R`", "",
                  "| device | RSS idle, window open (KiB) | of which anonymous (KiB) | "
                  "RSS relaying, most seen (KiB) |",
                  "|---|---:|---:|---:|"]
        for name in ("OpenSSH", "ours"):
            if name in dev:
                lines.append(f"| {name} | {dev[name]['idle_rss_kib']:,} | "
                             f"{dev[name].get('idle_anon_kib', 0):,} | "
                             f"{dev[name]['relaying_rss_kib']:,} |")
        size = dev.get("binary_bytes")
        lines += ["", "The agent's RSS is sampled every 20 ms during one download of the transfer "
                  "size; stock `ssh -R` is the OpenSSH chain's device. Shipped agent binary "
                  "(Cargo.toml's dist-agent profile: fat LTO, one codegen unit, stripped, "
                  "panic=abort; static, musl linked in, when built with "
                  "packaging/build-static-agent.sh, as the bench does): "
                  + (f"`{dev.get('binary')}`, {size / (1 << 20):.2f} MiB." if size
                     else "not built."), ""]
        if dev.get("binaries"):
            lines += ["| shipped agent, static | bytes | MiB |", "|---|---:|---:|"]
            if size:
                lines.append(f"| x86_64 (the one measured above) | {size:,} | "
                             f"{size / (1 << 20):.2f} |")
            for target, n in dev["binaries"].items():
                lines.append(f"| {target} | {n:,} | {n / (1 << 20):.2f} |")
            lines.append("")
    lines += targets(r)
    return "\n".join(lines) + "\n"


def targets(r):
    """The issue's targets, checked against this run's ratios."""
    rows = []
    t = r.get("throughput") or {}
    for d, label in (("up", "upload"), ("down", "download")):
        a = t.get("OpenSSH", {}).get(d, {}).get("steady")
        b = t.get("ours", {}).get(d, {}).get("steady")
        if a and b:
            rows.append((f"throughput {label} ≥ 1.0× OpenSSH (aim 1.5×)", f"{b / a:.2f}×",
                         b / a >= 1.0))
    pinned = "OpenSSH AES-GCM"
    for d, label in (("up", "upload"), ("down", "download")):
        a = t.get(pinned, {}).get(d, {}).get("cpu_s_per_gb")
        b = t.get("ours", {}).get(d, {}).get("cpu_s_per_gb")
        if a and b:
            # The customer's sshd is not ours, so neither chain counts its target.
            ca = sum(v for k, v in a.items() if k != "target")
            cb = sum(v for k, v in b.items() if k != "target")
            rows.append((f"CPU per GB {label} ≤ ⅔ of OpenSSH with AES-GCM",
                         f"{cb:.1f} vs {ca:.1f} s ({cb / ca:.2f})", cb <= ca * 2 / 3))
    ours_idle = (r.get("idle") or {}).get("ours", {})
    for lv in ours_idle.get("levels", []):
        rows.append((f"idle tunnel ≤ 40 KiB at {lv['tunnels']}",
                     f"{lv['per_tunnel_kib']:.1f} KiB", lv["per_tunnel_kib"] <= 40))
    if ours_idle.get("levels"):
        top = ours_idle["levels"][-1]
        clamped = ours_idle.get("clamped")
        if clamped:
            gib = (ours_idle["base_pss_kib"] + top["per_tunnel_kib"] * 100_000) / (1 << 20)
            rows.append(("100,000 idle tunnels in ≤ 4 GiB",
                         f"{gib:.2f} GiB projected from {top['tunnels']:,} (open files are "
                         f"limited to {clamped['fd_limit']:,} here)",
                         "projected" if gib <= 4 else False))
        elif top["tunnels"] >= 100_000:
            gib = top["pss_kib"] / (1 << 20)
            rows.append(("100,000 idle tunnels in ≤ 4 GiB", f"{gib:.2f} GiB", gib <= 4))
        if ours_idle.get("hop_ms_loaded"):
            a, b = ours_idle["hop_ms_empty"], ours_idle["hop_ms_loaded"]
            rows.append((f"a hop with {top['tunnels']:,} tunnels held ≤ 1.5× one with none",
                         f"{b:.0f} vs {a:.0f} ms", b <= 1.5 * a))
    f = r.get("fan_in") or {}
    if "ours" in f and "OpenSSH" in f:
        a, b = f["OpenSSH"], f["ours"]
        rows.append(("fan-in slowest ÷ fastest ≥ 0.8", f"{b['fairness']:.2f}",
                     b["fairness"] >= 0.8))
        rows.append(("fan-in aggregate ≥ 3× OpenSSH",
                     f"{b['aggregate'] / a['aggregate']:.1f}×",
                     b["aggregate"] >= 3 * a["aggregate"]))
        if "login_spread_s" in a and "login_spread_s" in b:
            rows.append(("fan-in logins spread no wider than OpenSSH's",
                         f"{b['login_spread_s']:.1f} vs {a['login_spread_s']:.1f} s",
                         b["login_spread_s"] <= a["login_spread_s"]))
    st = (r.get("storm_large") or r.get("storm") or {}).get("ours")
    if st:
        rows.append((f"storm: all {st['devices']} devices back within 60 s",
                     f"{st['all_back_s']:.1f} s ({st['failed_attempts']} attempts refused "
                     f"and retried)", st["all_back_s"] <= 60))
    lg, d = r.get("login") or {}, r.get("derivation") or {}
    if "ours" in lg and d:
        a, b = lg["OpenSSH"]["median_ms"], lg["ours"]["median_ms"]
        rows.append(("login ≤ OpenSSH + derivation", f"{b:.0f} ms vs {a:.0f} + "
                     f"{d['in_process_ms']:.0f} ms", b <= a + d["in_process_ms"]))
        rows.append(("derivation ≤ 250 ms", f"{d['in_process_ms']:.0f} ms",
                     d["in_process_ms"] <= 250))
    ws = "ours (WebSocket)"
    for d, label in (("up", "upload"), ("down", "download")):
        a = t.get("ours", {}).get(d, {}).get("steady")
        b = t.get(ws, {}).get(d, {}).get("steady")
        if a and b:
            rows.append((f"WebSocket {label} costs < 15% of raw SSH's throughput",
                         f"{(1 - b / a) * 100:.1f}% ({b:.0f} vs {a:.0f} MB/s)", b / a > 0.85))
    idle = r.get("idle") or {}
    raw_levels = {lv["tunnels"]: lv for lv in idle.get("ours", {}).get("levels", [])}
    for lv in idle.get(ws, {}).get("levels", []):
        raw = raw_levels.get(lv["tunnels"])
        if raw:
            extra = lv["per_tunnel_kib"] - raw["per_tunnel_kib"]
            rows.append((f"WebSocket idle tunnel < 8 KiB over raw SSH at {lv['tunnels']}",
                         f"{extra:+.1f} KiB ({lv['per_tunnel_kib']:.1f} vs "
                         f"{raw['per_tunnel_kib']:.1f})", extra < 8))
    dev = r.get("device") or {}
    if dev.get("binary_bytes"):
        mib = dev["binary_bytes"] / (1 << 20)
        rows.append(("shipped agent binary ≤ 4 MiB (x86_64)", f"{mib:.2f} MiB", mib <= 4))
    for target, n in (dev.get("binaries") or {}).items():
        mib = n / (1 << 20)
        rows.append((f"shipped agent binary ≤ 4 MiB ({target.split('-')[0]})", f"{mib:.2f} MiB",
                     mib <= 4))
    # The RSS targets are the shipped agent's; a debug or release build says nothing of them.
    if "ours" in dev and dev.get("binary_bytes"):
        idle, busy = dev["ours"]["idle_rss_kib"] / 1024, dev["ours"]["relaying_rss_kib"] / 1024
        rows.append(("agent RSS ≤ 8 MiB idle with a window open", f"{idle:.1f} MiB", idle <= 8))
        rows.append(("agent RSS ≤ 16 MiB relaying", f"{busy:.1f} MiB", busy <= 16))
    if not rows:
        return []
    out = ["## Targets (DESIGN.md, issues 6, 20 and 21)", "", "| target | this run | met |", "|---|---:|:---:|"]
    out += [f"| {name} | {value} | {met if isinstance(met, str) else 'yes' if met else 'NO'} |"
            for name, value, met in rows]
    return out + [""]


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
    series = (("OpenSSH", "#888888"), ("OpenSSH AES-GCM", "#bbbbbb"), ("ours", "#2a7ab9"),
              ("ours (WebSocket)", "#7fb3de"), ("ours (built-in target)", "#e08a2c"))
    series = [(n, c) for n, c in series if n in t]
    width = 0.8 / max(len(series), 1)
    top = 1.0
    for i, (name, color) in enumerate(series):
        vals = [t.get(name, {}).get(d, {}).get("steady", 0) for d in ("up", "down")]
        xs = [x + i * width for x in range(2)]
        ax1.bar(xs, vals, width, label=name, color=color)
        for x, v in zip(xs, vals):
            ax1.text(x, v, f"{v:.0f}", ha="center", va="bottom", fontsize=8)
        top = max([top] + vals)
    ax1.set_ylim(0, top * 1.3)
    ax1.set_xticks([x + width * (len(series) - 1) / 2 for x in range(2)], labels)
    ax1.set_ylabel("MB/s")
    ax1.set_title(f"Throughput, {r['sizes']['transfer_mib']} MiB through the chain")
    if series:
        ax1.legend(loc="upper left", fontsize=8, ncol=min(len(series), 3))
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
    for lv in idle.get("ours (WebSocket)", {}).get("levels", []):
        names.append(f"ours ws\n{lv['tunnels']}")
        vals.append(lv["per_tunnel_kib"])
        colors.append("#7fb3de")
    ax2.bar(range(len(vals)), vals, color=colors)
    for x, v in enumerate(vals):
        ax2.text(x, v, f"{v:.0f} KiB", ha="center", va="bottom", fontsize=8)
    ax2.set_xticks(range(len(vals)), names)
    ax2.set_yscale("log")
    ax2.set_ylabel("KiB per idle tunnel (PSS, log)")
    ax2.set_title("Jump-host memory per idle tunnel")
    # Issue 21's target (issue 6's was 64 KiB).
    ax2.axhline(40, color="#c0392b", linestyle="--", linewidth=1)
    ax2.text(0.98, 0.6, "dashed: target 40 KiB", color="#c0392b", ha="right", fontsize=8,
             transform=ax2.transAxes)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write(r, out_dir, allow_install):
    png = os.path.join(out_dir, "results.png")
    try:
        has_png = plot(r, png, allow_install)
    except Exception as e:  # noqa: BLE001 - a plot never decides whether the run passed
        log(f"no plot: {e!r}")
        has_png = False
    md = markdown(r, "results.png" if has_png else None)
    with open(os.path.join(out_dir, "RESULTS.md"), "w") as f:
        f.write(md)
    return md

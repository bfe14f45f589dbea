"""Optional CPU profile of our chain (`--perf`): `perf record -a -g` around one download and
one upload, then the hottest symbols of each of our processes, written next to RESULTS.md."""

import os
import shutil
import signal
import subprocess

from . import figures
from .procs import log


def _report(data, pid, limit=25):
    r = subprocess.run(["perf", "report", "-i", data, "--pid", str(pid), "--no-children",
                        "--sort", "dso,sym", "-g", "none", "--stdio"],
                       capture_output=True, text=True, timeout=300)
    rows = [l for l in r.stdout.splitlines() if l.strip() and not l.startswith("#")]
    return rows[:limit]


def profile_ours(chain, path, size, out_dir, label="ours"):
    """Returns {direction: file name} of the symbol tables written to out_dir; `label` names
    the files (perf-LABEL-up.txt), so the raw and the WebSocket chain can both be profiled."""
    if not shutil.which("perf"):
        log("perf not installed; no profile")
        return {}
    written = {}
    for direction in ("down", "up"):
        data = os.path.join(out_dir, f"perf-{label}-{direction}.data")
        rec = subprocess.Popen(["perf", "record", "-a", "-g", "-F", "499", "-o", data],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        pids = {}
        try:
            if direction == "down":
                figures.download(chain, size, 0, on_start=lambda p: pids.setdefault("e", p))
            else:
                figures.upload(chain, path, size, 0, on_start=lambda p: pids.setdefault("e", p))
        finally:
            rec.send_signal(signal.SIGINT)
            rec.wait(timeout=120)
        roles = {"support-cli (engineer)": pids.get("e"),
                 "assist-jumphost": chain.jump.pid, "assist-client (device)": chain.device.pid}
        name = f"perf-{label}-{direction}.txt"
        with open(os.path.join(out_dir, name), "w") as f:
            f.write(f"# perf record -a -g -F 499 during one {size >> 20} MiB "
                    f"{'download' if direction == 'down' else 'upload'} through {chain.name}\n"
                    "# hottest symbols of each of our processes (self time, % of all samples)\n")
            for role, pid in roles.items():
                if pid is None:
                    continue
                f.write(f"\n## {role} (pid {pid})\n")
                f.write("\n".join(_report(data, pid)) + "\n")
        os.remove(data)
        written[direction] = name
        log(f"perf profile of {chain.name} ({direction}) in {name}")
    return written

"""The two chains under test, on loopback in one temp dir: the customer's stock sshd (shared),
OpenSSH's (jump sshd + `ssh -R` device + `ssh -J` engineer) and ours (assist-jumphost +
assist-client + support-cli), each exposing the same small interface to the figures."""

import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request

from .procs import (BenchError, Proc, free_port, keygen, run, tree_cpu_s, tree_memory_kib,
                    tree_minflt, wait_tcp, wait_until)

SSHD = "/usr/sbin/sshd"
AGENT_SERIAL = "BENCH-AGENT"
ENGINEER = "bench"

# Stock settings except what the job needs; both jump hosts get the same unauthenticated-
# connection ceiling (ours: assist_proto::limits::MAX_STARTUPS).
SSHD_COMMON = """\
HostKey {host_key}
AuthorizedKeysFile {authorized_keys}
ListenAddress 127.0.0.1:{port}
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PidFile none
LogLevel ERROR
PrintMotd no
PrintLastLog no
MaxStartups 256
MaxSessions 100
"""
JUMP_EXTRA = "AllowTcpForwarding yes\nGatewayPorts no\n"
TARGET_EXTRA = "AllowTcpForwarding yes\n"


def ssh_config(path, identities, ciphers=None):
    """An ssh_config used with -F, so the ProxyJump child ssh gets the same options."""
    with open(path, "w") as f:
        f.write("Host *\n  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n"
                "  BatchMode yes\n  LogLevel ERROR\n  IdentitiesOnly yes\n"
                "  ConnectTimeout 20\n  ServerAliveInterval 15\n")
        if ciphers:
            f.write(f"  Ciphers {ciphers}\n")
        for key in identities:
            f.write(f"  IdentityFile {key}\n")
    return path


class Sshd:
    """A stock `sshd -D -e` on its own free port, restartable on the same port."""

    def __init__(self, dir, label, authorized_lines, extra, logdir):
        os.makedirs(dir, exist_ok=True)
        os.makedirs("/run/sshd", exist_ok=True)
        self.dir, self.label, self.logdir = dir, label, logdir
        self.host_key = os.path.join(dir, "host_ed25519")
        keygen(self.host_key, label)
        self.authorized_keys = os.path.join(dir, "authorized_keys")
        with open(self.authorized_keys, "w") as f:
            f.write("".join(line + "\n" for line in authorized_lines))
        os.chmod(self.authorized_keys, 0o600)
        self.config = os.path.join(dir, "sshd_config")
        self.proc = None
        # The free port is only free when asked; if someone takes it before sshd binds, sshd
        # exits and another port is tried.
        for attempt in range(3):
            self.port = free_port()
            with open(self.config, "w") as f:
                f.write(SSHD_COMMON.format(host_key=self.host_key, port=self.port,
                                           authorized_keys=self.authorized_keys) + extra)
            run([SSHD, "-t", "-f", self.config])
            try:
                self.start()
                return
            except BenchError:
                if attempt == 2 or self.proc.running():
                    raise
                self.proc.close()

    def start(self):
        self.proc = Proc([SSHD, "-D", "-e", "-f", self.config], self.label, self.logdir)
        wait_tcp(self.port, 30, self.label, alive=self.proc.running)

    def restart(self):
        """Kills the listener and every session process (a host going down), starts again."""
        self.proc.close()
        deadline = time.monotonic() + 30
        while True:
            try:
                self.start()
                return
            except BenchError:
                self.proc.close()
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.05)

    def memory(self):
        """(RSS KiB, PSS KiB, processes) of the listener and all its session processes."""
        return tree_memory_kib(self.proc.pid)

    def close(self):
        if self.proc:
            self.proc.close()


class OpenSshChain:
    """Stock OpenSSH; `ciphers` pins the clients' cipher (a tuned variant, for reference)."""

    def __init__(self, tmp, target, keys, logdir, ciphers=None, name="OpenSSH"):
        self.name = name
        tag = "openssh" if not ciphers else "openssh-" + ciphers.split("@")[0]
        self.dir = os.path.join(tmp, tag)
        self.jump = Sshd(os.path.join(self.dir, "jump"), f"{tag}-jump",
                         [keys.engineer_pub, keys.device_pub], JUMP_EXTRA, logdir)
        self.eng_cfg = ssh_config(os.path.join(self.dir, "engineer.ssh_config"), [keys.engineer],
                                  ciphers)
        self.dev_cfg = ssh_config(os.path.join(self.dir, "device.ssh_config"), [keys.device],
                                  ciphers)
        for attempt in range(3):
            # As for sshd: a port taken meanwhile makes ssh exit (ExitOnForwardFailure).
            self.fwd_port = free_port()
            self.device = Proc(
                ["ssh", "-F", self.dev_cfg, "-N", "-o", "ExitOnForwardFailure=yes",
                 "-R", f"{self.fwd_port}:127.0.0.1:{target.port}",
                 "-p", str(self.jump.port), "root@127.0.0.1"],
                f"{tag}-device", logdir)
            try:
                wait_tcp(self.fwd_port, 30, "the OpenSSH device's reverse forward",
                         alive=self.device.running)
                break
            except BenchError:
                if attempt == 2 or self.device.running():
                    raise
                self.device.close()
        self.jump_addr = ("127.0.0.1", self.jump.port)

    def cmd(self, remote):
        return ["ssh", "-F", self.eng_cfg, "-J", f"root@127.0.0.1:{self.jump.port}",
                "-p", str(self.fwd_port), "root@127.0.0.1", *remote]

    def cpu_roles(self):
        """CPU seconds so far of the long-lived parts (the engineer's is measured per run)."""
        return {"jump host": tree_cpu_s(self.jump.proc.pid),
                "device": tree_cpu_s(self.device.pid)}

    def fault_roles(self):
        """Minor page faults so far of the long-lived parts, as `cpu_roles`."""
        return {"jump host": tree_minflt(self.jump.proc.pid),
                "device": tree_minflt(self.device.pid)}

    def loadgen_args(self):
        """How load-generator devices log in here: one user, a port allocated per tunnel."""
        return ["--user", "root", "--forward-port", "0"]

    def restart(self):
        self.jump.restart()

    def memory(self):
        return self.jump.memory()

    def close(self):
        self.device.close()
        self.jump.close()


def http_post_json(url, body, timeout=30):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def port_free(port):
    with socket.socket() as s:
        # As the servers do: TIME_WAIT left by a killed server must not count as taken.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


class OurChain:
    name = "ours"

    def __init__(self, tmp, target, keys, bins, logdir, device_mode="agent", engineer_mode="cli",
                 transport="ssh", builtin=False):
        # transport "ws": the agent, the engineer and the load generator reach the jump host
        # with SSH inside a WebSocket on its API port (issue 13's cost figure).
        # builtin: the agent's own SSH server (`ssh = "builtin"`) is the end of the session
        # instead of the target sshd (issue 19's figure).
        self.transport = transport
        self.builtin = builtin
        self.serial = AGENT_SERIAL if transport == "ssh" else f"{AGENT_SERIAL}-WS"
        suffix = "" if transport == "ssh" else "-ws"
        if transport == "ws":
            self.name = "ours (WebSocket)"
            self.max_login_concurrency = 24
        if builtin:
            self.serial += "-BI"
            suffix += "-builtin"
            self.name = "ours (built-in target)"
        self.dir = os.path.join(tmp, "ours" + suffix)
        self.bins, self.logdir, self.keys = bins, logdir, keys
        self.engineer_mode = engineer_mode
        jdir = os.path.join(self.dir, "jumphost")
        self.policies = os.path.join(jdir, "policies")
        os.makedirs(self.policies, exist_ok=True)
        with open(os.path.join(self.policies, "bench.toml"), "w") as f:
            f.write('[allowlist]\nsupport_cidrs = ["127.0.0.0/8"]\n\n'
                    f'[[support]]\nname = "{ENGINEER}"\npublic_key = "{keys.engineer_pub}"\n\n'
                    '[serials]\nallow = ["BENCH-*"]\n\n'
                    '[keys]\nclient_key_ttl = "1d"\nmax_assistance = "8h"\n\n'
                    # One process registers every simulated device from one address, which
                    # the per-address limit on /v1/register exists to stop in production.
                    '[penalties]\nregister_burst = 100000\nregister_per_minute = 1000000\n')
        self.jconfig = os.path.join(jdir, "jumphost.toml")
        self.jdata = os.path.join(jdir, "data")
        self._write_jconfig("127.0.0.1:0", "127.0.0.1:0")
        self.jump = None
        self._start_jump()
        # Later starts reuse the ports the first one got, as a restarted host would.
        self._write_jconfig(f"127.0.0.1:{self.ssh_port}", f"127.0.0.1:{self.api_port}")
        self.jump_addr = ("127.0.0.1", self.ssh_port if transport == "ssh" else self.api_port)
        self.known_hosts = os.path.join(self.dir, "engineer_known_hosts")
        self.device = None
        if device_mode == "agent":
            self._start_agent(target)
        else:
            self._start_stock_device(target)
        wait_until(60, "our chain to carry a command", self.works)

    def _write_jconfig(self, ssh, api):
        with open(self.jconfig, "w") as f:
            f.write(f'ssh_listen = "{ssh}"\napi_listen = "{api}"\n'
                    f'data_dir = "{self.jdata}"\npolicies_dir = "{self.policies}"\n'
                    # Every bench device comes from 127.0.0.1; stock sshd has no per-source
                    # cap here either, only MaxStartups 256. Ours is turned off the same way
                    # (it counts the startup queue too); max_startups keeps its default.
                    'max_startups_per_source = 1000000\n')

    def _start_jump(self):
        env = dict(os.environ, RUST_LOG="warn")
        self.jump = Proc([self.bins["assist-jumphost"], "serve", "--config", self.jconfig],
                         "assist-jumphost", self.logdir, env=env)
        self.ssh_port = int(self.jump.wait_line("ssh listening on").rsplit(":", 1)[1])
        api = self.jump.wait_line("api listening on").rstrip("/")
        self.api_url = api
        self.api_port = int(api.rsplit(":", 1)[1])

    def _start_agent(self, target):
        cdir = os.path.join(self.dir, "agent")
        os.makedirs(cdir, exist_ok=True)
        cfg = os.path.join(cdir, "client.toml")
        ssh = "builtin" if self.builtin else f"127.0.0.1:{target.port}"
        with open(cfg, "w") as f:
            f.write(f'serial = "{self.serial}"\njumphost = "{self.jumphost()}"\n'
                    f'api_url = "{self.api_url}"\ndata_dir = "{cdir}/data"\n'
                    f'web_listen = "127.0.0.1:0"\ntarget_user = "root"\n'
                    f'authorized_keys = "{target.authorized_keys}"\n\n'
                    f'[services]\nssh = "{ssh}"\n')
        env = dict(os.environ, RUST_LOG="warn")
        self.device = Proc([self.bins["assist-client"], "run", "--config", cfg],
                           "assist-client", self.logdir, env=env)
        self.device.wait_line("web listening on")
        out = run([self.bins["assist-client"], "enable", "--config", cfg], timeout=60)
        codes = [l.split(":", 1)[1].strip() for l in out.splitlines() if l.startswith("code:")]
        if not codes:
            raise BenchError(f"assist-client enable printed no code: {out!r}")
        self.code = codes[0]
        # Stock `ssh -J` as the engineer needs the derived key in a file, as support
        # engineers export it.
        self.derived = os.path.join(self.dir, "derived_key")
        if self.engineer_mode == "ssh":
            run([self.bins["support-cli"], "--jumphost", self.jumphost(), "--engineer",
                 ENGINEER, "--identity", self.keys.engineer, "--known-hosts", self.known_hosts,
                 "key", self.serial, "--code", self.code, "--out", self.derived], timeout=60)

    def _start_stock_device(self, target):
        """Stand-in device: stock `ssh -R 22:…` as the serial, with the derived key installed
        by hand (the agent's job), for when the agent is not usable."""
        status, body = self.register(self.serial, self.keys.device_pub)
        if status not in (200, 201):
            raise BenchError(f"register {self.serial}: {status} {body}")
        self.code = "7K3QM-2XPD9"
        derived = os.path.join(self.dir, "derived_key")
        # `support-cli key` needs a device that proves the code; this one cannot.
        run([self.bins["bench-loadgen"], "derive", "--serial", self.serial, "--code", self.code,
             "--rounds", "1", "--out", derived])
        pub = run(["ssh-keygen", "-y", "-f", derived]).strip()
        with open(target.authorized_keys, "a") as f:
            f.write(f'from="127.0.0.1,::1" {pub} bench-derived\n')
        dev_cfg = ssh_config(os.path.join(self.dir, "device.ssh_config"), [self.keys.device])
        self.device = Proc(["ssh", "-F", dev_cfg, "-N", "-o", "ExitOnForwardFailure=yes",
                            "-R", f"22:127.0.0.1:{target.port}", "-p", str(self.ssh_port),
                            f"{self.serial}@127.0.0.1"], "stock-device", self.logdir)
        self.derived = derived

    def works(self):
        r = subprocess.run(self.cmd(["true"]), stdin=subprocess.DEVNULL,
                           capture_output=True, timeout=60)
        return r.returncode == 0

    def cmd(self, remote):
        if self.engineer_mode == "cli":
            return [self.bins["support-cli"], "--jumphost", self.jumphost(),
                    "--engineer", ENGINEER, "--identity", self.keys.engineer,
                    "--known-hosts", self.known_hosts,
                    "connect", self.serial, "--code", self.code, "--", *remote]
        cfg = os.path.join(self.dir, "engineer.ssh_config")
        if not os.path.exists(cfg):
            ssh_config(cfg, [self.keys.engineer, self.derived])
        return ["ssh", "-F", cfg, "-J", f"{ENGINEER}@127.0.0.1:{self.ssh_port}",
                f"root@{self.serial}", *remote]

    def jumphost(self):
        """The jump host address the agent and support-cli are given."""
        if self.transport == "ws":
            return f"ws://127.0.0.1:{self.api_port}/v1/ssh"
        return f"127.0.0.1:{self.ssh_port}"

    def register(self, serial, public_key):
        return http_post_json(f"{self.api_url}/v1/register",
                              {"serial": serial, "public_key": public_key})

    def cpu_roles(self):
        return {"jump host": tree_cpu_s(self.jump.pid), "device": tree_cpu_s(self.device.pid)}

    def fault_roles(self):
        return {"jump host": tree_minflt(self.jump.pid), "device": tree_minflt(self.device.pid)}

    def loadgen_args(self):
        ws = ["--ws"] if self.transport == "ws" else []
        return ["--user-prefix", "BENCH-", "--forward-port", "22", *ws]

    def restart(self):
        """SIGKILL and start again on the same ports and data (host key, registrations)."""
        self.jump.close()
        wait_until(30, "our jump host's ports to be free",
                   lambda: port_free(self.ssh_port) and port_free(self.api_port))
        self._start_jump()

    def memory(self):
        return tree_memory_kib(self.jump.pid)

    def close(self):
        if self.device:
            self.device.close()
        if self.jump:
            self.jump.close()

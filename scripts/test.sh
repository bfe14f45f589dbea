#!/usr/bin/env bash
# Runs every test of the project. Installs what a fresh Debian machine lacks first
# (stock OpenSSH server and client: the end-to-end tests run against the real thing).
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
add_arch=()
[ -x /usr/sbin/sshd ] || missing+=(openssh-server)
command -v ssh >/dev/null 2>&1 || missing+=(openssh-client)
command -v ssh-keygen >/dev/null 2>&1 || missing+=(openssh-client)
command -v python3 >/dev/null 2>&1 || missing+=(python3 python3-pip)
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v sqlite3 >/dev/null 2>&1 || missing+=(sqlite3)
# The API TLS test makes a CA and a certificate and checks fingerprints (tests/tests/tls.rs).
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
# The web page test drives a real browser (tests/tests/web.rs).
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
# The customer behind a forward proxy (tests/tests/agent_network.rs) goes through a real tinyproxy.
command -v tinyproxy >/dev/null 2>&1 || missing+=(tinyproxy)
# The customer behind a SOCKS5 proxy (tests/tests/agent_network.rs) goes through a real microsocks.
command -v microsocks >/dev/null 2>&1 || missing+=(microsocks)
# The jump host behind a TLS-terminating reverse proxy (tests/tests/agent_network.rs) is a real nginx.
command -v nginx >/dev/null 2>&1 || missing+=(nginx-light)
# HAProxy sending the PROXY protocol in front of the API (tests/tests/agent_network.rs).
command -v haproxy >/dev/null 2>&1 || missing+=(haproxy)
# promtool checks the jump host's /metrics (tests/tests/metrics.rs).
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
# `file` checks that the static agent is one (tests/tests/static_agent.rs).
command -v file >/dev/null 2>&1 || missing+=(file)
# The Debian packages: built with dpkg-deb, man pages from --help, checked by lintian
# (packaging/test-debs.sh); systemd-analyze verifies their units.
command -v lintian >/dev/null 2>&1 || missing+=(lintian)
command -v help2man >/dev/null 2>&1 || missing+=(help2man)
command -v dpkg-shlibdeps >/dev/null 2>&1 || missing+=(dpkg-dev)
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
command -v man >/dev/null 2>&1 || missing+=(man-db)
# The built-in target serves scp/sftp with the system's sftp-server, and its recordings are
# replayed with stock asciinema (tests/tests/builtin.rs).
[ -x /usr/lib/openssh/sftp-server ] || missing+=(openssh-sftp-server)
command -v asciinema >/dev/null 2>&1 || missing+=(asciinema)
# The agent's build fetches the page's terminal widget (xterm.js, pinned in
# client/assets/package-lock.json) with `npm ci` (client/build.rs).
command -v npm >/dev/null 2>&1 || missing+=(npm)
# Dropbear as the customer's SSH server, as on embedded devices (tests/tests/field_targets.rs).
[ -x /usr/sbin/dropbear ] && command -v dropbearkey >/dev/null 2>&1 || missing+=(dropbear-bin)
# A private PostgreSQL cluster (initdb in a temporary folder) for the store on PostgreSQL and
# several jump hosts sharing it (tests/tests/postgres_store.rs, tests/tests/cluster.rs).
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
# The static agent, built with musl for x86_64 and 64- and 32-bit ARM
# (packaging/build-static-agent.sh says why this way; tests/tests/static_agent.rs): Debian's
# rustc and cargo with the standard library's source, musl for each architecture, the cross
# compilers, and qemu-user to run the ARM builds here. The script fetches LLVM's libunwind
# for each architecture itself.
dpkg -s rustc-web cargo-web rust-web-src >/dev/null 2>&1 || missing+=(rustc-web cargo-web rust-web-src)
command -v musl-gcc >/dev/null 2>&1 || missing+=(musl-tools)
[ -e /usr/lib/x86_64-linux-musl/libc.a ] || missing+=(musl-dev)
for arch in arm64:aarch64-linux-gnu:aarch64-linux-musl armhf:arm-linux-gnueabihf:arm-linux-musleabihf; do
  IFS=: read -r deb gnu musl <<<"$arch"
  command -v "$gnu-gcc" >/dev/null 2>&1 || missing+=("gcc-$gnu")
  [ -e "/usr/lib/$musl/libc.a" ] || missing+=("musl-dev:$deb")
  dpkg --print-foreign-architectures | grep -qx "$deb" || add_arch+=("$deb")
done
command -v qemu-aarch64-static >/dev/null 2>&1 && command -v qemu-arm-static >/dev/null 2>&1 \
  || missing+=(qemu-user-static)
for arch in "${add_arch[@]}"; do as_root dpkg --add-architecture "$arch"; done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# A Debian package install may start the system sshd; the tests never use it.

# ssh-audit grades the jump host's algorithms (tests/tests/hardening_ssh.rs); PyPI has the
# current release (Debian's is years older and does not know ML-KEM).
if ! python3 -c 'import ssh_audit' 2>/dev/null; then
  python3 -m pip install --quiet ssh-audit 2>/dev/null \
    || python3 -m pip install --quiet --break-system-packages ssh-audit
fi

# Build everything once up front so test binaries do not race each other to build.
cargo build --workspace --all-targets --locked
cargo test --workspace --locked -- --test-threads="${TEST_THREADS:-4}"
# The three .deb packages from the binaries just built: lintian, dpkg -i, the installed
# programs run, systemd-analyze verify on the units, dpkg --purge.
packaging/test-debs.sh target/debug
# The benchmarks' smoke run: both chains (ours and stock OpenSSH) end to end with checksums,
# small sizes; it fails on breakage only, never on timing.
python3 bench/run.py --smoke --no-build
# Formatting is part of the check, so a change that skipped rustfmt does not land.
cargo fmt --version >/dev/null 2>&1 || rustup component add rustfmt
cargo fmt --all --check
# Fuzzing on request: from cold, installing cargo-fuzz and building the instrumented targets
# takes longer than everything above (docs/hardening.md, "Fuzzing").
if [ "${FUZZ_SECONDS:-0}" -gt 0 ]; then
  scripts/fuzz.sh "$FUZZ_SECONDS"
fi

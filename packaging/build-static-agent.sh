#!/usr/bin/env bash
# Builds assist-client as one static x86_64 executable (glibc linked in, no loader, no
# shared libraries): packaging/build-static-agent.sh [PROFILE], PROFILE `dist` (what ships,
# Cargo.toml) by default. Prints the executable's path. Its own target folder
# (target/static), so the ordinary builds' artifacts and flags are left alone.
#
# musl and ARM need a Rust standard library for those targets (rustup target add, or
# `cargo zigbuild`); this is the host's GNU target with `crt-static`, which needs only
# libc6-dev. Static glibc still loads NSS modules for names it cannot resolve itself:
# /etc/hosts and DNS work as in the dynamic build, while accounts from LDAP or sssd
# (target_user) and hosts from mDNS need the machine's glibc to be the version built with.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
profile=${1:-dist}
host=$(rustc -vV | sed -n 's/^host: //p')
case $host in
  x86_64-unknown-linux-gnu) ;;
  *) echo "build-static-agent.sh: only for x86_64-unknown-linux-gnu hosts, not $host" >&2; exit 1 ;;
esac
export CARGO_TARGET_DIR=$root/target/static
# --target: the flag applies to the agent and its libraries only, not to build scripts and
# proc macros (they run on the host and stay dynamic).
RUSTFLAGS="-C target-feature=+crt-static" cargo build --quiet --locked \
  --manifest-path "$root/Cargo.toml" -p assist-client --profile "$profile" --target "$host"
case $profile in dev) dir=debug ;; *) dir=$profile ;; esac
echo "$CARGO_TARGET_DIR/$host/$dir/assist-client"

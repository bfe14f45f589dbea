#!/usr/bin/env bash
# Builds assist-client as one static executable (libc linked in, no loader, no shared
# libraries) to ship inside a product:
#
#   packaging/build-static-agent.sh [PROFILE] [TARGET]
#
# PROFILE: `dist-agent` (what ships, Cargo.toml: fat LTO, one codegen unit, stripped,
# panic=abort) by default; `dev` for a quick build. TARGET: the host's
# (x86_64-unknown-linux-gnu) by default, or aarch64-unknown-linux-gnu (64-bit ARM) or
# armv7-unknown-linux-gnueabihf (32-bit ARM with hardware floating point). Prints the
# executable's path.
#
# x86_64 builds with the rustup toolchain in PATH, into target/static. The ARM targets need
# a Rust standard library for them, which rustup cannot fetch here; Debian ships one with
# the rustc it uses for its browsers (bookworm-security), so they build with that compiler,
# into target/cross (its artifacts must not mix with rustup's). Packages, once
# `dpkg --add-architecture arm64` (armhf for armv7) and `apt-get update`:
#   rustc-web libstd-rust-web-dev:arm64 gcc-aarch64-linux-gnu libc6-dev-arm64-cross
#   rustc-web libstd-rust-web-dev:armhf gcc-arm-linux-gnueabihf libc6-dev-armhf-cross
# (scripts/test.sh installs them; qemu-user-static runs the results on an x86_64 machine).
#
# The libc is glibc (Debian has no Rust standard library for musl). Static glibc still
# loads NSS modules for names it cannot resolve itself: /etc/hosts and DNS work as in the
# dynamic build, while accounts from LDAP or sssd (target_user) and hosts from mDNS need
# the machine's glibc to be the version built with.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
profile=${1:-dist-agent}
host=$(rustc -vV | sed -n 's/^host: //p')
target=${2:-$host}
die() { echo "build-static-agent.sh: $*" >&2; exit 1; }
[ "$host" = x86_64-unknown-linux-gnu ] || die "only for x86_64-unknown-linux-gnu hosts, not $host"

# -z pack-relative-relocs: the executable's relocations as a bitmap (DT_RELR, glibc ≥ 2.36,
# which the static executable carries itself) instead of 24 bytes each: −190 KiB.
flags="-C target-feature=+crt-static -C link-arg=-Wl,-z,pack-relative-relocs"
case $target in
  "$host")
    export CARGO_TARGET_DIR=$root/target/static
    ;;
  aarch64-unknown-linux-gnu | armv7-unknown-linux-gnueabihf)
    export RUSTC=/usr/bin/rustc
    [ -x "$RUSTC" ] || die "$target needs Debian's rustc-web package (see this script's head)"
    sysroot=$("$RUSTC" --print sysroot)
    [ -d "$sysroot/lib/rustlib/$target/lib" ] \
      || die "no Rust standard library for $target in $sysroot: install libstd-rust-web-dev for its architecture (see this script's head)"
    case $target in
      aarch64-*) linker=aarch64-linux-gnu-gcc ;;
      armv7-*) linker=arm-linux-gnueabihf-gcc ;;
    esac
    command -v "$linker" >/dev/null || die "$target needs $linker (see this script's head)"
    env_target=$(echo "$target" | tr 'a-z-' 'A-Z_')
    export "CARGO_TARGET_${env_target}_LINKER=$linker"
    export CARGO_TARGET_DIR=$root/target/cross
    ;;
  *) die "unknown target $target: x86_64-unknown-linux-gnu, aarch64-unknown-linux-gnu or armv7-unknown-linux-gnueabihf" ;;
esac
# --target: the flags apply to the agent and its libraries only, not to build scripts and
# proc macros (they run on the host and stay dynamic).
RUSTFLAGS=$flags cargo build --quiet --locked \
  --manifest-path "$root/Cargo.toml" -p assist-client --profile "$profile" --target "$target"
case $profile in dev) dir=debug ;; *) dir=$profile ;; esac
echo "$CARGO_TARGET_DIR/$target/$dir/assist-client"

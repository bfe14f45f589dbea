#!/usr/bin/env bash
# Builds assist-client as one static executable (musl linked in, no loader, no shared
# libraries) to ship inside a product:
#
#   packaging/build-static-agent.sh [PROFILE] [TARGET]
#
# PROFILE: `dist-agent` (what ships, Cargo.toml: fat LTO, one codegen unit, stripped,
# panic=abort) by default; `dev` for a quick build. Prints the executable's path. TARGET:
#
#   x86_64-unknown-linux-musl        64-bit PC (the default)
#   aarch64-unknown-linux-musl       64-bit ARM
#   armv7-unknown-linux-musleabihf   32-bit ARM with hardware floating point
#
# Each is a static position-independent executable: the kernel still loads it at a random
# address. musl reads /etc/passwd, /etc/hosts and /etc/resolv.conf itself and never loads
# modules, so the result runs on any Linux of its architecture, with or without a libc.
#
# Rust's standard library for musl is neither fetchable by rustup here nor packaged by
# Debian; Debian packages its source with the rustc it builds its browsers with
# (bookworm-security), and cargo's `-Zbuild-std` compiles it for musl with the agent, as one
# optimized unit (RUSTC_BOOTSTRAP=1 lets that stable compiler take the flag). Packages:
#   rustc-web cargo-web rust-web-src musl-tools musl-dev
#   gcc-aarch64-linux-gnu musl-dev:arm64    (aarch64, after `dpkg --add-architecture arm64`)
#   gcc-arm-linux-gnueabihf musl-dev:armhf  (armv7, after `dpkg --add-architecture armhf`)
# The standard library also links LLVM's libunwind (to print a backtrace); the script takes
# it out of libunwind-14-dev for the target's architecture (`apt-get download`, once, into
# target/musl), as the three architectures' packages cannot be installed side by side.
# scripts/test.sh installs all of it; qemu-user-static runs the ARM builds on x86_64.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
profile=${1:-dist-agent}
target=${2:-x86_64-unknown-linux-musl}
die() { echo "build-static-agent.sh: $*" >&2; exit 1; }
[ "$(uname -m)" = x86_64 ] || die "builds on x86_64 Linux only, not $(uname -m)"

case $target in
  x86_64-unknown-linux-musl) gcc=gcc musl=x86_64-linux-musl arch=amd64 ;;
  aarch64-unknown-linux-musl) gcc=aarch64-linux-gnu-gcc musl=aarch64-linux-musl arch=arm64 ;;
  armv7-unknown-linux-musleabihf) gcc=arm-linux-gnueabihf-gcc musl=arm-linux-musleabihf arch=armhf ;;
  *) die "unknown target $target: x86_64-unknown-linux-musl, aarch64-unknown-linux-musl or armv7-unknown-linux-musleabihf" ;;
esac
rustc=/usr/bin/rustc cargo=/usr/bin/cargo
[ -x "$rustc" ] && [ -x "$cargo" ] || die "needs Debian's rustc-web and cargo-web (see this script's head)"
[ -f "$("$rustc" --print sysroot)/lib/rustlib/src/rust/library/Cargo.lock" ] \
  || die "needs the standard library's source: install rust-web-src (see this script's head)"
command -v "$gcc" >/dev/null || die "$target needs $gcc (see this script's head)"
specs=/usr/lib/$musl/musl-gcc.specs
[ -f "$specs" ] || die "$target needs musl-dev:$arch (see this script's head)"

out=$root/target/musl
mkdir -p "$out"
# LLVM's libunwind for the architecture, out of its package.
unwind=$out/libunwind-$arch
if [ ! -f "$unwind/libunwind.a" ]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  (cd "$tmp" && apt-get download -q "libunwind-14-dev:$arch" >/dev/null 2>&1) \
    || die "cannot fetch libunwind-14-dev:$arch with apt-get download (is $arch added with dpkg --add-architecture, and apt-get update run?)"
  dpkg-deb -x "$tmp"/libunwind-14-dev_*.deb "$tmp/x"
  mkdir -p "$unwind"
  cp "$tmp/x/usr/lib/llvm-14/lib/libunwind.a" "$unwind/"
fi
# Debian's musl-gcc specs link dynamic executables only; these also know -static-pie
# (which rustc asks for): musl's self-relocating start file, and no program interpreter.
# libgcc last: rustc links without the default libraries, and mimalloc's C code calls
# gcc's helpers (__popcountdi2), which Rust's compiler-builtins do not all have.
sed -e "s|%{!shared: /usr/lib/$musl/Scrt1.o}|%{static-pie:/usr/lib/$musl/rcrt1.o;!shared:/usr/lib/$musl/Scrt1.o}|" \
    -e "s|-dynamic-linker \([^ ]*\)|%{!static-pie:-dynamic-linker \1} %{static-pie:-static -pie --no-dynamic-linker -z text}|" \
    -e "s|^crtendS.o%s|libgcc.a%s crtendS.o%s|" \
    "$specs" >"$out/$target.specs"
# The C compiler and linker for the target: gcc with those specs (ring's C parts too).
cc=$out/$target-gcc
printf '#!/bin/sh\nexec %s -specs=%s "$@"\n' "$gcc" "$out/$target.specs" >"$cc"
chmod +x "$cc"
env_target=$(echo "$target" | tr 'a-z-' 'A-Z_')
env_cc=$(echo "$target" | tr '-' '_')
export "CARGO_TARGET_${env_target}_LINKER=$cc" "CC_$env_cc=$cc" "AR_$env_cc=${gcc%gcc}ar"
# mimalloc (the static agent's allocator, heap/src/lib.rs) without transparent huge pages:
# where THP is on, each 64 KiB it touches would become 2 MiB resident.
export "CFLAGS_$env_cc=-DMI_DEFAULT_ALLOW_THP=0 -DMI_DEFAULT_ARENA_EAGER_COMMIT=0 -fno-asynchronous-unwind-tables -fno-unwind-tables"
export RUSTC=$rustc RUSTC_BOOTSTRAP=1 CARGO_TARGET_DIR=$out
# link-self-contained=no: rustup's musl targets bring their own start files and libc; this
# build takes Debian's. --target: the flags apply to the agent and its libraries only, not
# to build scripts and proc macros (they run on the host and stay dynamic).
# A `dev` build aborts on panic too, as the shipped one does: the unwinder's code that
# unwinding needs calls glibc's fortified printf (Debian builds libunwind so), which musl
# lacks. It carries no debug information unless CARGO_PROFILE_DEV_DEBUG asks for it: with
# it, each target's build (the standard library included) takes 2.2 GB of disk, and the
# tests build all three after the workspace's own 10 GB.
# What keeps the agent under its 4 MiB (bench/NOTES.md, 2026-12-02 22:30, x86_64 bytes):
# - no unwind tables (-C force-unwind-tables=no, and -fno-*unwind-tables for the C parts)
#   and Rust's standard library without its backtrace symbolizer and unwinding runtime
#   (-Zbuild-std-features: only optimize_for_size): nothing unwinds in an agent that
#   aborts on panic, and a stripped executable's backtrace would be bare addresses;
#   -674 KB. A panic still prints its message.
# - -Zlocation-detail=none: a panic's message without its file, line and column; the
#   places and their relocations cost 197 KB. (No line or column with the file kept still
#   cost 61 KB more, and that would not fit; nor would a fixed load address, which would
#   have saved the 166 KB of relocations.)
# - curve25519-dalek's portable backend: it signs once per login; its AVX2 one is 34 KB.
# - paths in the executable relative to the workspace, the registry and the standard
#   library's source, not this machine's.
flags=(-C target-feature=+crt-static -C link-self-contained=no -C force-unwind-tables=no
       -Zlocation-detail=none -L "native=$unwind" --cfg 'curve25519_dalek_backend="serial"'
       --remap-path-prefix "$root=assist"
       --remap-path-prefix "$("$rustc" --print sysroot)/lib/rustlib/src/rust=rust")
for registry in "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/; do
  flags+=(--remap-path-prefix "${registry%/}=crates")
done
export CARGO_PROFILE_DEV_DEBUG=${CARGO_PROFILE_DEV_DEBUG:-false}
CARGO_ENCODED_RUSTFLAGS=$(IFS=$'\x1f'; echo "${flags[*]}") \
  "$cargo" build --quiet --locked -Zbuild-std=std,panic_abort -Zbuild-std-features=optimize_for_size --config 'profile.dev.panic="abort"' \
  --manifest-path "$root/Cargo.toml" -p assist-client --profile "$profile" --target "$target"
case $profile in dev) dir=debug ;; *) dir=$profile ;; esac
echo "$out/$target/$dir/assist-client"

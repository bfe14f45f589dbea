#!/usr/bin/env bash
# Builds the cargo-fuzz targets in fuzz/ and runs each, one after the other, for SECONDS
# (default 20) over its committed corpus; fails on any crash, panic, hang or leak.
# Stable Rust is enough: `--sanitizer none` (AddressSanitizer needs nightly's -Zsanitizer,
# and the project's own code forbids `unsafe`). See docs/hardening.md, "Fuzzing".
# New inputs go to a scratch folder, so a CI run never changes the committed corpus.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-20}

if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --version 0.13.2 --locked
fi

cargo fuzz build --sanitizer none
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
for target in $(cargo fuzz list); do
  echo "== fuzz $target for ${seconds}s"
  mkdir -p "$scratch/$target"
  # The first folder receives new inputs; the committed corpus is only read.
  cargo fuzz run --sanitizer none "$target" "$scratch/$target" "fuzz/corpus/$target" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
done

#!/usr/bin/env bash
# The packages as an operator gets them: builds the three .deb files from BIN_DIR, has
# lintian check them (no error), installs them with dpkg -i, runs the installed binaries
# (the jump host as its own system user, on free loopback ports, with the packaged
# policy), verifies the installed systemd units, then purges the packages again.
set -euo pipefail
cd "$(dirname "$0")/.."
bin_dir=$1
packages=(assist-jumphost assist-client support-cli)
work=$(mktemp -d)
cleanup() {
  [ -n "${jump_pid:-}" ] && kill "$jump_pid" 2>/dev/null
  dpkg --purge "${packages[@]}" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "debs: $*" >&2; exit 1; }

mapfile -t debs < <(packaging/build-debs.sh "$bin_dir" "$work/debs")
[ ${#debs[@]} -eq 3 ] || fail "expected 3 packages, got: ${debs[*]}"
lintian --fail-on error --tag-display-limit 0 "${debs[@]}" > "$work/lintian.txt" 2>&1 \
  || { cat "$work/lintian.txt"; fail "lintian reports errors"; }
grep -v 'root privileges' "$work/lintian.txt" || true
dpkg -i "${debs[@]}" >/dev/null

for p in "${packages[@]}"; do
  "/usr/bin/$p" --version | grep -qx "$p [0-9.]*" || fail "/usr/bin/$p --version"
  man -w "$p" >/dev/null || fail "no man page for $p"
done
getent passwd assist-jumphost >/dev/null || fail "no assist-jumphost user"
/usr/bin/assist-jumphost policy check --policies /etc/assist-jumphost/policies >/dev/null \
  || fail "the packaged policy does not pass policy check"
systemd-analyze verify /lib/systemd/system/assist-jumphost.service \
  /lib/systemd/system/assist-client.service || fail "systemd-analyze verify"

# The installed jump host serves as its own user with the packaged policy.
install -d -o assist-jumphost -g assist-jumphost -m 0700 "$work/state"
cat > "$work/jumphost.toml" <<TOML
ssh_listen = "127.0.0.1:0"
api_listen = "127.0.0.1:0"
data_dir = "$work/state"
policies_dir = "/etc/assist-jumphost/policies"
TOML
chmod 0755 "$work"
chmod 0644 "$work/jumphost.toml"
runuser -u assist-jumphost -- /usr/bin/assist-jumphost serve --config "$work/jumphost.toml" \
  > "$work/jump.out" 2> "$work/jump.err" &
jump_pid=$!
deadline=$((SECONDS + 30))
until grep -q '^api listening on' "$work/jump.out"; do
  kill -0 "$jump_pid" 2>/dev/null || fail "the installed jump host exited: $(cat "$work/jump.err")"
  [ $SECONDS -lt $deadline ] || fail "the installed jump host did not start in 30 s"
  sleep 0.1
done
[ "$(stat -c %U "$work/state/host_key")" = assist-jumphost ] || fail "host key not owned by assist-jumphost"
kill "$jump_pid"; wait "$jump_pid" 2>/dev/null || true; jump_pid=

dpkg --purge "${packages[@]}" >/dev/null
! getent passwd assist-jumphost >/dev/null || fail "purge left the assist-jumphost user"
[ ! -e /usr/bin/assist-jumphost ] || fail "purge left /usr/bin/assist-jumphost"
echo "debs: ${#debs[@]} packages built, lintian without errors, installed, run, units verified, purged"

#!/usr/bin/env bash
# Brings the whole system up on loopback with embedded defaults:
#   - a jump host (assist-jumphost) on free ports, with a demo policy and a demo engineer key;
#   - a "customer machine": a private stock sshd on a free loopback port;
#   - the agent (assist-client) for serial DEMO-0001, with assistance enabled;
# then prints the agent's web page URL and the exact support-cli command to hop in.
# Ctrl-C stops everything, removes the key line and the demo folder.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
say() { printf '%s\n' "$*" >&2; }

missing=()
[ -x /usr/sbin/sshd ] || missing+=(openssh-server)
command -v ssh-keygen >/dev/null 2>&1 || missing+=(openssh-client)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
if [ ${#missing[@]} -gt 0 ]; then
  say "installing: ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

say "building..."
cargo build --quiet --workspace --bins
bin="$root/target/debug"

demo=$(mktemp -d "${TMPDIR:-/tmp}/assist-demo.XXXXXX")
pids=()
agent_config="$demo/client/client.toml"
cleanup() {
  # A second Ctrl-C must not cut the cleanup short (a terminal sends SIGINT to every
  # process of the group, and the background jobs of a script ignore it anyway).
  trap '' INT TERM
  trap - EXIT
  say ""
  say "stopping the demo..."
  if [ -f "$agent_config" ] && [ -n "${agent_pid:-}" ]; then
    "$bin/assist-client" disable --config "$agent_config" >/dev/null 2>&1 || true
  fi
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$demo"
  say "stopped; nothing left behind."
}
trap cleanup EXIT INT TERM

# Waits for a line starting with $2 in file $1 (a program's stdout); prints the rest of it.
wait_line() {
  local file=$1 prefix=$2 deadline=$((SECONDS + 60))
  while [ $SECONDS -lt $deadline ]; do
    local line
    line=$(grep -m1 "^$prefix" "$file" 2>/dev/null || true)
    if [ -n "$line" ]; then printf '%s\n' "${line#"$prefix"}" | sed 's/^ *//'; return 0; fi
    sleep 0.1
  done
  say "timed out waiting for '$prefix' in $file:"; cat "$file" >&2; return 1
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# The engineer's key and the jump host's policy.
mkdir -p "$demo/jumphost/policies" "$demo/customer" "$demo/client" "$demo/engineer"
ssh-keygen -q -t ed25519 -N "" -C "demo-engineer" -f "$demo/engineer/id_ed25519"
cat > "$demo/jumphost/policies/demo.toml" <<EOF
[allowlist]
support_cidrs = ["127.0.0.1/32", "::1/128"]

[[support]]
name = "demo"
public_key = "$(cat "$demo/engineer/id_ed25519.pub")"

[serials]
allow = ["DEMO-*"]

[keys]
client_key_ttl = "1d"
max_assistance = "8h"
EOF
cat > "$demo/jumphost/jumphost.toml" <<EOF
ssh_listen = "127.0.0.1:0"
api_listen = "127.0.0.1:0"
data_dir = "$demo/jumphost/data"
policies_dir = "$demo/jumphost/policies"
EOF
"$bin/assist-jumphost" serve --config "$demo/jumphost/jumphost.toml" \
  >"$demo/jumphost/stdout" 2>"$demo/jumphost/log" &
pids+=($!)
jump_ssh=$(wait_line "$demo/jumphost/stdout" "ssh listening on")
jump_api=$(wait_line "$demo/jumphost/stdout" "api listening on")

# The customer's machine: a private stock sshd that only reads the demo's authorized_keys.
mkdir -p /run/sshd 2>/dev/null || as_root mkdir -p /run/sshd
ssh-keygen -q -t ed25519 -N "" -f "$demo/customer/host_ed25519"
: > "$demo/customer/authorized_keys"
chmod 600 "$demo/customer/authorized_keys"
sshd_port=$(free_port)
cat > "$demo/customer/sshd_config" <<EOF
ListenAddress 127.0.0.1:$sshd_port
HostKey $demo/customer/host_ed25519
AuthorizedKeysFile $demo/customer/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PidFile none
EOF
/usr/sbin/sshd -D -e -f "$demo/customer/sshd_config" 2>"$demo/customer/sshd.log" &
pids+=($!)

# The agent, as a customer would configure it.
user=$(id -un)
cat > "$agent_config" <<EOF
serial = "DEMO-0001"
jumphost = "$jump_ssh"
api_url = "$jump_api"
data_dir = "$demo/client/data"
web_listen = "127.0.0.1:0"
target_user = "$user"
authorized_keys = "$demo/customer/authorized_keys"

[services]
ssh = "127.0.0.1:$sshd_port"
EOF
"$bin/assist-client" run --config "$agent_config" >"$demo/client/stdout" 2>"$demo/client/log" &
agent_pid=$!
pids+=("$agent_pid")
web=$(wait_line "$demo/client/stdout" "web listening on")
code=$("$bin/assist-client" enable --config "$agent_config" --minutes 60 | sed -n 's/^code: //p')
# The page asks for the agent's access key; a #token= link logs in directly (the fragment is
# never sent over the network).
page="$web/#token=$(cat "$demo/client/data/control-token")"

cat <<EOF

  Remote assistance demo is running (folder $demo).

  Customer's web page:  $page
  Jump host:            ssh $jump_ssh, api $jump_api
  Customer machine:     sshd on 127.0.0.1:$sshd_port, serial DEMO-0001
  One-time code:        $code

  Hop in as the support engineer (in another terminal):

    $bin/support-cli --jumphost $jump_ssh --engineer demo --identity $demo/engineer/id_ed25519 --known-hosts $demo/engineer/known_hosts connect DEMO-0001 --code $code --user $user

  Logs: $demo/jumphost/log  $demo/client/log
  Press Ctrl-C to stop everything.
EOF
wait "${pids[0]}"

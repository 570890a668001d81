#!/usr/bin/env bash
# Builds N "hosts" on this machine to try handoff's SSH runtime by hand (the
# bed of crates/handoff/tests/common/hostbed.rs; root needed): each host hN is
# a network namespace try-hN with a veth into the bridge hobr-try, address
# 10.77.250.(10+N) and its own sshd (own host key) on port 22.
#
#   scripts/try-hosts.sh up [N]   # build N hosts (default 4), write a config
#   scripts/try-hosts.sh down     # remove everything again
#
# State (keys, sshd configs and logs, hosts.toml) is in /tmp/handoff-try-hosts.
set -euo pipefail
cd "$(dirname "$0")/.."

STATE=/tmp/handoff-try-hosts
BRIDGE=hobr-try
NET=10.77.250
SSHD=/usr/sbin/sshd

usage() {
  echo "usage: $0 up [N] | down" >&2
  exit 2
}

need_root() {
  if [ "$(id -u)" -ne 0 ]; then
    echo "$0: needs root (it creates network namespaces and runs one sshd per host); try: sudo $0 $*" >&2
    exit 1
  fi
}

down() {
  local ns link pid
  for ns in $(ip netns list | awk '$1 ~ /^try-h[0-9]+$/ { print $1 }'); do
    for pid in $(ip netns pids "$ns"); do
      kill -9 "$pid" 2>/dev/null || true
    done
    ip netns del "$ns" 2>/dev/null || true
  done
  for link in $(ip -o link show | awk -F': ' '{ sub(/@.*/, "", $2); print $2 }' | grep '^hobr-try' || true); do
    ip link del "$link" 2>/dev/null || true
  done
  rm -rf "$STATE"
}

undo_on_failure() {
  local status=$?
  if [ "$status" -ne 0 ]; then
    echo "$0: up failed; removing what it built" >&2
    down
  fi
}

find_handoff() {
  local b
  for b in target/release/handoff target/debug/handoff; do
    if [ -x "$b" ]; then
      echo "$PWD/$b"
      return
    fi
  done
  if b=$(command -v handoff); then
    echo "$b"
    return
  fi
  echo "$0: no handoff binary: build it first (cargo build --release)" >&2
  exit 1
}

up() {
  local n=$1 i ip ns veth dir known="" names="" bin
  if ! [[ $n =~ ^[0-9]+$ ]] || [ "$n" -lt 1 ] || [ "$n" -gt 200 ]; then
    echo "$0: N must be 1 to 200, not '$n'" >&2
    exit 2
  fi
  for tool in "$SSHD" ip ssh ssh-keygen; do
    if ! command -v "$tool" >/dev/null; then
      echo "$0: $tool not found: apt-get install openssh-server openssh-client iproute2" >&2
      exit 1
    fi
  done
  bin=$(find_handoff)
  down
  trap undo_on_failure EXIT
  mkdir -p "$STATE"
  [ -d /run/sshd ] || mkdir -m755 /run/sshd
  ssh-keygen -q -t ed25519 -N "" -C handoff-try-client -f "$STATE/client_key"
  cp "$STATE/client_key.pub" "$STATE/authorized_keys"

  ip link add "$BRIDGE" type bridge
  ip addr add "$NET.1/24" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  for i in $(seq 1 "$n"); do
    ip="$NET.$((10 + i))"
    ns="try-h$i"
    veth="$BRIDGE-v$i"
    dir="$STATE/h$i"
    mkdir -p "$dir"
    ip netns add "$ns"
    ip link add "$veth" type veth peer name eth0 netns "$ns"
    ip link set "$veth" master "$BRIDGE" up
    ip -n "$ns" addr add "$ip/24" dev eth0
    ip -n "$ns" link set lo up
    ip -n "$ns" link set eth0 up
    ssh-keygen -q -t ed25519 -N "" -C "handoff-try-h$i" -f "$dir/ssh_host_ed25519_key"
    known+="$ip $(cut -d' ' -f1,2 "$dir/ssh_host_ed25519_key.pub")"$'\n'
    cat >"$dir/sshd_config" <<EOF
ListenAddress $ip
Port 22
HostKey $dir/ssh_host_ed25519_key
PidFile $dir/sshd.pid
AuthorizedKeysFile $STATE/authorized_keys
StrictModes no
UsePAM no
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UseDNS no
MaxStartups 100
MaxSessions 100
ClientAliveInterval 0
SetEnv SHLVL=1
PrintMotd no
LogLevel ERROR
EOF
    # sshd daemonizes; it stays in the namespace (kill: ip netns pids try-hN).
    ip netns exec "$ns" "$SSHD" -f "$dir/sshd_config" -E "$dir/sshd.log"
    names+="${names:+, }\"h$i\""
  done
  printf '%s' "$known" >"$STATE/known_hosts"

  for i in $(seq 1 "$n"); do
    local ok=""
    for _ in $(seq 1 100); do
      if ssh -F /dev/null -o BatchMode=yes -o StrictHostKeyChecking=yes \
        -o UserKnownHostsFile="$STATE/known_hosts" -o IdentitiesOnly=yes \
        -i "$STATE/client_key" -o ConnectTimeout=2 -o LogLevel=ERROR \
        "root@$NET.$((10 + i))" true </dev/null; then
        ok=1
        break
      fi
      sleep 0.1
    done
    if [ -z "$ok" ]; then
      echo "$0: h$i does not answer over ssh; its log: $STATE/h$i/sshd.log" >&2
      exit 1
    fi
  done

  {
    echo "# Written by scripts/try-hosts.sh: $n hosts in network namespaces on this machine."
    echo
    echo "[server]"
    echo "admin = \"127.0.0.1:9900\""
    echo "state_dir = \"state\""
    echo
    for i in $(seq 1 "$n"); do
      echo "[hosts.h$i]"
      echo "address = \"root@$NET.$((10 + i))\""
      echo "identity = \"$STATE/client_key\""
      echo "known_hosts = \"$STATE/known_hosts\""
      echo "dir = \"$STATE/h$i/handoff\""
      echo
    done
    echo "[services.web]"
    echo "hosts = [$names]"
    echo "instances_per_host = 1"
    echo "listen = \"127.0.0.1:8080\""
    echo "revision = \"v1\""
    echo "command = \"$bin sample-app --address {address} --port {port} --version {revision}\""
  } >"$STATE/hosts.toml"

  local cfg="$STATE/hosts.toml"
  cat <<EOF
$n hosts are up (h1..h$n at $NET.11..$NET.$((10 + n)), each its own sshd); config: $cfg

Next:
  # the daemon, in another terminal:
  $bin serve -c $cfg
  # probe every host over ssh:
  $bin hosts check -c $cfg
  curl http://127.0.0.1:8080/
  $bin deploy -c $cfg web v2
  # cut h2 off (a silent partition; 'up' instead of 'down' brings it back):
  ip link set $BRIDGE-v2 down
  # a shell on h1:
  ssh -i $STATE/client_key -o UserKnownHostsFile=$STATE/known_hosts root@$NET.11
  # remove the hosts:
  $0 down
EOF
}

case "${1:-}" in
  up)
    [ $# -le 2 ] || usage
    need_root "$@"
    up "${2:-4}"
    ;;
  down)
    [ $# -eq 1 ] || usage
    need_root "$@"
    down
    echo "removed the hosts (namespaces try-h*, links $BRIDGE*, $STATE)"
    ;;
  *) usage ;;
esac

#!/usr/bin/env bash
# Hosts: handoff over OpenSSH across the 4 hosts of scripts/try-hosts.sh's
# bed (network namespaces on this machine, one sshd each; root needed).
# Figures, not pass/fail:
#  1. deploy time, 4 hosts x 1 instance: in-place batch 1, in-place batch 2
#     and blue/green, REPS rounds alternating; each deploy's duration from
#     its report beside the lower bound the config implies (and what
#     `handoff plan` predicted), median of the rounds. The bound is the
#     config's waits: per batch the runtime's start watch, beside which the
#     checks run, then min_healthy_time (drains take 0 without load); for
#     blue/green also the bake and the retention;
#  2. the control plane's cost per remote instance: 4 hosts x PER_HOST
#     instances, idle for IDLE s once all are healthy: CPU of the daemon and
#     its ssh children, their RSS, the hosts' side of the status streams,
#     and one remote call (`handoff logs web web-1`) timed. A size that is
#     not all healthy within BOOT_LIMIT s is reported, and larger ones skipped.
#
#   sudo bench/hosts.sh          # REPS=3 PER_HOST="1 4 16" IDLE=30 BOOT_LIMIT=120
# Tables, then: BENCH hosts_deploy strategy=… bound_ms=… plan_ms=… measured_ms=… ratio=…
#               BENCH hosts_idle per_host=… instances=… daemon_cpu_ms_per_s=… cpu_ms_per_s_per_instance=… … logs_ms=…
# (stderr: each deploy, and `handoff report` of the last deploy of each kind.)
set -euo pipefail
cd "$(dirname "$0")/.."
REPS=${REPS:-3}
PER_HOST=${PER_HOST:-"1 4 16"}
IDLE=${IDLE:-30}
BOOT_LIMIT=${BOOT_LIMIT:-120}   # s for a size to be all healthy
if [ "$(id -u)" -ne 0 ]; then
  echo "bench/hosts.sh: needs root (scripts/try-hosts.sh makes network namespaces and runs one sshd per host); nothing measured. Try: sudo $0" >&2
  exit 0
fi
for tool in /usr/sbin/sshd ssh ssh-keygen ip; do
  if ! command -v "$tool" >/dev/null; then
    echo "bench/hosts.sh: $tool not found (apt-get install openssh-server openssh-client iproute2); nothing measured" >&2
    exit 0
  fi
done
if ip netns list | grep -q '^try-h'; then
  echo "bench/hosts.sh: scripts/try-hosts.sh's bed is already up (someone is using it); not touching it. When it is free: scripts/try-hosts.sh down" >&2
  exit 1
fi
[ -x target/release/handoff ] || cargo build --release -p handoff >&2
BIN=$PWD/target/release/handoff
STATE=/tmp/handoff-try-hosts
ADMIN=18990; LISTEN=18991
HOSTS=4
ulimit -n 65536 2>/dev/null || true
W=$(mktemp -d)
pid=""
stop_daemon() {
  [ -n "$pid" ] || return 0
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  pid=""
}
# Sessions still running on the hosts (every process there but the sshd
# listeners and detached instances has a parent other than 1).
sessions() { local i p pp n=0; for i in $(seq 1 $HOSTS); do for p in $(ip netns pids "try-h$i" 2>/dev/null); do
  pp=$(sed 's/^.*) //' "/proc/$p/stat" 2>/dev/null | awk '{print $2}'); [ -n "$pp" ] && [ "$pp" != 1 ] && n=$((n + 1)); done; done; echo $n; }
cleanup() {
  stop_daemon
  # Let the last remote sessions end before the bed is removed (with kill -9):
  # a login shell killed half-way can leave a lock behind (e.g. pyenv's rehash
  # lock in root's ~/.bashrc on this machine, which then stalls every ssh
  # login for 60 s).
  for _ in $(seq 1 90); do [ "$(sessions)" = 0 ] && break; sleep 1; done
  scripts/try-hosts.sh down >/dev/null 2>&1 || true
  rm -rf "$W"
}
trap cleanup EXIT
now_ms() { date +%s%3N; }
TICK_MS=$((1000 / $(getconf CLK_TCK)))
# The first number under KEY in handoff's pretty JSON (the outer object's).
first() { grep -o "\"$1\": [0-9]*" | head -1 | grep -o '[0-9]*$'; }
median() { tr ' ' '\n' | grep . | sort -n | awk '{v[NR]=$1} END{print v[int((NR+1)/2)]}'; }
# PID and its descendants.
tree() { ps -e -o pid=,ppid= | awk -v r="$1" '{p[$1]=$2} END{for (x in p){y=x; while (y!=r && (y in p) && y>1) y=p[y]; if (y==r) print x}}'; }
# CPU (ms) of processes, with their reaped children (utime+stime+cutime+cstime).
cpu_ms() {
  local t=0 p
  for p in "$@"; do
    t=$((t + $(sed 's/^.*) //' "/proc/$p/stat" 2>/dev/null | awk '{print $12+$13+$14+$15}' || echo 0)))
  done
  echo $((t * TICK_MS))
}
rss_kb() { local t=0 p; for p in "$@"; do t=$((t + $(awk '/VmRSS/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0))); done; echo $t; }
# The hosts' side of the control plane: every process in the hosts'
# namespaces but the instances (sshd, the status stream's sh, sleep, sed).
host_pids() { local i p; for i in $(seq 1 $HOSTS); do for p in $(ip netns pids "try-h$i"); do [ "$(cat "/proc/$p/comm" 2>/dev/null)" = handoff ] || echo "$p"; done; done; }

load=$(cut -d' ' -f1-3 /proc/loadavg)
echo "building the bed: scripts/try-hosts.sh up $HOSTS" >&2
scripts/try-hosts.sh up $HOSTS > "$W/bed.out"
# The [hosts.hN] tables of the bed's config; each run gets its own dir on the hosts.
awk '/^\[hosts\./{on=1} /^\[services\./{on=0} on' "$STATE/hosts.toml" > "$W/hosts.part"
names=$(seq -s, 1 $HOSTS | sed 's/\([0-9]*\)/"h\1"/g')

# Health: first probe as soon as the port answers, then (healthy_threshold - 1)
# more at `interval`; blue/green: one 50 % step.
INTERVAL_MS=500; THRESHOLD=2; MIN_HEALTHY_MS=1000; BAKE_MS=1000; RETENTION_MS=1000; DRAIN=5s
config() { # dir per_host interval_ms
  sed "s|^dir = \"\\(.*\\)\"|dir = \"\\1/$(basename "$1")\"|" "$W/hosts.part" > "$1/hosts.part"
  cat > "$1/handoff.toml" <<C
[server]
admin = "127.0.0.1:$ADMIN"
state_dir = "state"

$(cat "$1/hosts.part")

[services.web]
listen = "127.0.0.1:$LISTEN"
revision = "v1"
hosts = [$names]
instances_per_host = $2
command = "$BIN sample-app --address {address} --port {port} --version {revision}"
[services.web.health]
interval = "${3}ms"
healthy_threshold = $THRESHOLD
min_healthy_time = "${MIN_HEALTHY_MS}ms"
healthy_deadline = "120s"
[services.web.drain]
timeout = "$DRAIN"
[services.web.blue_green]
traffic_steps = [50]
bake = "${BAKE_MS}ms"
retention = "${RETENTION_MS}ms"
C
}
start_daemon() { # dir instances
  unset HANDOFF_ADMIN HANDOFF_TOKEN   # each daemon makes its own token
  HANDOFF_LOG=warn "$BIN" serve -c "$1/handoff.toml" > "$1/serve.out" 2> "$1/serve.err" &
  pid=$!
  for _ in $(seq 1 1200); do grep -q ready "$1/serve.out" 2>/dev/null && break; sleep 0.1; done
  grep -q ready "$1/serve.out" || { echo "the daemon did not start:" >&2; cat "$1/serve.err" >&2; return 1; }
  export HANDOFF_ADMIN=http://127.0.0.1:$ADMIN HANDOFF_TOKEN=$(cat "$1/state/token")
  local n=0 until=$((SECONDS + BOOT_LIMIT))
  while [ $SECONDS -lt $until ]; do
    n=$("$BIN" status --json | grep -c '"state": "healthy"' || true)
    [ "$n" -ge "$2" ] && return 0; sleep 0.1
  done
  echo "only $n of $2 instances healthy after $BOOT_LIMIT s; the daemon's last words:" >&2
  tail -3 "$1/serve.err" >&2
  echo "$n" > "$1/healthy"
  return 1
}

# 1. Deploy time across 4 hosts x 1 instance.
D=$W/deploy; mkdir -p "$D"
config "$D" 1 $INTERVAL_MS
t0=$(now_ms)
start_daemon "$D" $HOSTS || exit 1
echo "4 hosts x 1 instance: boot to all healthy $(( $(now_ms) - t0 )) ms" >&2
KINDS="inplace-1 inplace-2 bluegreen"
declare -A measured planned bound batches last
lines=""
rev=1
for round in $(seq 1 "$REPS"); do
  for kind in $KINDS; do
    rev=$((rev + 1))
    case $kind in
      inplace-1) args=(--strategy in-place --batch 1) ;;
      inplace-2) args=(--strategy in-place --batch 2) ;;
      bluegreen) args=(--strategy blue-green) ;;
    esac
    "$BIN" plan web "v$rev" "${args[@]}" --json > "$D/plan.json"
    plan_ms=$(first duration_ms < "$D/plan.json")
    watch_ms=$(first early_exit_ms < "$D/plan.json")
    nb=$(first batches < "$D/plan.json")
    # The config's lower bound (no load, so drains take 0): per batch, the
    # runtime's watch for an immediate exit, beside which the checks run
    # (healthy after (healthy_threshold - 1) x interval past the first
    # probe), then min_healthy_time; blue/green adds each bake and the
    # retention.
    per=$(( watch_ms > (THRESHOLD - 1) * INTERVAL_MS ? watch_ms : (THRESHOLD - 1) * INTERVAL_MS ))
    per=$((per + MIN_HEALTHY_MS))
    if [ "$kind" = bluegreen ]; then b=$((per + BAKE_MS + RETENTION_MS)); else b=$((nb * per)); fi
    "$BIN" deploy web "v$rev" "${args[@]}" > "$D/deploy.out"
    id=$(grep -o 'web@[0-9]*' "$D/deploy.out" | head -1)
    # Blue/green's deploy returns once blue is retained: its report comes
    # when blue has gone.
    status=""
    for _ in $(seq 1 600); do
      "$BIN" report "$id" --json > "$D/report.json"
      status=$(grep -o '"status": "[a-z-]*"' "$D/report.json" | head -1 | cut -d'"' -f4)
      case $status in succeeded | rolled-back | failed) break ;; esac
      sleep 0.1
    done
    ms=$(first duration_ms < "$D/report.json")
    [ "$status" = succeeded ] || { echo "$id: $status, not succeeded; see: $BIN report $id" >&2; exit 1; }
    echo "round $round $kind ($id, v$rev): $ms ms; bound $b ms; plan $plan_ms ms" >&2
    measured[$kind]+="$ms "; planned[$kind]+="$plan_ms "; bound[$kind]=$b; batches[$kind]=$nb; last[$kind]=$id
  done
done
# Where the time went, in the daemon's words: the last deploy of each kind.
for kind in $KINDS; do echo "--- $kind: handoff report ${last[$kind]}" >&2; "$BIN" report "${last[$kind]}" >&2; done
stop_daemon
echo
echo "Load average at the start: $load (a shared 2-core machine: other work runs beside the bench)"
echo "Deploy time, 4 hosts x 1 instance (no load; interval ${INTERVAL_MS} ms, healthy_threshold $THRESHOLD, min_healthy_time ${MIN_HEALTHY_MS} ms, start watch ${watch_ms} ms; blue/green: one 50 % step, bake ${BAKE_MS} ms, retention ${RETENTION_MS} ms)"
printf '%-18s %8s %10s %10s %12s %7s   %s\n' strategy batches "bound ms" "plan ms" "measured ms" ratio "runs (ms)"
for kind in $KINDS; do
  m=$(echo "${measured[$kind]}" | median); p=$(echo "${planned[$kind]}" | median)
  r=$(awk -v a="$m" -v b="${bound[$kind]}" 'BEGIN{printf "%.2f", a/b}')
  [ "$kind" = bluegreen ] && batches[$kind]=-
  printf '%-18s %8s %10s %10s %12s %7s   %s\n' "$kind" "${batches[$kind]}" "${bound[$kind]}" "$p" "$m" "$r" "${measured[$kind]}"
  lines+="BENCH hosts_deploy strategy=$kind hosts=$HOSTS bound_ms=${bound[$kind]} plan_ms=$p measured_ms=$m ratio=$r"$'\n'
done

# 2. Control plane cost per remote instance, idle.
IDLE_INTERVAL_MS=1000
div() { awk -v a="$1" -v b="$2" -v f="${3:-%.2f}" 'BEGIN{printf f, a/b}'; }
echo
echo "Idle for $IDLE s once all healthy (health interval ${IDLE_INTERVAL_MS} ms, the default), CPU in ms per second:"
echo "daemon = handoff (with the calls it ran and reaped) + its live ssh children; host side = each host's sshd and status stream"
fmt='%-8s %9s %4s %7s %8s %8s %12s %9s %10s %7s %7s %8s %8s %7s %8s\n'
printf "$fmt" per_host instances ssh daemon handoff ssh_cpu per_instance per_host host_side rss_MB ssh_MB boot_ms logs_ms api_ms call_ms
for n in $PER_HOST; do
  D=$W/idle-$n; mkdir -p "$D"
  config "$D" "$n" $IDLE_INTERVAL_MS
  total=$((HOSTS * n))
  t0=$(now_ms)
  if ! start_daemon "$D" $total; then
    stop_daemon
    echo "$n per host: only $(cat "$D/healthy" 2>/dev/null || echo 0) of $total healthy after $BOOT_LIMIT s (see stderr); larger sizes skipped"
    lines+="BENCH hosts_idle per_host=$n instances=$total not_up=1"$'\n'
    break
  fi
  boot=$(( $(now_ms) - t0 ))
  sleep 2
  kids=$(tree "$pid" | grep -vx "$pid" | tr '\n' ' ')
  nssh=0; for k in $kids; do [ "$(cat "/proc/$k/comm" 2>/dev/null)" = ssh ] && nssh=$((nssh + 1)); done
  c0=$(cpu_ms $(tree "$pid")); k0=$(cpu_ms $kids); h0=$(cpu_ms $(host_pids)); s0=$(now_ms)
  sleep "$IDLE"
  c1=$(cpu_ms $(tree "$pid")); k1=$(cpu_ms $kids); h1=$(cpu_ms $(host_pids)); s1=$(now_ms)
  rss=$(rss_kb "$pid"); ssh_rss=$(rss_kb $(tree "$pid" | grep -vx "$pid"))
  # One remote call: the CLI -> the daemon -> ssh over the host's master ->
  # tail on the host; beside it a local API call (CLI -> daemon -> answer).
  logs=""; api=""
  for _ in $(seq 1 10); do
    a=$(now_ms); "$BIN" logs web web-1 -n 5 > /dev/null; logs+="$(( $(now_ms) - a )) "
    a=$(now_ms); "$BIN" status web > /dev/null; api+="$(( $(now_ms) - a )) "
  done
  logs_ms=$(echo "$logs" | median); api_ms=$(echo "$api" | median)
  # The floor of any remote call: an ssh client over h1's master running
  # `true` in the remote user's shell.
  call=""
  for _ in $(seq 1 10); do
    a=$(now_ms); ssh -o ControlPath="$D/state/ssh/h1.sock" -o ControlMaster=no -o BatchMode=yes h1 true < /dev/null; call+="$(( $(now_ms) - a )) "
  done
  call_ms=$(echo "$call" | median)
  stop_daemon
  secs=$(div $((s1 - s0)) 1000 %.3f)
  cps=$(div $((c1 - c0)) "$secs" %.1f); sps=$(div $((k1 - k0)) "$secs" %.1f)
  hps=$(div $((c1 - c0 - k1 + k0)) "$secs" %.1f)
  per_inst=$(div "$cps" "$total"); per_host=$(div "$cps" "$HOSTS")
  hside=$(div $((h1 - h0)) "$(awk -v s="$secs" -v n="$HOSTS" 'BEGIN{print s * n}')")
  printf "$fmt" "$n" "$total" "$nssh" "$cps" "$hps" "$sps" "$per_inst" "$per_host" "$hside" \
    "$(div "$rss" 1024 %.1f)" "$(div "$ssh_rss" 1024 %.1f)" "$boot" "$logs_ms" "$api_ms" "$call_ms"
  lines+="BENCH hosts_idle per_host=$n instances=$total ssh_procs=$nssh daemon_cpu_ms_per_s=$cps ssh_cpu_ms_per_s=$sps cpu_ms_per_s_per_instance=$per_inst cpu_ms_per_s_per_host=$per_host host_side_ms_per_s_per_host=$hside rss_kb=$rss ssh_rss_kb=$ssh_rss boot_ms=$boot logs_ms=$logs_ms api_ms=$api_ms call_ms=$call_ms"$'\n'
done
# For comparison with logs_ms: a fresh ssh connection (handshake, no master).
fresh=""
for _ in $(seq 1 5); do
  a=$(now_ms)
  ssh -F /dev/null -o BatchMode=yes -o StrictHostKeyChecking=yes -o UserKnownHostsFile="$STATE/known_hosts" \
    -o IdentitiesOnly=yes -i "$STATE/client_key" -o LogLevel=ERROR root@10.77.250.11 true < /dev/null
  fresh+="$(( $(now_ms) - a )) "
done
echo "ssh: the daemon's ssh processes, one master + one status stream per host whatever the instance count."
echo "logs_ms: 'handoff logs web web-1' (over h1's master); api_ms: 'handoff status web' (local); call_ms: 'ssh h1 true'"
echo "over the daemon's master for h1 (ssh client + the remote user's shell: every remote call's floor); medians of 10."
rc=$(ssh -F /dev/null -o BatchMode=yes -o UserKnownHostsFile="$STATE/known_hosts" -o IdentitiesOnly=yes -i "$STATE/client_key" \
  -o LogLevel=ERROR root@10.77.250.11 'echo ${PYENV_ROOT:+pyenv} ${NVM_DIR:+nvm} ${CONDA_EXE:+conda}' < /dev/null || true)
[ -z "${rc// /}" ] || echo "Note: the remote user's shell start loads $rc on every ssh command (its ~/.bashrc): part of call_ms."
echo "A fresh ssh connection to h1 (handshake, no master): $(echo "$fresh" | median) ms (median of 5)."
echo
printf '%s' "$lines"

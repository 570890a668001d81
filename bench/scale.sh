#!/usr/bin/env bash
# Scale: boot and an in-place deploy (batch 50%) of N sample-app instances,
# for N in 10 50 200; wall time, time per instance and the daemon's CPU
# (control plane + proxy) per instance. Figures, not pass/fail.
#
#   bench/scale.sh                 # SIZES="10 50 200"
# One line per size: BENCH scale instances=N boot_ms=… deploy_ms=… deploy_ms_per_instance=… daemon_cpu_ms_per_instance=…
set -euo pipefail
cd "$(dirname "$0")/.."
SIZES=${SIZES:-"10 50 200"}
[ -x target/release/handoff ] || cargo build --release -p handoff >&2
BIN=$PWD/target/release/handoff
ulimit -n 65536 2>/dev/null || true
now_ms() { date +%s%3N; }
cpu_ms() { awk '{print ($14+$15)*10}' "/proc/$1/stat"; }  # clock ticks of 10 ms
for N in $SIZES; do
  W=$(mktemp -d)
  cat > "$W/handoff.toml" <<C
[server]
admin = "127.0.0.1:18960"
state_dir = "state"
[services.web]
listen = "127.0.0.1:18961"
revision = "v1"
instances = $N
command = "$BIN sample-app --port {port} --version {revision}"
[services.web.health]
interval = "500ms"
min_healthy_time = "0s"
healthy_deadline = "120s"
[services.web.in_place]
batch = "50%"
min_healthy = "50%"
C
  unset HANDOFF_ADMIN HANDOFF_TOKEN   # each daemon makes its own token
  t0=$(now_ms)
  HANDOFF_LOG=warn "$BIN" serve -c "$W/handoff.toml" > "$W/serve.out" 2> "$W/serve.err" &
  pid=$!
  for _ in $(seq 1 1200); do grep -q ready "$W/serve.out" 2>/dev/null && break; sleep 0.1; done
  export HANDOFF_ADMIN=http://127.0.0.1:18960 HANDOFF_TOKEN=$(cat "$W/state/token")
  for _ in $(seq 1 1200); do
    n=$("$BIN" status --json | grep -c '"state": "healthy"' || true)
    [ "$n" -ge "$N" ] && break; sleep 0.1
  done
  boot=$(( $(now_ms) - t0 ))
  c0=$(cpu_ms "$pid"); t1=$(now_ms)
  "$BIN" deploy web v2 > "$W/deploy.out"
  deploy=$(( $(now_ms) - t1 )); c1=$(cpu_ms "$pid")
  # Lower bound the config implies: per batch, a new instance needs
  # (healthy_threshold - 1) more probes after the immediate first one, at
  # 500 ms, plus min_healthy_time (0 here); no drain is needed without load.
  reported=$(grep -o 'report: [0-9]* ms' "$W/deploy.out" | grep -o '[0-9]*')
  bound=$((2 * 500))
  echo "$N instances: boot to all healthy $boot ms; deploy $deploy ms; $(grep '^report' "$W/deploy.out")" >&2
  echo "BENCH scale instances=$N boot_ms=$boot deploy_ms=$deploy deploy_ms_per_instance=$((deploy / N)) daemon_cpu_ms_per_instance=$(( (c1 - c0) / N )) overhead_ratio=$(awk -v a="$reported" -v b="$bound" 'BEGIN{printf "%.2f", a/b}')"
  kill "$pid"; wait "$pid" || true
  rm -rf "$W"
done

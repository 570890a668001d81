#!/usr/bin/env bash
# Runs handoff as a load balancer in front of two sample apps, sends a few
# requests through it, prints the metrics, and keeps serving until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${HANDOFF_BIN:-target/release/handoff}
[ -x "$BIN" ] || BIN=target/debug/handoff
[ -x "$BIN" ] || { echo "build first: cargo build --release" >&2; exit 1; }

pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

"$BIN" sample-app --port 9001 --version v1 --instance a & pids+=($!)
"$BIN" sample-app --port 9002 --version v1 --instance b & pids+=($!)
"$BIN" serve -c examples/static.toml & pids+=($!)

echo "waiting for both targets to pass their health checks..."
auth() { echo "Authorization: Bearer $(cat examples/.handoff/token 2>/dev/null)"; }
for _ in $(seq 1 100); do
  n=$(curl -s -H "$(auth)" http://127.0.0.1:9900/metrics 2>/dev/null | grep -c 'handoff_target_state{.*state="healthy"} 1' || true)
  [ "$n" = 2 ] && break
  sleep 0.1
done
for _ in 1 2 3 4; do curl -s http://127.0.0.1:8081/; done
echo
curl -s -H "$(auth)" http://127.0.0.1:9900/metrics | grep -E '^handoff_(requests_total|target_state).*(2xx|healthy)'
echo
echo "handoff is serving on http://127.0.0.1:8081 (metrics on :9900/metrics); Ctrl-C to stop"
wait "${pids[2]}"

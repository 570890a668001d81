#!/usr/bin/env bash
# Memory: resident set of the proxy holding N idle keep-alive client
# connections (default 10,000), handoff vs nginx (proxy_pass, upstream
# keepalive), measured in the same run. Figures, not pass/fail.
#
#   bench/memory.sh            # CONNS=10000, both modes
#   MODE=burst bench/memory.sh # one mode
# MODE burst: every request sent before any answer is read (up to N in
# flight at once); one-by-one: each answered before the next connection.
# One line per mode:
#   BENCH memory mode=… conns=N handoff_rss_kb=… nginx_rss_kb=… ratio=…
#     handoff_per_conn_b=… nginx_per_conn_b=… per_conn_ratio=…
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${MODE:-}" ]; then
  MODE=burst bash "$0"
  MODE=one-by-one bash "$0"
  exit
fi
CONNS=${CONNS:-10000}
. bench/lib.sh
install_missing nginx:nginx-light
[ -x target/release/handoff ] || cargo build --release -p handoff >&2
ulimit -n $((CONNS * 2 + 1000)) 2>/dev/null || ulimit -n "$(ulimit -Hn)"
BIN=$PWD/target/release/handoff
W=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for f in up ng; do [ -f "$W/$f.pid" ] && kill "$(cat "$W/$f.pid")" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$W"
}
trap cleanup EXIT
UP=18970; HANDOFF=18971; NGINX=18972
cat > "$W/up.conf" <<C
worker_processes 1; pid $W/up.pid; error_log $W/up.err warn;
events { worker_connections 4096; }
http { access_log off; server { listen 127.0.0.1:$UP; location / { return 200 "ok\n"; } } }
C
nginx -c "$W/up.conf" -p "$W"
cat > "$W/ng.conf" <<C
worker_processes $(nproc); pid $W/ng.pid; error_log $W/ng.err warn;
worker_rlimit_nofile $((CONNS * 2 + 1000));
events { worker_connections $((CONNS + 1000)); }
http {
  access_log off; keepalive_timeout 300s; keepalive_requests 1000000;
  upstream app { server 127.0.0.1:$UP; keepalive 512; }
  server { listen 127.0.0.1:$NGINX; location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; } }
}
C
nginx -c "$W/ng.conf" -p "$W"
cat > "$W/h.toml" <<C
[server]
admin = "127.0.0.1:18973"
state_dir = "$W/state"
[services.bench]
listen = "127.0.0.1:$HANDOFF"
targets = ["127.0.0.1:$UP"]
[services.bench.proxy]
idle_timeout = "300s"
C
HANDOFF_LOG=warn setsid "$BIN" serve -c "$W/h.toml" >/dev/null 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$HANDOFF/" >/dev/null 2>&1 && break; sleep 0.1; done

rss_of() { # sum of VmRSS (kB) of the given pids
  local t=0; for p in "$@"; do t=$((t + $(awk '/VmRSS/ {print $2}' "/proc/$p/status"))); done; echo $t
}
measure() { # name port pids...
  local name=$1 port=$2; shift 2
  local before; before=$(rss_of "$@")
  exec 3> >(python3 bench/idle_client.py "$port" "$CONNS" "$MODE" > "$W/$name.ready")
  for _ in $(seq 1 600); do grep -q ready "$W/$name.ready" 2>/dev/null && break; sleep 0.2; done
  # Idle for 2 s before measuring, both proxies alike: handoff parks a
  # connection after 250 ms of silence and returns freed memory at most
  # once a second (crates/proxy/src/fast/park.rs).
  sleep 2
  local after; after=$(rss_of "$@")
  echo "$name: $(cat "$W/$name.ready") idle connections; RSS ${before} kB before, ${after} kB with them ($(( (after - before) * 1024 / CONNS )) bytes per connection)" >&2
  exec 3>&-
  sleep 1
  echo "$before $after"
}
read -r hb h < <(measure handoff $HANDOFF "${pids[0]}")
ng_pids=$(pgrep -P "$(cat "$W/ng.pid")" | tr '\n' ' ')
read -r nb n < <(measure nginx $NGINX "$(cat "$W/ng.pid")" $ng_pids)
hp=$(( (h - hb) * 1024 / CONNS )); np=$(( (n - nb) * 1024 / CONNS ))
echo "BENCH memory mode=$MODE conns=$CONNS handoff_rss_kb=$h nginx_rss_kb=$n ratio=$(awk -v a="$h" -v b="$n" 'BEGIN{printf "%.2f", a/b}') handoff_per_conn_b=$hp nginx_per_conn_b=$np per_conn_ratio=$(awk -v a="$hp" -v b="$np" 'BEGIN{printf "%.2f", a/b}')"

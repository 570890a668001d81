#!/usr/bin/env bash
# Where a proxy's time goes: CPU per request and syscalls per request for
# handoff (fast path on and off), nginx and HAProxy, same upstream, same
# load.
#
#   bench/profile.sh                  # DURATION=8 CONNS=64
#   PERF=1 bench/profile.sh           # also `perf record -g` of handoff's
#                                     # workers, top symbols printed
#
# CPU per request: utime+stime of the proxy's processes (/proc) over a wrk
# run, divided by the requests wrk completed. Syscalls per request: a
# second, shorter run under `strace -c -f` (strace slows the proxy; the
# counts per request are what matter, not the rate). Loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
DURATION=${DURATION:-8}
CONNS=${CONNS:-64}
CORES=$(nproc)
install_missing wrk:wrk nginx:nginx-light strace:strace haproxy:haproxy
cargo build --release -p handoff >&2
BIN=$PWD/target/release/handoff
W=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for f in up ng ha; do [ -f "$W/$f.pid" ] && kill "$(cat "$W/$f.pid")" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$W"
}
trap cleanup EXIT
UP=18990; FAST=18991; HYPER=18992; NGINX=18993; HAPROXY=18994

upstream_nginx "$W" "$UP"
cat > "$W/ng.conf" <<C
worker_processes $CORES;
pid $W/ng.pid;
error_log $W/ng.err warn;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  upstream app { server 127.0.0.1:$UP; keepalive 512; }
  server { listen 127.0.0.1:$NGINX;
    location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
C
nginx -c "$W/ng.conf" -p "$W"
haproxy_cfg "$W/ha.cfg" "$HAPROXY" "$UP" "pidfile $W/ha.pid"
haproxy -D -f "$W/ha.cfg"
for mode in fast hyper; do
  port=$FAST; [ $mode = hyper ] && port=$HYPER
  on=true; [ $mode = hyper ] && on=false
  handoff_cfg "$W/$mode.toml" "$port" "$UP" "$W/state-$mode" "$on"
  HANDOFF_LOG=warn setsid "$BIN" serve -c "$W/$mode.toml" > "$W/$mode.out" 2>&1 &
  pids+=($!)
  echo $! > "$W/$mode.pid"
  for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$port/" >/dev/null 2>&1 && break; sleep 0.1; done
done
cat "$W/ng.pid" > "$W/nginx.master"
# nginx's workers are the master's children.
ng_pids() { echo "$(cat "$W/ng.pid") $(pgrep -P "$(cat "$W/ng.pid")" | tr '\n' ' ')"; }
ticks() { # summed utime+stime of the given pids, in clock ticks
  local t=0
  for p in "$@"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done
  echo $t
}
HZ=$(getconf CLK_TCK)
printf '%-14s %10s %12s %14s %16s\n' proxy req/s requests cpu_us/req syscalls/req
for name in handoff hyper nginx haproxy; do
  case $name in
    handoff) port=$FAST; ps="$(cat "$W/fast.pid")";;
    hyper) port=$HYPER; ps="$(cat "$W/hyper.pid")";;
    nginx) port=$NGINX; ps="$(ng_pids)";;
    haproxy) port=$HAPROXY; ps="$(cat "$W/ha.pid")";;
  esac
  wrk -t2 -c"$CONNS" -d2s "http://127.0.0.1:$port/" >/dev/null 2>&1
  # shellcheck disable=SC2086
  t0=$(ticks $ps)
  out=$(wrk -t2 -c"$CONNS" -d"${DURATION}s" "http://127.0.0.1:$port/" 2>&1)
  # shellcheck disable=SC2086
  t1=$(ticks $ps)
  reqs=$(awk '/requests in/ {print $1}' <<<"$out")
  rps=$(awk '/^Requests\/sec/ {printf "%.0f", $2}' <<<"$out")
  cpu=$(awk -v t=$((t1 - t0)) -v hz="$HZ" -v n="$reqs" 'BEGIN{printf "%.1f", t/hz*1e6/n}')
  # Syscalls: strace every process of the proxy for 3 s of load.
  # Every thread of every process (a worker is a thread).
  args=(); for p in $ps; do for t in /proc/"$p"/task/*; do args+=(-p "${t##*/}"); done; done
  strace -c -f "${args[@]}" -o "$W/$name.strace" 2>/dev/null &
  sp=$!
  sleep 1
  wrk -t2 -c"$CONNS" -d3s "http://127.0.0.1:$port/" > "$W/s.wrk" 2>&1
  kill -INT $sp 2>/dev/null || true
  wait $sp 2>/dev/null || true
  # Requests wrk completed while everything was traced.
  sreqs=$(awk '/requests in/ {print $1}' "$W/s.wrk")
  calls=$(awk '$NF=="total" {print $4}' "$W/$name.strace")
  per=$(awk -v c="$calls" -v n="$sreqs" 'BEGIN{printf "%.2f", c/n}')
  printf '%-14s %10s %12s %14s %16s\n' $name "$rps" "$reqs" "$cpu" "$per"
  echo "  per request: $(awk -v n="$sreqs" 'NR>2 && $NF!="total" && $NF!~/^-/ && $4/n >= 0.01 {printf "%s=%.2f ", $NF, $4/n}' "$W/$name.strace")"
  echo "BENCH profile proxy=$name conns=$CONNS rps=$rps cpu_us_per_req=$cpu syscalls_per_req=$per"
done
if [ "${PERF:-0}" = 1 ] && command -v perf >/dev/null; then
  wrk -t2 -c"$CONNS" -d6s "http://127.0.0.1:$FAST/" >/dev/null 2>&1 &
  wp=$!
  sleep 1
  perf record -g -o "$W/perf.data" -p "$(cat "$W/fast.pid")" -- sleep 4 >/dev/null 2>&1 || true
  wait $wp || true
  echo "perf: kernel vs user"
  perf report -i "$W/perf.data" --no-children --sort dso --stdio 2>/dev/null | grep -E '^ +[0-9]' | head -6
  echo "perf: top symbols in handoff"
  perf report -i "$W/perf.data" --no-children --dsos handoff --sort sym --percent-limit 0.4 --stdio 2>/dev/null \
    | grep -E '^ +[0-9]' | head -30
fi

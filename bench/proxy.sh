#!/usr/bin/env bash
# Proxy throughput and latency: handoff vs nginx vs HAProxy, same run, same
# upstream, alternating, at 64 and 256 connections.
#
#   bench/proxy.sh                 # DURATION=10 REPS=2 CONNS="64 256"
#   DURATION=5 REPS=1 bench/proxy.sh
#
# Prints a table and, last, one machine-readable line per connection count:
#   BENCH proxy conns=64 handoff_rps=... nginx_rps=... haproxy_rps=... ratio=... handoff_p99_ms=... best_peer_p99_ms=... fast_path_off_rps=... fast_path_gain=...
#   BENCH upload conns=64 body_bytes=65536 handoff_rps=... nginx_rps=... haproxy_rps=... ratio=... fast_path_off_rps=... fast_path_gain=...
# ratio = handoff req/s ÷ the better peer's req/s (goal ≥ 1.10, p99 no worse);
# fast_path_gain = handoff ÷ handoff with `fast_path = false`. The upload
# line: POSTs of UPLOAD_BYTES (default 64 KiB, above the fast path's 16 KiB
# for a body sent with its head, so streamed), nginx with
# `proxy_request_buffering off` so that it streams too; 0 skips it.
# Everything listens on 127.0.0.1 only. Figures, never pass/fail.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
DURATION=${DURATION:-10}
REPS=${REPS:-2}
CONNS=${CONNS:-"64 256"}
UPLOAD_BYTES=${UPLOAD_BYTES:-65536}
CORES=$(nproc)

install_missing wrk:wrk nginx:nginx-light haproxy:haproxy
# Always build: a stale binary would measure yesterday's proxy.
cargo build --release -p handoff >&2
BIN=$PWD/target/release/handoff

W=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -f "$W/up.pid" ] && kill "$(cat "$W/up.pid")" 2>/dev/null || true
  [ -f "$W/ng.pid" ] && kill "$(cat "$W/ng.pid")" 2>/dev/null || true
  [ -f "$W/ha.pid" ] && kill "$(cat "$W/ha.pid")" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$W"
}
trap cleanup EXIT

UP=18980; HANDOFF=18981; NGINX=18982; HAPROXY=18983; ADMIN=18984
# A second handoff with `fast_path = false` (every request through hyper):
# what the fast path gains, measured in the same rotation.
HYPER=18985; ADMIN2=18986

# The upstream: nginx answering a small body, as fast as it can.
cat > "$W/up.conf" <<C
worker_processes $CORES;
pid $W/up.pid;
error_log $W/up.err warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  server { listen 127.0.0.1:$UP; location / { return 200 "hello from upstream\n"; } }
}
C
nginx -c "$W/up.conf" -p "$W"

# nginx as a proxy: upstream keepalive, HTTP/1.1 to the upstream.
cat > "$W/ng.conf" <<C
worker_processes $CORES;
pid $W/ng.pid;
error_log $W/ng.err warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  upstream app { server 127.0.0.1:$UP; keepalive 512; }
  server {
    listen 127.0.0.1:$NGINX;
    client_max_body_size 0;
    proxy_request_buffering off;
    location / {
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
C
nginx -c "$W/ng.conf" -p "$W"

haproxy_cfg "$W/ha.cfg" "$HAPROXY" "$UP" "pidfile $W/ha.pid"
haproxy -D -f "$W/ha.cfg"

cat > "$W/handoff.toml" <<C
[server]
admin = "127.0.0.1:$ADMIN"
workers = $CORES
state_dir = "$W/state"
[services.bench]
listen = "127.0.0.1:$HANDOFF"
targets = ["127.0.0.1:$UP"]
[services.bench.proxy]
fast_path = true
C
# setsid: a session of its own, as under systemd and as nginx and HAProxy
# have once they daemonize. With the kernel's autogroup scheduling
# (sched_autogroup_enabled=1 here) CPU is shared fairly between sessions
# first; started without it, handoff shared one group with wrk while each
# peer had a group to itself (2026-12-02: p99 20-200 ms instead of 8-9 ms
# at 256 connections, the same binary).
HANDOFF_LOG=warn setsid "$BIN" serve -c "$W/handoff.toml" > "$W/handoff.out" 2>&1 &
pids+=($!)
cat > "$W/hyper.toml" <<C
[server]
admin = "127.0.0.1:$ADMIN2"
workers = $CORES
state_dir = "$W/state2"
[services.bench]
listen = "127.0.0.1:$HYPER"
targets = ["127.0.0.1:$UP"]
[services.bench.proxy]
fast_path = false
C
HANDOFF_LOG=warn setsid "$BIN" serve -c "$W/hyper.toml" > "$W/hyper.out" 2>&1 &
pids+=($!)
for p in $HANDOFF $HYPER; do
  for _ in $(seq 1 100); do
    curl -sf "http://127.0.0.1:$p/" >/dev/null 2>&1 && break
    sleep 0.1
  done
done
for p in $UP $HANDOFF $HYPER $NGINX $HAPROXY; do
  curl -sf "http://127.0.0.1:$p/" >/dev/null || { echo "port $p does not answer" >&2; exit 1; }
done

# run NAME PORT CONNS [WRK ARGS] -> "rps p50_ms p99_ms errors"
run() {
  local out rps p50 p99 errs
  out=$(wrk -t2 -c"$3" -d"${DURATION}s" --latency "${@:4}" "http://127.0.0.1:$2/" 2>&1)
  rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  errs=$(awk '/Non-2xx|Socket errors/ {s=s" "$0} END {print (s==""?"0":s)}' <<<"$out")
  echo "$rps $(ms "$p50") $(ms "$p99") $errs"
}
ms() { # wrk prints 1.23ms / 456.00us / 1.01s
  awk -v v="$1" 'BEGIN { if (v ~ /us$/) { sub(/us$/,"",v); print v/1000 } else if (v ~ /ms$/) { sub(/ms$/,"",v); print v+0 } else if (v ~ /s$/) { sub(/s$/,"",v); print v*1000 } else print v }'
}

# Warm every proxy's upstream pool.
for p in $HANDOFF $HYPER $NGINX $HAPROXY; do wrk -t2 -c256 -d2s "http://127.0.0.1:$p/" >/dev/null 2>&1; done

echo "direct to upstream (the ceiling), 64 conns: $(run upstream $UP 64 | awk '{print $1" req/s"}')"
printf '%-8s %6s %4s %12s %9s %9s  %s\n' proxy conns rep req/s p50_ms p99_ms errors
declare -A sum p99s
for c in $CONNS; do
  for r in $(seq 1 "$REPS"); do
    for name in handoff hyper nginx haproxy; do
      case $name in handoff) port=$HANDOFF;; hyper) port=$HYPER;; nginx) port=$NGINX;; haproxy) port=$HAPROXY;; esac
      read -r rps p50 p99 errs <<<"$(run $name $port $c)"
      printf '%-8s %6s %4s %12s %9s %9s  %s\n' $name $c $r "$rps" "$p50" "$p99" "$errs"
      sum[$name,$c]=$(awk -v a="${sum[$name,$c]:-0}" -v b="$rps" 'BEGIN{print a+b}')
      p99s[$name,$c]=$(awk -v a="${p99s[$name,$c]:-0}" -v b="$p99" 'BEGIN{print (b>a?b:a)}')
    done
  done
done
echo
for c in $CONNS; do
  h=$(awk -v s="${sum[handoff,$c]}" -v n="$REPS" 'BEGIN{printf "%.0f", s/n}')
  n=$(awk -v s="${sum[nginx,$c]}" -v n="$REPS" 'BEGIN{printf "%.0f", s/n}')
  a=$(awk -v s="${sum[haproxy,$c]}" -v n="$REPS" 'BEGIN{printf "%.0f", s/n}')
  if [ "$n" -ge "$a" ]; then best=$n; bp99=${p99s[nginx,$c]}; else best=$a; bp99=${p99s[haproxy,$c]}; fi
  ratio=$(awk -v h="$h" -v b="$best" 'BEGIN{printf "%.2f", h/b}')
  y=$(awk -v s="${sum[hyper,$c]}" -v n="$REPS" 'BEGIN{printf "%.0f", s/n}')
  gain=$(awk -v h="$h" -v y="$y" 'BEGIN{printf "%.2f", h/y}')
  echo "BENCH proxy conns=$c handoff_rps=$h nginx_rps=$n haproxy_rps=$a ratio=$ratio handoff_p99_ms=${p99s[handoff,$c]} best_peer_p99_ms=$bp99 fast_path_off_rps=$y fast_path_gain=$gain"
done

[ "$UPLOAD_BYTES" -gt 0 ] || exit 0
# Uploads: every request a POST with a body the fast path streams.
cat > "$W/post.lua" <<L
wrk.method = "POST"
wrk.body = string.rep("u", $UPLOAD_BYTES)
wrk.headers["Content-Type"] = "application/octet-stream"
L
echo
echo "uploads: POST of $UPLOAD_BYTES bytes, 64 conns"
printf '%-8s %6s %4s %12s %9s %9s  %s\n' proxy conns rep req/s p50_ms p99_ms errors
declare -A up
for r in $(seq 1 "$REPS"); do
  for name in handoff hyper nginx haproxy; do
    case $name in handoff) port=$HANDOFF;; hyper) port=$HYPER;; nginx) port=$NGINX;; haproxy) port=$HAPROXY;; esac
    read -r rps p50 p99 errs <<<"$(run $name $port 64 -s "$W/post.lua")"
    printf '%-8s %6s %4s %12s %9s %9s  %s\n' $name 64 $r "$rps" "$p50" "$p99" "$errs"
    up[$name]=$(awk -v a="${up[$name]:-0}" -v b="$rps" -v n="$REPS" 'BEGIN{print a+b/n}')
  done
done
best=$(awk -v n="${up[nginx]}" -v a="${up[haproxy]}" 'BEGIN{print (n>a?n:a)}')
printf 'BENCH upload conns=64 body_bytes=%s handoff_rps=%.0f nginx_rps=%.0f haproxy_rps=%.0f ratio=%.2f fast_path_off_rps=%.0f fast_path_gain=%.2f\n' \
  "$UPLOAD_BYTES" "${up[handoff]}" "${up[nginx]}" "${up[haproxy]}" \
  "$(awk -v h="${up[handoff]}" -v b="$best" 'BEGIN{print h/b}')" "${up[hyper]}" \
  "$(awk -v h="${up[handoff]}" -v y="${up[hyper]}" 'BEGIN{print h/y}')"

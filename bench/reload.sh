#!/usr/bin/env bash
# Requests lost while the proxy restarts itself: 10 reloads of nginx
# (`nginx -s reload`), 10 of HAProxy (master-worker, SIGUSR2 to the master)
# and 10 upgrades of handoff (`handoff upgrade`), each under the same wrk
# load (keep-alive connections, so every reload meets open connections).
#
#   bench/reload.sh                 # CONNS=64 RELOADS=10 EVERY=1
#
# Prints one line per proxy, then one machine-readable line:
#   BENCH reload n=10 handoff_failed=… nginx_failed=… haproxy_failed=… handoff_requests=…
# failed = wrk's socket errors (connect, read, write, timeout) + non-2xx.
# Everything listens on 127.0.0.1 only. Figures, never pass/fail.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
CONNS=${CONNS:-64}
RELOADS=${RELOADS:-10}
EVERY=${EVERY:-1}
CORES=$(nproc)
DURATION=$((RELOADS * EVERY + 3))

install_missing wrk:wrk nginx:nginx-light haproxy:haproxy
cargo build --release -q -p handoff >&2
BIN=$PWD/target/release/handoff

W=$(mktemp -d)
cleanup() {
  for f in up ng ha; do [ -f "$W/$f.pid" ] && kill "$(cat "$W/$f.pid")" 2>/dev/null || true; done
  [ -f "$W/handoff.pid" ] && kill "$(cat "$W/handoff.pid")" 2>/dev/null || true
  pkill -f "serve -c $W/handoff.toml" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$W"
}
trap cleanup EXIT

UP=18990; HANDOFF=18991; NGINX=18992; HAPROXY=18993; ADMIN=18994

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

cat > "$W/ng.conf" <<C
worker_processes $CORES;
pid $W/ng.pid;
error_log $W/ng.err warn;
events { worker_connections 4096; }
http {
  access_log off;
  upstream app { server 127.0.0.1:$UP; keepalive 512; }
  server {
    listen 127.0.0.1:$NGINX;
    location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
C
nginx -c "$W/ng.conf" -p "$W"

haproxy_cfg "$W/ha.cfg" "$HAPROXY" "$UP" "stats socket $W/ha.sock mode 600 level admin expose-fd listeners"
haproxy -W -D -p "$W/ha.pid" -f "$W/ha.cfg"

cat > "$W/handoff.toml" <<C
[server]
admin = "127.0.0.1:$ADMIN"
workers = $CORES
state_dir = "$W/state"
[services.bench]
listen = "127.0.0.1:$HANDOFF"
targets = ["127.0.0.1:$UP"]
C
HANDOFF_LOG=warn "$BIN" serve -c "$W/handoff.toml" > "$W/handoff.out" 2>&1 &
for _ in $(seq 1 100); do
  curl -sf "http://127.0.0.1:$HANDOFF/" >/dev/null 2>&1 && break
  sleep 0.1
done
for p in $UP $HANDOFF $NGINX $HAPROXY; do
  curl -sf "http://127.0.0.1:$p/" >/dev/null || { echo "port $p does not answer" >&2; exit 1; }
done

reload() {
  case $1 in
    nginx) nginx -s reload -c "$W/ng.conf" -p "$W" 2>/dev/null ;;
    haproxy) kill -USR2 "$(cat "$W/ha.pid")" ;;
    handoff) "$BIN" upgrade -c "$W/handoff.toml" >/dev/null ;;
  esac
}

# measure NAME PORT -> "requests failed"
measure() {
  local out
  wrk -t2 -c"$CONNS" -d"${DURATION}s" "http://127.0.0.1:$2/" > "$W/wrk.$1" 2>&1 &
  local w=$!
  sleep 1
  local done=0
  for _ in $(seq 1 "$RELOADS"); do
    if reload "$1"; then done=$((done + 1)); fi
    sleep "$EVERY"
  done
  wait $w
  out=$(cat "$W/wrk.$1")
  local reqs errs non2xx
  reqs=$(awk '/requests in/ {print $1}' <<<"$out")
  errs=$(awk '/Socket errors/ {gsub(",",""); print $4+$6+$8+$10}' <<<"$out")
  non2xx=$(awk '/Non-2xx/ {print $NF}' <<<"$out")
  echo "$reqs $(( ${errs:-0} + ${non2xx:-0} )) $done"
}

declare -A R F
printf '%-8s %8s %10s %8s\n' proxy reloads requests failed
for name in handoff nginx haproxy; do
  case $name in handoff) port=$HANDOFF;; nginx) port=$NGINX;; haproxy) port=$HAPROXY;; esac
  read -r reqs failed done < <(measure $name $port)
  R[$name]=$reqs; F[$name]=$failed
  printf '%-8s %8s %10s %8s\n' "$name" "$done/$RELOADS" "$reqs" "$failed"
done
echo "BENCH reload n=$RELOADS conns=$CONNS handoff_failed=${F[handoff]} nginx_failed=${F[nginx]} haproxy_failed=${F[haproxy]} handoff_requests=${R[handoff]} nginx_requests=${R[nginx]} haproxy_requests=${R[haproxy]}"

#!/usr/bin/env bash
# HTTPS: throughput on keep-alive connections, and the handshake rate
# (a new connection, so a full TLS handshake, for every request), handoff
# (rustls) vs nginx (OpenSSL), same certificate (ECDSA P-256), same upstream.
#
#   bench/https.sh                  # DURATION=10 CONNS=64
#
# Last line, machine-readable:
#   BENCH https conns=64 handoff_rps=… nginx_rps=… handoff_handshakes=… nginx_handshakes=… rps_ratio=… handshake_ratio=…
# Everything listens on 127.0.0.1 only. Figures, never pass/fail.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10}
CONNS=${CONNS:-64}
CORES=$(nproc)

. bench/lib.sh
install_missing wrk:wrk nginx:nginx-light openssl:openssl
cargo build --release -q -p handoff >&2
BIN=$PWD/target/release/handoff

W=$(mktemp -d)
cleanup() {
  for f in up ng; do [ -f "$W/$f.pid" ] && kill "$(cat "$W/$f.pid")" 2>/dev/null || true; done
  pkill -f "serve -c $W/handoff.toml" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$W"
}
trap cleanup EXIT

UP=18970; HANDOFF=18971; NGINX=18972; ADMIN=18974
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
  -keyout "$W/key.pem" -out "$W/cert.pem" -subj "/CN=bench.test" \
  -addext "subjectAltName=DNS:bench.test" 2>/dev/null

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
  keepalive_requests 1000000;
  upstream app { server 127.0.0.1:$UP; keepalive 512; }
  server {
    listen 127.0.0.1:$NGINX ssl;
    http2 on;
    ssl_certificate $W/cert.pem;
    ssl_certificate_key $W/key.pem;
    ssl_protocols TLSv1.2 TLSv1.3;
    location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
C
nginx -c "$W/ng.conf" -p "$W" 2>/dev/null || {
  # nginx before 1.25 spells http2 on the listen line.
  sed -i 's/ ssl;/ ssl http2;/; /http2 on;/d' "$W/ng.conf"
  nginx -c "$W/ng.conf" -p "$W"
}

cat > "$W/handoff.toml" <<C
[server]
admin = "127.0.0.1:$ADMIN"
workers = $CORES
state_dir = "$W/state"
[services.bench]
listen = "127.0.0.1:$HANDOFF"
targets = ["127.0.0.1:$UP"]
[services.bench.tls]
cert = "$W/cert.pem"
key = "$W/key.pem"
C
HANDOFF_LOG=warn setsid "$BIN" serve -c "$W/handoff.toml" > "$W/handoff.out" 2>&1 &
for _ in $(seq 1 100); do
  curl -skf "https://127.0.0.1:$HANDOFF/" >/dev/null 2>&1 && break
  sleep 0.1
done
for p in $HANDOFF $NGINX; do
  curl -skf "https://127.0.0.1:$p/" >/dev/null || { echo "port $p does not answer HTTPS" >&2; cat "$W/handoff.out" >&2; exit 1; }
done

# rps NAME PORT [HEADER] -> requests/s (errors to stderr)
rps() {
  local out
  out=$(wrk -t2 -c"$CONNS" -d"${DURATION}s" ${3:+-H "$3"} "https://127.0.0.1:$2/" 2>&1)
  grep -E "Socket errors|Non-2xx" <<<"$out" | sed "s/^/  $1: /" >&2 || true
  awk '/^Requests\/sec/ {printf "%.0f", $2}' <<<"$out"
}
for p in $HANDOFF $NGINX; do wrk -t2 -c64 -d2s "https://127.0.0.1:$p/" >/dev/null 2>&1; done
h_rps=$(rps handoff $HANDOFF); n_rps=$(rps nginx $NGINX)
h_hs=$(rps handoff $HANDOFF "Connection: close"); n_hs=$(rps nginx $NGINX "Connection: close")
printf '%-8s %14s %22s\n' proxy "keep-alive r/s" "handshakes/s (close)"
printf '%-8s %14s %22s\n' handoff "$h_rps" "$h_hs" nginx "$n_rps" "$n_hs"
echo "BENCH https conns=$CONNS handoff_rps=$h_rps nginx_rps=$n_rps handoff_handshakes=$h_hs nginx_handshakes=$n_hs rps_ratio=$(awk -v a="$h_rps" -v b="$n_rps" 'BEGIN{printf "%.2f", a/b}') handshake_ratio=$(awk -v a="$h_hs" -v b="$n_hs" 'BEGIN{printf "%.2f", a/b}')"

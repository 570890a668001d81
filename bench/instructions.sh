#!/usr/bin/env bash
# User-space instructions per request, counted by callgrind: handoff (fast
# path on and off), nginx and HAProxy, same upstream, same load.
#
#   bench/instructions.sh             # DURATION=8 CONNS=16
#   TOP=1 bench/instructions.sh       # also handoff's top functions
#
# Unlike time, an instruction count does not move with the machine's
# load, so it shows a change of a few percent that wall-clock figures on
# this noisy 2-core machine cannot. It counts user space only: the
# kernel's TCP and scheduling, four fifths of every proxy's CPU here
# (bench/profile.sh), are not in it. Each proxy runs under valgrind
# (about 50× slower), as many workers as cores; the upstream (nginx,
# `return 200`) runs natively. Loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
DURATION=${DURATION:-8}
CONNS=${CONNS:-16}
CORES=$(nproc)
install_missing wrk:wrk nginx:nginx-light haproxy:haproxy valgrind:valgrind
cargo build --release -p handoff >&2
BIN=$PWD/target/release/handoff
W=$(mktemp -d)
cleanup() {
  pkill -f "valgrind.*$W" 2>/dev/null || true
  [ -f "$W/up.pid" ] && kill "$(cat "$W/up.pid")" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$W"
}
trap cleanup EXIT
UP=18890; PORT=18891

upstream_nginx "$W" "$UP"

# The proxies, in the foreground (valgrind follows nginx's workers).
# Workers as root: valgrind's vgdb (callgrind_control) cannot reach
# processes of another user.
cat > "$W/ng.conf" <<C
daemon off;
user root;
worker_processes $CORES;
pid $W/ng.pid;
error_log $W/ng.err warn;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  upstream app { server 127.0.0.1:$UP; keepalive 512; }
  server { listen 127.0.0.1:$PORT;
    location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
C
haproxy_cfg "$W/ha.cfg" "$PORT" "$UP" ""
handoff_cfg "$W/fast.toml" "$PORT" "$UP" "$W/state-fast" true
handoff_cfg "$W/hyper.toml" "$PORT" "$UP" "$W/state-hyper" false

printf '%-10s %10s %16s\n' proxy requests instr/req
for name in handoff hyper nginx haproxy; do
  case $name in
    handoff) cmd=("$BIN" serve -c "$W/fast.toml");;
    hyper) cmd=("$BIN" serve -c "$W/hyper.toml");;
    nginx) cmd=(nginx -c "$W/ng.conf" -p "$W");;
    haproxy) cmd=(haproxy -db -f "$W/ha.cfg");;
  esac
  rm -f "$W"/cg.*
  HANDOFF_LOG=warn setsid valgrind --tool=callgrind --trace-children=yes --instr-atstart=no \
    --callgrind-out-file="$W/cg.%p" "${cmd[@]}" > "$W/$name.log" 2>&1 &
  vp=$!
  for _ in $(seq 1 300); do curl -sf "http://127.0.0.1:$PORT/" >/dev/null 2>&1 && break; sleep 0.2; done
  wrk -t1 -c"$CONNS" -d3s "http://127.0.0.1:$PORT/" >/dev/null 2>&1
  timeout 60 callgrind_control -i on >/dev/null 2>&1
  out=$(wrk -t1 -c"$CONNS" -d"${DURATION}s" "http://127.0.0.1:$PORT/" 2>&1)
  timeout 60 callgrind_control -d >/dev/null 2>&1
  timeout 60 callgrind_control -i off >/dev/null 2>&1
  pkill -f "valgrind.*$W" 2>/dev/null || true
  wait $vp 2>/dev/null || true
  reqs=$(awk '/requests in/ {print $1}' <<<"$out")
  # The dumps taken at the end of the measured run (cg.PID.N), of every
  # process (nginx: master and workers); what is written at exit is not.
  total=0
  for f in "$W"/cg.*.*; do
    [ -f "$f" ] || continue
    n=$(awk '/^summary:/ {print $2}' "$f")
    [[ "$n" =~ ^[0-9]+$ ]] || n=0
    total=$((total + n))
    if [ "$name" = handoff ] && [ "${TOP:-0}" = 1 ] && [ "$n" -gt 0 ]; then cp "$f" "$W/top.cg"; fi
  done
  per=$((total / reqs))
  printf '%-10s %10s %16s\n' $name "$reqs" "$per"
  echo "BENCH instructions proxy=$name conns=$CONNS requests=$reqs instr_per_req=$per"
done
if [ "${TOP:-0}" = 1 ] && [ -f "$W/top.cg" ]; then
  echo "handoff: functions by instructions (inclusive), per request"
  callgrind_annotate --inclusive=yes "$W/top.cg" 2>/dev/null | grep -E '^ *[0-9,]+ ' | sed -n 2,40p \
    | sed -E 's#/root/.cargo/registry/src/[^/]+/##; s#/rustc/[0-9a-f]+/library/##; s# \[[^]]*\]$##'
fi

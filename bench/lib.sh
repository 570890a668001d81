# Shared by the bench scripts (sourced, not run).

# install_missing COMMAND:PACKAGE...: installs, with apt-get, the Debian
# package of every command not found.
install_missing() {
  local missing=() cp
  for cp in "$@"; do command -v "${cp%%:*}" >/dev/null || missing+=("${cp#*:}"); done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]} from Debian..." >&2
    (apt-get install -y "${missing[@]}" || (apt-get update && apt-get install -y "${missing[@]}")) >/dev/null
  fi
}

# haproxy_cfg FILE LISTEN_PORT UPSTREAM_PORT GLOBAL_LINE: HAProxy as every
# benchmark runs it (one thread per core, connection reuse to the upstream);
# GLOBAL_LINE adds one setting to `global` (a pidfile, a stats socket).
haproxy_cfg() {
  cat > "$1" <<C
global
  nbthread $(nproc)
  maxconn 4000
  $4
defaults
  mode http
  timeout connect 3s
  timeout client 60s
  timeout server 60s
  http-reuse always
frontend fe
  bind 127.0.0.1:$2
  default_backend be
backend be
  server s1 127.0.0.1:$3
C
}

# upstream_nginx DIR PORT: starts the upstream that the proxies are
# measured in front of (nginx, `return 200`, one worker per core), its
# files in DIR (its pid in DIR/up.pid).
upstream_nginx() {
  cat > "$1/up.conf" <<C
worker_processes $(nproc);
pid $1/up.pid;
error_log $1/up.err warn;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:$2; location / { return 200 "hello from upstream\n"; } } }
C
  nginx -c "$1/up.conf" -p "$1"
}

# handoff_cfg FILE LISTEN_PORT UPSTREAM_PORT STATE_DIR FAST_PATH: handoff
# as the benchmarks run it (one worker per core, one service, one target;
# FAST_PATH true or false), its admin API on LISTEN_PORT + 100.
handoff_cfg() {
  cat > "$1" <<C
[server]
admin = "127.0.0.1:$(($2 + 100))"
workers = $(nproc)
state_dir = "$4"
[services.bench]
listen = "127.0.0.1:$2"
targets = ["127.0.0.1:$3"]
[services.bench.proxy]
fast_path = $5
C
}

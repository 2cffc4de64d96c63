#!/usr/bin/env bash
# Scale-out benchmark (docs/scaling.md; docs/benchmarks.md, "Scale-out"): Plexus with 1, 2
# and 3 processes on one fresh PostgreSQL database and one data folder, behind Debian's
# nginx doing round-robin, measured with plexus-bench (send and fanout) through nginx.
#
#   scripts/bench-scale.sh [--debug] [--counts "1 2 3"] [--out DIR] [-- EXTRA plexus-bench run FLAGS...]
#
# PostgreSQL: $BENCH_POSTGRES (default postgres://postgres@127.0.0.1:5432); each run gets a
# database plexus_bench_scale_<random>, dropped afterwards. Results: DIR/<n>p.json, .txt and
# DIR/comparison.md (DIR defaults to target/bench/scale-<date>).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
PROFILE=release; COUNTS="1 2 3"; OUT=""; EXTRA=()
while [ $# -gt 0 ]; do
  case "$1" in
    --debug) PROFILE=debug ;;
    --counts) COUNTS=$2; shift ;;
    --out) OUT=$2; shift ;;
    --) shift; EXTRA=("$@"); break ;;
    *) sed -n '2,11p' "$0"; exit 2 ;;
  esac
  shift
done
command -v nginx >/dev/null || { echo "nginx is needed (apt-get install nginx)"; exit 2; }
POSTGRES=${BENCH_POSTGRES:-postgres://postgres@127.0.0.1:5432}
OUT=${OUT:-target/bench/scale-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
REV=$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src migrations Cargo.toml Cargo.lock || echo "-dirty")
if [ $PROFILE = release ]; then
  cargo build --release --bin plexus --bin plexus-bench
else
  cargo build --bin plexus --bin plexus-bench
  REV="$REV-debug-build"
fi
PLEXUS=$ROOT/target/$PROFILE/plexus
BENCH=$ROOT/target/$PROFILE/plexus-bench

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

PIDS=(); DB=""; WORK=""
stop_all() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  done
  PIDS=()
  [ -n "$DB" ] && { psql "$POSTGRES/postgres" -qc "DROP DATABASE IF EXISTS $DB" >/dev/null || true; DB=""; }
  [ -n "$WORK" ] && { rm -rf "$WORK"; WORK=""; }
  # Run as the EXIT trap, the status of the test above would become the script's.
  return 0
}
trap stop_all EXIT
trap 'exit 130' INT TERM

for n in $COUNTS; do
  WORK=$(mktemp -d)
  DB=plexus_bench_scale_$(head -c 6 /dev/urandom | od -An -tx1 | tr -d ' \n')
  psql "$POSTGRES/postgres" -qc "CREATE DATABASE $DB" >/dev/null
  LB=$(free_port)
  UPSTREAM=""
  for i in $(seq "$n"); do
    port=$(free_port)
    UPSTREAM="$UPSTREAM    server 127.0.0.1:$port;"$'\n'
    (cd "$WORK" && PLEXUS_SERVER_NAME="127.0.0.1:$LB" PLEXUS_LISTEN="127.0.0.1:$port" \
      PLEXUS_DATABASE_URL="$POSTGRES/$DB" PLEXUS_DATA_DIR="$WORK" PLEXUS_REGISTRATION=open \
      PLEXUS_RATE_LIMITS=off PLEXUS_PRESENCE=off PLEXUS_LOG=warn exec "$PLEXUS" serve >"$WORK/server$i.log" 2>&1) &
    PIDS+=($!)
    # One at a time: the first creates the schema and the signing key.
    for _ in $(seq 600); do
      curl -sf "http://127.0.0.1:$port/_matrix/client/versions" >/dev/null 2>&1 && break
      sleep 0.1
    done
  done
  cat > "$WORK/nginx.conf" <<NGINX
daemon off;
worker_processes 1;
pid $WORK/nginx.pid;
error_log $WORK/nginx.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $WORK/nginx-body;
  proxy_temp_path $WORK/nginx-proxy;
  upstream plexus {
$UPSTREAM    keepalive 64;
  }
  server {
    listen 127.0.0.1:$LB;
    client_max_body_size 100m;
    location / {
      proxy_pass http://plexus;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_read_timeout 120s;
    }
  }
}
NGINX
  nginx -c "$WORK/nginx.conf" -p "$WORK" &
  PIDS+=($!)
  sleep 0.5
  echo "== $n process(es) behind nginx on 127.0.0.1:$LB"
  "$BENCH" run --hs "http://127.0.0.1:$LB" --label "plexus-postgres-${n}p" --revision "$REV" \
    --scenarios send,fanout --json "$OUT/${n}p.json" "${EXTRA[@]}" | tee "$OUT/${n}p.txt"
  stop_all
done
"$BENCH" compare "$OUT"/*p.json | tee "$OUT/comparison.md"

#!/usr/bin/env bash
# Runs plexus-bench's federation scenario between two Plexus servers on this machine (release
# build of this working copy, SQLite): A on 127.0.0.1, B on 127.0.0.2, each serving the
# federation API over TLS with a self-signed certificate (outbound verification off, as in
# the acceptance suite's federation run). A user of B joins a room of A; the tool measures
# the join, the end-to-end latency of messages one at a time, and a burst.
#
#   scripts/bench-federation.sh [--out DIR] [-- EXTRA plexus-bench run FLAGS...]
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
OUT=""; EXTRA=()
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT=$2; shift ;;
    --) shift; EXTRA=("$@"); break ;;
    *) sed -n '2,8p' "$0"; exit 2 ;;
  esac
  shift
done
OUT=${OUT:-target/bench/federation-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
cargo build --release --bin plexus --bin plexus-bench
PLEXUS=$ROOT/target/release/plexus
BENCH=$ROOT/target/release/plexus-bench

free_port() {  # ip
  python3 -c 'import socket,sys; s=socket.socket(); s.bind((sys.argv[1], 0)); print(s.getsockname()[1]); s.close()' "$1"
}

PIDS=()
stop_all() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  done
}
trap stop_all EXIT
trap 'exit 130' INT TERM

start() {  # name ip -> sets URL_<name>, PID_<name>
  local name=$1 ip=$2 work="$OUT/$1" client fed
  mkdir -p "$work"
  client=$(free_port "$ip"); fed=$(free_port "$ip")
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=$ip" -addext "subjectAltName=IP:$ip" \
    -keyout "$work/tls.key" -out "$work/tls.crt" 2>/dev/null
  (cd "$work" && PLEXUS_SERVER_NAME="$ip:$fed" PLEXUS_LISTEN="$ip:$client" PLEXUS_FEDERATION_LISTEN="$ip:$fed" \
    PLEXUS_TLS_CERT="$work/tls.crt" PLEXUS_TLS_KEY="$work/tls.key" PLEXUS_FEDERATION_INSECURE_TLS=true \
    PLEXUS_DATABASE_URL="sqlite://$work/plexus.db" PLEXUS_DATA_DIR="$work" PLEXUS_REGISTRATION=open \
    PLEXUS_RATE_LIMITS=off PLEXUS_LOG=warn exec "$PLEXUS" serve >"$work/server.log" 2>&1) &
  PIDS+=($!)
  printf -v "PID_$name" '%s' "$!"
  printf -v "URL_$name" '%s' "http://$ip:$client"
  for _ in $(seq 300); do
    curl -sf "http://$ip:$client/_matrix/client/versions" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "$name did not come up; see $work/server.log"; exit 1
}

start a 127.0.0.1
start b 127.0.0.2
echo "A: $URL_a (pid $PID_a), B: $URL_b (pid $PID_b), results in $OUT"
"$BENCH" run --hs "$URL_a" --pid "$PID_a" --hs2 "$URL_b" --pid2 "$PID_b" --scenarios federation \
  --json "$OUT/plexus-federation.json" "${EXTRA[@]}" | tee "$OUT/plexus-federation.txt"

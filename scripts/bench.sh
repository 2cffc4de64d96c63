#!/usr/bin/env bash
# Runs plexus-bench against Plexus on SQLite, Plexus on PostgreSQL and (optionally) Synapse,
# one after the other on this machine, and prints the results side by side (Markdown).
#
#   scripts/bench.sh [--quick] [--synapse] [--only "plexus-sqlite plexus-postgres synapse"]
#                    [--debug] [--out DIR] [-- EXTRA plexus-bench run FLAGS...]
#
# Plexus is built in release mode from this working copy (--debug: debug build, for trying
# the script out; its figures mean nothing). PostgreSQL: a fresh database on
# $BENCH_POSTGRES (default postgres://postgres@127.0.0.1:5432), dropped afterwards. Synapse:
# installed from PyPI into a scratch virtualenv ($BENCH_VENV), SQLite, rate limits off.
# Results: DIR/<target>.json, DIR/<target>.txt, DIR/comparison.md (DIR defaults to
# target/bench/<date>).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
QUICK=""; SYNAPSE=0; PROFILE=release; ONLY=""; OUT=""; EXTRA=()
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=--quick ;;
    --synapse) SYNAPSE=1 ;;
    --debug) PROFILE=debug ;;
    --only) ONLY=$2; shift ;;
    --out) OUT=$2; shift ;;
    --) shift; EXTRA=("$@"); break ;;
    *) sed -n '2,13p' "$0"; exit 2 ;;
  esac
  shift
done
TARGETS="plexus-sqlite plexus-postgres"
[ $SYNAPSE = 1 ] && TARGETS="$TARGETS synapse"
TARGETS=${ONLY:-$TARGETS}
POSTGRES=${BENCH_POSTGRES:-postgres://postgres@127.0.0.1:5432}
VENV=${BENCH_VENV:-$HOME/.cache/plexus-bench/venv}
SYNAPSE_PIN="matrix-synapse==1.163.2"
OUT=${OUT:-target/bench/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
REV=$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src migrations Cargo.toml Cargo.lock || echo "-dirty")

echo "building $PROFILE binaries (revision $REV)"
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

wait_up() {  # url pid
  for _ in $(seq 600); do
    kill -0 "$2" 2>/dev/null || { echo "server process $2 exited"; return 1; }
    curl -sf "$1/_matrix/client/versions" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "server at $1 did not come up in 60 s"; return 1
}

SERVER_PID=""; DROP_DB=""
stop_server() {
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill "$SERVER_PID"
    for _ in $(seq 100); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$SERVER_PID" 2>/dev/null || true
  fi
  SERVER_PID=""
  if [ -n "$DROP_DB" ]; then
    psql "$POSTGRES/postgres" -qc "DROP DATABASE IF EXISTS $DROP_DB" >/dev/null || true
    DROP_DB=""
  fi
}
trap stop_server EXIT
trap 'exit 130' INT TERM

start_plexus() {  # work dir, database URL
  local port; port=$(free_port)
  (cd "$1" && PLEXUS_SERVER_NAME="127.0.0.1:$port" PLEXUS_LISTEN="127.0.0.1:$port" PLEXUS_DATABASE_URL="$2" \
    PLEXUS_DATA_DIR="$1" PLEXUS_REGISTRATION=open PLEXUS_RATE_LIMITS=off PLEXUS_PRESENCE=off PLEXUS_LOG=warn \
    exec "$PLEXUS" serve >"$1/server.log" 2>&1) &
  SERVER_PID=$!
  HS="http://127.0.0.1:$port"
}

start_synapse() {  # work dir
  local work=$1 port secret
  port=$(free_port)
  secret=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
  if ! "$VENV/bin/python" -c 'import synapse' 2>/dev/null; then
    [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
    echo "installing $SYNAPSE_PIN into $VENV"
    "$VENV/bin/python" -m pip install -q "$SYNAPSE_PIN"
  fi
  # The acceptance suite's Synapse configuration (shared/acceptance/run.sh), rate limits off.
  local rc='{per_second: 100000, burst_count: 1000000}'
  cat > "$work/homeserver.yaml" <<YAML
server_name: "127.0.0.1:$port"
pid_file: $work/homeserver.pid
public_baseurl: "http://127.0.0.1:$port/"
listeners:
  - port: $port
    bind_addresses: ['127.0.0.1']
    type: http
    tls: false
    x_forwarded: false
    resources:
      - names: [client, federation]
        compress: false
database:
  name: sqlite3
  args:
    database: $work/homeserver.db
media_store_path: $work/media_store
signing_key_path: $work/signing.key
registration_shared_secret: "$secret"
macaroon_secret_key: "$secret-m"
form_secret: "$secret-f"
report_stats: false
trusted_key_servers: []
suppress_key_server_warning: true
enable_registration: true
enable_registration_without_verification: true
# password hashing is set-up cost only (registration, login); never measured
bcrypt_rounds: 4
url_preview_enabled: false
presence:
  enabled: false
log_config: $work/log.yaml
rc_message: $rc
rc_registration: $rc
rc_login:
  address: $rc
  account: $rc
  failed_attempts: $rc
rc_joins:
  local: $rc
  remote: $rc
rc_joins_per_room: $rc
rc_invites:
  per_room: $rc
  per_user: $rc
  per_issuer: $rc
rc_room_creation: $rc
rc_3pid_validation: $rc
rc_media_create: $rc
rc_delayed_event_mgmt: $rc
rc_reports: $rc
rc_admin_redaction: $rc
YAML
  cat > "$work/log.yaml" <<YAML
version: 1
formatters: {precise: {format: '%(asctime)s %(levelname)s %(name)s %(message)s'}}
handlers: {file: {class: logging.FileHandler, formatter: precise, filename: $work/homeserver.log}}
root: {level: WARNING, handlers: [file]}
disable_existing_loggers: false
YAML
  (cd "$work" && "$VENV/bin/python" -m synapse.app.homeserver --config-path homeserver.yaml --generate-keys \
    >"$work/keys.log" 2>&1)
  (cd "$work" && exec "$VENV/bin/python" -m synapse.app.homeserver --config-path homeserver.yaml \
    >"$work/server.log" 2>&1) &
  SERVER_PID=$!
  HS="http://127.0.0.1:$port"
}

for target in $TARGETS; do
  work=$(mktemp -d "${TMPDIR:-/tmp}/plexus-bench-$target.XXXXXX")
  revision=$REV
  case "$target" in
    plexus-sqlite) start_plexus "$work" "sqlite://$work/plexus.db" ;;
    plexus-postgres)
      DROP_DB="plexus_bench_$(head -c 6 /dev/urandom | od -An -tx1 | tr -d ' \n')"
      psql "$POSTGRES/postgres" -qc "CREATE DATABASE $DROP_DB" >/dev/null
      start_plexus "$work" "$POSTGRES/$DROP_DB" ;;
    synapse)
      start_synapse "$work"
      revision=$("$VENV/bin/python" -c 'import synapse; print("synapse " + synapse.__version__)') ;;
    *) echo "unknown target $target"; exit 2 ;;
  esac
  wait_up "$HS" "$SERVER_PID" || { tail -20 "$work"/*.log; exit 1; }
  sleep 2  # let start-up work settle before the idle RSS is read
  echo "== $target (pid $SERVER_PID) at $HS, work dir $work"
  "$BENCH" run --hs "$HS" --pid "$SERVER_PID" --label "$target" --revision "$revision" $QUICK \
    --note "load average before: $(cut -d' ' -f1-3 /proc/loadavg)" \
    --json "$OUT/$target.json" "${EXTRA[@]}" | tee "$OUT/$target.txt"
  stop_server
  rm -rf "$work"
done

"$BENCH" compare $(for t in $TARGETS; do echo "$OUT/$t.json"; done) > "$OUT/comparison.md"
echo
cat "$OUT/comparison.md"
echo
echo "results in $OUT"

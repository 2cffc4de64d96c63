#!/usr/bin/env bash
# Soak: a steady client load against a release Plexus for a set time while its memory and
# file descriptors are sampled; fails when either grows.
#
#   scripts/soak.sh [--seconds N] [--warmup N] [--warmup-events N] [--postgres]
#                   [--senders N] [--syncers N] [--out DIR]
#
# Defaults: 600 s measured after a warm-up of at least 60 s and 25,000 messages sent, SQLite,
# 8 senders, 2 syncers. The warm-up lets the bounded caches fill: the event cache holds
# 20,000 events, and until it is full the RSS grows with it (about 6 KiB an event). The
# users and rooms are registered before the warm-up (argon2 hashing grows the heap on its
# own; no registration happens while measuring). The load: each sender sends messages in a
# closed loop into a shared room and a room of its own and pages back through /messages
# every tenth message; each syncer long-polls /sync (timeout 30 s) on the shared room.
# Every 5 s the server's VmRSS (/proc/PID/status) and open descriptors (/proc/PID/fd) are
# sampled. Fails when the RSS at the end is more than 10 % above the RSS after the warm-up,
# when the descriptors at the end exceed those after the warm-up (plus one per client
# connection, which may be between requests), or when any request failed.
# PLEXUS_BIN: a plexus binary to use instead of building target/release/plexus.
# Results: DIR/samples.csv and DIR/summary.txt (DIR defaults to target/soak/<date>).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
SECONDS_MEASURED=600; WARMUP=60; WARMUP_EVENTS=25000; POSTGRES=0; SENDERS=8; SYNCERS=2; OUT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) SECONDS_MEASURED=$2; shift ;;
    --warmup) WARMUP=$2; shift ;;
    --warmup-events) WARMUP_EVENTS=$2; shift ;;
    --postgres) POSTGRES=1 ;;
    --senders) SENDERS=$2; shift ;;
    --syncers) SYNCERS=$2; shift ;;
    --out) OUT=$2; shift ;;
    *) sed -n '2,21p' "$0"; exit 2 ;;
  esac
  shift
done
OUT=${OUT:-target/soak/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
REV=$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src migrations Cargo.toml Cargo.lock || echo "-dirty")
if [ -z "${PLEXUS_BIN:-}" ]; then
  cargo build --release --bin plexus
  PLEXUS_BIN=$ROOT/target/release/plexus
fi

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')
WORK=$(mktemp -d)
DB_NAME=""
if [ $POSTGRES = 1 ]; then
  PG=${SOAK_POSTGRES:-postgres://postgres@127.0.0.1:5432}
  DB_NAME=plexus_soak_$RANDOM$RANDOM
  psql "$PG/postgres" -qc "CREATE DATABASE $DB_NAME" >/dev/null
  DATABASE=$PG/$DB_NAME
else
  DATABASE=sqlite://$WORK/plexus.db
fi
SERVER_PID=""; LOAD_PID=""
cleanup() {
  [ -n "$LOAD_PID" ] && kill "$LOAD_PID" 2>/dev/null || true
  if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi
  [ -n "$DB_NAME" ] && psql "$PG/postgres" -qc "DROP DATABASE IF EXISTS $DB_NAME" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

(cd "$WORK" && exec env PLEXUS_SERVER_NAME=127.0.0.1:$PORT PLEXUS_LISTEN=127.0.0.1:$PORT \
  PLEXUS_DATABASE_URL="$DATABASE" PLEXUS_DATA_DIR="$WORK" PLEXUS_REGISTRATION=open \
  PLEXUS_RATE_LIMITS=off PLEXUS_LOG=warn "$PLEXUS_BIN" serve >"$OUT/server.log" 2>&1) &
SERVER_PID=$!
for _ in $(seq 600); do
  curl -sf "http://127.0.0.1:$PORT/_matrix/client/versions" >/dev/null 2>&1 && break
  kill -0 $SERVER_PID 2>/dev/null || { echo "the server exited"; cat "$OUT/server.log"; exit 1; }
  sleep 0.1
done

# The load generator: sets up users and rooms, writes "ready" to its ready file, then runs
# until killed; counts requests and failures in its stats file.
python3 - "http://127.0.0.1:$PORT" "$SENDERS" "$SYNCERS" "$OUT" <<'EOF' &
import http.client, json, sys, threading, time, urllib.parse
base, senders, syncers, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
host = urllib.parse.urlparse(base).netloc
stats = {"requests": 0, "failures": 0, "sent": 0}
lock = threading.Lock()

class Client:
    def __init__(self, token=None):
        self.conn, self.token = http.client.HTTPConnection(host, timeout=60), token
    def call(self, method, path, body=None):
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = "Bearer " + self.token
        for attempt in range(2):
            try:
                self.conn.request(method, path, json.dumps(body) if body is not None else None, headers)
                resp = self.conn.getresponse()
                data = resp.read()
                break
            except (http.client.HTTPException, OSError):
                self.conn.close()
                self.conn = http.client.HTTPConnection(host, timeout=60)
                if attempt:
                    raise
        with lock:
            stats["requests"] += 1
            if resp.status != 200:
                stats["failures"] += 1
                print(f"{method} {path}: {resp.status} {data[:200]!r}", file=sys.stderr)
        return json.loads(data) if data else {}

def register(name):
    c = Client()
    body = {"username": name, "password": "soak-password"}
    # The first answer is the 401 that opens the user-interactive session.
    c.conn.request("POST", "/_matrix/client/v3/register", json.dumps(body), {"Content-Type": "application/json"})
    session = json.loads(c.conn.getresponse().read())["session"]
    body["auth"] = {"type": "m.login.dummy", "session": session}
    c.token = c.call("POST", "/_matrix/client/v3/register", body)["access_token"]
    return c

q = urllib.parse.quote
owner = register("soak-owner")
shared = owner.call("POST", "/_matrix/client/v3/createRoom", {"preset": "public_chat"})["room_id"]
users = [register(f"soak-sender-{i}") for i in range(senders)] + [register(f"soak-syncer-{i}") for i in range(syncers)]
for u in users:
    u.call("POST", f"/_matrix/client/v3/join/{q(shared)}", {})
flt = q(json.dumps({"room": {"rooms": [shared], "timeline": {"limit": 10}}}))

def send_loop(i, client):
    own = client.call("POST", "/_matrix/client/v3/createRoom", {})["room_id"]
    n = 0
    while True:
        n += 1
        room = shared if n % 2 else own
        client.call("PUT", f"/_matrix/client/v3/rooms/{q(room)}/send/m.room.message/s{n}",
                    {"msgtype": "m.text", "body": f"soak {i} message {n}"})
        with lock:
            stats["sent"] += 1
        if n % 10 == 0:
            client.call("GET", f"/_matrix/client/v3/rooms/{q(room)}/messages?dir=b&limit=20")

def sync_loop(client):
    since = client.call("GET", f"/_matrix/client/v3/sync?timeout=0&filter={flt}")["next_batch"]
    while True:
        since = client.call("GET", f"/_matrix/client/v3/sync?timeout=30000&since={since}&filter={flt}")["next_batch"]

for i, u in enumerate(users[:senders]):
    threading.Thread(target=send_loop, args=(i, u), daemon=True).start()
for u in users[senders:]:
    threading.Thread(target=sync_loop, args=(u,), daemon=True).start()
open(f"{out}/ready", "w").write("ready\n")
while True:
    time.sleep(5)
    with lock:
        open(f"{out}/stats.json", "w").write(json.dumps(stats))
EOF
LOAD_PID=$!
for _ in $(seq 1200); do
  [ -f "$OUT/ready" ] && break
  kill -0 $LOAD_PID 2>/dev/null || { echo "the load generator failed while setting up"; exit 1; }
  sleep 0.5
done
[ -f "$OUT/ready" ] || { echo "the load generator did not get ready"; exit 1; }

sample() {  # elapsed seconds -> "elapsed,rss_kib,fds"
  local rss fds
  rss=$(awk '/^VmRSS:/ {print $2}' /proc/$SERVER_PID/status)
  fds=$(ls /proc/$SERVER_PID/fd | wc -l)
  echo "$1,$rss,$fds"
}
echo "elapsed_s,rss_kib,fds" >"$OUT/samples.csv"
echo "soak: revision $REV, $( [ $POSTGRES = 1 ] && echo PostgreSQL || echo SQLite )," \
  "warm-up ${WARMUP}s and $WARMUP_EVENTS messages, measured ${SECONDS_MEASURED}s"
START=$(date +%s)
BASE=""; END=""
sent() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1])).get("sent", 0))' "$OUT/stats.json" 2>/dev/null || echo 0; }
while [ -z "$END" ] || [ "$(date +%s)" -lt "$END" ]; do
  sleep 5
  kill -0 $SERVER_PID 2>/dev/null || { echo "the server died"; tail -20 "$OUT/server.log"; exit 1; }
  kill -0 $LOAD_PID 2>/dev/null || { echo "the load generator died"; exit 1; }
  line=$(sample $(( $(date +%s) - START )))
  echo "$line" >>"$OUT/samples.csv"
  if [ -z "$BASE" ] && [ $(( $(date +%s) - START )) -ge "$WARMUP" ] && [ "$(sent)" -ge "$WARMUP_EVENTS" ]; then
    BASE=$line
    END=$(( $(date +%s) + SECONDS_MEASURED ))
    echo "after warm-up ($(sent) messages): $line"
  fi
done
LAST=$line
kill $LOAD_PID 2>/dev/null || true; wait $LOAD_PID 2>/dev/null || true; LOAD_PID=""

python3 - "$OUT" "$BASE" "$LAST" "$((SENDERS + SYNCERS))" "$REV" <<'EOF'
import csv, json, sys
out, base, last, clients, rev = sys.argv[1], sys.argv[2].split(","), sys.argv[3].split(","), int(sys.argv[4]), sys.argv[5]
rows = list(csv.DictReader(open(f"{out}/samples.csv")))
stats = json.load(open(f"{out}/stats.json"))
rss0, rss1, fd0, fd1 = int(base[1]), int(last[1]), int(base[2]), int(last[2])
peak = max(int(r["rss_kib"]) for r in rows)
growth = (rss1 - rss0) / rss0 * 100
verdict = []
if growth > 10: verdict.append(f"RSS grew {growth:.1f} % (> 10 %)")
if fd1 > fd0 + clients: verdict.append(f"descriptors grew from {fd0} to {fd1}")
if stats["failures"]: verdict.append(f"{stats['failures']} requests failed")
summary = (f"revision {rev}: {stats['requests']} requests ({stats['sent']} messages), {stats['failures']} failed; "
           f"RSS {rss0} KiB after warm-up, {rss1} KiB at the end ({growth:+.1f} %), peak {peak} KiB; "
           f"descriptors {fd0} -> {fd1}; " + ("FAIL: " + "; ".join(verdict) if verdict else "PASS"))
print(summary)
open(f"{out}/summary.txt", "w").write(summary + "\n")
sys.exit(1 if verdict else 0)
EOF

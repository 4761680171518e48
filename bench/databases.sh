#!/usr/bin/env bash
# The database engines under load: SQLite (the embedded default) against PostgreSQL and
# MariaDB, both started here with durable settings (PostgreSQL fsync and synchronous_commit
# on; InnoDB flushing its log at every commit), on 127.0.0.1:25420/25421.
#  1. REGISTER with digest auth (examples/regload.rs, RATE/s for SECONDS, after a warm-up):
#     switchboard's CPU per registration, REGISTER->200 latency, the database server's CPU,
#     and whether every binding reached the `location` table;
#  2. the foundation call rate (../shared/bench/run-calls.sh, CALL_RATE/s for SECONDS) with
#     [dialog] and [accounting] on, per engine, alternating, ROUNDS times: CPU per call,
#     failed calls, and whether every CDR reached `acc`.
#   bench/databases.sh [RATE=2000] [SECONDS=10] [CALL_RATE=2000] [ROUNDS=2]
# Build first: cargo build --release --bin switchboard --example regload.
# The proxy listens on 127.0.0.1:5060 (SIPp backends on 5080/5082, management on 8898);
# every process started here is stopped by PID.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd); ROOT=$(cd "$HERE/.." && pwd)
BENCH=$(cd "$ROOT/../shared/bench" && pwd)
SB=$ROOT/target/release/switchboard; LOADGEN=$ROOT/target/release/examples/regload
RATE=${1:-2000}; SECS=${2:-10}; CALL_RATE=${3:-2000}; ROUNDS=${4:-2}
WORK=$(mktemp -d /tmp/sb-dbbench.XXXXXX); chmod 755 "$WORK"
PIDS=()
trap 'for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done; sleep 0.5; for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null; wait "$p" 2>/dev/null; done; rm -rf "$WORK"' EXIT
[ -x "$SB" ] && [ -x "$LOADGEN" ] || { echo "build first: cargo build --release --bin switchboard --example regload"; exit 2; }
source "$ROOT/tests/e2e/dbservers.sh"
source <(sed -n '/^db_sql() {/,/^}/p' "$ROOT/tests/e2e/lib.sh")
busy() { ss -Hlun "sport = :$1" | grep -q . || ss -Hltn "sport = :$1" | grep -q .; }
for p in 5060 8898 25420 25421; do busy $p && { echo "port $p busy"; exit 2; }; done
start_postgres "$WORK/pg" 25420 on || exit 1
start_mariadb "$WORK/my" 25421 1 || exit 1

fresh() { # ENGINE NAME: an empty database; its URL
  case $1 in
    sqlite) rm -f "$WORK/$2.db"*; echo "sqlite://$WORK/$2.db" ;;
    postgres) db_sql "DROP DATABASE IF EXISTS $2" "$PG_URL" >/dev/null; db_sql "CREATE DATABASE $2" "$PG_URL" >/dev/null; echo "${PG_URL%/*}/$2" ;;
    mysql) db_sql "DROP DATABASE IF EXISTS $2; CREATE DATABASE $2" "$MY_URL" >/dev/null; echo "${MY_URL%/*}/$2" ;;
  esac
}
ticks() { # utime+stime of processes (and their children processes)
  local t=0 p
  for p in "$@" $(for q in "$@"; do pgrep -P "$q"; done 2>/dev/null); do
    t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0)))
  done
  echo $t
}
server_pid() { case $1 in postgres) echo "$PG_PID" ;; mysql) echo "$MY_PID" ;; *) echo "" ;; esac; }
field() { tr ' ' '\n' | sed -n "s/^$1=//p"; }
config() { # URL EXTRA
  cat > "$WORK/sb.toml" <<TOML
[sip]
listen = ["udp:127.0.0.1:5060"]
[dispatcher]
probe_interval_s = 0
[[dispatcher.set]]
id = 1
algorithm = "round-robin"
destinations = ["sip:127.0.0.1:5080", "sip:127.0.0.1:5082"]
[routing]
default_set = 1
[management]
listen = "127.0.0.1:8898"
token_file = "$WORK/switchboard.token"
[security]
allow = ["127.0.0.1/32"]
[database]
url = "$1"
[log]
level = "warn"
$2
TOML
}
start_sb() {
  "$SB" run --config "$WORK/sb.toml" >>"$WORK/sb.log" 2>&1 </dev/null &
  SB_PID=$!; PIDS+=($SB_PID)
  for _ in $(seq 100); do busy 5060 && return 0; sleep 0.1; done
  echo "switchboard did not start"; tail -5 "$WORK/sb.log"; exit 1
}
stop_sb() { kill -TERM $SB_PID 2>/dev/null; wait $SB_PID 2>/dev/null; }
hz=$(getconf CLK_TCK)

echo "== REGISTER with digest auth, $RATE/s x ${SECS}s (2 transactions each), location written behind"
n_users=$(( (RATE * SECS + 1000) ))
for engine in sqlite postgres mysql; do
  url=$(fresh $engine regbench)
  config "$url" "[registrar]
domains = [\"bench.example\"]
ping_interval_s = 0
auth_slow_after = 0
auth_ban_after = 0"
  start_sb; stop_sb # the tables
  case $engine in
    sqlite) python3 - "${url#sqlite://}" "$n_users" <<'PY'
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
db.executemany("INSERT INTO subscriber (username, domain, password) VALUES (?, 'bench.example', 'bench')", ((f"user{i}",) for i in range(int(sys.argv[2]))))
db.commit()
PY
    ;;
    postgres) db_sql "INSERT INTO subscriber (username, domain, password) SELECT 'user' || i, 'bench.example', 'bench' FROM generate_series(0, $((n_users - 1))) AS i" "$url" ;;
    mysql) db_sql "INSERT INTO subscriber (username, domain, password) SELECT CONCAT('user', seq), 'bench.example', 'bench' FROM seq_0_to_$((n_users - 1))" "$url" ;;
  esac
  start_sb
  "$LOADGEN" 127.0.0.1:5060 500 1000 bench.example bench $((n_users - 1000)) >/dev/null # warm-up
  s0=$(ticks $SB_PID); d0=$(ticks $(server_pid $engine))
  line=$("$LOADGEN" 127.0.0.1:5060 "$RATE" $((RATE * SECS)) bench.example bench 0)
  s1=$(ticks $SB_PID); d1=$(ticks $(server_pid $engine))
  sleep 1.5
  rows=$(db_sql "SELECT count(*) FROM location" "$url")
  ok=$(echo "$line" | field ok)
  stop_sb
  echo "$engine $line switchboard_cpu_ms_per_reg=$(awk -v t=$((s1 - s0)) -v hz=$hz -v ok="$ok" 'BEGIN{printf "%.4f", t*1000/hz/ok}') db_server_cpu_ms_per_reg=$(awk -v t=$((d1 - d0)) -v hz=$hz -v ok="$ok" 'BEGIN{printf "%.4f", t*1000/hz/ok}') location_rows=$rows"
done

echo "== calls at $CALL_RATE/s x ${SECS}s with [dialog] and [accounting] on, alternating, $ROUNDS rounds"
for r in $(seq "$ROUNDS"); do
  for engine in sqlite postgres mysql; do
    url=$(fresh $engine callbench)
    config "$url" "[dialog]
enabled = true
[accounting]
enabled = true"
    start_sb; sleep 0.5
    PROXY_PID=$SB_PID "$BENCH/run-calls.sh" 127.0.0.1 5060 "$CALL_RATE" 3 >/dev/null 2>&1 # warm-up
    d0=$(ticks $(server_pid $engine))
    line=$(PROXY_PID=$SB_PID "$BENCH/run-calls.sh" 127.0.0.1 5060 "$CALL_RATE" "$SECS" 2>/dev/null | tail -1)
    d1=$(ticks $(server_pid $engine))
    sleep 1.5
    acc=$(db_sql "SELECT count(*) FROM acc" "$url")
    stop_sb
    ok=$(echo "$line" | field ok)
    echo "$engine round=$r ok=$ok failed=$(echo "$line" | field failed) p50_ms=$(echo "$line" | field p50_ms) p99_ms=$(echo "$line" | field p99_ms) proxy_cpu_ms_per_call=$(echo "$line" | field proxy_cpu_ms_per_call) db_server_cpu_ms_per_call=$(awk -v t=$((d1 - d0)) -v hz=$hz -v ok="${ok:-1}" 'BEGIN{printf "%.4f", t*1000/hz/ok}') acc_rows=$acc"
  done
done

#!/usr/bin/env bash
# The cluster on Redis against the embedded default, on this machine (Redis 7 from Debian,
# started here on 127.0.0.1:26379 without persistence, stopped by PID):
#  1. the foundation call rate (../shared/bench/run-calls.sh, CALL_RATE/s for SECONDS) with
#     [dialog] and [accounting] on (SQLite): one node alone, and one node of a cluster
#     (dialogs written to Redis at once and published), alternating, ROUNDS times: proxy CPU
#     per call, Redis CPU per call, failed calls, dialogs left in Redis after;
#  2. REGISTER with digest auth (examples/regload.rs) at RATE/s for SECONDS: through one node
#     alone, then through two cluster nodes at RATE/2 each (every binding written to Redis
#     and applied by the other node): CPU per registration of the nodes and of Redis, and
#     whether every binding reached the other node and Redis.
#   bench/cluster.sh [CALL_RATE=2000] [SECONDS=10] [ROUNDS=2] [RATE=2000]
# Build first: cargo build --release --bin switchboard --example regload.
# Ports: SIP 5060 and 5062, management 8898/8899, SIPp backends 5080/5082, Redis 26379.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd); ROOT=$(cd "$HERE/.." && pwd)
BENCH=$(cd "$ROOT/../shared/bench" && pwd)
SB=$ROOT/target/release/switchboard; LOADGEN=$ROOT/target/release/examples/regload
CALL_RATE=${1:-2000}; SECS=${2:-10}; ROUNDS=${3:-2}; RATE=${4:-2000}
RP=26379
WORK=$(mktemp -d /tmp/sb-clbench.XXXXXX); chmod 755 "$WORK"
PIDS=()
trap 'for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done; sleep 0.5; for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null; wait "$p" 2>/dev/null; done; rm -rf "$WORK"' EXIT
[ -x "$SB" ] && [ -x "$LOADGEN" ] || { echo "build first: cargo build --release --bin switchboard --example regload"; exit 2; }
command -v redis-server >/dev/null || { echo "redis-server is needed (apt install redis-server)"; exit 2; }
busy() { ss -Hlun "sport = :$1" | grep -q . || ss -Hltn "sport = :$1" | grep -q .; }
for p in 5060 5062 8898 8899 $RP; do busy $p && { echo "port $p busy"; exit 2; }; done
redis-server --bind 127.0.0.1 --port $RP --save '' --appendonly no --dir "$WORK" >"$WORK/redis.log" 2>&1 </dev/null &
REDIS_PID=$!; PIDS+=($REDIS_PID)
for _ in $(seq 50); do busy $RP && break; sleep 0.1; done
rcli() { redis-cli -p $RP "$@"; }
ticks() { # utime+stime of processes
  local t=0 p
  for p in "$@"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0))); done
  echo $t
}
field() { tr ' ' '\n' | sed -n "s/^$1=//p"; }
hz=$(getconf CLK_TCK)
per() { awk -v t="$1" -v hz="$hz" -v n="${2:-0}" 'BEGIN { printf "%.4f", (n > 0) ? t * 1000 / hz / n : 0 }'; }
# config NAME SIP_PORT MGMT_PORT DB CLUSTER_NODE_ID(0: none) EXTRA
config() {
  local cluster=""
  [ "$5" != 0 ] && cluster="[cluster]
node_id = $5
redis = \"redis://127.0.0.1:$RP\""
  cat > "$WORK/$1.toml" <<TOML
[sip]
listen = ["udp:127.0.0.1:$2"]
secret_file = "$WORK/switchboard.secret"
[dispatcher]
probe_interval_s = 0
[[dispatcher.set]]
id = 1
algorithm = "round-robin"
destinations = ["sip:127.0.0.1:5080", "sip:127.0.0.1:5082"]
[routing]
default_set = 1
[management]
listen = "127.0.0.1:$3"
token_file = "$WORK/switchboard.token"
[security]
allow = ["127.0.0.1/32"]
[database]
url = "sqlite://$WORK/$4.db"
[log]
level = "warn"
$6
$cluster
TOML
}
start_sb() { # NAME SIP_PORT: PID in SB_PID
  "$SB" run --config "$WORK/$1.toml" >>"$WORK/$1.log" 2>&1 </dev/null &
  SB_PID=$!; PIDS+=($SB_PID)
  for _ in $(seq 100); do busy "$2" && return 0; sleep 0.1; done
  echo "switchboard $1 did not start"; tail -5 "$WORK/$1.log"; exit 1
}
stop() { kill -TERM "$@" 2>/dev/null; wait "$@" 2>/dev/null; }
metric() { curl -s -m 2 "http://127.0.0.1:$1/metrics" -H "Authorization: Bearer $(cat "$WORK/switchboard.token")" | sed -n "s/^$2 \([0-9]*\)$/\1/p"; }

echo "== calls at $CALL_RATE/s x ${SECS}s with [dialog] and [accounting] on: alone and as a cluster node, alternating, $ROUNDS rounds"
for r in $(seq "$ROUNDS"); do
  for variant in alone cluster; do
    rm -f "$WORK"/calls.db*; rcli FLUSHALL >/dev/null
    id=0; [ $variant = cluster ] && id=1
    config calls 5060 8898 calls $id "[dialog]
enabled = true
[accounting]
enabled = true"
    start_sb calls 5060; sleep 0.5
    PROXY_PID=$SB_PID "$BENCH/run-calls.sh" 127.0.0.1 5060 "$CALL_RATE" 3 >/dev/null 2>&1 # warm-up
    r0=$(ticks $REDIS_PID)
    line=$(PROXY_PID=$SB_PID "$BENCH/run-calls.sh" 127.0.0.1 5060 "$CALL_RATE" "$SECS" 2>/dev/null | tail -1)
    r1=$(ticks $REDIS_PID)
    sleep 1.5
    left=$( [ $variant = cluster ] && rcli HLEN sb:dlg || echo -)
    stop $SB_PID
    ok=$(echo "$line" | field ok)
    echo "$variant round=$r ok=$ok failed=$(echo "$line" | field failed) p50_ms=$(echo "$line" | field p50_ms) p99_ms=$(echo "$line" | field p99_ms) proxy_cpu_ms_per_call=$(echo "$line" | field proxy_cpu_ms_per_call) redis_cpu_ms_per_call=$(per $((r1 - r0)) "$ok") dialogs_left_in_redis=$left"
  done
done

echo "== REGISTER with digest auth, $RATE/s x ${SECS}s: one node alone, then two cluster nodes at $((RATE / 2))/s each"
n_users=$((RATE * SECS + 2000))
REG="[registrar]
domains = [\"bench.example\"]
ping_interval_s = 0
auth_slow_after = 0
auth_ban_after = 0"
subscribers() { # DB: n_users subscribers
  python3 - "$WORK/$1.db" "$n_users" <<'PY'
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
db.executemany("INSERT INTO subscriber (username, domain, password) VALUES (?, 'bench.example', 'bench')", ((f"user{i}",) for i in range(int(sys.argv[2]))))
db.commit()
PY
}
rcli FLUSHALL >/dev/null
config alone 5060 8898 regalone 0 "$REG"
start_sb alone 5060; stop $SB_PID; subscribers regalone
start_sb alone 5060; A=$SB_PID
"$LOADGEN" 127.0.0.1:5060 500 1000 bench.example bench $((n_users - 1000)) >/dev/null # warm-up
a0=$(ticks $A)
line=$("$LOADGEN" 127.0.0.1:5060 "$RATE" $((RATE * SECS)) bench.example bench 0)
a1=$(ticks $A)
ok=$(echo "$line" | field ok)
echo "alone $line node_cpu_ms_per_reg=$(per $((a1 - a0)) "$ok") contacts=$(metric 8898 switchboard_registered_contacts)"
stop $A

config a 5060 8898 regcl 1 "$REG"; config b 5062 8899 regcl 2 "$REG"
start_sb a 5060; stop $SB_PID; subscribers regcl
start_sb a 5060; A=$SB_PID; start_sb b 5062; B=$SB_PID
"$LOADGEN" 127.0.0.1:5060 250 500 bench.example bench $((n_users - 1000)) >/dev/null # warm-up
"$LOADGEN" 127.0.0.1:5062 250 500 bench.example bench $((n_users - 500)) >/dev/null
a0=$(ticks $A); b0=$(ticks $B); r0=$(ticks $REDIS_PID)
half=$((RATE * SECS / 2))
"$LOADGEN" 127.0.0.1:5060 $((RATE / 2)) $half bench.example bench 0 >"$WORK/la.out" &
LA=$!
"$LOADGEN" 127.0.0.1:5062 $((RATE / 2)) $half bench.example bench $half >"$WORK/lb.out"
wait $LA
a1=$(ticks $A); b1=$(ticks $B); r1=$(ticks $REDIS_PID)
oka=$(field ok <"$WORK/la.out"); okb=$(field ok <"$WORK/lb.out"); ok=$((oka + okb))
want=$((RATE * SECS + 1000))
for _ in $(seq 50); do [ "$(metric 8898 switchboard_registered_contacts)" = $want ] && [ "$(metric 8899 switchboard_registered_contacts)" = $want ] && break; sleep 0.1; done
echo "cluster A: $(cat "$WORK/la.out")"
echo "cluster B: $(cat "$WORK/lb.out")"
echo "cluster ok=$ok nodes_cpu_ms_per_reg=$(per $((a1 - a0 + b1 - b0)) "$ok") redis_cpu_ms_per_reg=$(per $((r1 - r0)) "$ok") contacts_on_a=$(metric 8898 switchboard_registered_contacts) contacts_on_b=$(metric 8899 switchboard_registered_contacts) of $want aors_in_redis=$(rcli --scan --pattern 'sb:loc:*' | wc -l)"
stop $A $B

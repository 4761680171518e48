#!/usr/bin/env bash
# REGISTER with digest auth: switchboard's registrar against Kamailio as registrar, the same
# load (examples/regload.rs: one AOR per registration, REGISTER/401/REGISTER/200 — SIPp 3.6
# cannot vary the auth username per call), measured K S K S with the proxy's CPU from
# /proc; then the memory of 100,000 registrations in switchboard (RSS before and after).
#
#   bench/registrar.sh [RATE] [SECONDS]      default 2000 REGISTER/s (each 2 transactions) x 10 s
#   MEMORY_AORS=100000 bench/registrar.sh    the AOR count of the memory step (0 skips it)
#   CMP=0 skips the comparison; PERSIST=false runs switchboard without the location table
#
# Everything listens on 127.0.0.1:5060 (the proxy) and 127.0.0.1:8898 (management); every
# process started here is stopped by PID on exit.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
LOADGEN=$ROOT/target/release/examples/regload
RATE=${1:-2000}
DUR=${2:-10}
AORS=${MEMORY_AORS:-100000}
SB=$ROOT/target/release/switchboard
WORK=$(mktemp -d /tmp/sb-regbench.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; wait "$p" 2>/dev/null; done; rm -rf "$WORK"; }
trap cleanup EXIT
[ -n "${KEEP:-}" ] && trap 'for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done' EXIT
[ -x "$SB" ] && [ -x "$LOADGEN" ] || { echo "build first: cargo build --release --bin switchboard --example regload"; exit 2; }
busy() { ss -Hlun "sport = :$1" | grep -q .; }
for p in 5060 8898; do busy $p && { echo "port $p busy"; exit 2; }; done

users() { # N: subscribers user0..user(N-1), password "bench", straight into the table
  python3 - "$WORK/sb.db" "$1" <<'PY'
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
db.execute("""CREATE TABLE IF NOT EXISTS subscriber (id INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,
  username CHAR(64) DEFAULT '' NOT NULL, domain CHAR(64) DEFAULT '' NOT NULL, password CHAR(25) DEFAULT '' NOT NULL,
  email_address CHAR(64) DEFAULT NULL, ha1 CHAR(64) DEFAULT '' NOT NULL, ha1_sha256 CHAR(64) DEFAULT '' NOT NULL,
  ha1_sha512t256 CHAR(64) DEFAULT '' NOT NULL, rpid CHAR(255) DEFAULT NULL, CONSTRAINT subscriber_account_idx UNIQUE (username, domain))""")
db.executemany("INSERT OR IGNORE INTO subscriber (username, domain, password) VALUES (?, 'bench.example', 'bench')",
               ((f"user{i}",) for i in range(int(sys.argv[2]))))
db.commit()
PY
}
start_sb() {
  cat > "$WORK/sb.toml" <<TOML
[sip]
listen = ["udp:127.0.0.1:5060"]
[dispatcher]
probe_interval_s = 0
[[dispatcher.set]]
id = 1
algorithm = "round-robin"
destinations = ["sip:127.0.0.1:5080"]
[routing]
default_set = 1
[management]
listen = "127.0.0.1:8898"
token_file = "$WORK/switchboard.token"
[security]
allow = ["127.0.0.1/32"]              # the load generator (Kamailio's config has no pike either)
[database]
url = "sqlite://$WORK/sb.db"
[log]
level = "warn"
[registrar]
domains = ["bench.example"]
ping_interval_s = 0
auth_slow_after = 0
auth_ban_after = 0
auth = ${AUTH:-true}
persist = ${PERSIST:-true}
TOML
  "$SB" run --config "$WORK/sb.toml" >>"$WORK/sb.log" 2>&1 </dev/null &
  SB_PID=$!; PIDS+=($SB_PID)
  for _ in $(seq 100); do busy 5060 && return 0; sleep 0.1; done
  echo "switchboard did not start"; cat "$WORK/sb.log"; exit 1
}
start_k() {
  mkdir -p "$WORK/k"
  kamailio -f "$HERE/kamailio-registrar.cfg" -DD -E -m 1024 -M 32 -x tlsf -X tlsf -Y "$WORK/k" \
    -P "$WORK/k/kamailio.pid" -w "$WORK/k" -A "CHILDREN=4" -A "LISTEN=udp:127.0.0.1:5060" \
    -A "CTL_SOCK=\"unix:$WORK/k/ctl\"" 2>"$WORK/k.log" &
  K_PID=$!; PIDS+=($K_PID)
  for _ in $(seq 100); do busy 5060 && return 0; sleep 0.1; done
  echo "kamailio did not start"; tail "$WORK/k.log"; exit 1
}
stop() { kill -TERM "$1" 2>/dev/null; wait "$1" 2>/dev/null; for _ in $(seq 50); do busy 5060 || return 0; sleep 0.1; done; }
cpu_ticks() { # total utime+stime of a process and its children processes (threads included)
  local t=0 p
  for p in "$@" $(pgrep -P "$1" 2>/dev/null); do
    t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0)))
  done
  echo $t
}
FIRST=0
load() { # pid rate seconds -> "ok=.. failed=.. p50_ms=.. p99_ms=.. wall_s=.. cpu_ms_per_reg=.."
  local pid=$1 n=$(( $2 * $3 )) c0 c1 line ok
  c0=$(cpu_ticks "$pid")
  line=$("$LOADGEN" 127.0.0.1:5060 "$2" "$n" bench.example bench "$FIRST")
  c1=$(cpu_ticks "$pid")
  FIRST=$((FIRST + n))
  ok=$(echo "$line" | field ok)
  echo "$line cpu_ms_per_reg=$(awk -v t=$((c1 - c0)) -v hz="$(getconf CLK_TCK)" -v ok="$ok" 'BEGIN { printf "%.4f", (ok > 0) ? (t * 1000 / hz / ok) : 0 }')"
}
field() { tr ' ' '\n' | sed -n "s/^$1=//p"; }
rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }

if [ "${CMP:-1}" = 1 ]; then
users $(( (RATE * DUR + 1000) * 2 ))
echo "== REGISTER with digest auth, $RATE/s x ${DUR}s, K S K S (two transactions per registration)"
for round in 1 2; do
  FIRST=0; start_k; load $K_PID 500 2 >/dev/null; echo "kamailio    $(load $K_PID "$RATE" "$DUR")"; stop $K_PID
  FIRST=0; start_sb; load $SB_PID 500 2 >/dev/null; echo "switchboard $(load $SB_PID "$RATE" "$DUR")"; stop $SB_PID
done
fi

if [ "$AORS" -gt 0 ]; then
  echo "== memory: $AORS registrations in switchboard (no subscriber table loaded: auth off)"
  rm -f "$WORK/sb.db"*
  AUTH=false
  start_sb
  sleep 2
  before=$(rss_kb $SB_PID)
  FIRST=0; line=$(load $SB_PID 5000 $((AORS / 5000)))
  sleep 1
  after=$(rss_kb $SB_PID)
  n=$(curl -s -H "Authorization: Bearer $(cat "$WORK/switchboard.token")" http://127.0.0.1:8898/metrics | awk '/^switchboard_registered_contacts / {print $2}')
  sleep 50 # replies kept for retransmissions (32 s) and nonce counters (30 s) expire
  settled=$(rss_kb $SB_PID)
  echo "registered=$n ok=$(echo "$line" | field ok) rss_before_kb=$before rss_after_kb=$after rss_after_50s_kb=$settled bytes_per_registration=$(( (after - before) * 1024 / (n > 0 ? n : 1) )) after_50s=$(( (settled - before) * 1024 / (n > 0 ? n : 1) ))"
  stop $SB_PID
fi

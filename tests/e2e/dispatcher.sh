#!/usr/bin/env bash
# Dispatcher end-to-end tests with real SIPp peers on 127.0.0.1 (ports from E2E_BASE+200):
# weighted split, hash stickiness, a backend killed mid-run (failover, marked down within
# interval x threshold, back after restart), drain, OPTIONS probing, CLI refusals.
# Prints one line per case and "N passed, M failed"; exits non-zero on failure.
set -uo pipefail
source "$(dirname "$0")/lib.sh"
WORK=$(mktemp -d /tmp/sb-ds.XXXXXX)
BASE=$(( ${E2E_BASE:-35000} + 200 ))
P=$((BASE + 60)); B1=$((BASE + 80)); B2=$((BASE + 82)); B3=$((BASE + 84)); UACP=$((BASE + 70)); MGMT=$((BASE + 88))
MI="http://127.0.0.1:$MGMT/mi"
need_free $P $B1 $B2 $B3 $UACP $MGMT
need_binary

config() { # algorithm destinations-toml [probe-interval]
  cat > "$WORK/sb.toml" <<TOML
[sip]
listen = ["udp:127.0.0.1:$P"]
[dispatcher]
probe_interval_s = ${3:-1}
probe_threshold_down = 2
probe_threshold_up = 1
[[dispatcher.set]]
id = 1
algorithm = "$1"
destinations = [$2]
[routing]
default_set = 1
[management]
listen = "127.0.0.1:$MGMT"
token_file = "$WORK/switchboard.token"
[security]
# the suites' SIPp peers load the proxy from 127.0.0.1 (the flood defence has its own suite)
allow = ["127.0.0.1/32"]
TOML
}
start_sb() {
  "$SB" run --config "$WORK/sb.toml" >>"$WORK/sb.log" 2>&1 </dev/null &
  SB_PID=$!; PIDS+=($SB_PID)
  for _ in $(seq 50); do busy $P && return 0; sleep 0.1; done
  echo "switchboard did not start"; tail -5 "$WORK/sb.log"; exit 1
}
stop_sb() { kill -TERM $SB_PID 2>/dev/null; wait $SB_PID 2>/dev/null; }
start_uas() { # port [extra]
  local port=$1; shift
  sipp -sf "$SC/uas-rr.xml" -i 127.0.0.1 -p "$port" -aa -nostdin -trace_stat -stf "$WORK/uas-$port.csv" -fd 1 "$@" >"$WORK/uas-$port.out" 2>&1 </dev/null &
  PIDS+=($!); eval "UAS_$port=$!"
  for _ in $(seq 50); do busy "$port" && return 0; sleep 0.1; done
  echo "SIPp UAS on $port did not start"; exit 1
}
kill_uas() { for port in "$@"; do eval "kill -KILL \$UAS_$port" 2>/dev/null; eval "wait \$UAS_$port" 2>/dev/null; rm -f "$WORK/uas-$port.csv"; done; }
incoming() { col "$WORK/uas-$1.csv" 'IncomingCall(C)'; }
uac() { # calls rate hold_ms [extra]
  local n=$1 r=$2 d=$3; shift 3
  rm -f "$WORK/uac.csv"
  sipp 127.0.0.1:$P -sf "$SC/uac-rr.xml" -i 127.0.0.1 -p $UACP -r "$r" -m "$n" -l 1000 -d "$d" -nostdin -timeout 120s \
    -recv_timeout 10000 -trace_stat -stf "$WORK/uac.csv" -fd 1 "$@" >"$WORK/uac.out" 2>&1 </dev/null
}
ok_calls() { col "$WORK/uac.csv" 'SuccessfulCall(C)'; }
state_of() { # uri -> state
  "$SB" dispatcher list --json --mi "$MI" --token-file "$WORK/switchboard.token" 2>/dev/null | python3 -c "import json,sys; d=json.load(sys.stdin); print(next((x['state'] for s in d['sets'] for x in s['destinations'] if x['uri']=='$1'), 'none'))"
}

# ---- weights 1:3 over 4000 calls ---------------------------------------------------------
config weighted-round-robin "{ uri = \"sip:127.0.0.1:$B1\", weight = 1 }, { uri = \"sip:127.0.0.1:$B2\", weight = 3 }" 0
start_sb; start_uas $B1; start_uas $B2; sleep 0.3
uac 4000 400 0; rc=$?; sleep 1.5
a=$(incoming $B1); b=$(incoming $B2); ok=$(ok_calls)
share=$(awk -v a="$a" -v b="$b" 'BEGIN{ if (a+b>0) printf "%.3f", b/(a+b); else print 0 }')
awk -v s="$share" 'BEGIN{exit !(s>=0.7125 && s<=0.7875)}' && [ $rc = 0 ] && [ "$ok" = 4000 ]
result "weights 1:3 split within 5% over 4000 calls" $? "backends=$a:$b share=$share ok=$ok"
stop_sb; kill_uas $B1 $B2

# ---- hash stickiness ----------------------------------------------------------------------
# SIPp's caller sends the same From, To, R-URI and Subject on every call: each of these hashes
# must put all calls on one destination
for alg in hash-from hash-to hash-ruri hash-value; do
  config $alg "\"sip:127.0.0.1:$B1\", \"sip:127.0.0.1:$B2\", \"sip:127.0.0.1:$B3\"" 0
  [ $alg = hash-value ] && sed -i 's/^algorithm = "hash-value"$/algorithm = "hash-value"\nhash_header = "Subject"/' "$WORK/sb.toml"
  start_sb; start_uas $B1; start_uas $B2; start_uas $B3; sleep 0.3
  uac 150 100 0; rc=$?; sleep 1.2
  a=$(incoming $B1); b=$(incoming $B2); c=$(incoming $B3)
  max=$(printf '%s\n' $a $b $c | sort -n | tail -1)
  [ $rc = 0 ] && [ "$max" = 150 ]; result "$alg keeps one key on one destination" $? "backends=$a/$b/$c"
  stop_sb; kill_uas $B1 $B2 $B3
done

config hash-callid "\"sip:127.0.0.1:$B1\", \"sip:127.0.0.1:$B2\", \"sip:127.0.0.1:$B3\"" 0
start_sb; start_uas $B1; start_uas $B2; start_uas $B3; sleep 0.3
uac 300 100 0; rc=$?; sleep 1
a=$(incoming $B1); b=$(incoming $B2); c=$(incoming $B3)
[ $rc = 0 ] && [ "$a" -ge 50 ] && [ "$b" -ge 50 ] && [ "$c" -ge 50 ]; result "hash-callid spreads distinct calls" $? "backends=$a/$b/$c"
stop_sb; kill_uas $B1 $B2 $B3

# ---- kill one of three during a 50/s run; probing marks it down; restart brings it back ---
config round-robin "\"sip:127.0.0.1:$B1\", \"sip:127.0.0.1:$B2\", \"sip:127.0.0.1:$B3\"" 1
start_sb; start_uas $B1; start_uas $B2; start_uas $B3; sleep 2
s=$(state_of "sip:127.0.0.1:$B3"); rtt=$("$SB" dispatcher list --json --mi "$MI" --token-file "$WORK/switchboard.token" | python3 -c "import json,sys; d=json.load(sys.stdin); print(min(x['rtt_ms'] for s in d['sets'] for x in s['destinations']))")
[ "$s" = active ] && awk -v r="$rtt" 'BEGIN{exit !(r>0)}'; result "OPTIONS probes answered by SIPp UAS (-aa)" $? "state=$s min_rtt_ms=$rtt"
uac 1000 50 100 & UACPID=$!; PIDS+=($UACPID)
sleep 5; t_kill=$(date +%s%N); kill_uas $B3
down_ms=NA
for _ in $(seq 60); do
  if [ "$(state_of "sip:127.0.0.1:$B3")" = inactive ]; then down_ms=$(( ($(date +%s%N) - t_kill) / 1000000 )); break; fi
  sleep 0.1
done
wait $UACPID; rc=$?
ok=$(ok_calls); failed=$(col "$WORK/uac.csv" 'FailedCall(C)')
# interval 1 s x threshold 2, plus the probe timeout (1 s) and polling slack
[ "$down_ms" != NA ] && [ "$down_ms" -le 3500 ]; result "killed node marked down within interval x threshold" $? "down after ${down_ms}ms"
[ "$ok" -ge 995 ]; result "killing one of three at 50/s costs no new call" $? "ok=$ok failed=$failed (only calls in dialog on the dead node may fail)"
start_uas $B3; t_up=$(date +%s%N); up_ms=NA
for _ in $(seq 50); do
  if [ "$(state_of "sip:127.0.0.1:$B3")" = active ]; then up_ms=$(( ($(date +%s%N) - t_up) / 1000000 )); break; fi
  sleep 0.1
done
[ "$up_ms" != NA ]; result "restarted node comes back" $? "active again after ${up_ms}ms"

# ---- drain (probing off: SIPp -aa counts every answered OPTIONS as an incoming call) ----------
stop_sb; kill_uas $B1 $B2 $B3
config round-robin "\"sip:127.0.0.1:$B1\", \"sip:127.0.0.1:$B2\", \"sip:127.0.0.1:$B3\"" 0
start_sb; start_uas $B1; start_uas $B2; start_uas $B3; sleep 0.3
calls_on_b1() { "$SB" dispatcher list --json --mi "$MI" --token-file "$WORK/switchboard.token" | python3 -c "import json,sys; d=json.load(sys.stdin); print(next(x['calls'] for s in d['sets'] for x in s['destinations'] if x['uri']=='sip:127.0.0.1:$B1'))"; }
uac 300 50 2000 & UACPID=$!; PIDS+=($UACPID)
sleep 2
"$SB" dispatcher set-state --mi "$MI" --token-file "$WORK/switchboard.token" --set 1 --uri "sip:127.0.0.1:$B1" draining >/dev/null
left=$(calls_on_b1); maxseen=$left
# SIPp rewrites its stat file once a second: read the baseline once it has caught up
sleep 1.2; at_drain=$(incoming $B1)
while kill -0 $UACPID 2>/dev/null; do c=$(calls_on_b1); [ "$c" -gt "$maxseen" ] && maxseen=$c; sleep 0.2; done
wait $UACPID; rc=$?; sleep 1.2
after=$(incoming $B1); ok=$(ok_calls); done_b1=$(col "$WORK/uas-$B1.csv" 'SuccessfulCall(C)'); final=$(calls_on_b1)
[ $rc = 0 ] && [ "$ok" = 300 ] && [ "$after" = "$at_drain" ] && [ "$left" -ge 1 ] && [ "$maxseen" = "$left" ] && [ "$final" = 0 ] && [ "$done_b1" = "$at_drain" ]
result "draining node gets no new calls while its calls finish" $? "calls on it at drain=$left (never more, 0 at the end: $final); its INVITEs before=$at_drain after=$after; completed on it=$done_b1; caller ok=$ok"
metrics=$(mi_curl http://127.0.0.1:$MGMT/metrics)
echo "$metrics" | grep -q "switchboard_dispatcher_destination_up{set=\"1\",destination=\"sip:127.0.0.1:$B1\",state=\"draining\"} 0"
result "destination state exported as a metric" $? "$(echo "$metrics" | grep -c dispatcher_destination_up) series"

# ---- the OpenSIPS dispatcher table in SQLite -------------------------------------------------
stop_sb; kill_uas $B1 $B2 $B3
# the table as OpenSIPS creates it, on the suite's database (SQLite in $WORK, or the server
# tests/e2e/databases.sh runs it on)
DB=$(db_url); [ "$(db_engine)" = sqlite ] && DB="sqlite://$WORK/ds.db"
ddl=$(sed -n '/^CREATE TABLE dispatcher/,/;$/p' "$ROOT/tests/e2e/opensips-schema/$(db_engine).sql")
db_sql "DROP TABLE IF EXISTS dispatcher; $ddl" "$DB" || exit 1
db_sql "INSERT INTO dispatcher (setid, destination, description) VALUES (1, 'sip:127.0.0.1:$B1', 'fs1')" "$DB"
# SQLite takes text in an integer column (a row switchboard skips); the servers refuse it
hostile=0; db_sql "INSERT INTO dispatcher (setid, destination) VALUES ('one', 'sip:127.0.0.1:5999')" "$DB" 2>/dev/null && hostile=1
db_sql "INSERT INTO dispatcher (setid, destination, weight) VALUES (1, 'sip:127.0.0.1:5998', 'fs://x')" "$DB"
db_sql "INSERT INTO dispatcher (setid, destination, weight) VALUES (1, 'sip:127.0.0.1:$B2', '2')" "$DB"
cat > "$WORK/sb.toml" <<TOML
[sip]
listen = ["udp:127.0.0.1:$P"]
[database]
url = "$DB"
[dispatcher]
source = "database"
persist_state = true
probe_interval_s = 0
[[dispatcher.set]]
id = 1
algorithm = "weighted-round-robin"
[routing]
default_set = 1
[management]
listen = "127.0.0.1:$MGMT"
token_file = "$WORK/switchboard.token"
[security]
# the suites' SIPp peers load the proxy from 127.0.0.1 (the flood defence has its own suite)
allow = ["127.0.0.1/32"]
TOML
: > "$WORK/sb.log"; start_sb; start_uas $B1; start_uas $B2; start_uas $B3; sleep 0.3
n=$("$SB" dispatcher list --json --mi "$MI" --token-file "$WORK/switchboard.token" | python3 -c "import json,sys; d=json.load(sys.stdin); print(len(d['sets'][0]['destinations']))")
skipped=$(grep -c "dispatcher row skipped" "$WORK/sb.log")
[ "$n" = 2 ] && [ "$skipped" = $((1 + hostile)) ]; result "dispatcher table loads; bad rows reported and skipped" $? "$(db_engine): destinations=$n skipped=$skipped"
"$SB" dispatcher add --mi "$MI" --token-file "$WORK/switchboard.token" --set 1 --uri "sip:127.0.0.1:$B3" --description fs3 >/dev/null
"$SB" dispatcher set-state --mi "$MI" --token-file "$WORK/switchboard.token" --set 1 --uri "sip:127.0.0.1:$B1" draining >/dev/null; sleep 0.3
rows=$(db_sql "SELECT destination, state FROM dispatcher WHERE setid=1 ORDER BY id" "$DB" | tr '|\n' '=;')
echo "$rows" | grep -q "sip:127.0.0.1:$B3=0" && echo "$rows" | grep -q "sip:127.0.0.1:$B1=4"; result "CLI add and state changes are written to the table" $? "$rows"
stop_sb; start_sb
st=$(state_of "sip:127.0.0.1:$B1"); b3=$(state_of "sip:127.0.0.1:$B3")
uac 60 30 0; rc=$?; sleep 1.2; ok=$(ok_calls); a=$(incoming $B1)
[ "$st" = draining ] && [ "$b3" = active ] && [ $rc = 0 ] && [ "$ok" = 60 ] && [ "$a" = 0 ]
result "after a restart the table restores destinations and states" $? "b1=$st b3=$b3 ok=$ok calls_to_drained=$a"
"$SB" dispatcher remove --mi "$MI" --token-file "$WORK/switchboard.token" --set 1 --uri "sip:127.0.0.1:$B3" >/dev/null
left=$(db_sql "SELECT count(*) FROM dispatcher WHERE destination='sip:127.0.0.1:$B3'" "$DB")
[ "$left" = 0 ]; result "CLI remove deletes the row" $? "rows left=$left"

# ---- refusals through the CLI and the API -----------------------------------------------
out=$("$SB" dispatcher add --mi "$MI" --token-file "$WORK/switchboard.token" --set 1 --uri "sip:127.0.0.1:5999" --weight -1 2>&1); rc=$?
[ $rc = 1 ] && echo "$out" | grep -q "weight"; result "CLI refuses weight -1 by key" $? "$out"
out=$("$SB" dispatcher add --mi "$MI" --token-file "$WORK/switchboard.token" --set 1 --uri "sip:not a uri" 2>&1); rc=$?
[ $rc = 1 ] && echo "$out" | grep -q "uri"; result "CLI refuses a malformed URI" $? "$out"
out=$(mi_curl -X POST -d '{"jsonrpc":"2.0","id":1,"method":"dispatcher:set_state","params":{"state":"x","set":1,"destination":"sip:127.0.0.1:1"}}' $MI)
echo "$out" | grep -q "unknown state"; result "API refuses an unknown state" $? "$(echo "$out" | cut -c1-90)"
printf '1 sip:127.0.0.1:%s 0 0\nnot-a-set sip:x\n1 sip:127.0.0.1:%s 0 5 weight=2\n' $B1 $B2 > "$WORK/ds.list"
"$SB" dispatcher import-kamailio "$WORK/ds.list" > "$WORK/imported.toml" 2>"$WORK/import.err"; rc=$?
printf '[routing]\ndefault_set = 1\n' >> "$WORK/imported.toml"
[ $rc = 0 ] && grep -q "line 2" "$WORK/import.err" && "$SB" check --config "$WORK/imported.toml" >/dev/null
result "Kamailio dispatcher.list import: bad line reported, result valid" $? "$(tr '\n' ' ' < "$WORK/import.err")"
bad="$WORK/bad.toml"
cat > "$bad" <<TOML
[[dispatcher.set]]
id = 1
algorithm = "zigzag"
destinations = [{ uri = "sip:127.0.0.1:5080", weight = -1 }, "sip:::bad"]
[[dispatcher.set]]
id = 1
destinations = ["sip:127.0.0.1:5082"]
[routing]
default_set = 1
TOML
out=$("$SB" check --config "$bad" 2>&1); rc=$?
[ $rc = 1 ] && echo "$out" | grep -q "algorithm" && echo "$out" | grep -q "weight" && echo "$out" | grep -q "destinations\[1\]" && echo "$out" | grep -q "duplicate set id"
result "switchboard check refuses bad dispatcher config with key and reason" $? "$(echo "$out" | head -1)"

cleanup
echo "dispatcher e2e: $PASS passed, $FAIL failed"
[ $FAIL = 0 ]

#!/usr/bin/env bash
# The setups of seeds 000/001 end to end (ports from E2E_BASE+1400). The "FreeSWITCH" nodes
# are SIPp on their own loopback addresses (127.0.0.11-13), users on 127.0.0.1 and a
# carrier on 127.0.0.5, so media servers are recognised by address as in production.
#   phase 1, the resource balancer sharing health with the dispatcher: a node stopped during
#     10 calls/s is marked down by probing within interval + probe timeout and no call waits
#     a branch timeout after that; a node drained with `switchboard dispatcher set-state`
#     gets no new balancer call while its calls finish; two groups by kind of traffic.
#   phase 2, the registrar: a TCP-registered agent (300 s registration, 15 s idle timeout)
#     is called by a media server after 60 s of silence; baresip (Debian, default settings)
#     registers and places a call; a media server calling from a second port with a Route
#     naming the proxy reaches the registered user.
# Prints one line per case and "N passed, M failed"; exits non-zero on failure.
set -uo pipefail
source "$(dirname "$0")/lib.sh"
WORK=$(mktemp -d /tmp/sb-seeds.XXXXXX)
BASE=$(( ${E2E_BASE:-35000} + 1400 ))
P=$((BASE + 60)); UACP=$((BASE + 70)); AG=$((BASE + 72)); BS=$((BASE + 74)); BSCTL=$((BASE + 77))
B1=$((BASE + 80)); B2=$((BASE + 82)); B3=$((BASE + 84)); MGMT=$((BASE + 88))
FS1=127.0.0.11; FS2=127.0.0.12; FS3=127.0.0.13; CARRIER=127.0.0.5
MI="http://127.0.0.1:$MGMT/mi"
need_free $P $UACP $AG $BS $BSCTL $B1 $((B1 + 1)) $((B1 + 2)) $B2 $B3 $MGMT
need_binary
now_ms() { date +%s%3N; }
rpc() { mi_curl -d "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"$1\",\"params\":${2:-{\}}}" "$MI"; }
# node_field URI FIELD: a field of a balancer node (state) or of its first resource (load)
node_field() {
  rpc lb_list | python3 -c "
import json,sys
for n in json.load(sys.stdin)['result']['Destinations']:
    if n['uri']=='$1': print(n['$2'] if '$2' in n else n['resources'][0]['$2'])" 2>/dev/null
}
start_node() { # ip port scenario
  sipp -sf "$SC/$3" -i "$1" -p "$2" -aa -nostdin -trace_stat -stf "$WORK/node-$2.csv" -fd 1 >"$WORK/node-$2.out" 2>&1 </dev/null &
  eval "NODE_$2=$!"; PIDS+=($!)
  for _ in $(seq 50); do busy "$2" && return 0; sleep 0.1; done
}
stop_node() { eval "kill -KILL \$NODE_$1" 2>/dev/null; eval "wait \$NODE_$1" 2>/dev/null; }
# calls a node completed (its IncomingCall also counts the probes it answers)
done_calls() { col "$WORK/node-$1.csv" 'SuccessfulCall(C)'; }
uac() { # from-ip calls rate hold_ms [extra]: calls from a user (or carrier) address
  local ip=$1 n=$2 r=$3 d=$4; shift 4
  rm -f "$WORK/uac.csv" "$WORK"/uac-rr_*_rtt.csv
  (cd "$WORK" && sipp 127.0.0.1:$P -sf "$SC/uac-rr.xml" -i "$ip" -p $UACP -r "$r" -m "$n" -l 200 -d "$d" -nostdin \
    -timeout 90s -recv_timeout 20000 -trace_stat -stf "$WORK/uac.csv" -fd 1 "$@" >"$WORK/uac.out" 2>&1 </dev/null)
}

phase1_config() {
  cat <<TOML
[sip]
listen = ["udp:127.0.0.1:$P", "tcp:127.0.0.1:$P"]
[transactions]
# T1 100 ms: a BYE to the stopped node gives up after 6.4 s, not 32
t1_ms = 100
branch_timeout_ms = 2000
[dispatcher]
probe_interval_s = 1
probe_threshold_down = 1
[[dispatcher.set]]
id = 1
destinations = ["sip:$FS1:$B1", "sip:$FS2:$B2"]
[routing]
default_set = 1
# the nodes have addresses of their own (on loopback, where "auto" would match ports too)
match_media_servers = "address"
[management]
listen = "127.0.0.1:$MGMT"
token_file = "$WORK/switchboard.token"
[security]
allow = ["127.0.0.1/32"]
[database]
url = "sqlite://$WORK/sb.db"
[dialog]
enabled = true
[balancer]
group = 1
resources = ["pstn"]
[[balancer.node]]
uri = "sip:$FS1:$B1"
resources = "pstn=100"
description = "internal fs1"
[[balancer.node]]
uri = "sip:$FS2:$B2"
resources = "pstn=100"
description = "internal fs2"
[[balancer.node]]
uri = "sip:$FS3:$B3"
group = 3
resources = "pstn=100"
description = "external fs3"
[[balancer.rule]]
name = "carriers"
sources = ["$CARRIER/32"]
group = 3
TOML
}
phase1_config > "$WORK/sb.toml"
start_sb
start_node $FS1 $B1 uas-rr.xml; start_node $FS2 $B2 uas-rr.xml; start_node $FS3 $B3 uas-rr.xml
sleep 1.5 # a probe round: all up

# ---- a node stopped under load: down by probing, then no call waits for it ----------------
t_start=$(now_ms)
uac 127.0.0.1 150 10 1000 -trace_rtt -rtt_freq 1 & U=$!
sleep 5
at_kill=$(node_field "sip:$FS2:$B2" load)
t_kill=$(now_ms); stop_node $B2
t_down=""
for _ in $(seq 80); do
  [ "$(node_field "sip:$FS2:$B2" state)" = inactive ] && { t_down=$(now_ms); break; }
  sleep 0.1
done
wait $U
ok=$(col "$WORK/uac.csv" 'SuccessfulCall(C)')
rtt=$(ls "$WORK"/uac-rr_*_rtt.csv 2>/dev/null | head -1)
# calls that waited a branch timeout (over 1.5 s to answer), and those of them that
# started after the node was marked down (Date_ms is the answer time since SIPp started)
read -r waited late <<<"$(python3 - "$rtt" "$((${t_down:-0} - t_start))" <<'PY'
import sys
rows = [l.split(';') for l in open(sys.argv[1]).read().split('\n')[1:] if l.count(';') == 2]
down = int(sys.argv[2])
slow = [(float(d) - float(r)) for d, r, _ in rows if float(r) > 1500]
print(len(slow), sum(1 for s in slow if s > down + 300))
PY
)"
detect=$(( ${t_down:-999999} - t_kill ))
# the calls held on the node when it stopped cannot end (their BYE gets no answer)
[ "${at_kill:-0}" -gt 0 ] && [ "$ok" -ge $((150 - at_kill)) ] && [ -n "$t_down" ] && [ "$detect" -le 3000 ] && [ "${late:-1}" = 0 ]
result "stopped-node-marked-down-by-probing" $? "150 calls at 10/s held 1 s: ok=$ok; fs2 killed holding $at_kill calls, marked inactive after ${detect} ms (probe every 1 s, 1 s timeout); calls that waited a branch timeout: $waited, of them started after the mark: ${late:-?}"

# ---- back up, then drained through the dispatcher: no new balancer calls, calls finish ----
start_node $FS2 $B2 uas-rr.xml
for _ in $(seq 40); do [ "$(node_field "sip:$FS2:$B2" state)" = active ] && break; sleep 0.1; done
back=$(node_field "sip:$FS2:$B2" state)
uac 127.0.0.1 100 10 3000 & U=$!
sleep 3
"$SB" dispatcher set-state --set 1 --uri "sip:$FS2:$B2" draining --mi "$MI" --token-file "$WORK/switchboard.token" >/dev/null
held=$(node_field "sip:$FS2:$B2" load); loads="$held"
for _ in $(seq 10); do sleep 0.5; loads+=" $(node_field "sip:$FS2:$B2" load)"; done
wait $U; rc=$?
sleep 1.2 # the node's stat file
finished=$(done_calls $B2)
ok=$(col "$WORK/uac.csv" 'SuccessfulCall(C)')
lbstate=$(node_field "sip:$FS2:$B2" state)
# the node's count never rises after the drain (a new call would hold it up for 3 s)
rises=$(echo "$loads" | awk '{for(i=2;i<=NF;i++) if($i>$(i-1)) r++; print r+0}')
[ "$back" = active ] && [ $rc = 0 ] && [ "$ok" = 100 ] && [ "${held:-0}" -gt 0 ] && [ "$rises" = 0 ] \
  && [ "${loads##* }" = 0 ] && [ "$finished" -ge "$held" ] && [ "$lbstate" = draining ]
result "drained-node-gets-no-new-calls" $? "back up: $back; drained with dispatcher set-state (the balancer sees: $lbstate) while holding $held calls; its load every 0.5 s: $loads; calls it completed: $finished; ok=$ok/100"
"$SB" lb status "sip:$FS2:$B2" on --mi "$MI" --token-file "$WORK/switchboard.token" >/dev/null

# ---- two groups by kind of traffic ---------------------------------------------------------
# 20 calls held 3 s from the carrier's address, then from a user's: where they are counted
loads() { echo "$(node_field "sip:$FS1:$B1" load)+$(node_field "sip:$FS2:$B2" load)/$(node_field "sip:$FS3:$B3" load)"; }
uac $CARRIER 20 20 3000 & U=$!; sleep 2; from_carrier=$(loads); wait $U; rc1=$?
uac 127.0.0.1 20 20 3000 & U=$!; sleep 2; from_users=$(loads); wait $U; rc2=$?
table=$("$SB" lb list --mi "$MI" --token-file "$WORK/switchboard.token" 2>&1)
[ $rc1 = 0 ] && [ $rc2 = 0 ] && [ "$from_carrier" = "0+0/20" ] && [ "${from_users##*/}" = 0 ] \
  && [ "$(python3 -c "print(sum(map(int, '${from_users%/*}'.split('+'))))" 2>/dev/null)" = 20 ] \
  && [[ "$table" == *"external fs3"* ]] && [[ "$table" == *"active"* ]]
result "two-groups-by-traffic-kind" $? "calls held (group 1 nodes/group 3 node): from the carrier $from_carrier, from users $from_users; lb list: $(echo "$table" | wc -l) lines"
kill -TERM $SB_PID; wait $SB_PID 2>/dev/null

# ---- phase 2: the registrar ---------------------------------------------------------------
{ phase1_config | sed -e 's/^\[sip\]$/[sip]\ntcp_idle_timeout_s = 15/'; cat <<TOML
[registrar]
domains = ["example.test"]
[accounting]
enabled = true
TOML
} > "$WORK/sb.toml"
start_sb
for u in alice:secret1 carol:secret3; do
  "$SB" subscriber add "${u%%:*}@example.test" --password "${u#*:}" --mi "$MI" --token-file "$WORK/switchboard.token" >/dev/null
done
check=$("$SB" check --config "$WORK/sb.toml" 2>&1); check_rc=$?

# control: a TCP connection that carries no registration is closed after the idle timeout
python3 - $P >"$WORK/idle.out" 2>&1 <<'PY' &
import socket, sys, time
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
t0 = time.time(); s.settimeout(40)
try:
    s.recv(1)
except OSError:
    pass
print(round(time.time() - t0))
PY
IDLE=$!; PIDS+=($IDLE)
# carol over TCP, 300 s, then silent (the out-of-call scenario answers calls on its socket)
t_reg=$(now_ms)
sipp 127.0.0.1:$P -t t1 -sf "$SC/reg-domain.xml" -oocsf "$SC/agent-answer.xml" -s carol -au carol -ap secret3 \
  -set dom example.test -set exp 300 -d 100000 -m 1 -i 127.0.0.1 -p $AG -nostdin -timeout 120s \
  >"$WORK/carol.out" 2>&1 </dev/null & CAROL=$!; PIDS+=($CAROL)

# baresip with its default settings but for where it runs (loopback, no sound card)
start_baresip "$WORK/bs" $BS $BSCTL "$((BASE + 100))-$((BASE + 199))" \
  "<sip:alice@example.test>;auth_pass=secret1;outbound=\"sip:127.0.0.1:$P\";regint=300;answermode=auto"
bs_reg=""
for _ in $(seq 50); do
  bs_reg=$(rpc ul_show_contact '{"aor":"alice@example.test"}' | grep -o '"Contact":"[^"]*"' | head -1)
  [ -n "$bs_reg" ] && break; sleep 0.2
done
# baresip places a call: challenged (407), answered by a media server of group 1
python3 "$ROOT/tests/e2e/bsctl.py" $BSCTL "dial sip:7000@example.test" 4 >"$WORK/bs-dial.out" 2>&1 & D=$!
sleep 2.5; during=$(loads)
wait $D
python3 "$ROOT/tests/e2e/bsctl.py" $BSCTL "hangup" 1 >/dev/null 2>&1
grep -q CALL_ESTABLISHED "$WORK/bs-dial.out"; est=$?
[ -n "$bs_reg" ] && [ $est = 0 ] && [ "$during" = "1+0/0" -o "$during" = "0+1/0" ] && ! grep -qi "not implemented" "$WORK/baresip.log"
result "baresip-registers-and-calls" $? "registered: ${bs_reg:-no}; dialled 7000: established=$([ $est = 0 ] && echo yes || echo no), calls held on the nodes meanwhile (group 1/group 3): $during"

# a media server calls from its second port, Route naming the proxy, to the served domain
sipp 127.0.0.1:$P -sf "$SC/fs-route-call.xml" -s alice -set ruri "sip:alice@example.test" \
  -set route "<sip:127.0.0.1:$P;lr>" -m 1 -i $FS1 -p $((B1 + 1)) -nostdin -timeout 20s \
  -recv_timeout 10000 >"$WORK/fs2port.out" 2>&1 </dev/null
rc=$?
grep -q "cannot resolve" "$WORK/sb.log"; unresolved=$?
[ $rc = 0 ] && [ $unresolved = 1 ]
result "media-server-second-port-route-to-user" $? "INVITE sip:alice@example.test from $FS1:$((B1 + 1)) with Route to the proxy: sipp rc=$rc (answered by baresip)"
kill -KILL $BARESIP 2>/dev/null

# carol, silent since her REGISTER, is called after 60 s over her TCP connection
wait_s=$(( 61 - ($(now_ms) - t_reg) / 1000 ))
[ $wait_s -gt 0 ] && sleep $wait_s
idle_closes=$(mi_curl "http://127.0.0.1:$MGMT/metrics" | awk '/^switchboard_stream_closed_total\{transport="tcp",reason="idle"\}/{print $2}')
sipp 127.0.0.1:$P -sf "$SC/fs-call.xml" -s carol -m 1 -i $FS1 -p $((B1 + 2)) -nostdin -timeout 20s \
  -recv_timeout 10000 >"$WORK/fs-carol.out" 2>&1 </dev/null
rc=$?
wait $IDLE; idle_after=$(cat "$WORK/idle.out")
[ $rc = 0 ] && [ $check_rc = 0 ] && [ "$idle_after" -ge 14 ] && [ "$idle_after" -le 20 ]
result "tcp-registration-outlives-idle-timeout" $? "carol registered over TCP for 300 s, idle timeout 15 s, called after $(( ($(now_ms) - t_reg) / 1000 )) s: sipp rc=$rc; an idle connection without one was closed after ${idle_after} s (idle closes: ${idle_closes:-?}); check: $(echo "$check" | tail -1 | cut -c1-60)"

# ---- the CLI a new user meets ------------------------------------------------------------
sleep 1 # the CDR writer
R=(--config "$WORK/sb.toml")
cdrs=$("$SB" cdr list "${R[@]}" 2>&1); cdr_rc=$?
order=$("$SB" cdr list --json "${R[@]}" 2>/dev/null | python3 -c "
import json,sys
r=json.load(sys.stdin); e=[int(x['end']) for x in r]
print('newest-first' if e == sorted(e, reverse=True) and len(e) >= 2 else 'wrong:%s' % e)")
dated=$(echo "$cdrs" | sed -n 2p | grep -cE '^20[0-9]{2}-[01][0-9]-[0-3][0-9] [0-2][0-9]:[0-5][0-9]:[0-5][0-9] ')
mkdir -p "$WORK/elsewhere" && sed "s#sqlite://$WORK/sb.db#sqlite://nothing-here.db#" "$WORK/sb.toml" > "$WORK/elsewhere/sb.toml"
none=$(cd / && "$SB" cdr list --config "$WORK/elsewhere/sb.toml" 2>&1); none_rc=$?
stats=$("$SB" mi get_statistics statistics='["usrloc:","acc:"]' "${R[@]}" 2>&1)
bad=$("$SB" mi get_statistics statistics='["nosuch:"]' "${R[@]}" 2>&1); bad_rc=$?
dlgs=$("$SB" dlg list "${R[@]}" 2>&1); dlg_rc=$?
[ $cdr_rc = 0 ] && [ "$order" = newest-first ] && [ "$dated" = 1 ] && [ $none_rc != 0 ] && [[ "$none" == *"no database"* ]] \
  && [ ! -e "$WORK/elsewhere/nothing-here.db" ] && [ ! -e /nothing-here.db ] && [[ "$stats" == *'"usrloc:registered_users"'* ]] \
  && [[ "$stats" == *'"acc:answered_calls"'* ]] && [ $bad_rc != 0 ] && [[ "$bad" == *"unknown statistics group nosuch"* ]] \
  && [ $dlg_rc = 0 ] && [[ "$dlgs" == *"call(s)"* ]]
result "cli-cdr-mi-dlg" $? "cdr list: $order, dated rows: $dated; without a database: rc=$none_rc, nothing created (the relative path read beside its config); mi get_statistics usrloc:/acc: ok, nosuch: rc=$bad_rc; dlg list: $(echo "$dlgs" | tail -1)"

echo "seeds e2e: $PASS passed, $FAIL failed"
[ $FAIL = 0 ]

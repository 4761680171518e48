#!/usr/bin/env bash
# Live load from FreeSWITCH's event socket (ESL) end to end: two SIPp "FreeSWITCH" nodes
# whose pstn capacity is `fs://...`, each with a stand-in event socket (esl-standin.py)
# reporting Max-Sessions, Session-Count and Idle-CPU in HEARTBEAT events; calls follow the
# reported free sessions as they change; calls a node sends are counted on it
# (lb_count_call), also across a restart; a wrong password and a malformed heartbeat are
# logged. Ports from E2E_BASE+1000. Prints one line per case and "N passed, M failed".
set -uo pipefail
source "$(dirname "$0")/lib.sh"
WORK=$(mktemp -d /tmp/sb-esl.XXXXXX)
BASE=$(( ${E2E_BASE:-35000} + 1000 ))
P=$((BASE + 60)); B1=$((BASE + 80)); B2=$((BASE + 82)); UACP=$((BASE + 70)); MGMT=$((BASE + 88))
E1=$((BASE + 21)); E2=$((BASE + 22)); E3=$((BASE + 23))
MI="http://127.0.0.1:$MGMT/mi"
need_free $P $B1 $B2 $UACP $MGMT $E1 $E2 $E3
need_binary

{ base_config udp $B1; cat <<TOML
[dialog]
enabled = true
[accounting]
enabled = true
[balancer]
group = 1
resources = ["pstn"]
count_calls_from_nodes = true
[[balancer.node]]
uri = "sip:127.0.0.1:$B1"
resources = "pstn=fs://ClueCon@127.0.0.1:$E1"
description = "fs1"
[[balancer.node]]
uri = "sip:127.0.0.1:$B2"
resources = "pstn=fs://ClueCon@127.0.0.1:$E2"
description = "fs2"
[[balancer.node]]
uri = "sip:127.0.0.1:$((BASE + 84))"
group = 2
resources = "pstn=fs://wrong@127.0.0.1:$E3"
description = "fs3, wrong password"
TOML
} > "$WORK/sb.toml"
standin() { # port password state-file
  python3 "$ROOT/tests/e2e/esl-standin.py" "$1" "$2" "$3" >"$WORK/esl-$1.log" 2>&1 </dev/null &
  PIDS+=($!)
  for _ in $(seq 50); do busy "$1" && return 0; sleep 0.1; done
  echo "the event socket stand-in on $1 did not start: $(tail -2 "$WORK/esl-$1.log")"; return 1
}
echo "100 95 100" > "$WORK/fs1"; echo "100 20 100" > "$WORK/fs2"; echo "100 0 100" > "$WORK/fs3"
standin $E1 ClueCon "$WORK/fs1"; standin $E2 ClueCon "$WORK/fs2"; standin $E3 ClueCon "$WORK/fs3"
start_sb
rpc() { mi_curl -d "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"$1\",\"params\":${2:-{\}}}" "$MI"; }
reported() { # "sessions1/idle1+sessions2/idle2" as the balancer last heard them
  rpc lb_list | python3 -c "
import json,sys
d=json.load(sys.stdin)['result']['Destinations'][:2]
print('+'.join('%s/%g' % (r['reported']['sessions'], r['reported']['idle_cpu']) if r.get('reported') else '-' for r in (n['resources'][0] for n in d)))" 2>/dev/null || echo x
}
wait_reported() { for _ in $(seq 100); do [ "$(reported)" = "$1" ] && return 0; sleep 0.1; done; return 1; }
load() { rpc lb_list | python3 -c "import json,sys; d=json.load(sys.stdin)['result']; print('+'.join(str(n['resources'][0]['load']) for n in d['Destinations'][:2]))" 2>/dev/null || echo x; }
wait_load() { for _ in $(seq 150); do [ "$(load)" = "$1" ] && return 0; sleep 0.1; done; return 1; }
for p in $B1 $B2; do
  sipp -sf "$SC/uas-rr.xml" -i 127.0.0.1 -p $p -aa -nostdin >"$WORK/uas-$p.out" 2>&1 </dev/null & PIDS+=($!)
done
for _ in $(seq 50); do busy $B1 && busy $B2 && break; sleep 0.1; done
calls() { # n hold_ms: n calls held at once, placed by the balancer; prints the load while held
  sipp 127.0.0.1:$P -sf "$SC/uac-rr.xml" -i 127.0.0.1 -p $UACP -r 50 -m "$1" -l 100 -d "$2" -nostdin \
    -timeout 30s >"$WORK/uac.out" 2>&1 </dev/null & local u=$!
  sleep $(( $2 / 2000 + 1 )); local held; held=$(load)
  wait $u; echo "$held rc=$?"
}

# ---- the reports reach lb_list -------------------------------------------------------------
wait_reported "95/100+20/100"; r=$?
result "heartbeats-in-lb-list" $r "reported sessions/idle-cpu: $(reported)"

# ---- calls follow the free sessions FreeSWITCH reports --------------------------------------
# fs1 has 5 free, fs2 80: ten calls all go to fs2
a=$(calls 10 3000); wait_load "0+0"
# the figures turn: fs1 10 of 100 in use, fs2 99: ten calls all go to fs1
echo "100 10 100" > "$WORK/fs1"; echo "100 99 100" > "$WORK/fs2"; wait_reported "10/100+99/100"
b=$(calls 10 3000); wait_load "0+0"
# idle CPU scales the room: fs1 has 90 sessions free but 5 % CPU left (4 calls), fs2 60 free
echo "100 10 5" > "$WORK/fs1"; echo "100 40 100" > "$WORK/fs2"; wait_reported "10/5+40/100"
c=$(calls 10 3000); wait_load "0+0"
[ "$a" = "0+10 rc=0" ] && [ "$b" = "10+0 rc=0" ] && [ "$c" = "0+10 rc=0" ]
result "calls-follow-reported-free-sessions" $? "held: $a; after the figures turned: $b; fs1 at 5 % idle CPU: $c"

# ---- lb_count_call: calls a node sends are counted on it while they last -----------------------
N3=$((BASE + 84))
load3() { rpc lb_list | python3 -c "import json,sys; print(json.load(sys.stdin)['result']['Destinations'][2]['resources'][0]['load'])" 2>/dev/null || echo x; }
sipp 127.0.0.1:$P -sf "$SC/uac-rr.xml" -i 127.0.0.1 -p $N3 -r 50 -m 5 -l 100 -d 3000 -nostdin -timeout 30s \
  >"$WORK/uac3.out" 2>&1 </dev/null & U3=$!
sleep 1.5; during="$(load3) from fs3, $(load) on group 1"
wait $U3; rc3=$?
for _ in $(seq 50); do [ "$(load3)" = 0 ] && break; sleep 0.1; done
after="$(load3) from fs3, $(load) on group 1"
[ $rc3 = 0 ] && [ "$during" = "5 from fs3, 0+5 on group 1" ] && [ "$after" = "0 from fs3, 0+0 on group 1" ]
result "calls-from-a-node-counted-on-it" $? "while held: $during; after the BYEs: $after; sipp rc=$rc3"

# ---- a restart mid-call rebuilds both counts from the persisted dialogs -----------------------
sipp 127.0.0.1:$P -sf "$SC/uac-rr.xml" -i 127.0.0.1 -p $N3 -r 50 -m 5 -l 100 -d 7000 -nostdin -timeout 30s \
  >"$WORK/uac3r.out" 2>&1 </dev/null & U3=$!
sleep 3 # confirmed, and persisted a second later
before="$(load3) from fs3, $(load) on group 1"
kill -KILL $SB_PID; wait $SB_PID 2>/dev/null
start_sb
restored="$(load3) from fs3, $(load) on group 1"
wait $U3; rc3=$?
for _ in $(seq 50); do [ "$(load3)" = 0 ] && break; sleep 0.1; done
after="$(load3) from fs3, $(load) on group 1"
sleep 1 # the CDR writer (500 ms)
nodes=$("$SB" cdr export --format json --config "$WORK/sb.toml" 2>&1 | python3 -c "
import json,sys
rows=[r for r in json.load(sys.stdin) if r['result']=='answered' and int(r['duration'])>=6]
print(len(rows), sorted(set(r['node'] for r in rows)))" 2>&1)
[ $rc3 = 0 ] && [ "$before" = "5 from fs3, 0+5 on group 1" ] && [ "$restored" = "$before" ] \
  && [ "$after" = "0 from fs3, 0+0 on group 1" ] && [ "$nodes" = "5 ['sip:127.0.0.1:$B2']" ]
result "restart-restores-counts-from-and-to-nodes" $? "before SIGKILL: $before; restored: $restored; after the BYEs: $after; sipp rc=$rc3; CDRs of the held calls (count, nodes): $nodes"

# ---- a full node by its report is not used; both full: 503 ----------------------------------
echo "100 100 100" > "$WORK/fs1"; echo "100 100 100" > "$WORK/fs2"; wait_reported "100/100+100/100"
code=$(printf 'INVITE sip:svc@127.0.0.1:%s SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:%s;branch=z9hG4bK-full1\r\nFrom: <sip:a@h>;tag=1\r\nTo: <sip:svc@h>\r\nCall-ID: full-1\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n' $P $UACP \
  | python3 -c "
import socket,sys
s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); s.bind(('127.0.0.1',$UACP)); s.settimeout(3)
s.sendto(sys.stdin.buffer.read(),('127.0.0.1',$P))
for _ in range(5):
    d=s.recv(65535).decode(errors='replace').split('\r\n')[0]
    if not d.startswith('SIP/2.0 100'): print(d); break" 2>&1)
[[ "$code" == "SIP/2.0 503"* ]]
result "full-by-report-503" $? "$code"

# ---- a wrong password and a malformed heartbeat are logged, the last report kept ------------
echo "garbage" > "$WORK/fs1"; sleep 2.5
grep -q 'auth refused' "$WORK/sb.log"; auth=$?
grep -q 'FreeSWITCH event ignored.*Session-Count' "$WORK/sb.log"; bad=$?
kept=$(reported)
[ $auth = 0 ] && [ $bad = 0 ] && [ "$kept" = "100/100+100/100" ]
result "wrong-password-and-malformed-heartbeat-logged" $? "auth refused logged: $([ $auth = 0 ] && echo yes || echo no); malformed heartbeat logged: $([ $bad = 0 ] && echo yes || echo no); report kept: $kept"

echo "esl e2e: $PASS passed, $FAIL failed"
[ $FAIL = 0 ]

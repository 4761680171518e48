#!/usr/bin/env bash
# Resource balancer end-to-end tests with real SIPp peers on 127.0.0.1 (ports from
# E2E_BASE+800): two "FreeSWITCH" SIPp nodes with pstn=30 and pstn=10; 41 calls held at once
# (40 placed by free capacity, the 41st refused with 503), capacity freed by BYE, CANCEL,
# failure and dialog expiry, failover from a node that stops answering, lb_resize.
# Prints one line per case and "N passed, M failed"; exits non-zero on failure.
set -uo pipefail
source "$(dirname "$0")/lib.sh"
WORK=$(mktemp -d /tmp/sb-lb.XXXXXX)
BASE=$(( ${E2E_BASE:-35000} + 800 ))
P=$((BASE + 60)); B1=$((BASE + 80)); B2=$((BASE + 82)); UACP=$((BASE + 70)); MGMT=$((BASE + 88))
MI="http://127.0.0.1:$MGMT/mi"
need_free $P $B1 $B2 $UACP $MGMT
need_binary

{ base_config udp $B1; cat <<TOML
[transactions]
branch_timeout_ms = 1000
[dialog]
enabled = true
lifetime_s = 10
[accounting]
enabled = true
[balancer]
group = 1
resources = ["pstn"]
[[balancer.node]]
uri = "sip:127.0.0.1:$B1"
resources = "pstn=30"
description = "fs1"
[[balancer.node]]
uri = "sip:127.0.0.1:$B2"
resources = "pstn=10"
description = "fs2"
TOML
} > "$WORK/sb.toml"
start_sb
rpc() { mi_curl -d "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"$1\",\"params\":${2:-{\}}}" "$MI"; }
load() { # total calls counted on the nodes, "a+b"
  rpc lb_list | python3 -c "import json,sys; d=json.load(sys.stdin)['result']; print('+'.join(str(n['resources'][0]['load']) for n in d['Destinations']))" 2>/dev/null || echo x
}
start_uas() { # port scenario
  sipp -sf "$SC/$2" -i 127.0.0.1 -p "$1" -aa -nostdin -trace_stat -stf "$WORK/uas-$1.csv" -fd 1 >"$WORK/uas-$1.out" 2>&1 </dev/null &
  eval "UAS_$1=$!"; PIDS+=($!)
  for _ in $(seq 50); do busy "$1" && return 0; sleep 0.1; done
}
stop_uas() { for p in "$@"; do eval "kill -KILL \$UAS_$p" 2>/dev/null; eval "wait \$UAS_$p" 2>/dev/null; rm -f "$WORK/uas-$p.csv"; done; }
uac() { # scenario calls rate hold_ms [extra]
  local sc=$1 n=$2 r=$3 d=$4; shift 4
  rm -f "$WORK/uac.csv"
  sipp 127.0.0.1:$P -sf "$SC/$sc" -i 127.0.0.1 -p $UACP -r "$r" -m "$n" -l 100 -d "$d" -nostdin -timeout 60s \
    -recv_timeout 20000 -trace_stat -stf "$WORK/uac.csv" -fd 1 "$@" >"$WORK/uac.out" 2>&1 </dev/null
}
wait_load() { # want, up to 15 s
  for _ in $(seq 150); do [ "$(load)" = "$1" ] && return 0; sleep 0.1; done; return 1
}

# ---- 41 calls held at once: split by free capacity, the 41st refused -----------------------
start_uas $B1 uas-rr.xml; start_uas $B2 uas-rr.xml
uac uac-rr.xml 41 100 4000 & U=$!
sleep 2.5
held=$(load)
wait $U; sleep 1.5
ok=$(col "$WORK/uac.csv" 'SuccessfulCall(C)'); failed=$(col "$WORK/uac.csv" 'FailedCall(C)')
a=$(col "$WORK/uas-$B1.csv" 'IncomingCall(C)'); b=$(col "$WORK/uas-$B2.csv" 'IncomingCall(C)')
wait_load "0+0"; after=$(load)
[ "$held" = "30+10" ] && [ "$ok" = 40 ] && [ "$failed" = 1 ] && [ "$a" = 30 ] && [ "$b" = 10 ] && [ "$after" = "0+0" ]
result "pstn-30-and-10-hold-40-call-41-refused" $? "held=$held ok=$ok refused=$failed nodes=$a+$b after_bye=$after"

# ---- capacity comes back after failures and cancels ---------------------------------------
stop_uas $B1 $B2
start_uas $B1 uas-busy.xml; start_uas $B2 uas-busy.xml
uac uac-busy.xml 20 50 0; rc1=$?
l1=$(load)
stop_uas $B1 $B2
start_uas $B1 uas-ring-cancel.xml; start_uas $B2 uas-ring-cancel.xml
uac uac-cancel.xml 20 50 0; rc2=$?
sleep 0.5; l2=$(load)
sleep 1 # the CDR writer
missed=$("$SB" cdr export --format json --config "$WORK/sb.toml" 2>/dev/null | python3 -c "import json,sys; r=json.load(sys.stdin); print(sum(1 for x in r if x['result']=='failed' and x['code']=='486'), sum(1 for x in r if x['result']=='failed' and x['code']=='487'))")
[ $rc1 = 0 ] && [ $rc2 = 0 ] && [ "$l1" = "0+0" ] && [ "$l2" = "0+0" ] && [ "$missed" = "20 20" ]
result "capacity-freed-on-486-and-cancel" $? "busy rc=$rc1 load=$l1; cancel rc=$rc2 load=$l2; missed-call records 486/487: $missed"
stop_uas $B1 $B2

# ---- a dialog that expires frees its capacity ---------------------------------------------
start_uas $B1 uas-rr.xml; start_uas $B2 uas-rr.xml
uac uac-wait-bye.xml 3 50 0 & U=$!
sleep 1; during=$(load)
wait $U; rc=$?
wait_load "0+0"; after=$(load)
[ $rc = 0 ] && [ "$during" != "0+0" ] && [ "$after" = "0+0" ]
result "capacity-freed-on-dialog-expiry" $? "during=$during after the 10 s lifetime=$after"

# ---- a node that stops answering: failover ------------------------------------------------
stop_uas $B2
uac uac-rr.xml 20 20 200; rc=$?
ok=$(col "$WORK/uac.csv" 'SuccessfulCall(C)')
wait_load "0+0"; after=$(load)
[ $rc = 0 ] && [ "$ok" = 20 ] && [ "$after" = "0+0" ]
result "silent-node-fails-over" $? "ok=$ok/20 with fs2 down, load after=$after"
stop_uas $B1

# ---- lb_resize and refusals ---------------------------------------------------------------
r1=$(rpc lb_resize "{\"destination\":\"sip:127.0.0.1:$B1\",\"resource\":\"pstn\",\"capacity\":5}")
r2=$(rpc lb_resize "{\"destination\":\"sip:127.0.0.1:$B1\",\"resource\":\"fax\",\"capacity\":5}")
r3=$(rpc lb_resize "{\"destination\":\"sip:127.0.0.1:$B1\",\"resource\":\"pstn\",\"capacity\":-1}")
max=$(rpc lb_list | python3 -c "import json,sys; print(json.load(sys.stdin)['result']['Destinations'][0]['resources'][0]['max'])" 2>/dev/null)
[[ "$r1" == *'"max":5'* ]] && [[ "$r2" == *"no resource fax"* ]] && [[ "$r3" == *"negative"* ]] && [ "$max" = 5 ]
result "lb-resize-and-refusals" $? "max=$max; fax: $(echo "$r2" | sed -n 's/.*"message":"\([^"]*\)".*/\1/p'); -1: $(echo "$r3" | sed -n 's/.*"message":"\([^"]*\)".*/\1/p')"

# ---- nodes from the OpenSIPS load_balancer table; lb reload -------------------------------
kill -TERM $SB_PID; wait $SB_PID 2>/dev/null
python3 - "$WORK/sb.toml" <<'PY'
import re, sys
p = sys.argv[1]
s = open(p).read()
s = s[: s.index("[[balancer.node]]")] + 'source = "database"\n'
open(p, "w").write(s)
PY
db_sql "DELETE FROM load_balancer; INSERT INTO load_balancer (group_id, dst_uri, resources, description) VALUES (1, 'sip:127.0.0.1:$B1', 'pstn=7', 'fs1'), (1, 'sip:127.0.0.1:$B2', 'pstn=-3', 'bad')"
start_sb
n1=$(rpc lb_list | python3 -c "import json,sys; print(len(json.load(sys.stdin)['result']['Destinations']))" 2>/dev/null)
grep -q "load_balancer row.*negative" "$WORK/sb.log"; logged=$?
db_sql "UPDATE load_balancer SET resources = 'pstn=4' WHERE dst_uri = 'sip:127.0.0.1:$B2'"
r=$("$SB" lb reload --mi "$MI" --token-file "$WORK/switchboard.token" 2>&1)
caps=$(rpc lb_list | python3 -c "import json,sys; print('+'.join(str(n['resources'][0]['max']) for n in json.load(sys.stdin)['result']['Destinations']))" 2>/dev/null)
[ "$n1" = 1 ] && [ $logged = 0 ] && [[ "$r" == *'"reloaded": 2'* ]] && [ "$caps" = "7+4" ]
result "load-balancer-table-and-reload" $? "table: $n1 node (bad row logged: $([ $logged = 0 ] && echo yes || echo no)); after the fix and lb reload: capacities $caps"

echo "balancer e2e: $PASS passed, $FAIL failed"
[ $FAIL = 0 ]

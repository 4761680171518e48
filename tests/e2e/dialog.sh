#!/usr/bin/env bash
# Dialog end-to-end tests with real SIPp peers on 127.0.0.1 (ports from E2E_BASE+600): calls
# counted while they last (dlg_list, profile_get_size), a BYE for an unknown dialog refused
# with 481, a dialog past its lifetime ended by the proxy with a BYE to both sides, and
# dlg_end_dlg doing the same on request.
# Prints one line per case and "N passed, M failed"; exits non-zero on failure.
set -uo pipefail
source "$(dirname "$0")/lib.sh"
WORK=$(mktemp -d /tmp/sb-dlg.XXXXXX)
BASE=$(( ${E2E_BASE:-35000} + 600 ))
P=$((BASE + 60)); B1=$((BASE + 80)); UACP=$((BASE + 70)); MGMT=$((BASE + 88))
MI="http://127.0.0.1:$MGMT/mi"
need_free $P $B1 $UACP $MGMT
need_binary

{ base_config udp $B1; cat <<TOML
[dialog]
enabled = true
lifetime_s = 10
[accounting]
enabled = true
TOML
} > "$WORK/sb.toml"
start_sb
rpc() { mi_curl -d "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"$1\",\"params\":${2:-{\}}}" "$MI"; }
start_uas() { # scenario
  sipp -sf "$SC/$1" -i 127.0.0.1 -p $B1 -aa -nostdin -trace_stat -stf "$WORK/uas.csv" -fd 1 >"$WORK/uas.out" 2>&1 </dev/null &
  UAS=$!; PIDS+=($UAS)
  for _ in $(seq 50); do busy $B1 && return 0; sleep 0.1; done
}
stop_uas() { kill -KILL $UAS 2>/dev/null; wait $UAS 2>/dev/null; rm -f "$WORK/uas.csv"; }
uac() { # scenario calls hold_ms [extra]
  local sc=$1 n=$2 d=$3; shift 3
  rm -f "$WORK/uac.csv"
  sipp 127.0.0.1:$P -sf "$SC/$sc" -i 127.0.0.1 -p $UACP -r 10 -m "$n" -d "$d" -nostdin -timeout 60s \
    -recv_timeout 30000 -trace_stat -stf "$WORK/uac.csv" -fd 1 "$@" >"$WORK/uac.out" 2>&1 </dev/null
}
count() { rpc profile_get_size '{"profile":"total"}' | python3 -c "import json,sys; print(json.load(sys.stdin)['result']['count'])" 2>/dev/null || echo x; }

# ---- calls are counted while they last ----------------------------------------------------
start_uas uas-rr.xml
uac uac-rr.xml 5 3000 & U=$!
sleep 1.5
during=$(count); listed=$(rpc dlg_list | python3 -c "import json,sys; print(len(json.load(sys.stdin)['result']['Dialogs']))" 2>/dev/null)
wait $U; rc=$?; sleep 0.3
after=$(count)
[ $rc = 0 ] && [ "$during" = 5 ] && [ "$listed" = 5 ] && [ "$after" = 0 ]
result "dialogs-counted-while-they-last" $? "during=$during listed=$listed after=$after sipp_rc=$rc"
stop_uas

# ---- BYE for an unknown dialog along a Route the proxy never issued: 403, relayed nowhere ----
# (one along a Route it signed, for a dialog that is over, gets 481: the core's unit tests)
r=$(python3 - "$P" <<'PY'
import socket, sys
port = int(sys.argv[1])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2); s.bind(("127.0.0.1", 0))
m = (f"BYE sip:b@127.0.0.1:9 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{s.getsockname()[1]};branch=z9hG4bKu481\r\n"
     f"Route: <sip:127.0.0.1:{port};lr>\r\nFrom: <sip:a@h>;tag=x\r\nTo: <sip:b@h>;tag=y\r\nCall-ID: no-such-dialog\r\n"
     "CSeq: 2 BYE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n")
s.sendto(m.encode(), ("127.0.0.1", port))
print(s.recv(4096).decode().split("\r\n")[0])
PY
)
[[ "$r" == "SIP/2.0 403 "* ]]; result "bye-unknown-dialog-refused" $? "$r"

# ---- lifetime over: the proxy sends BYE to both sides -------------------------------------
start_uas uas-rr.xml
t0=$(date +%s.%N)
uac uac-wait-bye.xml 2 0; rc=$?
t1=$(date +%s.%N)
sleep 5 # the UAS counts a call once its 4 s timewait is over
uas_ok=$(col "$WORK/uas.csv" 'SuccessfulCall(C)'); uac_ok=$(col "$WORK/uac.csv" 'SuccessfulCall(C)')
secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
[ $rc = 0 ] && [ "$uac_ok" = 2 ] && [ "$uas_ok" = 2 ] && [ "$(count)" = 0 ]
result "lifetime-ends-call-with-bye-both-sides" $? "lifetime 10 s: caller got BYE ($uac_ok/2), callee got BYE ($uas_ok/2) after ${secs}s"
stop_uas

# ---- dlg_end_dlg -------------------------------------------------------------------------
start_uas uas-rr.xml
uac uac-wait-bye.xml 1 0 & U=$!
for _ in $(seq 30); do [ "$(count)" = 1 ] && break; sleep 0.1; done
id=$(rpc dlg_list | python3 -c "import json,sys; print(json.load(sys.stdin)['result']['Dialogs'][0]['ID'])" 2>/dev/null)
ended=$(rpc dlg_end_dlg "{\"dialog_id\":$id}")
wait $U; rc=$?; sleep 5
uas_ok=$(col "$WORK/uas.csv" 'SuccessfulCall(C)')
[ $rc = 0 ] && [ "$uas_ok" = 1 ] && [[ "$ended" == *'"ended"'* ]]
result "dlg-end-dlg-ends-call" $? "dialog $id: $ended; caller rc=$rc callee_ok=$uas_ok"
stop_uas

# ---- restart mid-call: the BYE still routes, the dialog and its count come back -----------
start_uas uas-rr.xml
uac uac-rr.xml 2 6000 & U=$!
for _ in $(seq 30); do [ "$(count)" = 2 ] && break; sleep 0.1; done
sleep 2 # a dialog is written once it has lived 1 s (checked every 200 ms, written within 200 ms)
kill -KILL $SB_PID; wait $SB_PID 2>/dev/null
start_sb
restored=$(count)
wait $U; rc=$?; sleep 5
uas_ok=$(col "$WORK/uas.csv" 'SuccessfulCall(C)'); uac_ok=$(col "$WORK/uac.csv" 'SuccessfulCall(C)')
[ $rc = 0 ] && [ "$restored" = 2 ] && [ "$uac_ok" = 2 ] && [ "$uas_ok" = 2 ] && [ "$(count)" = 0 ]
result "restart-mid-call-bye-still-routes" $? "SIGKILL mid-call: $restored dialogs restored, caller ok=$uac_ok/2, callee ok=$uas_ok/2, after=$(count)"
stop_uas

# ---- CDRs: one per call, with durations; the restarted calls complete --------------------
sleep 1 # the CDR writer (500 ms)
"$SB" cdr export --format json --config "$WORK/sb.toml" > "$WORK/cdr.json" 2>"$WORK/cdr.err"; rc=$?
summary=$(python3 - "$WORK/cdr.json" <<'PY'
import json, sys
rows = json.load(open(sys.argv[1]))
ans = [r for r in rows if r["result"] == "answered"]
def durs(by): return sorted(int(r["duration"]) for r in ans if r["hangup_by"] == by)
# 5 calls hung up by the caller after 3 s, 2 restarted calls after 6 s, 2 lifetime, 1 management
ok = (len(ans) == 10 and durs("lifetime") and all(9 <= d <= 12 for d in durs("lifetime"))
      and len(durs("management")) == 1 and len(durs("caller")) == 7
      and all(2 <= d <= 7 for d in durs("caller"))
      and all(r["node"] and r["setup"] and r["answer"] and r["end"] for r in ans))
print(("ok" if ok else "BAD") + f" answered={len(ans)} caller={durs('caller')} lifetime={durs('lifetime')} management={durs('management')}")
PY
)
[ $rc = 0 ] && [[ "$summary" == ok* ]]; result "cdr-per-call-with-durations" $? "$summary"

echo "dialog e2e: $PASS passed, $FAIL failed"
[ $FAIL = 0 ]

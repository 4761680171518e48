#!/usr/bin/env bash
# Registrar end-to-end tests with real SIPp peers on 127.0.0.1 (ports from E2E_BASE+400):
# digest REGISTER, wrong password, a call from a "FreeSWITCH" SIPp to a registered SIPp agent
# behind a fake NAT (UDP) and over its own TCP connection, refresh, unregister, expiry, a
# restart (SIGKILL) between REGISTER and INVITE, 404/480, keepalives, bad REGISTERs.
# Prints one line per case and "N passed, M failed"; exits non-zero on failure.
set -uo pipefail
source "$(dirname "$0")/lib.sh"
WORK=$(mktemp -d /tmp/sb-reg.XXXXXX)
BASE=$(( ${E2E_BASE:-35000} + 400 ))
P=$((BASE + 60)); FS=$((BASE + 80)); AG=$((BASE + 70)); AG2=$((BASE + 72)); MGMT=$((BASE + 88))
MI="http://127.0.0.1:$MGMT/mi"
need_free $P $FS $AG $AG2 $MGMT
need_binary

config() { # extra registrar lines
  { base_config "udp tcp" $FS; cat <<TOML
[registrar]
domains = ["127.0.0.1"]
min_expires_s = 2
auth_slow_after = 0
auth_ban_after = 0
$1
TOML
  } > "$WORK/sb.toml"
}
ul_json() { "$SB" ul dump --json --mi "$MI" --token-file "$WORK/switchboard.token" 2>/dev/null; }
# contacts AOR -> "contact|received|nat|callid" lines
contacts() {
  ul_json | python3 -c "
import json,sys
d=json.load(sys.stdin)
for a in d['Domains'][0]['AORs']:
    if a['AOR']=='$1':
        for c in a['Contacts']: print(c['Contact'], c['Received'], c['Cflags'] or '-', c['Callid'], sep='|')"
}
register() { # user pass port expires hold_ms [extra sipp args]
  local u=$1 pw=$2 port=$3 exp=$4 hold=$5; shift 5
  sipp 127.0.0.1:$P -sf "$SC/reg-auth.xml" -s "$u" -au "$u" -ap "$pw" -set chost 10.0.0.5 -set exp "$exp" \
    -d "$hold" -m 1 -i 127.0.0.1 -p "$port" -nostdin -timeout 30s -recv_timeout 5000 "$@" \
    >"$WORK/reg-$port.out" 2>&1 </dev/null
}
agent() { # user pass port hold_ms [extra]: registers, then answers calls until hold ends
  local u=$1 pw=$2 port=$3 hold=$4; shift 4
  sipp 127.0.0.1:$P -sf "$SC/reg-auth.xml" -oocsf "$SC/agent-answer.xml" -s "$u" -au "$u" -ap "$pw" \
    -set chost 10.0.0.5 -set exp 300 -d "$hold" -m 1 -i 127.0.0.1 -p "$port" -aa -nostdin -timeout 60s \
    "$@" >"$WORK/agent-$port.out" 2>&1 </dev/null &
  AGENT_PID=$!; PIDS+=($AGENT_PID)
}
fs_call() { # user [extra]: a call from the media server's address; rc 0 when answered
  local u=$1; shift
  sipp 127.0.0.1:$P -sf "$SC/fs-call.xml" -s "$u" -m 1 -i 127.0.0.1 -p $FS -nostdin -timeout 20s \
    -recv_timeout 8000 "$@" >"$WORK/fs.out" 2>&1 </dev/null
}
fs_call_expect() { # user status
  sed "s/WANT/$2/" "$SC/fs-call-fail.xml" > "$WORK/fail-$2.xml"
  sipp 127.0.0.1:$P -sf "$WORK/fail-$2.xml" -s "$1" -m 1 -i 127.0.0.1 -p $FS -nostdin -timeout 15s \
    -recv_timeout 5000 >"$WORK/fsf.out" 2>&1 </dev/null
}
wait_registered() { # aor: up to 5 s
  for _ in $(seq 50); do [ -n "$(contacts "$1")" ] && return 0; sleep 0.1; done; return 1
}

config "ping_interval_s = 0"
start_sb
"$SB" subscriber add alice@127.0.0.1 --password secret1 --mi "$MI" --token-file "$WORK/switchboard.token" >/dev/null
"$SB" subscriber add bob@127.0.0.1 --password secret2 --mi "$MI" --token-file "$WORK/switchboard.token" >/dev/null
"$SB" subscriber add carol@127.0.0.1 --password secret3 --mi "$MI" --token-file "$WORK/switchboard.token" >/dev/null

# ---- digest REGISTER ----------------------------------------------------------------------
register alice secret1 $AG 300 100; rc=$?
c=$(contacts alice@127.0.0.1)
[ $rc = 0 ] && [[ "$c" == "sip:alice@10.0.0.5:5060|udp:127.0.0.1:$AG|NAT|"* ]]; result "register-digest-auth" $? "sipp rc=$rc, binding: $c"

sipp 127.0.0.1:$P -sf "$SC/reg-badpass.xml" -s bob -au bob -ap wrong -m 1 -i 127.0.0.1 -p $AG2 -nostdin \
  -timeout 15s -recv_timeout 5000 >"$WORK/bad.out" 2>&1 </dev/null; rc=$?
[ $rc = 0 ] && [ -z "$(contacts bob@127.0.0.1)" ]; result "register-wrong-password-401" $? "sipp rc=$rc, bob stored: $(contacts bob@127.0.0.1 | wc -l)"

# ---- refresh and unregister ---------------------------------------------------------------
old=$(contacts alice@127.0.0.1 | cut -d'|' -f4)
register alice secret1 $AG 300 100; rc=$?
new=$(contacts alice@127.0.0.1)
[ $rc = 0 ] && [ "$(echo "$new" | wc -l)" = 1 ] && [ "$(echo "$new" | cut -d'|' -f4)" != "$old" ]
result "reregister-refreshes" $? "one binding, Call-ID $old -> $(echo "$new" | cut -d'|' -f4)"
register alice secret1 $AG 0 100; rc=$?
[ $rc = 0 ] && [ -z "$(contacts alice@127.0.0.1)" ]; result "expires-0-removes" $? "sipp rc=$rc, left: $(contacts alice@127.0.0.1 | wc -l)"
register alice secret1 $AG 2 100
sleep 3.5
[ -z "$(contacts alice@127.0.0.1)" ]; result "expiry-sweeps" $? "expires=2, after 3.5 s: $(contacts alice@127.0.0.1 | wc -l) left"

# ---- calls from the media server to registered users --------------------------------------
agent alice secret1 $AG 6000
wait_registered alice@127.0.0.1
fs_call alice; rc=$?
result "fs-calls-agent-behind-nat" $rc "Contact says 10.0.0.5:5060, reached at 127.0.0.1:$AG"
kill -KILL $AGENT_PID 2>/dev/null; wait $AGENT_PID 2>/dev/null

agent carol secret3 $AG2 6000 -t t1
wait_registered carol@127.0.0.1
recv=$(contacts carol@127.0.0.1 | cut -d'|' -f2)
fs_call carol; rc=$?
[ $rc = 0 ] && [[ "$recv" == tcp:* ]]; ok=$?
result "fs-calls-agent-over-its-tcp-connection" $ok "registered over $recv"
[ $ok = 0 ] || { tail -3 "$WORK/agent-$AG2.out"; ss -tan | grep ":$AG2 " | head -3; }
kill -KILL $AGENT_PID 2>/dev/null; wait $AGENT_PID 2>/dev/null

fs_call_expect nobody 404; r1=$?
"$SB" ul rm carol@127.0.0.1 --mi "$MI" --token-file "$WORK/switchboard.token" >/dev/null 2>&1
fs_call_expect carol 480; r2=$?
[ $r1 = 0 ] && [ $r2 = 0 ]; result "unknown-404-unregistered-480" $? "404 rc=$r1, 480 rc=$r2"

# ---- restart between REGISTER and INVITE --------------------------------------------------
agent alice secret1 $AG 12000
wait_registered alice@127.0.0.1
sleep 0.5 # the write-behind flush (200 ms)
kill -KILL $SB_PID; wait $SB_PID 2>/dev/null
start_sb
fs_call alice; rc=$?
result "restart-keeps-registration" $rc "SIGKILL after REGISTER, the call after the restart reached the agent"
kill -KILL $AGENT_PID 2>/dev/null; wait $AGENT_PID 2>/dev/null

# ---- malformed REGISTERs: precise error, nothing stored -----------------------------------
out=$(python3 - "$P" <<'PY'
import hashlib, re, socket, sys
port = int(sys.argv[1])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2); s.bind(("127.0.0.1", 0))
me = s.getsockname()[1]
def send(i, contact, hdrs):
    m = (f"REGISTER sip:127.0.0.1:{port} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{me};branch=z9hG4bKbad{i}\r\n"
         f"From: <sip:alice@127.0.0.1>;tag=1\r\nTo: <sip:alice@127.0.0.1>\r\nCall-ID: bad{i}\r\nCSeq: {i + 1} REGISTER\r\n"
         f"Contact: {contact}\r\n{hdrs}Content-Length: 0\r\n\r\n")
    s.sendto(m.encode(), ("127.0.0.1", port))
    try:
        return s.recv(4096).decode()
    except OSError:
        return "no answer"
# one challenge, then every case authenticated with the next nc: auth passes, the content is judged
nonce = re.search(r'nonce="([^"]+)"', send(0, "<sip:alice@10.0.0.9>", "")).group(1)
md5 = lambda x: hashlib.md5(x.encode()).hexdigest()
ha1 = md5("alice:127.0.0.1:secret1")
def auth(nc, user="alice"):
    ncs = f"{nc:08x}"
    resp = md5(f"{ha1}:{nonce}:{ncs}:c{nc}:auth:" + md5(f"REGISTER:sip:127.0.0.1:{port}"))
    return (f'Authorization: Digest username="{user}", realm="127.0.0.1", nonce="{nonce}", uri="sip:127.0.0.1:{port}", '
            f'response="{resp}", algorithm=MD5, qop=auth, nc={ncs}, cnonce="c{nc}"\r\n')
cases = [("Expires: -1\r\n", "<sip:alice@10.0.0.9>", "400"), ("Expires: 99999999999\r\n", "<sip:alice@10.0.0.9>", "400"),
         ("Expires: 60\r\n", "<>", "400"), ("", ";expires=60", "400"), ("Expires: 1\r\n", "<sip:alice@10.0.0.9>", "423")]
bad = 0
for i, (hdr, contact, want) in enumerate(cases, start=1):
    r = send(i, contact, hdr + auth(i)).split("\r\n")[0]
    ok = r.split(" ")[1:2] == [want]
    bad += not ok
    print(("ok " if ok else "BAD ") + (hdr.strip() or "-") + " / " + contact + " -> " + r)
# a replayed nc, and a malformed Authorization
for i, (hdrs, want, what) in enumerate([(auth(1), "401", "replayed nc"), ("Authorization: Digest username=alice\r\n", "400", "bad Authorization")], start=20):
    r = send(i, "<sip:alice@10.0.0.9>", "Expires: 60\r\n" + hdrs).split("\r\n")[0]
    ok = r.split(" ")[1:2] == [want]
    bad += not ok
    print(("ok " if ok else "BAD ") + what + " -> " + r)
sys.exit(1 if bad else 0)
PY
); rc=$?
[ $rc = 0 ] && [ -z "$(contacts alice@127.0.0.1 | grep 10.0.0.9)" ]; result "malformed-register-refused" $? "$(echo "$out" | tr '\n' ';')"

# ---- keepalives ---------------------------------------------------------------------------
kill -TERM $SB_PID; wait $SB_PID 2>/dev/null
config "ping_interval_s = 1
ping_max_missed = 2"
start_sb
register alice secret1 $AG 300 100 # the client is gone right after
agent bob secret2 $AG2 8000        # this one answers the OPTIONS (-aa)
wait_registered bob@127.0.0.1
sleep 4.5
a=$(contacts alice@127.0.0.1 | wc -l); b=$(contacts bob@127.0.0.1 | wc -l)
[ "$a" = 0 ] && [ "$b" = 1 ]; result "keepalive-removes-silent-contact" $? "after 4.5 s at 1 s x 2 missed: silent=$a answering=$b"
kill -KILL $AGENT_PID 2>/dev/null; wait $AGENT_PID 2>/dev/null

# ---- forward mode: REGISTER relayed to the media server with a Path, the call comes back --
kill -TERM $SB_PID; wait $SB_PID 2>/dev/null
config 'mode = "forward"'
start_sb
forward_case() { # name agent-port [sipp transport args]
  local name=$1 port=$2; shift 2
  rm -f "$WORK"/fs-registrar_*_messages.log
  (cd "$WORK" && sipp -sf "$SC/fs-registrar.xml" -i 127.0.0.1 -p $FS -m 1 -nostdin -timeout 15s -trace_msg \
    >"$WORK/fsr.out" 2>&1 </dev/null) &
  local fsr=$!; PIDS+=($fsr)
  for _ in $(seq 50); do busy $FS && break; sleep 0.1; done
  sipp 127.0.0.1:$P -sf "$SC/reg-plain.xml" -oocsf "$SC/agent-answer.xml" -s dora -set chost 10.0.0.5 \
    -d 8000 -m 1 -i 127.0.0.1 -p "$port" -aa -nostdin -timeout 30s "$@" >"$WORK/fwd-agent.out" 2>&1 </dev/null &
  AGENT_PID=$!; PIDS+=($AGENT_PID)
  wait $fsr; local rc_reg=$?
  local log; log=$(ls "$WORK"/fs-registrar_*_messages.log 2>/dev/null | head -1)
  local contact path
  contact=$(grep -m1 '^Contact:' "$log" 2>/dev/null | sed -E 's/^Contact: *<([^>]*)>.*/\1/' | tr -d '\r')
  path=$(grep -m1 '^Path:' "$log" 2>/dev/null | sed -E 's/^Path: *//' | tr -d '\r')
  sleep 0.3 # the 200 reaches the agent
  sipp 127.0.0.1:$P -sf "$SC/fs-route-call.xml" -s dora -set ruri "$contact" -set route "$path" -m 1 \
    -i 127.0.0.1 -p $FS -nostdin -timeout 20s -recv_timeout 8000 >"$WORK/fs.out" 2>&1 </dev/null
  local rc=$?
  kill -KILL $AGENT_PID 2>/dev/null; wait $AGENT_PID 2>/dev/null
  [ $rc_reg = 0 ] && [ $rc = 0 ] && [[ "$contact" != *10.0.0.5* ]] && [ -n "$path" ]
  result "$name" $? "media server stored $contact via $path; call rc=$rc"
}
forward_case "forward-mode-udp" $AG
forward_case "forward-mode-tcp-flow" $AG2 -t t1

echo "registrar e2e: $PASS passed, $FAIL failed"
[ $FAIL = 0 ]

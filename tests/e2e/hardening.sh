#!/usr/bin/env bash
# Hardening end-to-end tests on 127.0.0.0/8 (ports from E2E_BASE+1200): sipvicious (svmap,
# svwar, svcrack) against the registrar, password guessing beside a user who must still get
# in, a 20,000 requests/s flood beside a caller at 50 calls/s, hostile TCP peers (5,000 idle
# connections, a burst of 2,000 connects, a byte a second, a peer that never reads, a 10 MB
# message without an end), SIGTERM under load with registrar, dialogs and accounting, and
# startups that must fail loudly. Each peer has its own loopback address, so one's ban does
# not touch the others'. Prints one line per case and "N passed, M failed".
set -uo pipefail
source "$(dirname "$0")/lib.sh"
WORK=$(mktemp -d /tmp/sb-hard.XXXXXX)
BASE=$(( ${E2E_BASE:-35000} + 1200 ))
P=$((BASE + 60)); B1=$((BASE + 80)); MGMT=$((BASE + 88)); CALLER=$((BASE + 70))
MI="http://127.0.0.1:$MGMT/mi"
need_free $P $B1 $MGMT $CALLER
need_binary
ulimit -n 16384 2>/dev/null || true
H="python3 $ROOT/tests/e2e/hostile.py"
cli() { "$SB" "$@" --mi "$MI" --token-file "$WORK/switchboard.token"; }
rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$SB_PID/status" 2>/dev/null || echo 0; }
metric() { mi_curl "http://127.0.0.1:$MGMT/metrics" | awk -v m="$1" '$1 == m {print $2}'; }
bans_json() { cli ban list --json 2>/dev/null; }

config() { # extra sections [extra [sip] lines]
  cat > "$WORK/sb.toml" <<TOML
[sip]
listen = ["udp:127.0.0.1:$P", "tcp:127.0.0.1:$P"]
tcp_idle_timeout_s = 6
tcp_message_timeout_s = 3
${2:-}
[dispatcher]
probe_interval_s = 0
[[dispatcher.set]]
id = 1
destinations = ["sip:127.0.0.1:$B1"]
[routing]
default_set = 1
# the media server is on 127.0.0.1 like the attackers (svcrack always sends from it): it is
# told apart by its port, or every REGISTER from 127.0.0.1 would be a media server's
match_media_servers = "address-port"
[management]
listen = "127.0.0.1:$MGMT"
token_file = "$WORK/switchboard.token"
[database]
url = "sqlite://$WORK/sb.db"
$1
TOML
}
restart() { cleanup_sb; start_sb; }
cleanup_sb() {
  [ -n "${SB_PID:-}" ] && { kill -TERM "$SB_PID" 2>/dev/null; wait "$SB_PID" 2>/dev/null; }
  SB_PID=
}
start_uas() {
  sipp -sf "$SC/uas-rr.xml" -i 127.0.0.1 -p $B1 -aa -nostdin -trace_stat -stf "$WORK/uas.csv" -fd 1 \
    >"$WORK/uas.out" 2>&1 </dev/null &
  PIDS+=($!)
  for _ in $(seq 50); do busy $B1 && return 0; sleep 0.1; done
}
calls() { # name count rate [src]: calls from their own address; prints successful calls
  rm -f "$WORK/uac-$1.csv"
  sipp 127.0.0.1:$P -sf "$SC/uac-rr.xml" -i "${4:-127.0.0.3}" -p $CALLER -m "$2" -r "$3" -d 200 -nostdin \
    -timeout 120s -trace_stat -stf "$WORK/uac-$1.csv" -fd 1 >"$WORK/uac-$1.out" 2>&1 </dev/null
  echo "$(col "$WORK/uac-$1.csv" 'SuccessfulCall(C)') $(col "$WORK/uac-$1.csv" 'FailedCall(C)')"
}

start_uas

# ---- sipvicious with the default scanner list: the first packet bans the source --------
config '[registrar]
domains = ["127.0.0.1"]'
start_sb
cli subscriber add 100@127.0.0.1 --password s3cret-100 >/dev/null
out=$(timeout 30 svmap -b 127.0.0.21 127.0.0.1 -p $P 2>&1)
reason=$(bans_json | python3 -c "import json,sys; print(','.join(b['reason'] for b in json.load(sys.stdin)['bans'] if b['source']=='127.0.0.21'))")
! grep -q "127.0.0.1:$P" <<<"$out" && [ "$reason" = scanner ]
result "svmap: a scanner's first request bans it, nothing answered" $? "ban=$reason"

# ---- sipvicious as if it hid its name: no version, no extension told apart, cracker banned
config '[registrar]
domains = ["127.0.0.1"]
auth_slow_after = 3
auth_ban_after = 5
[security]
scanner_user_agents = []'
restart
cli subscriber add 100@127.0.0.1 --password s3cret-100 >/dev/null
out=$(timeout 30 svmap -b 127.0.0.21 127.0.0.1 -p $P 2>&1)
# the proxy's own answer (an OPTIONS for itself) names the product without a version
server=$(python3 - "$P" <<'PY'
import socket, sys
p = int(sys.argv[1]); s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.26", 0)); s.settimeout(2)
s.sendto((f"OPTIONS sip:127.0.0.1:{p} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.26:{s.getsockname()[1]};branch=z9hG4bKsv\r\n"
          f"From: <sip:a@127.0.0.26>;tag=1\r\nTo: <sip:127.0.0.1>\r\nCall-ID: sv1\r\nCSeq: 1 OPTIONS\r\n"
          "Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode(), ("127.0.0.1", p))
print(next((l.split(":", 1)[1].strip() for l in s.recv(4096).decode().split("\r\n") if l.lower().startswith("server:")), "none"))
PY
)
ver=$(sed -n 's/^version = "\(.*\)"/\1/p' "$ROOT/Cargo.toml" | head -1)
[ "$server" = switchboard ] && ! grep -qF "$ver" <<<"$out" && ! grep -qi 'switchboard/' <<<"$out"
result "svmap: no version disclosed (the proxy's Server: $server)" $? "svmap saw: $(grep "127.0.0.1:$P" <<<"$out" | tr -s ' ' | cut -c1-60)"
out=$(timeout 60 svwar --force -b 127.0.0.22 -e98-102 127.0.0.1 -p $P 2>&1)
! grep -qE '^\| *(98|99|100|101|102) *\|' <<<"$out"
result "svwar: extension 100 not told apart from 98, 99, 101, 102" $? "$(grep -c 'found nothing' <<<"$out") 'found nothing'"
printf '%s\n' a b c d e f g h i j k l m n o p q r s s3cret-100 > "$WORK/dict.txt"
f0=$(metric switchboard_auth_failures_total)
out=$(timeout 90 svcrack -b 127.0.0.23 -u100 -d "$WORK/dict.txt" 127.0.0.1 -p $P 2>&1)
f1=$(metric switchboard_auth_failures_total); guesses=$(( ${f1:-0} - ${f0:-0} ))
# (svcrack sends from 127.0.0.1 whatever -b says)
banned=$(bans_json | python3 -c "import json,sys; d=json.load(sys.stdin); print(sum(1 for b in d['user_bans'] if b['user']=='100') + sum(1 for b in d['bans'] if b['source'] in ('127.0.0.23', '127.0.0.1')))")
! grep -q 's3cret-100' <<<"$out" && [ "$guesses" -le 6 ] && [ "${banned:-0}" -ge 1 ]
result "svcrack: banned after a few guesses, the password (20th) never found" $? "guesses=$guesses bans=$banned"

# ---- guessing one account does not lock out another user at the same address ------------
echo pw-200 | cli subscriber add 200@127.0.0.1 --password - >/dev/null   # the password from stdin
g=$($H guess $P 127.0.0.24 100 wrong 10)
r=$($H register $P 127.0.0.24 200 pw-200); rc=$?
[ $rc = 0 ]; result "ten wrong passwords for 100: 200 at the same address still registers" $? "$g; 200: $r"
# a misconfigured phone retrying for 25 s (its bans grow) beside a user who registers every 5 s
ok=0
( for _ in $(seq 5); do $H guess $P 127.0.0.25 100 stale-password 6 >/dev/null; done ) & GP=$!; PIDS+=($GP)
for i in $(seq 5); do $H register $P 127.0.0.25 200 pw-200 >/dev/null && ok=$((ok + 1)); sleep 5; done
wait $GP 2>/dev/null
src_banned=$(bans_json | python3 -c "import json,sys; print(sum(1 for b in json.load(sys.stdin)['bans'] if b['source']=='127.0.0.25'))")
[ $ok = 5 ] && [ "${src_banned:-0}" = 0 ]
result "a phone retrying a wrong password forever never locks out its office" $? "other user registered $ok/5, address bans=$src_banned"

# ---- a 20,000/s flood beside a caller at 50 calls/s ---------------------------------------
rss0=$(rss_kb)
$H flood $P 127.0.0.2 20000 10 > "$WORK/flood.out" & FP=$!; PIDS+=($FP)
sleep 0.5
c=$(calls flood 250 50); peak=$(rss_kb)
wait $FP 2>/dev/null
rss1=$(rss_kb); ok=${c% *}; failed=${c#* }
flood_ban=$(bans_json | python3 -c "import json,sys; print(','.join(b['reason'] for b in json.load(sys.stdin)['bans'] if b['source']=='127.0.0.2'))")
[ "$ok" = 250 ] && [ "$failed" = 0 ] && [ "$flood_ban" = flood ] && [ $((peak - rss0)) -lt 51200 ]
result "flood of 20,000/s for 10 s: caller loses no call, flooder banned, RSS bounded" $? \
  "$(cat "$WORK/flood.out"); calls ok=$ok failed=$failed; ban=$flood_ban; rss ${rss0}->${peak}->${rss1} kB"

# ---- 20,000/s REGISTERs with forged nonces, the flood defence off: the reply cache's cap ---
config '[registrar]
domains = ["127.0.0.1"]
[security]
flood_defence = false
reply_cache_mb = 4'
restart
rss0=$(rss_kb)
r=$($H forged $P 127.0.0.2 20000 10); rss1=$(rss_kb)
cache=$(metric switchboard_reply_cache_bytes); full=$(metric switchboard_reply_cache_full_total)
foreign=$(metric switchboard_auth_foreign_nonces_total)
[ "${cache:-99999999}" -le $((4 << 20)) ] && [ "${full:-0}" -gt 0 ] && [ $((rss1 - rss0)) -lt 40960 ] && [ "${foreign:-0}" -gt 10000 ]
result "20,000/s forged-nonce REGISTERs: answered cheaply, reply cache at its cap, RSS bounded" $? \
  "$r; cache=${cache}B full=${full} foreign_nonces=${foreign} rss ${rss0}->${rss1} kB"

# ---- hostile TCP peers ---------------------------------------------------------------------
config '[security]
allow = ["127.0.0.10/32"]' 'tcp_max_connections_per_ip = 1000'
restart
rss0=$(rss_kb)
r=$($H tcp-idle $P 127.0.0.4 5000 10); conns_peak=$(metric switchboard_tcp_connections)
held=$(sed -n 's/.*held=\([0-9]*\).*/\1/p' <<<"$r"); left=$(sed -n 's/.*open_after_10s=\([0-9]*\).*/\1/p' <<<"$r")
[ "${held:-0}" -le 1000 ] && [ "${left:-1}" = 0 ]
result "5,000 idle connections: 1,000 held (per-address limit), all closed by the idle timeout" $? "$r"
r=$($H tcp-burst $P 127.0.0.5 2000)
est=$(sed -n 's/.*established=\([0-9]*\).*/\1/p' <<<"$r")
[ "${est:-0}" = 2000 ]; result "a burst of 2,000 connects: none dropped by the backlog" $? "$r"
r=$($H tcp-slow $P 127.0.0.6); t=$(sed -n 's/.*closed_after_s=\([0-9]*\).*/\1/p' <<<"$r")
[ "${t:-99}" -le 6 ]; result "a byte a second: closed by the message deadline (3 s)" $? "$r"
r=$($H tcp-noread $P 127.0.0.10 100000); rss1=$(rss_kb)
sent=$(sed -n 's/.*sent=\([0-9]*\).*/\1/p' <<<"$r")
grep -q 'stopped=1' <<<"$r" && [ "${sent:-100000}" -lt 100000 ] && [ $((rss1 - rss0)) -lt 30720 ]
result "a peer that pipelines 100,000 requests and never reads: closed, memory bounded" $? "$r; rss ${rss0}->${rss1} kB"
r=$($H tcp-huge $P 127.0.0.7 10); rss2=$(rss_kb)
grep -q "closed=1" <<<"$r" && [ $((rss2 - rss0)) -lt 30720 ]
result "a 10 MB message without an end: refused and closed" $? "$r; rss ${rss0}->${rss2} kB"
c=$(calls after-tcp 20 20); [ "${c% *}" = 20 ]
result "normal calls after all of it" $? "ok=${c% *} failed=${c#* }"
cl=$(mi_curl "http://127.0.0.1:$MGMT/metrics" | grep '^switchboard_stream_closed_total{transport="tcp"' | tr '\n' ' ')
echo "     $cl"

# ---- SIGTERM under load: registrations, confirmed calls and CDRs survive -----------------
config '[registrar]
domains = ["127.0.0.1"]
auth = false
ping_interval_s = 0
[dialog]
enabled = true
[accounting]
enabled = true
[security]
allow = ["127.0.0.3/32", "127.0.0.8/32"]'
restart
sipp 127.0.0.1:$P -sf "$SC/uac-rr.xml" -i 127.0.0.3 -p $CALLER -m 20 -r 20 -d 12000 -nostdin -timeout 60s \
  -trace_stat -stf "$WORK/held.csv" -fd 1 >"$WORK/held.out" 2>&1 </dev/null & HP=$!; PIDS+=($HP)
sleep 2
sipp 127.0.0.1:$P -sf "$SC/reg-many.xml" -i 127.0.0.8 -p $((CALLER + 1)) -m 200 -r 200 -nostdin -timeout 20s \
  >"$WORK/regs.out" 2>&1 </dev/null
sipp 127.0.0.1:$P -sf "$SC/uac-rr.xml" -i 127.0.0.3 -p $((CALLER + 2)) -m 5 -r 50 -d 10000 -nostdin -timeout 60s \
  -trace_stat -stf "$WORK/late.csv" -fd 1 >"$WORK/late.out" 2>&1 </dev/null & LP=$!; PIDS+=($LP)
sleep 0.5
kill -TERM "$SB_PID"; t0=$(date +%s%N); wait "$SB_PID"; rc=$?; dt=$(( ($(date +%s%N) - t0) / 1000000 ))
SB_PID=; start_sb
regs=$(cli ul dump --json 2>/dev/null | python3 -c "import json,re,sys; d=json.load(sys.stdin); print(sum(1 for x in d.get('Domains', []) for a in x['AORs'] if re.match(r'u[0-9]+@', a['AOR'])))")
for p in $HP $LP; do for _ in $(seq 300); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done; done
a=$(col "$WORK/held.csv" 'SuccessfulCall(C)'); b=$(col "$WORK/late.csv" 'SuccessfulCall(C)')
sleep 2
acc=$("$SB" cdr export --format json --config "$WORK/sb.toml" 2>/dev/null | python3 -c "import json,sys; print(sum(1 for r in json.load(sys.stdin) if r.get('result') == 'answered'))")
[ $rc = 0 ] && [ "${regs:-0}" = 200 ] && [ "$a" = 20 ] && [ "$b" = 5 ] && [ "${acc:-0}" = 25 ]
result "SIGTERM under load: every registration, call and CDR is there after the restart" $? \
  "exit=$rc in ${dt}ms; registrations ${regs:-0}/200, calls ended through the new process $a/20 + $b/5 (< 1 s old), answered CDRs ${acc:-0}/25"

# ---- startups that must fail loudly --------------------------------------------------------
out=$("$SB" run --config "$WORK/sb.toml" 2>&1 </dev/null); rc=$?
[ $rc != 0 ] && grep -qi "cannot bind" <<<"$out"
result "a second instance on the same ports exits non-zero, naming the cause" $? "rc=$rc: $(grep -io 'cannot bind[^(]*' <<<"$out" | head -1)"
cleanup_sb
HELD=$((BASE + 90)); need_free $HELD
sed "s#^listen = \"127.0.0.1:$MGMT\"#listen = \"127.0.0.1:$HELD\"#" "$WORK/sb.toml" > "$WORK/busy-mgmt.toml"
python3 -c "import socket,time; s=socket.socket(); s.bind(('127.0.0.1', $HELD)); s.listen(); time.sleep(5)" & BP=$!; PIDS+=($BP); sleep 0.3
out=$("$SB" run --config "$WORK/busy-mgmt.toml" 2>&1 </dev/null); rc=$?
[ $rc != 0 ] && grep -qi "management" <<<"$out"
result "a management port another process holds: non-zero exit" $? "rc=$rc: $(tail -1 <<<"$out" | cut -c1-120)"

sed "s#^url = .*#url = \"sqlite://$WORK/missing/sb.db\"#" "$WORK/sb.toml" > "$WORK/bad-db.toml"
out=$("$SB" check --config "$WORK/bad-db.toml" 2>&1); rc=$?
out2=$("$SB" run --config "$WORK/bad-db.toml" 2>&1 </dev/null); rc2=$?
[ $rc = 1 ] && grep -q "does not exist" <<<"$out" && [ $rc2 != 0 ] && grep -q "cannot be opened" <<<"$out2"
result "a database that cannot be opened: check and run fail, naming it" $? "check rc=$rc: $(tail -1 <<<"$out" | cut -c1-100); run rc=$rc2"
python3 -c "import socket,time; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('127.0.0.1', $P)); time.sleep(5)" & UP=$!; PIDS+=($UP); sleep 0.3
out=$("$SB" run --config "$WORK/sb.toml" 2>&1 </dev/null); rc=$?
[ $rc != 0 ] && grep -qi "cannot bind udp 127.0.0.1:$P" <<<"$out"
result "a UDP port another process holds: non-zero exit (no silent sharing)" $? "rc=$rc: $(grep -io 'cannot bind udp[^)]*)' <<<"$out" | head -1)"

cleanup
echo "hardening e2e: $PASS passed, $FAIL failed"
[ $FAIL = 0 ]

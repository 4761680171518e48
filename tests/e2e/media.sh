#!/usr/bin/env bash
# Media through rtpengine end to end, in a private network namespace (own loopback: fixed
# ports, no traffic out; Chromium gathers no other interface). Real peers:
#   - rtpengine (Debian rtpengine-daemon, userspace, --table=-1) started here on 127.0.0.1,
#     two instances for the failover phase; a hostile NG stand-in (fakeng.py) for bad input.
#   - SIPp callers and media-server stand-ins: a call with RTP played from SIPp's pcap has
#     both SDPs rewritten to the relay and its RTP echoed by the far SIPp through it; query
#     shows the call during it and not after the BYE.
#   - JsSIP in Debian's Chromium over WSS and baresip (Debian, standing in for FreeSWITCH):
#     calls both ways with DTLS-SRTP on the browser leg and plain RTP on baresip's, hold and
#     resume by re-INVITE, and an Opus-only browser transcoded to baresip's G.711.
#   - 20 calls/s over two instances, one killed during the run.
# Prints one line per case and "N passed, M failed"; exits non-zero on failure.
set -uo pipefail
if [ -z "${SB_MEDIA_NETNS:-}" ]; then
  exec unshare -n env SB_MEDIA_NETNS=1 bash "$0" "$@"
fi
ip link set lo up
source "$(dirname "$0")/lib.sh"
WORK=$(mktemp -d /tmp/sb-media.XXXXXX)
E2E="$ROOT/tests/e2e"
NG="$E2E/ngcli.py"
P=5060; WSSP=8443; MGMT=9888; FSP=5080; RTPA=2223; RTPB=2225; FAKE=2227; BSCTL=6070
WEB="$E2E/web"; ORIGIN_PORT=8000
FIX="$ROOT/crates/net/tests/fixtures"
need_binary
command -v rtpengine >/dev/null || { echo "rtpengine is missing (apt-get install rtpengine-daemon)"; exit 2; }
now_ms() { date +%s%3N; }
MI="http://127.0.0.1:$MGMT/mi"
rpc() { mi_curl -d "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"$1\",\"params\":${2:-{\}}}" "$MI"; }
metric() { mi_curl "http://127.0.0.1:$MGMT/metrics" | awk -v k="$1" '$1==k{print $2}'; }
mkdir -p "$WORK/pcap"; ln -sf /usr/share/sip-tester/*.pcap "$WORK/pcap/"

# start_rtpengine NAME NG_PORT PORT_MIN PORT_MAX: as RTP_<NAME>, once it answers a ping
start_rtpengine() {
  rtpengine --config-file=none --table=-1 --foreground --log-stderr --log-level=5 \
    --interface=127.0.0.1 --listen-ng=127.0.0.1:$2 --port-min=$3 --port-max=$4 \
    --delete-delay=0 --pidfile="$WORK/rtp-$1.pid" >"$WORK/rtpengine-$1.log" 2>&1 </dev/null &
  local pid=$!; PIDS+=($pid); printf -v "RTP_$1" %s "$pid"
  for _ in $(seq 50); do
    python3 "$NG" 127.0.0.1:$2 ping 2>/dev/null | grep -q pong && return 0; sleep 0.1
  done
  echo "rtpengine $1 did not start"; tail -5 "$WORK/rtpengine-$1.log"; exit 1
}
# ng PORT COMMAND ARGS...: an NG command to an rtpengine, its reply as JSON
ng() { python3 "$NG" "127.0.0.1:$1" "${@:2}"; }
# jq_py JSON EXPR: a Python expression over the parsed JSON `j`
jq_py() { python3 -c "import json,sys; j=json.loads(sys.argv[1]); print($2)" "$1" 2>/dev/null; }

config() { # INSTANCES RELAY [EXTRA]
  base_config "udp" $FSP
  cat <<TOML
[dialog]
enabled = true
[rtpengine]
instances = [$1]
timeout_ms = 200
retries = 2
ping_interval_s = 1
[media]
relay = "$2"
${3:-}
TOML
}

echo "== phase 1: SIPp calls with RTP through rtpengine"
start_rtpengine A $RTPA 30000 30499
config "\"udp:127.0.0.1:$RTPA\"" always > "$WORK/sb.toml"
start_sb
( cd "$WORK" && exec sipp -sf "$SC/uas-media.xml" -i 127.0.0.1 -p $FSP -cp 8891 -mi 127.0.0.1 -mp 26000 \
  -rtp_echo -m 1 -nostdin -timeout 30s -trace_logs -log_file uas.log ) >"$WORK/uas.out" 2>&1 </dev/null &
UAS=$!; PIDS+=($UAS); sleep 0.3
( cd "$WORK" && exec sipp 127.0.0.1:$P -sf "$SC/uac-media.xml" -s 1000 -i 127.0.0.1 -p 5070 -cp 8892 \
  -mi 127.0.0.1 -mp 26100 -d 7000 -m 1 -nostdin -timeout 30s -trace_logs -log_file uac.log ) >"$WORK/uac.out" 2>&1 </dev/null &
UAC=$!; PIDS+=($UAC)
sleep 4
list=$(ng $RTPA list)
cid=$(jq_py "$list" 'j["calls"][0]')
q1=$(ng $RTPA query call-id="$cid")
shown=$(rpc rtpengine_show)
wait $UAC; uac_rc=$?
wait $UAS; uas_rc=$?
q2=$(ng $RTPA query call-id="$cid")
# the caller's RTP reached the relay, and the far SIPp echoed it back through the relay:
# every stream of both tags carried packets
pk=$(jq_py "$q1" '" ".join(str(s["stats"]["packets"]) for t in j["tags"].values() for m in t["medias"] for s in m["streams"] if "RTP" in s["flags"])')
min_pk=$(jq_py "$q1" 'min(s["stats"]["packets"] for t in j["tags"].values() for m in t["medias"] for s in m["streams"] if "RTP" in s["flags"])')
[ "$uac_rc" = 0 ] && [ "$uas_rc" = 0 ] && [ "$(jq_py "$q1" 'j["result"]')" = ok ] && [ "${min_pk:-0}" -ge 50 ] \
  && [ "$(jq_py "$q2" 'j["result"]')" = error ]
result "sipp-rtp-through-rtpengine" $? "uac rc=$uac_rc ($(grep -o 'answer m=audio [0-9]*' "$WORK/uac.log" | head -1)), uas rc=$uas_rc ($(grep -o 'offer m=audio [0-9]*' "$WORK/uas.log" | head -1)), RTP packets per stream during the call: ${pk:-none}; query after the BYE: $(jq_py "$q2" 'j.get("error-reason", j["result"])')"

calls=$(jq_py "$shown" 'j["result"]["instances"][0]["calls"]')
state=$(jq_py "$shown" 'j["result"]["instances"][0]["state"]')
rtt=$(metric "switchboard_rtpengine_rtt_seconds{instance=\"udp:127.0.0.1:$RTPA\"}")
up=$(metric "switchboard_rtpengine_up{instance=\"udp:127.0.0.1:$RTPA\",set=\"0\"}")
deletes=$(metric switchboard_media_deletes_total)
[ "$calls" = 1 ] && [ "$state" = up ] && [ "$up" = 1 ] && [ "$deletes" = 1 ] && [ -n "$rtt" ]
result "rtpengine-show-and-metrics" $? "during the call: state=$state calls=$calls; after: up=$up rtt=${rtt}s deletes=$deletes"

# management: an instance switched off takes no new call (503), switched on again it does
r=$(rpc rtpengine_enable "{\"url\":\"udp:127.0.0.1:$RTPA\",\"enable\":0}")
off=$(python3 "$E2E/mediareq.py" $P 5072 "sip:1000@127.0.0.1:$P" plain 5)
r2=$(rpc rtpengine.enable "[\"all\", 1]")
bad=$(rpc rtpengine_enable '{"url":"udp:127.0.0.9:1","enable":1}')
[[ "$r" == *'"changed":1'* ]] && [[ "$off" == 503* ]] && [[ "$r2" == *'"changed":1'* ]] && [[ "$bad" == *'no rtpengine instance'* ]]
result "rtpengine-enable-off-refuses-new-calls" $? "disabled: $off; unknown instance: $(jq_py "$bad" 'j["error"]["message"]')"

# the CLI, and the instances read again from OpenSIPS' rtpengine table (hostile rows skipped)
cli() { "$SB" "$@" --mi "$MI" --token-file "$WORK/switchboard.token"; }
show=$(cli rtpengine show)
python3 - "$WORK/sb.db" <<PY
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
db.executemany("INSERT INTO rtpengine (socket, set_id) VALUES (?, ?)", [
    ("udp:127.0.0.1:$RTPA=3", 0),          # the live instance, weight 3
    ("udp:rtp.example.com:2223", 0),       # a name: refused
    ("udp:127.0.0.1:2299=-5", 0),          # a negative weight: refused
    ("udp:127.0.0.1:2297", -1),            # a negative set: refused
    ("x" * 5000, 0),                       # absurdly long: refused
])
db.commit()
PY
sed -i 's|^instances = \[.*\]$|source = "database"|' "$WORK/sb.toml"
reload=$(cli rtpengine reload)
shown=$(rpc rtpengine_show)
n=$(jq_py "$shown" 'len(j["result"]["instances"])'); w=$(jq_py "$shown" 'j["result"]["instances"][0]["weight"]')
skipped=$(grep -c "rtpengine row skipped" "$WORK/sb.log")
( cd "$WORK" && exec sipp -sf "$SC/uas-media.xml" -i 127.0.0.1 -p $FSP -cp 8891 -m 1 -nostdin -timeout 15s ) >"$WORK/uas-db.out" 2>&1 </dev/null &
UAS=$!; PIDS+=($UAS); sleep 0.3
okcall=$(python3 "$E2E/mediareq.py" $P 5073 "sip:1000@127.0.0.1:$P" plain 5)
wait $UAS
grep -q "udp:127.0.0.1:$RTPA .* up " <<<"$show" && [[ "$reload" == *'"instances": 1'* ]] && [ "$n" = 1 ] && [ "$w" = 3 ] \
  && [ "$skipped" -ge 4 ] && [[ "$okcall" == 200* ]]
rc=$?
result "cli-show-and-reload-from-the-opensips-rtpengine-table" $rc "$(grep "udp:127.0.0.1:$RTPA" <<<"$show" | tr -s ' '); reload: $(tr -d " \n" <<<"$reload"); weight $w; $skipped hostile rows skipped; then a call: $okcall"

echo "== phase 1b: bad input"
# an SDP rtpengine refuses: 488 with its reason, nothing sent to the media server
( cd "$WORK" && exec sipp -sf "$SC/uas-media.xml" -i 127.0.0.1 -p $FSP -cp 8891 -m 1 -nostdin -timeout 15s ) >"$WORK/uas2.out" 2>&1 </dev/null &
UAS=$!; PIDS+=($UAS); sleep 0.3
g=$(python3 "$E2E/mediareq.py" $P 5074 "sip:1000@127.0.0.1:$P" garbage 5)
[[ "$g" == 488* ]]
result "sdp-rtpengine-refuses-gets-488" $? "$g"
# the media server stand-in is still there, untouched: a good call passes
ok=$(python3 "$E2E/mediareq.py" $P 5076 "sip:1000@127.0.0.1:$P" plain 5)
wait $UAS; uas_rc=$?
[[ "$ok" == 200* ]] && [ $uas_rc = 0 ]
result "a-good-call-after-the-refusal" $? "$ok, media server rc=$uas_rc"

# a callee whose 200 carries a malformed SDP: the caller gets 502, the callee ACK and BYE
( cd "$WORK" && exec sipp -sf "$SC/uas-badsdp.xml" -i 127.0.0.1 -p $FSP -cp 8891 -m 1 -nostdin -timeout 15s ) >"$WORK/uas3.out" 2>&1 </dev/null &
UAS=$!; PIDS+=($UAS); sleep 0.3
b=$(python3 "$E2E/mediareq.py" $P 5078 "sip:1000@127.0.0.1:$P" plain 5)
wait $UAS; uas_rc=$?
[[ "$b" == 502* ]] && [ $uas_rc = 0 ]
result "reply-with-malformed-sdp-gets-502-and-callee-ended" $? "caller: $b; callee got ACK and BYE: rc=$uas_rc"
cleanup; PIDS=()

echo "== phase 1c: a relay answering garbage, refusing, or nothing"
echo garbage > "$WORK/fake.mode"
python3 "$E2E/fakeng.py" $FAKE "$WORK/fake.mode" >"$WORK/fake.log" 2>&1 &
PIDS+=($!)
config "\"udp:127.0.0.1:$FAKE\"" always > "$WORK/sb.toml"
start_sb
out=""
for mode in garbage error nosdp silent; do
  echo $mode > "$WORK/fake.mode"
  r=$(python3 "$E2E/mediareq.py" $P 5080 "sip:1000@127.0.0.1:$P" plain 5)
  out+="$mode: $r; "
  case $mode in
    garbage|nosdp|silent) [[ "$r" == 503* ]] || bad_relay=1 ;;
    error) [[ "$r" == 488* ]] || bad_relay=1 ;;
  esac
  # the silent relay is tried 3 times of 200 ms, then given up: the call is not held longer
  [ $mode = silent ] && { t=${r##* }; python3 -c "import sys; sys.exit(0 if float(sys.argv[1]) < 1.5 else 1)" "$t" || bad_relay=1; }
done
failures=$(metric switchboard_media_failures_total)
[ -z "${bad_relay:-}" ] && [ "${failures:-0}" -ge 4 ] && grep -q "rtpengine instance marked dead" "$WORK/sb.log"
result "relay-garbage-refusal-nosdp-silence-each-a-clear-final-response" $? "${out}media failures counted: $failures"
cleanup; PIDS=()

echo "== phase 2: a browser over WSS and baresip (standing in for FreeSWITCH) through rtpengine"
need_browser
start_rtpengine A $RTPA 30000 30499
{
  config "\"udp:127.0.0.1:$RTPA\"" auto
  cat <<TOML
[tls]
certificate = "$FIX/server.crt"
private_key = "$FIX/server.key"
[registrar]
domains = ["127.0.0.1"]
ping_interval_s = 0
TOML
} | sed "s|^listen = \[\"udp:127.0.0.1:$P\"\]|listen = [\"udp:127.0.0.1:$P\", \"wss:127.0.0.1:$WSSP\"]|" > "$WORK/sb.toml"
start_sb
"$SB" subscriber add alice@127.0.0.1 --password secret1 --mi "$MI" --token-file "$WORK/switchboard.token" >/dev/null
# baresip as the media server: answers at once, G.711 only, calls users through the proxy
start_baresip "$WORK/bs" $FSP $BSCTL "10000-10099" "<sip:fs@127.0.0.1:$FSP>;regint=0;answermode=auto;outbound=\"sip:127.0.0.1:$P\""
start_agent
expect "^browser " 30 || { echo "the browser did not start"; tail -5 "$WORK/agent.err"; exit 1; }
agent ua alice wss://127.0.0.1:$WSSP sip:alice@127.0.0.1 alice secret1
expect "^alice registered" 15 || { echo "the browser did not register"; tail -5 "$WORK/agent.out"; exit 1; }
# stats NAME: the agent's next stats line
stats() {
  local n; n=$(grep -c "^$1 stats" "$WORK/agent.out")
  agent stats "$1"
  for _ in $(seq 50); do
    [ "$(grep -c "^$1 stats" "$WORK/agent.out")" -gt "$n" ] && { grep "^$1 stats" "$WORK/agent.out" | tail -1; return 0; }
    sleep 0.1
  done
  echo "$1 stats none"
}
field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$2"; }
# rtp_from_baresip: RTP packets the relay received from baresip's side of the only call
rtp_side() { # PORT_PREFIX: packets of RTP streams whose endpoint port starts with it
  local c q; c=$(jq_py "$(ng $RTPA list)" 'j["calls"][0]')
  q=$(ng $RTPA query call-id="$c")
  jq_py "$q" "sum(s['stats']['packets'] for t in j['tags'].values() for m in t['medias'] for s in m['streams'] if 'RTP' in s['flags'] and str(s['endpoint'].get('port','')).startswith('$1'))"
}

# bs_rtcp: baresip's own RTP counts from its next RTCP report ("tx=N rx=M": packets it sent
# and received), via ctrl_tcp events (one report every few seconds)
bs_rtcp() {
  python3 "$E2E/bsctl.py" $BSCTL "callstat" 7 | grep '"CALL_RTCP"' | tail -1 \
    | python3 -c 'import json,sys; s=json.loads(sys.stdin.read() or "{}").get("rtcp_stats",{}); print("tx=%s rx=%s" % (s.get("tx",{}).get("sent",0), s.get("rx",{}).get("sent",0)))' 2>/dev/null || echo "tx=0 rx=0"
}

agent call alice sip:fs@127.0.0.1
expect "^alice call confirmed" 15; rc=$?
sleep 3
st=$(stats alice); from_bs=$(rtp_side 100); bs=$(bs_rtcp)
in=$(field in "$st"); out=$(field out "$st")
[ $rc = 0 ] && [ "${in:-0}" -ge 50 ] && [ "${out:-0}" -ge 50 ] && [ "$(field dtls "$st")" = connected ] \
  && [ "$(field srtp "$st")" != - ] && [ "${from_bs:-0}" -ge 50 ] && grep -q "^alice remote_sdp answer dtls" "$WORK/agent.out" \
  && [ "$(field rx " $bs")" -ge 50 ] && [ "$(field tx " $bs")" -ge 50 ]
result "browser-calls-baresip-dtls-srtp-to-rtp" $? "$st; baresip (its RTCP report): $bs; relay got ${from_bs:-0} RTP packets from baresip; $(grep -m1 '^alice remote_sdp answer' "$WORK/agent.out")"

agent hold alice; expect "^alice hold" 10; h=$?
sleep 1
agent unhold alice; expect "^alice unhold" 10; u=$?
st1=$(stats alice); sleep 2; st2=$(stats alice)
grow_in=$(( $(field in "$st2") - $(field in "$st1") )); grow_out=$(( $(field out "$st2") - $(field out "$st1") ))
offers=$(metric switchboard_media_offers_total)
[ $h = 0 ] && [ $u = 0 ] && [ $grow_in -ge 40 ] && [ $grow_out -ge 40 ] && [ "${offers:-0}" -ge 3 ]
result "hold-and-resume-by-reinvite-keep-media-flowing" $? "after resume, in 2 s: +$grow_in in, +$grow_out out; offers so far: $offers"
agent hangup alice; expect "^alice ended" 10
sleep 0.5
left=$(jq_py "$(ng $RTPA list)" 'len(j["calls"])')
[ "$left" = 0 ]
result "the-browser-hangs-up-and-the-session-is-deleted" $? "calls at the relay after the BYE: $left"

python3 "$E2E/bsctl.py" $BSCTL "dial sip:alice@127.0.0.1" 1 >/dev/null
expect "^alice incoming confirmed" 15; rc=$?
sleep 3
st=$(stats alice); from_bs=$(rtp_side 100); bs=$(bs_rtcp)
in=$(field in "$st"); out=$(field out "$st")
[ $rc = 0 ] && [ "${in:-0}" -ge 50 ] && [ "${out:-0}" -ge 50 ] && [ "$(field dtls "$st")" = connected ] \
  && [ "${from_bs:-0}" -ge 50 ] && grep -q "^alice remote_sdp offer dtls" "$WORK/agent.out" \
  && [ "$(field rx " $bs")" -ge 50 ] && [ "$(field tx " $bs")" -ge 50 ]
result "baresip-calls-the-browser-over-its-wss" $? "$st; baresip (its RTCP report): $bs; relay got ${from_bs:-0} RTP packets from baresip; $(grep -m1 '^alice remote_sdp offer' "$WORK/agent.out")"
agent hangup alice; expect "^alice ended remote|^alice ended local" 10
sleep 1

echo "== phase 3: an Opus-only browser and a G.711-only baresip: transcoded"
n0=$(grep -c "^alice call confirmed" "$WORK/agent.out")
agent call alice sip:fs@127.0.0.1 opus
for _ in $(seq 150); do [ "$(grep -c "^alice call confirmed" "$WORK/agent.out")" -gt "$n0" ] && break; sleep 0.1; done
sleep 3
st=$(stats alice); from_bs=$(rtp_side 100); bs=$(bs_rtcp)
in=$(field in "$st"); out=$(field out "$st")
codec=$(field codec "$st")
[ "${in:-0}" -ge 50 ] && [ "${out:-0}" -ge 50 ] && [ "$codec" = audio/opus ] && [ "${from_bs:-0}" -ge 50 ] \
  && grep -q "PCMU\|PCMA" "$WORK/baresip.log" && [ "$(field rx " $bs")" -ge 50 ]
result "opus-only-browser-to-g711-baresip-transcoded" $? "$st; baresip (G.711, its RTCP report): $bs; relay got ${from_bs:-0} RTP packets from baresip"
agent hangup alice; expect "^alice ended" 10
stop_agent
cleanup; PIDS=()

echo "== phase 4: two rtpengine instances, one killed during 20 calls/s"
start_rtpengine A $RTPA 30000 30499
start_rtpengine B $RTPB 30500 30999
config "\"udp:127.0.0.1:$RTPA\", \"udp:127.0.0.1:$RTPB\"" always > "$WORK/sb.toml"
start_sb
grep -v 'play_pcap_audio' "$SC/uac-media.xml" > "$WORK/uac-load.xml"
( cd "$WORK" && exec sipp -sf "$SC/uas-media.xml" -i 127.0.0.1 -p $FSP -cp 8891 -nostdin -timeout 60s ) >"$WORK/uas-load.out" 2>&1 </dev/null &
UAS=$!; PIDS+=($UAS); sleep 0.3
( cd "$WORK" && exec sipp 127.0.0.1:$P -sf "$WORK/uac-load.xml" -s 1000 -i 127.0.0.1 -p 5070 -cp 8892 \
  -r 20 -m 400 -d 3000 -nostdin -timeout 60s -trace_rtt -rtt_freq 1 -trace_stat -stf "$WORK/load.csv" -fd 1 ) >"$WORK/uac-load.out" 2>&1 </dev/null &
UAC=$!; PIDS+=($UAC)
sleep 8
before=$(rpc rtpengine_show)
kill -KILL "$RTP_A"; killed_at=$(now_ms)
for _ in $(seq 300); do kill -0 $UAC 2>/dev/null || break; sleep 0.1; done
kill -0 $UAC 2>/dev/null && kill -TERM $UAC
wait $UAC; uac_rc=$?
kill -TERM $UAS 2>/dev/null; wait $UAS 2>/dev/null
after=$(rpc rtpengine_show)
ok=$(col "$WORK/load.csv" "SuccessfulCall(C)")
failed=$(col "$WORK/load.csv" "FailedCall(C)")
lat=$(cat "$WORK"/uac-load_*_rtt.csv 2>/dev/null | awk -F';' '$3+0 == 1 {print $2}' | sort -n | awk '{a[NR]=$1} END {if (!NR) {print "none"; exit} i=int(NR*0.5)+1; j=int(NR*0.99)+1; if (j>NR) j=NR; printf "p50=%.1f p99=%.1f max=%.1f n=%d", a[i], a[j], a[NR], NR}')
slow=$(cat "$WORK"/uac-load_*_rtt.csv 2>/dev/null | awk -F';' '$3+0 == 1 && $2 > 500 {n++} END {print n+0}')
p50=$(sed -n 's/.*p50=\([0-9.]*\).*/\1/p' <<<"$lat"); max=$(sed -n 's/.*max=\([0-9.]*\).*/\1/p' <<<"$lat")
a_calls=$(jq_py "$before" 'j["result"]["instances"][0]["calls"]'); b_calls=$(jq_py "$before" 'j["result"]["instances"][1]["calls"]')
a_state=$(jq_py "$after" 'j["result"]["instances"][0]["state"]'); b_state=$(jq_py "$after" 'j["result"]["instances"][1]["state"]')
b_after=$(jq_py "$after" 'j["result"]["instances"][1]["requests"]')
[ "${ok:-0}" -ge 398 ] && [ "$a_state" = down ] && [ "$b_state" = up ] && [ "${a_calls:-0}" -gt 0 ] && [ "${b_calls:-0}" -gt 0 ] \
  && python3 -c "import sys; sys.exit(0 if float(sys.argv[1]) < 50 and float(sys.argv[2]) < 1500 else 1)" "${p50:-999}" "${max:-99999}" \
  && [ "$slow" -le 5 ]
result "instance-killed-under-20-cps-new-calls-go-to-the-other" $? "$ok ok, $failed failed of 400; before the kill A held $a_calls calls, B $b_calls; after: A $a_state, B $b_state; INVITE->200 ms: $lat, over 500 ms: $slow"
cleanup; PIDS=()

echo
echo "$PASS passed, $FAIL failed"
[ "$FAIL" = 0 ]

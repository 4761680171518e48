#!/usr/bin/env bash
# TLS, WebSocket and secure WebSocket end to end, in a private network namespace (its own
# loopback: fixed ports, no clash with other suites, no traffic out; Chromium gathers no
# other interface). Real peers:
#   - JsSIP in Debian's Chromium (playwright-core; tests/e2e/web) registers over WS and WSS
#     with digest auth, is called by a SIPp "FreeSWITCH" (the INVITE comes over the browser's
#     own connection), calls a SIPp UAS through the resource balancer, and in registrar
#     forward mode is stored at the SIPp "FreeSWITCH" with a Path and a dialable Contact and
#     called back over its WSS connection; closing its page removes its contact at once.
#   - baresip (Debian, default settings but for loopback and the test CA) registers over TLS
#     with digest auth, calls through the proxy, and is called over its TLS connection.
#   - hostile peers (streamcli.py): bad handshakes, a non-SIP subprotocol, a disallowed
#     Origin, a 10 MB frame, plain text to a TLS port, handshakes that never finish, 5,000
#     connections from one address, while SIPp calls over UDP are measured unaffected.
# Media servers are on 127.0.0.2 (known by address), users on 127.0.0.1.
# Prints one line per case and "N passed, M failed"; exits non-zero on failure.
set -uo pipefail
if [ -z "${SB_STREAMS_NETNS:-}" ]; then
  exec unshare -n env SB_STREAMS_NETNS=1 bash "$0" "$@"
fi
ip link set lo up
# 5,000 connections from one address need that many descriptors here and in the proxy
ulimit -n "$(ulimit -Hn)" 2>/dev/null
MANY=5000 # fewer when descriptors are short (printed in the case's name)
[ "$(ulimit -n)" = unlimited ] || [ "$(ulimit -n)" -ge 6000 ] || MANY=$(( $(ulimit -n) - 700 ))
source "$(dirname "$0")/lib.sh"
WORK=$(mktemp -d /tmp/sb-streams.XXXXXX)
WEB="$ROOT/tests/e2e/web"
FIX="$ROOT/crates/net/tests/fixtures"
CLI="$ROOT/tests/e2e/streamcli.py"
P=5060; TLSP=5061; WSP=8080; WSSP=8443; MGMT=9888; FS=127.0.0.2; FSP=5080; FSC=5090
BS=6060; BSCTL=6070; ORIGIN_PORT=8000
need_binary
need_browser
now_ms() { date +%s%3N; }
MI="http://127.0.0.1:$MGMT/mi"
cli() { "$SB" "$@" --mi "$MI" --token-file "$WORK/switchboard.token"; }
rpc() { mi_curl -d "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"$1\",\"params\":${2:-{\}}}" "$MI"; }
metric() { mi_curl "http://127.0.0.1:$MGMT/metrics" | awk -v k="$1" '$1==k{print $2}'; }
closed_count() { metric "switchboard_stream_closed_total{transport=\"$1\",reason=\"$2\"}"; }
contacts_of() { rpc ul_show_contact "{\"aor\":\"$1\"}" | grep -o '"Contact":"[^"]*"' | wc -l; }

config() { # MODE WS_ORIGINS
  cat <<TOML
[sip]
listen = ["udp:127.0.0.1:$P", "tcp:127.0.0.1:$P", "tls:127.0.0.1:$TLSP", "ws:127.0.0.1:$WSP", "wss:127.0.0.1:$WSSP"]
ws_origins = [$2]
tcp_message_timeout_s = 3
[tls]
certificate = "$FIX/server.crt"
private_key = "$FIX/server.key"
[registrar]
mode = "$1"
domains = ["127.0.0.1"]
ping_interval_s = 0
# the UDP load generator of the hostile phase calls out without credentials (the proxy as
# its outbound proxy)
trusted = ["127.0.0.3/32"]
[dispatcher]
probe_interval_s = 0
[[dispatcher.set]]
id = 1
destinations = ["sip:$FS:$FSP"]
[balancer]
group = 1
resources = ["pstn"]
[[balancer.node]]
uri = "sip:$FS:$FSP"
resources = "pstn=100"
[dialog]
enabled = true
[routing]
default_set = 1
match_media_servers = "address"
[management]
listen = "127.0.0.1:$MGMT"
token_file = "$WORK/switchboard.token"
[security]
allow = ["127.0.0.1/32", "127.0.0.2/32", "127.0.0.3/32"]
[database]
url = "sqlite://$WORK/sb.db"
TOML
}

uas() { # SCENARIO-ARGS...: a SIPp media server on $FS:$FSP for one call, as UAS_PID
  ( cd "$WORK" && exec sipp -i $FS -p $FSP -cp 8891 -m 1 -nostdin -timeout 30s "$@" ) >"$WORK/uas.out" 2>&1 </dev/null &
  UAS_PID=$!; PIDS+=($UAS_PID); sleep 0.3
}
fs_call() { # USER SCENARIO: a SIPp "FreeSWITCH" on $FS:$FSC calls USER through the proxy
  ( cd "$WORK" && exec sipp 127.0.0.1:$P -sf "$SC/$2" -s "$1" -m 1 -i $FS -p $FSC -cp 8892 -nostdin \
    -timeout 20s -recv_timeout 10000 ) >"$WORK/fs-call-$1.out" 2>&1 </dev/null
}

echo "== phase 1: local registrar, digest auth"
config local "\"http://127.0.0.1:$ORIGIN_PORT\"" > "$WORK/sb.toml"
start_sb
cli subscriber add alice@127.0.0.1 --password secret1 >/dev/null
cli subscriber add bob@127.0.0.1 --password secret2 >/dev/null
cli subscriber add dave@127.0.0.1 --password secret4 >/dev/null
start_agent
expect "^browser " 30 || { echo "the browser did not start"; cat "$WORK/agent.err" | tail -5; exit 1; }

agent ua alice ws://127.0.0.1:$WSP sip:alice@127.0.0.1 alice secret1
expect "^alice registered" 15; rc=$?
ct=$(rpc ul_show_contact '{"aor":"alice@127.0.0.1"}')
[ $rc = 0 ] && grep -q 'transport=ws' <<<"$ct" && grep -q '"Received":"ws:' <<<"$ct"
result "browser-registers-over-ws-with-digest" $? "$(grep -E '^alice (registered|registration_failed)' "$WORK/agent.out" | head -1); $(grep -o '"Contact":"[^"]*"' <<<"$ct" | head -1) $(grep -o '"Received":"[^"]*"' <<<"$ct" | head -1)"

agent ua bob wss://127.0.0.1:$WSSP sip:bob@127.0.0.1 bob secret2
expect "^bob registered" 15; rc=$?
ct=$(rpc ul_show_contact '{"aor":"bob@127.0.0.1"}')
[ $rc = 0 ] && grep -q '"Received":"wss:' <<<"$ct"
result "browser-registers-over-wss-with-digest" $? "$(grep -E '^bob (registered|registration_failed)' "$WORK/agent.out" | head -1); $(grep -o '"Contact":"[^"]*"' <<<"$ct" | head -1) $(grep -o '"Received":"[^"]*"' <<<"$ct" | head -1)"

for u in alice bob; do
  fs_call $u fs-call-webrtc.xml; rc=$?
  expect "^$u incoming confirmed" 5; inc=$?
  [ $rc = 0 ] && [ $inc = 0 ]
  result "media-server-call-reaches-$u-over-its-websocket" $? "sipp rc=$rc; browser: $(grep -E "^$u (incoming|ended)" "$WORK/agent.out" | tr '\n' ';')"
done

uas -sf "$SC/uas-webrtc.xml"
agent call alice sip:5551234@127.0.0.1
expect "^alice call (confirmed|failed)" 15
agent hangup alice
wait $UAS_PID; rc=$?
grep -q "^alice call confirmed" "$WORK/agent.out" && [ $rc = 0 ]
result "browser-call-through-the-balancer" $? "browser: $(grep -E '^alice call' "$WORK/agent.out" | head -1); sipp uas rc=$rc"

# the browser's page closes: its WebSocket drops without an un-REGISTER
before=$(contacts_of alice@127.0.0.1)
agent close alice; expect "^alice closed" 10
t0=$(now_ms); gone=1
for _ in $(seq 20); do [ "$(contacts_of alice@127.0.0.1)" = 0 ] && { gone=0; break; }; sleep 0.05; done
t_gone=$(( $(now_ms) - t0 ))
t1=$(now_ms); st=$(python3 "$ROOT/tests/e2e/sipreq.py" $P $FS $FSC sip:alice@127.0.0.1 5); t_480=$(( $(now_ms) - t1 ))
[ "$before" = 1 ] && [ $gone = 0 ] && grep -q " 480 " <<<"$st" && [ $t_480 -lt 1000 ]
result "closed-websocket-removes-contact-at-once" $? "contacts before $before, none ${t_gone} ms after the close; a call then: '$st' in ${t_480} ms"

# ---- baresip over TLS ------------------------------------------------------------------
start_baresip "$WORK/bs" $BS $BSCTL 10000-10099 \
  "<sip:dave@127.0.0.1;transport=tls>;auth_pass=secret4;outbound=\"sip:127.0.0.1:$TLSP;transport=tls\";regint=300;answermode=auto" \
  "sip_cafile		$FIX/ca.crt"
ct=""
for _ in $(seq 50); do
  ct=$(rpc ul_show_contact '{"aor":"dave@127.0.0.1"}' | grep -o '"Received":"[^"]*"' | head -1)
  [ -n "$ct" ] && break; sleep 0.2
done
noauth=$(python3 "$CLI" tls-register 127.0.0.1 $TLSP "$FIX/ca.crt" dave 2>&1 | tail -1)
[ -n "$ct" ] && grep -q 'tls:' <<<"$ct" && grep -q "TLS.*200 OK" <(sed 's/\x1b\[[0-9;]*m//g' "$WORK/baresip.log") \
  && [ "$noauth" = "status=401" ]
result "baresip-registers-over-tls-with-digest" $? "$(sed 's/\x1b\[[0-9;]*m//g' "$WORK/baresip.log" | grep -m1 'dave@') $ct; without credentials: $noauth"

uas -sn uas
python3 "$ROOT/tests/e2e/bsctl.py" $BSCTL "dial sip:5551234@127.0.0.1" 3 >"$WORK/bs-dial.out" 2>&1
python3 "$ROOT/tests/e2e/bsctl.py" $BSCTL "hangup" 1 >/dev/null 2>&1
wait $UAS_PID; rc=$?
grep -q CALL_ESTABLISHED "$WORK/bs-dial.out" && [ $rc = 0 ]
result "baresip-over-tls-calls-through-the-proxy" $? "established=$(grep -c CALL_ESTABLISHED "$WORK/bs-dial.out"); sipp uas rc=$rc"

fs_call dave fs-call.xml; rc=$?
[ $rc = 0 ]
result "media-server-call-reaches-baresip-over-its-tls-connection" $? "sipp rc=$rc"
kill -KILL $BARESIP 2>/dev/null; wait $BARESIP 2>/dev/null

# ---- hostile peers while calls go on over UDP -----------------------------------------
( cd "$WORK" && exec sipp -sf "$SC/uas-rr.xml" -i $FS -p $FSP -cp 8893 -nostdin ) >"$WORK/uas-load.out" 2>&1 </dev/null &
LOAD_UAS=$!; PIDS+=($LOAD_UAS); sleep 0.3
( cd "$WORK" && exec sipp 127.0.0.1:$P -sf "$SC/fs-out-call.xml" -set ruri "sip:5550000@$FS:$FSP" \
  -set route "<sip:127.0.0.1:$P;lr>" -s 5550000 -i 127.0.0.3 -p 7060 -cp 8894 -r 20 -m 400 \
  -nostdin -timeout 60s -trace_stat -stf "$WORK/load.csv" -fd 1 ) >"$WORK/uac-load.out" 2>&1 </dev/null &
LOAD_UAC=$!; PIDS+=($LOAD_UAC)
hostile() { # NAME COMMAND...: one case, its output as the detail
  local name=$1; shift
  local out; out=$(WS_ORIGIN="http://127.0.0.1:$ORIGIN_PORT" timeout 40 python3 "$CLI" "$@" 2>&1 | tail -1)
  local rc=${PIPESTATUS[0]}
  [ "$rc" = 0 ]; result "$name" $? "$out"
}
hostile "ws-malformed-handshake-gets-400-and-close" ws-bad-handshake 127.0.0.1 $WSP
hostile "ws-without-sip-subprotocol-gets-400-and-close" ws-subprotocol 127.0.0.1 $WSSP tls
hostile "ws-disallowed-origin-gets-403-and-close" ws-origin 127.0.0.1 $WSP https://evil.example
hostile "plain-http-get-on-ws-port-gets-a-page" ws-plain-get 127.0.0.1 $WSP
hostile "ws-10mb-frame-closed-1009-before-its-payload" ws-huge 127.0.0.1 $WSP
hostile "wss-10mb-frame-closed-1009-before-its-payload" ws-huge 127.0.0.1 $WSSP tls
hostile "ws-pings-never-read-closed-by-the-queue-cap" ws-ping-flood 127.0.0.1 $WSP
hostile "plain-text-to-tls-port-closed" tls-garbage 127.0.0.1 $TLSP
hostile "tls-handshake-that-never-finishes-closed" stall 127.0.0.1 $WSSP 8 tls
hostile "ws-handshake-that-never-finishes-closed" stall 127.0.0.1 $WSP 8
hostile "$MANY-connections-from-one-address-excess-refused" many 127.0.0.1 $WSP $MANY
hostile "wss-options-still-answered-after-all-of-it" ws-options 127.0.0.1 $WSSP tls
hostile "tls-with-certificate-checked" tls-options 127.0.0.1 $TLSP "$FIX/ca.crt"
wait $LOAD_UAC; rc=$?
ok=$(col "$WORK/load.csv" "SuccessfulCall(C)"); failed=$(col "$WORK/load.csv" "FailedCall(C)")
[ $rc = 0 ] && [ "$ok" = 400 ] && [ "$failed" = 0 ]
result "udp-calls-unaffected-meanwhile" $? "400 calls at 20/s during the hostile cases: ok=$ok failed=$failed"
kill $LOAD_UAS 2>/dev/null
refused=$(closed_count ws refused); plain=$(closed_count ws plain_http); wsh=$(closed_count ws ws_handshake)
tlsh=$(closed_count tls tls_handshake); fr=$(closed_count ws framing); st=$(closed_count ws peer_not_reading)
warns=$(grep -c "WARN" "$WORK/sb.log")
[ "${refused:-0}" -ge $((MANY - 1100)) ] && [ "${plain:-0}" -ge 1 ] && [ "${wsh:-0}" -ge 3 ] && [ "${tlsh:-0}" -ge 1 ] && [ "${fr:-0}" -ge 1 ] && [ "${st:-0}" -ge 1 ] \
  && [ "$warns" -lt 40 ] && ! grep -q "panicked" "$WORK/sb.log"
result "refusals-counted-and-logged-once" $? "ws refused=$refused plain_http=$plain ws_handshake=$wsh framing=$fr peer_not_reading=$st; tls handshake=$tlsh; $warns warnings in the log"

# ---- registrar forward mode over WSS ----------------------------------------------------
echo "== phase 2: registrar forward mode"
stop_agent
kill -TERM $SB_PID; wait $SB_PID 2>/dev/null
config forward "" > "$WORK/sb.toml"
start_sb
uas -sf "$SC/fs-forward-ws.xml" -trace_msg -message_file "$WORK/fwd-msgs.log"
start_agent
expect "^browser " 30
agent ua carol wss://127.0.0.1:$WSSP sip:carol@127.0.0.1 carol nopass
expect "^carol registered" 15; reg=$?
expect "^carol incoming confirmed" 15; inc=$?
wait $UAS_PID; rc=$?
fwd=$(grep -A20 "^REGISTER" "$WORK/fwd-msgs.log" 2>/dev/null | grep -iE "^(Path|Contact):" | head -2 | tr '\r\n' '  ')
[ $reg = 0 ] && [ $inc = 0 ] && [ $rc = 0 ]
result "forward-mode-over-wss-path-dialable-contact-and-call-back" $? "registered=$([ $reg = 0 ] && echo yes || echo no); at the media server: $fwd; call back confirmed=$([ $inc = 0 ] && echo yes || echo no); sipp rc=$rc"
stop_agent

# ---- client certificates and certificate reload ------------------------------------------
echo "== phase 3: client certificates, certificate reload"
kill -TERM $SB_PID; wait $SB_PID 2>/dev/null
cp "$FIX/server.crt" "$WORK/cert.pem"; cp "$FIX/server.key" "$WORK/key.pem"
config local "" | sed -e "s|^certificate = .*|certificate = \"$WORK/cert.pem\"|" \
  -e "s|^private_key = .*|private_key = \"$WORK/key.pem\"\nclient_ca = \"$FIX/ca.crt\"\nserver_ca = \"$FIX/ca.crt\"|" > "$WORK/sb.toml"
start_sb
CC=("$FIX/server.crt" "$FIX/server.key") # a certificate the test CA signed, for clientAuth too
without=$(python3 "$CLI" tls-options 127.0.0.1 $TLSP "$FIX/ca.crt" 2>&1 | tail -1)
with=$(python3 "$CLI" tls-options 127.0.0.1 $TLSP "$FIX/ca.crt" "${CC[@]}" 2>&1 | tail -1)
! grep -q "status=200" <<<"$without" && grep -q "status=200" <<<"$with"
result "tls-client-certificate-asked-with-client-ca" $? "without a client certificate: $without; with one: $with"

# the proxy as a TLS client: a media server whose certificate the test CA signed for its
# address (127.0.0.5) is accepted; one signed for another address, or of its own making, is
# not (the call ends in an error, nothing is sent to it)
signed() { # NAME SAN: a certificate the test CA signs
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$WORK/$1.key" \
    -out "$WORK/$1.csr" -subj "/CN=$1" 2>/dev/null
  printf "subjectAltName=%s\nextendedKeyUsage=serverAuth,clientAuth\n" "$2" > "$WORK/$1.ext"
  openssl x509 -req -in "$WORK/$1.csr" -CA "$FIX/ca.crt" -CAkey "$FIX/ca.key" -CAcreateserial \
    -CAserial "$WORK/ca.srl" -out "$WORK/$1.crt" -days 2 -extfile "$WORK/$1.ext" 2>/dev/null
}
signed fs5 "IP:127.0.0.5"; signed other "IP:127.0.0.9"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$WORK/self.key" \
  -out "$WORK/self.crt" -days 2 -subj "/CN=127.0.0.5" -addext "subjectAltName=IP:127.0.0.5" 2>/dev/null
out_tls() { # NAME PORT: the outcome of a call to a TLS media server with that certificate
  python3 "$CLI" tls-uas 127.0.0.5 $2 "$WORK/$1.crt" "$WORK/$1.key" >"$WORK/tls-uas-$2.out" 2>&1 &
  local u=$!; PIDS+=($u); sleep 0.5
  local st; st=$(python3 "$ROOT/tests/e2e/sipreq.py" $P 127.0.0.3 7061 "sip:x@127.0.0.5:$2;transport=tls" 8)
  kill $u 2>/dev/null; wait $u 2>/dev/null
  echo "$st / $(head -1 "$WORK/tls-uas-$2.out")"
}
good=$(out_tls fs5 5071); wrong=$(out_tls other 5073); self=$(out_tls self 5075)
grep -q " 486 .*handshake ok" <<<"$good" && ! grep -q " 486 " <<<"$wrong$self" \
  && grep -q "handshake failed" <<<"$wrong" && grep -q "handshake failed" <<<"$self"
result "outgoing-tls-checks-the-servers-certificate" $? "signed for its address: $good; for another: $wrong; self-made: $self"

peer() { python3 "$CLI" tls-peer 127.0.0.1 $TLSP "${CC[@]}" 2>/dev/null | tail -1; }
before=$(peer)
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$WORK/key2.pem" \
  -out "$WORK/c2.csr" -subj "/CN=renewed.example.test" 2>/dev/null
printf "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n" > "$WORK/ext.cnf"
openssl x509 -req -in "$WORK/c2.csr" -CA "$FIX/ca.crt" -CAkey "$FIX/ca.key" -CAcreateserial \
  -CAserial "$WORK/ca.srl" -out "$WORK/cert2.pem" -days 2 -extfile "$WORK/ext.cnf" 2>/dev/null
echo garbage > "$WORK/cert.pem"   # a broken renewal first: refused, the running one stays
r_bad=$(rpc tls_reload); still=$(peer)
cp "$WORK/cert2.pem" "$WORK/cert.pem"; cp "$WORK/key2.pem" "$WORK/key.pem"
r_ok=$(rpc tls_reload); after=$(peer)
[ -n "$before" ] && grep -q '"error"' <<<"$r_bad" && [ "$still" = "$before" ] && grep -q '"result":"OK"' <<<"$r_ok" \
  && [ -n "$after" ] && [ "$after" != "$before" ]
result "tls-reload-takes-a-new-certificate-without-restart" $? "before $before; broken file: $(grep -o '"message":"[^"]*"' <<<"$r_bad" | cut -c1-80), still $still; renewed: $after"
cp "$FIX/server.crt" "$WORK/cert.pem"; cp "$FIX/server.key" "$WORK/key.pem"
kill -HUP $SB_PID; sleep 0.5; hup=$(peer)
kill -0 $SB_PID 2>/dev/null && [ "$hup" = "$before" ]
result "sighup-reloads-the-certificate" $? "after SIGHUP: $hup (the original: $before); still running: $(kill -0 $SB_PID 2>/dev/null && echo yes || echo no)"

echo "$PASS passed, $FAIL failed"
[ "$FAIL" = 0 ]

#!/usr/bin/env bash
# Stream transports under load, in a private network namespace:
#   1. the proxy's CPU per call with the caller on UDP, TLS, WS and WSS, in the same harness
#      (bench/streams/loadgen.py: INVITE/200/ACK/BYE/200 through the proxy to a SIPp UAS);
#   2. TLS handshakes per second (openssl s_time, full handshakes) and the proxy's CPU per
#      handshake;
#   3. N idle WSS connections held (TLS and WebSocket handshakes done): the proxy's RSS per
#      connection.
#   bench/streams.sh [BINARY=target/release/switchboard] [RATE=300] [SECONDS=10] [IDLE=10000]
set -uo pipefail
if [ -z "${SB_BENCH_NETNS:-}" ]; then
  exec unshare -n env SB_BENCH_NETNS=1 bash "$0" "$@"
fi
ip link set lo up
ulimit -n "$(ulimit -Hn)" 2>/dev/null # N idle connections need N descriptors on each side
HERE=$(cd "$(dirname "$0")" && pwd); ROOT=$(cd "$HERE/.." && pwd)
SB=$(realpath "${1:-$ROOT/target/release/switchboard}"); RATE=${2:-300}; SECS=${3:-10}; IDLE=${4:-10000}
FIX="$ROOT/crates/net/tests/fixtures"; LG="$HERE/streams/loadgen.py"
WORK=$(mktemp -d /tmp/sb-bench-streams.XXXXXX); PIDS=()
trap 'for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null; done; rm -rf "$WORK"' EXIT
cat > "$WORK/sb.toml" <<TOML
[sip]
listen = ["udp:127.0.0.1:5060", "tls:127.0.0.1:5061", "ws:127.0.0.1:8080", "wss:127.0.0.1:8443"]
tcp_max_connections = 30000
tcp_max_connections_per_ip = 30000
[tls]
certificate = "$FIX/server.crt"
private_key = "$FIX/server.key"
[dispatcher]
probe_interval_s = 0
[[dispatcher.set]]
id = 1
destinations = ["sip:127.0.0.2:5080"]
[routing]
default_set = 1
[management]
listen = "127.0.0.1:8888"
token_file = "$WORK/switchboard.token"
[security]
flood_defence = false
[database]
url = "sqlite://$WORK/sb.db"
TOML
(cd "$WORK" && exec sipp -sf "$ROOT/tests/e2e/scenarios/uas-rr.xml" -i 127.0.0.2 -p 5080 -cp 8890 -nostdin) >/dev/null 2>&1 </dev/null &
PIDS+=($!)
"$SB" run --config "$WORK/sb.toml" >"$WORK/sb.log" 2>&1 </dev/null & SBP=$!; PIDS+=($SBP)
sleep 1
cpu_ms() { awk '{print ($14 + $15) * 1000 / 100}' "/proc/$SBP/stat"; } # utime+stime, 100 Hz ticks
rss_kb() { awk '/^VmRSS/{print $2}' "/proc/$SBP/status"; }
echo "binary: $SB ($(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null)); $(nproc) cores"
# ONLY=idle skips the calls and handshakes
[ "${ONLY:-}" = idle ] && tps="" || tps="udp tls ws wss"
for tp in $tps; do
  port=5060; [ $tp = tls ] && port=5061; [ $tp = ws ] && port=8080; [ $tp = wss ] && port=8443
  c0=$(cpu_ms)
  out=$(timeout $((SECS * 3 + 30)) python3 "$LG" calls $tp 127.0.0.1 $port "$RATE" "$SECS" 20)
  c1=$(cpu_ms)
  ok=$(sed -n 's/.*ok=\([0-9]*\).*/\1/p' <<<"$out")
  echo "calls over $tp: $out proxy_cpu_ms_per_call=$(awk -v a="$c0" -v b="$c1" -v n="${ok:-0}" 'BEGIN{printf "%.4f", n ? (b-a)/n : 0}')"
done
if [ -n "$tps" ]; then
c0=$(cpu_ms)
hs=$(timeout 30 openssl s_time -connect 127.0.0.1:5061 -new -time 8 2>/dev/null | grep -E "connections in [0-9.]+s" | head -1)
c1=$(cpu_ms)
n=$(sed -n 's/^\([0-9]*\) connections in.*/\1/p' <<<"$hs")
echo "tls handshakes (openssl s_time -new, TLS 1.3, ECDSA P-256): $hs; proxy_cpu_ms_per_handshake=$(awk -v a="$c0" -v b="$c1" -v n="${n:-0}" 'BEGIN{printf "%.3f", n ? (b-a)/n : 0}')"
fi
sleep 2
r0=$(rss_kb)
python3 "$LG" idle wss 127.0.0.1 8443 "$IDLE" 30 >"$WORK/idle.log" 2>&1 & IP=$!; PIDS+=($IP)
for _ in $(seq 3000); do grep -q "^open=" "$WORK/idle.log" && break; sleep 0.1; done
sleep 3
r1=$(rss_kb)
conns=$(curl -s -m 2 -H "Authorization: Bearer $(cat "$WORK/switchboard.token")" http://127.0.0.1:8888/metrics | awk -F' ' '/^switchboard_stream_connections\{transport="wss"\}/{print $2}')
echo "idle wss: $(head -1 "$WORK/idle.log"); proxy holds $conns; rss ${r0} kB -> ${r1} kB: $(awk -v a="$r0" -v b="$r1" -v n="${conns:-1}" 'BEGIN{printf "%.1f", (b-a)/n}') kB per connection"
kill $IP 2>/dev/null

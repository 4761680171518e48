#!/usr/bin/env bash
# What relaying media through rtpengine costs, in a private network namespace: the same
# load (bench/streams/loadgen.py over UDP: INVITE with SDP / 200 with SDP / ACK / BYE,
# through the proxy to a SIPp UAS)
# with [media] relay = "never" and then "always" (offer + answer + delete per call, to a
# real rtpengine on loopback). Prints per mode: calls ok, the proxy's CPU per call,
# rtpengine's CPU per call, and the call setup time (INVITE sent -> 200 received at the
# caller) p50/p99: the difference is the NG round trips added to a call's setup.
#   bench/media.sh [BINARY=target/release/switchboard] [RATE=200] [SECONDS=10]
set -uo pipefail
if [ -z "${SB_BENCH_NETNS:-}" ]; then
  exec unshare -n env SB_BENCH_NETNS=1 bash "$0" "$@"
fi
ip link set lo up
HERE=$(cd "$(dirname "$0")" && pwd); ROOT=$(cd "$HERE/.." && pwd)
SB=$(realpath "${1:-$ROOT/target/release/switchboard}"); RATE=${2:-200}; SECS=${3:-10}
SC="$ROOT/tests/e2e/scenarios"
WORK=$(mktemp -d /tmp/sb-bench-media.XXXXXX); PIDS=()
trap 'for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null; done; rm -rf "$WORK"' EXIT
rtpengine --config-file=none --table=-1 --foreground --log-stderr --log-level=4 \
  --interface=127.0.0.1 --listen-ng=127.0.0.1:2223 --port-min=30000 --port-max=39999 \
  --delete-delay=0 >"$WORK/rtpengine.log" 2>&1 </dev/null &
RTP=$!; PIDS+=($RTP)
(cd "$WORK" && exec sipp -sf "$SC/uas-rr.xml" -i 127.0.0.2 -p 5080 -cp 8890 -nostdin) >/dev/null 2>&1 </dev/null &
PIDS+=($!)
sleep 1
cpu_ms() { awk '{print ($14 + $15) * 1000 / 100}' "/proc/$1/stat"; } # utime+stime, 100 Hz ticks
echo "binary: $SB ($(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null)); $(nproc) cores; $RATE calls/s for $SECS s"
for relay in never always; do
  cat > "$WORK/sb.toml" <<TOML
[sip]
listen = ["udp:127.0.0.1:5060"]
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
[rtpengine]
instances = ["udp:127.0.0.1:2223"]
[media]
relay = "$relay"
TOML
  "$SB" run --config "$WORK/sb.toml" >"$WORK/sb-$relay.log" 2>&1 </dev/null & SBP=$!
  sleep 1
  s0=$(cpu_ms $SBP); r0=$(cpu_ms $RTP)
  out=$(timeout $((SECS * 3 + 30)) python3 "$HERE/streams/loadgen.py" calls udp 127.0.0.1 5060 "$RATE" "$SECS")
  s1=$(cpu_ms $SBP); r1=$(cpu_ms $RTP)
  kill -TERM $SBP; wait $SBP 2>/dev/null
  ok=$(sed -n 's/.*ok=\([0-9]*\).*/\1/p' <<<"$out")
  echo "relay=$relay $out proxy_cpu_ms_per_call=$(awk -v a="$s0" -v b="$s1" -v n="${ok:-0}" 'BEGIN{printf "%.4f", n ? (b-a)/n : 0}') rtpengine_cpu_ms_per_call=$(awk -v a="$r0" -v b="$r1" -v n="${ok:-0}" 'BEGIN{printf "%.4f", n ? (b-a)/n : 0}')"
done

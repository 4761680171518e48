#!/usr/bin/env bash
# Proxy CPU per call with the dispatcher's destinations given as IP addresses (A) or as host
# names (B: fs1.bench.test:5080, fs2.bench.test:5082, served by dnsmasq on 127.0.0.1:5353
# with a 1-hour TTL, so every call after the first finds them in the cache), in alternating
# runs of bench/ab.sh with one binary (A_CONFIG / B_CONFIG): A B A B ... The summary gives
# each configuration's median and the median of the per-round ratios B/A.
#   bench/ab-dns.sh [BINARY=target/release/switchboard] [RATE=2000] [SECONDS=8] [ROUNDS=4]
# Listens on 127.0.0.1:5060/5070/5080/5082/5353 and 8888; stops every process it started by PID.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd); ROOT=$(cd "$HERE/.." && pwd)
BIN=$(realpath "${1:-$ROOT/target/release/switchboard}"); RATE=${2:-2000}; SECS=${3:-8}; ROUNDS=${4:-4}
WORK=$(mktemp -d /tmp/sb-abdns.XXXXXX); DNSP=
trap '[ -n "$DNSP" ] && kill -TERM "$DNSP" 2>/dev/null; rm -rf "$WORK"' EXIT
command -v dnsmasq >/dev/null || { echo "dnsmasq is missing (apt-get install dnsmasq-base)"; exit 2; }
dnsmasq --keep-in-foreground --port=5353 --listen-address=127.0.0.1 --bind-interfaces --no-resolv \
  --no-hosts --conf-file=/dev/null --pid-file="$WORK/dnsmasq.pid" --local-ttl=3600 --local=/bench.test/ \
  --host-record=fs1.bench.test,127.0.0.1 --host-record=fs2.bench.test,127.0.0.1 >"$WORK/dnsmasq.out" 2>&1 &
DNSP=$!
sed 's|^destinations = \["sip:127.0.0.1:5080", "sip:127.0.0.1:5082"\]|destinations = ["sip:fs1.bench.test:5080", "sip:fs2.bench.test:5082"]|; s|^servers = \[\]|servers = ["127.0.0.1:5353"]|' \
  "$ROOT/switchboard.example.toml" >"$WORK/names.toml"
grep -q 'fs1.bench.test' "$WORK/names.toml" && grep -q '127.0.0.1:5353' "$WORK/names.toml" \
  || { echo "could not derive the named configuration"; exit 1; }
cp "$ROOT/switchboard.example.toml" "$WORK/ips.toml"
A_CONFIG="$WORK/ips.toml" B_CONFIG="$WORK/names.toml" "$HERE/ab.sh" "$BIN" "$BIN" "$RATE" "$SECS" "$ROUNDS"

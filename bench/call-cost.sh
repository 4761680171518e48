#!/usr/bin/env bash
# Proxy CPU per call with dialog tracking and accounting off and on, measured in alternating
# runs of ../shared/bench/run-calls.sh (2,000 calls/s by default) against the embedded
# default configuration and two variants:
#   off       the embedded default
#   dialog    [dialog] enabled (persisted to SQLite)
#   acc       [dialog] and [accounting] enabled
#   bench/call-cost.sh [RATE=2000] [SECONDS=8] [ROUNDS=2]
# VARIANTS="off acc" runs only those (off first: the ratios are to it). The summary gives
# each configuration's median and the median of the per-round ratios to off.
# MAX=1 measures the maximum sustained rate instead (../shared/bench/find-max-cps.sh, its
# RATES/STEP_S/BISECT knobs apply), once per configuration and round.
# PIN=1 runs the proxy on CPU 1 and SIPp on CPU 0 (taskset), so the two do not disturb
# each other's caches and scheduling.
# Listens on 127.0.0.1:5060/5070/5080/5082 and 8888; stops every process it started by PID.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd); ROOT=$(cd "$HERE/.." && pwd)
BENCH=$(cd "$ROOT/../shared/bench" && pwd); SB=$ROOT/target/release/switchboard
RATE=${1:-2000}; SECS=${2:-8}; ROUNDS=${3:-2}
WORK=$(mktemp -d /tmp/sb-callcost.XXXXXX); SBP=
trap '[ -n "$SBP" ] && kill -KILL "$SBP" 2>/dev/null; rm -rf "$WORK"' EXIT
[ -x "$SB" ] || { echo "build first: cargo build --release"; exit 2; }
PROXY_CPU=; LOAD_CPU=
if [ "${PIN:-0}" = 1 ]; then PROXY_CPU="taskset -c 1"; LOAD_CPU="taskset -c 0"; fi
ex=$ROOT/switchboard.example.toml
db="s|sqlite://switchboard.db|sqlite://$WORK/sb.db|"
sed -e "$db" "$ex" > "$WORK/off.toml"
# [dialog] enabled = true only (the first `enabled = false` after [dialog])
awk '/^\[dialog\]/{d=1} d && /^enabled = false$/ {print "enabled = true"; d=0; next} {print}' "$ex" \
  | sed -e "$db" > "$WORK/dialog.toml"
awk '/^\[(dialog|accounting)\]/{d=1} d && /^enabled = false$/ {print "enabled = true"; d=0; next} {print}' "$ex" \
  | sed -e "$db" > "$WORK/acc.toml"
run() {
  rm -f "$WORK"/sb.db*
  $PROXY_CPU "$SB" run --config "$WORK/$1.toml" >"$WORK/$1.log" 2>&1 & SBP=$!
  sleep 1
  if [ "${MAX:-0}" = 1 ]; then
    cps=$(PROXY_PID=$SBP $LOAD_CPU "$BENCH/find-max-cps.sh" 127.0.0.1 5060 2>/dev/null \
      | sed -n 's/.*max_sustained_cps=\([0-9]*\).*/\1/p' | tail -1)
    echo "$1 max_sustained_cps=$cps"
  else
    PROXY_PID=$SBP $LOAD_CPU "$BENCH/run-calls.sh" 127.0.0.1 5060 "$RATE" 4 >/dev/null 2>&1 # warm-up
    line=$(PROXY_PID=$SBP $LOAD_CPU "$BENCH/run-calls.sh" 127.0.0.1 5060 "$RATE" "$SECS" 2>/dev/null | tail -1)
    ms=$(sed -n 's/.*proxy_cpu_ms_per_call=\([0-9.]*\).*/\1/p' <<<"$line")
    failed=$(sed -n 's/.* failed=\([0-9]*\).*/\1/p' <<<"$line")
    echo "$1 proxy_cpu_ms_per_call=$ms failed=$failed"
  fi
  kill -TERM "$SBP" 2>/dev/null; wait "$SBP" 2>/dev/null; SBP=
}
VARIANTS=${VARIANTS:-off dialog acc}
for r in $(seq "$ROUNDS"); do
  for v in $VARIANTS; do run "$v" | tee -a "$WORK/results"; done
done
# per configuration the median, and per round the ratio to `off` of the same round (the
# machine drifts by more than the difference between rounds minutes apart; a ratio within
# a round cancels most of it), with their median
python3 - "$WORK/results" $VARIANTS <<'PY'
import sys, statistics as st
lines = [l.split() for l in open(sys.argv[1]) if "=" in l]
variants = sys.argv[2:]
def value(field):
    try:
        return float(field.split("=")[1])
    except ValueError:
        return float("nan")
runs = [(l[0], value(l[1])) for l in lines]
what = lines[0][1].split("=")[0] if lines else "?"
by = {v: [x for n, x in runs if n == v] for v in variants}
for v in variants:
    print(f"{v}: median {what} {st.median(by[v]):.4f} over {len(by[v])} runs")
rounds = [dict(runs[i:i + len(variants)]) for i in range(0, len(runs), len(variants))]
for v in variants[1:]:
    ratios = [r[v] / r["off"] for r in rounds if v in r and r.get("off")]
    print(f"{v}/off by round: {' '.join(f'{x:.3f}' for x in ratios)}; median {st.median(ratios):.3f}")
PY

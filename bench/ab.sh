#!/usr/bin/env bash
# Proxy CPU per call of two switchboard builds on the embedded default, in alternating runs
# of ../shared/bench/run-calls.sh (2,000 calls/s by default): A B A B ... The summary gives
# each build's median and the median of the per-round ratios B/A.
#   bench/ab.sh A_BINARY B_BINARY [RATE=2000] [SECONDS=8] [ROUNDS=4]
# A_CONFIG / B_CONFIG (environment): a configuration file for that side (default: the
# embedded default), e.g. one binary against itself with two configurations.
# e.g. a build of the last landed commit against this tree:
#   git worktree add /tmp/sb-base <commit> && (cd /tmp/sb-base && cargo build --release)
#   bench/ab.sh /tmp/sb-base/target/release/switchboard target/release/switchboard
# Listens on 127.0.0.1:5060/5070/5080/5082 and 8888; stops every process it started by PID.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd); ROOT=$(cd "$HERE/.." && pwd)
BENCH=$(cd "$ROOT/../shared/bench" && pwd)
A=$1; B=$2; RATE=${3:-2000}; SECS=${4:-8}; ROUNDS=${5:-4}
WORK=$(mktemp -d /tmp/sb-ab.XXXXXX); SBP=
trap '[ -n "$SBP" ] && kill -KILL "$SBP" 2>/dev/null; rm -rf "$WORK"' EXIT
run() { # binary [config] -> cpu ms per call, failed calls
  local args=(run); [ -n "${2:-}" ] && args+=(--config "$2")
  (cd "$WORK" && "$1" "${args[@]}" >"$WORK/sb.log" 2>&1 &) ; sleep 1
  SBP=$(pgrep -n -f "^$1 ${args[*]}$")
  local line; line=$(PROXY_PID=$SBP "$BENCH/run-calls.sh" 127.0.0.1 5060 "$RATE" "$SECS")
  kill -TERM "$SBP" 2>/dev/null; for _ in $(seq 30); do kill -0 "$SBP" 2>/dev/null || break; sleep 0.1; done; SBP=
  sed -n 's/.*failed=\([0-9]*\).*proxy_cpu_ms_per_call=\([0-9.NA]*\).*/\2 \1/p' <<<"$line"
}
A=$(realpath "$A"); B=$(realpath "$B")
as=(); bs=(); rs=()
for r in $(seq "$ROUNDS"); do
  read -r a af < <(run "$A" "${A_CONFIG:-}"); read -r b bf < <(run "$B" "${B_CONFIG:-}")
  echo "round $r: A=$a (failed $af) B=$b (failed $bf) B/A=$(awk -v a="$a" -v b="$b" 'BEGIN{printf "%.3f", b/a}')"
  as+=("$a"); bs+=("$b"); rs+=("$(awk -v a="$a" -v b="$b" 'BEGIN{printf "%.4f", b/a}')")
done
med() { printf '%s\n' "$@" | sort -g | awk '{v[NR]=$1} END{print (NR%2 ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2)}'; }
echo "median cpu_ms_per_call A=$(med "${as[@]}") B=$(med "${bs[@]}") median B/A=$(med "${rs[@]}") rounds=$ROUNDS rate=$RATE"

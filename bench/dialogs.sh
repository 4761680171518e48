#!/usr/bin/env bash
# Memory of concurrent dialogs: switchboard on the embedded default with [dialog] enabled
# (persisted to SQLite), SIPp holding N calls at once through it to two SIPp backends; RSS
# from /proc before the calls, right after (INVITE transactions still kept for Timer L), and
# 35 s later with the dialogs alone.
#   bench/dialogs.sh [N=10000] [RATE=1000]   (calls set up per second)
# Listens on 127.0.0.1:5060/5070/5080/5082 and 8888; stops every process it started by PID.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd); ROOT=$(cd "$HERE/.." && pwd)
SC=$ROOT/tests/e2e/scenarios; SB=$ROOT/target/release/switchboard
N=${1:-10000}; RATE=${2:-1000}
WORK=$(mktemp -d /tmp/sb-dlgbench.XXXXXX); PIDS=()
trap 'for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null; wait "$p" 2>/dev/null; done; rm -rf "$WORK"' EXIT
[ -x "$SB" ] || { echo "build first: cargo build --release"; exit 2; }
sed -e 's/^enabled = false$/enabled = true/' -e "s|sqlite://switchboard.db|sqlite://$WORK/sb.db|" \
  "$ROOT/switchboard.example.toml" > "$WORK/sb.toml"
"$SB" run --config "$WORK/sb.toml" >"$WORK/sb.log" 2>&1 & SBP=$!; PIDS+=($SBP)
for p in 5080 5082; do
  sipp -sf "$SC/uas-rr.xml" -i 127.0.0.1 -p $p -aa -nostdin -max_socket 20000 >/dev/null 2>&1 & PIDS+=($!)
done
sleep 1
rss() { awk '/VmRSS/ {print $2}' "/proc/$SBP/status"; }
before=$(rss)
hold=$(( N * 1000 / RATE + 60000 ))
sipp 127.0.0.1:5060 -sf "$SC/uac-rr.xml" -i 127.0.0.1 -p 5070 -r "$RATE" -m "$N" -l "$N" -d "$hold" -nostdin \
  -timeout $(( hold / 1000 + 60 ))s >/dev/null 2>&1 & PIDS+=($!)
for _ in $(seq $(( N / RATE * 2 + 120 ))); do
  n=$(curl -s -m 1 -H "Authorization: Bearer $(cat "$WORK/switchboard.token")" -H 'Content-Type: application/json' -d '{"jsonrpc":"2.0","id":1,"method":"profile_get_size","params":{}}' http://127.0.0.1:8888/mi | sed -n 's/.*"count":\([0-9]*\).*/\1/p')
  [ "${n:-0}" -ge "$N" ] && break; sleep 0.5
done
sleep 3 # every dialog written (after 1 s of life)
with_txns=$(rss)
sleep 33 # the INVITE transactions are over (Timer L, 64*T1 = 32 s): dialogs alone remain
during=$(rss)
n2=$(curl -s -m 1 -H "Authorization: Bearer $(cat "$WORK/switchboard.token")" -H 'Content-Type: application/json' -d '{"jsonrpc":"2.0","id":1,"method":"profile_get_size","params":{}}' http://127.0.0.1:8888/mi | sed -n 's/.*"count":\([0-9]*\).*/\1/p')
echo "dialogs=$n still_up=$n2 rss_before_kb=$before rss_with_invite_transactions_kb=$with_txns rss_dialogs_only_kb=$during bytes_per_dialog=$(( (during - before) * 1024 / (n > 0 ? n : 1) ))"

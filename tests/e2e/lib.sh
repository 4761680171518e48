# Shared helpers of the end-to-end suites: sourced, never run. Every process a suite starts
# goes into PIDS and is stopped by PID on exit; every port is checked free first.
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
SC="$ROOT/tests/e2e/scenarios"
SB="$ROOT/target/release/switchboard"
PIDS=(); PASS=0; FAIL=0
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done
  sleep 0.3
  for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  PIDS=()
}
trap 'cleanup; [ -n "${KEEP_WORK:-}" ] || rm -rf "${WORK:-/nonexistent}"' EXIT
busy() { ss -Hlun "sport = :$1" | grep -q . || ss -Hltn "sport = :$1" | grep -q .; }
need_free() { local port; for port in "$@"; do busy "$port" && { echo "port $port busy: set E2E_BASE"; exit 2; }; done; }
need_binary() { [ -x "$SB" ] || { echo "build first: cargo build --release"; exit 2; }; }
# result NAME RC DETAIL: counts and prints one case
result() { if [ "$2" = 0 ]; then PASS=$((PASS + 1)); echo "ok   $1 ($3)"; else FAIL=$((FAIL + 1)); echo "FAIL $1 ($3)"; fi; }
# col CSV COLUMN: the last row's value of a SIPp stat column
col() { awk -F';' -v want="$2" 'NR==1{for(i=1;i<=NF;i++) if($i==want) c=i; next} {v=$c} END{print (v==""?0:v)+0}' "$1" 2>/dev/null || echo 0; }
# mi_curl ARGS...: curl to the management API with the instance's token (its token_file is
# $WORK/switchboard.token) and the JSON content type it requires
mi_curl() { curl -s -m 2 -H "Authorization: Bearer $(cat "$WORK/switchboard.token" 2>/dev/null)" -H 'Content-Type: application/json' "$@"; }
# base_config "udp tcp" PORT...: the sections the stateful suites share: SIP on $P over the
# given transports, one round-robin set of 127.0.0.1:PORT..., probing off, management on
# $MGMT, SQLite in $WORK. Each suite appends its own sections.
base_config() {
  local listen="" t d=""
  for t in $1; do listen+="\"$t:127.0.0.1:$P\", "; done
  shift
  for t in "$@"; do d+="\"sip:127.0.0.1:$t\", "; done
  cat <<TOML
[sip]
listen = [${listen%, }]
[dispatcher]
probe_interval_s = 0
[[dispatcher.set]]
id = 1
algorithm = "round-robin"
destinations = [${d%, }]
[routing]
default_set = 1
# every peer of these suites is on 127.0.0.1: media servers are told apart by their port
match_media_servers = "address-port"
[management]
listen = "127.0.0.1:$MGMT"
token_file = "$WORK/switchboard.token"
[security]
# the suites' SIPp peers load the proxy from 127.0.0.1 (the flood defence has its own suite)
allow = ["127.0.0.1/32"]
[database]
url = "$(db_url)"
TOML
}
# db_url: the suite's database: SB_DB_URL (a PostgreSQL or MySQL database made for the
# suite by tests/e2e/databases.sh), or SQLite in $WORK
db_url() { echo "${SB_DB_URL:-sqlite://$WORK/sb.db}"; }
# db_sql SQL [URL]: runs SQL on the suite's database (or URL) with the engine's own client;
# rows printed one a line, columns joined by |
db_sql() {
  local url=${2:-$(db_url)}
  case "$url" in
    sqlite://*) python3 - "${url#sqlite://}" "$1" <<'PY'
import sqlite3, sys
c = sqlite3.connect(sys.argv[1])
stmts, buf = [], ""
for ch in sys.argv[2]:
    buf += ch
    if ch == ";" and sqlite3.complete_statement(buf):
        stmts.append(buf); buf = ""
for stmt in stmts + ([buf] if buf.strip() else []):
    for r in c.execute(stmt): print("|".join("" if v is None else str(v) for v in r))
c.commit()
PY
    ;;
    postgres://*|postgresql://*) psql "$url" -v ON_ERROR_STOP=1 -Atq -c "$1" ;;
    mysql://*) python3 - "$url" "$1" <<'PY'
import os, subprocess, sys, urllib.parse
u = urllib.parse.urlparse(sys.argv[1])
out = subprocess.run(["mariadb", "--no-defaults", "-h", u.hostname, "-P", str(u.port or 3306), "-u", urllib.parse.unquote(u.username),
                      u.path.lstrip("/"), "-N", "-B", "-e", sys.argv[2]], env=dict(os.environ, MYSQL_PWD=urllib.parse.unquote(u.password or "")),
                     capture_output=True, text=True)
for line in out.stdout.splitlines():
    print("|".join("" if v == "NULL" else v for v in line.split("\t")))
sys.stderr.write(out.stderr)
sys.exit(out.returncode)
PY
    ;;
    *) echo "db_sql: unknown database URL $url" >&2; return 2 ;;
  esac
}
# db_engine: sqlite, postgres or mysql
db_engine() { case "$(db_url)" in postgres*) echo postgres ;; mysql*) echo mysql ;; *) echo sqlite ;; esac; }
# start_sb: switchboard on $WORK/sb.toml (log appended to $WORK/sb.log), as SB_PID, once its
# SIP and management ports listen
start_sb() {
  "$SB" run --config "$WORK/sb.toml" >>"$WORK/sb.log" 2>&1 </dev/null &
  SB_PID=$!; PIDS+=($SB_PID)
  for _ in $(seq 50); do busy $P && busy $MGMT && return 0; sleep 0.1; done
  echo "switchboard did not start"; tail -5 "$WORK/sb.log"; exit 1
}
# start_baresip DIR SIP_PORT CTL_PORT RTP_RANGE ACCOUNT [EXTRA_CONFIG]: baresip with its default
# settings but for where it runs (loopback, no sound card, a 440 Hz tone as its microphone),
# controlled over ctrl_tcp on CTL_PORT, one account line; as BARESIP, its log in
# $WORK/baresip.log
start_baresip() {
  local dir=$1
  mkdir -p "$dir"
  python3 - "$dir/tone.wav" <<'PY'
import math, struct, sys, wave
w = wave.open(sys.argv[1], "wb"); w.setnchannels(1); w.setsampwidth(2); w.setframerate(8000)
w.writeframes(b"".join(struct.pack("<h", int(8000 * math.sin(2 * math.pi * 440 * i / 8000))) for i in range(8000 * 20)))
PY
  cat > "$dir/config" <<CFG
poll_method		epoll
sip_listen		127.0.0.1:$2
audio_player		alsa,null
audio_alert		alsa,null
audio_source		aufile,$dir/tone.wav
ausrc_srate		8000
ausrc_channels		1
rtp_ports		$4
module_path		/usr/lib/baresip/modules
module			g711.so
module			aufile.so
module_app		account.so
module_app		menu.so
module_app		ctrl_tcp.so
ctrl_tcp_listen		127.0.0.1:$3
net_interface		127.0.0.1
dns_server		127.0.0.1:53
${6:-}
CFG
  echo "$5" > "$dir/accounts"
  baresip -f "$dir" >"$WORK/baresip.log" 2>&1 </dev/null & BARESIP=$!; PIDS+=($BARESIP)
}

# ---- the browser agent (tests/e2e/web/agent.mjs): commands on a FIFO, events in
# $WORK/agent.out; $WEB and $ORIGIN_PORT set by the suite ------------------------------
need_browser() { # Chromium, playwright-core and a JsSIP bundle (built here)
  [ -x "$WEB/node_modules/.bin/esbuild" ] || { echo "browser peers missing: (cd tests/e2e/web && npm ci)"; exit 2; }
  command -v chromium >/dev/null || { echo "chromium is missing (apt-get install chromium)"; exit 2; }
  mkdir -p "$WEB/dist"
  "$WEB/node_modules/.bin/esbuild" "$WEB/node_modules/jssip/lib/JsSIP.js" --bundle --format=iife \
    --global-name=JsSIP --minify --log-level=warning --outfile="$WEB/dist/jssip.min.js" || exit 2
}
start_agent() {
  rm -f "$WORK/agent.in"; mkfifo "$WORK/agent.in"
  AGENT_HTTP_PORT=$ORIGIN_PORT setsid node "$WEB/agent.mjs" <"$WORK/agent.in" >>"$WORK/agent.out" 2>>"$WORK/agent.err" &
  AGENT=$!; PIDS+=($AGENT)
  exec 7>"$WORK/agent.in"
}
stop_agent() {
  echo quit >&7 2>/dev/null; exec 7>&-
  for _ in $(seq 30); do kill -0 $AGENT 2>/dev/null || break; sleep 0.1; done
  kill -KILL -- -$AGENT 2>/dev/null; wait $AGENT 2>/dev/null
}
agent() { echo "$*" >&7; }
# expect PATTERN SECONDS: waits for an agent line matching PATTERN (grep -E)
now_ms() { date +%s%3N; }
expect() {
  local end=$(( $(now_ms) + $2 * 1000 ))
  while [ "$(now_ms)" -lt $end ]; do grep -qE -- "$1" "$WORK/agent.out" && return 0; sleep 0.1; done
  return 1
}

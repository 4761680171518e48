#!/usr/bin/env bash
# Number routing end to end (ports from E2E_BASE+1800): the OpenSIPS tables (dialplan,
# dr_gateways, dr_carriers, dr_rules, dbaliases) written into SQLite with OpenSIPS' schema,
# bad rows among them; SIPp as users (127.0.0.1), carrier gateways (127.0.0.5-7), a media
# server (127.0.0.11) and a registered user.
#   +E.164 from a user goes to the carrier of the longest matching prefix, and fails over to
#   its second gateway when the first is dead; 0xxxxxxxxx becomes +49xxxxxxxxx first; an
#   alias reaches its subscriber; a caller listed in dr_groups takes its group's rules; 484/404 for incomplete and unrouted numbers; bad rows are
#   reported and skipped; dr_reload picks up a new rule; the API, the CLI and /metrics.
# Prints one line per case and "N passed, M failed"; exits non-zero on failure.
set -uo pipefail
source "$(dirname "$0")/lib.sh"
WORK=$(mktemp -d /tmp/sb-numbers.XXXXXX)
BASE=$(( ${E2E_BASE:-35000} + 1800 ))
P=$((BASE + 60)); UACP=$((BASE + 70)); AGP=$((BASE + 72)); FSP=$((BASE + 80)); MGMT=$((BASE + 88))
G1=$((BASE + 90)); G2=$((BASE + 92)); G3=$((BASE + 94)); SRP=$((BASE + 96))
GW1=127.0.0.5; GW2=127.0.0.6; GW3=127.0.0.7; FS=127.0.0.11
need_free $P $UACP $AGP $FSP $MGMT $G1 $G2 $G3 $SRP
need_binary
MI="http://127.0.0.1:$MGMT/mi"
rpc() { mi_curl -d "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"$1\",\"params\":${2:-{\}}}" "$MI"; }
sbctl() { "$SB" "$@" --mi "$MI" --token-file "$WORK/switchboard.token"; }

# ---- the tables, as OpenSIPS writes them -------------------------------------------------
python3 - "$WORK/sb.db" "$GW1:$G1" "$GW2:$G2" "$GW3:$G3" <<'PY'
import sqlite3, sys
db, gw1, gw2, gw3 = sys.argv[1:]
c = sqlite3.connect(db)
c.executescript("""
CREATE TABLE version (table_name CHAR(32) NOT NULL, table_version INTEGER DEFAULT 0 NOT NULL,
  CONSTRAINT version_t_name_idx UNIQUE (table_name));
INSERT INTO version VALUES ('dialplan', 5), ('dr_gateways', 6), ('dr_carriers', 3), ('dr_rules', 4), ('dbaliases', 2), ('dr_groups', 2);
CREATE TABLE dialplan (id INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL, dpid INTEGER NOT NULL,
  pr INTEGER DEFAULT 0 NOT NULL, match_op INTEGER NOT NULL, match_exp CHAR(64) NOT NULL,
  match_flags INTEGER DEFAULT 0 NOT NULL, subst_exp CHAR(64) DEFAULT NULL, repl_exp CHAR(32) DEFAULT NULL,
  timerec CHAR(255) DEFAULT NULL, disabled INTEGER DEFAULT 0 NOT NULL, attrs CHAR(255) DEFAULT NULL);
CREATE TABLE dr_gateways (id INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL, gwid CHAR(64) NOT NULL,
  type INTEGER DEFAULT 0 NOT NULL, address CHAR(128) NOT NULL, strip INTEGER DEFAULT 0 NOT NULL,
  pri_prefix CHAR(16) DEFAULT NULL, attrs CHAR(255) DEFAULT NULL, probe_mode INTEGER DEFAULT 0 NOT NULL,
  state INTEGER DEFAULT 0 NOT NULL, socket CHAR(128) DEFAULT NULL, description CHAR(128) DEFAULT NULL,
  CONSTRAINT dr_gateways_dr_gw_idx UNIQUE (gwid));
CREATE TABLE dr_carriers (id INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL, carrierid CHAR(64) NOT NULL,
  gwlist CHAR(255) NOT NULL, flags INTEGER DEFAULT 0 NOT NULL, sort_alg CHAR(1) DEFAULT 'N' NOT NULL,
  state INTEGER DEFAULT 0 NOT NULL, attrs CHAR(255) DEFAULT NULL, description CHAR(128) DEFAULT NULL,
  CONSTRAINT dr_carriers_dr_carrier_idx UNIQUE (carrierid));
CREATE TABLE dr_rules (ruleid INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL, groupid CHAR(255) NOT NULL,
  prefix CHAR(64) NOT NULL, timerec CHAR(255) DEFAULT NULL, priority INTEGER DEFAULT 0 NOT NULL,
  routeid CHAR(255) DEFAULT NULL, gwlist CHAR(255) NOT NULL, sort_alg CHAR(1) DEFAULT 'N' NOT NULL,
  sort_profile INTEGER DEFAULT NULL, attrs CHAR(255) DEFAULT NULL, description CHAR(128) DEFAULT NULL);
CREATE TABLE dr_groups (id INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL, username CHAR(64) NOT NULL,
  domain CHAR(128) DEFAULT '' NOT NULL, groupid INTEGER DEFAULT 0 NOT NULL, description CHAR(128) DEFAULT NULL,
  CONSTRAINT dr_groups_dr_groups_idx UNIQUE (username, domain));
CREATE TABLE dbaliases (id INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL, alias_username CHAR(64) DEFAULT '' NOT NULL,
  alias_domain CHAR(64) DEFAULT '' NOT NULL, username CHAR(64) DEFAULT '' NOT NULL, domain CHAR(64) DEFAULT '' NOT NULL,
  CONSTRAINT dbaliases_alias_idx UNIQUE (alias_username, alias_domain));
""")
c.executemany("INSERT INTO dialplan (dpid, pr, match_op, match_exp, match_flags, subst_exp, repl_exp, attrs) VALUES (?,?,?,?,?,?,?,?)", [
    (1, 1, 1, "^0([1-9][0-9]{6,})$", 0, "^0([1-9][0-9]{6,})$", "+49\\1", "national"),
    (1, 0, 1, "^0([", 0, "", "", "a malformed regex"),
])
c.executemany("INSERT INTO dr_gateways (gwid, type, address, strip, pri_prefix, state, description) VALUES (?,?,?,?,?,?,?)", [
    ("de-gw1", 1, gw1, 0, None, 0, "first German gateway"),
    ("de-gw2", 1, gw2, 0, None, 0, "second German gateway"),
    ("us-gw", 1, gw3, 0, None, 0, "US gateway"),
    ("bad-gw", 1, "127.0.0.8:5060", "abc", None, 0, "strip is not a number"),
])
c.executemany("INSERT INTO dr_carriers (carrierid, gwlist, flags, sort_alg, state) VALUES (?,?,?,?,?)", [
    ("de", "de-gw1,de-gw2", 0, "N", 0),
])
c.executemany("INSERT INTO dr_rules (groupid, prefix, priority, gwlist, description) VALUES (?,?,?,?,?)", [
    ("0", "+49", 0, "us-gw", "a shorter prefix: loses to +4930"),
    ("0", "+4930", 0, "#de", "Berlin"),
    ("0", "+1", 0, "us-gw", "North America"),
    ("0", "49x", 0, "us-gw", "a malformed prefix"),
    ("1", "+4930", 0, "us-gw", "group 1 (callers in dr_groups) calls Berlin through the US"),
])
c.executemany("INSERT INTO dr_groups (username, domain, groupid, description) VALUES (?,?,?,?)", [
    ("fs", "127.0.0.1", 1, "the one-shot caller of this suite"),
])
c.executemany("INSERT INTO dbaliases (alias_username, alias_domain, username, domain) VALUES (?,?,?,?)", [
    ("sales", "127.0.0.1", "1000", "127.0.0.1"),
])
c.commit()
PY

cat >"$WORK/sb.toml" <<TOML
[sip]
listen = ["udp:127.0.0.1:$P"]
[transactions]
branch_timeout_ms = 1000
[dispatcher]
# the gateways given by address are probed like the media servers
probe_interval_s = 1
probe_threshold_down = 1
[[dispatcher.set]]
id = 1
destinations = ["sip:$FS:$FSP"]
[routing]
default_set = 1
match_media_servers = "address"
[management]
listen = "127.0.0.1:$MGMT"
token_file = "$WORK/switchboard.token"
[security]
allow = ["127.0.0.1/32"]
[database]
url = "sqlite://$WORK/sb.db"
[registrar]
domains = ["127.0.0.1"]
# the suite's users are not challenged (digest auth has its own suite)
trusted = ["127.0.0.1/32"]
[numbers]
source = "database"
[[numbers.route]]
from = ["users", "media-servers"]
dialplan = 1
prefix = "+"
min_length = 8
to = "carriers"
caller_group = true
[[numbers.route]]
from = ["users"]
prefix = "1"
min_length = 4
to = "location"
TOML
"$SB" check --config "$WORK/sb.toml" >"$WORK/check.out" 2>&1 || { echo "config refused:"; cat "$WORK/check.out"; exit 1; }

start_uas() { # ip port name
  (cd "$WORK" && exec sipp -sf "$SC/uas-rr.xml" -i "$1" -p "$2" -aa -nostdin -trace_msg -message_file "$WORK/$3.msg" \
    -trace_stat -stf "$WORK/$3.csv" -fd 1 >"$WORK/$3.out" 2>&1 </dev/null) &
  eval "UAS_$3=$!"; PIDS+=($!)
  for _ in $(seq 50); do busy "$2" && return 0; sleep 0.1; done
}
start_uas $GW1 $G1 gw1; start_uas $GW2 $G2 gw2; start_uas $GW3 $G3 gw3; start_uas $FS $FSP fs
start_sb
# INVITEs a stand-in received (its OPTIONS answers to the probes are not calls)
calls_at() { grep -c '^INVITE sip:' "$WORK/$1.msg" 2>/dev/null || true; }
uac() { # number calls rate
  rm -f "$WORK/uac.csv"
  (cd "$WORK" && sipp 127.0.0.1:$P -sf "$SC/uac-rr.xml" -s "$1" -i 127.0.0.1 -p $UACP -m "$2" -r "$3" -d 100 \
    -nostdin -timeout 60s -recv_timeout 10000 -trace_stat -stf "$WORK/uac.csv" -fd 1 >"$WORK/uac.out" 2>&1 </dev/null)
}
once() { python3 "$ROOT/tests/e2e/sipreq.py" $P 127.0.0.1 $SRP "$1" 5; }

# ---- bad rows: reported, skipped, nothing else lost --------------------------------------
skipped=$(grep -c 'number routing row skipped' "$WORK/sb.log")
gws=$(rpc dr_gw_status | python3 -c 'import json,sys; print(",".join(g["ID"] for g in json.load(sys.stdin)["result"]["Gateways"]))')
grep -q 'dialplan row 2' "$WORK/sb.log" && grep -q 'dr_gateways row 4' "$WORK/sb.log" && grep -q 'dr_rules row 4' "$WORK/sb.log"
named=$?
[ "$skipped" = 3 ] && [ $named = 0 ] && [ "$gws" = "de-gw1,de-gw2,us-gw" ]
result "bad-rows-reported-and-skipped" $? "$skipped rows skipped (malformed regex, strip 'abc', prefix '49x'), each named in the log; gateways loaded: $gws"

# ---- +E.164 by longest prefix, then a dialled national number ----------------------------
uac +493012345678 10 10; rc=$?
a=$(calls_at gw1); b=$(calls_at gw2); c=$(calls_at gw3)
[ $rc = 0 ] && [ "$a" = 10 ] && [ "$b" = 0 ] && [ "$c" = 0 ]
result "e164-longest-prefix" $? "10 calls to +493012345678: +4930 (carrier de: de-gw1, de-gw2) beats +49 (us-gw): $a/$b/$c at de-gw1/de-gw2/us-gw"

uac 03012345678 5 10; rc=$?
a=$(calls_at gw1)
seen=$(grep -c '^INVITE sip:+493012345678@' "$WORK/gw1.msg")
[ $rc = 0 ] && [ "$a" = 15 ] && [ "$seen" -ge 15 ]
result "dialplan-national-to-e164" $? "5 calls dialled 03012345678 reached de-gw1 as +493012345678 (INVITEs with that Request-URI there: $seen)"

# ---- the first gateway dies: calls fail over to the second, probing marks it down -------
eval "kill -KILL \$UAS_gw1; wait \$UAS_gw1" 2>/dev/null
t0=$(date +%s%3N)
uac +493087654321 10 5; rc=$?
b=$(calls_at gw2)
state=inactive
for _ in $(seq 30); do
  state=$(rpc dr_gw_status '{"gw_id":"de-gw1"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["result"]["state"])')
  [ "$state" = inactive ] && break; sleep 0.2
done
down_ms=$(( $(date +%s%3N) - t0 ))
up=$(mi_curl "http://127.0.0.1:$MGMT/metrics" | grep '^switchboard_dr_gateway_up{gwid="de-gw1"')
[ $rc = 0 ] && [ "$b" = 10 ] && [ "$state" = inactive ] && [[ "$up" == *" 0" ]]
result "failover-to-second-gateway" $? "de-gw1 killed: 10/10 calls completed at de-gw2; de-gw1 $state (probed) within ${down_ms} ms; /metrics: $up"

# ---- refusals ------------------------------------------------------------------------
short=$(once "sip:+4930@127.0.0.1:$P"); nowhere=$(once "sip:+33123456789@127.0.0.1:$P")
[[ "$short" == "SIP/2.0 484"* ]] && [[ "$nowhere" == "SIP/2.0 404"* ]]
result "incomplete-and-unrouted-numbers" $? "+4930: \"$short\"; +33123456789: \"$nowhere\""

# ---- a caller in dr_groups takes its group's rules -----------------------------------
before=$(calls_at gw3)
vip=$(once "sip:+493055555555@127.0.0.1:$P")
sleep 0.5; after=$(calls_at gw3)
[[ "$vip" == "SIP/2.0 200"* ]] && [ $((after - before)) -ge 1 ]
result "caller-group-from-dr-groups" $? "fs@127.0.0.1 (dr_groups: group 1) to +493055555555: \"$vip\" from us-gw (group 1's +4930 rule), where group 0 callers reach carrier de"

# ---- an alias reaches its subscriber ---------------------------------------------------
sipp 127.0.0.1:$P -sf "$SC/reg-plain.xml" -oocsf "$SC/agent-answer.xml" -s 1000 -set chost 127.0.0.1 \
  -d 15000 -m 1 -i 127.0.0.1 -p $AGP -aa -nostdin -timeout 30s -trace_msg -message_file "$WORK/agent.msg" \
  >"$WORK/agent.out" 2>&1 </dev/null &
AGENT=$!; PIDS+=($AGENT)
sleep 1
fs_before=$(calls_at fs)
uac sales 3 5; rc=$?
got=$(grep -c '^INVITE sip:1000@' "$WORK/agent.msg" 2>/dev/null)
fs_after=$(calls_at fs)
[ $rc = 0 ] && [ "$got" -ge 3 ] && [ "$fs_after" = "$fs_before" ]
result "alias-reaches-subscriber" $? "3 calls to sales@127.0.0.1 (dbaliases: sales -> 1000) reached the registered 1000: $got INVITEs at its contact, none at the media server"
kill -KILL $AGENT 2>/dev/null; wait $AGENT 2>/dev/null

# ---- a new rule, dr_reload, the CLI --------------------------------------------------
python3 -c "
import sqlite3,sys
c=sqlite3.connect('$WORK/sb.db'); c.execute(\"INSERT INTO dr_rules (groupid, prefix, priority, gwlist) VALUES ('0', '+33', 0, 'us-gw')\"); c.commit()"
reload=$(sbctl dr reload 2>&1); rcr=$?
before=$(calls_at gw3)
uac +33123456789 3 5; rc=$?
after=$(calls_at gw3)
tr=$(sbctl dp translate 1 0301234567 2>&1)
route=$(sbctl dr route +4930111222 2>&1)
[ $rcr = 0 ] && [ $rc = 0 ] && [ $((after - before)) = 3 ] && [[ "$tr" == *'"+49301234567"'* ]] && [[ "$route" == *de-gw2* ]]
result "dr-reload-and-cli" $? "dr reload: $(tr -d '\n' <<<"$reload" | cut -c1-90); +33 then reached us-gw $((after - before))/3; dp translate: $(tr -d '\n ' <<<"$tr" | cut -c1-60)"

kill -0 $SB_PID 2>/dev/null
result "still-serving" $? "proxy alive after every case"
echo "$PASS passed, $FAIL failed"
[ "$FAIL" = 0 ]

#!/usr/bin/env bash
# Next hops by name (RFC 3263) end to end (ports from E2E_BASE+1600), with Debian's dnsmasq
# as the DNS server on loopback serving NAPTR/SRV/A records, and a hostile DNS server behind
# it for answers dnsmasq would never give (a CNAME loop, an SRV target of ".").
#   fs.example.test: NAPTR SIP+D2U -> _sip._udp SRV: fs1 (127.0.0.21, priority 10) and
#     fs2 (127.0.0.22, priority 20), the dispatcher's one destination.
#   wfs.example.test: SRV without NAPTR, two targets of priority 10 with weights 3 and 1.
#   carrier.example.net: an A record (the Request-URI names the port).
# A "media server" on 127.0.0.13 (a dispatcher destination, so trusted) calls out through
# the proxy with Request-URIs naming carriers by name or by address.
# Prints one line per case and "N passed, M failed"; exits non-zero on failure.
set -uo pipefail
source "$(dirname "$0")/lib.sh"
WORK=$(mktemp -d /tmp/sb-dns.XXXXXX)
BASE=$(( ${E2E_BASE:-35000} + 1600 ))
P=$((BASE + 60)); UACP=$((BASE + 70)); DNSP=$((BASE + 53)); HDNS=$((BASE + 54))
B1=$((BASE + 80)); B2=$((BASE + 82)); B3=$((BASE + 84)); CP=$((BASE + 86)); MGMT=$((BASE + 88))
W1=$((BASE + 90)); W2=$((BASE + 92)); FSOUT=$((BASE + 94))
FS1=127.0.0.21; FS2=127.0.0.22; FS3=127.0.0.13; CARRIER=127.0.0.5; WA=127.0.0.31; WB=127.0.0.32
need_free $P $UACP $DNSP $HDNS $B1 $B2 $B3 $CP $MGMT $W1 $W2 $FSOUT $((FSOUT + 1)) $((FSOUT + 2))
need_binary
command -v dnsmasq >/dev/null || { echo "dnsmasq is missing (apt-get install dnsmasq-base)"; exit 2; }
now_ms() { date +%s%3N; }

python3 "$ROOT/tests/e2e/hostile-dns.py" $HDNS >"$WORK/hostile-dns.out" 2>&1 &
PIDS+=($!)
start_dns() {
  dnsmasq --keep-in-foreground --port=$DNSP --listen-address=127.0.0.1 --bind-interfaces \
    --no-resolv --no-hosts --conf-file=/dev/null --pid-file="$WORK/dnsmasq.pid" --local-ttl=2 \
    --log-queries --log-facility="$WORK/dnsmasq.log" \
    --local=/example.test/ --local=/example.net/ --server=/hostile.test/127.0.0.1#$HDNS \
    --naptr-record=fs.example.test,10,10,S,SIP+D2U,,_sip._udp.fs.example.test \
    --srv-host=_sip._udp.fs.example.test,fs1.example.test,$B1,10,1 \
    --srv-host=_sip._udp.fs.example.test,fs2.example.test,$B2,20,1 \
    --host-record=fs1.example.test,$FS1 --host-record=fs2.example.test,$FS2 \
    --srv-host=_sip._udp.wfs.example.test,wa.example.test,$W1,10,3 \
    --srv-host=_sip._udp.wfs.example.test,wb.example.test,$W2,10,1 \
    --host-record=wa.example.test,$WA --host-record=wb.example.test,$WB \
    --srv-host=_sip._udp.noservice.example.test \
    --host-record=carrier.example.net,$CARRIER >"$WORK/dnsmasq.out" 2>&1 &
  DNS_PID=$!; PIDS+=($DNS_PID)
  for _ in $(seq 50); do busy $DNSP && return 0; sleep 0.1; done
  echo "dnsmasq did not start"; cat "$WORK/dnsmasq.out"; exit 1
}
start_dns

start_uas() { # ip port
  sipp -sf "$SC/uas-rr.xml" -i "$1" -p "$2" -nostdin -trace_stat -stf "$WORK/uas-$2.csv" -fd 1 \
    >"$WORK/uas-$2.out" 2>&1 </dev/null &
  eval "UAS_$2=$!"; PIDS+=($!)
  for _ in $(seq 50); do busy "$2" && return 0; sleep 0.1; done
}
# calls a stand-in received (its statistics file is written every second)
calls_at() { col "$WORK/uas-$1.csv" 'IncomingCall(C)'; }
settle() { sleep 1.3; }
for ip_port in "$FS1 $B1" "$FS2 $B2" "$CARRIER $CP" "$WA $W1" "$WB $W2"; do start_uas $ip_port; done

cat >"$WORK/sb.toml" <<TOML
[sip]
listen = ["udp:127.0.0.1:$P"]
[transactions]
branch_timeout_ms = 1000
[dispatcher]
probe_interval_s = 0
[[dispatcher.set]]
id = 1
destinations = ["sip:fs.example.test"]
[[dispatcher.set]]
id = 2
destinations = ["sip:$FS3:$B3"]
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
[dns]
servers = ["127.0.0.1:$DNSP"]
timeout_ms = 500
attempts = 1
stale_for_s = 10
TOML
start_sb

# uac N RATE [sipp args]: calls from a user on 127.0.0.1 to the default set
uac() {
  local n=$1 r=$2; shift 2
  rm -f "$WORK/uac.csv"
  (cd "$WORK" && sipp 127.0.0.1:$P -sf "$SC/uac-rr.xml" -i 127.0.0.1 -p $UACP -r "$r" -m "$n" -d 100 -nostdin \
    -timeout 60s -recv_timeout 10000 -trace_stat -stf "$WORK/uac.csv" -fd 1 "$@" >"$WORK/uac.out" 2>&1 </dev/null)
}
# fsout TAG N RATE RURI: calls from the media server on $FS3 to RURI, RTDs in $WORK/TAG/
fsout() {
  local tag=$1 n=$2 r=$3 ruri=$4 port=$FSOUT
  [ "$tag" = named ] && port=$((FSOUT + 1))
  mkdir -p "$WORK/$tag"; rm -f "$WORK/$tag"/*
  (cd "$WORK/$tag" && sipp 127.0.0.1:$P -sf "$SC/fs-out-call.xml" -set ruri "$ruri" -set route "<sip:127.0.0.1:$P;lr>" \
    -i $FS3 -p $port -r "$r" -m "$n" -nostdin -timeout 60s -recv_timeout 10000 -trace_stat -stf stat.csv \
    -trace_rtt -rtt_freq 1 -fd 1 >out 2>&1 </dev/null)
}
# rtd_stats DIR: "average max" of the INVITE->200 times (ms) SIPp wrote in DIR
rtd_stats() {
  cat "$1"/*_rtt.csv 2>/dev/null | awk -F';' '$3+0 == 1 {s+=$2; n++; if ($2>m) m=$2} END {if (n) printf "%.1f %.0f\n", s/n, m; else print "none 99999"}'
}

# ---- SRV priority, then weights --------------------------------------------------------
uac 20 10; rc=$?; settle
a=$(calls_at $B1); b=$(calls_at $B2)
naptr=$(grep -c 'query\[NAPTR\] fs.example.test' "$WORK/dnsmasq.log")
hits=$(mi_curl "http://127.0.0.1:$MGMT/metrics" | sed -n 's/^switchboard_dns_cache_total{outcome="hit"} //p')
[ $rc = 0 ] && [ "$a" = 20 ] && [ "$b" = 0 ] && [ "$naptr" -ge 1 ] && [ "$naptr" -le 3 ] && [ "${hits:-0}" -ge 17 ]
result "srv-priority-order" $? "20 calls to sip:fs.example.test: $a at priority 10 ($FS1), $b at priority 20; NAPTR queries: $naptr; cache hits in /metrics: ${hits:-none}"

fsout weights 40 20 "sip:+4930123@wfs.example.test"; rc=$?; settle
a=$(calls_at $W1); b=$(calls_at $W2)
[ $rc = 0 ] && [ "$a" -gt "$b" ] && [ "$b" -ge 2 ] && [ $((a + b)) = 40 ]
result "srv-weights" $? "40 calls to wfs.example.test (two targets of priority 10, weights 3:1): $a / $b"

fsout named 10 20 "sip:+4930123@carrier.example.net:$CP"; rc=$?; settle
c=$(calls_at $CP)
[ $rc = 0 ] && [ "$c" = 10 ]
result "carrier-by-name" $? "10 calls from the media server to sip:+4930123@carrier.example.net:$CP (an A record; the port given, so no SRV): $c at the carrier"

# ---- a dead target: failover inside the transaction, within the branch timer --------------
eval "kill -KILL \$UAS_$B1; wait \$UAS_$B1" 2>/dev/null
before=$(calls_at $B2)
rm -f "$WORK"/uac-rr_*_rtt.csv
uac 10 2 -trace_rtt -rtt_freq 1; rc=$?; settle
read -r avg max < <(rtd_stats "$WORK")
waited=$(cat "$WORK"/uac-rr_*_rtt.csv 2>/dev/null | awk -F';' '$3+0 == 1 && $2 > 900 {n++} END {print n+0}')
after=$(calls_at $B2)
# the calls started before the first one's failure counted wait for the branch timer; the
# dead address is tried last after that (its own health, apart from the name's)
[ $rc = 0 ] && [ $((after - before)) = 10 ] && [ "${max:-99999}" -lt 1600 ] && [ "$waited" -le 4 ]
result "dead-target-fails-over" $? "$FS1 killed: $((after - before))/10 calls at $FS2, INVITE->200 avg ${avg} ms, max ${max} ms (branch timer 1000 ms); $waited calls waited for the timer, the rest went to $FS2 first"
start_uas $FS1 $B1

# ---- the DNS server stops answering ---------------------------------------------------
fsout base 30 30 "sip:+4930123@$CARRIER:$CP"; rc_base=$?
read -r base_avg base_max < <(rtd_stats "$WORK/base")
uac 1 1 # the last answer before the server goes silent (its TTL is 2 s)
t0=$(now_ms)
kill -STOP "$DNS_PID"
sleep 2.5 # the cached answer is past its TTL
# at once: calls to the named set (stale answer), calls to names never cached (they wait
# for the silent server, then 503), and calls to an IP-literal carrier (measured)
(for i in $(seq 6); do python3 "$ROOT/tests/e2e/sipreq.py" $P $FS3 $((FSOUT + 2)) "sip:x$i@uncached$i.example.net" 5; done >"$WORK/uncached.out" 2>&1) &
UNC=$!
uac 20 10 & UACJ=$!
fsout during 30 30 "sip:+4930123@$CARRIER:$CP"; rc_during=$?
wait $UACJ; rc_uac=$?
wait $UNC
t_stale=$(( $(now_ms) - t0 ))
read -r dur_avg dur_max < <(rtd_stats "$WORK/during")
unc503=$(grep -c "SIP/2.0 503" "$WORK/uncached.out")
# not slowed: at most 20 ms more on average than before (the IP-literal path never waits)
slow=$(awk -v b="$base_avg" -v d="$dur_avg" 'BEGIN {print (d <= b + 20) ? 0 : 1}')
[ $rc_base = 0 ] && [ $rc_during = 0 ] && [ $slow = 0 ]
result "ip-literal-not-slowed-while-dns-silent" $? "INVITE->200 to $CARRIER:$CP: avg ${base_avg} ms (max ${base_max}) before, ${dur_avg} ms (max ${dur_max}) while 6 lookups hung (answered 503: $unc503/6)"
[ $rc_uac = 0 ] && [ "$unc503" = 6 ] && [ "$t_stale" -lt 9500 ]
result "dns-silent-calls-go-on-from-cache" $? "20/20 calls to the named set from the stale answer (rc=$rc_uac), within ${t_stale} ms of the server going silent (stale limit 10 s past the 2 s TTL)"
# past the stale limit, the named set has no address: 503, and a log line naming the name
sleep $(( (13500 - ($(now_ms) - t0)) / 1000 + 1 ))
late=$(python3 "$ROOT/tests/e2e/sipreq.py" $P 127.0.0.1 $UACP "sip:svc@127.0.0.1:$P" 5)
grep -q 'fs.example.test' "$WORK/sb.log"; named=$?
[[ "$late" == "SIP/2.0 503"* ]] && [ $named = 0 ]
result "past-stale-limit-503" $? "$(( ($(now_ms) - t0) / 1000 )) s after: \"$late\"; the log names fs.example.test"
kill -CONT "$DNS_PID"
sleep 5.5 # the remembered failure (5 s) passes
uac 5 5; rc=$?
result "dns-back-calls-resolve-again" $rc "5 calls after the server answers again: rc=$rc"

# ---- bad names and hostile answers ------------------------------------------------------
out_ns=$(python3 "$ROOT/tests/e2e/sipreq.py" $P $FS3 $((FSOUT + 2)) "sip:x@noservice.example.test" 5)
out_nx=$(python3 "$ROOT/tests/e2e/sipreq.py" $P $FS3 $((FSOUT + 2)) "sip:x@nx.example.test" 5)
out_loop=$(python3 "$ROOT/tests/e2e/sipreq.py" $P $FS3 $((FSOUT + 2)) "sip:x@loop1.hostile.test" 5)
out_dot=$(python3 "$ROOT/tests/e2e/sipreq.py" $P $FS3 $((FSOUT + 2)) "sip:x@dot.hostile.test;transport=udp" 5)
out_bad=$(python3 "$ROOT/tests/e2e/sipreq.py" $P $FS3 $((FSOUT + 2)) "sip:x@bad_host.example" 5)
grep -q 'loop1.hostile.test' "$WORK/sb.log"; loop_logged=$?
[[ "$out_ns" == "SIP/2.0 604"* ]] && [[ "$out_nx" == "SIP/2.0 604"* ]] && [[ "$out_loop" == "SIP/2.0 503"* ]] \
  && [[ "$out_dot" == "SIP/2.0 604"* ]] && [[ "$out_bad" == "SIP/2.0 400"* ]] && [ $loop_logged = 0 ]
result "bad-names-and-hostile-answers" $? "SRV target '.': \"$out_ns\"; NXDOMAIN: \"$out_nx\"; CNAME loop: \"$out_loop\"; hostile SRV '.': \"$out_dot\"; bad host: \"$out_bad\""
# a configured destination that is no host name is refused by name at check time
sed 's|"sip:fs.example.test"|"sip:fs_1.example.test"|' "$WORK/sb.toml" >"$WORK/bad.toml"
chk=$("$SB" check --config "$WORK/bad.toml" 2>&1); rc=$?
[ $rc != 0 ] && grep -q 'dispatcher.set\[0\].destinations\[0\].uri' <<<"$chk"
result "bad-destination-name-refused" $? "check: $(grep -m1 'destinations' <<<"$chk")"
# nothing else disturbed: a call to the named set still goes through
uac 3 3; rc=$?
kill -0 $SB_PID 2>/dev/null; alive=$?
[ $rc = 0 ] && [ $alive = 0 ]
result "still-serving-after-bad-input" $? "3 calls rc=$rc, proxy alive"

echo "$PASS passed, $FAIL failed"
[ "$FAIL" = 0 ]

#!/usr/bin/env bash
# The whole test suite, from a fresh Debian 12 machine: installs what the tests need, then
# runs formatting and lint checks, unit/property/torture tests, the fuzz targets, and the
# end-to-end tests with real peers. Every step's exit status decides (scripts/steps.sh); the
# suite exits non-zero when any step failed, after running the others.
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/steps.sh

need=()
command -v sipp >/dev/null || need+=(sip-tester)
command -v ss >/dev/null || need+=(iproute2)
command -v curl >/dev/null || need+=(curl)
command -v python3 >/dev/null || need+=(python3)
command -v g++ >/dev/null || need+=(g++)
command -v svmap >/dev/null || need+=(sipvicious)
command -v baresip >/dev/null || need+=(baresip-core)
command -v dnsmasq >/dev/null || need+=(dnsmasq-base)
command -v chromium >/dev/null || need+=(chromium fonts-liberation)
command -v node >/dev/null || need+=(nodejs npm)
command -v unshare >/dev/null || need+=(util-linux)
command -v rtpengine >/dev/null || need+=(rtpengine-daemon)
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || need+=(postgresql)
command -v mariadbd >/dev/null || need+=(mariadb-server)
command -v openssl >/dev/null || need+=(openssl)
command -v redis-server >/dev/null || need+=(redis-server)
if [ ${#need[@]} -gt 0 ]; then
  echo "== installing ${need[*]}"
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq || exit 1
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null || exit 1
fi

# the browser peers (JsSIP, playwright-core driving Debian's Chromium; no browser download)
if [ ! -x tests/e2e/web/node_modules/.bin/esbuild ]; then
  echo "== installing the browser peers (npm ci in tests/e2e/web)"
  (cd tests/e2e/web && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error) || exit 1
fi

step "the step runner fails on failed and aborted steps" scripts/selftest.sh
step "cargo fmt --check" cargo fmt --all -- --check
step "cargo clippy" cargo clippy --workspace --all-targets -q -- -D warnings
step "cargo test (unit, scenario, property, torture)" cargo_tests --workspace -q
step "storage battery on SQLite, PostgreSQL and MariaDB, the cluster store on Redis (real servers)" tests/storage.sh
step "the store builds with SQLite alone (server engines are features)" cargo build -q -p store --no-default-features
step "benches compile" cargo bench --workspace --no-run -q
step "fuzz: coverage-guided, 30 s a target from the torture corpus" fuzz/run.sh 30
step "release build" cargo build --release -q
# the suites' fixed ports (from E2E_BASE=35000, up to ~37,500) are inside the kernel's
# ephemeral range: reserved for this boot, so no outgoing connection of the machine takes one
# (a listener that cannot bind its port fails its suite; seen once with the ESL stand-ins)
if [ -w /proc/sys/net/ipv4/ip_local_reserved_ports ]; then
  cur=$(cat /proc/sys/net/ipv4/ip_local_reserved_ports)
  case ",$cur," in *,35000-37999,*) ;; *) echo "${cur:+$cur,}35000-37999" >/proc/sys/net/ipv4/ip_local_reserved_ports ;; esac
fi
if [ -x target/release/switchboard ]; then
  step "end-to-end (SIPp): proxy" tests/e2e/run.sh
  step "end-to-end (SIPp): dispatcher" tests/e2e/dispatcher.sh
  step "end-to-end (SIPp): registrar" tests/e2e/registrar.sh
  step "end-to-end (SIPp): dialogs" tests/e2e/dialog.sh
  step "end-to-end (SIPp): resource balancer" tests/e2e/balancer.sh
  step "end-to-end (SIPp + stand-in event sockets): live FreeSWITCH load" tests/e2e/esl.sh
  step "end-to-end (sipvicious, floods, hostile TCP peers, SIGTERM under load): hardening" tests/e2e/hardening.sh
  step "end-to-end (SIPp nodes on their own addresses, baresip): the seeds' setups" tests/e2e/seeds.sh
  step "end-to-end (SIPp, dnsmasq, a hostile DNS server): next hops by name (RFC 3263)" tests/e2e/dns.sh
  step "end-to-end (SIPp, OpenSIPS tables in SQLite): number routing" tests/e2e/numbers.sh
  step "end-to-end (JsSIP in Chromium, baresip over TLS, hostile peers; own network namespace): TLS and WebSocket" tests/e2e/streams.sh
  step "end-to-end (rtpengine, SIPp with RTP, JsSIP in Chromium, baresip; own network namespace): media" tests/e2e/media.sh
  step "end-to-end (PostgreSQL and MariaDB: the stateful suites, an OpenSIPS database, bad input, outages): databases" tests/e2e/databases.sh
  step "end-to-end (two nodes on Redis and PostgreSQL, SIPp agents; restarts, kills, Redis flushed and stopped): cluster" tests/e2e/cluster.sh
fi
steps_summary

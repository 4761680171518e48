#!/usr/bin/env bash
# The whole test suite, from a fresh Debian 12 machine: installs what the tests need, then
# runs formatting and lint checks, unit/property/torture tests, the fuzz target build and
# smoke run, and the end-to-end tests with real SIPp peers.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v sipp >/dev/null || need+=(sip-tester)
command -v ss >/dev/null || need+=(iproute2)
command -v curl >/dev/null || need+=(curl)
command -v python3 >/dev/null || need+=(python3)
command -v g++ >/dev/null || need+=(g++)
if [ ${#need[@]} -gt 0 ]; then
  echo "== installing ${need[*]}"
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets -q -- -D warnings
echo "== cargo test (unit, scenario, property, torture)"
cargo test --workspace -q 2>&1 | tee /tmp/sb-unit.log | grep -E '^(test result|error|failures)' || true
grep -q 'FAILED\|error\[' /tmp/sb-unit.log && { echo "unit tests failed"; exit 1; }
echo "== benches compile"
cargo bench --workspace --no-run -q
echo "== fuzz: parse -> print -> re-parse, coverage-guided, 30 s from the torture corpus"
fuzz/run.sh 30
echo "== release build"
cargo build --release -q
echo "== end-to-end (SIPp): proxy"
e2e_rc=0
tests/e2e/run.sh || e2e_rc=1
echo "== end-to-end (SIPp): dispatcher"
tests/e2e/dispatcher.sh || e2e_rc=1
echo "== end-to-end (SIPp): registrar"
tests/e2e/registrar.sh || e2e_rc=1
echo "== end-to-end (SIPp): dialogs"
tests/e2e/dialog.sh || e2e_rc=1
echo "== end-to-end (SIPp): resource balancer"
tests/e2e/balancer.sh || e2e_rc=1
echo "== end-to-end (SIPp + stand-in event sockets): live FreeSWITCH load"
tests/e2e/esl.sh || e2e_rc=1
exit $e2e_rc

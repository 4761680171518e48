#!/usr/bin/env bash
# Checks the suite's step runner: a step whose command fails, and a cargo-test step whose test
# binary aborts without a "FAILED" line, must each make the suite fail. Exit 0 when they do.
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/steps.sh
bad=0
step "a failing command" false >/dev/null
[ ${#FAILED_STEPS[@]} = 1 ] || { echo "a failing command did not fail its step"; bad=1; }
abort_tests() { cargo_tests -q --manifest-path scripts/selftest/abort-test/Cargo.toml --target-dir target/selftest; }
abort_tests >/tmp/sb-selftest.log 2>&1 && { echo "an aborting test binary passed cargo test"; bad=1; }
# the old check grepped the log for these: an aborted test binary prints neither
grep -q 'FAILED\|error\[' /tmp/sb-selftest.log || echo "(the old grep for FAILED calls that run green)"
step "an aborting test binary" abort_tests >/dev/null 2>&1
[ ${#FAILED_STEPS[@]} = 2 ] || { echo "an aborting test binary did not fail its step"; bad=1; }
steps_summary >/dev/null && { echo "the summary passed with failed steps"; bad=1; }
FAILED_STEPS=()
step "a passing command" true >/dev/null
steps_summary >/dev/null || { echo "the summary failed with every step passed"; bad=1; }
[ $bad = 0 ] && echo "step runner: failing and aborting steps fail the suite"
exit $bad

#!/usr/bin/env bash
# Coverage-guided fuzzing on the stable toolchain: rustc's sancov passes give libFuzzer its
# coverage feedback (no nightly sanitizer needed); debug assertions and overflow checks are
# on. Two targets, SECONDS each: parse_print (the parser; seeds: the RFC 4475 torture
# messages) and proxy_core (message sequences through the core; seeds: fuzz/seeds/proxy_core).
# Usage: fuzz/run.sh [SECONDS] [TARGET]
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-60}
TARGET=x86_64-unknown-linux-gnu
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 -Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table -Cllvm-args=-sanitizer-coverage-trace-compares -Cdebug-assertions -Coverflow-checks"
# --target keeps RUSTFLAGS off the build scripts
cargo build -q --release --manifest-path fuzz/Cargo.toml --target-dir fuzz/target-cov --target "$TARGET"
ONLY=${2:-}
CORPUS=$(mktemp -d /tmp/sb-fuzz.XXXXXX)
trap 'rm -rf "$CORPUS"' EXIT
if [ -z "$ONLY" ] || [ "$ONLY" = parse_print ]; then
  mkdir -p "$CORPUS/parse"
  cp crates/sip-wire/tests/torture/valid/* crates/sip-wire/tests/torture/invalid/* "$CORPUS/parse/"
  echo "parse_print:"
  fuzz/target-cov/$TARGET/release/parse_print -max_total_time="$SECS" -max_len=4096 -artifact_prefix=fuzz/ "$CORPUS/parse" 2>&1 | tail -2
fi
if [ -z "$ONLY" ] || [ "$ONLY" = proxy_core ]; then
  mkdir -p "$CORPUS/core"
  cp fuzz/seeds/proxy_core/* "$CORPUS/core/"
  echo "proxy_core:"
  fuzz/target-cov/$TARGET/release/proxy_core -max_total_time="$SECS" -max_len=2048 -artifact_prefix=fuzz/ "$CORPUS/core" 2>&1 | tail -2
fi

#!/usr/bin/env bash
# Coverage-guided fuzzing of the parser on the stable toolchain: rustc's sancov passes give
# libFuzzer its coverage feedback (no nightly sanitizer needed); debug assertions and
# overflow checks are on. Seeds: the RFC 4475 torture messages. Usage: fuzz/run.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-60}
TARGET=x86_64-unknown-linux-gnu
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 -Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table -Cllvm-args=-sanitizer-coverage-trace-compares -Cdebug-assertions -Coverflow-checks"
# --target keeps RUSTFLAGS off the build scripts
cargo build -q --release --manifest-path fuzz/Cargo.toml --target-dir fuzz/target-cov --target "$TARGET"
CORPUS=$(mktemp -d /tmp/sb-fuzz.XXXXXX)
trap 'rm -rf "$CORPUS"' EXIT
cp crates/sip-wire/tests/torture/valid/* crates/sip-wire/tests/torture/invalid/* "$CORPUS/"
fuzz/target-cov/$TARGET/release/parse_print -max_total_time="$SECS" -max_len=4096 -artifact_prefix=fuzz/ "$CORPUS" 2>&1 | tail -2

# The step runner of scripts/test-all.sh: sourced, never run. A step passes only on the exit
# status 0 of its command (never by reading its log), a failed step is named at the end, and
# the suite's own status is non-zero when any step failed.
FAILED_STEPS=()
# step NAME COMMAND...: runs one step and records its exit status
step() {
  local name=$1; shift
  local t0=$SECONDS rc=0
  echo "== $name"
  "$@" || rc=$?
  if [ $rc = 0 ]; then
    echo "   ok: $name ($((SECONDS - t0)) s)"
  else
    echo "   FAILED (exit $rc): $name ($((SECONDS - t0)) s)"
    FAILED_STEPS+=("$name (exit $rc)")
  fi
  return 0
}
# cargo_tests [ARGS...]: the test binaries' own exit status decides, so one that aborts, is
# killed for memory or fails to link fails the step
cargo_tests() { cargo test "$@"; }
# steps_summary: prints the failed steps; its status is the suite's
steps_summary() {
  if [ ${#FAILED_STEPS[@]} = 0 ]; then
    echo "== all steps passed"
    return 0
  fi
  echo "== ${#FAILED_STEPS[@]} step(s) failed:"
  printf '   %s\n' "${FAILED_STEPS[@]}"
  return 1
}

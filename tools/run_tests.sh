#!/usr/bin/env bash
# Every test of the project, as `make test` runs it (after `make build`):
#   1. the doctest suites of the release build (build/),
#   2. the same suites under ASan+UBSan and under TSan (build-asan/, build-tsan/),
#   3. a short libFuzzer run of each fuzz target (build-fuzz/, clang),
#   4. the pytest suites (Python package, CLI, and examples/ built against the installed library)
#      in .venv.
# It ends with one line "N passed, N failed" over all of them, and fails if any part failed.
# SHMQ_TEST_PARTS=cpp,asan,tsan,fuzz,python selects parts (default: all).
set -uo pipefail
cd "$(dirname "$0")/.."
MESON=.venv/bin/meson
PARTS=${SHMQ_TEST_PARTS:-cpp,asan,tsan,fuzz,python}
passed=0
failed=0
failures=()
details=()  # failing tests and their first doctest errors, repeated just above the last line
jobs=$(nproc)

want() { [[ ",$PARTS," == *",$1,"* ]]; }

# meson test prints "Ok: N", "Fail: N", ... in its summary.
count_meson() {
  local log=$1 label=$2
  local ok fail timeout
  ok=$(grep -E '^Ok: ' "$log" | tail -1 | awk '{print $2}')
  fail=$(grep -E '^Fail: ' "$log" | tail -1 | awk '{print $2}')
  timeout=$(grep -E '^Timeout: ' "$log" | tail -1 | awk '{print $2}')
  ok=${ok:-0}; fail=$(( ${fail:-0} + ${timeout:-0} ))
  passed=$((passed + ok)); failed=$((failed + fail))
  if [ "$fail" -gt 0 ] || [ "$ok" -eq 0 ]; then failures+=("$label"); [ "$ok" -eq 0 ] && failed=$((failed + 1)); fi
}

run_meson_suites() {
  local dir=$1 label=$2; shift 2
  local log
  log=$(mktemp)
  echo "== $label: doctest suites ($dir)"
  "$MESON" test -C "$dir" --print-errorlogs --num-processes 1 "$@" 2>&1 | tee "$log" | grep -E '^ *[0-9]+/[0-9]+ |^(Ok|Fail|Timeout):'
  count_meson "$log" "$label"
  while IFS= read -r line; do details+=("$label: $line"); done < <(
    grep -E '^ *[0-9]+/[0-9]+ .*(FAIL|TIMEOUT|ERROR)|: ERROR: |^ *values: |^(TEST CASE|  SUBCASE):|SUMMARY: |^==[0-9]+==ERROR' "$log" | head -20)
  rm -f "$log"
}

setup_variant() {
  local dir=$1; shift
  if [ ! -f "$dir/build.ninja" ]; then
    "$MESON" setup "$dir" --buildtype=debugoptimized -Dbench=disabled -Dtools=disabled \
      -Dinstall_lib=false "$@" >/dev/null 2>&1 || return 1
  fi
  "$MESON" compile -C "$dir" -j "$jobs" >/dev/null || { "$MESON" compile -C "$dir" 2>&1 | tail -40; return 1; }
}

if want cpp; then
  run_meson_suites build "release"
fi

if want asan; then
  echo "== building the suites with ASan+UBSan"
  if setup_variant build-asan -Db_sanitize=address,undefined -Db_lundef=false; then
    ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
      SHMQ_TEST_SCALE=0.2 run_meson_suites build-asan "asan+ubsan"
  else
    failed=$((failed + 1)); failures+=("asan build")
  fi
fi

if want tsan; then
  # g++ 12 warns that TSan does not model atomic_thread_fence (wait.hpp's Dekker fences); the
  # fences stay, the warning may not fail the build.
  echo "== building the suites with TSan"
  if setup_variant build-tsan -Db_sanitize=thread -Db_lundef=false -Dcpp_args=-Wno-tsan; then
    TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 SHMQ_TEST_SCALE=0.1 \
      run_meson_suites build-tsan "tsan"
  else
    failed=$((failed + 1)); failures+=("tsan build")
  fi
fi

if want fuzz && [ -x tools/fuzz.sh ]; then
  echo "== fuzzing briefly"
  if tools/fuzz.sh 20; then passed=$((passed + 1)); else failed=$((failed + 1)); failures+=("fuzz"); fi
fi

if want python; then
  dirs=()
  for d in tests/python tests/cli tests/examples; do [ -d "$d" ] && dirs+=("$d"); done
  if ((${#dirs[@]})); then
    echo "== pytest ${dirs[*]}"
    log=$(mktemp)
    SHMQ_CLI=${SHMQ_CLI:-build/tools/shmq} .venv/bin/python -m pytest -q -p no:cacheprovider "${dirs[@]}" 2>&1 | tee "$log" | tail -40
    line=$(grep -E '[0-9]+ (passed|failed)' "$log" | tail -1)
    p=$(echo "$line" | grep -oE '[0-9]+ passed' | awk '{print $1}')
    f=$(echo "$line" | grep -oE '[0-9]+ failed' | awk '{print $1}')
    e=$(echo "$line" | grep -oE '[0-9]+ error' | awk '{print $1}')
    passed=$((passed + ${p:-0})); f=$(( ${f:-0} + ${e:-0} ))
    [ -z "$line" ] && f=$((f + 1))
    failed=$((failed + f))
    [ "$f" -gt 0 ] && failures+=("pytest")
    rm -f "$log"
  fi
fi

left=$(ls /dev/shm 2>/dev/null | grep '^shmq\.' || true)
if [ -n "$left" ]; then
  echo "segments left in /dev/shm after the suite:"; echo "$left"
  failed=$((failed + 1)); failures+=("leftover segments")
fi

if [ ${#failures[@]} -gt 0 ]; then
  echo "failed parts: ${failures[*]}"
  for d in "${details[@]}"; do echo "  $d"; done
fi
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]

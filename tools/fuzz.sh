#!/usr/bin/env bash
# Runs the libFuzzer targets briefly (CI): builds them with clang + ASan/UBSan in build-fuzz,
# seeds a corpus with valid messages, then fuzzes each target for a while.
#   tools/fuzz.sh [seconds per target, default 20]
# Environment: FUZZ_BUILD (default build-fuzz), MESON (default .venv/bin/meson, else meson).
# Exit status: 0 if no target found a crash, leak or sanitizer report; artifacts are kept in
# $FUZZ_BUILD/fuzz-artifacts/.
set -euo pipefail
cd "$(dirname "$0")/.."

SECS=${1:-20}
BUILD=${FUZZ_BUILD:-build-fuzz}
MESON=${MESON:-}
if [ -z "$MESON" ]; then
  if [ -x .venv/bin/meson ]; then MESON=.venv/bin/meson; else MESON=meson; fi
fi

if [ ! -f "$BUILD/build.ninja" ]; then
  # Only the fuzz targets are compiled (by name below), so the other suites are switched off.
  CXX=clang++ "$MESON" setup "$BUILD" --buildtype=debugoptimized -Dfuzz=true \
    -Dtests=disabled -Dbench=disabled -Dtools=disabled -Dpython=disabled -Dinstall_lib=false \
    -Db_sanitize=address,undefined -Db_lundef=false >/dev/null
fi
if ! out=$("$MESON" compile -C "$BUILD" fb_verify_fuzz fb_dyn_fuzz fb_fuzz_seeds segment_open_fuzz segment_fuzz_seeds 2>&1); then
  echo "fuzz: building the targets in $BUILD failed (remove $BUILD if it was set up by an older checkout):" >&2
  echo "$out" | tail -30 >&2
  exit 1
fi

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}
mkdir -p "$BUILD/fuzz-artifacts"

run_target() {  # name, binary, max_len, seed command...
  local name=$1 bin=$2 max_len=$3
  shift 3
  local corpus="$BUILD/fuzz-corpus/$name"
  mkdir -p "$corpus"
  "$@" "$corpus"
  # Inputs that once found a bug (serialize/fuzz/regressions/<target>/) run every time.
  if [ -d "serialize/fuzz/regressions/$name" ]; then cp serialize/fuzz/regressions/"$name"/* "$corpus"/; fi
  echo "fuzz: $name for ${SECS}s (corpus $corpus)"
  local log="$BUILD/fuzz-artifacts/$name.log" rc=0
  "$bin" -max_total_time="$SECS" -max_len="$max_len" -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1 -artifact_prefix="$BUILD/fuzz-artifacts/$name-" "$corpus" >"$log" 2>&1 ||
    rc=$?
  grep -E "^(stat::number_of_executed_units|stat::new_units_added)" "$log" || true
  if [ "$rc" -ne 0 ]; then
    echo "fuzz: $name FAILED (exit $rc); log: $log" >&2
    grep -E -A30 "ERROR|runtime error" "$log" | head -60 >&2 || true
  fi
  return "$rc"
}

run_target fb_verify "$BUILD/serialize/fuzz/fb_verify_fuzz" 8192 "$BUILD/serialize/fuzz/fb_fuzz_seeds"
run_target fb_dyn "$BUILD/serialize/fuzz/fb_dyn_fuzz" 8192 "$BUILD/serialize/fuzz/fb_fuzz_seeds"
run_target segment_open "$BUILD/shm/fuzz/segment_open_fuzz" 65536 "$BUILD/shm/fuzz/segment_fuzz_seeds"
echo "fuzz: ok"

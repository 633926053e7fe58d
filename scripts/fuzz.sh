#!/usr/bin/env bash
# Longer libFuzzer runs than the one-minute smoke tests of scripts/test.sh. Builds the fuzz targets
# with clang in build-fuzz/, then fuzzes each chosen target for N minutes. The corpus grows under
# build-fuzz/corpus_<target>/ and is kept between runs (the seeds in tests/fuzz/ and the kept
# regressions are read, never written); crashes go to build-fuzz/crashes/<target>/.
#   scripts/fuzz.sh                          both targets, 5 minutes each
#   scripts/fuzz.sh --target http --minutes 30
#   scripts/fuzz.sh --target admin --fork 2  two fuzzing processes (libFuzzer -fork)
# Targets: http (host/server/http.c over loopback TCP), admin (api_parse_event_body).
set -euo pipefail
cd "$(dirname "$0")/.."

target=all minutes=5 fork=0
while [ $# -gt 0 ]; do
  case "$1" in
    --target) target=$2; shift ;;
    --minutes) minutes=$2; shift ;;
    --fork) fork=$2; shift ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) echo "fuzz.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
case "$target" in
  http) targets=(http) ;;
  admin) targets=(admin) ;;
  all) targets=(http admin) ;;
  *) echo "fuzz.sh: --target is http, admin or all" >&2; exit 2 ;;
esac
[[ "$minutes" =~ ^[0-9]+$ ]] && [ "$minutes" -gt 0 ] || { echo "fuzz.sh: bad --minutes" >&2; exit 2; }
[[ "$fork" =~ ^[0-9]+$ ]] || { echo "fuzz.sh: bad --fork" >&2; exit 2; }
command -v clang >/dev/null || { echo "fuzz.sh: clang missing: scripts/setup.sh --no-build" >&2; exit 1; }

dir=build-fuzz
mkdir -p "$dir"
if ! { cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=Debug -DCMAKE_C_COMPILER=clang -DFUZZ=ON \
         -DSANITIZE=OFF && cmake --build "$dir" -j"$(nproc)" --target fuzz_http fuzz_admin_body
     } >"$dir/fuzz-build.log" 2>&1; then
  tail -n 40 "$dir/fuzz-build.log" >&2
  echo "fuzz.sh: build failed (full log: $dir/fuzz-build.log)" >&2
  exit 1
fi

binary() { case "$1" in http) echo fuzz_http ;; admin) echo fuzz_admin_body ;; esac; }
max_len() { case "$1" in http) echo 4096 ;; admin) echo 1024 ;; esac; }

status=0
for t in "${targets[@]}"; do
  bin=$(binary "$t")
  corpus=$dir/corpus_$t crashes=$dir/crashes/$t log=$dir/fuzz-$t.log
  mkdir -p "$corpus" "$crashes"
  dirs=("$corpus" "tests/fuzz/corpus_$t")
  [ -d "tests/fuzz/regressions/$t" ] && dirs+=("tests/fuzz/regressions/$t")
  args=(-max_total_time=$((minutes * 60)) -max_len="$(max_len "$t")" -dict="tests/fuzz/$t.dict"
        -artifact_prefix="$crashes/" -print_final_stats=1)
  [ "$fork" -eq 0 ] || args+=(-fork="$fork" -ignore_crashes=1)
  echo "fuzz: $bin for $minutes min (log: $log)"
  touch "$dir/fuzz-$t.start" # findings of earlier runs stay in $crashes but are not reported again
  rc=0
  ASAN_OPTIONS="detect_leaks=1:abort_on_error=1" UBSAN_OPTIONS="print_stacktrace=1" \
    "$dir/tests/$bin" "${args[@]}" "${dirs[@]}" >"$log" 2>&1 || rc=$?
  # The last status line and the final figures.
  grep -E '^#[0-9]+[[:space:]]+(DONE|pulse)|^stat::(number_of_executed_units|average_exec_per_sec)' "$log" |
    tail -n 3 || true
  echo "fuzz: corpus $corpus: $(find "$corpus" -type f | wc -l) inputs"
  found=$(find "$crashes" -type f -newer "$dir/fuzz-$t.start" \( -name 'crash-*' -o -name 'leak-*' -o -name 'timeout-*' \
            -o -name 'oom-*' \) | sort)
  if [ "$rc" -ne 0 ] || [ -n "$found" ]; then
    status=1
    echo "fuzz: $bin FAILED (exit $rc); findings:" >&2
    echo "${found:-  (none saved: see $log)}" | sed 's/^/  /' >&2
    cat >&2 <<EOF
To turn a finding into a regression test (see tests/fuzz/regressions/README.md):
  $dir/tests/$bin <file>                         # reproduce, read the report
  $dir/tests/$bin -minimize_crash=1 -max_total_time=60 -exact_artifact_path=/tmp/min <file>
  mkdir -p tests/fuzz/regressions/$t && cp /tmp/min tests/fuzz/regressions/$t/<what-it-is>
  cmake -S . -B $dir && ctest --test-dir $dir -R fuzz_${t}_smoke   # fails until fixed
EOF
  fi
done
exit $status

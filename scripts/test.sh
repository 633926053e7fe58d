#!/usr/bin/env bash
# The whole test suite: unit tests and integration tests against real redis-server and
# nats-server processes (started by the tests on free loopback ports), first in the release
# build, then again in the ASan+UBSan build, then about a minute of libFuzzer (clang, build-fuzz/).
# Installs and builds what is missing first.
#   scripts/test.sh             everything
#   scripts/test.sh --no-asan   release build only (quicker, for development)
#   scripts/test.sh --no-fuzz   without the fuzz step
#   scripts/test.sh -R REGEX    only the ctest tests matching REGEX
set -euo pipefail
cd "$(dirname "$0")/.."

asan=1 fuzz=1 filter=()
while [ $# -gt 0 ]; do
  case "$1" in
    --no-asan) asan=0 ;;
    --no-fuzz) fuzz=0 ;;
    -R) filter=(-R "$2"); shift ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "test.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done

if [ "$asan" -eq 1 ]; then scripts/setup.sh --asan; else scripts/setup.sh; fi

# Two tests at a time: most of them wait on their servers, not on the CPU, and the suite stays
# well under its 30-minute budget. The cluster fault suite (a dozen servers, timed faults) runs
# alone (RUN_SERIAL in tests/cluster.cmake).
jobs=(-j2)
status=0
echo "== release build"
ctest --test-dir build --output-on-failure "${jobs[@]}" "${filter[@]}" || status=1
if [ "$asan" -eq 1 ]; then
  echo "== ASan+UBSan build"
  export ASAN_OPTIONS="detect_leaks=1:abort_on_error=0:halt_on_error=1"
  export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
  export LSAN_OPTIONS="suppressions=$PWD/tests/lsan.supp:print_suppressions=0"
  ctest --test-dir build-asan --output-on-failure "${jobs[@]}" "${filter[@]}" || status=1
fi
if [ "$fuzz" -eq 1 ]; then
  # Only the fuzz targets are built there (they bring their own sanitizers); the smoke tests
  # replay tests/fuzz/regressions/ and fuzz each target for 25 s. -L fuzz keeps the tests of the
  # targets not built there out, -R still narrows; the sanitizer options of the ASan pass are not
  # meant for libFuzzer (the tests set their own).
  echo "== libFuzzer smoke (clang)"
  mkdir -p build-fuzz
  if { cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=Debug -DCMAKE_C_COMPILER=clang -DFUZZ=ON \
         -DSANITIZE=OFF && cmake --build build-fuzz -j"$(nproc)" --target fuzz_http fuzz_admin_body
     } >build-fuzz/setup.log 2>&1; then
    env -u ASAN_OPTIONS -u UBSAN_OPTIONS -u LSAN_OPTIONS \
      ctest --test-dir build-fuzz -L '^fuzz$' --output-on-failure "${filter[@]}" || status=1
  else
    tail -n 60 build-fuzz/setup.log >&2
    echo "test.sh: fuzz build failed (full log: build-fuzz/setup.log)" >&2
    status=1
  fi
fi
exit $status

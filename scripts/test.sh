#!/usr/bin/env bash
# The whole test suite: unit tests and integration tests against real redis-server and
# nats-server processes (started by the tests on free loopback ports), first in the release
# build, then again in the ASan+UBSan build. Installs and builds what is missing first.
#   scripts/test.sh             everything
#   scripts/test.sh --no-asan   release build only (quicker, for development)
#   scripts/test.sh -R REGEX    only the ctest tests matching REGEX
set -euo pipefail
cd "$(dirname "$0")/.."

asan=1 filter=()
while [ $# -gt 0 ]; do
  case "$1" in
    --no-asan) asan=0 ;;
    -R) filter=(-R "$2"); shift ;;
    -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
    *) echo "test.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done

if [ "$asan" -eq 1 ]; then scripts/setup.sh --asan; else scripts/setup.sh; fi

status=0
echo "== release build"
ctest --test-dir build --output-on-failure "${filter[@]}" || status=1
if [ "$asan" -eq 1 ]; then
  echo "== ASan+UBSan build"
  export ASAN_OPTIONS="detect_leaks=1:abort_on_error=0:halt_on_error=1"
  export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
  export LSAN_OPTIONS="suppressions=$PWD/tests/lsan.supp:print_suppressions=0"
  ctest --test-dir build-asan --output-on-failure "${filter[@]}" || status=1
fi
exit $status

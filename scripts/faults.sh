#!/usr/bin/env bash
# The fault suite (tests/integration/test_faults*.py) against a built tree, then the table of
# docs/RELIABILITY.md rewritten from this run's per-case lines.
#   scripts/faults.sh                      build dir "build", table rewritten
#   scripts/faults.sh --build DIR          another build dir (e.g. build-faults)
#   scripts/faults.sh --asan [--build DIR] ASan+UBSan build (default build-asan); the table is
#                                          left alone, sanitizer reports fail the cases
#   scripts/faults.sh --no-docs            do not touch docs/RELIABILITY.md
#   scripts/faults.sh --bugs               also run the regression tests of fixed bugs
# Every server is started by the tests on free loopback ports and stopped by PID.
set -euo pipefail
cd "$(dirname "$0")/.."

build="" asan=0 docs=1 bugs=0
while [ $# -gt 0 ]; do
  case "$1" in
    --build) build="$2"; shift ;;
    --asan) asan=1 ;;
    --no-docs) docs=0 ;;
    --bugs) bugs=1 ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "faults.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
if [ -z "$build" ]; then
  if [ "$asan" -eq 1 ]; then build=build-asan; else build=build; fi
fi
if [ ! -x "$build/snatch-host" ]; then
  echo "faults.sh: no $build/snatch-host; build first (cmake -S . -B $build ...)" >&2
  exit 2
fi
if [ "$asan" -eq 1 ]; then
  docs=0
  export ASAN_OPTIONS="detect_leaks=1:abort_on_error=0:halt_on_error=1"
  export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
  export LSAN_OPTIONS="suppressions=$PWD/tests/lsan.supp:print_suppressions=0"
fi

report=$(mktemp)
trap 'rm -f "$report"' EXIT
export SNATCH_BUILD_DIR="$PWD/$build" SNATCH_SOURCE_DIR="$PWD" SNATCH_FAULTS_REPORT="$report"
export PYTHONDONTWRITEBYTECODE=1
files=(tests/integration/test_faults.py tests/integration/test_faults_infra.py
       tests/integration/test_faults_redis_setup.py tests/integration/test_faults_jetstream.py)
[ "$bugs" -eq 1 ] && files+=(tests/integration/test_faults_regressions.py)

status=0
start=$(date +%s)
for f in "${files[@]}"; do
  echo "== $f"
  timeout 600 python3 "$f" || status=1
done
echo "== $(( $(date +%s) - start ))s, exit $status"

if [ "$docs" -eq 1 ]; then
  python3 - "$report" docs/RELIABILITY.md "$build" "$status" <<'EOF'
import json, re, subprocess, sys, time
report, doc, build, status = sys.argv[1:5]
rows = [json.loads(l) for l in open(report) if l.strip()]
try:
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                         text=True).stdout.strip() or "?"
    dirty = subprocess.run(["git", "status", "--porcelain", "host", "lua"], capture_output=True,
                           text=True).stdout.strip()
except OSError:
    rev, dirty = "?", ""
out = ["Last run: %s, commit %s%s, build `%s`, suite exit %s." % (
    time.strftime("%Y-%m-%d %H:%M"), rev, " + uncommitted changes" if dirty else "", build,
    status), "",
    "| fault | requests | 200 | 202 | 503 | persisted | sold/stock | oversold | missing | "
    "duplicates | unsold | silent | notes |",
    "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
for r in rows:
    out.append("| %s | %d | %d | %d | %d | %d | %d/%d | %d | %d | %d | %s | %d | %s |" % (
        r["fault"], r["requests"], r["ok"], r["pending"], r["unavailable"], r["persisted"],
        r["sold"], r["stock"], r["oversold"], r["missing"], r["duplicates"],
        r["unsold"] if r.get("sellout", True) else "-",
        r["silent"], r["note"].replace("|", "/")))
text = open(doc).read()
new, n = re.subn(r"(<!-- faults:begin -->\n).*?(<!-- faults:end -->)",
                 lambda m: m.group(1) + "\n".join(out) + "\n" + m.group(2), text, flags=re.S)
if n != 1:
    sys.exit("faults.sh: no <!-- faults:begin/end --> markers in " + doc)
open(doc, "w").write(new)
print("faults.sh: %d rows written to %s" % (len(rows), doc))
EOF
fi
exit $status

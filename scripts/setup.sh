#!/usr/bin/env bash
# Installs what snatch needs on Debian 12 (only the packages that are missing), then configures
# and builds. Idempotent: a second run only rebuilds what changed.
#   scripts/setup.sh            release build in build/
#   scripts/setup.sh --asan     also the ASan+UBSan build in build-asan/
#   scripts/setup.sh --no-build only install packages
set -euo pipefail
cd "$(dirname "$0")/.."

PKGS=(build-essential cmake pkg-config libuv1-dev libluajit2-5.1-dev libhiredis-dev libnats-dev
      libsqlite3-dev libhttp-parser-dev libjansson-dev libssl-dev libcmocka-dev redis-server nats-server
      python3 sqlite3 curl lua-check clang libclang-rt-14-dev clang-format
      dpkg-dev systemd python3-jsonschema python3-yaml openssl
      prometheus nginx nftables)

asan=0 build=1
for a in "$@"; do
  case "$a" in
    --asan) asan=1 ;;
    --no-build) build=0 ;;
    -h|--help) sed -n '2,7p' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown option $a" >&2; exit 2 ;;
  esac
done

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  # Tests and the demo start their own redis-server/nats-server on free ports; a system
  # service the package may start is left alone.
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
fi

[ "$build" -eq 1 ] || exit 0
jobs=$(nproc 2>/dev/null || echo 2)
build_dir() { # dir cmake-args...
  local dir=$1; shift
  mkdir -p "$dir"
  if ! { cmake -S . -B "$dir" "$@" && cmake --build "$dir" -j"$jobs"; } >"$dir/setup.log" 2>&1; then
    tail -n 60 "$dir/setup.log" >&2
    echo "setup: build in $dir failed (full log: $dir/setup.log)" >&2
    exit 1
  fi
  echo "setup: built $dir"
}
build_dir build -DCMAKE_BUILD_TYPE=RelWithDebInfo
[ "$asan" -eq 0 ] || build_dir build-asan -DCMAKE_BUILD_TYPE=Debug -DSANITIZE=ON

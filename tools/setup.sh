#!/usr/bin/env bash
# Idempotent set-up for a fresh Debian 12 machine: system packages, then the project's .venv.
#   tools/setup.sh sys    system packages (apt-get, only those missing)
#   tools/setup.sh venv   .venv with the Python tools (pip, only when requirements changed)
set -euo pipefail
cd "$(dirname "$0")/.."

SYS_PACKAGES=(
  meson ninja-build g++ pkg-config python3-dev python3-venv
  libflatbuffers-dev flatbuffers-compiler doctest-dev libbenchmark-dev
  libconcurrentqueue-dev libreaderwriterqueue-dev libatomic-queue-dev libboost-dev
  libcli11-dev nlohmann-json3-dev libfmt-dev clang libclang-rt-14-dev
  nats-server
)

sys_setup() {
  local missing=()
  for p in "${SYS_PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
      missing+=("$p")
    fi
  done
  if ((${#missing[@]})); then
    echo "setup: installing system packages: ${missing[*]}"
    local sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

venv_setup() {
  local req=python/requirements-dev.txt
  local stamp=.venv/.requirements.stamp
  local py=${PYTHON:-python3}
  if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv"
    "$py" -m venv .venv
  fi
  if [ ! -f "$stamp" ] || ! cmp -s "$req" "$stamp"; then
    echo "setup: installing Python tools into .venv"
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -r "$req"
    cp "$req" "$stamp"
  fi
}

case "${1:-all}" in
  sys) sys_setup ;;
  venv) venv_setup ;;
  all) sys_setup; venv_setup ;;
  *) echo "usage: $0 [sys|venv|all]" >&2; exit 2 ;;
esac

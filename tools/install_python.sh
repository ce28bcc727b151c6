#!/usr/bin/env bash
# Builds and installs the Python package into .venv (pip install .), only when its sources changed.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f pyproject.toml ] || exit 0
stamp=.venv/.shmq-python.stamp
sum=$(git ls-files -co --exclude-standard -- pyproject.toml meson.build meson_options.txt core shm serialize python \
      | sort | xargs sha1sum 2>/dev/null | sha1sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$sum" ]; then exit 0; fi
echo "build: installing the shmq Python package into .venv"
.venv/bin/python -m pip install -q --no-build-isolation --no-deps . 
echo "$sum" > "$stamp"

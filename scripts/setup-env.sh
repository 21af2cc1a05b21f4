#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment in .venv and install difflab
# into it. Idempotent: a second run only checks that everything is in place.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating virtual environment in .venv" >&2
  "$PY" -m venv .venv
fi
stamp=.venv/.difflab-installed
want="$(cat pyproject.toml scripts/setup-env.sh | cksum)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[setup] installing difflab and its dependencies (first run takes a few minutes)" >&2
  # torch is pinned to the CPU build this machine ships; an unpinned torch would pull CUDA.
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  .venv/bin/python -m pip install -q "torch==2.13.0"
  .venv/bin/python -m pip install -q -e ".[dev,text,ui,tensorboard,docs]"
  echo "$want" > "$stamp"
fi

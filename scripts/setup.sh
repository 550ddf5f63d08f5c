#!/usr/bin/env bash
# Create .venv (if needed) and install ferkit into it. Idempotent; safe to re-run.
#   bash scripts/setup.sh          # runtime only
#   bash scripts/setup.sh test     # plus test dependencies (pytest, onnx, onnxruntime)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  for cand in python3.11 python3 python; do
    if command -v "$cand" >/dev/null 2>&1; then PY=$cand; break; fi
  done
fi
[ -n "$PY" ] || { echo "setup: no python3 found" >&2; exit 1; }
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
PIP=(.venv/bin/python -m pip --disable-pip-version-check -q)
# torch is pinned here (not in pyproject) to the CPU build that lies on this project's machines;
# an unpinned install would pull a multi-GB CUDA build. GPU users install their own torch first.
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
  echo "setup: installing torch==${FERKIT_TORCH:-2.13.0}"
  "${PIP[@]}" install "torch==${FERKIT_TORCH:-2.13.0}" 2> >(grep -v "is ignored: it is neither" >&2)
fi
extra=""
[ "${1:-}" = "test" ] && extra="[test]"
echo "setup: installing ferkit${extra} (editable)"
"${PIP[@]}" install -e ".${extra}" 2> >(grep -v "is ignored: it is neither" >&2)

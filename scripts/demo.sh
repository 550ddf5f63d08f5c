#!/usr/bin/env bash
# Set up (.venv + ferkit) and run the built-in demo: generate faces, train, evaluate.
# Extra args go to `ferkit demo` (see `ferkit demo --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/ferkit demo "$@"

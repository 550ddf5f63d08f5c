#!/usr/bin/env bash
# Set up (.venv + ferkit with test extras), lint (ruff, rules in pyproject.toml), then run the test
# suite. Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
.venv/bin/ruff check src tests benchmarks main.py
exec .venv/bin/python -m pytest -q "$@"

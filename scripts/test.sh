#!/usr/bin/env bash
# Set up (.venv + ferkit with test extras), lint (ruff, rules in pyproject.toml), then run the test
# suite. Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
# tests/test_serve_browser.py drives Debian's headless chromium: install it when missing (as root, with apt)
if ! { command -v chromium && command -v chromedriver; } >/dev/null 2>&1 && [ "$(id -u)" = 0 ] \
    && command -v apt-get >/dev/null 2>&1; then
  echo "test: installing chromium and chromium-driver (apt) for the browser test"
  export DEBIAN_FRONTEND=noninteractive
  { apt-get install -y -qq chromium chromium-driver || { apt-get update -qq && apt-get install -y -qq chromium chromium-driver; }; } \
    >/dev/null 2>&1 || echo "test: could not install chromium; the browser test will say it is skipped"
fi
.venv/bin/ruff check src tests benchmarks main.py
exec .venv/bin/python -m pytest -q "$@"

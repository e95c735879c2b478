#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite: `bash scripts/test.sh [pytest args]`
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
export PYTHONUNBUFFERED=1
.venv/bin/ruff check relay signaling turn bench tests
exec .venv/bin/python -m pytest -p no:cacheprovider -q -rs "$@"

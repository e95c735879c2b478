#!/usr/bin/env bash
# Set up (if needed) and run the service with the embedded defaults: `bash scripts/serve.sh [parley serve flags]`
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/parley serve "$@"

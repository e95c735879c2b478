#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite: `bash scripts/test.sh [pytest args]`
#
# The tests run inside a network namespace of their own that has nothing but a loopback
# interface, so every packet the relay, the TURN server, aiortc clients and Chromium exchange
# provably stays on 127.0.0.1/::1.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
export PYTHONUNBUFFERED=1
.venv/bin/ruff check relay signaling turn bench tests
if [ "${PARLEY_NO_NETNS:-}" = 1 ]; then
    exec .venv/bin/python -m pytest -p no:cacheprovider -q -rs "$@"
fi
exec unshare --net -- bash -c 'ip link set lo up && exec .venv/bin/python -m pytest -p no:cacheprovider -q -rs "$@"' pytest "$@"

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
.venv/bin/mypy

run_pytest() {
    if [ "${PARLEY_NO_NETNS:-}" = 1 ]; then
        .venv/bin/python -m pytest -p no:cacheprovider -q -rs "$@"
    else
        unshare --net -- bash -c 'ip link set lo up && exec .venv/bin/python -m pytest -p no:cacheprovider -q -rs "$@"' pytest "$@"
    fi
}

log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
run_pytest "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# CPython 3.11.7 sometimes dies at start-up with "AST constructor recursion depth mismatch"
# (gh-106905, fixed in 3.11.8) before any test ran; only then, run once more.
if [ "$status" != 0 ] && grep -q "AST constructor recursion depth mismatch" "$log" \
        && ! grep -qE "[0-9]+ (passed|failed)" "$log"; then
    echo "pytest hit CPython gh-106905 at start-up; running once more" >&2
    run_pytest "$@"
    status=$?
fi
exit "$status"

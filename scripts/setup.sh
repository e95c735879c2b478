#!/usr/bin/env bash
# Prepare a Debian machine (as root) for parley: system packages, a virtualenv in .venv, parley itself.
#   scripts/setup.sh            runtime only
#   scripts/setup.sh test       + test tools, Debian chromium, firefox-esr (+ node, npm ci in
#                               tests/firefox for puppeteer-core), coturn and janus
set -euo pipefail
cd "$(dirname "$0")/.."
want_test=${1:-}

need=()
command -v python3 >/dev/null || need+=(python3)
python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
# the optional compiled packet path (relay/_accel.c): a C compiler, the Python headers, libsrtp2;
# without them installing still works and the pure-Python packet path runs
command -v cc >/dev/null || need+=(gcc)
dpkg -s python3-dev >/dev/null 2>&1 || need+=(python3-dev)
dpkg -s libsrtp2-dev >/dev/null 2>&1 || need+=(libsrtp2-dev)
# ... and, for libsrtp on OpenSSL (scripts/libsrtp.sh), make, curl and OpenSSL's headers
command -v make >/dev/null || need+=(make)
command -v curl >/dev/null || need+=(curl)
dpkg -s libssl-dev >/dev/null 2>&1 || need+=(libssl-dev)
# ... and Nettle's headers: SRTP's AES-GCM on Nettle (without them, libsrtp's own on OpenSSL)
dpkg -s nettle-dev >/dev/null 2>&1 || need+=(nettle-dev)
if [ "$want_test" = test ]; then
    command -v chromium >/dev/null || need+=(chromium)
    command -v firefox-esr >/dev/null || need+=(firefox-esr)  # the Firefox page tests
    command -v node >/dev/null || need+=(nodejs)  # drives Firefox over WebDriver BiDi
    command -v npm >/dev/null || need+=(npm)
    command -v Xvfb >/dev/null || need+=(xvfb)  # Firefox's own screen share needs a display
    command -v turnserver >/dev/null || need+=(coturn)
    command -v certutil >/dev/null || need+=(libnss3-tools)  # test CA for the HTTPS browser test
    command -v ffprobe >/dev/null || need+=(ffmpeg)  # the recording tests check files with it
    ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)  # store tests
    command -v redis-server >/dev/null || need+=(redis-server)  # cluster tests (--redis-url)
    command -v janus >/dev/null || need+=(janus)  # bench/sidebyside.py: parley against Janus
    command -v valgrind >/dev/null || need+=(valgrind)  # bench/instructions.py: cachegrind counts
    command -v openssl >/dev/null || need+=(openssl)
    command -v ip >/dev/null || need+=(iproute2)
    command -v unshare >/dev/null || need+=(util-linux)
    fc-list 2>/dev/null | grep -qi dejavu || need+=(fonts-dejavu-core)
fi
if [ ${#need[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need[@]}" >/dev/null
    # the side-by-side run starts its own Janus on loopback: not Debian's service on every address
    if [[ " ${need[*]} " == *" janus "* ]] && command -v systemctl >/dev/null; then
        systemctl disable --now janus.service >/dev/null 2>&1 || true
    fi
fi

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
# libsrtp on OpenSSL for the compiled packet path; without it, Debian's libsrtp2 (on NSS)
if scripts/libsrtp.sh "$PWD/.build/libsrtp"; then
    export PARLEY_LIBSRTP="$PWD/.build/libsrtp"
else
    echo "setup: libsrtp on OpenSSL could not be built; the packet path uses Debian's libsrtp2" >&2
fi
if [ "$want_test" = test ]; then
    .venv/bin/python -m pip install -q '.[test,bench]'
else
    .venv/bin/python -m pip install -q .
fi
if [ "$want_test" = test ]; then
    # puppeteer-core for the Firefox tests (it never downloads a browser), when the lock changed
    if [ ! -f tests/firefox/node_modules/.package-lock.json ] ||
        [ tests/firefox/package-lock.json -nt tests/firefox/node_modules/.package-lock.json ]; then
        (cd tests/firefox && npm ci --no-audit --no-fund --silent)
    fi
fi

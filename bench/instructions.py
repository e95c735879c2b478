"""Instructions per media-socket wakeup, counted by valgrind's cachegrind rather than timed:
``python -m parley.bench.instructions``.

On this machine a wakeup's time is too noisy to compare two builds (bench/test_micro.py's
``test_reader_burst`` is bimodal, 17 or 31 µs, from one run to the next), while the number of
instructions it executes is the same to a fraction of a percent (0.1-0.2 % between
``--rounds 200`` and ``1000``; a few percent below about 100 rounds, where warm-up still counts). One wakeup is the reader of
``test_reader_burst``: a video frame's 4 SRTP datagrams queued on a real loopback socket, then
``recvmmsg``, ``accel.FastIn`` (unprotect, parse, route), the producer's ``accel.Inbound``, one
consumer (rewrite, SRTP protect) and the batch's ``sendmmsg``. The program runs it ``--rounds``
times under cachegrind twice, side by side (``--base`` and ``--base + --rounds`` wakeups, with the same
datagrams prepared) and prints the difference over ``--rounds``: the set-up cancels out; the 4 Python ``sendto`` that queue each
wakeup's datagrams stay in (about 10 000 instructions), the same for every build compared.
``--so PATH`` measures another build of relay/_accel.c (a copy of the installed package with
that module in its place, on ``PYTHONPATH``). Needs valgrind (Debian package) and the compiled
packet path.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

from aiortc.rtcrtpparameters import RTCRtpParameters
from aiortc.rtp import HeaderExtensionsMap

from parley.bench.fakes import EXTENSIONS


def run_wakeups(count: int, prepared: int) -> None:
    """Set up the reader of ``test_reader_burst`` with ``prepared`` wakeups' datagrams (the
    same in both runs, so that making them cancels out) and run ``count`` wakeups of it."""
    import uvloop

    from parley.bench.test_micro import _frame_packet, _guarded_fast_path
    from parley.relay import accel

    if accel.Reader is None or accel.FastIn is None:
        raise SystemExit("instructions: the compiled packet path is not built")
    loop = uvloop.new_event_loop()
    guard, tx, consumers = _guarded_fast_path(loop)
    ext = HeaderExtensionsMap()
    ext.configure(RTCRtpParameters(headerExtensions=EXTENSIONS))
    datagrams = [
        tx.protect(_frame_packet(seq).serialize(ext))
        for seq in range(3, 8 + 4 * max(count, prepared))
    ]
    fast = guard.fast
    assert fast is not None
    guard.datagram_received(datagrams[0], ("127.0.0.1", 9))  # makes the SRTP context
    inbound = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    inbound.bind(("127.0.0.1", 0))
    inbound.setblocking(False)
    target = inbound.getsockname()
    reader = accel.Reader(
        inbound.fileno(), SimpleNamespace(datagram_received=guard.datagram_received)
    )
    reader.fast = fast.taker

    async def main() -> None:
        for i in range(count):
            for datagram in datagrams[1 + 4 * i : 5 + 4 * i]:
                sender.sendto(datagram, target)
            reader()

    try:
        loop.run_until_complete(main())
    finally:
        inbound.close()
        sender.close()
        loop.close()
    if reader.taken != 4 * count or consumers[0].packets < 4 * count:
        raise SystemExit(f"instructions: {reader.taken} taken, {consumers[0].packets} forwarded")


def count_instructions(rounds: int, prepared: int, env: dict[str, str]) -> int:
    """Instructions cachegrind counts in a whole run of ``rounds`` wakeups."""
    with tempfile.TemporaryDirectory(prefix="parley-cachegrind-") as tmp:
        out = subprocess.run(
            [
                "valgrind",
                "--tool=cachegrind",
                "--cache-sim=no",
                f"--cachegrind-out-file={tmp}/out",
                sys.executable,
                "-m",
                "parley.bench.instructions",
                "--run",
                str(rounds),
                "--prepared",
                str(prepared),
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=1800,
            check=True,
        )
    found = re.search(r"I\s+refs:\s+([\d,]+)", out.stderr)
    if found is None:
        raise SystemExit(f"instructions: no count from cachegrind:\n{out.stderr[-2000:]}")
    return int(found.group(1).replace(",", ""))


def package_with(so: Path, tmp: str) -> str:
    """A copy of the installed package with ``so`` as its compiled packet path; its parent."""
    import parley.relay

    package = Path(parley.relay.__file__).resolve().parent.parent
    copy = Path(tmp) / "parley"
    shutil.copytree(package, copy, ignore=shutil.ignore_patterns("__pycache__"))
    for old in (copy / "relay").glob("_accel*.so"):
        shutil.copyfile(so, old)
    return tmp


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m parley.bench.instructions", description=__doc__)
    p.add_argument("--rounds", type=int, default=1000, help="wakeups counted")
    p.add_argument("--base", type=int, default=100, help="wakeups of the baseline run")
    p.add_argument("--so", type=Path, help="another build of the compiled packet path")
    p.add_argument("--run", type=int, help=argparse.SUPPRESS)  # inside valgrind
    p.add_argument("--prepared", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.run is not None:
        run_wakeups(args.run, args.prepared)
        return
    if shutil.which("valgrind") is None:
        raise SystemExit("instructions: needs valgrind (apt-get install valgrind)")
    env = dict(os.environ, PYTHONHASHSEED="0")
    with tempfile.TemporaryDirectory(prefix="parley-instructions-") as tmp:
        if args.so is not None:
            env["PYTHONPATH"] = package_with(args.so, tmp)
        prepared = args.base + args.rounds
        # the two runs side by side (each is one process, most of it Python's start-up)
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            runs = [
                pool.submit(count_instructions, n, prepared, env) for n in (args.base, prepared)
            ]
            base, more = (run.result() for run in runs)
    print(
        f"{(more - base) / args.rounds:,.0f} instructions per wakeup of 4 datagrams "
        f"({args.rounds} wakeups; {base:,} for the {args.base} of the baseline run)"
    )


if __name__ == "__main__":
    main()

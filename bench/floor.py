"""The physical floor: what one recvmsg + N sendmsg of the same packets cost on this machine, with
no SRTP, parse or rewrite (bench/floor.c, built here with the system ``cc`` at run time).

    python -m parley.bench.floor -n 1,10,20 --seconds 10
    python -m parley.bench.floor -n 1,10 --pps 120 --python

``--python`` runs the same forwarding in a Python process on uvloop instead (``add_reader``,
``recv`` until empty, one ``sendto`` per subscriber per packet): what an event-loop process in
Python pays before any relay work, the floor a Python relay's N = 1 figure stands on.

``-n`` is the number of ``parley bench`` sessions whose packet rate is offered (340 pps each:
every packet goes to one subscriber there, ``--fanout`` changes that). Prints CPU µs per
forwarded datagram (user + system of the forwarding process), the figure the relay's "µs/pkt"
compares with.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SOURCE = Path(__file__).with_name("floor.c")


def build(directory: Path) -> Path:
    cc = shutil.which("cc")
    if cc is None:
        raise SystemExit("the floor needs a C compiler (cc)")
    binary = directory / "floor"
    subprocess.run([cc, "-O2", "-o", str(binary), str(SOURCE)], check=True)
    return binary


def run(
    binary: Path | None, n: int, count: int, size: int, pps: float, batch: int
) -> dict[str, Any]:
    """One forwarding run: the C forwarder, or (``binary`` None) the Python one."""
    if binary is None:
        command = [sys.executable, "-m", "parley.bench.floor", "--forwarder"]
    else:
        command = [str(binary)]
    out = subprocess.run(
        [*command, str(n), str(count), str(size), str(pps), str(batch)],
        check=True,
        capture_output=True,
        text=True,
        timeout=count / pps + 60,
    )
    result: dict[str, Any] = json.loads(out.stdout)
    sent = max(1, result["sent"])
    result["us_per_forwarded"] = (result["user_us"] + result["sys_us"]) / sent
    result["sys_us_per_forwarded"] = result["sys_us"] / sent
    return result


def python_forwarder(n: int, count: int, size: int, pps: float) -> dict[str, Any]:
    """bench/floor.c's forwarder in Python on uvloop, with the same sender (bursts of 4) and
    subscriber processes around it; only this process's CPU is counted."""
    import uvloop

    inbound = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    inbound.bind(("127.0.0.1", 0))
    inbound.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    inbound.setblocking(False)
    sinks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(n)]
    for sink in sinks:
        sink.bind(("127.0.0.1", 0))
    targets = [sink.getsockname() for sink in sinks]
    reader = os.fork()
    if reader == 0:  # the subscribers: every datagram is delivered and wakes a reader
        import selectors

        with selectors.DefaultSelector() as selector:
            for sink in sinks:
                sink.setblocking(False)
                selector.register(sink, selectors.EVENT_READ)
            while events := selector.select(3.0):
                for key, _ in events:
                    while True:
                        try:
                            key.fileobj.recv(2048)  # type: ignore[union-attr]
                        except BlockingIOError:
                            break
        os._exit(0)
    sender = os.fork()
    if sender == 0:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as out:
            packet, address, start = b"\xab" * size, inbound.getsockname(), time.monotonic()
            for i in range(count):
                if i % 4 == 0:
                    time.sleep(max(0.0, start + i / pps - time.monotonic()))
                out.sendto(packet, address)
        os._exit(0)
    out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    out.setblocking(False)
    counts = [0, 0]

    async def forward() -> None:
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        last = [time.monotonic()]

        def readable() -> None:
            while True:
                try:
                    data = inbound.recv(2048)
                except BlockingIOError:
                    break
                counts[0] += 1
                for target in targets:
                    try:
                        out.sendto(data, target)
                        counts[1] += 1
                    except BlockingIOError:
                        pass
            last[0] = time.monotonic()
            if counts[0] >= count and not done.done():
                done.set_result(None)

        loop.add_reader(inbound.fileno(), readable)
        while not done.done() and time.monotonic() - last[0] < 1.0:
            await asyncio.wait([done], timeout=0.5)
        loop.remove_reader(inbound.fileno())

    before = resource.getrusage(resource.RUSAGE_SELF)
    uvloop.run(forward())
    after = resource.getrusage(resource.RUSAGE_SELF)
    for pid in (sender, reader):
        os.waitpid(pid, 0)
    return {
        "received": counts[0],
        "sent": counts[1],
        "user_us": round((after.ru_utime - before.ru_utime) * 1e6),
        "sys_us": round((after.ru_stime - before.ru_stime) * 1e6),
    }


def main() -> None:
    if sys.argv[1:2] == ["--forwarder"]:
        n, count, size = (int(arg) for arg in sys.argv[2:5])
        print(json.dumps(python_forwarder(n, count, size, float(sys.argv[5]))))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", default="1,10,20", help="sessions' worth of packets (a list)")
    parser.add_argument("--fanout", type=int, default=1, help="subscribers per packet")
    parser.add_argument("--pps", type=float, default=340, help="packets per second per session")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--size", type=int, default=1042, help="datagram size in bytes")
    parser.add_argument(
        "--batch",
        type=int,
        default=1,
        help="read up to this many packets per recvmmsg and send them as one UDP GSO sendmsg",
    )
    parser.add_argument(
        "--python", action="store_true", help="forward in Python on uvloop instead of in C"
    )
    args = parser.parse_args()
    if args.python and args.batch != 1:
        parser.error("--python reads one datagram per recv (--batch 1)")
    with tempfile.TemporaryDirectory(prefix="parley-floor-") as tmp:
        binary = None if args.python else build(Path(tmp))
        print(
            f"forwarder: {'Python (uvloop)' if args.python else 'C'}\n\n"
            "| N | pkt/s in | fan-out | batch | sent | CPU µs per forwarded datagram "
            "| of which system |"
        )
        print("|---|---|---|---|---|---|---|")
        for n in (int(x) for x in args.n.split(",")):
            pps = args.pps * n
            r = run(binary, args.fanout, int(pps * args.seconds), args.size, pps, args.batch)
            print(
                f"| {n} | {pps:.0f} | {args.fanout} | {args.batch} | {r['sent']} "
                f"| {r['us_per_forwarded']:.2f} | {r['sys_us_per_forwarded']:.2f} |"
            )


if __name__ == "__main__":
    main()

"""The physical floor: what one recvmsg + N sendmsg of the same packets cost on this machine, with
no SRTP, parse or rewrite (bench/floor.c, built here with the system ``cc`` at run time).

    python -m parley.bench.floor -n 1,10,20 --seconds 10

``-n`` is the number of ``parley bench`` sessions whose packet rate is offered (340 pps each:
every packet goes to one subscriber there, ``--fanout`` changes that). Prints CPU µs per
forwarded datagram (user + system of the forwarding process), the figure the relay's "µs/pkt"
compares with.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
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


def run(binary: Path, n: int, count: int, size: int, pps: float, batch: int) -> dict[str, Any]:
    out = subprocess.run(
        [str(binary), str(n), str(count), str(size), str(pps), str(batch)],
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


def main() -> None:
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
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="parley-floor-") as tmp:
        binary = build(Path(tmp))
        print(
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

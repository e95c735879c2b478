"""The relay's receive-and-forward path socket to socket, in one process, for comparing the ways
a media socket is read and written: ``python -m parley.bench.socketpath``.

A sender socket sends bursts of SRTP video packets (``--burst`` per frame, 1042 bytes like the
load tool's) to a relay media socket; the socket's callback is the relay's own (the datagram
guard, ``FastReceive``, the router, the producer's entry, ``accel.fan_out`` to ``--consumers``
consumers sending on real loopback sockets). Modes, interleaved ``--repeat`` times:

- ``uvloop``: the event loop's datagram transport (one ``recvmsg`` per datagram, one ``sendto``
  per packet and consumer);
- ``batched``: relay/udp.py (``recvmmsg``; the batch's sends as one ``sendmmsg`` per consumer,
  equal-size runs as UDP GSO);
- ``batched-nogso``: the same without GSO.

Printed: process CPU time (user + system, everything: sender, relay path, kernel delivery) per
forwarded datagram. The sender's share is the same in every mode, so differences are the read
and write paths'. The batched modes need the compiled packet path; with the pure one
(``PARLEY_PURE_PYTHON=1``) only ``uvloop`` runs (``--modes`` picks some).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import time
from types import SimpleNamespace
from typing import Any

from aiortc.rtcdtlstransport import SRTP_PROFILES, RtpRouter
from aiortc.rtcrtpparameters import RTCRtpParameters
from aiortc.rtp import HeaderExtensionsMap

from parley.bench.fakes import (
    EXTENSIONS,
    PUBLISHER_SSRC,
    FakeSsl,
    forwarding_setup,
    srtp_pair,
    video_packet,
)
from parley.relay import accel, udp
from parley.relay._aiortc import DatagramGuard, FastReceive

MODES = ("uvloop", "batched", "batched-nogso")


class _Receiver:
    _parley_forward: Any


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, guard: DatagramGuard) -> None:
        self.datagram_received = guard.datagram_received  # type: ignore[method-assign]


async def run_mode(mode: str, consumers: int, bursts: int, burst: int) -> float:
    """CPU µs per forwarded datagram in ``mode``."""
    producer, outs, _ = forwarding_setup(consumers, real_socket=True)
    router = RtpRouter()
    receiver = _Receiver()
    # the entry the producer hooked on its own receiver (Producer.forward or accel.Inbound)
    receiver._parley_forward = producer._receiver.__dict__["_parley_forward"]
    router.register_receiver(receiver, ssrcs=[PUBLISHER_SSRC], payload_types=[96])  # type: ignore[arg-type]
    ssl = FakeSsl()
    tx, rx = srtp_pair(ssl.key(0))
    guard = DatagramGuard(lambda data, addr: None)
    dtls = SimpleNamespace(
        _rx_srtp=rx, _rtp_router=router, _ssl=ssl, _role="server", _srtp_profiles=SRTP_PROFILES
    )
    guard.fast = FastReceive(dtls)  # type: ignore[arg-type]
    ext = HeaderExtensionsMap()
    ext.configure(RTCRtpParameters(headerExtensions=EXTENSIONS))
    datagrams = [
        tx.protect(video_packet(seq & 0xFFFF, False).serialize(ext))
        for seq in range(3, 3 + bursts * burst)
    ]
    loop = asyncio.get_running_loop()
    accel.Reader and accel._compiled.set_gso(mode != "batched-nogso")  # type: ignore[func-returns-value]
    if mode == "uvloop":
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Protocol(guard), local_addr=("127.0.0.1", 0)
        )
    else:
        transport, _ = await udp.create_batched_endpoint(
            loop, lambda: _Protocol(guard), ("127.0.0.1", 0)
        )
    target = transport.get_extra_info("sockname")
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    try:
        start = time.process_time()
        for b in range(bursts):
            for data in datagrams[b * burst : (b + 1) * burst]:
                sender.sendto(data, target)
            wanted = (b + 1) * burst
            for _ in range(1000):  # bounded: the burst is on loopback already
                if guard.received >= wanted:
                    break
                await asyncio.sleep(0)
        elapsed = time.process_time() - start
    finally:
        sender.close()
        transport.close()
        await asyncio.sleep(0)
    forwarded = outs[0].packets - 1
    if forwarded < bursts * burst * 0.99:
        raise RuntimeError(f"{mode}: only {forwarded} of {bursts * burst} forwarded")
    return elapsed * 1e6 / (bursts * burst)


async def main_async(args: argparse.Namespace) -> None:
    results: dict[str, list[float]] = {m: [] for m in args.modes}
    for _ in range(args.repeat):
        for mode in args.modes:
            results[mode].append(await run_mode(mode, args.consumers, args.bursts, args.burst))
    load = os.getloadavg()[0]
    print(
        f"consumers={args.consumers} burst={args.burst} bursts={args.bursts} "
        f"repeat={args.repeat} load={load:.1f} packet_path={accel.IMPLEMENTATION}"
    )
    for mode, values in results.items():
        values.sort()
        print(
            f"  {mode:14s} CPU µs per forwarded datagram: min {values[0]:.2f} "
            f"median {values[len(values) // 2]:.2f}"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--consumers", type=int, default=1)
    p.add_argument("--burst", type=int, default=4, help="datagrams per frame")
    p.add_argument("--bursts", type=int, default=3000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument(
        "--modes",
        type=lambda text: tuple(text.split(",")),
        default=MODES if accel.Reader is not None else ("uvloop",),
        help=f"comma-separated, of {', '.join(MODES)} (default: all the packet path can run)",
    )
    args = p.parse_args()
    if unknown := set(args.modes) - set(MODES):
        raise SystemExit(f"unknown modes: {', '.join(sorted(unknown))}")
    if accel.Reader is None and set(args.modes) - {"uvloop"}:
        raise SystemExit("the batched modes need the compiled packet path (no PARLEY_PURE_PYTHON)")
    import uvloop

    uvloop.run(main_async(args))


if __name__ == "__main__":
    main()

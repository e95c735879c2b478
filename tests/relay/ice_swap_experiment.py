"""Experiment (issue 12, not a test): an in-place ICE restart by swapping aioice's connection
under a live aiortc DTLS transport, on both ends of a loopback call between two aiortc peers.

Each run: a call carries video A -> B; both ends make a fresh ``aioice.Connection`` (new
credentials, new sockets), run ICE on it while the old one still carries media (JVB's way), then
swap it in under the ICE transport: the DTLS transport keeps its session and SRTP keys. What is
swapped, and why, is in :func:`swap`. Prints one line per run; findings in docs/hardening.md.

    unshare --net -- bash -c 'ip link set lo up && exec .venv/bin/python tests/relay/ice_swap_experiment.py 5'
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import aioice  # noqa: E402
from aiortc import MediaStreamTrack, RTCPeerConnection  # noqa: E402
from aiortc.mediastreams import MediaStreamError  # noqa: E402

from parley.relay import _aiortc  # noqa: E402
from tests.media_client import PatternVideoTrack  # noqa: E402


def ice_transport(pc: RTCPeerConnection) -> Any:
    return pc.getTransceivers()[0].receiver.transport.transport


async def fresh_connection(controlling: bool) -> aioice.Connection:
    """A new ICE agent with new credentials, gathering on 127.0.0.1 only."""
    connection = aioice.Connection(ice_controlling=controlling, components=1, use_ipv6=False)
    stock = connection.get_component_candidates

    async def loopback(component: int, addresses: Any = None, timeout: int = 5) -> Any:  # noqa: ASYNC109
        return await stock(component=component, addresses=["127.0.0.1"], timeout=timeout)

    connection.get_component_candidates = loopback  # type: ignore[method-assign]
    await connection.gather_candidates()
    return connection


def swap(transport: Any, new: aioice.Connection) -> None:
    """Put ``new`` (connected) under aiortc's RTCIceTransport ``transport``."""
    old = transport._connection
    # the DTLS transport's loop is already waiting in old.recv(): share its queue
    new._queue = old._queue
    # the old agent must never wake that recv() with None (its close and a lost nominated
    # socket both do) nor end the transport (its consent expiry closes it)
    if old._query_consent_task is not None:
        old._query_consent_task.cancel()
    old._nominated.clear()
    for protocol in old._protocols:
        protocol.transport.close()
    # aiortc binds these at construction (rtcicetransport.py)
    transport._connection = new
    transport._recv = new.recv
    transport._send = new.send
    transport.iceGatherer._connection = new
    # its monitor waits for the old agent's ConnectionClosed, and stop() awaits the monitor
    transport._RTCIceTransport__monitor_task.cancel()
    transport._RTCIceTransport__monitor_task = asyncio.ensure_future(transport._monitor())


async def one_run(run: int) -> dict[str, Any]:
    a, b = RTCPeerConnection(), RTCPeerConnection()
    a.addTrack(PatternVideoTrack())
    frames: list[float] = []
    readers: list[asyncio.Task[None]] = []

    @b.on("track")
    def on_track(track: MediaStreamTrack) -> None:
        async def read() -> None:
            try:
                while True:
                    await track.recv()
                    frames.append(time.monotonic())
            except MediaStreamError:
                return

        readers.append(asyncio.ensure_future(read()))

    _aiortc.configure_host_candidates(a, ["127.0.0.1"], None)
    await a.setLocalDescription(await a.createOffer())
    await b.setRemoteDescription(a.localDescription)
    _aiortc.configure_host_candidates(b, ["127.0.0.1"], None)
    await b.setLocalDescription(await b.createAnswer())
    await a.setRemoteDescription(b.localDescription)
    for _ in range(100):  # bounded: 10 s
        if len(frames) > 30:
            break
        await asyncio.sleep(0.1)
    ta, tb = ice_transport(a), ice_transport(b)
    old_port = ta._connection._nominated[1].protocol.local_candidate.port
    started = time.monotonic()
    na = await fresh_connection(ta._connection.ice_controlling)
    nb = await fresh_connection(tb._connection.ice_controlling)
    na.remote_username, na.remote_password = nb.local_username, nb.local_password
    nb.remote_username, nb.remote_password = na.local_username, na.local_password
    for x, y in ((na, nb), (nb, na)):
        for candidate in y.local_candidates:
            await x.add_remote_candidate(candidate)
        await x.add_remote_candidate(None)
    await asyncio.wait_for(asyncio.gather(na.connect(), nb.connect()), 10)
    ice_s = time.monotonic() - started
    swap(ta, na)
    swap(tb, nb)
    swapped = time.monotonic()
    await asyncio.sleep(2.0)
    near = [f for f in frames if f > swapped - 1.0]
    gap = max((y - x for x, y in zip(near, near[1:], strict=False)), default=None)
    soon = len([f for f in frames if f > swapped])
    await asyncio.sleep(12.0)  # consent checks on the new agents run meanwhile
    result = {
        "run": run,
        "new ICE (s)": round(ice_s, 3),
        "frames in 2 s after": soon,
        "longest gap around the swap (s)": round(gap, 3) if gap is not None else None,
        "new socket": na._nominated[1].protocol.local_candidate.port != old_port,
        "frames in the 12 s after": len([f for f in frames if f > swapped]) - soon,
        "states": (a.connectionState, b.connectionState),
    }
    await asyncio.wait_for(asyncio.gather(a.close(), b.close()), 10)
    for reader in readers:
        reader.cancel()
    return result


async def main(runs: int) -> None:
    for run in range(runs):
        print(await one_run(run), flush=True)


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 3))

"""A load-client process: holds the synthetic publishers or the subscribers of one run and obeys
the orchestrator (``bench.workers``) over its stdin/stdout: length-prefixed pickled
``(id, method, kwargs)`` requests, ``(id, ok, result)`` replies.

Publishers and subscribers live in separate worker processes, so a send burst never delays a
receive timestamp, and each role's CPU is read from /proc on its own.

Run as ``python -m parley.bench.worker``; it exits when stdin closes.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
import struct
import sys
from typing import Any

from aiortc import (
    RTCBundlePolicy,
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.rtcconfiguration import RTCIceTransportPolicy

from parley.relay import _aiortc

from .clip import ClipPublisher, FrameTap
from .synthetic import SyntheticPublisher, Tap, Window

logger = logging.getLogger(__name__)
HEADER = struct.Struct("!I")


def make_pc(ice: dict[str, Any] | None) -> RTCPeerConnection:
    """A client peer connection: loopback host candidates, or relay-only through ``ice``
    (``{"urls": [...], "username": ..., "credential": ...}``)."""
    servers = []
    policy = RTCIceTransportPolicy.ALL
    if ice is not None:
        servers = [
            RTCIceServer(urls=ice["urls"], username=ice["username"], credential=ice["credential"])
        ]
        policy = RTCIceTransportPolicy.RELAY
    return RTCPeerConnection(
        RTCConfiguration(
            iceServers=servers, bundlePolicy=RTCBundlePolicy.MAX_BUNDLE, iceTransportPolicy=policy
        )
    )


def prepare_ice(pc: RTCPeerConnection, ice: dict[str, Any] | None, host: str = "127.0.0.1") -> None:
    if ice is None:
        _aiortc.configure_host_candidates(pc, [host], None)


def _count(values: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for value in values:
        out[value] = out.get(value, 0) + 1
    return out


class Worker:
    def __init__(self) -> None:
        self.window = Window()
        self.sent: dict[int, int] = {}
        self.tap = Tap(self.window)
        self.publishers: dict[str, SyntheticPublisher] = {}
        self.subscribers: dict[str, RTCPeerConnection] = {}
        self.clip_publishers: dict[str, ClipPublisher] = {}
        self.frame_tap = FrameTap(self.window)
        self.host = "127.0.0.1"
        """The loopback address of the publish and subscribe connections' host candidates."""

    async def use_host(self, address: str) -> None:
        """Gather on ``address`` from now on (the side-by-side run: Janus only answers an
        address on its own interface, bench/netns.py)."""
        self.host = address

    # --- publishing ---------------------------------------------------------------------------

    async def publish_offer(
        self,
        key: str,
        audio_id: int | None,
        video_id: int,
        bitrate: int,
        fps: int,
        ice: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        pc = make_pc(ice)
        publisher = SyntheticPublisher(
            pc,
            audio_id=audio_id,
            video_id=video_id,
            bitrate=bitrate,
            fps=fps,
            window=self.window,
            counts=self.sent,
        )
        self.publishers[key] = publisher
        offer = await pc.createOffer()
        prepare_ice(pc, ice, self.host)
        await pc.setLocalDescription(offer)
        return {"sdp": pc.localDescription.sdp, "sources": publisher.sources()}

    async def publish_answer(self, key: str, sdp: str) -> None:
        publisher = self.publishers[key]
        await publisher.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))
        publisher.start()

    # --- subscribing --------------------------------------------------------------------------

    async def subscribe_answer(self, key: str, sdp: str, ice: dict[str, Any] | None = None) -> str:
        pc = self.subscribers.get(key)
        if pc is None:
            pc = self.subscribers[key] = make_pc(ice)
        await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        for transceiver in pc.getTransceivers():
            self.tap.hook(transceiver)
        answer = await pc.createAnswer()
        prepare_ice(pc, ice, self.host)
        await pc.setLocalDescription(answer)
        _aiortc.install_fast_receive(pc)  # the relay's receive path: no aiortc queue and task
        return str(pc.localDescription.sdp)

    # --- real VP8 (the transcoding baseline) ----------------------------------------------------

    async def clip_publish_offer(self, key: str, video_id: int, bitrate: int, fps: int) -> str:
        pc = make_pc(None)
        self.clip_publishers[key] = ClipPublisher(pc, video_id, bitrate, fps, self.window)
        offer = await pc.createOffer()
        prepare_ice(pc, None)
        await pc.setLocalDescription(offer)
        return str(pc.localDescription.sdp)

    async def clip_publish_answer(self, key: str, sdp: str) -> None:
        publisher = self.clip_publishers[key]
        await publisher.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))
        publisher.start()

    async def clip_subscribe_offer(self, key: str) -> str:
        """A recvonly video offer (the MediaRelay server answers with its re-encoded track)."""
        pc = self.subscribers[key] = make_pc(None)
        transceiver = pc.addTransceiver("video", direction="recvonly")
        self.frame_tap.hook(key, transceiver)
        offer = await pc.createOffer()
        prepare_ice(pc, None)
        await pc.setLocalDescription(offer)
        return str(pc.localDescription.sdp)

    async def clip_subscribe_answer(self, key: str, sdp: str) -> None:
        pc = self.subscribers[key]
        await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))

    async def clip_answer(self, key: str, sdp: str) -> str:
        """Answer a clip publisher's offer directly (the floor for the baseline)."""
        pc = self.subscribers[key] = make_pc(None)
        await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        for transceiver in pc.getTransceivers():
            self.frame_tap.hook(key, transceiver)
        answer = await pc.createAnswer()
        prepare_ice(pc, None)
        await pc.setLocalDescription(answer)
        return str(pc.localDescription.sdp)

    async def clip_seen(self) -> list[str]:
        return sorted(k for k, v in self.frame_tap.packets.items() if v)

    async def clip_report(self) -> dict[str, Any]:
        return {
            "sends": {p.stream_id: p.sends for p in self.clip_publishers.values()},
            "sent_packets": sum(p.sent_packets for p in self.clip_publishers.values()),
            "arrivals": self.frame_tap.decode(),
            "window_packets": dict(self.frame_tap.window_packets),
        }

    # --- measuring ----------------------------------------------------------------------------

    async def seen(self) -> list[int]:
        return sorted(self.tap.seen | set(self.tap.counts))

    async def set_window(self, start: int, end: int) -> None:
        self.window.set(start, end)

    async def report(self) -> dict[str, Any]:
        publishers = self.publishers.values()
        return {
            "pid": os.getpid(),
            "sent": dict(self.sent),
            "send_errors": sum(p.errors for p in publishers),
            "keyframes": sum(p.keyframes for p in publishers),
            "keyframe_requests": sum(p.keyframe_requests for p in publishers),
            "publisher_states": _count(p.states[-1] if p.states else "none" for p in publishers),
            **self.tap.report(),
        }

    async def close(self) -> None:
        for publisher in self.publishers.values():
            publisher.stop()
        for clip_publisher in self.clip_publishers.values():
            clip_publisher.stop()
        pcs = [p.pc for p in self.publishers.values()] + list(self.subscribers.values())
        pcs += [p.pc for p in self.clip_publishers.values()]
        await asyncio.wait_for(
            asyncio.gather(*(pc.close() for pc in pcs), return_exceptions=True), 10
        )


async def serve() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 26)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin.buffer)
    out = sys.stdout.buffer
    worker = Worker()
    tasks: set[asyncio.Task[None]] = set()

    async def handle(call_id: int, method: str, kwargs: dict[str, Any]) -> None:
        try:
            result = await getattr(worker, method)(**kwargs)
            reply = (call_id, True, result)
        except Exception as exc:  # reported to the orchestrator, which raises it there
            logger.exception("%s failed", method)
            reply = (call_id, False, f"{type(exc).__name__}: {exc}")
        data = pickle.dumps(reply)
        out.write(HEADER.pack(len(data)) + data)
        out.flush()

    while True:
        try:
            size = HEADER.unpack(await reader.readexactly(HEADER.size))[0]
            call_id, method, kwargs = pickle.loads(await reader.readexactly(size))
        except asyncio.IncompleteReadError:
            break
        task = asyncio.ensure_future(handle(call_id, method, kwargs))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    try:
        await worker.close()
    except Exception:  # noqa: BLE001 - shutting down anyway
        pass


def main() -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    import uvloop

    uvloop.run(serve())


if __name__ == "__main__":
    main()

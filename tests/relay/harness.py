"""Wires real aiortc clients straight to a Router (no signaling) for media-plane tests."""

from __future__ import annotations

import asyncio
import contextlib
import os
import struct
from collections.abc import AsyncIterator
from typing import Any

from aiortc import sdp as aiortc_sdp

from parley.relay import Consumer, MediaConfig, Peer, Producer, Router
from tests.media_client import MediaClient


class RouterParticipant:
    """A MediaClient joined to a Router through direct calls."""

    def __init__(self, router: Router, client: MediaClient) -> None:
        self.router = router
        self.client = client
        self.id = client.name
        self.offers = 0
        self.offered: list[list[dict[str, Any]]] = []
        """The ``tracks`` list of every subscribe offer, in order."""
        self.offer_sdps: list[str] = []
        self.capture_rtcp = False
        self.failures = 0
        """How often the relay reported this participant's media as failed or closed."""
        self.failed = asyncio.Event()
        self.peer: Peer = router.add_peer(self.id, self._on_offer, self._on_failed)

    def _on_failed(self, peer: Peer) -> None:
        self.failures += 1
        self.failed.set()

    async def _on_offer(self, sdp: str, tracks: list[dict[str, Any]]) -> None:
        self.offers += 1
        self.offered.append(list(tracks))
        self.offer_sdps.append(sdp)
        answer = await self.client.answer_subscribe_offer(sdp, tracks)
        await self.peer.handle_subscribe_answer(answer)
        if self.client._capture:
            self.client.capture_payloads()
        if self.capture_rtcp:
            self.client.capture_rtcp()

    async def publish(self) -> None:
        sdp, sources = await self.client.publish_offer()
        answer = await self.peer.handle_publish_offer(sdp, sources)
        await self.client.apply_publish_answer(answer)

    def producer(self, kind: str, source: str | None = None) -> Producer:
        return next(
            p
            for p in self.peer.producers
            if p.kind == kind and (source is None or p.source == source)
        )

    def consumer_of(self, producer: Producer) -> Consumer:
        return self.peer.subscribe.consumers[producer.id]

    def media_ports(self) -> list[tuple[str, int]]:
        """The relay's host candidates (address, port) of both of this participant's legs."""
        out = set()
        for pc in (self.peer.publish.pc, self.peer.subscribe.pc):
            for transceiver in pc.getTransceivers():
                gatherer = transceiver.receiver.transport.transport.iceGatherer
                out.update((c.ip, c.port) for c in gatherer.getLocalCandidates())
        return sorted(out)

    async def close(self) -> None:
        await self.peer.close()
        await self.client.close()


def malformed_stun() -> bytes:
    """A STUN binding request whose PRIORITY attribute is 2 bytes long (aioice's parser raises
    struct.error on it)."""
    attribute = struct.pack("!HH", 0x0024, 2) + b"\x00\x01\x00\x00"
    return struct.pack("!HHI", 0x0001, len(attribute), 0x2112A442) + os.urandom(12) + attribute


def directions(offer_sdp: str) -> dict[str, str]:
    """Direction of every m-line of an offer, by mid."""
    parsed = aiortc_sdp.SessionDescription.parse(offer_sdp)
    return {m.rtp.muxId: m.direction for m in parsed.media}


def make_router(name: str = "session", **config: Any) -> Router:
    return Router(name, MediaConfig(addresses=("127.0.0.1",), **config))


@contextlib.asynccontextmanager
async def session(
    *names: str, **config: Any
) -> AsyncIterator[tuple[Router, dict[str, RouterParticipant]]]:
    """A router with one participant per name (joined, not yet publishing); all closed after."""
    router = make_router(**config)
    people: dict[str, RouterParticipant] = {}
    try:
        for name in names:
            people[name] = RouterParticipant(router, MediaClient(name))
        yield router, people
    finally:
        for person in list(people.values()):
            with contextlib.suppress(Exception):
                await person.close()
        await router.close()

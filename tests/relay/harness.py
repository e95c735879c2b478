"""Wires real aiortc clients straight to a Router (no signaling) for media-plane tests."""

from __future__ import annotations

from typing import Any

from relay import MediaConfig, Peer, Router
from tests.media_client import MediaClient


class RouterParticipant:
    """A MediaClient joined to a Router through direct calls."""

    def __init__(self, router: Router, client: MediaClient) -> None:
        self.router = router
        self.client = client
        self.id = client.name
        self.offers = 0
        self.peer: Peer = router.add_peer(self.id, self._on_offer)

    async def _on_offer(self, sdp: str, tracks: list[dict[str, Any]]) -> None:
        self.offers += 1
        answer = await self.client.answer_subscribe_offer(sdp, tracks)
        await self.peer.handle_subscribe_answer(answer)
        self.client.capture_payloads() if self.client._capture else None

    async def publish(self) -> None:
        sdp, sources = await self.client.publish_offer()
        answer = await self.peer.handle_publish_offer(sdp, sources)
        await self.client.apply_publish_answer(answer)

    async def close(self) -> None:
        await self.peer.close()
        await self.client.close()


def make_router(name: str = "session") -> Router:
    return Router(name, MediaConfig(addresses=("127.0.0.1",)))

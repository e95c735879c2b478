"""A test participant: parley's one signaling client (``parley.bench.signaling_client``) with
real aiortc media (``tests.media_client``)."""

from __future__ import annotations

from typing import Any

from aiortc import RTCIceServer
from aiortc.rtcconfiguration import RTCIceTransportPolicy

from parley.bench.signaling_client import SignalingClient
from tests.media_client import MediaClient


class WsParticipant(SignalingClient):
    """Joins with a token; publishes when asked; answers every subscribe offer."""

    def __init__(self, base_url: str, join_url: str, name: str, **media: Any) -> None:
        super().__init__(base_url, join_url, name)
        self.media_options = media
        self.client: MediaClient | None = None

    async def join(self, *, media: bool = True, timeout: float = 20) -> dict[str, Any]:  # noqa: ASYNC109
        welcome = await super().join(timeout=timeout)
        if welcome["type"] == "welcome" and media:
            self.client = self._make_client(welcome)
        return welcome

    def _make_client(self, welcome: dict[str, Any]) -> MediaClient:
        servers = [
            RTCIceServer(urls=s["urls"], username=s.get("username"), credential=s.get("credential"))
            for s in welcome["ice_servers"]
        ]
        options = dict(self.media_options)
        policy = (
            RTCIceTransportPolicy.RELAY
            if welcome["ice_transport_policy"] == "relay"
            else RTCIceTransportPolicy.ALL
        )
        urls = options.pop("turn_urls", None)
        if urls is not None:
            servers = [
                RTCIceServer(urls=urls, username=s.username, credential=s.credential)
                for s in servers
            ]
        return MediaClient(
            self.name,
            ice_servers=servers,
            policy=policy,
            host_addresses=[] if policy == RTCIceTransportPolicy.RELAY else ["127.0.0.1"],
            **options,
        )

    async def publish(self, timeout: float = 20) -> None:  # noqa: ASYNC109
        assert self.client is not None
        sdp, sources = await self.client.publish_offer()
        answer = await self.send_publish_offer(sdp, sources, timeout)
        await self.client.apply_publish_answer(answer)

    async def on_subscribe_offer(self, message: dict[str, Any]) -> str | None:
        if self.client is None:
            return None
        return await self.client.answer_subscribe_offer(message["sdp"], message["tracks"])

    async def close(self) -> None:
        await super().close()
        if self.client is not None:
            await self.client.close()

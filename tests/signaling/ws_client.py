"""A participant that speaks parley's WebSocket protocol, with real aiortc media."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import aiohttp
from aiortc import RTCIceServer
from aiortc.rtcconfiguration import RTCIceTransportPolicy

from tests.media_client import MediaClient


def ws_url(base_url: str) -> str:
    return base_url.replace("http://", "ws://").replace("https://", "wss://") + "/api/v1/ws"


def token_of(join_url: str) -> str:
    return join_url.rsplit("/join/", 1)[1]


class WsParticipant:
    """Joins with a token; publishes when asked; answers every subscribe offer."""

    def __init__(self, base_url: str, join_url: str, name: str, **media: Any) -> None:
        self.base_url = base_url
        self.token = token_of(join_url)
        self.name = name
        self.media_options = media
        self.client: MediaClient | None = None
        self.messages: list[dict[str, Any]] = []
        self.welcome: dict[str, Any] | None = None
        self.closed = asyncio.Event()
        self.close_code: int | None = None
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._publish_answer: asyncio.Future[str] | None = None
        self._new_message = asyncio.Condition()

    @property
    def id(self) -> str:
        assert self.welcome is not None
        return str(self.welcome["participant_id"])

    async def connect(self) -> None:
        self._session = aiohttp.ClientSession()
        self._ws = await self._session.ws_connect(ws_url(self.base_url))
        self._reader = asyncio.ensure_future(self._read())

    async def join(self, *, media: bool = True, timeout: float = 10) -> dict[str, Any]:
        if self._ws is None:
            await self.connect()
        after = len(self.messages)
        await self.send({"type": "join", "token": self.token, "name": self.name})
        welcome = await self.wait_message(
            lambda m: m["type"] in ("welcome", "error"), timeout, after=after
        )
        if welcome["type"] == "welcome":
            self.welcome = welcome
            if media:
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
            self.name, ice_servers=servers, policy=policy,
            host_addresses=[] if policy == RTCIceTransportPolicy.RELAY else ["127.0.0.1"],
            **options,
        )

    async def publish(self, timeout: float = 10) -> None:
        assert self.client is not None
        sdp, sources = await self.client.publish_offer()
        self._publish_answer = asyncio.get_running_loop().create_future()
        await self.send({"type": "offer", "pc": "publish", "sdp": sdp, "sources": sources})
        answer = await asyncio.wait_for(self._publish_answer, timeout)
        await self.client.apply_publish_answer(answer)

    async def send(self, message: dict[str, Any] | str) -> None:
        assert self._ws is not None
        if isinstance(message, str):
            await self._ws.send_str(message)
        else:
            await self._ws.send_json(message)

    async def wait_message(
        self, predicate: Any, timeout: float = 10, after: int = 0
    ) -> dict[str, Any]:
        async def find() -> dict[str, Any]:
            seen = after
            async with self._new_message:
                while True:
                    for message in self.messages[seen:]:
                        if predicate(message):
                            return message
                    seen = len(self.messages)
                    if self.closed.is_set():
                        raise ConnectionError(f"socket closed ({self.close_code})")
                    await self._new_message.wait()

        return await asyncio.wait_for(find(), timeout)

    def errors(self) -> list[dict[str, Any]]:
        return [m for m in self.messages if m["type"] == "error"]

    async def _read(self) -> None:
        assert self._ws is not None
        try:
            async for msg in self._ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                message = msg.json()
                if message.get("type") == "offer" and message.get("pc") == "subscribe":
                    await self._answer(message)
                elif message.get("type") == "answer" and message.get("pc") == "publish":
                    if self._publish_answer is not None and not self._publish_answer.done():
                        self._publish_answer.set_result(message["sdp"])
                async with self._new_message:
                    self.messages.append(message)
                    self._new_message.notify_all()
        finally:
            self.close_code = self._ws.close_code
            self.closed.set()
            async with self._new_message:
                self._new_message.notify_all()

    async def _answer(self, message: dict[str, Any]) -> None:
        if self.client is None:
            return
        answer = await self.client.answer_subscribe_offer(message["sdp"], message["tracks"])
        await self.send({"type": "answer", "pc": "subscribe", "sdp": answer})

    async def drop(self) -> None:
        """Vanish without a leave message (the TCP connection just goes away)."""
        if self._ws is not None:
            transport = self._ws._response.connection.transport  # type: ignore[union-attr]
            if transport is not None:
                transport.abort()
        await self.close()

    async def close(self) -> None:
        if self._ws is not None and not self._ws.closed:
            with contextlib.suppress(Exception):
                await self._ws.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(BaseException):
                await self._reader
        if self.client is not None:
            await self.client.close()
        if self._session is not None:
            await self._session.close()

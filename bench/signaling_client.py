"""A client of parley's WebSocket signaling API (``/api/v1/ws``), media-agnostic.

The one client the load tool (``bench.measure``) and the tests (``tests/signaling``) use: it joins
with a token, sends publish offers and waits for their answers, answers every subscribe offer in
order through :meth:`SignalingClient.on_subscribe_offer` (overridden by whoever holds the peer
connections), and keeps every message it received for waiting on.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import aiohttp

JOIN_TIMEOUT = 15.0


def ws_url(base_url: str) -> str:
    return base_url.replace("http://", "ws://").replace("https://", "wss://") + "/api/v1/ws"


def token_of(join_url: str) -> str:
    return join_url.rsplit("/join/", 1)[1]


class SignalingClient:
    """One participant's signaling WebSocket."""

    def __init__(
        self,
        base_url: str,
        join_url: str,
        name: str,
        *,
        http: aiohttp.ClientSession | None = None,
    ) -> None:
        self.base_url = base_url
        self.token = token_of(join_url)
        self.name = name
        self.messages: list[dict[str, Any]] = []
        """Every message received, in order."""
        self.welcome: dict[str, Any] | None = None
        self.closed = asyncio.Event()
        self.close_code: int | None = None
        self._http = http
        self._own_http = http is None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._publish_answer: asyncio.Future[str] | None = None
        self._new_message = asyncio.Condition()

    @property
    def id(self) -> str:
        assert self.welcome is not None, "not joined"
        return str(self.welcome["participant_id"])

    async def on_subscribe_offer(self, message: dict[str, Any]) -> str | None:
        """The answer SDP to a subscribe ``offer`` (None: send none). Answered in order:
        one renegotiation never overtakes another."""
        return None

    async def on_reconnect(self, message: dict[str, Any]) -> None:
        """The relay is rebuilding one media leg (``message["pc"]``): replace that peer
        connection before the next message (a new subscribe offer may follow at once)."""

    async def connect(self) -> None:
        if self._http is None:
            self._http = aiohttp.ClientSession()
        self._ws = await self._http.ws_connect(ws_url(self.base_url))
        self._reader = asyncio.ensure_future(self._read())

    async def join(self, *, timeout: float = JOIN_TIMEOUT) -> dict[str, Any]:  # noqa: ASYNC109
        """Send ``join``; the ``welcome`` (kept in :attr:`welcome`) or the ``error``."""
        if self._ws is None:
            await self.connect()
        after = len(self.messages)
        await self.send({"type": "join", "token": self.token, "name": self.name})
        reply = await self.wait_message(
            lambda m: m["type"] in ("welcome", "error"), timeout, after=after
        )
        if reply["type"] == "welcome":
            self.welcome = reply
        return reply

    async def send_publish_offer(
        self,
        sdp: str,
        sources: dict[str, str],
        timeout: float = JOIN_TIMEOUT,  # noqa: ASYNC109
    ) -> str:
        """Send a publish offer; the relay's answer SDP."""
        self._publish_answer = asyncio.get_running_loop().create_future()
        await self.send({"type": "offer", "pc": "publish", "sdp": sdp, "sources": sources})
        return await asyncio.wait_for(self._publish_answer, timeout)

    async def send(self, message: dict[str, Any] | str) -> None:
        """A message (a dict as JSON; a string as it is, to test bad input)."""
        assert self._ws is not None, "not connected"
        if isinstance(message, str):
            await self._ws.send_str(message)
        else:
            await self._ws.send_json(message)

    async def wait_message(
        self,
        predicate: Callable[[dict[str, Any]], bool],
        timeout: float = 20,  # noqa: ASYNC109
        after: int = 0,
    ) -> dict[str, Any]:
        """The first message from index ``after`` on that ``predicate`` accepts (waiting for
        it); ConnectionError when the socket closes first."""

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
        return [m for m in self.messages if m.get("type") == "error"]

    async def _read(self) -> None:
        assert self._ws is not None
        try:
            async for msg in self._ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                message = msg.json()
                kind, pc = message.get("type"), message.get("pc")
                if kind == "offer" and pc == "subscribe":
                    answer = await self.on_subscribe_offer(message)
                    if answer is not None:
                        await self.send({"type": "answer", "pc": "subscribe", "sdp": answer})
                elif kind == "reconnect":
                    await self.on_reconnect(message)
                elif kind == "answer" and pc == "publish":
                    if self._publish_answer is not None and not self._publish_answer.done():
                        self._publish_answer.set_result(message["sdp"])
                elif kind == "error":
                    if self._publish_answer is not None and not self._publish_answer.done():
                        self._publish_answer.set_exception(
                            RuntimeError(f"publish failed: {message}")
                        )
                        self._publish_answer.exception()  # retrieved by the waiter, if any
                async with self._new_message:
                    self.messages.append(message)
                    self._new_message.notify_all()
        finally:
            self.close_code = self._ws.close_code
            self.closed.set()
            async with self._new_message:
                self._new_message.notify_all()

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
        if self._own_http and self._http is not None:
            await self._http.close()

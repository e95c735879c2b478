"""A minimal TURN test client built on our codec (aioice only uses channels; this one also does
CreatePermission, Send/Data indications and raw bytes). UDP or TCP/TLS, asyncio."""

from __future__ import annotations

import asyncio
import os
import ssl
from typing import Any

from parley.turn import stun
from parley.turn.credentials import long_term_key


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, queue: asyncio.Queue[bytes]) -> None:
        self.queue = queue

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.queue.put_nowait(data)


class TurnTestClient:
    """Speaks TURN to ``server`` over ``transport`` ("udp", "tcp" or "tls")."""

    def __init__(
        self,
        server: tuple[str, int],
        username: str | None = None,
        password: str | None = None,
        transport: str = "udp",
        ssl_context: ssl.SSLContext | None = None,
        local_addr: tuple[str, int] | None = None,
    ) -> None:
        self.server = server
        self.local_addr = local_addr
        self.username = username
        self.password = password
        self.transport_kind = transport
        self.ssl_context = ssl_context
        self.realm: str | None = None
        self.nonce: str | None = None
        self.frames: asyncio.Queue[bytes] = asyncio.Queue()
        self.indications: asyncio.Queue[stun.Message | stun.ChannelData] = asyncio.Queue()
        self._udp: asyncio.DatagramTransport | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self.closed = asyncio.Event()

    async def __aenter__(self) -> TurnTestClient:
        loop = asyncio.get_running_loop()
        if self.transport_kind == "udp":
            udp, _ = await loop.create_datagram_endpoint(
                lambda: _Udp(self.frames), remote_addr=self.server
            )
            self._udp = udp  # type: ignore[assignment]
        else:
            reader, writer = await asyncio.open_connection(
                *self.server,
                ssl=self.ssl_context if self.transport_kind == "tls" else None,
                local_addr=self.local_addr,
            )
            self._writer = writer
            self._reader_task = asyncio.create_task(self._read_stream(reader))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._udp is not None:
            self._udp.close()
        if self._writer is not None:
            self._writer.close()
        if self._reader_task is not None:
            self._reader_task.cancel()

    async def _read_stream(self, reader: asyncio.StreamReader) -> None:
        buf = b""
        try:
            while True:
                chunk = await reader.read(65536)
                if not chunk:
                    break
                buf += chunk
                while True:
                    size = stun.stream_frame_length(buf)
                    if size <= 0 or len(buf) < size:
                        break
                    frame, buf = buf[:size], buf[size:]
                    self.frames.put_nowait(frame)
        finally:
            self.closed.set()

    @property
    def key(self) -> bytes:
        assert self.username and self.password is not None and self.realm
        return long_term_key(self.username, self.realm, self.password)

    def send_raw(self, data: bytes) -> None:
        if self._udp is not None:
            self._udp.sendto(data)
        else:
            assert self._writer is not None
            self._writer.write(data)

    async def recv_frame(self, wait: float = 2.0) -> bytes:
        return await asyncio.wait_for(self.frames.get(), wait)

    async def transact(self, data: bytes, tid: bytes, wait: float = 2.0) -> stun.Message:
        """Send ``data`` and wait for the response with ``tid``; other frames go to indications."""
        self.send_raw(data)
        loop = asyncio.get_running_loop()
        end = loop.time() + wait
        while True:
            frame = await asyncio.wait_for(self.frames.get(), max(0.01, end - loop.time()))
            if stun.is_channel_data(frame):
                self.indications.put_nowait(stun.ChannelData.parse(frame))
                continue
            msg = stun.parse(frame)
            if msg.transaction_id == tid and msg.cls in (stun.SUCCESS, stun.ERROR):
                return msg
            self.indications.put_nowait(msg)

    def build(
        self,
        method: int,
        attrs: dict[int, Any],
        auth: bool = True,
        tid: bytes | None = None,
        extra: list[tuple[int, Any]] | None = None,
    ) -> tuple[bytes, bytes]:
        tid = tid or os.urandom(12)
        attrs = dict(attrs)
        key = None
        if auth and self.nonce is not None:
            attrs[stun.USERNAME] = self.username
            attrs[stun.REALM] = self.realm
            attrs[stun.NONCE] = self.nonce
            key = self.key
        msg = stun.Message(method, stun.REQUEST, tid, attrs, extra=list(extra or []))
        return msg.encode(key, fingerprint=True), tid

    async def request(
        self, method: int, attrs: dict[int, Any], auth: bool = True, retry: bool = True
    ) -> stun.Message:
        """A request; on 401/438 learn REALM/NONCE and retry once (as real clients do)."""
        data, tid = self.build(method, attrs, auth)
        resp = await self.transact(data, tid)
        if (
            auth
            and retry
            and resp.cls == stun.ERROR
            and resp.get(stun.ERROR_CODE).code in (401, 438)
        ):
            if resp.get(stun.NONCE) is not None:
                self.realm = resp.get(stun.REALM)
                self.nonce = resp.get(stun.NONCE)
                data, tid = self.build(method, attrs, auth)
                resp = await self.transact(data, tid)
        return resp

    async def allocate(self, extra: dict[int, Any] | None = None) -> stun.Message:
        attrs: dict[int, Any] = {stun.REQUESTED_TRANSPORT: 17, stun.LIFETIME: 600}
        attrs.update(extra or {})
        return await self.request(stun.ALLOCATE, attrs)

    async def create_permission(self, *peers: tuple[str, int]) -> stun.Message:
        data, tid = self.build(
            stun.CREATE_PERMISSION,
            {stun.XOR_PEER_ADDRESS: peers[0]},
            extra=[(stun.XOR_PEER_ADDRESS, p) for p in peers[1:]],
        )
        return await self.transact(data, tid)

    async def channel_bind(self, number: int, peer: tuple[str, int]) -> stun.Message:
        return await self.request(
            stun.CHANNEL_BIND, {stun.CHANNEL_NUMBER: number, stun.XOR_PEER_ADDRESS: peer}
        )

    def send_indication(self, peer: tuple[str, int], data: bytes) -> None:
        msg = stun.Message(
            stun.SEND,
            stun.INDICATION,
            os.urandom(12),
            {stun.XOR_PEER_ADDRESS: peer, stun.DATA_ATTR: data},
        )
        self.send_raw(msg.encode(fingerprint=True))

    def send_channel_data(self, number: int, data: bytes) -> None:
        self.send_raw(stun.ChannelData(number, data).encode(pad=self.transport_kind != "udp"))

    async def next_indication(self, wait: float = 2.0) -> stun.Message | stun.ChannelData:
        loop = asyncio.get_running_loop()
        end = loop.time() + wait
        while self.indications.empty():
            frame = await asyncio.wait_for(self.frames.get(), max(0.01, end - loop.time()))
            if stun.is_channel_data(frame):
                self.indications.put_nowait(stun.ChannelData.parse(frame))
            else:
                self.indications.put_nowait(stun.parse(frame))
        return self.indications.get_nowait()

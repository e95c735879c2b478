"""TURN over TCP framing under Hypothesis (issue 12): a real server on loopback gets streams of
STUN requests cut at arbitrary boundaries, with or without garbage; it answers every whole
request in order, closes a connection that sends garbage, and keeps serving others."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from parley.turn import stun
from parley.turn.server import TurnServer
from tests.turn.conftest import make_config


class Running:
    """One server and its event loop for all the examples of a test (examples are sync)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.server = TurnServer(make_config(unauthenticated_rate=0.0))
        self.loop.run_until_complete(self.server.start())

    def run(self, coro: object) -> object:
        return self.loop.run_until_complete(asyncio.wait_for(coro, 10))  # type: ignore[arg-type]

    def close(self) -> None:
        self.loop.run_until_complete(self.server.close())
        self.loop.close()


@pytest.fixture(scope="module")
def running() -> Iterator[Running]:
    r = Running()
    yield r
    r.close()


def binding(tid: bytes) -> bytes:
    return stun.Message(stun.BINDING, stun.REQUEST, tid, {}).encode(None, fingerprint=True)


def is_garbage(data: bytes) -> bool:
    """Bytes that cannot start a STUN message or a ChannelData frame on a stream."""
    if stun.stream_frame_length(data) < 0:
        return True
    return data[0] & 0xC0 == 0 and data[4:8] != stun.COOKIE_BYTES


def cut(data: bytes, points: list[int]) -> list[bytes]:
    marks = sorted({p % (len(data) + 1) for p in points} | {0, len(data)})
    return [data[a:b] for a, b in zip(marks, marks[1:], strict=False) if b > a]


async def exchange(port: int, chunks: list[bytes], expected: int) -> tuple[list[bytes], bool]:
    """Send ``chunks`` (one write each, draining between); read replies until ``expected`` came
    or the server closed the connection. Returns the transaction ids and whether it closed."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    tids: list[bytes] = []
    closed = False
    try:
        for chunk in chunks:
            writer.write(chunk)
            await writer.drain()
            await asyncio.sleep(0)
        buf = b""
        while len(tids) < expected:
            data = await asyncio.wait_for(reader.read(4096), 5)
            if not data:
                closed = True
                break
            buf += data
            while (size := stun.stream_frame_length(buf)) > 0 and len(buf) >= size:
                msg = stun.parse(buf[:size])
                assert msg.cls == stun.SUCCESS and msg.method == stun.BINDING
                tids.append(msg.transaction_id)
                buf = buf[size:]
        if expected == 0 or closed:
            try:
                closed = closed or not await asyncio.wait_for(reader.read(4096), 2)
            except (TimeoutError, ConnectionError):
                pass
    except ConnectionError:
        closed = True
    finally:
        writer.close()
    return tids, closed


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(count=st.integers(1, 6), points=st.lists(st.integers(0, 10_000), max_size=12))
def test_requests_cut_anywhere_are_all_answered_in_order(
    running: Running, count: int, points: list[int]
) -> None:
    tids = [os.urandom(12) for _ in range(count)]
    stream = b"".join(binding(t) for t in tids)
    got, _ = running.run(exchange(running.server.tcp_port, cut(stream, points), count))  # type: ignore[misc]
    assert got == tids


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    before=st.integers(0, 3),
    garbage=st.binary(min_size=8, max_size=64).filter(lambda b: is_garbage(b)),
    points=st.lists(st.integers(0, 10_000), max_size=6),
)
def test_garbage_after_good_requests_closes_only_that_connection(
    running: Running,
    before: int,
    garbage: bytes,
    points: list[int],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    tids = [os.urandom(12) for _ in range(before)]
    stream = b"".join(binding(t) for t in tids) + garbage + binding(os.urandom(12))
    got, closed = running.run(  # type: ignore[misc]
        exchange(running.server.tcp_port, cut(stream, points), before + 1)
    )
    # answers before the garbage are best effort (closing with unread input makes the
    # kernel reset the connection), but nothing past the garbage is ever parsed
    assert closed and got == tids[: len(got)], (got, tids)
    # the server still serves a new connection, and logged no traceback
    fresh = os.urandom(12)
    got, _ = running.run(exchange(running.server.tcp_port, [binding(fresh)], 1))  # type: ignore[misc]
    assert got == [fresh]
    assert not [r for r in caplog.records if r.exc_info]

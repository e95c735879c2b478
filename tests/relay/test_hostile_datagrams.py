"""Datagrams anyone can send to a relay media port (issue 12) cut nobody's call, flood no log,
and a leg that ends under the relay is reported instead of being listed as connected."""

from __future__ import annotations

import logging
import socket

import pytest

from parley.relay import _aiortc
from tests.media_client import wait_for
from tests.relay.harness import RouterParticipant, malformed_stun, session


def spray(ports: list[tuple[str, int]], datagram: bytes, count: int = 1) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _ in range(count):
            for port in ports:
                sock.sendto(datagram, port)


async def flowing(people: dict[str, RouterParticipant], frames: int = 30) -> bool:
    """Both participants decode ``frames`` more frames of each other's audio and video."""
    names = list(people)
    before = {
        (me, other, kind): people[me].client.frames_from(other, kind)
        for me in names
        for other in names
        if other != me
        for kind in ("audio", "video")
    }
    return await wait_for(
        lambda: all(
            people[me].client.frames_from(other, kind) >= count + frames
            for (me, other, kind), count in before.items()
        ),
        timeout=20,
    )


async def test_an_empty_datagram_to_any_media_port_cuts_no_leg() -> None:
    async with session("ann", "bob") as (_, p):
        await p["ann"].publish()
        await p["bob"].publish()
        assert await flowing(p), {n: dict(p[n].client.frames) for n in p}
        ports = p["ann"].media_ports() + p["bob"].media_ports()
        assert len(ports) == 4  # a publish and a subscribe leg each
        empty = _aiortc.DATAGRAMS.empty

        spray(ports, b"")

        assert await wait_for(lambda: _aiortc.DATAGRAMS.empty >= empty + len(ports), timeout=5)
        assert await flowing(p), {n: dict(p[n].client.frames) for n in p}
        for person in p.values():
            assert person.failures == 0
            for pc in (person.peer.publish.pc, person.peer.subscribe.pc):
                assert pc.connectionState == "connected"


async def test_malformed_stun_is_counted_and_dropped_without_a_log_flood(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with session("ann", "bob") as (_, p):
        await p["ann"].publish()
        await p["bob"].publish()
        assert await flowing(p)
        ports = p["ann"].media_ports() + p["bob"].media_ports()
        malformed = _aiortc.DATAGRAMS.malformed_stun
        sent = 100 * len(ports)

        with caplog.at_level(logging.DEBUG):
            spray(ports, malformed_stun(), count=100)
            assert await wait_for(
                lambda: _aiortc.DATAGRAMS.malformed_stun >= malformed + sent, timeout=10
            ), (_aiortc.DATAGRAMS.malformed_stun - malformed, sent)
            assert await flowing(p)

        # at most one rate-limited line, and no traceback (aioice's would be ~1 KB each)
        loud = [r for r in caplog.records if r.levelno >= logging.INFO]
        assert len(loud) <= 1, [r.getMessage() for r in loud]
        assert all(r.exc_info is None for r in caplog.records)
        assert "Traceback" not in caplog.text
        assert _aiortc.DATAGRAMS.errors == 0


@pytest.mark.parametrize("leg", ["publish", "subscribe"])
async def test_a_leg_closed_under_the_relay_is_reported(leg: str) -> None:
    async with session("ann", "bob") as (_, p):
        await p["ann"].publish()
        await p["bob"].publish()
        assert await flowing(p)
        bob = p["bob"]
        # bob's side ends the DTLS session (close_notify): aiortc on the relay closes the
        # leg by itself, which it announces as "closed", never "failed"
        await (bob.client.pub if leg == "publish" else bob.client.sub).close()
        assert await wait_for(lambda: bob.failures > 0, timeout=10)
        assert p["ann"].failures == 0

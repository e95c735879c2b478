"""Long drops (issue 12: up to 30 s without a full reconnect). A participant whose network and
socket are gone is kept, its media too, for ``resume_grace`` seconds (45 by default,
``--resume-grace``), listed as ``reconnecting`` for the others; its legs dying and their
rebuilds timing out meanwhile do not end it. Real aiortc participants through the real
service; the grace and the timeouts are shortened so that the test stays short (the real 30 s
drop with Chromium is measured in docs/hardening.md)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from parley.relay.config import MediaConfig
from parley.signaling import sessions
from parley.signaling.keys import SESSIONS
from tests.media_client import wait_for
from tests.signaling.conftest import ServiceFactory
from tests.signaling.test_reconnect import ReconnectingParticipant, churn, offers, three_party_call
from tests.signaling.ws_client import WsParticipant


def states_of(p: WsParticipant, pid: str, after: int = 0) -> list[bool]:
    """The ``reconnecting`` values ``p`` was told for participant ``pid``, in order."""
    return [
        bool(m.get("reconnecting"))
        for m in p.messages[after:]
        if m["type"] == "participant_state" and m["participant_id"] == pid
    ]


class AwayParticipant(ReconnectingParticipant):
    """A ``reconnect`` sent while its network is down is lost with the socket (a page never
    gets it); once back, it rebuilds the legs the relay names, as a page does."""

    async def on_reconnect(self, message: dict[str, Any]) -> None:
        if self.network.is_up.is_set():
            await super().on_reconnect(message)


def cut(agent: ReconnectingParticipant) -> None:
    """The whole network goes: media and the WebSocket (its TCP connection is cut)."""
    assert agent.client is not None
    agent.network.down(agent.client.pub, agent.client.sub)
    transport = agent._ws._response.connection.transport  # type: ignore[union-attr]
    transport.abort()


async def test_a_participant_away_longer_than_its_legs_last_resumes_shown_as_reconnecting(
    service_factory: ServiceFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # legs die after 1.5 s and their rebuilds give up after 2 s: both happen while it is away
    monkeypatch.setattr(sessions, "LEG_REBUILD_TIMEOUT", 2.0)
    service = await service_factory(
        resume_grace=20.0, media=MediaConfig(addresses=("127.0.0.1",), dead_leg_after=1.5)
    )
    agent, customer, third = await three_party_call(service, AwayParticipant)
    try:
        assert agent.client is not None and customer.client is not None
        session = service.app[SESSIONS].get(agent.welcome["session_id"])
        before = {p.name: (offers(p), len(churn(p))) for p in (customer, third)}
        marks = {p.name: len(p.messages) for p in (customer, third)}
        count = customer.client.frames_from(agent.id, "video")
        # as in a real drop: the relay finds the legs silent (and rebuilds them) before the
        # socket's heartbeat finds the socket dead
        agent.network.down(agent.client.pub, agent.client.sub)
        rebuilt = await wait_for(lambda: session.participants[agent.id].peer.rebuilds >= 2, 10)
        assert rebuilt, "the silent legs were not noticed"
        for p in (customer, third):
            assert await wait_for(lambda p=p: True in states_of(p, agent.id, marks[p.name]), 10)
        cut(agent)
        await agent.closed.wait()
        await asyncio.sleep(3.0)  # the rebuilt legs' 2 s to connect run out meanwhile
        assert [p.id for p in session.connected()] == [agent.id, customer.id, third.id]
        assert all(states_of(p, agent.id)[-1] for p in (customer, third))
        agent.network.up()
        agent.closed.clear()
        mark = len(agent.messages)
        await agent.connect()
        await agent.send({"type": "join", "token": agent.token, "name": agent.name, "resume": True})
        welcome = await agent.wait_message(lambda m: m["type"] == "welcome", after=mark)
        assert welcome.get("resumed") is True and welcome["resume_grace"] == 20.0
        assert await wait_for(
            lambda: (
                customer.client is not None
                and customer.client.frames_from(agent.id, "video") >= count + 15
            ),
            timeout=30,
        ), ("no video from the resumed participant", agent.asked)
        for p in (customer, third):
            assert await wait_for(lambda p=p: states_of(p, agent.id)[-1:] == [False], 10)
            assert False not in states_of(p, agent.id, marks[p.name])[:1]
        after = {p.name: (offers(p), len(churn(p))) for p in (customer, third)}
        assert after == before  # nobody saw it leave or renegotiated
        assert not [m for m in agent.errors() if m.get("code") == "media_failed"]
    finally:
        for p in (agent, customer, third):
            await p.close()


async def test_a_participant_that_does_not_come_back_leaves_after_the_grace(
    service_factory: ServiceFactory,
) -> None:
    service = await service_factory(resume_grace=2.0)
    agent, customer, third = await three_party_call(service)
    try:
        session = service.app[SESSIONS].get(agent.welcome["session_id"])
        mark = len(customer.messages)
        cut(agent)
        await customer.wait_message(
            lambda m: (
                m["type"] == "participant_state"
                and m["participant_id"] == agent.id
                and m.get("reconnecting") is True
            ),
            after=mark,
        )
        assert agent.id in [p.id for p in session.connected()]
        left: dict[str, Any] = await customer.wait_message(
            lambda m: m["type"] == "participant_left", after=mark, timeout=15
        )
        assert left["participant_id"] == agent.id
        assert [p.id for p in session.connected()] == [customer.id, third.id]
    finally:
        for p in (agent, customer, third):
            await p.close()


def test_the_resume_grace_is_configurable_and_checked() -> None:
    from tests.signaling.conftest import make_config

    assert make_config().resume_grace == 45.0
    assert make_config(resume_grace=5.0).resume_grace == 5.0
    with pytest.raises(ValueError, match="resume grace"):
        make_config(resume_grace=0.0)


async def test_a_participant_that_loses_its_network_again_and_again_is_never_reconnected_in_full(
    service_factory: ServiceFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # two rebuilds in a row allowed: each drop costs two (both legs), three drops cost six
    monkeypatch.setattr(sessions, "LEG_REBUILDS_PER_JOIN", 2)
    service = await service_factory(media=MediaConfig(addresses=("127.0.0.1",), dead_leg_after=1.5))
    agent, customer, third = await three_party_call(service)
    try:
        session = service.app[SESSIONS].get(agent.welcome["session_id"])
        peer = session.participants[agent.id].peer
        seen = {p.name: len(churn(p)) for p in (customer, third)}
        for drop in range(3):
            assert agent.client is not None and customer.client is not None
            count = customer.client.frames_from(agent.id, "video")
            before, rebuilt = peer.rebuilds, len(agent.rebuilt)
            agent.network.down(agent.client.pub, agent.client.sub)
            # the relay finds both legs silent and rebuilds them
            assert await wait_for(lambda b=before: peer.rebuilds >= b + 2, 15), f"drop {drop}"
            agent.network.up()
            assert await wait_for(
                lambda c=count, r=rebuilt: (
                    len(agent.rebuilt) >= r + 2
                    and customer.client is not None
                    and customer.client.frames_from(agent.id, "video") >= c + 15
                    and agent.client is not None
                    and agent.client.sub.connectionState == "connected"
                    and agent.client.pub.connectionState == "connected"
                ),
                timeout=30,
            ), f"no media back after drop {drop}"
        assert len(agent.rebuilt) == 6  # more than the limit in all
        assert session.participants[agent.id].peer is peer
        assert not [m for m in agent.errors() if m.get("code") == "media_failed"]
        assert {p.name: len(churn(p)) for p in (customer, third)} == seen
    finally:
        for p in (agent, customer, third):
            await p.close()

"""Reconnection (issue 12): a participant whose network drops gets only its dead media leg rebuilt.

Real aiortc participants through the real service. One participant's network goes down (its peer
connections' datagrams vanish both ways; its WebSocket stays, as TCP does through a short drop);
the relay notices the silent leg within ``dead_leg_after`` (8 s), sends ``reconnect`` for it,
and the participant answers with a new peer connection for that leg only. Everybody else keeps
their connections: no new subscribe offer, no participant_left / participant_joined.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiortc import AudioStreamTrack, RTCPeerConnection

from parley.signaling.keys import SESSIONS
from tests.media_client import PatternVideoTrack, peer_connection, wait_for
from tests.signaling.conftest import Service
from tests.signaling.ws_client import WsParticipant

DETECT_TIMEOUT = 15.0
"""Generous bound on the relay noticing a dead leg (it is configured at 8 s)."""


class Network:
    """One participant's network: ``down()`` makes every datagram of the given peer
    connections vanish both ways (nothing closes), ``up()`` brings it back."""

    def __init__(self) -> None:
        self.is_up = asyncio.Event()
        self.is_up.set()
        self.cut: list[RTCPeerConnection] = []

    def down(self, *pcs: RTCPeerConnection) -> None:
        self.is_up.clear()
        for pc in pcs:
            self.cut.append(pc)
            for transceiver in pc.getTransceivers():
                connection = transceiver.receiver.transport.transport._connection
                for protocol in connection._protocols:
                    self._gate(protocol)

    def _gate(self, protocol: Any) -> None:
        receive, send = protocol.datagram_received, protocol.transport.sendto

        def datagram_received(data: bytes, addr: Any) -> None:
            if self.is_up.is_set():
                receive(data, addr)

        def sendto(*args: Any, **kwargs: Any) -> None:
            if self.is_up.is_set():
                send(*args, **kwargs)

        protocol.datagram_received = datagram_received
        protocol.transport.sendto = sendto

    def up(self) -> None:
        self.is_up.set()


class ReconnectingParticipant(WsParticipant):
    """Rebuilds the leg the relay names in ``reconnect`` once its network is up (a page does
    the same in join-signaling.js)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.network = Network()
        self.rebuilt: list[str] = []
        self.asked: list[tuple[float, str]] = []
        """When each ``reconnect`` arrived, and for which leg."""

    async def on_reconnect(self, message: dict[str, Any]) -> None:
        client = self.client
        if client is None:
            return
        self.asked.append((time.monotonic(), message["pc"]))
        await self.network.is_up.wait()  # a real page receives it only then (TCP)
        old: RTCPeerConnection
        if message["pc"] == "subscribe":
            old, client.sub = client.sub, peer_connection()
            client.sub.on("track", client._on_track)
            # the new leg's mids start again: count its frames afresh
            client.frames.clear()
            client.offered_tracks = []
        else:
            old, client.pub = client.pub, peer_connection()
            client.sources = {}
            # closing the old connection stops its tracks in aiortc (a browser's stay live)
            client.tracks = [
                AudioStreamTrack() if t.kind == "audio" else PatternVideoTrack()
                for t in client.tracks
            ]
            asyncio.ensure_future(self.publish())
        self.rebuilt.append(message["pc"])
        asyncio.ensure_future(old.close())


class FrameClock:
    """Samples how many video frames one participant receives from another, every 20 ms, and
    keeps when the count went up (a rebuilt subscribe leg starts counting at 0 again)."""

    def __init__(self, receiver: WsParticipant, sender_id: str, kind: str = "video") -> None:
        self.receiver, self.sender_id, self.kind = receiver, sender_id, kind
        self.changes: list[tuple[float, int]] = []
        self._task = asyncio.ensure_future(self._run())

    def count(self) -> int:
        assert self.receiver.client is not None
        return self.receiver.client.frames_from(self.sender_id, self.kind)

    async def _run(self) -> None:
        last = -1
        for _ in range(5000):  # bounded: 100 s
            count = self.count()
            if count > last:
                self.changes.append((time.monotonic(), count))
            last = count
            await asyncio.sleep(0.02)

    def first_frame_after(self, t: float) -> float | None:
        return next((at for at, _ in self.changes if at > t), None)

    def longest_gap(self, start: float) -> float:
        times = [at for at, _ in self.changes if at >= start]
        return max((b - a for a, b in zip(times, times[1:], strict=False)), default=0.0)

    def stop(self) -> None:
        self._task.cancel()



async def video_grows(receiver: WsParticipant, sender: WsParticipant, count: int) -> bool:
    """Whether ``receiver`` gets 15 more of ``sender``'s video frames than ``count`` (20 s)."""
    return await wait_for(
        lambda: (
            receiver.client is not None
            and receiver.client.frames_from(sender.id, "video") >= count + 15
        ),
        timeout=20,
    )

async def three_party_call(
    service: Service, agent_class: type[ReconnectingParticipant] = ReconnectingParticipant
) -> tuple[ReconnectingParticipant, WsParticipant, WsParticipant]:
    session = await service.create_session()
    third_url = await service.invite(session["session_id"], "customer")
    agent = agent_class(service.base_url, session["agent_url"], "Ann")
    customer = WsParticipant(service.base_url, session["customer_url"], "Carl")
    third = WsParticipant(service.base_url, third_url, "Tess")
    for p in (agent, customer, third):
        welcome = await p.join()
        assert welcome["type"] == "welcome", welcome
    for p in (agent, customer, third):
        await p.publish()
    ok = await wait_for(
        lambda: all(
            p.client is not None and p.client.frames_from(o.id, "video") >= 10
            for p in (agent, customer, third)
            for o in (agent, customer, third)
            if o is not p
        ),
        timeout=40,
    )
    assert ok, "the three-party call never carried video everywhere"
    return agent, customer, third


def offers(p: WsParticipant) -> int:
    return sum(1 for m in p.messages if m["type"] == "offer")


def churn(p: WsParticipant) -> list[dict[str, Any]]:
    return [m for m in p.messages if m["type"] in ("participant_left", "participant_joined")]


async def test_a_dropped_network_gets_only_its_dead_legs_rebuilt_and_media_back_without_renegotiating_the_others(
    service: Service,
) -> None:
    agent, customer, third = await three_party_call(service)
    clocks: list[FrameClock] = []
    try:
        assert agent.client is not None and customer.client is not None
        before = {p.name: (offers(p), len(churn(p))) for p in (customer, third)}
        session = service.app[SESSIONS].get(agent.welcome["session_id"])  # type: ignore[index]
        clocks = [
            FrameClock(customer, agent.id),
            FrameClock(agent, customer.id),
            FrameClock(third, customer.id),
        ]
        dropped_at = time.monotonic()
        agent.network.down(agent.client.pub, agent.client.sub)
        # the first reconnect holds the socket's reader until the network is back (as TCP would)
        assert await wait_for(lambda: len(agent.asked) >= 1, timeout=DETECT_TIMEOUT)
        detected = agent.asked[0][0] - dropped_at
        await asyncio.sleep(max(0.0, 12.0 - detected))  # the network stays down 12 s in all
        restored_at = time.monotonic()
        agent.network.up()
        back = await wait_for(
            lambda: (
                clocks[0].first_frame_after(restored_at) is not None
                and clocks[1].first_frame_after(restored_at) is not None
            ),
            timeout=20,
        )
        assert back, ("media did not come back after the network returned", agent.asked)
        assert sorted(leg for _, leg in agent.asked) == ["publish", "subscribe"]
        gaps = {
            "customer <- agent": clocks[0].first_frame_after(restored_at) - restored_at,  # type: ignore[operator]
            "agent <- customer": clocks[1].first_frame_after(restored_at) - restored_at,  # type: ignore[operator]
        }
        print(f"\ndead legs noticed after {detected:.1f} s; media back after {gaps}")
        # the third participant's media from the customer never paused
        third_gap = clocks[2].longest_gap(dropped_at)
        print(f"third participant's longest gap (customer's video): {third_gap:.2f} s")
        assert third_gap < 2.0
        # nobody else renegotiated or saw the agent leave and come back
        after = {p.name: (offers(p), len(churn(p))) for p in (customer, third)}
        assert after == before
        assert [p.id for p in session.connected()] == [agent.id, customer.id, third.id]
        assert sorted(agent.rebuilt) == ["publish", "subscribe"]
        assert not [m for m in agent.errors() if m.get("code") == "media_failed"]
    finally:
        for clock in clocks:
            clock.stop()
        for p in (agent, customer, third):
            await p.close()


async def test_a_leg_that_the_page_reports_dead_is_rebuilt_alone(service: Service) -> None:
    agent, customer, third = await three_party_call(service)
    try:
        assert agent.client is not None
        before = offers(customer), offers(third)
        count = agent.client.frames_from(customer.id, "video")
        await agent.send({"type": "reconnect", "pc": "subscribe"})
        await agent.wait_message(lambda m: m["type"] == "reconnect" and m["pc"] == "subscribe")
        assert await video_grows(agent, customer, count), "no video on the rebuilt subscribe leg"
        assert (offers(customer), offers(third)) == before
        assert agent.rebuilt == ["subscribe"]
    finally:
        for p in (agent, customer, third):
            await p.close()


async def test_a_page_that_lost_its_socket_and_its_media_resumes_without_anyone_noticing(
    service: Service,
) -> None:
    agent, customer, third = await three_party_call(service)
    try:
        assert agent.client is not None and customer.client is not None
        before = {p.name: (offers(p), len(churn(p))) for p in (customer, third)}
        session = service.app[SESSIONS].get(agent.welcome["session_id"])  # type: ignore[index]
        count = customer.client.frames_from(agent.id, "video")
        # the whole network goes: media and the WebSocket (the TCP connection is cut)
        agent.network.down(agent.client.pub, agent.client.sub)
        transport = agent._ws._response.connection.transport  # type: ignore[union-attr]
        transport.abort()
        await agent.closed.wait()
        await asyncio.sleep(3)  # a few seconds away, within the relay's resume grace
        agent.network.up()
        agent.closed.clear()
        after_index = len(agent.messages)
        await agent.connect()
        await agent.send({"type": "join", "token": agent.token, "name": agent.name, "resume": True})
        welcome = await agent.wait_message(lambda m: m["type"] == "welcome", after=after_index)
        assert welcome.get("resumed") is True
        assert await wait_for(
            lambda: (
                customer.client is not None
                and customer.client.frames_from(agent.id, "video") >= count + 15
            ),
            timeout=30,
        ), ("no video from the resumed participant", agent.asked)
        after = {p.name: (offers(p), len(churn(p))) for p in (customer, third)}
        assert after == before
        assert [p.id for p in session.connected()] == [agent.id, customer.id, third.id]
    finally:
        for p in (agent, customer, third):
            await p.close()

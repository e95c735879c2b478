"""The signaling state machine (``signaling.sessions.Session``) alone: no event loop, no socket.

The session's coroutines are driven by hand (:func:`drive`): each must finish without waiting
for anything. The media plane is replaced at its border, the three calls a session makes to its
router (``add_peer``, ``close``) and to a peer (offer, answer, close); the real router is
exercised end to end in test_ws.py and test_media.py. ``end()`` gathers the closes of every
socket, so its tests alone run one plain event loop (still no socket).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, cast

import pytest

from parley.relay import RelayError
from parley.signaling import tokens
from parley.signaling.errors import Forbidden, SessionEnded, SessionFull, SignalingError
from parley.signaling.messages import Answer, Offer
from parley.signaling.sessions import (
    CLOSE_REPLACED,
    CLOSE_SESSION_ENDED,
    Participant,
    Session,
)

KEY = b"0123456789abcdef0123456789abcdef"


def drive(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine that must complete without suspending (there is no loop to resume it)."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    coro.close()
    raise AssertionError("the coroutine waited for something")


class FakeConnection:
    """A participant's socket: records what the session sends and how it closes it."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.closed: tuple[int, str] | None = None

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)

    async def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)

    def types(self) -> list[str]:
        return [m["type"] for m in self.sent]


class FakePeer:
    def __init__(self, peer_id: str, send_offer: Callable[..., Any]) -> None:
        self.id = peer_id
        self.send_offer = send_offer
        self.closed = False
        self.offers: list[tuple[str, dict[str, str]]] = []
        self.answers: list[str] = []
        self.refuse: RelayError | None = None
        self.producers: list[Any] = []

    def rebuilding(self, leg: str) -> bool:
        return False

    async def handle_publish_offer(self, sdp: str, sources: dict[str, str]) -> str:
        if self.refuse is not None:
            raise self.refuse
        self.offers.append((sdp, sources))
        return "v=0 answer"

    async def handle_subscribe_answer(self, sdp: str) -> None:
        if self.refuse is not None:
            raise self.refuse
        self.answers.append(sdp)

    async def close(self) -> None:
        self.closed = True


class FakeRouter:
    def __init__(self) -> None:
        self.peers: list[FakePeer] = []
        self.closed = False

    def add_peer(self, peer_id: str, send_offer: Any, on_failed: Any = None) -> FakePeer:
        peer = FakePeer(peer_id, send_offer)
        self.peers.append(peer)
        return peer

    async def close(self) -> None:
        self.closed = True


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make_session(max_participants: int = 2) -> tuple[Session, FakeRouter, Clock]:
    router, clock = FakeRouter(), Clock()
    session = Session(
        id="s_test",
        conversation_id="chat-1",
        created_at=clock.now,
        expires_at=clock.now + 3600,
        max_participants=max_participants,
        router=cast(Any, router),
        clock=clock,
    )
    return session, router, clock


def claims(role: str = "agent", name: str = "") -> tokens.JoinClaims:
    return tokens.mint(KEY, session_id="s_test", role=role, name=name, now=0, ttl=60)[1]


def welcome(participant: Participant) -> dict[str, Any]:
    return {"type": "welcome", "participant_id": participant.id}


def join(
    session: Session, c: tokens.JoinClaims, name: str = ""
) -> tuple[Participant, FakeConnection]:
    connection = FakeConnection()
    return drive(session.join(c, name, connection, welcome)), connection


def test_a_new_session_waits_then_is_active_while_someone_is_connected() -> None:
    session, router, clock = make_session()
    assert session.state == "waiting"
    agent, connection = join(session, claims("agent"), "Ann")
    assert session.state == "active"
    assert connection.types() == ["welcome"]
    assert agent.name == "Ann" and agent.role == "agent" and agent.joins == 1
    assert router.peers[0].id == agent.id and agent.peer is cast(Any, router.peers[0])
    clock.now += 5
    drive(session.leave(agent, cast(Any, connection)))
    assert session.state == "waiting"
    assert router.peers[0].closed
    assert agent.left_at == clock.now


def test_the_name_falls_back_to_the_token_then_to_the_role() -> None:
    session, _, _ = make_session(3)
    named, _ = join(session, claims("agent", name="Token Name"))
    anonymous, _ = join(session, claims("customer"))
    assert named.name == "Token Name"
    assert anonymous.name == "Customer"


def test_others_hear_who_joined_and_who_left_but_not_themselves() -> None:
    session, _, _ = make_session()
    agent, agent_conn = join(session, claims("agent"), "Ann")
    customer, customer_conn = join(session, claims("customer"), "Carl")
    assert agent_conn.types() == ["welcome", "participant_joined"]
    assert agent_conn.sent[1]["participant"]["participant_id"] == customer.id
    assert customer_conn.types() == ["welcome"]
    drive(session.leave(customer, cast(Any, customer_conn)))
    assert agent_conn.sent[-1] == {"type": "participant_left", "participant_id": customer.id}
    assert customer_conn.types() == ["welcome"]
    assert session.state == "active"


def test_a_full_session_refuses_another_participant_and_keeps_the_others() -> None:
    session, router, _ = make_session(max_participants=2)
    join(session, claims("agent"))
    join(session, claims("customer"))
    with pytest.raises(SessionFull, match=r"the session is full \(2 participants\)"):
        join(session, claims("customer"))
    assert len(session.connected()) == 2
    assert len(router.peers) == 2


def test_joining_again_with_the_same_token_replaces_the_old_connection() -> None:
    session, router, clock = make_session(max_participants=2)
    same = claims("customer")
    join(session, claims("agent"))
    first, old = join(session, same, "Carl")
    joined_at = first.joined_at
    clock.now += 10
    again, new = join(session, same)  # a reload: the session is full, but this is the same slot
    assert again is first and again.joins == 2
    assert old.closed == (CLOSE_REPLACED, "replaced by a new connection")
    assert router.peers[1].closed and not router.peers[2].closed
    assert again.connection is cast(Any, new)
    assert again.joined_at == joined_at  # never left: the same stay
    assert again.name == "Carl"
    # the replaced socket's late "closed" event changes nothing
    drive(session.leave(again, cast(Any, old)))
    assert again.connected and again.left_at is None


def test_a_rejoin_after_leaving_starts_a_new_stay() -> None:
    session, _, clock = make_session()
    c = claims("customer")
    participant, connection = join(session, c)
    clock.now += 10
    drive(session.leave(participant, cast(Any, connection)))
    clock.now += 10
    again, _ = join(session, c)
    assert again is participant
    assert again.joined_at == clock.now and again.left_at is None


def test_offers_and_answers_go_to_the_participants_peer() -> None:
    session, router, _ = make_session()
    agent, _ = join(session, claims("agent"))
    reply = drive(session.handle_offer(agent, Offer("publish", "v=0 offer", {"0": "camera"})))
    assert reply == {"type": "answer", "pc": "publish", "sdp": "v=0 answer"}
    assert router.peers[0].offers == [("v=0 offer", {"0": "camera"})]
    drive(session.handle_answer(agent, Answer("subscribe", "v=0 sub")))
    assert router.peers[0].answers == ["v=0 sub"]


def test_a_relay_error_becomes_a_signaling_error_with_its_code() -> None:
    session, router, _ = make_session()
    agent, _ = join(session, claims("agent"))
    refused = RelayError("no usable media")
    refused.code = "invalid_sdp"
    router.peers[0].refuse = refused
    with pytest.raises(SignalingError) as error:
        drive(session.handle_offer(agent, Offer("publish", "v=0", {})))
    assert error.value.code == "invalid_sdp" and error.value.message == "no usable media"


def test_media_messages_from_a_participant_who_left_are_refused() -> None:
    session, _, _ = make_session()
    agent, connection = join(session, claims("agent"))
    drive(session.leave(agent, cast(Any, connection)))
    with pytest.raises(SignalingError) as error:
        drive(session.handle_offer(agent, Offer("publish", "v=0", {})))
    assert error.value.code == "not_joined"


def test_only_an_agent_can_end_the_session() -> None:
    session, _, _ = make_session()
    customer, _ = join(session, claims("customer"))
    with pytest.raises(Forbidden):
        drive(session.handle_end(customer))
    assert session.ended_at is None


def test_to_json_lists_only_participants_who_joined() -> None:
    session, _, _ = make_session()
    agent, _ = join(session, claims("agent"), "Ann")
    document = session.to_json()
    assert document["state"] == "active"
    assert document["created_at"] == "2023-11-14T22:13:20.000Z"
    assert [p["participant_id"] for p in document["participants"]] == [agent.id]
    assert document["participants"][0]["left_at"] is None


def test_ending_tells_everyone_closes_every_socket_and_the_router() -> None:
    session, router, clock = make_session()
    agent, agent_conn = join(session, claims("agent"))
    customer, customer_conn = join(session, claims("customer"))
    clock.now += 30
    asyncio.run(session.end("ended_by_agent"))
    for participant, connection in ((agent, agent_conn), (customer, customer_conn)):
        assert connection.sent[-1] == {"type": "session_ended", "reason": "ended_by_agent"}
        assert connection.closed == (CLOSE_SESSION_ENDED, "session ended")
        assert participant.left_at == clock.now
    assert all(peer.closed for peer in router.peers) and router.closed
    assert session.state == "ended" and session.end_reason == "ended_by_agent"
    with pytest.raises(SessionEnded):
        join(session, claims("customer"))
    asyncio.run(session.end("again"))  # idempotent
    assert session.end_reason == "ended_by_agent"


def test_ending_copes_with_a_participant_leaving_meanwhile() -> None:
    """A DELETE answered 500 (an assert) when a socket closed while the session was telling an
    earlier participant it ended (seen in `parley bench --soak`: sessions ended while churning)."""
    session, router, _ = make_session(3)
    agent, agent_conn = join(session, claims("agent"))
    customer, customer_conn = join(session, claims("customer"))

    class LeavesOthers(FakeConnection):
        async def send(self, message: dict[str, Any]) -> None:
            await super().send(message)
            if message["type"] == "session_ended":  # the customer's socket closes meanwhile
                await session.leave(customer, customer_conn)

    agent.connection = agent_conn = LeavesOthers()
    asyncio.run(session.end("ended_by_api"))
    assert agent_conn.closed == (CLOSE_SESSION_ENDED, "session ended")
    assert customer.left_at is not None and customer.connection is None
    assert session.state == "ended" and router.closed

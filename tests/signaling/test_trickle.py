"""Trickle ICE from the participant (issue 12: a rebuilt leg must not wait for ICE gathering).

The page sends its offer (publish) or answer (subscribe) at once, without candidates, and then
each candidate in a ``candidate`` message, then ``candidate: null`` (end-of-candidates). Real
aiortc participants through the real service; their SDP has its candidates taken out and sent
that way, so the relay must take them from the messages."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from parley.signaling import messages
from parley.signaling.errors import BadRequest
from parley.signaling.keys import SESSIONS
from tests.media_client import wait_for
from tests.signaling.conftest import Service
from tests.signaling.ws_client import WsParticipant


def untrickled(sdp: str) -> tuple[str, list[str], str]:
    """The SDP without its candidates, the candidate lines (``candidate:...``), the ufrag."""
    lines = sdp.replace("\r\n", "\n").strip().split("\n")
    candidates = [line[2:] for line in lines if line.startswith("a=candidate:")]
    ufrag = next(line.split(":", 1)[1] for line in lines if line.startswith("a=ice-ufrag:"))
    kept = [line for line in lines if not line.startswith(("a=candidate:", "a=end-of-candidates"))]
    return "\r\n".join(kept) + "\r\n", candidates, ufrag


class TricklingParticipant(WsParticipant):
    """Offers and answers without candidates and trickles them afterwards, as the page does."""

    async def trickle(self, pc: str, candidates: list[str], ufrag: str) -> None:
        for line in candidates:
            await self.send(
                {
                    "type": "candidate",
                    "pc": pc,
                    "candidate": {
                        "candidate": line,
                        "sdpMid": "0",
                        "sdpMLineIndex": 0,
                        "usernameFragment": ufrag,
                    },
                }
            )
        await self.send({"type": "candidate", "pc": pc, "candidate": None})

    async def publish(self, timeout: float = 20) -> None:  # noqa: ASYNC109
        assert self.client is not None
        sdp, sources = await self.client.publish_offer()
        bare, candidates, ufrag = untrickled(sdp)
        assert candidates and "a=candidate" not in bare
        answer = await self.send_publish_offer(bare, sources, timeout)
        await self.trickle("publish", candidates, ufrag)
        await self.client.apply_publish_answer(answer)

    async def on_subscribe_offer(self, message: dict[str, Any]) -> str | None:
        if self.client is None:
            return None
        sdp = await self.client.answer_subscribe_offer(message["sdp"], message["tracks"])
        bare, candidates, ufrag = untrickled(sdp)
        await self.send({"type": "answer", "pc": "subscribe", "sdp": bare})
        await self.trickle("subscribe", candidates, ufrag)
        return None


@dataclasses.dataclass
class Joined:
    session: dict[str, Any]
    ann: TricklingParticipant
    """The agent, who trickles its candidates."""
    carl: WsParticipant
    """The customer, with candidates in its SDP."""

    def ann_peer(self, service: Service) -> Any:
        return service.app[SESSIONS].get(self.session["session_id"]).participants[self.ann.id].peer


@pytest.fixture
async def joined(service: Service) -> AsyncIterator[Joined]:
    """A session both have joined (no media yet); they leave at the end."""
    session = await service.create_session()
    ann = TricklingParticipant(service.base_url, session["agent_url"], "Ann")
    carl = WsParticipant(service.base_url, session["customer_url"], "Carl")
    try:
        for p in (ann, carl):
            assert (await p.join())["type"] == "welcome"
        yield Joined(session, ann, carl)
    finally:
        for p in (ann, carl):
            await p.close()


def remote_candidate_types(pc: Any) -> list[str]:
    transport = pc.getTransceivers()[0].receiver.transport.transport
    return [c.type for c in transport.getRemoteCandidates()]


async def test_a_participant_that_trickles_its_candidates_sends_and_receives_media(
    service: Service, joined: Joined
) -> None:
    ann, carl = joined.ann, joined.carl
    await ann.publish()
    await carl.publish()
    assert await wait_for(
        lambda: (
            ann.client is not None
            and carl.client is not None
            and carl.client.frames_from(ann.id, "video") >= 10
            and ann.client.frames_from(carl.id, "video") >= 10
            and ann.client.frames_from(carl.id, "audio") >= 10
        ),
        timeout=30,
    ), "no media both ways with trickled candidates"
    peer = joined.ann_peer(service)
    assert peer.publish.candidates.added >= 1 and peer.subscribe.candidates.added >= 1
    # the relay's ICE agents know the trickled host candidates (not only peer-reflexive)
    assert "host" in remote_candidate_types(peer.publish.pc)
    assert "host" in remote_candidate_types(peer.subscribe.pc)
    assert not ann.errors()


async def test_a_malformed_or_stale_candidate_is_refused_and_the_call_carries_on(
    service: Service, joined: Joined
) -> None:
    ann, carl = joined.ann, joined.carl
    await ann.publish()
    peer = joined.ann_peer(service)
    added = peer.publish.candidates.added
    for bad in (
        "candidate:garbage",
        "candidate:1 1 udp 2122260223 not-an-address 5000 typ host",
        "candidate:1 1 udp 2122260223 10.0.0.1 99999 typ host",
        "candidate:1 1 udp 2122260223 10.0.0.1 5000 typ nonsense",
        "x" * 5000,
    ):
        mark = len(ann.messages)
        await ann.send({"type": "candidate", "pc": "publish", "candidate": {"candidate": bad}})
        error = await ann.wait_message(lambda m: m["type"] == "error", after=mark)
        assert error["code"] in ("invalid_candidate", "bad_request"), error
    for bad_message in (
        {"type": "candidate", "pc": "sideways", "candidate": None},
        {
            "type": "candidate",
            "pc": "publish",
            "candidate": "candidate:1 1 udp 1 1.2.3.4 5 typ host",
        },
    ):
        mark = len(ann.messages)
        await ann.send(bad_message)
        error = await ann.wait_message(lambda m: m["type"] == "error", after=mark)
        assert error["code"] == "bad_request", error
    # a candidate of another ICE generation (a replaced leg): quietly ignored
    mark = len(ann.messages)
    await ann.send(
        {
            "type": "candidate",
            "pc": "publish",
            "candidate": {
                "candidate": "candidate:1 1 udp 2122260223 127.0.0.1 5000 typ host",
                "usernameFragment": "someoneelse",
            },
        }
    )
    # a barrier: the next message's error comes after the stale candidate was handled
    await ann.send({"type": "candidate", "pc": "sideways", "candidate": None})
    await ann.wait_message(lambda m: m["type"] == "error", after=mark)
    assert [m["code"] for m in ann.messages[mark:] if m["type"] == "error"] == ["bad_request"]
    assert peer.publish.candidates.added == added
    await carl.publish()
    assert await wait_for(
        lambda: carl.client is not None and carl.client.frames_from(ann.id, "video") >= 10,
        timeout=30,
    ), "the call did not carry on"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=20), inner, max_size=4)
    ),
    max_leaves=8,
)


@given(
    pc=json_values | st.sampled_from(["publish", "subscribe"]),
    candidate=json_values
    | st.fixed_dictionaries(
        {"candidate": json_values | st.text(max_size=200)},
        optional={"usernameFragment": json_values, "sdpMid": json_values},
    ),
)
def test_any_candidate_message_parses_or_is_a_bad_request(pc: Any, candidate: Any) -> None:
    text = json.dumps({"type": "candidate", "pc": pc, "candidate": candidate})
    try:
        message = messages.parse(text)
    except BadRequest:
        return
    assert isinstance(message, messages.Candidate)
    assert message.pc in ("publish", "subscribe")
    assert message.candidate is None or isinstance(message.candidate, str)

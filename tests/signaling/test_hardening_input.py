"""Hostile signaling input gets a clear error, never a traceback, and never wedges a participant
(issue 12): deep JSON nesting, lone surrogates in tokens, SDP that aiortc cannot apply."""

from __future__ import annotations

import logging
import re

import pytest

from parley.signaling import messages, tokens
from parley.signaling.errors import InvalidJson, InvalidToken
from tests.signaling.conftest import Service
from tests.signaling.test_media import assert_two_way_media
from tests.signaling.ws_client import WsParticipant

SECRET = b"0123456789abcdef0123456789abcdef"


def test_deeply_nested_json_is_invalid_json() -> None:
    with pytest.raises(InvalidJson):
        messages.parse("[" * 100000)
    with pytest.raises(InvalidJson):
        messages.parse('{"type": ' + "[" * 50000 + "]" * 50000 + "}")


@pytest.mark.parametrize(
    "token",
    ["\ud800", "a.\udfff.b", "eyJ0eXAiOiJKV1QifQ.\ud83d.x", "x" * 5000, "\x00.\x00.\x00"],
)
def test_tokens_with_lone_surrogates_or_junk_are_invalid_tokens(token: str) -> None:
    with pytest.raises(InvalidToken):
        tokens.verify(SECRET, token, now=0)


async def test_hostile_frames_get_clear_errors_and_no_traceback(
    service: Service, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    session = await service.create_session()
    p = WsParticipant(service.base_url, session["agent_url"], "Ann")
    await p.connect()
    try:
        await p.send("[" * 100000)
        await p.wait_message(lambda m: len(p.errors()) >= 1)
        await p.send({"type": "join", "token": "\ud800.\udc00.x"})
        await p.wait_message(lambda m: len(p.errors()) >= 2)
        assert [e["code"] for e in p.errors()] == ["invalid_json", "invalid_token"]
        assert (await p.join(media=False))["type"] == "welcome"
    finally:
        await p.close()
    tracebacks = [r for r in caplog.records if r.exc_info and r.levelno >= logging.WARNING]
    assert not tracebacks, [r.getMessage() for r in tracebacks]
    assert "Traceback" not in caplog.text


def _duplicate_mid(sdp: str) -> str:
    mids = re.findall(r"a=mid:(\S+)", sdp)
    assert len(mids) >= 2, sdp
    first, second = mids[0], mids[1]
    sdp = sdp.replace(f"a=mid:{second}\r\n", f"a=mid:{first}\r\n")
    return re.sub(r"a=group:BUNDLE .*\r\n", f"a=group:BUNDLE {first} {first}\r\n", sdp)


def _no_direction(sdp: str) -> str:
    return re.sub(r"a=(sendrecv|sendonly|recvonly|inactive)\r\n", "", sdp)


async def _call(service: Service) -> tuple[WsParticipant, WsParticipant]:
    session = await service.create_session()
    agent = WsParticipant(service.base_url, session["agent_url"], "Ann")
    customer = WsParticipant(service.base_url, session["customer_url"], "Carl")
    for p in (agent, customer):
        assert (await p.join())["type"] == "welcome"
    return agent, customer


async def test_offer_with_a_shared_mid_is_refused_and_the_next_offer_works(
    service: Service, caplog: pytest.LogCaptureFixture
) -> None:
    agent, customer = await _call(service)
    try:
        assert agent.client is not None
        sdp, sources = await agent.client.publish_offer()
        await agent.send(
            {"type": "offer", "pc": "publish", "sdp": _duplicate_mid(sdp), "sources": sources}
        )
        error = await agent.wait_message(lambda m: m["type"] == "error")
        assert error["code"] == "invalid_sdp", error
        assert "mid" in error["message"]
        # the publish connection is not wedged: the real offer is answered and media flows
        await agent.publish()
        await customer.publish()
        await assert_two_way_media(agent, customer)
    finally:
        await agent.close()
        await customer.close()
    assert "internal_error" not in caplog.text
    assert not [r for r in caplog.records if r.exc_info and r.levelno >= logging.WARNING]


async def test_offer_without_direction_attributes_is_sendrecv_and_media_flows(
    service: Service,
) -> None:
    agent, customer = await _call(service)
    try:
        assert agent.client is not None
        sdp, sources = await agent.client.publish_offer()
        answers = len(agent.messages)
        await agent.send(
            {"type": "offer", "pc": "publish", "sdp": _no_direction(sdp), "sources": sources}
        )
        reply = await agent.wait_message(lambda m: m["type"] in ("answer", "error"), after=answers)
        assert reply["type"] == "answer", reply
        await agent.client.apply_publish_answer(reply["sdp"])
        await customer.publish()
        await assert_two_way_media(agent, customer)
    finally:
        await agent.close()
        await customer.close()

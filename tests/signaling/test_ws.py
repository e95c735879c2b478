"""WebSocket signaling: joining, bad input, membership, ending, rejoining."""

from __future__ import annotations

import time

import jwt

from parley.signaling import tokens
from tests.signaling.conftest import Service
from tests.signaling.ws_client import WsParticipant

SECRET = b"0123456789abcdef0123456789abcdef"


async def joined(service: Service, url: str, name: str) -> WsParticipant:
    participant = WsParticipant(service.base_url, url, name)
    welcome = await participant.join(media=False)
    assert welcome["type"] == "welcome", welcome
    return participant


async def test_welcome_carries_identity_ice_servers_and_policy(service: Service) -> None:
    session = await service.create_session()
    agent = await joined(service, session["agent_url"], "Ann")
    try:
        welcome = agent.welcome
        assert welcome is not None
        assert welcome["session_id"] == session["session_id"]
        assert welcome["role"] == "agent"
        assert welcome["ice_transport_policy"] == "all"
        [server] = welcome["ice_servers"]
        assert any(u.endswith("?transport=tcp") for u in server["urls"])
        assert any(u.endswith("?transport=udp") for u in server["urls"])
        expiry, _, user = server["username"].partition(":")
        assert int(expiry) > time.time() and user == agent.id
        assert server["credential"]
        assert [p["participant_id"] for p in welcome["participants"]] == [agent.id]
    finally:
        await agent.close()


async def test_bad_expired_and_forged_tokens_are_refused_and_socket_stays_usable(
    service: Service,
) -> None:
    session = await service.create_session()
    p = WsParticipant(service.base_url, session["agent_url"], "Ann")
    await p.connect()
    try:
        await p.send({"type": "join", "token": "not-a-token", "name": "x"})
        error = await p.wait_message(lambda m: m["type"] == "error")
        assert error["code"] == "invalid_token"

        expired, _ = tokens.mint(
            SECRET,
            session_id=session["session_id"],
            role="agent",
            name="",
            now=time.time() - 7200,
            ttl=60,
        )
        await p.send({"type": "join", "token": expired, "name": "x"})
        error = await p.wait_message(lambda m: m["type"] == "error" and m is not error)
        assert error["code"] == "token_expired"

        forged = jwt.encode(
            {
                "sid": session["session_id"],
                "pid": "p_x",
                "role": "agent",
                "aud": "parley-join",
                "exp": int(time.time()) + 600,
            },
            b"some-other-key-0123456789abcdef!",
            algorithm="HS256",
        )
        await p.send({"type": "join", "token": forged, "name": "x"})
        await p.wait_message(lambda m: len(p.errors()) >= 3)
        assert p.errors()[-1]["code"] == "invalid_token"

        # the same socket can still join with a good token
        welcome = await p.join(media=False)
        assert welcome["type"] == "welcome"
    finally:
        await p.close()


async def test_malformed_messages_get_error_codes(service: Service) -> None:
    session = await service.create_session()
    p = WsParticipant(service.base_url, session["agent_url"], "Ann")
    await p.connect()
    try:
        await p.send("{this is not json")
        await p.wait_message(lambda m: len(p.errors()) >= 1)
        await p.send({"type": "offer", "pc": "publish", "sdp": "v=0"})
        await p.wait_message(lambda m: len(p.errors()) >= 2)
        await p.join(media=False)
        await p.send({"type": "dance"})
        await p.wait_message(lambda m: len(p.errors()) >= 3)
        await p.send({"type": "offer", "pc": "publish", "sdp": "this is not sdp"})
        await p.wait_message(lambda m: len(p.errors()) >= 4)
        no_media = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n"
        await p.send({"type": "offer", "pc": "publish", "sdp": no_media})
        await p.wait_message(lambda m: len(p.errors()) >= 5)
        await p.send({"type": "answer", "pc": "subscribe", "sdp": no_media})
        await p.wait_message(lambda m: len(p.errors()) >= 6)
        codes = [e["code"] for e in p.errors()]
        assert codes == [
            "invalid_json",
            "not_joined",
            "unknown_message_type",
            "invalid_sdp",
            "no_media",
            "negotiation_error",
        ]
        # still joined and usable: the customer sees the agent
        customer = await joined(service, session["customer_url"], "Carl")
        assert [x["role"] for x in customer.welcome["participants"]] == ["agent", "customer"]  # type: ignore[index]
        await customer.close()
    finally:
        await p.close()


async def test_full_session_refuses_another_participant(service: Service) -> None:
    session = await service.create_session(max_participants=2)
    agent = await joined(service, session["agent_url"], "Ann")
    customer = await joined(service, session["customer_url"], "Carl")
    extra_url = await service.invite(session["session_id"], "agent", "Sue")
    extra = WsParticipant(service.base_url, extra_url, "Sue")
    try:
        welcome = await extra.join(media=False)
        assert welcome["type"] == "error" and welcome["code"] == "session_full"
        # a reload of a participant already in does not count twice
        again = WsParticipant(service.base_url, session["customer_url"], "Carl")
        assert (await again.join(media=False))["type"] == "welcome"
        await again.close()
    finally:
        for p in (agent, customer, extra):
            await p.close()


async def test_participant_that_vanishes_is_cleaned_up_and_others_told(service: Service) -> None:
    session = await service.create_session()
    agent = await joined(service, session["agent_url"], "Ann")
    customer = await joined(service, session["customer_url"], "Carl")
    try:
        joined_msg = await agent.wait_message(lambda m: m["type"] == "participant_joined")
        assert joined_msg["participant"]["name"] == "Carl"
        await customer.drop()
        left = await agent.wait_message(lambda m: m["type"] == "participant_left", timeout=30)
        assert left["participant_id"] == customer.id
        async with service.http.get(
            f"{service.base_url}/api/v1/sessions/{session['session_id']}", headers=service.auth()
        ) as response:
            body = await response.json()
        carl = next(p for p in body["participants"] if p["role"] == "customer")
        assert carl["left_at"] is not None
        assert body["state"] == "active"
    finally:
        await agent.close()


async def test_leave_and_rejoin_with_the_same_token(service: Service) -> None:
    session = await service.create_session()
    agent = await joined(service, session["agent_url"], "Ann")
    customer = await joined(service, session["customer_url"], "Carl")
    try:
        await customer.send({"type": "leave"})
        await agent.wait_message(lambda m: m["type"] == "participant_left")
        await customer.closed.wait()
        back = await joined(service, session["customer_url"], "Carl")
        assert back.id == customer.id
        await agent.wait_message(
            lambda m: (
                m["type"] == "participant_joined"
                and len([x for x in agent.messages if x["type"] == "participant_joined"]) == 2
            )
        )
        await back.close()
    finally:
        await agent.close()
        await customer.close()


async def test_rejoin_replaces_the_old_connection(service: Service) -> None:
    session = await service.create_session()
    first = await joined(service, session["agent_url"], "Ann")
    second = await joined(service, session["agent_url"], "Ann")
    try:
        await first.closed.wait()
        assert first.close_code == 4000
        assert second.id == first.id
        async with service.http.get(
            f"{service.base_url}/api/v1/sessions/{session['session_id']}", headers=service.auth()
        ) as response:
            body = await response.json()
        assert len(body["participants"]) == 1 and body["participants"][0]["left_at"] is None
    finally:
        await first.close()
        await second.close()


async def test_only_agents_can_end_and_end_reaches_everyone(service: Service) -> None:
    session = await service.create_session()
    agent = await joined(service, session["agent_url"], "Ann")
    customer = await joined(service, session["customer_url"], "Carl")
    try:
        await customer.send({"type": "end"})
        error = await customer.wait_message(lambda m: m["type"] == "error")
        assert error["code"] == "forbidden"
        await agent.send({"type": "end"})
        for p in (agent, customer):
            ended = await p.wait_message(lambda m: m["type"] == "session_ended")
            assert ended["reason"] == "ended_by_agent"
            await p.closed.wait()
        again = WsParticipant(service.base_url, session["customer_url"], "Carl")
        assert (await again.join(media=False))["code"] == "session_ended"
        await again.close()
    finally:
        await agent.close()
        await customer.close()


async def test_delete_sends_session_ended_and_disconnects(service: Service) -> None:
    session = await service.create_session()
    agent = await joined(service, session["agent_url"], "Ann")
    try:
        async with service.http.delete(
            f"{service.base_url}/api/v1/sessions/{session['session_id']}", headers=service.auth()
        ) as response:
            assert response.status == 204
        ended = await agent.wait_message(lambda m: m["type"] == "session_ended")
        assert ended["reason"] == "ended_by_api"
        await agent.closed.wait()
    finally:
        await agent.close()


async def test_one_bad_client_does_not_disturb_another_session(service: Service) -> None:
    good = await service.create_session("good")
    bad = await service.create_session("bad")
    agent = await joined(service, good["agent_url"], "Ann")
    vandal = WsParticipant(service.base_url, bad["agent_url"], "V")
    await vandal.join(media=False)
    try:
        for junk in ("", "[]", "null", '{"type": 5}', "x" * 300_000):
            await vandal.send(junk)
        await vandal.send({"type": "offer", "pc": "publish", "sdp": "m=video 9 RTP/AVP 0\r\n"})
        customer = await joined(service, good["customer_url"], "Carl")
        assert customer.welcome is not None
        await customer.close()
    finally:
        await agent.close()
        await vandal.close()


def test_ice_servers_carry_fixed_credentials_of_an_external_turn_service() -> None:
    from parley.signaling.app import ice_servers_factory
    from parley.signaling.config import TurnSettings
    from tests.signaling.conftest import make_config

    config = make_config(
        turn=TurnSettings(
            external_urls=("turns:turn.example.net:443?transport=tcp",),
            external_username="xirsys-user",
            external_credential="xirsys-pass",
        )
    )
    servers = ice_servers_factory(config, list(config.turn.external_urls))("p_1")
    assert servers == [
        {
            "urls": ["turns:turn.example.net:443?transport=tcp"],
            "username": "xirsys-user",
            "credential": "xirsys-pass",
        }
    ]
    # with only a shared secret: REST credentials that name the participant and expire
    config = make_config(turn=TurnSettings(external_urls=("turn:coturn:3478",), secret="s3cret"))
    [server] = ice_servers_factory(config, ["turn:coturn:3478"], clock=lambda: 1000.0)("p_2")
    assert server["username"] == f"{1000 + config.turn.credential_ttl}:p_2"
    assert server["credential"]

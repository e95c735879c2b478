"""Limits on a running service (issue 12): sockets that never join, rate limits with 429 and
``rate_limited``, size limits, a protected or separately bound ``/metrics``."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from parley.bench.signaling_client import ws_url
from parley.signaling import ws as ws_module
from parley.signaling.app import create_metrics_app
from parley.signaling.keys import SESSIONS, SOCKETS
from tests.signaling.conftest import Service, ServiceFactory
from tests.signaling.ws_client import WsParticipant


async def test_sockets_that_never_join_are_closed_and_joined_ones_stay(
    service_factory: ServiceFactory,
) -> None:
    service = await service_factory(join_timeout=0.5)
    session = await service.create_session()
    agent = WsParticipant(service.base_url, session["agent_url"], "Ann")
    assert (await agent.join(media=False))["type"] == "welcome"
    idle = [await service.http.ws_connect(ws_url(service.base_url)) for _ in range(20)]
    try:
        for ws in idle:
            msg = await asyncio.wait_for(ws.receive(), 10)
            assert msg.type == aiohttp.WSMsgType.CLOSE
            assert msg.data == 1008, msg
            assert "join" in str(msg.extra)
        await asyncio.sleep(0)
        assert not agent.closed.is_set()
        assert len(service.app[SOCKETS]) == 1  # only the joined one is tracked still
        # the joined socket still works
        await agent.send({"type": "dance"})
        error = await agent.wait_message(lambda m: m["type"] == "error")
        assert error["code"] == "unknown_message_type"
    finally:
        for ws in idle:
            await ws.close()
        await agent.close()


async def test_session_creation_is_rate_limited_per_api_key_with_retry_after(
    service_factory: ServiceFactory,
) -> None:
    service = await service_factory(sessions_per_minute=3)
    for _ in range(3):
        await service.create_session()
    async with service.http.post(
        f"{service.base_url}/api/v1/sessions",
        json={"conversation_id": "one-too-many"},
        headers=service.auth(),
    ) as response:
        assert response.status == 429
        assert 1 <= int(response.headers["Retry-After"]) <= 20
        body = await response.json()
        assert body["error"]["code"] == "rate_limited"
    async with service.http.get(f"{service.base_url}/metrics") as response:
        assert 'parley_rate_limited_total{limit="sessions"} 1.0' in await response.text()


async def test_join_attempts_are_rate_limited_per_client_address(
    service_factory: ServiceFactory,
) -> None:
    service = await service_factory(joins_per_minute=2)
    session = await service.create_session()
    p = WsParticipant(service.base_url, session["agent_url"], "Ann")
    await p.connect()
    try:
        for _ in range(2):
            await p.send({"type": "join", "token": "not-a-token"})
        await p.wait_message(lambda m: len(p.errors()) >= 2)
        refused = await p.join(media=False)  # even a good token: over the limit
        assert refused["type"] == "error" and refused["code"] == "rate_limited", refused
        assert refused["retry_after"] > 0
        assert [e["code"] for e in p.errors()] == ["invalid_token", "invalid_token", "rate_limited"]
    finally:
        await p.close()


async def test_join_limit_uses_forwarded_address_only_behind_a_trusted_proxy(
    service_factory: ServiceFactory,
) -> None:
    for trust, expected in ((True, "welcome"), (False, "error")):
        service = await service_factory(joins_per_minute=1, trust_proxy=trust)
        session = await service.create_session()
        codes = []
        for i, url in enumerate((session["agent_url"], session["customer_url"])):
            ws = await service.http.ws_connect(
                ws_url(service.base_url), headers={"X-Forwarded-For": f"198.51.100.{i + 1}"}
            )
            await ws.send_json({"type": "join", "token": url.rsplit("/", 1)[1]})
            reply = await ws.receive_json(timeout=10)
            codes.append(reply["type"])
            await ws.close()
        assert codes == ["welcome", expected], (trust, codes)


async def test_message_flood_is_throttled_and_the_participant_stays(
    service_factory: ServiceFactory,
) -> None:
    service = await service_factory(messages_per_second=2)
    session = await service.create_session()
    p = WsParticipant(service.base_url, session["agent_url"], "Ann")
    assert (await p.join(media=False))["type"] == "welcome"
    other = WsParticipant(service.base_url, session["customer_url"], "Carl")
    try:
        for _ in range(200):
            await p.send({"type": "dance"})
        limited = await p.wait_message(lambda m: m.get("code") == "rate_limited")
        assert limited["retry_after"] > 0
        await asyncio.sleep(0.2)
        # at most the burst (10) got answered, plus one rate_limited notice a second
        assert len(p.errors()) <= 13, len(p.errors())
        assert not p.closed.is_set()
        assert (await other.join(media=False))["type"] == "welcome"
        await p.wait_message(lambda m: m["type"] == "participant_joined")
    finally:
        await p.close()
        await other.close()


async def test_oversized_messages_sdp_and_bodies_are_refused(
    service_factory: ServiceFactory,
) -> None:
    service = await service_factory()
    session = await service.create_session()
    p = WsParticipant(service.base_url, session["agent_url"], "Ann")
    assert (await p.join(media=False))["type"] == "welcome"
    try:
        sdp = "v=0\r\n" + "a=x-junk\r\n" * 8000  # 80 KB: over the SDP limit, under the frame limit
        await p.send({"type": "offer", "pc": "publish", "sdp": sdp})
        error = await p.wait_message(lambda m: m["type"] == "error")
        assert error["code"] == "bad_request" and "longer than" in error["message"]
        await p.send("x" * (200 * 1024))  # over the frame limit: closed with 1009
        await asyncio.wait_for(p.closed.wait(), 10)
        assert p.close_code == 1009
    finally:
        await p.close()
    async with service.http.post(
        f"{service.base_url}/api/v1/sessions",
        data=b'{"conversation_id": "' + b"x" * (100 * 1024) + b'"}',
        headers={**service.auth(), "Content-Type": "application/json"},
    ) as response:
        assert response.status == 413
        assert (await response.json())["error"]["code"] == "message_too_large"
    async with service.http.post(
        f"{service.base_url}/api/v1/sessions",
        data=b"[" * 60000,
        headers={**service.auth(), "Content-Type": "application/json"},
    ) as response:
        assert response.status == 400
        assert (await response.json())["error"]["code"] == "invalid_json"
    name = "n" * 81
    async with service.http.post(
        f"{service.base_url}/api/v1/sessions/{session['session_id']}/invites",
        json={"role": "agent", "name": name},
        headers=service.auth(),
    ) as response:
        assert response.status == 400


async def test_metrics_token_protects_metrics(service_factory: ServiceFactory) -> None:
    service = await service_factory(metrics_token="m-secret")
    url = f"{service.base_url}/metrics"
    async with service.http.get(url) as response:
        assert response.status == 401
    async with service.http.get(url, headers={"Authorization": "Bearer wrong"}) as response:
        assert response.status == 401
    async with service.http.get(url, headers={"Authorization": "Bearer m-secret"}) as response:
        assert response.status == 200
        assert "parley_sessions" in await response.text()


async def test_metrics_on_a_separate_listener_are_not_on_the_api_port(
    service_factory: ServiceFactory,
) -> None:
    service = await service_factory(metrics_host="127.0.0.1", metrics_port=1)
    async with service.http.get(f"{service.base_url}/metrics") as response:
        assert response.status == 404
    metrics = TestServer(create_metrics_app(service.app), host="127.0.0.1", port=0)
    await metrics.start_server()
    try:
        await service.create_session()
        async with service.http.get(str(metrics.make_url("/metrics"))) as response:
            assert response.status == 200
            assert 'parley_sessions{state="waiting"} 1.0' in await response.text()
    finally:
        await metrics.close()


async def test_guessing_api_keys_is_rate_limited_per_address(service: Service) -> None:
    statuses = []
    for i in range(35):
        async with service.http.post(
            f"{service.base_url}/api/v1/sessions",
            json={"conversation_id": "guess"},
            headers={"Authorization": f"Bearer guess-{i}"},
        ) as response:
            statuses.append(response.status)
            if response.status == 429:
                assert response.headers["Retry-After"]
    assert statuses[:30] == [401] * 30 and set(statuses[30:]) == {429}
    await service.create_session()  # the right key still works


async def test_a_socket_that_stops_answering_pings_is_reaped(
    service_factory: ServiceFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ws_module, "HEARTBEAT", 0.4)
    service = await service_factory()
    session = await service.create_session()
    # a half-open client: joined, then never reads again (so never answers a ping)
    ws = await service.http.ws_connect(ws_url(service.base_url), autoping=False)
    await ws.send_json({"type": "join", "token": session["agent_url"].rsplit("/", 1)[1]})
    assert (await ws.receive_json(timeout=10))["type"] == "welcome"
    state = service.app[SESSIONS].get(session["session_id"])
    for _ in range(100):
        if not state.connected():
            break
        await asyncio.sleep(0.1)
    assert not state.connected()
    assert len(service.app[SOCKETS]) == 0
    await ws.close()


async def test_one_address_cannot_hold_many_sockets_that_never_join(service: Service) -> None:
    session = await service.create_session()
    idle = [await service.http.ws_connect(ws_url(service.base_url)) for _ in range(20)]
    try:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await service.http.ws_connect(ws_url(service.base_url))
        assert refused.value.status == 429
        # joining frees the slot: another socket may open
        await idle[0].send_json({"type": "join", "token": session["agent_url"].rsplit("/", 1)[1]})
        assert (await idle[0].receive_json(timeout=10))["type"] == "welcome"
        extra = await service.http.ws_connect(ws_url(service.base_url))
        await extra.close()
        # and closing one frees its slot too
        await idle[1].close()
        for _ in range(50):
            try:
                another = await service.http.ws_connect(ws_url(service.base_url))
                break
            except aiohttp.WSServerHandshakeError:
                await asyncio.sleep(0.05)
        await another.close()
    finally:
        for ws in idle:
            await ws.close()
    async with service.http.get(f"{service.base_url}/metrics") as response:
        assert 'parley_rate_limited_total{limit="unjoined_sockets"} 1.0' in await response.text()

"""Signed webhooks from the persistent outbox: a receiver that fails at first gets every event
exactly once per id, in order per session, with signatures the Standard Webhooks library
accepts; the same when parley restarts while events are pending."""

from __future__ import annotations

import time
from pathlib import Path

import aiohttp
import pytest

from parley.signaling.config import StoreSettings
from parley.signaling.store_journal import STORE
from parley.signaling.webhooks import backoff, headers, new_secret, secret_key, sign
from tests.media_client import wait_for
from tests.signaling.conftest import ServiceFactory
from tests.signaling.store_serve import ParleyProcess
from tests.signaling.webhook_receiver import Receiver, webhook_receiver
from tests.signaling.ws_client import WsParticipant

LIFECYCLE = [
    "session.created",
    "session.started",
    "participant.joined",
    "participant.joined",
    "participant.left",
    "participant.left",
    "session.ended",
]


def test_signature_is_the_standard_webhooks_one() -> None:
    from standardwebhooks.webhooks import Webhook

    secret = new_secret()
    body = b'{"type":"session.created"}'
    sent = headers(secret_key(secret), "evt_1", 1700000000, body)
    # the library checks the timestamp against now: sign one of now
    import time

    now = int(time.time())
    fresh = headers(secret_key(secret), "evt_1", now, body)
    assert Webhook(secret).verify(body, fresh) == {"type": "session.created"}
    assert sent["webhook-signature"] == sign(secret_key(secret), "evt_1", 1700000000, body)
    assert sent["webhook-signature"].startswith("v1,")
    with pytest.raises(ValueError, match="whsec_"):
        secret_key("whsec_not base64!")


def test_backoff_doubles_up_to_the_cap() -> None:
    delays = [backoff(n, 1.0, 60.0) for n in range(1, 10)]
    assert 0.9 <= delays[0] <= 1.1 and 7.2 <= delays[3] <= 8.8
    assert max(delays) <= 66.0
    # 24 h of retries at the defaults (5 s doubling to 1 h): about 30 attempts, not thousands
    t, n = 0.0, 0
    while t < 24 * 3600:
        n += 1
        t += backoff(n, 5.0, 3600.0)
    assert 20 < n < 40


async def call_and_end(
    base_url: str, http: aiohttp.ClientSession, auth: dict[str, str], conversation: str
) -> str:
    async with http.post(
        f"{base_url}/api/v1/sessions", json={"conversation_id": conversation}, headers=auth
    ) as response:
        session = await response.json()
    agent = WsParticipant(base_url, session["agent_url"], "Ann")
    customer = WsParticipant(base_url, session["customer_url"], "Carl")
    try:
        for p in (agent, customer):
            assert (await p.join(media=False))["type"] == "welcome"
        await customer.send({"type": "leave"})
        await customer.closed.wait()
        async with http.delete(
            f"{base_url}/api/v1/sessions/{session['session_id']}", headers=auth
        ) as r:
            assert r.status == 204
    finally:
        await agent.close()
        await customer.close()
    return str(session["session_id"])


def assert_exactly_once_in_order(receiver: Receiver, sessions: list[str]) -> None:
    ids = [p["id"] for p in receiver.accepted]
    assert len(ids) == len(set(ids)), "an event was accepted twice"
    assert receiver.bad_signatures == 0
    by_session = receiver.by_session()
    for sid in sessions:
        assert by_session[sid] == LIFECYCLE, by_session[sid]
    assert len(receiver.attempts) > len(ids), "the receiver never failed"
    for p in receiver.accepted:
        assert p["id"].startswith("evt_") and p["created_at"].endswith("Z")
        if p["type"].startswith("participant."):
            assert p["participant"]["role"] in ("agent", "customer")
    ended = [p for p in receiver.accepted if p["type"] == "session.ended"]
    assert all(p["session"]["end_reason"] == "ended_by_api" and "report" in p for p in ended)


async def test_failing_receiver_gets_every_event_once_in_order(
    service_factory: ServiceFactory, tmp_path: Path
) -> None:
    secret = new_secret()
    async with webhook_receiver(secret, fail_for=3.0) as receiver:
        service = await service_factory(
            store=StoreSettings(
                data_dir=str(tmp_path),
                webhook_urls=(receiver.url,),
                webhook_secret=secret,
                webhook_backoff_base=0.2,
            )
        )
        sessions = [
            await call_and_end(service.base_url, service.http, service.auth(), f"chat-{n}")
            for n in range(2)
        ]
        assert await wait_for(lambda: len(receiver.accepted) >= 2 * len(LIFECYCLE), timeout=30)
        store = service.app[STORE]
        await wait_for(lambda: False, 1.0)  # room for a duplicate to show up
        assert_exactly_once_in_order(receiver, sessions)
        stored = [e["id"] for sid in sessions for e in await store.events_of(sid)]
        assert sorted(stored) == sorted(p["id"] for p in receiver.accepted)
        rows = await store.deliveries()
        assert all(r["delivered_at"] is not None and r["last_status"] == 204 for r in rows)
        assert max(r["attempts"] for r in rows) > 1


async def test_events_pending_across_a_parley_restart_are_delivered_once(tmp_path: Path) -> None:
    secret = new_secret()
    async with webhook_receiver(secret, fail_for=6.0) as receiver:
        server = ParleyProcess(
            tmp_path / "data",
            "--webhook-url",
            receiver.url,
            "--webhook-secret",
            secret,
            "--webhook-backoff",
            "0.3",
        )
        await server.start()
        # failing from now: the media workers' start-up (one per core) takes part of the window
        receiver.fail_until = time.monotonic() + 6.0
        try:
            async with aiohttp.ClientSession() as http:
                sid = await call_and_end(server.base_url, http, server.auth(), "chat-restart")
                assert receiver.attempts and not receiver.accepted  # pending in the outbox
                await server.stop()
                await server.start()
                assert await wait_for(lambda: len(receiver.accepted) >= len(LIFECYCLE), timeout=30)
                await wait_for(lambda: False, 1.0)  # room for a duplicate to show up
        finally:
            await server.stop()
        assert_exactly_once_in_order(receiver, [sid])

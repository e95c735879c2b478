"""Connection quality per participant from what the relay measures on its legs: two clean
legs are "good"; 5 % loss injected on one participant's downstream makes that participant
(and only that one) "poor" or "fair", with the reports' scoring (relay/quality.py)."""

from __future__ import annotations

from typing import Any

from tests.signaling.conftest import ServiceFactory
from tests.signaling.test_reports import drop_every_20th_rtp
from tests.signaling.ws_client import WsParticipant


def quality_of(pid: str, *grades: str) -> Any:
    return lambda m: (
        m.get("type") == "connection_quality"
        and m["participant_id"] == pid
        and m["quality"] in grades
    )


async def test_loss_on_one_leg_makes_that_participant_poor(
    service_factory: ServiceFactory,
) -> None:
    service = await service_factory()
    session = await service.create_session("chat-quality")
    agent = WsParticipant(service.base_url, session["agent_url"], "Ann")
    customer = WsParticipant(service.base_url, session["customer_url"], "Carl")
    try:
        for p in (agent, customer):
            assert (await p.join())["type"] == "welcome"
        await agent.publish()
        await customer.publish()
        for p in (agent, customer):
            await agent.wait_message(quality_of(p.id, "good"), timeout=20)
            await customer.wait_message(quality_of(p.id, "good"), timeout=20)

        assert customer.client is not None
        seen = len(agent.messages)
        dropped = drop_every_20th_rtp(customer.client)
        # 5 % video loss scores about 2.6: "poor" (a window half before the loss: "fair")
        await agent.wait_message(quality_of(customer.id, "poor"), after=seen, timeout=20)
        assert dropped[1] > 0
        # the same message reaches the one with the bad connection
        await customer.wait_message(quality_of(customer.id, "poor"), timeout=5)
        # and nothing changed for the other
        assert not [m for m in agent.messages[seen:] if quality_of(agent.id, "poor", "fair")(m)]
    finally:
        for p in (agent, customer):
            await p.close()


def test_grades_follow_the_reports_score() -> None:
    from parley.relay.quality import grade, mos

    assert grade(None) is None
    assert grade(mos(0.0, 20.0, 2.0, "video")) == "good"
    assert grade(mos(1.0, 50.0, 5.0, "video")) == "good"
    assert grade(mos(3.0, 50.0, 5.0, "video")) == "fair"
    assert grade(mos(5.0, 50.0, 5.0, "video")) == "poor"
    assert grade(mos(0.0, 1500.0, 10.0, "audio")) == "poor"  # a long delay alone

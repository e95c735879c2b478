"""Participant state decided by the server: what a participant publishes and has turned off
(``track_state``), sent to everyone as ``participant_state`` and listed in the welcome."""

from __future__ import annotations

from typing import Any

from tests.signaling.conftest import ServiceFactory
from tests.signaling.ws_client import WsParticipant


def state_of(pid: str) -> Any:
    return lambda m: m.get("type") == "participant_state" and m["participant_id"] == pid


async def test_track_state_reaches_everyone_and_the_welcome(
    service_factory: ServiceFactory,
) -> None:
    service = await service_factory()
    session = await service.create_session("chat-state")
    agent = WsParticipant(service.base_url, session["agent_url"], "Ann")
    customer = WsParticipant(service.base_url, session["customer_url"], "Carl")
    late = None
    try:
        for p in (agent, customer):
            assert (await p.join())["type"] == "welcome"
        await agent.publish()
        on = await customer.wait_message(state_of(agent.id))
        assert on == {
            "type": "participant_state",
            "participant_id": agent.id,
            "camera": True,
            "microphone": True,
            "screen": False,
            "reconnecting": False,
        }
        # the publisher hears its own state too: every page shows the same thing
        await agent.wait_message(state_of(agent.id))

        seen = len(customer.messages)
        await agent.send({"type": "track_state", "source": "camera", "enabled": False})
        off = await customer.wait_message(state_of(agent.id), after=seen)
        assert (off["camera"], off["microphone"], off["screen"]) == (False, True, False)
        seen = len(customer.messages)
        await agent.send({"type": "track_state", "source": "microphone", "enabled": False})
        muted = await customer.wait_message(state_of(agent.id), after=seen)
        assert (muted["camera"], muted["microphone"]) == (False, False)

        # a state not changed is not sent again
        seen = len(customer.messages)
        await agent.send({"type": "track_state", "source": "microphone", "enabled": False})
        await agent.send({"type": "track_state", "source": "camera", "enabled": True})
        back = await customer.wait_message(state_of(agent.id), after=seen)
        assert (back["camera"], back["microphone"]) == (True, False)

        # one who joins now learns it from the welcome
        await customer.close()
        late = WsParticipant(service.base_url, session["customer_url"], "Carl")
        welcome = await late.join(media=False)
        (entry,) = [p for p in welcome["participants"] if p["participant_id"] == agent.id]
        assert (entry["camera"], entry["microphone"], entry["screen"]) == (True, False, False)
        (me,) = [p for p in welcome["participants"] if p["participant_id"] == late.id]
        assert (me["camera"], me["microphone"], me["screen"]) == (False, False, False)

        # turning on what is not published is not "on"
        seen = len(late.messages)
        await agent.send({"type": "track_state", "source": "screen", "enabled": True})
        await agent.send({"type": "track_state", "source": "microphone", "enabled": True})
        state = await late.wait_message(state_of(agent.id), after=seen)
        assert (state["microphone"], state["screen"]) == (True, False)
    finally:
        for p in (agent, customer, late):
            if p is not None:
                await p.close()


async def test_bad_track_state_is_refused_clearly(service_factory: ServiceFactory) -> None:
    service = await service_factory()
    session = await service.create_session("chat-state-bad")
    agent = WsParticipant(service.base_url, session["agent_url"], "Ann")
    try:
        await agent.join(media=False)
        for bad, text in (
            ({"type": "track_state", "source": "webcam", "enabled": False}, "'source'"),
            ({"type": "track_state", "source": "camera", "enabled": "no"}, "'enabled'"),
            ({"type": "track_state", "source": "camera"}, "'enabled'"),
        ):
            seen = len(agent.messages)
            await agent.send(bad)
            error = await agent.wait_message(lambda m: m.get("type") == "error", after=seen)
            assert error["code"] == "bad_request" and text in error["message"], error
        # the connection is still fine
        await agent.send({"type": "track_state", "source": "camera", "enabled": False})
        seen = len(agent.messages)
        await agent.send({"type": "nope"})
        error = await agent.wait_message(lambda m: m.get("type") == "error", after=seen)
        assert error["code"] == "unknown_message_type"
        assert not agent.closed.is_set()
    finally:
        await agent.close()

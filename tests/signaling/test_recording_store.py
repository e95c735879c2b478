"""Recording and the store together: a recorded session yields ``recording.started`` and, once
each file is remuxed, ``recording.ready`` events (the webhooks' outbox), and its report and its
line in the report list say it was recorded; an unrecorded one says it was not."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

from parley.signaling.config import StoreSettings
from parley.signaling.store_journal import STORE
from tests.media_client import wait_for
from tests.signaling.conftest import Service, ServiceFactory
from tests.signaling.test_media import call
from tests.signaling.test_recording import api, pytestmark, wait_ready  # noqa: F401


async def event_types(service: Service, session_id: str) -> list[str]:
    return [e["type"] for e in await service.app[STORE].events_of(session_id)]


async def test_a_recorded_session_emits_recording_events_and_reports_recorded(
    service_factory: ServiceFactory, tmp_path: Path
) -> None:
    service = await service_factory(
        recordings_dir=str(tmp_path / "recordings"),
        store=StoreSettings(data_dir=str(tmp_path / "data"), report_interval=0.5),
    )
    recorded = await service.create_session("chat-rec", record=True)
    plain = await service.create_session("chat-rec")
    sid = recorded["session_id"]
    agent, customer = await call(service.base_url, recorded["agent_url"], recorded["customer_url"])
    try:
        assert await wait_for(
            lambda: (
                customer.client is not None and customer.client.frames_from(agent.id, "video") >= 15
            ),
            20,
        )
    finally:
        for person in (agent, customer):
            with contextlib.suppress(Exception):
                await person.close()
    status, _ = await api(service, "DELETE", f"/api/v1/sessions/{sid}")
    assert status in (200, 204)
    ready = [r for r in await wait_ready(service, sid, 2) if r["state"] == "ready"]
    assert ready, "no recording became ready"

    for _ in range(150):  # the ready events follow the files within seconds
        if (await event_types(service, sid)).count("recording.ready") >= len(ready):
            break
        await asyncio.sleep(0.2)
    assert (await event_types(service, sid)).count("recording.ready") == len(ready)
    types = await event_types(service, sid)
    assert types.count("recording.started") == 1
    assert types.index("recording.started") < types.index("recording.ready")
    ready_payloads: list[dict[str, Any]] = [
        e["payload"]
        for e in await service.app[STORE].events_of(sid)
        if e["type"] == "recording.ready"
    ]
    assert {p["recording"]["recording_id"] for p in ready_payloads} == {
        r["recording_id"] for r in ready
    }

    status, report = await api(service, "GET", f"/api/v1/sessions/{sid}/report")
    assert status == 200, report
    assert report["summary"]["recorded"] is True
    status, listing = await api(service, "GET", "/api/v1/reports?conversation_id=chat-rec")
    assert status == 200, listing
    by_id = {line["session_id"]: line["recorded"] for line in listing["reports"]}
    assert by_id == {sid: True, plain["session_id"]: False}

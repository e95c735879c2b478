"""The report pages in a real Chromium: the list of sessions and one session's report with its
charts (uPlot from our own static files), after a real call of two aiortc participants."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.media_client import wait_for
from tests.signaling.browser_support import (
    API_KEY,
    ARTIFACTS,
    CHROMIUM,
    CHROMIUM_ARGS,
    chromium_available,
    running_server,
)
from tests.signaling.test_media import call

sync_api = pytest.importorskip("playwright.sync_api")

pytestmark = [
    pytest.mark.browser,
    pytest.mark.timeout(90),
    pytest.mark.skipif(not chromium_available(), reason=f"{CHROMIUM} is not installed"),
]


async def a_short_call(base_url: str, session: dict[str, Any]) -> None:
    agent, customer = await call(base_url, session["agent_url"], session["customer_url"])
    try:
        a, c = agent.client, customer.client
        assert a is not None and c is not None
        assert await wait_for(
            lambda: (
                a.frames_from(customer.id, "video") >= 60 and c.frames_from(agent.id, "video") >= 60
            ),
            timeout=30,
        )
        await asyncio.sleep(6)  # a few seconds of call to chart (not a timing assertion)
    finally:
        await customer.close()
        await agent.close()


def test_report_pages_list_the_session_and_chart_its_quality() -> None:
    with running_server("--report-interval", "0.5") as server:
        session = server.create_session("conv-report-page")
        asyncio.run(a_short_call(server.base_url, session))
        server.api("DELETE", f"/api/v1/sessions/{session['session_id']}")
        requests: list[str] = []
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                ctx = browser.new_context(viewport={"width": 1200, "height": 1400})
                ctx.add_init_script(f"localStorage.setItem('parley.apiKey', {API_KEY!r})")
                page = ctx.new_page()
                page.set_default_timeout(20_000)
                page.on("request", lambda r: requests.append(r.url))
                page.goto(f"{server.base_url}/reports")
                row = page.locator("#list-body tr", has_text="conv-report-page")
                sync_api.expect(row).to_have_count(1)
                sync_api.expect(row).to_contain_text("2")  # participants
                row.get_by_role("link", name="Report").click()
                page.wait_for_selector("body[data-ready=true]")
                sync_api.expect(page.locator("#participants-body tr")).to_have_count(2)
                sync_api.expect(page.locator("#participants-body")).to_contain_text("host-udp")
                # four charts (quality, loss, RTT, bitrate) for each participant, drawn by uPlot
                sync_api.expect(page.locator("#charts .uplot")).to_have_count(8)
                sync_api.expect(page.locator("#timeline li").first).to_contain_text(
                    "session.created"
                )
                sync_api.expect(page.locator("#timeline")).to_contain_text("session.ended")
                ARTIFACTS.mkdir(exist_ok=True)
                page.screenshot(path=str(ARTIFACTS / "report-page.png"), full_page=True)
            finally:
                browser.close()
        # nothing from a CDN: every request went to parley itself
        assert requests and all(u.startswith(server.base_url) for u in requests), requests

"""The join page in a real Chromium: everyone sees the recording indicator, only agents get the
Start recording / Stop recording button, and what Chromium sent is recorded into a playable file."""

from __future__ import annotations

import json
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.relay.test_recording import assert_playable
from tests.signaling.browser_support import (
    API_KEY,
    CHROMIUM,
    ParleyServer,
    chromium_available,
    participant_id,
    running_server,
    wait_for_media,
)
from tests.signaling.test_browser import AV, Opener, browser, button, join, open_page

sync_api = pytest.importorskip("playwright.sync_api")

pytestmark = [
    pytest.mark.browser,
    pytest.mark.timeout(90),
    pytest.mark.skipif(not chromium_available(), reason=f"{CHROMIUM} is not installed"),
]
__all__ = ["browser", "open_page"]  # fixtures used below


@pytest.fixture(scope="module")
def recordings_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="parley-rec-") as d:
        yield Path(d)


@pytest.fixture(scope="module")
def server(recordings_dir: Path) -> Iterator[ParleyServer]:
    with running_server("--recordings-dir", str(recordings_dir)) as s:
        yield s


def indicator(page: Any) -> Any:
    return page.locator("#recording-indicator")


def download(url: str, target: Path) -> None:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {API_KEY}"})
    with urllib.request.urlopen(request, timeout=20) as response:
        target.write_bytes(response.read())


def test_indicator_for_everyone_buttons_for_agents(
    server: ParleyServer, open_page: Opener, tmp_path: Path
) -> None:
    session = server.create_session("conv-recording")
    sid = session["session_id"]
    agent = join(open_page, session["agent_url"], "Alice Agent")
    customer = join(open_page, session["customer_url"], "Carl Customer")
    wait_for_media(agent, {participant_id(customer): AV})
    for page in (agent, customer):
        sync_api.expect(indicator(page)).to_be_hidden()
    sync_api.expect(button(customer, "Start recording")).to_have_count(0)
    sync_api.expect(button(customer, "Stop recording")).to_have_count(0)
    button(agent, "Start recording").click()
    for page in (agent, customer):
        sync_api.expect(indicator(page)).to_be_visible()
        sync_api.expect(indicator(page)).to_contain_text("Recording")
    sync_api.expect(button(agent, "Stop recording")).to_be_visible()
    sync_api.expect(button(customer, "Stop recording")).to_be_hidden()
    # who joins while it records is told by the welcome
    late_url = server.api("POST", f"/api/v1/sessions/{sid}/invites", {"role": "customer"})["url"]
    late = join(open_page, late_url, "Lena Late")
    sync_api.expect(indicator(late)).to_be_visible()
    sync_api.expect(button(late, "Stop recording")).to_have_count(0)
    agent.wait_for_timeout(3000)  # some seconds of real Chromium media on disk
    button(agent, "Stop recording").click()
    for page in (agent, customer, late):
        sync_api.expect(indicator(page)).to_be_hidden()
    sync_api.expect(button(agent, "Start recording")).to_be_visible()

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        listed = server.api("GET", f"/api/v1/sessions/{sid}/recordings")["recordings"]
        if len(listed) >= 2 and all(r["state"] in ("ready", "failed") for r in listed):
            break
        time.sleep(0.3)
    assert {r["state"] for r in listed} == {"ready"}, json.dumps(listed)
    agent_file = next(r for r in listed if r["role"] == "agent")
    assert agent_file["format"] == "webm"
    target = tmp_path / "chromium.webm"
    download(agent_file["url"], target)
    assert_playable(target)

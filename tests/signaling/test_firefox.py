"""The join page in Debian's Firefox ESR (WebDriver BiDi, tests/firefox/driver.mjs) next to
Chromium, against a real `parley serve`: media both ways, and mute / camera off shown to the
other side from the server's participant_state within 1 s, in both directions; Firefox stops
sending video when its camera is turned off (no frozen picture).

On loopback Firefox pairs only through TURN (docs/browser.md): these calls go through the
embedded TURN server.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from .browser_support import (
    CHROMIUM,
    CHROMIUM_ARGS,
    ParleyServer,
    chromium_available,
    media_stats,
    running_server,
    wait_for_media,
)
from .firefox_support import Firefox, FirefoxPage, firefox_missing

sync_api = pytest.importorskip("playwright.sync_api")

pytestmark = [
    pytest.mark.browser,
    pytest.mark.firefox,
    pytest.mark.timeout(60),
    pytest.mark.skipif(bool(firefox_missing()), reason=firefox_missing() or "-"),
    pytest.mark.skipif(not chromium_available(), reason=f"{CHROMIUM} is not installed"),
]

AV = ("camera", "microphone")
STATE_JS = "() => window.parley && window.parley.state"
TILE_JS = """
([pid, attr]) => {
  const tile = document.querySelector(`.tile.remote[data-participant-id="${pid}"]`);
  return tile ? tile.getAttribute(attr) : null;
}
"""


@pytest.fixture(scope="module")
def server() -> Iterator[ParleyServer]:
    with running_server() as s:
        yield s


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def firefox() -> Iterator[Firefox]:
    browser = Firefox()
    try:
        yield browser
        assert browser.script_errors() == [], "uncaught script errors in the Firefox pages"
    finally:
        browser.close()


def join_firefox(firefox: Firefox, url: str, name: str) -> FirefoxPage:
    page = firefox.open(url)
    page.wait_for_function("() => !!document.querySelector('#join-button:not([hidden])')")
    page.fill("#name-input", name)
    page.click("#join-button")
    page.wait_for_function("s => window.parley.state === s", "connected")
    return page


def join_chromium(chromium: Any, url: str, name: str) -> Any:
    ctx = chromium.new_context(
        viewport={"width": 1000, "height": 640}, permissions=["camera", "microphone"]
    )
    page = ctx.new_page()
    page.set_default_timeout(20_000)
    page.goto(url)
    page.get_by_label("Your name").fill(name)
    page.get_by_role("button", name="Join", exact=True).click()
    page.wait_for_function("s => window.parley && window.parley.state === s", arg="connected")
    return page


def tile_attr_within(page: Any, pid: str, attr: str, value: str, seconds: float) -> float:
    """Seconds until the tile of ``pid`` on ``page`` has ``attr`` = ``value`` (polled every
    50 ms; AssertionError after ``seconds``)."""
    start = time.monotonic()
    last = None
    while time.monotonic() - start < seconds:
        last = page.evaluate(TILE_JS, [pid, attr])
        if last == value:
            return time.monotonic() - start
        time.sleep(0.05)
    raise AssertionError(f"{attr} of {pid} is {last!r}, not {value!r}, after {seconds} s")


def frames_of(page: Any, pid: str) -> int:
    return int(media_stats(page)["media"].get(f"{pid}/camera", {}).get("framesDecoded", 0))


def test_firefox_and_chromium_call_and_see_mute_and_camera_off(
    server: ParleyServer, chromium: Any, firefox: Firefox
) -> None:
    session = server.create_session("conv-firefox")
    fox = join_firefox(firefox, session["agent_url"], "Fiona Firefox")
    chrome = join_chromium(chromium, session["customer_url"], "Carl Chromium")
    try:
        f_id = str(fox.evaluate("() => window.parley.participantId"))
        c_id = str(chrome.evaluate("() => window.parley.participantId"))
        wait_for_media(chrome, {f_id: AV}, timeout=30)
        wait_for_media(fox, {c_id: AV}, timeout=30)  # type: ignore[arg-type]

        # Firefox -> Chromium: mute, camera off (and no more frames), camera on, unmute
        tile_attr_within(chrome, f_id, "data-muted", "false", 5)
        tile_attr_within(chrome, f_id, "data-video", "on", 5)
        fox.click("#mute-button")
        tile_attr_within(chrome, f_id, "data-muted", "true", 1.0)
        fox.click("#camera-button")
        tile_attr_within(chrome, f_id, "data-video", "off", 1.0)
        time.sleep(0.5)  # frames in flight when the camera went off
        before = frames_of(chrome, f_id)
        time.sleep(2.5)
        assert frames_of(chrome, f_id) - before <= 1, "Firefox kept sending video"
        fox.click("#camera-button")
        tile_attr_within(chrome, f_id, "data-video", "on", 1.0)
        fox.click("#mute-button")
        tile_attr_within(chrome, f_id, "data-muted", "false", 1.0)
        wait_for_media(chrome, {f_id: AV}, timeout=15)

        # Chromium -> Firefox
        chrome.click("#mute-button")
        tile_attr_within(fox, c_id, "data-muted", "true", 1.0)
        chrome.click("#camera-button")
        tile_attr_within(fox, c_id, "data-video", "off", 1.0)
        chrome.click("#camera-button")
        tile_attr_within(fox, c_id, "data-video", "on", 1.0)
        chrome.click("#mute-button")
        tile_attr_within(fox, c_id, "data-muted", "false", 1.0)
    finally:
        chrome.context.close()

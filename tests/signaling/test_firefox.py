"""The join page in Debian's Firefox ESR (WebDriver BiDi, tests/firefox/driver.mjs) next to
Chromium, against a real `parley serve`: media both ways, and mute / camera off shown to the
other side from the server's participant_state within 1 s, in both directions; Firefox stops
sending video when its camera is turned off (no frozen picture); two Firefox pages in one
browser (one of them a background tab); relay-only over TURN/TCP; screen share both ways.

How Firefox pairs on loopback depends on its camera/microphone permission (docs/browser.md):
the driver grants it (``permissions.default.*``), so Firefox gathers its loopback addresses
as host candidates; the relay-only test forces TURN/TCP.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from typing import Any

import pytest

from .browser_support import (
    CHROMIUM,
    PAIRS_JS,
    ParleyServer,
    chromium_available,
    launch_chromium,
    media_stats,
    running_server,
    wait_for_media,
)
from .firefox_support import Firefox, FirefoxPage, VirtualDisplay, firefox_missing

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
    with launch_chromium() as b:
        yield b


@pytest.fixture
def firefox() -> Iterator[Firefox]:
    browser = Firefox()
    try:
        yield browser
        assert browser.script_errors() == [], "uncaught script errors in the Firefox pages"
    finally:
        browser.close()


def join_firefox(firefox: Firefox, url: str, name: str, init: str = "") -> FirefoxPage:
    page = firefox.open(url, init)
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


# what a background tab does to enumerateDevices() in Firefox: no answer until it gets focus
WITHHELD_DEVICES_JS = """
navigator.mediaDevices.enumerateDevices = () => new Promise(() => {});
"""


def test_joining_does_not_wait_for_the_device_list(server: ParleyServer, firefox: Firefox) -> None:
    session = server.create_session("conv-firefox-devices")
    other = join_firefox(firefox, session["customer_url"], "Fred Other")
    page = join_firefox(firefox, session["agent_url"], "Fiona Waiting", WITHHELD_DEVICES_JS)
    me = str(page.evaluate("() => window.parley.participantId"))
    wait_for_media(other, {me: AV}, timeout=30)  # type: ignore[arg-type]


def test_two_firefox_pages_call_each_other(server: ParleyServer, firefox: Firefox) -> None:
    session = server.create_session("conv-firefox-two")
    # the first page is a background tab once the second opens: its join must not wait on it
    one = join_firefox(firefox, session["agent_url"], "Fiona One")
    two = join_firefox(firefox, session["customer_url"], "Fred Two")
    one_id = str(one.evaluate("() => window.parley.participantId"))
    two_id = str(two.evaluate("() => window.parley.participantId"))
    wait_for_media(one, {two_id: AV}, timeout=30)  # type: ignore[arg-type]
    wait_for_media(two, {one_id: AV}, timeout=30)  # type: ignore[arg-type]
    one.click("#mute-button")
    tile_attr_within(two, one_id, "data-muted", "true", 1.0)
    two.click("#camera-button")
    tile_attr_within(one, two_id, "data-video", "off", 1.0)


def test_firefox_relay_only_over_turn_tcp(chromium: Any, firefox: Firefox) -> None:
    with running_server("--ice-transport-policy", "relay", "--turn-transports", "tcp") as srv:
        session = srv.create_session("conv-firefox-relay")
        fox = join_firefox(firefox, session["agent_url"], "Fiona Firefox")
        chrome = join_chromium(chromium, session["customer_url"], "Carl Chromium")
        try:
            f_id = str(fox.evaluate("() => window.parley.participantId"))
            c_id = str(chrome.evaluate("() => window.parley.participantId"))
            wait_for_media(chrome, {f_id: AV}, timeout=30)
            wait_for_media(fox, {c_id: AV}, timeout=30)  # type: ignore[arg-type]
            pairs = fox.evaluate(PAIRS_JS)
            for name in ("publish", "subscribe"):
                pair = pairs[name]
                assert pair, f"{name}: no selected candidate pair: {pairs}"
                assert pair["local"]["candidateType"] == "relay", pairs
                assert pair["local"]["relayProtocol"] == "tcp", pairs
        finally:
            chrome.context.close()
            fox.close()  # before the server stops: no reconnect attempts left to fail


def test_chromium_screen_share_shows_in_firefox(
    server: ParleyServer, chromium: Any, firefox: Firefox
) -> None:
    """Firefox receives a shared screen (its own getDisplayMedia needs a display: headless
    Firefox answers NotFoundError, see docs/browser.md)."""
    session = server.create_session("conv-firefox-screen")
    fox = join_firefox(firefox, session["agent_url"], "Fiona Firefox")
    chrome = join_chromium(chromium, session["customer_url"], "Carl Chromium")
    try:
        c_id = str(chrome.evaluate("() => window.parley.participantId"))
        wait_for_media(fox, {c_id: AV}, timeout=30)  # type: ignore[arg-type]
        chrome.click("#share-button")
        wait_for_media(fox, {c_id: ("screen", "camera")}, timeout=30)  # type: ignore[arg-type]
        screen_tile = (
            "pid => document.querySelectorAll(`.tile.screen[data-participant-id='${pid}']`).length"
        )
        fox.wait_for_function(screen_tile, c_id, timeout=10)
        chrome.click("#share-button")  # stop: the tile goes away in Firefox
        fox.wait_for_function(f"pid => !({screen_tile})(pid)", c_id, timeout=20)
    finally:
        chrome.context.close()


@pytest.mark.skipif(shutil.which("Xvfb") is None, reason="Xvfb is not installed (apt xvfb)")
def test_firefox_screen_share_shows_in_chromium(server: ParleyServer, chromium: Any) -> None:
    """Firefox shares its screen (on an Xvfb display of its own), Chromium shows it large and
    hears of it from participant_state; stopping removes the tile."""
    display = VirtualDisplay()
    firefox = Firefox(display.display)
    session = server.create_session("conv-firefox-share")
    try:
        fox = join_firefox(firefox, session["agent_url"], "Fiona Firefox")
        chrome = join_chromium(chromium, session["customer_url"], "Carl Chromium")
        f_id = str(fox.evaluate("() => window.parley.participantId"))
        wait_for_media(chrome, {f_id: AV}, timeout=30)
        fox.click("#share-button")
        wait_for_media(chrome, {f_id: ("screen", "camera")}, timeout=30)
        screen_tile = (
            "pid => document.querySelectorAll(`.tile.screen[data-participant-id='${pid}']`).length"
        )
        chrome.wait_for_function(screen_tile, arg=f_id)
        chrome.wait_for_function("pid => window.parley.states[pid].screen === true", arg=f_id)
        fox.click("#share-button")  # stop
        chrome.wait_for_function(f"pid => !({screen_tile})(pid)", arg=f_id, timeout=20_000)
        assert chrome.evaluate("pid => window.parley.states[pid].screen", f_id) is False
        chrome.context.close()
        fox.close()
        assert firefox.script_errors() == []
    finally:
        firefox.close()
        display.close()

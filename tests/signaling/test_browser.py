"""The join page and the agent console in a real Chromium, against a real `parley serve`.

Media checks use the browser's own RTCPeerConnection.getStats(): decoded frames and received audio
packets/energy must increase. Plain `def` tests with Playwright's sync API (pytest runs with
asyncio_mode=auto, and the sync API refuses to run inside a running loop).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from .browser_support import (
    ARTIFACTS,
    CHROMIUM,
    PAIRS_JS,
    ParleyServer,
    chromium_available,
    launch_chromium,
    live_local_tracks,
    media_stats,
    participant_id,
    running_server,
    wait_for_media,
    wait_for_state,
)

sync_api = pytest.importorskip("playwright.sync_api")

pytestmark = [
    pytest.mark.browser,
    pytest.mark.timeout(120),
    pytest.mark.skipif(not chromium_available(), reason=f"{CHROMIUM} is not installed"),
]

AV = ("camera", "microphone")

# A getUserMedia that always fails as a browser does when the user clicks "Block".
DENY_MEDIA_JS = """
navigator.mediaDevices.getUserMedia = async () => {
  throw new DOMException('Permission denied', 'NotAllowedError');
};
"""


@pytest.fixture(scope="module")
def server() -> Iterator[ParleyServer]:
    with running_server() as s:
        yield s


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with launch_chromium() as b:
        yield b


Opener = Callable[..., Any]


@pytest.fixture
def open_page(browser: Any) -> Iterator[Opener]:
    """open_page(url, viewport=..., init_script=...) -> a page in its own context. An uncaught
    script error in any page fails the test."""
    contexts: list[Any] = []
    script_errors: list[str] = []

    def open_(url: str, *, viewport: dict[str, int] | None = None, init_script: str = "") -> Any:
        ctx = browser.new_context(
            viewport=viewport or {"width": 1000, "height": 640},
            permissions=["camera", "microphone"],
        )
        contexts.append(ctx)
        if init_script:
            ctx.add_init_script(init_script)
        page = ctx.new_page()
        page.on("pageerror", lambda error: script_errors.append(f"{url}: {error}"))
        page.set_default_timeout(20_000)
        page.goto(url)
        return page

    yield open_
    for ctx in contexts:
        ctx.close()
    assert script_errors == [], "uncaught script errors in the pages"


def join(open_page: Opener, url: str, name: str, **kw: Any) -> Any:
    page = open_page(url, **kw)
    join_button = page.get_by_role("button", name="Join", exact=True)
    sync_api.expect(join_button).to_be_visible()
    page.get_by_label("Your name").fill(name)
    join_button.click()
    wait_for_state(page, "connected")
    return page


def button(page: Any, name: str) -> Any:
    return page.get_by_role("button", name=name, exact=True)


def test_two_pages_see_and_hear_each_other_through_the_relay(
    server: ParleyServer, open_page: Opener
) -> None:
    session = server.create_session("conv-two")
    agent = join(
        open_page, session["agent_url"], "Alice Agent", viewport={"width": 1280, "height": 720}
    )
    customer = join(open_page, session["customer_url"], "Carl Customer")
    a_id, c_id = participant_id(agent), participant_id(customer)

    wait_for_media(agent, {c_id: AV})
    wait_for_media(customer, {a_id: AV})

    # both tiles say who is there, and nobody receives their own media back
    tile = agent.locator(f'.tile.remote[data-participant-id="{c_id}"]')
    sync_api.expect(tile.locator(".name")).to_have_text("Carl Customer")
    sync_api.expect(tile).to_have_attribute("data-role", "customer")
    sync_api.expect(tile).to_have_attribute("data-video", "on")
    sync_api.expect(tile).to_have_attribute("data-muted", "false")
    assert not any(k.startswith(a_id) for k in media_stats(agent)["media"])
    config = agent.evaluate("() => window.parley.pcs.subscribe.getConfiguration()")
    assert config["bundlePolicy"] == "max-bundle"
    sync_api.expect(button(agent, "End session")).to_be_visible()
    sync_api.expect(button(customer, "End session")).to_be_hidden()
    sync_api.expect(agent.locator("#status")).to_have_attribute("data-state", "connected")

    # a beep of the fake microphone lights up the speaking ring: then take the picture
    sync_api.expect(tile).to_have_attribute("data-speaking", "true", timeout=15000)
    ARTIFACTS.mkdir(exist_ok=True)
    agent.screenshot(path=str(ARTIFACTS / "two-party-call.png"))

    # mute and camera off show at the other side (no RTP -> muted / avatar)
    button(customer, "Mute").click()
    sync_api.expect(button(customer, "Unmute")).to_be_visible()
    sync_api.expect(tile).to_have_attribute("data-muted", "true", timeout=15000)
    button(customer, "Unmute").click()
    sync_api.expect(tile).to_have_attribute("data-muted", "false", timeout=15000)
    button(customer, "Camera off").click()
    sync_api.expect(button(customer, "Camera on")).to_be_visible()
    sync_api.expect(tile).to_have_attribute("data-video", "off", timeout=15000)
    button(customer, "Camera on").click()
    sync_api.expect(tile).to_have_attribute("data-video", "on", timeout=20000)
    wait_for_media(agent, {c_id: AV})


def test_three_pages_each_receive_both_others(server: ParleyServer, open_page: Opener) -> None:
    session = server.create_session("conv-three")
    supervisor_url = server.api(
        "POST",
        f"/api/v1/sessions/{session['session_id']}/invites",
        {"role": "agent", "name": "Sue Supervisor"},
    )["url"]
    pages = [
        join(open_page, session["agent_url"], "Alice"),
        join(open_page, session["customer_url"], "Carl"),
        join(open_page, supervisor_url, "Sue"),
    ]
    ids = [participant_id(p) for p in pages]
    for i, page in enumerate(pages):
        others = {pid: AV for j, pid in enumerate(ids) if j != i}
        wait_for_media(page, others, timeout=30)
        assert page.locator(".tile.remote").count() == 2


def test_relay_only_over_turn_tcp_still_gets_media(open_page: Opener) -> None:
    with running_server("--ice-transport-policy", "relay", "--turn-transports", "tcp") as srv:
        session = srv.create_session("conv-relay")
        agent = join(open_page, session["agent_url"], "Alice")
        customer = join(open_page, session["customer_url"], "Carl")
        config = agent.evaluate("() => window.parley.pcs.publish.getConfiguration()")
        assert config["iceTransportPolicy"] == "relay"
        urls = [u for s in config["iceServers"] for u in s["urls"]]
        assert urls and all(u.startswith("turn:") and "transport=tcp" in u for u in urls), urls

        wait_for_media(agent, {participant_id(customer): AV}, timeout=30)
        wait_for_media(customer, {participant_id(agent): AV}, timeout=30)
        for page in (agent, customer):
            pairs = page.evaluate(PAIRS_JS)
            for name in ("publish", "subscribe"):
                pair = pairs[name]
                assert pair, f"{name}: no selected candidate pair: {pairs}"
                assert pair["local"]["candidateType"] == "relay", pairs
                assert pair["local"]["relayProtocol"] == "tcp", pairs


def test_screen_share_appears_large_on_the_other_side_and_goes_away(
    server: ParleyServer, open_page: Opener
) -> None:
    session = server.create_session("conv-screen")
    agent = join(open_page, session["agent_url"], "Alice")
    customer = join(open_page, session["customer_url"], "Carl")
    c_id = participant_id(customer)
    wait_for_media(agent, {c_id: AV})

    button(customer, "Share screen").click()
    sync_api.expect(button(customer, "Stop sharing")).to_be_visible()
    stats = wait_for_media(agent, {c_id: ("screen", "camera")})
    assert stats["media"][f"{c_id}/screen"]["mid"] != stats["media"][f"{c_id}/camera"]["mid"]
    screen = agent.locator(
        f'.tile.screen[data-participant-id="{c_id}"] video[data-source="screen"]'
    )
    sync_api.expect(screen).to_have_count(1)
    sync_api.expect(agent.locator("#stage")).to_have_class("stage has-screen")
    # the shared screen gets the big area: wider than the camera tile
    camera_box = agent.locator(f'.tile.remote[data-participant-id="{c_id}"]').bounding_box()
    screen_box = screen.bounding_box()
    assert screen_box and camera_box and screen_box["width"] > 2 * camera_box["width"]

    button(customer, "Stop sharing").click()
    sync_api.expect(button(customer, "Share screen")).to_be_visible()
    sync_api.expect(agent.locator(".tile.screen")).to_have_count(0, timeout=20000)
    assert not any(k.endswith("/screen") for k in media_stats(agent)["media"])
    wait_for_media(agent, {c_id: AV})

    # sharing again reuses the negotiation path and works a second time
    button(customer, "Share screen").click()
    wait_for_media(agent, {c_id: ("screen",)})


def test_leaving_removes_the_tile_and_releases_the_devices(
    server: ParleyServer, open_page: Opener
) -> None:
    session = server.create_session("conv-leave")
    agent = join(open_page, session["agent_url"], "Alice")
    customer = join(open_page, session["customer_url"], "Carl")
    c_id = participant_id(customer)
    wait_for_media(agent, {c_id: AV})
    customer.evaluate("() => { window.heldTracks = window.parley.localTracks; }")

    button(customer, "Leave").click()
    wait_for_state(customer, "left")
    sync_api.expect(customer.locator("#status")).to_have_attribute("data-state", "left")
    assert customer.evaluate("() => window.heldTracks.every(t => t.readyState === 'ended')")
    assert live_local_tracks(customer) == []
    sync_api.expect(agent.locator(".tile.remote")).to_have_count(0, timeout=20000)
    sync_api.expect(agent.locator("#waiting")).to_be_visible()
    assert participant_id(agent) == agent.evaluate("() => window.parley.participantId")
    left = [
        p
        for p in server.api("GET", f"/api/v1/sessions/{session['session_id']}")["participants"]
        if p["participant_id"] == c_id
    ]
    assert left and left[0]["left_at"], left


def test_agent_ending_the_session_ends_it_for_everyone(
    server: ParleyServer, open_page: Opener
) -> None:
    session = server.create_session("conv-end")
    agent = join(open_page, session["agent_url"], "Alice")
    customer = join(open_page, session["customer_url"], "Carl")
    wait_for_media(customer, {participant_id(agent): AV})
    for page in (agent, customer):
        page.evaluate("() => { window.heldTracks = window.parley.localTracks; }")

    button(agent, "End session").click()
    for page in (agent, customer):
        wait_for_state(page, "ended", timeout=20)
        sync_api.expect(page.locator("#status")).to_have_text("Session ended")
        sync_api.expect(page.get_by_role("heading", name="The session has ended")).to_be_visible()
        assert page.evaluate("() => window.heldTracks.every(t => t.readyState === 'ended')")
    assert server.api("GET", f"/api/v1/sessions/{session['session_id']}")["state"] == "ended"
    # ended pages stay ended: no reconnect is scheduled, and coming back online starts none
    attempts = customer.evaluate("() => window.parley.attempts")
    customer.wait_for_function("() => window.parley.ws.readyState === WebSocket.CLOSED")
    customer.evaluate("() => window.dispatchEvent(new Event('online'))")
    assert customer.evaluate("() => [window.parley.state, window.parley.attempts]") == [
        "ended",
        attempts,
    ]


def test_deleting_the_session_through_the_api_ends_the_call(
    server: ParleyServer, open_page: Opener
) -> None:
    session = server.create_session("conv-delete")
    customer = join(open_page, session["customer_url"], "Carl")
    customer.evaluate("() => { window.heldTracks = window.parley.localTracks; }")
    server.api("DELETE", f"/api/v1/sessions/{session['session_id']}")
    wait_for_state(customer, "ended", timeout=20)
    assert customer.evaluate("() => window.heldTracks.every(t => t.readyState === 'ended')")


def test_reload_rejoins_as_the_same_participant(server: ParleyServer, open_page: Opener) -> None:
    session = server.create_session("conv-reload")
    agent = join(open_page, session["agent_url"], "Alice")
    customer = join(open_page, session["customer_url"], "Carl")
    c_id = participant_id(customer)
    wait_for_media(agent, {c_id: AV})

    customer.reload()
    wait_for_state(customer, "connected")
    assert participant_id(customer) == c_id
    sync_api.expect(button(customer, "Leave")).to_be_visible()
    wait_for_media(agent, {c_id: AV}, timeout=30)
    wait_for_media(customer, {participant_id(agent): AV}, timeout=30)
    sync_api.expect(agent.locator(".tile.remote")).to_have_count(1)


def test_page_reconnects_by_itself_when_signaling_drops(
    server: ParleyServer, open_page: Opener
) -> None:
    session = server.create_session("conv-drop")
    agent = join(open_page, session["agent_url"], "Alice")
    customer = join(open_page, session["customer_url"], "Carl")
    c_id = participant_id(customer)
    wait_for_media(agent, {c_id: AV})
    old_pc = customer.evaluate_handle("() => window.parley.pcs.subscribe")

    customer.evaluate("() => window.parley.dropConnection()")
    wait_for_state(customer, "reconnecting", timeout=15)
    sync_api.expect(customer.locator("#status")).to_contain_text("Reconnecting")
    wait_for_state(customer, "connected")
    # only signaling dropped: the page resumed (join + resume), keeping its peer connections
    assert customer.evaluate("old => old === window.parley.pcs.subscribe", old_pc)
    assert participant_id(customer) == c_id
    wait_for_media(agent, {c_id: AV}, timeout=30)
    wait_for_media(customer, {participant_id(agent): AV}, timeout=30)


def test_denied_camera_and_microphone_join_receive_only(
    server: ParleyServer, open_page: Opener
) -> None:
    session = server.create_session("conv-denied")
    agent = join(open_page, session["agent_url"], "Alice")
    customer = open_page(session["customer_url"], init_script=DENY_MEDIA_JS)
    sync_api.expect(customer.locator("#media-message")).to_contain_text("denied")
    customer.get_by_label("Your name").fill("Carl")
    button(customer, "Join").click()
    wait_for_state(customer, "connected")
    wait_for_media(customer, {participant_id(agent): AV})
    sync_api.expect(button(customer, "Mute")).to_be_disabled()
    sync_api.expect(agent.locator(".tile.remote")).to_have_count(1)


def test_console_creates_a_session_with_working_urls(
    server: ParleyServer, open_page: Opener
) -> None:
    console = open_page(f"{server.base_url}/")
    console.get_by_label("API key").fill("test-key")
    console.get_by_label("Conversation id").fill("conv-console")
    button(console, "Start session").click()
    agent_url = console.get_by_label("Agent URL")
    sync_api.expect(agent_url).not_to_have_value("")
    a_url = agent_url.input_value()
    c_url = console.get_by_label("Customer URL").input_value()
    assert a_url.startswith(f"{server.base_url}/join/") and c_url.startswith(
        f"{server.base_url}/join/"
    )
    row = console.locator("#history-body tr")
    sync_api.expect(row).to_have_count(1)
    sync_api.expect(row.locator(".pill")).to_have_text("waiting")
    assert console.evaluate("() => localStorage.getItem('parley.apiKey')") == "test-key"

    # the URLs work: both join and see each other
    agent = join(open_page, a_url, "Alice")
    customer = join(open_page, c_url, "Carl")
    wait_for_media(agent, {participant_id(customer): AV})
    button(console, "Refresh").click()
    sync_api.expect(row.locator(".pill")).to_have_text("active")

    # ending it from the console ends the call
    button(console, "End session").click()
    wait_for_state(customer, "ended", timeout=20)
    sync_api.expect(row.locator(".pill")).to_have_text("ended")

    # a wrong key is reported, not swallowed
    console.get_by_label("API key").fill("wrong")
    button(console, "Start session").click()
    sync_api.expect(console.locator("#console-error")).to_contain_text("API key")

"""Leg rebuild with real Chromium pages against a real `parley serve` (issue 12).

One page's media leg dies under the relay (the page's peer connection goes away: Chromium sends
its DTLS close and then nothing more); the relay notices, sends ``reconnect`` for that leg, and the
page builds a new peer connection for it alone. The other pages keep their connections: the same
tracks from the same producers on the same mids (no renegotiation), no reconnect attempt, nobody
leaves the roster; the third page's media never pauses.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from .browser_support import (
    CHROMIUM,
    ParleyServer,
    chromium_available,
    join_page,
    launch_chromium,
    media_stats,
    participant_id,
    running_server,
    wait_for_media,
)

sync_api = pytest.importorskip("playwright.sync_api")

pytestmark = [
    pytest.mark.browser,
    pytest.mark.timeout(120),
    pytest.mark.skipif(not chromium_available(), reason=f"{CHROMIUM} is not installed"),
]

AV = ("camera", "microphone")


@pytest.fixture(scope="module")
def server() -> Iterator[ParleyServer]:
    with running_server() as s:
        yield s


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with launch_chromium() as b:
        yield b


def frames(page: Any, key: str) -> int:
    stats = media_stats(page)["media"].get(key)
    return int(stats["framesDecoded"]) if stats else 0


def tracks(page: Any) -> list[tuple[str, str, str]]:
    return sorted(
        (t["mid"], t["participant_id"], t["producer_id"])
        for t in page.evaluate("() => window.parley.tracks")
    )


class Sampler:
    """Decoded frames of ``key`` on some pages, sampled by the test's own loop (Playwright's
    sync API: one page at a time), keeping when each count went up."""

    def __init__(self, watched: dict[str, tuple[Any, str]]) -> None:
        self.watched = watched
        self.rises: dict[str, list[float]] = {name: [] for name in watched}
        self.last: dict[str, int] = {name: -1 for name in watched}

    def sample(self) -> None:
        for name, (page, key) in self.watched.items():
            count = frames(page, key)
            if count > self.last[name]:
                self.rises[name].append(time.monotonic())
            self.last[name] = count

    def longest_gap(self, name: str, since: float) -> float:
        times = [t for t in self.rises[name] if t >= since]
        return max((b - a for a, b in zip(times, times[1:], strict=False)), default=0.0)


@pytest.mark.parametrize("leg", ["publish", "subscribe"])
def test_a_dead_leg_of_one_page_is_rebuilt_alone(
    server: ParleyServer, browser: Any, leg: str
) -> None:
    errors: list[str] = []
    session = server.create_session(f"conv-leg-{leg}")
    sue_url = server.api(
        "POST",
        f"/api/v1/sessions/{session['session_id']}/invites",
        {"role": "agent", "name": "Sue"},
    )["url"]
    alice = join_page(browser, session["agent_url"], "Alice", errors)
    carl = join_page(browser, session["customer_url"], "Carl", errors)
    sue = join_page(browser, sue_url, "Sue", errors)
    pages = {"Alice": alice, "Carl": carl, "Sue": sue}
    ids = {name: participant_id(page) for name, page in pages.items()}
    try:
        for name, page in pages.items():
            wait_for_media(page, {ids[o]: AV for o in pages if o != name}, timeout=40)
        before = {
            name: (tracks(page), page.evaluate("() => window.parley.attempts"))
            for name, page in pages.items()
            if name != "Carl"
        }
        carl_attempts = carl.evaluate("() => window.parley.attempts")
        old_pc = carl.evaluate_handle(f"() => window.parley.pcs.{leg}")
        watched = (
            {"Alice <- Carl": (alice, f"{ids['Carl']}/camera")}
            if leg == "publish"
            else {"Carl <- Alice": (carl, f"{ids['Alice']}/camera")}
        )
        watched["Sue <- Alice"] = (sue, f"{ids['Alice']}/camera")
        sampler = Sampler(watched)
        sampler.sample()
        killed_at = time.monotonic()
        carl.evaluate(f"() => window.parley.pcs.{leg}.close()")
        connected_at = None
        first = next(iter(watched))
        for _ in range(400):  # bounded: about 40 s
            sampler.sample()
            if connected_at is None and carl.evaluate(
                f"old => old !== window.parley.pcs.{leg}"
                f" && window.parley.pcs.{leg}.connectionState === 'connected'",
                old_pc,
            ):
                connected_at = time.monotonic()
            if connected_at is not None and sampler.rises[first][-1] > connected_at:
                break
            carl.wait_for_timeout(100)  # lets the page run; not an assertion
        assert connected_at is not None, f"the page never rebuilt its {leg} leg"
        back = [t for t in sampler.rises[first] if t > connected_at]
        assert back, f"no video on {first} after the {leg} leg was rebuilt"
        for _ in range(20):  # two more seconds of samples for the third page
            sampler.sample()
            carl.wait_for_timeout(100)
        print(
            f"\n{leg} leg: new leg connected {connected_at - killed_at:.2f} s after the old one "
            f"died, video on {first} {back[0] - connected_at:.2f} s later; longest gap "
            f"{sampler.longest_gap(first, killed_at):.2f} s; "
            f"Sue's longest gap {sampler.longest_gap('Sue <- Alice', killed_at):.2f} s"
        )
        assert sampler.longest_gap("Sue <- Alice", killed_at) < 2.0
        for name, page in pages.items():
            wait_for_media(page, {ids[o]: AV for o in pages if o != name}, timeout=30)
        # nobody else renegotiated (same producers on the same mids) or reconnected
        after = {
            name: (tracks(page), page.evaluate("() => window.parley.attempts"))
            for name, page in pages.items()
            if name != "Carl"
        }
        assert after == before
        assert carl.evaluate("() => window.parley.attempts") == carl_attempts
        assert carl.evaluate("() => window.parley.state") == "connected"
        assert sorted(
            p["participant_id"] for p in sue.evaluate("() => window.parley.participants")
        ) == sorted([ids["Alice"], ids["Carl"]])
    finally:
        for page in pages.values():
            page.context.close()
    assert errors == []

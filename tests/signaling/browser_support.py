"""Helpers for the real-browser tests: a `parley serve` subprocess and Chromium driven by Playwright.

Everything stays on loopback. Chromium is Debian's /usr/bin/chromium; Playwright never downloads a
browser. All waits are bounded in count and time.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"
API_KEY = "test-key"
REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"

CHROMIUM_ARGS = [
    "--no-sandbox",  # we run as root
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    # fake camera (test pattern) and microphone (beeps), permission prompts auto-accepted
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    # with the two flags above getDisplayMedia is served by a fake "screen" source as well;
    # no tab/desktop auto-select flag is needed headless (see docs/browser.md)
    "--autoplay-policy=no-user-gesture-required",
    # Chromium leaves loopback out of WebRTC's network list: in the tests' loopback-only network
    # namespace it would then gather no candidate at all, not even a TURN relay one
    "--allow-loopback-in-peer-connection",
    # several pages in one browser: keep background pages running at full speed
    "--disable-background-timer-throttling",
    "--disable-renderer-backgrounding",
    "--disable-backgrounding-occluded-windows",
]


def chromium_available() -> bool:
    return shutil.which(CHROMIUM) is not None


def free_port() -> int:
    """A port that is free for both TCP and UDP on 127.0.0.1 (TURN listens on both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = int(tcp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port")


class ServedProcess:
    """A ``parley serve`` subprocess's end and its log (the browser tests' servers and nodes)."""

    proc: subprocess.Popen[bytes] | None
    log_path: Path
    stop_timeout = 10.0
    """How long SIGTERM may take before SIGKILL."""

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(self.stop_timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def join_page(browser: Any, url: str, name: str, errors: list[str]) -> Any:
    """A new page (camera and microphone granted) that joins ``url`` as ``name`` and connects;
    its page errors go to ``errors``."""
    ctx = browser.new_context(permissions=["camera", "microphone"])
    page = ctx.new_page()
    page.on("pageerror", lambda error: errors.append(f"{name}: {error}"))
    page.set_default_timeout(20_000)
    page.goto(url)
    page.get_by_label("Your name").fill(name)
    page.get_by_role("button", name="Join", exact=True).click()
    wait_for_state(page, "connected")
    return page


class ParleyServer(ServedProcess):
    """`python -m parley.signaling serve` as a subprocess, plus a tiny sync client for its HTTP API."""

    def __init__(self, *extra: str) -> None:
        self.port = free_port()
        self.turn_port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = ARTIFACTS / f"parley-serve-{self.port}.log"
        self.extra = list(extra)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        ARTIFACTS.mkdir(exist_ok=True)
        cmd = [
            sys.executable,
            "-m",
            "parley.signaling",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--api-key",
            API_KEY,
            "--public-url",
            self.base_url,
            "--turn-port",
            str(self.turn_port),
            "--media-address",
            "127.0.0.1",
            "--data-dir",  # the store and kept secrets: a fresh folder per server
            tempfile.mkdtemp(prefix="parley-data-"),
            *self.extra,
        ]
        log = open(self.log_path, "wb")  # noqa: SIM115 - closed with the process
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"parley serve exited: {self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.base_url}/healthz", timeout=2) as r:
                    if r.status == 200:
                        return
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.2)
        raise RuntimeError(f"parley serve did not answer /healthz: {self.log_tail()}")

    def api(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            f"{self.base_url}{path}",
            data=data,
            method=method,
            headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            raw = r.read()
            return json.loads(raw) if raw else None

    def create_session(self, conversation_id: str = "conv-browser", **extra: Any) -> dict[str, Any]:
        return dict(
            self.api("POST", "/api/v1/sessions", {"conversation_id": conversation_id, **extra})
        )


@contextlib.contextmanager
def running_server(*extra: str) -> Iterator[ParleyServer]:
    server = ParleyServer(*extra)
    try:
        server.start()
        yield server
    finally:
        server.stop()


# ---------------------------------------------------------------- in-page probes

# Receive statistics of the page's subscribe pc, per remote participant and source.
STATS_JS = """
async () => {
  const p = window.parley;
  const pc = p && p.pcs.subscribe;
  if (!pc) return {state: p ? p.state : null, media: {}};
  const byMid = {};
  for (const t of p.tracks) byMid[t.mid] = t;
  const media = {};
  const report = await pc.getStats();
  report.forEach((s) => {
    if (s.type !== 'inbound-rtp' || s.mid === undefined || !byMid[s.mid]) return;
    const t = byMid[s.mid];
    media[`${t.participant_id}/${t.source}`] = {
      mid: s.mid, kind: s.kind,
      framesDecoded: s.framesDecoded || 0,
      packetsReceived: s.packetsReceived || 0,
      totalAudioEnergy: s.totalAudioEnergy || 0,
      frameWidth: s.frameWidth || 0,
    };
  });
  return {state: p.state, media};
}
"""

# The selected candidate pair of each pc, with the local candidate's type and protocol.
PAIRS_JS = """
async () => {
  const out = {};
  for (const [name, pc] of Object.entries(window.parley.pcs)) {
    if (!pc) continue;
    const report = await pc.getStats();
    let pair = null;
    report.forEach((s) => {
      if (s.type === 'transport' && s.selectedCandidatePairId) pair = report.get(s.selectedCandidatePairId);
    });
    if (!pair) report.forEach((s) => { if (s.type === 'candidate-pair' && s.nominated && s.state === 'succeeded') pair = s; });
    const local = pair && report.get(pair.localCandidateId);
    const remote = pair && report.get(pair.remoteCandidateId);
    out[name] = pair && {
      local: {candidateType: local.candidateType, protocol: local.protocol, relayProtocol: local.relayProtocol, address: local.address},
      remote: {candidateType: remote.candidateType, protocol: remote.protocol, address: remote.address},
      bytesReceived: pair.bytesReceived, bytesSent: pair.bytesSent,
    };
  }
  return out;
}
"""


def media_stats(page: Any) -> dict[str, Any]:
    return dict(page.evaluate(STATS_JS))


def wait_for_state(page: Any, state: str, timeout: float = 30) -> None:
    page.wait_for_function(
        "s => window.parley && window.parley.state === s", arg=state, timeout=timeout * 1000
    )


def _flowing_problems(
    expect: dict[str, tuple[str, ...]], before: dict[str, Any], after: dict[str, Any]
) -> list[str]:
    """What is not flowing yet: each expected track must exist on the same mid in both samples,
    with video ``framesDecoded`` and audio ``packetsReceived`` and ``totalAudioEnergy`` grown."""
    missing = []
    for pid, sources in expect.items():
        for source in sources:
            key = f"{pid}/{source}"
            a, b = before.get(key), after.get(key)
            if not a or not b or a["mid"] != b["mid"]:
                missing.append(f"{key}: no track")
            elif b["kind"] == "video" and not b["framesDecoded"] > a["framesDecoded"] > 0:
                missing.append(f"{key}: frames {a['framesDecoded']}->{b['framesDecoded']}")
            elif b["kind"] == "audio" and not (
                b["packetsReceived"] > a["packetsReceived"] > 0
                and b["totalAudioEnergy"] > a["totalAudioEnergy"]
            ):
                missing.append(
                    f"{key}: packets {a['packetsReceived']}->{b['packetsReceived']}, "
                    f"energy {a['totalAudioEnergy']:.4f}->{b['totalAudioEnergy']:.4f}"
                )
    return missing


def wait_for_media(
    page: Any,
    expect: dict[str, tuple[str, ...]],
    timeout: float = 30,
    poll: float = 0.2,
) -> dict[str, Any]:
    """Wait until, for each participant id in ``expect``, every listed source is flowing: its
    counters (video ``framesDecoded``; audio ``packetsReceived`` and ``totalAudioEnergy``) have
    grown since a first sample that already had the track. Counters are polled; nothing is
    timed. Returns the last sample; raises AssertionError with it on timeout."""
    deadline = time.monotonic() + timeout
    first: dict[str, Any] = {}
    last: dict[str, Any] = {}
    missing: list[str] = ["no sample"]
    for _ in range(int(timeout / poll) + 2):
        sample = media_stats(page)
        media = sample["media"]
        for key, stats in media.items():
            seen = first.get(key)
            if seen is None or seen["mid"] != stats["mid"] or not _started(seen):
                first[key] = stats  # a track that (re)appeared: count from here
        last = {"first": first, "after": sample}
        missing = _flowing_problems(expect, first, media)
        if not missing:
            return sample
        if time.monotonic() > deadline:
            break
        page.wait_for_timeout(poll * 1000)  # lets the page run; not an assertion
    raise AssertionError(f"media not flowing: {missing}; last stats: {json.dumps(last)[:3000]}")


def _started(stats: dict[str, Any]) -> bool:
    return bool(stats["framesDecoded"] if stats["kind"] == "video" else stats["packetsReceived"])


def participant_id(page: Any) -> str:
    return str(page.evaluate("() => window.parley.participantId"))


def live_local_tracks(page: Any) -> list[str]:
    return list(
        page.evaluate(
            "() => window.parley.localTracks.filter(t => t.readyState === 'live').map(t => t.kind)"
        )
    )


@contextlib.contextmanager
def launch_chromium() -> Iterator[Any]:
    """Debian's chromium through Playwright, with the flags every browser test uses."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()

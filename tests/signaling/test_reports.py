"""Session reports from a real call: 5 % loss injected on one leg shows on that leg only, RTT
comes from receiver reports of our sender reports, one relay-only participant is seen on
TURN/TCP, and talk time follows a known pattern (A speaks 6 s, B 3 s, 1 s together)."""

from __future__ import annotations

import asyncio
import csv
import fractions
import io
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy
from aiortc.mediastreams import AudioStreamTrack, MediaStreamError
from aiortc.rtcconfiguration import RTCIceTransportPolicy
from av import AudioFrame

from parley.signaling.config import StoreSettings
from tests.media_client import MediaClient, wait_for
from tests.signaling.conftest import Service, ServiceFactory
from tests.signaling.ws_client import WsParticipant

RATE = 48000
FRAME = 960  # 20 ms


class ScheduledVoice(AudioStreamTrack):
    """Silence, except a loud tone during ``windows`` (seconds after ``start_at``)."""

    def __init__(self, windows: list[tuple[float, float]]) -> None:
        super().__init__()
        self.windows = windows
        self.start_at: float | None = None
        self._count = 0
        self._t0: float | None = None
        tone = 12000 * numpy.sin(2 * numpy.pi * 440 * numpy.arange(FRAME) / RATE)
        self._tone = tone.astype(numpy.int16).reshape(1, -1)
        self._silence = numpy.zeros((1, FRAME), numpy.int16)

    async def recv(self) -> AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._t0 is None:
            self._t0 = time.monotonic()
        wait = self._t0 + self._count * FRAME / RATE - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        now = time.monotonic()
        speaking = self.start_at is not None and any(
            a <= now - self.start_at < b for a, b in self.windows
        )
        frame = AudioFrame.from_ndarray(
            self._tone if speaking else self._silence, format="s16", layout="mono"
        )
        frame.sample_rate = RATE
        frame.pts = self._count * FRAME
        frame.time_base = fractions.Fraction(1, RATE)
        self._count += 1
        return frame


class RelayOnlyParticipant(WsParticipant):
    """Uses TURN only (this participant alone), through the given TURN URLs."""

    def _make_client(self, welcome: dict[str, Any]) -> MediaClient:
        from aiortc import RTCIceServer

        server = welcome["ice_servers"][0]
        urls = self.media_options["turn_urls"]
        return MediaClient(
            self.name,
            ice_servers=[
                RTCIceServer(
                    urls=urls, username=server["username"], credential=server["credential"]
                )
            ],
            policy=RTCIceTransportPolicy.RELAY,
            host_addresses=[],
        )


def drop_every_20th_rtp(client: MediaClient) -> list[int]:
    """5 % loss on the relay -> ``client`` leg: every 20th incoming RTP datagram is dropped
    before SRTP (so RTCP, STUN and DTLS pass)."""
    dropped = [0, 0]
    for transceiver in client.sub.getTransceivers():
        connection = transceiver.receiver.transport.transport._connection
        for protocol in connection._protocols:
            if getattr(protocol, "_test_lossy", False):
                continue
            protocol._test_lossy = True
            stock = protocol.datagram_received

            def lossy(data: bytes, addr: Any, _stock: Any = stock) -> None:
                if len(data) > 12 and 127 < data[0] < 192 and not 191 < data[1] < 224:
                    dropped[0] += 1
                    if dropped[0] % 20 == 0:
                        dropped[1] += 1
                        return
                _stock(data, addr)

            protocol.datagram_received = lossy
    return dropped


async def api(service: Service, path: str) -> Any:
    async with service.http.get(f"{service.base_url}{path}", headers=service.auth()) as response:
        assert response.status == 200, await response.text()
        if response.content_type == "text/csv":
            return await response.text()
        return await response.json()


def legs(report: dict[str, Any], owner: str) -> dict[tuple[str, str], dict[str, Any]]:
    """(kind, leg) -> leg summary of the tracks ``owner`` publishes."""
    (p,) = [p for p in report["participants"] if p["participant_id"] == owner]
    return {(t["kind"], leg["leg"]): leg for t in p["tracks"] for leg in t["legs"]}


async def test_report_shows_loss_rtt_network_path_and_talk_time(
    service_factory: ServiceFactory, tmp_path: Path
) -> None:
    service = await service_factory(
        store=StoreSettings(data_dir=str(tmp_path), report_interval=0.5)
    )
    session = await service.create_session("chat-report")
    sid = session["session_id"]
    probe = WsParticipant(service.base_url, session["agent_url"], "probe")
    welcome = await probe.join(media=False)
    await probe.close()
    tcp_url = next(u for u in welcome["ice_servers"][0]["urls"] if u.endswith("transport=tcp"))

    agent = RelayOnlyParticipant(service.base_url, session["agent_url"], "Ann", turn_urls=[tcp_url])
    customer = WsParticipant(service.base_url, session["customer_url"], "Carl")
    voices = {"Ann": ScheduledVoice([(0.0, 6.0)]), "Carl": ScheduledVoice([(5.0, 8.0)])}
    try:
        for p in (agent, customer):
            assert (await p.join())["type"] == "welcome"
            assert p.client is not None
            p.client.tracks[0] = voices[p.name]
            await p.publish()
        a, c = agent.client, customer.client
        assert a is not None and c is not None
        assert await wait_for(
            lambda: (
                c.frames_from(agent.id, "video") >= 10 and a.frames_from(customer.id, "video") >= 10
            ),
            timeout=20,
        )
        dropped = drop_every_20th_rtp(c)
        start = time.monotonic() + 0.5
        for voice in voices.values():
            voice.start_at = start
        await asyncio.sleep(max(0.0, start + 9.5 - time.monotonic()))  # the pattern plays out
        assert dropped[1] > 20
        async with service.http.delete(
            f"{service.base_url}/api/v1/sessions/{sid}", headers=service.auth()
        ) as r:
            assert r.status == 204
    finally:
        await agent.close()
        await customer.close()

    report = await api(service, f"/api/v1/sessions/{sid}/report")
    if os.environ.get("PARLEY_DUMP_REPORT"):  # for a look at a real report
        await asyncio.to_thread(
            Path(os.environ["PARLEY_DUMP_REPORT"]).write_text, json.dumps(report, indent=1)
        )
    ann = legs(report, agent.id)
    carl = legs(report, customer.id)

    # 5 % loss on the relay -> Carl leg of Ann's tracks, and nowhere else
    lossy = ann[("audio", customer.id)]
    assert 3.0 <= lossy["mean_loss"] <= 7.0, lossy
    for key, leg in [*ann.items(), *carl.items()]:
        if key != ("audio", customer.id) and key != ("video", customer.id):
            assert leg["mean_loss"] is not None and leg["mean_loss"] < 1.0, (key, leg)
    assert ann[("video", customer.id)]["mean_loss"] >= 2.0
    assert lossy["mean_score"] < ann[("audio", "up")]["mean_score"]

    # RTT from receiver reports on every downstream leg
    for key, leg in [*ann.items(), *carl.items()]:
        if key[1] != "up":
            assert leg["mean_rtt_ms"] is not None and 0 < leg["mean_rtt_ms"] < 500, (key, leg)

    # network paths: Ann relay-only over TCP to the embedded TURN server, Carl direct
    paths = {p["name"]: (p["network_path"], p["turn_server"]) for p in report["participants"]}
    assert paths == {"Ann": ("turn-tcp", "embedded"), "Carl": ("host-udp", None)}

    # talk time: Ann 6 s, Carl 3 s, 1 s together
    talk = {p["name"]: p["talk"] for p in report["participants"]}
    assert abs(talk["Ann"]["seconds"] - 6.0) <= 0.5, talk
    assert abs(talk["Carl"]["seconds"] - 3.0) <= 0.5, talk
    assert abs(report["talk"]["overlap_seconds"] - 1.0) <= 0.5, report["talk"]
    assert abs(talk["Ann"]["share"] - 6 / 9) < 0.06

    # video figures the stream shows
    up = [
        s for s in report["samples"] if s["kind"] == "video" and s["leg"] == "up" and s.get("fps")
    ]
    assert up and up[-1]["resolution"] == "320x240" and 20 <= max(s["fps"] for s in up) <= 35
    assert report["summary"]["participants"] == 2 and report["summary"]["worst_score"] is not None
    assert [e["type"] for e in report["timeline"]][:2] == ["session.created", "session.started"]

    # CSV samples and the list
    rows = list(
        csv.DictReader(io.StringIO(await api(service, f"/api/v1/sessions/{sid}/report?format=csv")))
    )
    assert len(rows) == len(report["samples"]) and {"loss", "rtt_ms", "score"} <= set(rows[0])
    listed = await api(service, "/api/v1/reports?conversation_id=chat-report")
    assert [r["session_id"] for r in listed["reports"]] == [sid]
    assert listed["reports"][0]["duration_seconds"] > 9

    metrics = await (await service.http.get(f"{service.base_url}/metrics")).text()
    assert "parley_relay_forward_latency_seconds_bucket" in metrics
    assert 'parley_quality_score_bucket{direction="down",kind="audio"' in metrics
    assert "parley_participants_by_network_path" in metrics


async def test_report_api_checks_its_input(service_factory: ServiceFactory, tmp_path: Path) -> None:
    service = await service_factory(store=StoreSettings(data_dir=str(tmp_path)))
    base = service.base_url
    async with service.http.get(f"{base}/api/v1/reports") as r:
        assert r.status == 401
    for query, code in [
        ("limit=0", "bad_request"),
        ("limit=x", "bad_request"),
        ("from=yesterday", "bad_request"),
        ("cursor=%%%", "bad_request"),
    ]:
        async with service.http.get(f"{base}/api/v1/reports?{query}", headers=service.auth()) as r:
            assert r.status == 400 and (await r.json())["error"]["code"] == code, query
    async with service.http.get(
        f"{base}/api/v1/sessions/s_nope/report", headers=service.auth()
    ) as r:
        assert r.status == 404 and (await r.json())["error"]["code"] == "session_not_found"
    ids = [(await service.create_session(f"chat-{n}"))["session_id"] for n in range(3)]
    page = await api(service, "/api/v1/reports?limit=2&from=2000-01-01T00:00:00Z")
    assert [r["session_id"] for r in page["reports"]] == ids[::-1][:2] and page["next_cursor"]
    rest = await api(service, f"/api/v1/reports?limit=2&cursor={page['next_cursor']}")
    assert [r["session_id"] for r in rest["reports"]] == [ids[0]] and rest["next_cursor"] is None
    assert (await api(service, "/api/v1/reports?to=2000-01-01T00:00:00Z"))["reports"] == []
    async with service.http.get(
        f"{base}/api/v1/sessions/{ids[0]}/report?format=xml", headers=service.auth()
    ) as r:
        assert r.status == 400


async def test_reports_need_the_store(service: Service) -> None:
    async with service.http.get(f"{service.base_url}/api/v1/reports", headers=service.auth()) as r:
        assert r.status == 404

"""``parley bench --fuzz SECONDS``: a bounded live fuzz campaign on loopback (issue 12).

Starts ``parley serve`` (embedded TURN, a media port range), holds one real two-party aiortc call
through it, and for SECONDS sends garbage and mutated valid traffic to the WebSocket, the HTTP
API, the TURN ports (UDP and TCP) and the relay's media ports, at a bounded rate. Then it stops
the service with SIGTERM and reports: whether the process survived, unhandled exceptions in its
log, the video frames the real call lost during the campaign (against a quiet window before it),
and the rejects counted in ``/metrics``. Out of CI: a run is a measurement, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import secrets
import signal
import socket
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiortc import (
    MediaStreamTrack,
    RTCBundlePolicy,
    RTCConfiguration,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.mediastreams import AudioStreamTrack, MediaStreamError, VideoStreamTrack

from parley.relay import _aiortc
from parley.turn import stun

from .service import scrape_metrics

TARGETS = ("ws", "http", "turn-udp", "turn-tcp", "media")
VIDEO_PTS_STEP = 3000  # aiortc's VideoStreamTrack: 30 fps on a 90 kHz clock
QUIET_SECONDS = 5.0
RATE = 400.0
"""Fuzz inputs per second per target (bounded: each fuzzer sleeps between sends)."""
LOG_PROBLEMS = re.compile(r"Traceback|Exception in callback|Task exception| ERROR ")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``--fuzz`` options of ``parley bench`` (called from bench.options)."""
    p.add_argument(
        "--fuzz",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="run a live fuzz campaign this long against a fresh parley serve, beside a real call",
    )
    p.add_argument(
        "--fuzz-targets",
        default=",".join(TARGETS),
        help=f"what to fuzz (default all: {','.join(TARGETS)})",
    )
    p.add_argument("--fuzz-seed", type=int, default=None, help="random seed (default: random)")


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- the service -------------------------------------------------------------------------------


@dataclass
class Service:
    url: str
    api_key: str
    turn_port: int
    media_ports: tuple[int, int]
    proc: asyncio.subprocess.Process
    log_path: str


async def start_service(log_dir: str) -> Service:
    port, turn_port = free_port(), free_port()
    low = random.randrange(20000, 30000, 100)
    media_ports = (low, low + 99)
    api_key = "fuzz_" + secrets.token_urlsafe(12)
    log_path = os.path.join(log_dir, "relay.log")
    log = open(log_path, "ab")  # noqa: SIM115 - handed to the process
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "parley.signaling", "serve",
        "--port", str(port), "--turn-port", str(turn_port), f"--api-key={api_key}",
        "--media-ports", f"{media_ports[0]}-{media_ports[1]}", "--log-level", "INFO",
        stdout=log, stderr=log,
    )  # fmt: skip
    log.close()
    url = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as http:
        for _ in range(200):
            if proc.returncode is not None:
                raise RuntimeError(f"parley serve exited with {proc.returncode} ({log_path})")
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(f"{url}/healthz") as response:
                    if response.status == 200:
                        return Service(url, api_key, turn_port, media_ports, proc, log_path)
            await asyncio.sleep(0.05)
    raise RuntimeError("parley serve did not come up in 10 s")


async def create_session(http: aiohttp.ClientSession, service: Service, name: str) -> Any:
    async with http.post(
        f"{service.url}/api/v1/sessions",
        json={"conversation_id": name},
        headers={"Authorization": f"Bearer {service.api_key}"},
    ) as response:
        if response.status != 201:
            raise RuntimeError(f"creating a session: {response.status}")
        return await response.json()




# --- the real call ---------------------------------------------------------------------------


class CallParticipant:
    """A participant with real aiortc media: publishes aiortc's test video and audio, counts
    the video frames it receives (by presentation timestamp, so gaps are losses)."""

    def __init__(self, http: aiohttp.ClientSession, service: Service, join_url: str) -> None:
        self.http = http
        self.service = service
        self.token = join_url.rsplit("/join/", 1)[1]
        config = RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)
        self.pub = RTCPeerConnection(config)
        self.sub = RTCPeerConnection(config)
        self.video_pts: list[tuple[float, int]] = []
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.welcome: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.answer: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.closed_code: int | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.sub.on("track", self._on_track)

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "video":
            self._tasks.append(asyncio.ensure_future(self._count(track)))

    async def _count(self, track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                self.video_pts.append((time.monotonic(), int(frame.pts or 0)))

    async def join_and_publish(self) -> None:
        ws_url = self.service.url.replace("http://", "ws://") + "/api/v1/ws"
        self.ws = await self.http.ws_connect(ws_url)
        self._tasks.append(asyncio.ensure_future(self._read()))
        await self.ws.send_json({"type": "join", "token": self.token, "name": "probe"})
        await asyncio.wait_for(self.welcome, 15)
        self.pub.addTransceiver(VideoStreamTrack(), direction="sendonly")
        self.pub.addTransceiver(AudioStreamTrack(), direction="sendonly")
        offer = await self.pub.createOffer()
        _aiortc.configure_host_candidates(self.pub, ["127.0.0.1"], None)
        await self.pub.setLocalDescription(offer)
        await self.ws.send_json(
            {"type": "offer", "pc": "publish", "sdp": self.pub.localDescription.sdp}
        )
        answer = await asyncio.wait_for(self.answer, 15)
        await self.pub.setRemoteDescription(RTCSessionDescription(answer, "answer"))

    async def _read(self) -> None:
        assert self.ws is not None
        async for msg in self.ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            message = json.loads(msg.data)
            kind = message.get("type")
            if kind == "welcome" and not self.welcome.done():
                self.welcome.set_result(message)
            elif kind == "answer" and not self.answer.done():
                self.answer.set_result(message["sdp"])
            elif kind == "offer":
                await self.sub.setRemoteDescription(RTCSessionDescription(message["sdp"], "offer"))
                answer = await self.sub.createAnswer()
                _aiortc.configure_host_candidates(self.sub, ["127.0.0.1"], None)
                await self.sub.setLocalDescription(answer)
                await self.ws.send_json(
                    {"type": "answer", "pc": "subscribe", "sdp": self.sub.localDescription.sdp}
                )
        self.closed_code = self.ws.close_code

    def lost_frames(self, start: float, end: float) -> tuple[int, int]:
        """(received, missing) video frames whose arrival fell in [start, end)."""
        pts = [p for t, p in self.video_pts if start <= t < end]
        if len(pts) < 2:
            return len(pts), 0
        expected = (max(pts) - min(pts)) // VIDEO_PTS_STEP + 1
        return len(set(pts)), max(0, expected - len(set(pts)))

    async def close(self) -> None:
        if self.ws is not None:
            with contextlib.suppress(Exception):
                await self.ws.close()
        for task in self._tasks:
            task.cancel()
        for pc in (self.pub, self.sub):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(pc.close(), 5)


# --- mutators ----------------------------------------------------------------------------------


def mutate(rng: random.Random, data: bytes) -> bytes:
    """A few random byte edits: flip, insert, delete, truncate, duplicate a slice."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(5)
        pos = rng.randrange(len(out) + 1)
        if op == 0 and out:
            out[min(pos, len(out) - 1)] ^= 1 << rng.randrange(8)
        elif op == 1:
            out[pos:pos] = rng.randbytes(rng.randint(1, 8))
        elif op == 2 and out:
            del out[pos : pos + rng.randint(1, 8)]
        elif op == 3:
            del out[pos:]
        else:
            out[pos:pos] = out[pos : pos + rng.randint(1, 16)]
    return bytes(out)


def stun_seeds(rng: random.Random) -> list[bytes]:
    tid = rng.randbytes(12)
    return [
        stun.Message(stun.BINDING, stun.REQUEST, tid, {}).encode(None, fingerprint=True),
        stun.Message(
            stun.ALLOCATE, stun.REQUEST, tid, {stun.REQUESTED_TRANSPORT: 17, stun.LIFETIME: 600}
        ).encode(None, fingerprint=True),
        stun.Message(
            stun.ALLOCATE,
            stun.REQUEST,
            tid,
            {
                stun.REQUESTED_TRANSPORT: 17,
                stun.USERNAME: "1:x",
                stun.REALM: "parley",
                stun.NONCE: "A" * 16,
            },
        ).encode(b"k" * 16, fingerprint=True),
        bytes.fromhex("4000000400000000"),  # ChannelData
    ]


def media_seed(rng: random.Random) -> bytes:
    kind = rng.randrange(5)
    if kind == 0:
        return b""
    if kind == 1:  # STUN binding with a malformed PRIORITY
        return (
            bytes.fromhex("000100082112a442")
            + rng.randbytes(12)
            + bytes.fromhex("00240002abcd0000")
        )
    if kind == 2:  # DTLS-looking record
        return bytes([22, 254, 253]) + rng.randbytes(rng.randint(0, 60))
    if kind == 3:  # RTP-looking packet
        return bytes([0x80, rng.randrange(128)]) + rng.randbytes(rng.randint(0, 200))
    return rng.randbytes(rng.randint(1, 300))


# --- fuzzers -----------------------------------------------------------------------------------


@dataclass
class Tally:
    sent: Counter[str] = field(default_factory=Counter)
    answers: Counter[str] = field(default_factory=Counter)


async def _pace(rng: random.Random) -> None:
    await asyncio.sleep(rng.expovariate(RATE))


async def fuzz_websocket(
    rng: random.Random, service: Service, join_url: str, offer: str, deadline: float, tally: Tally
) -> None:
    token = join_url.rsplit("/join/", 1)[1]
    ws_url = service.url.replace("http://", "ws://") + "/api/v1/ws"
    good = [
        json.dumps({"type": "join", "token": token, "name": "fuzz"}),
        json.dumps({"type": "offer", "pc": "publish", "sdp": offer, "sources": {}}),
        json.dumps({"type": "answer", "pc": "subscribe", "sdp": offer}),
        json.dumps({"type": "leave"}),
    ]
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            try:
                async with http.ws_connect(
                    ws_url, timeout=aiohttp.ClientWSTimeout(ws_close=2)
                ) as ws:
                    reader = asyncio.ensure_future(_drain(ws, tally))
                    try:
                        while not ws.closed and time.monotonic() < deadline:
                            choice = rng.randrange(6)
                            if choice == 0:
                                await ws.send_bytes(rng.randbytes(rng.randint(0, 200)))
                            elif choice == 1:
                                text = mutate(rng, rng.choice(good).encode()).decode(
                                    errors="replace"
                                )
                                await ws.send_str(text)
                            elif choice == 2:
                                await ws.send_str(rng.choice("[{") * rng.randint(1, 100_000))
                            elif choice == 3:
                                await ws.send_str(rng.choice(good))
                            elif choice == 4:
                                await ws.send_str(
                                    json.dumps({"type": "join", "token": "\ud800" + token})
                                )
                            else:
                                await ws.send_str(json.dumps(
                                    {"type": rng.choice(["offer", "join", "end", "x"]),
                                     "pc": "publish", "sdp": mutate(rng, offer.encode()).decode(errors="replace")}
                                ))  # fmt: skip
                            tally.sent["ws"] += 1
                            await _pace(rng)
                    finally:
                        reader.cancel()
            except (aiohttp.ClientError, ConnectionError, TimeoutError, RuntimeError):
                tally.answers["ws:connection-refused-or-reset"] += 1
                await asyncio.sleep(0.05)


async def _drain(ws: aiohttp.ClientWebSocketResponse, tally: Tally) -> None:
    async for msg in ws:
        if msg.type == aiohttp.WSMsgType.TEXT:
            with contextlib.suppress(ValueError):
                message = json.loads(msg.data)
                tally.answers[f"ws:{message.get('type')}:{message.get('code', '')}"] += 1
    tally.answers[f"ws:closed:{ws.close_code}"] += 1


async def fuzz_http(rng: random.Random, service: Service, deadline: float, tally: Tally) -> None:
    paths = ["/api/v1/sessions", "/api/v1/sessions/s_x/invites", "/api/v1/sessions/s_x",
             "/api/v1/conversations/c/sessions", "/join/x", "/metrics", "/healthz", "/static/../x"]  # fmt: skip
    body = json.dumps({"conversation_id": "fuzz", "max_participants": 2}).encode()
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            path = rng.choice(paths)
            if rng.random() < 0.3:
                path = mutate(rng, path.encode()).decode(errors="ignore") or "/"
            headers = {"Content-Type": "application/json"}
            if rng.random() < 0.5:
                headers["Authorization"] = rng.choice(
                    [f"Bearer {service.api_key}", "Bearer x", "Basic x", ""]
                )
            data = (
                mutate(rng, body) if rng.random() < 0.8 else rng.randbytes(rng.randint(0, 100_000))
            )
            try:
                async with http.request(
                    rng.choice(["GET", "POST", "DELETE", "PUT"]), service.url + "/" + path.lstrip("/"),
                    data=data, headers=headers, timeout=aiohttp.ClientTimeout(total=5),
                ) as response:  # fmt: skip
                    tally.answers[f"http:{response.status}"] += 1
            except (aiohttp.ClientError, TimeoutError, ValueError):
                tally.answers["http:error"] += 1
            tally.sent["http"] += 1
            await _pace(rng)


class _Sink(asyncio.DatagramProtocol):
    def __init__(self, tally: Tally, label: str) -> None:
        self.tally, self.label = tally, label

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.tally.answers[f"{self.label}:answered"] += 1


async def fuzz_datagrams(
    rng: random.Random,
    label: str,
    ports: tuple[int, int],
    seed: Any,
    deadline: float,
    tally: Tally,
) -> None:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(
        lambda: _Sink(tally, label), local_addr=("127.0.0.1", 0)
    )
    try:
        while time.monotonic() < deadline:
            data = seed(rng)
            if rng.random() < 0.7:
                data = mutate(rng, data) if data else data
            transport.sendto(data, ("127.0.0.1", rng.randint(*ports)))
            tally.sent[label] += 1
            await _pace(rng)
    finally:
        transport.close()


async def fuzz_turn_tcp(
    rng: random.Random, service: Service, deadline: float, tally: Tally
) -> None:
    while time.monotonic() < deadline:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", service.turn_port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        try:
            for _ in range(rng.randint(1, 20)):
                frame = rng.choice(stun_seeds(rng))
                if rng.random() < 0.5:
                    frame = mutate(rng, frame)
                cut = rng.randint(0, len(frame))
                writer.write(frame[:cut])
                await writer.drain()
                writer.write(frame[cut:])
                await writer.drain()
                tally.sent["turn-tcp"] += 1
                await _pace(rng)
            with contextlib.suppress(TimeoutError):
                data = await asyncio.wait_for(reader.read(65536), 0.2)
                tally.answers["turn-tcp:" + ("answered" if data else "closed")] += 1
        except (ConnectionError, OSError, RuntimeError):  # RuntimeError: uvloop, closed
            tally.answers["turn-tcp:reset"] += 1
        finally:
            writer.close()


# --- the campaign ------------------------------------------------------------------------------


async def campaign(seconds: float, targets: set[str], seed: int, log_dir: str) -> dict[str, Any]:
    rng = random.Random(seed)
    service = await start_service(log_dir)
    tally = Tally()
    result: dict[str, Any] = {"seed": seed, "seconds": seconds, "targets": sorted(targets)}
    a: CallParticipant | None = None
    b: CallParticipant | None = None
    try:
        async with aiohttp.ClientSession() as http:
            call = await create_session(http, service, "fuzz-call")
            target = await create_session(http, service, "fuzz-target")
            a = CallParticipant(http, service, call["agent_url"])
            b = CallParticipant(http, service, call["customer_url"])
            await a.join_and_publish()
            await b.join_and_publish()
            await asyncio.sleep(2.0)  # media settles
            quiet_start = time.monotonic()
            await asyncio.sleep(QUIET_SECONDS)
            quiet_end = time.monotonic()
            before = await scrape_metrics(http, service.url)
            offer = a.pub.localDescription.sdp
            deadline = time.monotonic() + seconds
            fuzzers = []
            if "ws" in targets:
                fuzzers.append(
                    fuzz_websocket(rng, service, target["agent_url"], offer, deadline, tally)
                )
            if "http" in targets:
                fuzzers.append(fuzz_http(rng, service, deadline, tally))
            if "turn-udp" in targets:
                fuzzers.append(fuzz_datagrams(
                    rng, "turn-udp", (service.turn_port, service.turn_port),
                    lambda r: r.choice(stun_seeds(r)), deadline, tally,
                ))  # fmt: skip
            if "turn-tcp" in targets:
                fuzzers.append(fuzz_turn_tcp(rng, service, deadline, tally))
            if "media" in targets:
                fuzzers.append(
                    fuzz_datagrams(rng, "media", service.media_ports, media_seed, deadline, tally)
                )
            fuzz_start = time.monotonic()
            await asyncio.gather(*fuzzers)
            fuzz_end = time.monotonic()
            after = await scrape_metrics(http, service.url)
            result["alive_after_fuzzing"] = service.proc.returncode is None
            result["call"] = {}
            for name, p in (("agent", a), ("customer", b)):
                quiet = p.lost_frames(quiet_start, quiet_end)
                fuzzed = p.lost_frames(fuzz_start, fuzz_end)
                result["call"][name] = {
                    "quiet_received": quiet[0], "quiet_missing": quiet[1],
                    "fuzz_received": fuzzed[0], "fuzz_missing": fuzzed[1],
                    "signaling_closed": p.closed_code,
                }  # fmt: skip
            result["metrics_delta"] = {
                k: after[k] - before.get(k, 0.0)
                for k in sorted(after)
                if after[k] != before.get(k, 0.0)
                and any(w in k for w in ("rate_limited", "malformed", "unauthenticated", "auth_fail", "dropped", "reject"))
            }  # fmt: skip
    finally:
        for participant in (a, b):
            if participant is not None:
                await participant.close()
        stopped = time.monotonic()
        if service.proc.returncode is None:
            service.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(service.proc.wait(), 15)
            except TimeoutError:
                service.proc.kill()
                await service.proc.wait()
        result["exit_code"] = service.proc.returncode
        result["exit_seconds"] = round(time.monotonic() - stopped, 2)
    with open(service.log_path, errors="replace") as log:
        problems = [line.rstrip() for line in log if LOG_PROBLEMS.search(line)]
    result["log_problems"] = len(problems)
    result["log_problem_samples"] = problems[:10]
    result["sent"] = dict(tally.sent)
    result["answers"] = dict(tally.answers.most_common(25))
    result["log"] = service.log_path
    return result


def report(result: dict[str, Any]) -> str:
    lines = [
        f"fuzz campaign: {result['seconds']:.0f} s, seed {result['seed']}, "
        f"targets {','.join(result['targets'])}",
        f"  inputs sent        {sum(result['sent'].values())}  {result['sent']}",
        f"  service survived   {result.get('alive_after_fuzzing')}; exit code "
        f"{result['exit_code']} after SIGTERM in {result['exit_seconds']} s",
        f"  log problems       {result['log_problems']} (tracebacks, ERROR lines)",
    ]
    for name, call in result.get("call", {}).items():
        lines.append(
            f"  real call {name:9s} quiet window: {call['quiet_received']} frames, "
            f"{call['quiet_missing']} missing; fuzzed: {call['fuzz_received']} frames, "
            f"{call['fuzz_missing']} missing"
        )
    lines.append(f"  rejects in /metrics {result.get('metrics_delta')}")
    for sample in result["log_problem_samples"]:
        lines.append(f"    {sample[:160]}")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    targets = {t.strip() for t in args.fuzz_targets.split(",") if t.strip()}
    unknown = targets - set(TARGETS)
    if unknown:
        print(f"parley bench: unknown fuzz targets {sorted(unknown)}", file=sys.stderr)
        return 2
    seed = args.fuzz_seed if args.fuzz_seed is not None else random.randrange(1 << 30)
    log_dir = tempfile.mkdtemp(prefix="parley-fuzz-")
    try:
        import uvloop

        result = uvloop.run(campaign(args.fuzz, targets, seed, log_dir))
    except ImportError:  # pragma: no cover
        result = asyncio.run(campaign(args.fuzz, targets, seed, log_dir))
    print(report(result))
    if args.json:
        path = args.json if args.json != "bench-results.json" else "fuzz-results.json"
        with open(path, "w") as f:
            json.dump(result, f, indent=2)
        print(f"results: {path}; log: {result['log']}")
    clean = (
        result.get("alive_after_fuzzing")
        and result["log_problems"] == 0
        and all(c["fuzz_missing"] == 0 for c in result.get("call", {}).values())
    )
    return 0 if clean else 1

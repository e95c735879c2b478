"""The transcoding baseline: a minimal SFU built on aiortc's ``MediaRelay`` (every video is
decoded once and re-encoded by every subscriber's ``RTCRtpSender``), as aiortc's examples do.

HTTP on loopback: ``POST /publish {"key", "sdp"}`` and ``POST /subscribe {"source", "sdp"}``
(the subscriber's recvonly offer) answer with ``{"sdp"}``. Run as
``python -m parley.bench.mediarelay --port P``; ``parley bench --baseline N`` starts it.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from typing import Any

from aiohttp import web
from aiortc import (
    MediaStreamTrack,
    RTCBundlePolicy,
    RTCConfiguration,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.contrib.media import MediaRelay

from parley.relay import _aiortc

PCS = web.AppKey("pcs", set)
TRACKS = web.AppKey("tracks", dict)
RELAY = web.AppKey("relay", MediaRelay)


def _pc() -> RTCPeerConnection:
    return RTCPeerConnection(
        RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)
    )


async def _answer(pc: RTCPeerConnection, sdp: str) -> str:
    await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
    answer = await pc.createAnswer()
    _aiortc.configure_host_candidates(pc, ["127.0.0.1"], None)
    await pc.setLocalDescription(answer)
    return str(pc.localDescription.sdp)


async def publish(request: web.Request) -> web.Response:
    body: dict[str, Any] = await request.json()
    pc = _pc()
    request.app[PCS].add(pc)
    tracks: dict[str, asyncio.Future[MediaStreamTrack]] = request.app[TRACKS]
    future = tracks.setdefault(body["key"], asyncio.get_running_loop().create_future())

    @pc.on("track")
    def on_track(track: MediaStreamTrack) -> None:
        if track.kind == "video" and not future.done():
            future.set_result(track)

    return web.json_response({"sdp": await _answer(pc, body["sdp"])})


async def subscribe(request: web.Request) -> web.Response:
    body: dict[str, Any] = await request.json()
    tracks: dict[str, asyncio.Future[MediaStreamTrack]] = request.app[TRACKS]
    future = tracks.setdefault(body["source"], asyncio.get_running_loop().create_future())
    track = await asyncio.wait_for(asyncio.shield(future), 20)
    pc = _pc()
    request.app[PCS].add(pc)
    await pc.setRemoteDescription(RTCSessionDescription(sdp=body["sdp"], type="offer"))
    # buffered=False: a slow encoder drops frames instead of queueing them without bound
    pc.addTrack(request.app[RELAY].subscribe(track, buffered=False))
    answer = await pc.createAnswer()
    _aiortc.configure_host_candidates(pc, ["127.0.0.1"], None)
    await pc.setLocalDescription(answer)
    return web.json_response({"sdp": pc.localDescription.sdp})


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _cleanup(app: web.Application) -> None:
    await asyncio.gather(*(pc.close() for pc in app[PCS]), return_exceptions=True)


def create_app() -> web.Application:
    app = web.Application()
    app[PCS] = set()
    app[TRACKS] = {}
    app[RELAY] = MediaRelay()
    app.router.add_post("/publish", publish)
    app.router.add_post("/subscribe", subscribe)
    app.router.add_get("/healthz", healthz)
    app.on_shutdown.append(_cleanup)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import uvloop

    uvloop.install()
    web.run_app(create_app(), host="127.0.0.1", port=args.port, print=None)


if __name__ == "__main__":
    main()

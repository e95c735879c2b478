"""``/metrics`` in the Prometheus text format (prometheus-client), collected on scrape.

One registry per app (``REGISTRY``): the relay's collector below, and the embedded TURN
server's own collector (``parley.turn.metrics.TurnCollector``, registered by the TURN server
into this registry when it starts), so every TURN metric is published once, with its type.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, GCCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from parley.relay import _aiortc

from .reports import ReportCollector
from .sessions import SessionManager

REGISTRY = web.AppKey("metrics_registry", CollectorRegistry)


class RelayCollector:
    def __init__(self, manager: SessionManager, app: web.Application) -> None:
        self.manager = manager
        self.app = app

    def collect(self) -> Iterator[Any]:
        sessions = GaugeMetricFamily("parley_sessions", "Sessions by state", labels=["state"])
        states = {"waiting": 0, "active": 0, "ended": 0}
        participants = 0
        rx_packets = rx_bytes = tx_packets = tx_bytes = nacks = rtx = plis = 0
        for session in self.manager.sessions.values():
            states[session.state] += 1
            participants += len(session.connected())
            for peer in session.router.peers.values():
                for producer in peer.producers:
                    rx_packets += producer.packets
                    rx_bytes += producer.octets
                    plis += producer.keyframe_requests
                for consumer in peer.subscribe.consumers.values():
                    tx_packets += consumer.packets
                    tx_bytes += consumer.octets
                    nacks += consumer.nacked
                    rtx += consumer.retransmitted
        for state, count in states.items():
            sessions.add_metric([state], count)
        yield sessions
        yield GaugeMetricFamily("parley_participants", "Connected participants", value=participants)
        try:
            tasks = len(asyncio.all_tasks())
        except RuntimeError:  # no running loop (collected outside the service)
            tasks = 0
        yield GaugeMetricFamily(
            "parley_asyncio_tasks", "Tasks of the service's event loop (leak checks)", value=tasks
        )
        for name, doc, value in (
            (
                "parley_rtp_received_packets",
                "RTP packets received from publishers (live)",
                rx_packets,
            ),
            ("parley_rtp_received_bytes", "RTP payload bytes received (live)", rx_bytes),
            (
                "parley_rtp_forwarded_packets",
                "RTP packets forwarded to subscribers (live)",
                tx_packets,
            ),
            ("parley_rtp_forwarded_bytes", "RTP payload bytes forwarded (live)", tx_bytes),
            ("parley_nack_requested_packets", "Packets subscribers NACKed (live)", nacks),
            ("parley_rtx_sent_packets", "Retransmissions sent (live)", rtx),
            ("parley_keyframe_requests", "PLIs sent to publishers (live)", plis),
        ):
            yield GaugeMetricFamily(name, doc, value=value)
        rejected = CounterMetricFamily(
            "parley_media_rejected_datagrams",
            "Datagrams the relay's media sockets dropped (empty, malformed STUN) or failed on",
            labels=["reason"],
        )
        for reason, count in _aiortc.DATAGRAMS.as_dict().items():
            rejected.add_metric([reason], count)
        yield rejected
        consent = CounterMetricFamily(
            "parley_ice_consent_checks",
            "The relay's own ICE consent checks (RFC 7675): sent, answered, and connections "
            "closed because consent expired",
            labels=["result"],
        )
        stats = _aiortc.DATAGRAMS
        for result, count in (
            ("sent", stats.consent_sent),
            ("answered", stats.consent_answered),
            ("expired", stats.consent_expired),
        ):
            consent.add_metric([result], count)
        yield consent


def register(manager: SessionManager, app: web.Application) -> CollectorRegistry:
    """The app's registry, with the relay's collector (call in ``create_app``, before the
    embedded TURN server starts and registers its own collector into it)."""
    registry = CollectorRegistry()
    registry.register(RelayCollector(manager, app))
    registry.register(ReportCollector(app))  # issue 9: latency, scores, network paths
    GCCollector(registry=registry)  # python_gc_*: the interpreter's garbage collections
    app[REGISTRY] = registry
    return registry


async def handler(request: web.Request) -> web.Response:
    registry = request.app.get(REGISTRY)
    body = generate_latest(registry) if registry is not None else b""
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

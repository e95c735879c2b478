"""Counters named like coturn's Prometheus metrics, and an optional prometheus_client collector.

The hot path increments plain integer slots on :class:`Counters`; Prometheus reads them only at
scrape time through :func:`register_prometheus`, so relaying pays nothing for metrics.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

logger = logging.getLogger(__name__)

#: name -> (help, kind) ; kind "counter" or "gauge"
METRICS: dict[str, tuple[str, str]] = {
    "turn_total_allocations": ("Allocations currently active", "gauge"),
    "turn_allocations_created": ("Allocations created since start", "counter"),
    "turn_allocations_expired": ("Allocations that timed out", "counter"),
    "turn_traffic_rcvp": ("Packets received from clients (relayed data)", "counter"),
    "turn_traffic_rcvb": ("Bytes received from clients (relayed data)", "counter"),
    "turn_traffic_sentp": ("Packets sent to clients (relayed data)", "counter"),
    "turn_traffic_sentb": ("Bytes sent to clients (relayed data)", "counter"),
    "turn_traffic_peer_rcvp": ("Packets received from peers", "counter"),
    "turn_traffic_peer_rcvb": ("Bytes received from peers", "counter"),
    "turn_traffic_peer_sentp": ("Packets sent to peers", "counter"),
    "turn_traffic_peer_sentb": ("Bytes sent to peers", "counter"),
    "turn_dropped_packets": (
        "Relay packets dropped (no permission/channel, bandwidth cap)",
        "counter",
    ),
    "turn_auth_failures": ("Requests refused with 401", "counter"),
    "turn_peer_refused": ("Peers refused by the peer policy (403)", "counter"),
    "turn_malformed_messages": ("Messages that failed to parse", "counter"),
}


class Counters:
    """Plain integer counters; attribute names are the metric names without ``turn_``."""

    __slots__ = (
        "total_allocations",
        "allocations_created",
        "allocations_expired",
        "traffic_rcvp",
        "traffic_rcvb",
        "traffic_sentp",
        "traffic_sentb",
        "traffic_peer_rcvp",
        "traffic_peer_rcvb",
        "traffic_peer_sentp",
        "traffic_peer_sentb",
        "dropped_packets",
        "auth_failures",
        "peer_refused",
        "malformed_messages",
    )

    def __init__(self) -> None:
        self.total_allocations = 0
        self.allocations_created = 0
        self.allocations_expired = 0
        self.traffic_rcvp = 0
        self.traffic_rcvb = 0
        self.traffic_sentp = 0
        self.traffic_sentb = 0
        self.traffic_peer_rcvp = 0
        self.traffic_peer_rcvb = 0
        self.traffic_peer_sentp = 0
        self.traffic_peer_sentb = 0
        self.dropped_packets = 0
        self.auth_failures = 0
        self.peer_refused = 0
        self.malformed_messages = 0

    def as_dict(self) -> dict[str, int]:
        return {f"turn_{name}": getattr(self, name) for name in self.__slots__}


class TurnCollector:
    """A prometheus_client collector reading ``stats()`` at scrape time, with the types of
    :data:`METRICS` (a counter ``turn_x`` is exposed as ``turn_x_total``)."""

    def __init__(self, stats: Callable[[], dict[str, int]]) -> None:
        self._stats = stats

    def _families(self, values: dict[str, int]) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        for name, (help_text, kind) in METRICS.items():
            family = GaugeMetricFamily if kind == "gauge" else CounterMetricFamily
            yield family(name, help_text, value=values.get(name, 0))

    def collect(self) -> Iterator[Any]:
        return self._families(self._stats())

    def describe(self) -> Iterator[Any]:
        # the names without calling stats(), so a registry can refuse a duplicate
        return self._families({})


def register_prometheus(stats: Callable[[], dict[str, int]], registry: Any = None) -> Any:
    """Register a :class:`TurnCollector` for ``stats()`` if prometheus_client is importable.

    Returns the collector (for :func:`unregister_prometheus`) or None when prometheus_client is
    missing. ``registry`` defaults to prometheus_client's default REGISTRY.
    """
    try:
        from prometheus_client import REGISTRY
    except ImportError:  # pragma: no cover - dependency of the project, but optional here
        return None

    collector = TurnCollector(stats)
    (registry if registry is not None else REGISTRY).register(collector)
    return collector


def unregister_prometheus(collector: Any, registry: Any = None) -> None:
    if collector is None:
        return
    from prometheus_client import REGISTRY

    try:
        (registry if registry is not None else REGISTRY).unregister(collector)
    except KeyError:  # already gone
        logger.debug("prometheus collector was not registered")

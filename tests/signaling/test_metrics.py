"""``/metrics``: exact names and types, every TURN metric once (from the TURN server's own
collector in the app's registry), counters that count."""

from __future__ import annotations

import asyncio
import os
import socket

from prometheus_client.parser import text_string_to_metric_families

from parley.signaling.keys import TURN_SERVER
from parley.turn import stun
from parley.turn.metrics import METRICS
from tests.signaling.conftest import Service

TURN_TYPES = {
    "turn_total_allocations": "gauge",
    "turn_allocations_created": "counter",
    "turn_allocations_expired": "counter",
    "turn_traffic_rcvp": "counter",
    "turn_traffic_rcvb": "counter",
    "turn_traffic_sentp": "counter",
    "turn_traffic_sentb": "counter",
    "turn_traffic_peer_rcvp": "counter",
    "turn_traffic_peer_rcvb": "counter",
    "turn_traffic_peer_sentp": "counter",
    "turn_traffic_peer_sentb": "counter",
    "turn_dropped_packets": "counter",
    "turn_auth_failures": "counter",
    "turn_peer_refused": "counter",
    "turn_malformed_messages": "counter",
}
RELAY_TYPES = {
    "parley_sessions": "gauge",
    "parley_participants": "gauge",
    "parley_asyncio_tasks": "gauge",
    "parley_rtp_received_packets": "gauge",
    "parley_rtp_received_bytes": "gauge",
    "parley_rtp_forwarded_packets": "gauge",
    "parley_rtp_forwarded_bytes": "gauge",
    "parley_nack_requested_packets": "gauge",
    "parley_rtx_sent_packets": "gauge",
    "parley_keyframe_requests": "gauge",
    "parley_media_rejected_datagrams": "counter",
    "parley_ice_consent_checks": "counter",
    "parley_rate_limited": "counter",
    "parley_relay_forward_latency_seconds": "histogram",
}
PROCESS_TYPES = {  # prometheus_client's GCCollector: the interpreter's garbage collections
    "python_gc_objects_collected": "counter",
    "python_gc_objects_uncollectable": "counter",
    "python_gc_collections": "counter",
}


async def scrape(service: Service) -> str:
    async with service.http.get(f"{service.base_url}/metrics") as response:
        assert response.status == 200
        return await response.text()


def families(text: str) -> dict[str, tuple[str, dict[str, float]]]:
    """name -> (type, {sample name with labels: value})"""
    out = {}
    for family in text_string_to_metric_families(text):
        samples = {
            s.name + "".join(f"{{{k}={v}}}" for k, v in sorted(s.labels.items())): s.value
            for s in family.samples
        }
        assert family.name not in out, f"{family.name} is published twice"
        out[family.name] = (family.type, samples)
    return out


async def test_metrics_have_exact_names_and_types_and_turn_is_published_once(
    service: Service,
) -> None:
    await service.create_session()
    text = await scrape(service)
    found = families(text)

    assert set(TURN_TYPES) == set(METRICS)  # this table follows turn/metrics.py
    assert {n: t for n, (t, _) in found.items()} == {**RELAY_TYPES, **TURN_TYPES, **PROCESS_TYPES}
    for name, kind in TURN_TYPES.items():
        sample = name + "_total" if kind == "counter" else name
        assert list(found[name][1]) == [sample], found[name]
        assert text.count(f"# TYPE {sample} {kind}\n") == 1
    assert "turn_total_allocations_total" not in text
    assert found["parley_sessions"][1]["parley_sessions{state=waiting}"] == 1
    assert set(found["parley_media_rejected_datagrams"][1]) == {
        f"parley_media_rejected_datagrams_total{{reason={r}}}"
        for r in ("empty", "malformed_stun", "errors")
    }
    assert set(found["parley_ice_consent_checks"][1]) == {
        f"parley_ice_consent_checks_total{{result={r}}}" for r in ("sent", "answered", "expired")
    }


async def test_turn_counters_count_what_the_embedded_server_does(service: Service) -> None:
    before = families(await scrape(service))["turn_auth_failures"][1]["turn_auth_failures_total"]
    server = service.app[TURN_SERVER]
    allocate = stun.Message(
        method=stun.ALLOCATE,
        cls=stun.REQUEST,
        transaction_id=os.urandom(12),
        attributes={stun.REQUESTED_TRANSPORT: 17},
    ).encode()
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        await loop.sock_sendto(sock, allocate, ("127.0.0.1", server.udp_port))
        reply = await asyncio.wait_for(loop.sock_recv(sock, 2048), 5)
    assert stun.parse(reply).cls == stun.ERROR  # 401: no credentials

    async def failures() -> float:
        found = families(await scrape(service))
        return found["turn_auth_failures"][1]["turn_auth_failures_total"]

    assert await failures() == before + 1

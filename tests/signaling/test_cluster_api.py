"""The HTTP API and webhooks of a two-node cluster (real redis-server, PostgreSQL, aiortc
participants): every session request works through either node (GET, invites, recording,
reports, DELETE, forwarded to the node holding the session); each webhook event is delivered
once although both nodes deliver from the same outbox; SIGTERM drains a node: it leaves the
registry at once and its participants are back on the other node within 10 s."""

from __future__ import annotations

import asyncio
import collections
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.media_client import wait_for
from tests.signaling.cluster_support import (
    NODE_A,
    Cluster,
    call_on,
    create,
    create_on,
    in_call,
    running_cluster,
    shared_secrets,
    wait_until,
)
from tests.signaling.postgres_server import create_database, postgres_server  # noqa: F401
from tests.signaling.store_serve import RejoiningParticipant
from tests.signaling.webhook_receiver import Receiver, webhook_receiver


@pytest.fixture
async def hooked(
    tmp_path: Path,
    postgres_server: str,  # noqa: F811
) -> AsyncIterator[tuple[Cluster, Receiver]]:
    """Two nodes that both send webhooks to one receiver."""
    secret_file = tmp_path / "a" / "webhook-secret"
    # the receiver needs the secret before the nodes start: make the shared files first
    shared_secrets(tmp_path / "a", tmp_path / "b")
    secret = secret_file.read_text().strip()
    async with webhook_receiver(secret, fail_for=0) as receiver:
        async with running_cluster(
            tmp_path,
            create_database(postgres_server),
            "--webhook-url",
            receiver.url,
        ) as nodes:
            yield nodes, receiver


async def test_every_request_works_on_either_node_and_each_event_is_sent_once(
    hooked: tuple[Cluster, Receiver],
) -> None:
    cluster, receiver = hooked
    a, b = cluster.a, cluster.b
    people: list[RejoiningParticipant] = []
    async with aiohttp.ClientSession() as http:
        try:
            session = await create_on(http, a, b)
            sid = session["session_id"]
            async with http.post(
                f"{a.base_url}/api/v1/sessions/{sid}/invites",
                json={"role": "customer", "name": "Second"},
                headers=a.auth(),
            ) as r:
                assert r.status == 201, await r.text()
                assert (await r.json())["url"].startswith(a.base_url + "/join/")  # asked on A

            p1 = RejoiningParticipant(a.base_url, session["agent_url"], "Ann")
            p2 = RejoiningParticipant(b.base_url, session["customer_url"], "Carl")
            people = [p1, p2]
            for p in people:
                p.start()
            assert await wait_for(lambda: in_call(p1, p2), timeout=40)

            for action in ("start", "stop"):
                async with http.post(
                    f"{a.base_url}/api/v1/sessions/{sid}/recording",
                    json={"action": action},
                    headers=a.auth(),
                ) as r:
                    assert r.status == 200, await r.text()

            async def listed() -> bool:
                async with http.get(
                    f"{a.base_url}/api/v1/sessions/{sid}/recordings", headers=a.auth()
                ) as r:
                    assert r.status == 200, await r.text()
                    return len((await r.json())["recordings"]) >= 1

            assert await wait_until(listed, 15)  # the files are on B; listed through A
            for node in (a, b):
                async with http.get(
                    f"{node.base_url}/api/v1/sessions/{sid}/report", headers=node.auth()
                ) as r:
                    assert r.status == 200, await r.text()
                    assert (await r.json())["session"]["session_id"] == sid
                async with http.get(
                    f"{node.base_url}/api/v1/sessions/{sid}", headers=node.auth()
                ) as r:
                    assert r.status == 200 and (await r.json())["state"] == "active"

            async with http.delete(f"{a.base_url}/api/v1/sessions/{sid}", headers=a.auth()) as r:
                assert r.status == 204, await r.text()
            for p in people:  # done with the pages (the end reached them with 4002 or a message)
                await p.close()

            async def state_ended() -> bool:
                async with http.get(f"{b.base_url}/api/v1/sessions/{sid}", headers=b.auth()) as r:
                    return r.status == 200 and (await r.json())["state"] == "ended"

            assert await wait_until(state_ended, 10)

            def ended() -> bool:
                return "session.ended" in receiver.by_session().get(sid, [])

            assert await wait_for(ended, timeout=20)
            # both nodes deliver from the outbox: a duplicate would come within a poll or two
            await asyncio.sleep(3)
            counts = collections.Counter(receiver.attempts)
            assert counts and max(counts.values()) == 1, counts
            types = collections.Counter(receiver.by_session()[sid])
            assert types["session.created"] == 1 and types["session.ended"] == 1, types
            assert types["participant.joined"] == 2, types
            assert receiver.bad_signatures == 0
        finally:
            for p in people:
                await p.close()


async def test_sigterm_drains_a_node_onto_the_other(tmp_path: Path, postgres_server: str) -> None:  # noqa: F811
    async with running_cluster(tmp_path, create_database(postgres_server)) as cluster:
        a, b = cluster.a, cluster.b
        async with aiohttp.ClientSession() as http, call_on(http, a, b) as (_, p1, p2):
            assert b.proc is not None
            b.proc.send_signal(signal.SIGTERM)
            drained_at = time.monotonic()

            async def b_left() -> bool:
                return len((await a.health(http))["cluster"]["nodes"]) == 1

            assert await wait_until(b_left, 4)  # deregistered, not waiting for the expiry
            assert await wait_for(lambda: p1.joins >= 2 and p2.joins >= 2, timeout=10)
            assert await wait_for(lambda: in_call(p1, p2, frames=5), timeout=15)
            assert time.monotonic() - drained_at < 10.0
            async with await create(http, a, "after-drain") as r:
                assert r.status == 201
                assert (await r.json())["agent_url"].startswith(f"http://{NODE_A}:")
            async with asyncio.timeout(20):
                await b.proc.wait()
            assert b.proc.returncode == 0, b.output.decode()[-3000:]

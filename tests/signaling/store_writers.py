"""``python -m tests.signaling.store_writers DB_FOLDER JOINS``: one process's share of a join
burst on a shared SQLite store, as a media worker writes it (the session, the participant, its
connection, the joined event with its webhook outbox row, the network path, quality samples),
all joins at once while the event loop is kept busy the way aiortc's work keeps a loaded
worker's loop busy. Prints ``ok N`` or ``errors N: first error``; exits 1 on errors."""

from __future__ import annotations

import asyncio
import sys
import time
import uuid

from parley.signaling.store import Store, database_url

BUSY_SLICE = 0.05
"""Seconds the loop computes without yielding, between short yields."""


async def keep_loop_busy(stop: asyncio.Event) -> None:
    while not stop.is_set():
        started = time.perf_counter()
        while time.perf_counter() - started < BUSY_SLICE:
            pass
        await asyncio.sleep(0.005)


async def join(store: Store, session_id: str, number: int) -> None:
    now = time.time()
    await store.save_session(
        {
            "id": session_id,
            "conversation_id": "burst",
            "created_at": now,
            "expires_at": now + 3600,
            "started_at": now,
            "ended_at": None,
            "end_reason": None,
            "settings": {"max_participants": 4},
        }
    )
    participant = f"p_{number}_{uuid.uuid4().hex[:8]}"
    await store.save_participant(
        {
            "session_id": session_id,
            "participant_id": participant,
            "role": "agent" if number % 2 else "customer",
            "name": f"P{number}",
            "joined_at": now,
            "left_at": None,
            "network_path": None,
            "turn_server": None,
        }
    )
    connection = await store.add_connection(
        {
            "session_id": session_id,
            "participant_id": participant,
            "joined_at": now,
            "left_at": None,
            "user_agent": "burst",
            "signaling": "websocket",
        }
    )
    await store.add_event(
        {
            "id": uuid.uuid4().hex,
            "session_id": session_id,
            "type": "participant.joined",
            "created_at": now,
            "payload": {"participant_id": participant},
        },
        ["http://127.0.0.1:9/hook"],
        now,
    )
    await store.set_network_path(session_id, participant, connection, "host-udp", "")
    await store.add_samples(
        [
            {
                "session_id": session_id,
                "participant_id": participant,
                "track_id": "t",
                "kind": "video",
                "leg": "up",
                "at": now + i,
                "score": 4.0,
                "data": {},
            }
            for i in range(5)
        ]
    )


async def main(folder: str, joins: int) -> int:
    store = await Store.open(database_url(folder))
    stop = asyncio.Event()
    busy = asyncio.ensure_future(keep_loop_busy(stop))
    tag = uuid.uuid4().hex[:6]
    try:
        results = await asyncio.gather(
            *(join(store, f"s_{tag}_{i // 2}", i) for i in range(joins)), return_exceptions=True
        )
    finally:
        stop.set()
        await busy
        await store.close()
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        print(f"errors {len(errors)}: {errors[0]!r}", flush=True)
        return 1
    print(f"ok {joins}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1], int(sys.argv[2]))))

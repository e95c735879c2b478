"""Signed webhooks from a persistent outbox.

Every event (``session.created``, ``session.started``, ``participant.joined``,
``participant.left``, ``recording.started``, ``recording.ready``, ``session.ended``) is stored
in the ``events`` table together with one ``webhook_deliveries`` row per configured URL, in one
transaction (:meth:`Webhooks.emit`). The :class:`Deliverer` POSTs the head of each (URL, session)
queue, so a receiver sees a session's events in order; a 2xx marks the row delivered (never
sent again), anything else is retried with exponential backoff until the retry window (72 h by
default) has passed. Rows survive restarts, so nothing is lost while a receiver or parley is down.

Signing follows Standard Webhooks (standardwebhooks.com): headers ``webhook-id`` (the event id,
the same on every retry), ``webhook-timestamp`` (Unix seconds) and ``webhook-signature``
``v1,<base64 HMAC-SHA256(key, id.timestamp.body)>``; the secret is ``whsec_`` + base64 of the key.

Recording (another issue) emits its two events through :meth:`Webhooks.emit` with
``type="recording.started"`` / ``"recording.ready"`` and a ``data={"recording": {...}}`` object.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import hmac
import json
import logging
import random
import secrets
import time
import uuid
from collections.abc import Callable
from typing import Any

import aiohttp

from .config import StoreSettings
from .store import Store

logger = logging.getLogger(__name__)

EVENT_TYPES = (
    "session.created",
    "session.started",
    "participant.joined",
    "participant.left",
    "recording.started",
    "recording.ready",
    "session.ended",
)
SECRET_PREFIX = "whsec_"
POLL_INTERVAL = 30.0
"""Longest sleep of the deliverer when nothing wakes it (another machine may have added rows)."""


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def secret_key(secret: str) -> bytes:
    """The HMAC key of a ``whsec_...`` secret (the prefix is optional)."""
    body = secret[len(SECRET_PREFIX) :] if secret.startswith(SECRET_PREFIX) else secret
    try:
        key = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("the webhook secret must be whsec_ followed by base64") from exc
    if len(key) < 16:
        raise ValueError("the webhook secret must hold at least 16 bytes")
    return key


def sign(key: bytes, message_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def headers(key: bytes, message_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(key, message_id, timestamp, body),
        "User-Agent": "parley-webhooks",
    }


def iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts * 1000) % 1000:03d}Z"


def backoff(attempts: int, base: float, maximum: float) -> float:
    """Seconds before retry number ``attempts`` (1, 2, ...): base·2^(n-1), capped, ±10 %."""
    delay = min(maximum, base * (2 ** min(attempts - 1, 30)))
    return delay * random.uniform(0.9, 1.1)


class Webhooks:
    """Stores events and their outbox rows; wakes the deliverer."""

    def __init__(
        self, store: Store, settings: StoreSettings, clock: Callable[[], float] = time.time
    ) -> None:
        self.store = store
        self.urls = settings.webhook_urls
        self.clock = clock
        self.wake = asyncio.Event()

    async def emit(
        self,
        type: str,
        session: dict[str, Any],
        participant: dict[str, Any] | None = None,
        data: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Record one event (and queue it for every webhook URL); returns the payload."""
        if type not in EVENT_TYPES:
            raise ValueError(f"unknown event type {type!r}")
        now = self.clock()
        event_id = "evt_" + uuid.uuid4().hex
        payload: dict[str, Any] = {
            "id": event_id,
            "type": type,
            "created_at": iso(now),
            "session": session,
        }
        if participant is not None:
            payload["participant"] = participant
        if data:
            payload.update(data)
        await self.store.add_event(
            {
                "id": event_id,
                "session_id": session["session_id"],
                "type": type,
                "created_at": now,
                "payload": payload,
            },
            self.urls,
            now,
        )
        if self.urls:
            self.wake.set()
        return payload


class Deliverer:
    """Sends due outbox rows, oldest first, one at a time per (URL, session)."""

    def __init__(
        self,
        store: Store,
        settings: StoreSettings,
        wake: asyncio.Event,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.settings = settings
        self.key = secret_key(settings.webhook_secret) if settings.webhook_secret else b""
        self.wake = wake
        self.clock = clock
        self.sent = 0
        self.failed = 0
        self._task: asyncio.Task[None] | None = None
        self._http: aiohttp.ClientSession | None = None

    def start(self) -> None:
        self._http = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.settings.webhook_timeout),
        )
        self._task = asyncio.ensure_future(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self._http is not None:
            await self._http.close()

    async def _run(self) -> None:
        while True:
            self.wake.clear()
            try:
                now = self.clock()
                due = await self.store.due_deliveries(now)
                due = await self.store.claim(due, now + self.settings.webhook_timeout + 5.0)
                if due:
                    await asyncio.gather(*(self._deliver(row) for row in due))
                    continue  # the next events of those sessions may be due now
                next_at = await self.store.next_delivery_at()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.warning("webhooks: the outbox could not be read", exc_info=True)
                next_at = self.clock() + 5.0
            delay = POLL_INTERVAL if next_at is None else next_at - self.clock()
            delay = max(0.05, min(POLL_INTERVAL, delay))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), delay)

    async def _deliver(self, row: dict[str, Any]) -> None:
        assert self._http is not None
        body = json.dumps(row["payload"], separators=(",", ":"), sort_keys=True).encode()
        now = self.clock()
        status: int | None = None
        error = ""
        try:
            async with self._http.post(
                row["url"], data=body, headers=headers(self.key, row["event_id"], int(now), body)
            ) as response:
                status = response.status
                await response.read()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            error = f"{type(exc).__name__}: {exc}"[:300]
        if status is not None and 200 <= status < 300:
            await self.store.delivery_done(row["id"], self.clock(), status)
            self.sent += 1
            logger.debug("webhooks: %s %s delivered", row["event_type"], row["event_id"])
            return
        self.failed += 1
        attempts = int(row["attempts"]) + 1
        settings = self.settings
        retry_at = now + backoff(
            attempts, settings.webhook_backoff_base, settings.webhook_backoff_max
        )
        abandon = retry_at - row["created_at"] > settings.webhook_retry_window
        if abandon:
            logger.warning(
                "webhooks: giving up on %s %s after %d attempts",
                row["event_type"],
                row["event_id"],
                attempts,
            )
        else:
            logger.info(
                "webhooks: %s for %s failed (%s), attempt %d, retry in %.0f s",
                row["event_type"],
                _host(row["url"]),
                status if status is not None else error.split(":")[0],
                attempts,
                retry_at - now,
            )
        await self.store.delivery_failed(
            row["id"],
            next_attempt_at=retry_at,
            status=status,
            error=error or f"HTTP {status}",
            abandon_at=now if abandon else None,
        )


def _host(url: str) -> str:
    # receivers may put a token in the path or query: log only the host
    from urllib.parse import urlparse

    return urlparse(url).netloc

"""A real webhook receiver (aiohttp) that answers 503 until it "recovers", and verifies every
request with the off-the-shelf Standard Webhooks library, as a chat backend would."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from standardwebhooks.webhooks import Webhook, WebhookVerificationError


@dataclass
class Receiver:
    secret: str
    fail_until: float
    """Monotonic time before which every request is answered 503."""

    url: str = ""
    attempts: list[str] = field(default_factory=list)
    """webhook-id of every request, failed or not."""
    accepted: list[dict[str, Any]] = field(default_factory=list)
    """Payloads answered 2xx, in arrival order."""
    bad_signatures: int = 0

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        headers = {k.lower(): v for k, v in request.headers.items()}
        try:
            payload = Webhook(self.secret).verify(body, headers)
        except WebhookVerificationError:
            self.bad_signatures += 1
            return web.Response(status=400)
        self.attempts.append(headers["webhook-id"])
        if time.monotonic() < self.fail_until:
            return web.Response(status=503)
        assert payload == json.loads(body)
        self.accepted.append(payload)
        return web.Response(status=204)

    def by_session(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for p in self.accepted:
            out.setdefault(p["session"]["session_id"], []).append(p["type"])
        return out


@asynccontextmanager
async def webhook_receiver(secret: str, fail_for: float) -> AsyncIterator[Receiver]:
    receiver = Receiver(secret=secret, fail_until=time.monotonic() + fail_for)
    app = web.Application()
    app.router.add_post("/hooks/parley", receiver.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    receiver.url = f"http://127.0.0.1:{port}/hooks/parley"
    try:
        yield receiver
    finally:
        await runner.cleanup()

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from parley.relay.config import MediaConfig
from parley.signaling.app import create_app
from parley.signaling.config import ServiceConfig, TurnSettings

API_KEY = "test-api-key"


def make_config(**overrides: Any) -> ServiceConfig:
    base = ServiceConfig(
        host="127.0.0.1",
        port=0,
        api_key=API_KEY,
        token_secret=b"0123456789abcdef0123456789abcdef",
        media=MediaConfig(addresses=("127.0.0.1",)),
        turn=TurnSettings(port=0, secret="turn-test-secret", relay_ports=None),
    )
    return replace(base, **overrides)


class Service:
    """A running parley app on loopback and an HTTP client for its API."""

    def __init__(self, server: TestServer, http: aiohttp.ClientSession) -> None:
        self.server = server
        self.http = http
        self.base_url = str(server.make_url("")).rstrip("/")

    @property
    def app(self) -> Any:
        return self.server.app

    def auth(self, key: str = API_KEY) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"}

    async def create_session(self, conversation_id: str = "chat-1", **body: Any) -> dict[str, Any]:
        async with self.http.post(
            f"{self.base_url}/api/v1/sessions",
            json={"conversation_id": conversation_id, **body},
            headers=self.auth(),
        ) as response:
            assert response.status == 201, await response.text()
            return dict(await response.json())

    async def invite(self, session_id: str, role: str, name: str = "") -> str:
        async with self.http.post(
            f"{self.base_url}/api/v1/sessions/{session_id}/invites",
            json={"role": role, "name": name},
            headers=self.auth(),
        ) as response:
            assert response.status == 201, await response.text()
            return str((await response.json())["url"])


ServiceFactory = Callable[..., Any]


@pytest.fixture
async def service_factory() -> AsyncIterator[ServiceFactory]:
    started: list[tuple[TestServer, aiohttp.ClientSession]] = []

    async def start(**overrides: Any) -> Service:
        config = make_config(**overrides)
        server = TestServer(create_app(config), host="127.0.0.1", port=0)
        await server.start_server()
        http = aiohttp.ClientSession()
        started.append((server, http))
        return Service(server, http)

    yield start
    for server, http in started:
        await http.close()
        await server.close()


@pytest.fixture
async def service(service_factory: ServiceFactory) -> Service:
    return await service_factory()

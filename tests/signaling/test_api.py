"""The HTTP API contract: sessions, invites, history, errors."""

from __future__ import annotations

from parley.relay import accel
from tests.signaling.conftest import Service


async def test_create_session_returns_join_urls_and_expiry(service: Service) -> None:
    body = await service.create_session("conv-42", max_participants=3)
    assert body["session_id"].startswith("s_")
    assert body["conversation_id"] == "conv-42"
    assert "/join/" in body["agent_url"] and "/join/" in body["customer_url"]
    assert body["agent_url"] != body["customer_url"]
    assert body["expires_at"].endswith("Z")
    async with service.http.get(
        f"{service.base_url}/api/v1/sessions/{body['session_id']}", headers=service.auth()
    ) as response:
        assert response.status == 200
        session = await response.json()
    assert session["state"] == "waiting"
    assert session["participants"] == []
    assert session["conversation_id"] == "conv-42"


async def test_api_rejects_missing_and_wrong_keys_with_401(service: Service) -> None:
    url = f"{service.base_url}/api/v1/sessions"
    async with service.http.post(url, json={"conversation_id": "c"}) as response:
        assert response.status == 401
        assert (await response.json())["error"]["code"] == "unauthorized"
    async with service.http.post(
        url, json={"conversation_id": "c"}, headers=service.auth("wrong")
    ) as response:
        assert response.status == 401
    async with service.http.get(f"{url}/s_nothing") as response:
        assert response.status == 401


async def test_unknown_session_is_404(service: Service) -> None:
    for method, path in (
        ("GET", "/api/v1/sessions/s_unknown"),
        ("DELETE", "/api/v1/sessions/s_unknown"),
        ("POST", "/api/v1/sessions/s_unknown/invites"),
    ):
        async with service.http.request(
            method, service.base_url + path, json={"role": "agent"}, headers=service.auth()
        ) as response:
            assert response.status == 404, path
            assert (await response.json())["error"]["code"] == "session_not_found"


async def test_malformed_bodies_get_400_with_a_clear_code(service: Service) -> None:
    url = f"{service.base_url}/api/v1/sessions"
    headers = {**service.auth(), "Content-Type": "application/json"}
    async with service.http.post(url, data="{not json", headers=headers) as response:
        assert response.status == 400
        assert (await response.json())["error"]["code"] == "invalid_json"
    async with service.http.post(url, json=["a"], headers=headers) as response:
        assert response.status == 400
    async with service.http.post(url, json={"conversation_id": ""}, headers=headers) as response:
        assert response.status == 400
        assert (await response.json())["error"]["code"] == "bad_request"
    async with service.http.post(
        url, json={"conversation_id": "c", "max_participants": 99}, headers=headers
    ) as response:
        assert response.status == 400
    session = await service.create_session()
    async with service.http.post(
        f"{url}/{session['session_id']}/invites", json={"role": "admin"}, headers=headers
    ) as response:
        assert response.status == 400


async def test_invites_and_conversation_history(service: Service) -> None:
    first = await service.create_session("conv-h")
    second = await service.create_session("conv-h")
    await service.create_session("other")
    url = await service.invite(first["session_id"], "agent", "Supervisor Sue")
    assert "/join/" in url
    async with service.http.delete(
        f"{service.base_url}/api/v1/sessions/{first['session_id']}", headers=service.auth()
    ) as response:
        assert response.status == 204
    async with service.http.get(
        f"{service.base_url}/api/v1/conversations/conv-h/sessions", headers=service.auth()
    ) as response:
        assert response.status == 200
        history = (await response.json())["sessions"]
    assert [s["session_id"] for s in history] == [first["session_id"], second["session_id"]]
    assert [s["state"] for s in history] == ["ended", "waiting"]
    async with service.http.post(
        f"{service.base_url}/api/v1/sessions/{first['session_id']}/invites",
        json={"role": "customer"},
        headers=service.auth(),
    ) as response:
        assert response.status == 410
        assert (await response.json())["error"]["code"] == "session_ended"


async def test_healthz_and_metrics(service: Service) -> None:
    async with service.http.get(f"{service.base_url}/healthz") as response:
        assert response.status == 200
        health = await response.json()
    assert health["packet_path"] == accel.IMPLEMENTATION in ("compiled", "python")
    assert health["srtp"] == accel.SRTP_CRYPTO in ("openssl", "system libsrtp2", "pylibsrtp")
    assert health["srtp_gcm"] == accel.SRTP_GCM in ("parley", "libsrtp", "pylibsrtp")
    await service.create_session()
    async with service.http.get(f"{service.base_url}/metrics") as response:
        assert response.status == 200
        text = await response.text()
    assert 'parley_sessions{state="waiting"} 1.0' in text
    assert "turn_total_allocations 0.0" in text  # exact names and types: test_metrics.py
    assert 'python_gc_collections_total{generation="2"}' in text

"""CLI flags -> TurnConfig, config validation, and `python -m parley.turn` as a real process."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import sys
from pathlib import Path

import pytest

from parley.turn import stun
from parley.turn.cli import add_arguments, config_from_args
from parley.turn.config import TurnConfig
from parley.turn.errors import ConfigError
from tests.turn.client import TurnTestClient

ROOT = Path(__file__).resolve().parent.parent.parent


def parse(argv: list[str]) -> TurnConfig:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return config_from_args(parser.parse_args(argv))


def test_flags_build_the_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PARLEY_TURN_SECRET", raising=False)
    cfg = parse([
        "--turn-host", "127.0.0.1", "--turn-port", "3479", "--turn-secret", "s1",
        "--turn-secret", "s2", "--turn-realm", "example.org", "--turn-relay-address", "127.0.0.2",
        "--turn-relay-ports", "49160-49999", "--turn-allow-peer", "10.0.0.5/32",
        "--turn-allow-peer", "10.0.0.6", "--turn-user", "alice:pw:with:colons",
    ])  # fmt: skip
    assert (cfg.host, cfg.port, cfg.tls_port, cfg.tls_enabled) == ("127.0.0.1", 3479, 5349, False)
    assert cfg.secrets == ("s1", "s2") and cfg.realm == "example.org"
    assert (cfg.relay_address, cfg.relay_port_min, cfg.relay_port_max) == (
        "127.0.0.2",
        49160,
        49999,
    )
    assert cfg.allowed_peers == ("10.0.0.5/32", "10.0.0.6")
    assert cfg.users == (("alice", "pw:with:colons"),)
    assert not cfg.general_relay and cfg.software is None


def test_secret_from_environment_and_default_allow_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARLEY_TURN_SECRET", "from-env")
    cfg = parse(["--turn-relay-address", "192.0.2.7", "--turn-general-relay"])
    assert cfg.secrets == ("from-env",)
    assert cfg.allowed_peers == ("192.0.2.7",) and cfg.general_relay


@pytest.mark.parametrize(
    "kwargs",
    [
        {"secrets": (), "users": ()},
        {"tls_cert": "c.pem"},
        {"relay_port_min": 5000, "relay_port_max": 4000},
        {"allowed_peers": ("not-a-network",)},
        {"port": 70000},
        {"default_lifetime": 7200},
        {"host": "localhost"},
    ],
)
def test_invalid_config_is_refused(kwargs: dict[str, object]) -> None:
    base: dict[str, object] = {"users": (("a", "b"),)}
    base.update(kwargs)
    with pytest.raises(ConfigError):
        TurnConfig(**base)  # type: ignore[arg-type]


@pytest.mark.timeout(30)
async def test_python_m_turn_serves_and_stops_on_sigterm() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "parley.turn", "--turn-port", str(port), "--turn-user", "alice:s3cret",
        "--turn-relay-ports", "0-0", "--log-level", "INFO",
        cwd=ROOT, env=env, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        for _ in range(100):
            try:
                _, w = await asyncio.open_connection("127.0.0.1", port)
                w.close()
                break
            except OSError:
                await asyncio.sleep(0.05)
        async with TurnTestClient(("127.0.0.1", port), "alice", "s3cret", "tcp") as client:
            resp = await client.allocate()
            assert resp.cls == stun.SUCCESS
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 10)
    assert proc.returncode == 0
    log = err.decode()
    assert "created relay" in log and "TURN server closed" in log
    assert "s3cret" not in log  # passwords never logged

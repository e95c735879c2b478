"""The issue-12 flags of ``parley serve``: parsed into the config (flags and environment), and
``--metrics-listen`` moving ``/metrics`` off the API port of a real process."""

from __future__ import annotations

import argparse
import signal

import aiohttp
import pytest

from parley.signaling.cli import add_serve_arguments, config_from_args, resolve_serve_options
from tests.signaling.test_cli import free_port
from tests.signaling.test_hardening_shutdown import start_serve


def parse(argv: list[str]) -> argparse.Namespace:
    """Flags and the (monkeypatched) environment, resolved as ``parley serve`` does."""
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    return resolve_serve_options(parser.parse_args(argv)).namespace()


def test_flags_and_environment_reach_the_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARLEY_METRICS_TOKEN", "from-env")
    monkeypatch.setenv("PARLEY_TRUST_PROXY", "1")
    monkeypatch.setenv("PARLEY_JOIN_TIMEOUT", "4")
    config, _ = config_from_args(
        parse(
            [
                "--api-key=k",
                "--shutdown-timeout",
                "3",
                "--sessions-per-minute",
                "5",
                "--joins-per-minute",
                "0",
                "--messages-per-second",
                "7",
                "--metrics-listen",
                "127.0.0.1:9100",
            ]
        )  # fmt: skip
    )
    assert (config.shutdown_timeout, config.join_timeout) == (3.0, 4.0)
    assert (config.sessions_per_minute, config.joins_per_minute) == (5.0, 0.0)
    assert config.messages_per_second == 7.0
    assert config.metrics_token == "from-env" and config.trust_proxy
    assert (config.metrics_host, config.metrics_port) == ("127.0.0.1", 9100)
    for name in ("PARLEY_METRICS_TOKEN", "PARLEY_TRUST_PROXY", "PARLEY_JOIN_TIMEOUT"):
        monkeypatch.delenv(name)
    defaults, _ = config_from_args(parse(["--api-key=k"]))
    assert defaults.metrics_port == 0 and not defaults.trust_proxy
    assert defaults.base_url.startswith("http://")


@pytest.mark.parametrize(
    "argv",
    [["--metrics-listen", "nowhere"], ["--join-timeout", "0"], ["--messages-per-second", "-1"]],
)
def test_bad_values_are_refused(argv: list[str]) -> None:
    with pytest.raises(ValueError):
        config_from_args(parse(["--api-key=k", *argv]))


async def test_metrics_listen_serves_metrics_only_there() -> None:
    metrics_port = free_port()
    proc, base, _ = await start_serve(
        "--turn-port", "0", "--metrics-listen", f"127.0.0.1:{metrics_port}"
    )
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/metrics") as response:
                assert response.status == 404
            async with http.get(f"http://127.0.0.1:{metrics_port}/metrics") as response:
                assert response.status == 200
                assert "parley_sessions" in await response.text()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await proc.wait() == 0

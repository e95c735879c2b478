"""The default ``--workers`` (issue 11): one media worker per core; ``--workers 1`` keeps the
single process; the default falls back to one process, said in the banner notes, where workers
cannot run."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest

from parley.signaling import cli, options
from parley.signaling.config import ServiceConfig


@pytest.fixture(autouse=True)
def _in_a_temporary_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the default data directory ./parley-data lands there


def config(*argv: str) -> tuple[ServiceConfig, list[str]]:
    parser = argparse.ArgumentParser()
    cli.add_serve_arguments(parser)
    resolved = options.resolve(parser.parse_args([*argv, "--api-key", "k"]), {})
    return cli.config_from_args(resolved.namespace())


def cores() -> int:
    return min(64, os.cpu_count() or 1)


def test_the_default_is_one_worker_per_core_and_one_keeps_one_process() -> None:
    assert options.resolve(argparse.Namespace(), {}).values["workers"] == 0
    service, notes = config()
    assert service.workers == cores()
    assert not any(n.startswith("one process") for n in notes) or cores() == 1
    assert config("--workers", "1")[0].workers == 1
    assert config("--workers", "0")[0].workers == cores()


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="one core: one process anyway")
@pytest.mark.parametrize(
    ("argv", "reason"),
    [
        (["--port", "0"], "need a fixed --port"),
        (["--data-dir", ""], "need the store"),
    ],
)
def test_the_default_falls_back_to_one_process_and_says_why(argv: list[str], reason: str) -> None:
    service, notes = config(*argv)
    assert service.workers == 1
    assert any(n.startswith("one process") and reason in n for n in notes), notes

"""The side-by-side run (bench/sidebyside.py) at N = 1 for a few seconds: a real Janus 1.1.2
VideoRoom (Debian's ``janus``, set up by scripts/setup.sh) and a real ``parley serve`` forward
the same one-way synthetic VP8 pair. Timings are never asserted: only that packets flowed
through both servers with little loss and that every figure came out positive."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from parley.bench import netns, sidebyside

needs_janus = pytest.mark.skipif(
    shutil.which("janus") is None,
    reason="the janus binary is missing: scripts/setup.sh test installs Debian's janus",
)

FIGURES = (
    "server_cpu_pct",
    "server_cpu_us_per_packet",
    "server_rss_mb",
    "publisher_cpu_pct",
    "subscriber_cpu_pct",
    "delivered_pps",
)


@needs_janus
@pytest.mark.skipif(os.geteuid() != 0, reason="the run makes a network namespace: needs root")
@pytest.mark.timeout(120)
def test_parley_and_janus_forward_the_same_pair_and_every_figure_is_measured(
    tmp_path: Path,
) -> None:
    out = tmp_path / "sidebyside.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "parley.bench.sidebyside",
            "-n",
            "1",
            "--duration",
            "3",
            "--warmup",
            "1",
            "--json",
            str(out),
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=110,  # generous: the machine may be loaded; the run bounds its own waits
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    rows = {row["server"]: row for row in result["rows"]}
    assert set(rows) == {"direct", "parley", "janus"}, result["rows"]
    for server in ("direct", "parley", "janus"):
        m = rows[server]["measurement"]
        assert m["notes"] == [], m["notes"]
        assert m["streams_flowing"] == m["streams"] == 1, m
        # 1 Mbit/s at 30 fps: 4 packets a frame, 120 packets/s, for 3 s
        assert m["sent"] > 200 and m["delivered"] > 200, m
        assert m["loss_pct"] < 5.0, m
        assert set(m["latency_ms"]) == {"p50", "p95", "p99", "max"}, m
        assert m["latency_ms"]["p50"] > 0, m
        assert m["steal_pct"] is not None and 0.0 <= m["steal_pct"] <= 100.0, m
    for server in ("parley", "janus"):
        m = rows[server]["measurement"]
        for figure in FIGURES:
            assert m[figure] is not None and m[figure] > 0, (server, figure, m)
        assert set(rows[server]["added_ms"]) == {"p50", "p95", "p99", "max"}
        assert rows[server]["server_threads"] > 1  # Janus: its own and one per handle
    assert "janus" in result["markdown_table"] and "1.1.2" in result["janus_version"]


@needs_janus
def test_janus_config_loads_only_the_videoroom_and_http_on_loopback(tmp_path: Path) -> None:
    from parley.bench.janus import write_config

    conf = Path(write_config(str(tmp_path), 18088))
    assert sorted(p.name for p in (tmp_path / "plugins").iterdir()) == ["libjanus_videoroom.so"]
    assert sorted(p.name for p in (tmp_path / "transports").iterdir()) == ["libjanus_http.so"]
    http = (conf / "janus.transport.http.jcfg").read_text()
    assert 'ip = "127.0.0.1"' in http and "port = 18088" in http
    assert f'ice_enforce_list = "{netns.JANUS_INTERFACE}"' in (conf / "janus.jcfg").read_text()


def test_unknown_server_is_refused() -> None:
    with pytest.raises(SystemExit):
        sidebyside.build_parser().parse_args(["--servers", "parley,mediasoup"])

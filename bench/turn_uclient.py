"""Server CPU per relayed packet and loss: parley's ``turn`` vs coturn, identical turnutils_uclient.

Method (docs/turn.md, turn-anchors.md §4): for each server, start a fresh process on loopback, run a
small warm-up, then the measured ``turnutils_uclient`` command; read the server's utime+stime from
``/proc/<pid>/stat`` around the measured run. Every round trip crosses the server twice (client →
peer and back), so CPU per relayed packet = CPU seconds / (2 × received messages). Servers alternate
A/B for ``--repeat`` rounds. Usage::

    python bench/turn_uclient.py                      # TCP, 100 clients x 1000 msgs x 170 B, 20 ms
    python bench/turn_uclient.py --throughput         # TCP, 20 x 20000 x 1000 B, 1 ms (-z 1)
    python bench/turn_uclient.py --udp --repeat 3
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
REALM, USER, PASSWORD = "bench.local", "alice", "s3cret"


def free_port(pair: bool = False) -> int:
    for _ in range(100):
        with socket.socket() as t, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            t.bind(("127.0.0.1", 0))
            port = t.getsockname()[1]
            try:
                u.bind(("127.0.0.1", port))
                if pair:
                    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u2:
                        u2.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def wait_listening(port: int, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"server did not listen on {port}")


def start_parley(port: int, tmp: Path) -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable, "-m", "turn",
        "--turn-host", "127.0.0.1", "--turn-port", str(port),
        "--turn-relay-address", "127.0.0.1", "--turn-relay-ports", "56000-57999",
        "--turn-realm", REALM, "--turn-user", f"{USER}:{PASSWORD}",
        "--turn-allow-peer", "127.0.0.1/32", "--turn-user-quota", "1000",
        "--log-level", "WARNING",
    ]  # fmt: skip
    log = open(tmp / "parley.log", "wb")  # noqa: SIM115 - lives as long as the process
    return subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)


def start_coturn(port: int, tmp: Path) -> subprocess.Popen[bytes]:
    conf = tmp / "coturn.conf"
    conf.write_text(
        "\n".join(
            [
                "listening-ip=127.0.0.1",
                "relay-ip=127.0.0.1",
                f"listening-port={port}",
                f"alt-listening-port={port + 2}",
                f"tls-listening-port={port + 4}",
                f"alt-tls-listening-port={port + 6}",
                "min-port=58000",
                "max-port=59999",
                "allow-loopback-peers",
                "no-multicast-peers",
                "no-rfc5780",
                "no-cli",
                "no-dtls",
                "no-tls",
                "fingerprint",
                "lt-cred-mech",
                f"user={USER}:{PASSWORD}",
                f"realm={REALM}",
                f"log-file={tmp / 'coturn.log'}",
                "simple-log",
                f"pidfile={tmp / 'coturn.pid'}",
                f"userdb={tmp / 'coturn.sqlite'}",
                "",
            ]
        )
    )
    turnserver = shutil.which("turnserver") or "/usr/bin/turnserver"
    return subprocess.Popen(
        [turnserver, "-c", str(conf), "--no-stdout-log"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def uclient_args(port: int, peer: int, args: argparse.Namespace, warmup: bool) -> list[str]:
    if args.throughput:
        n, m, size, extra = 20000, 20, 1000, ["-z", "1"]
    else:
        n, m, size, extra = args.messages, args.clients, 170, []
    if warmup:
        n, m = 20, 5
    cmd = ["turnutils_uclient"] + ([] if args.udp else ["-t"]) + extra
    cmd += ["-c", "-p", str(port), "-u", USER, "-w", PASSWORD, "-e", "127.0.0.1", "-r", str(peer)]
    cmd += ["-X", "-n", str(n), "-m", str(m), "-l", str(size), "127.0.0.1"]
    return cmd


def parse_uclient(out: str) -> tuple[int, int, int]:
    lost = re.search(r"Total lost packets (\d+)", out)
    totals = re.findall(r"tot_send_msgs=(\d+), tot_recv_msgs=(\d+)\s*$", out, re.M)
    if not lost or not totals:
        raise RuntimeError("unexpected uclient output:\n" + out[-1500:])
    return int(totals[-1][0]), int(totals[-1][1]), int(lost.group(1))


def measure(name: str, peer: int, args: argparse.Namespace) -> dict[str, float]:
    port = free_port()
    with tempfile.TemporaryDirectory(prefix=f"turnbench-{name}-") as tmpdir:
        tmp = Path(tmpdir)
        proc = (start_parley if name == "parley" else start_coturn)(port, tmp)
        try:
            wait_listening(port)
            subprocess.run(uclient_args(port, peer, args, True), capture_output=True, timeout=120)
            cmd = uclient_args(port, peer, args, False)
            c0 = cpu_seconds(proc.pid)
            t0 = time.monotonic()
            run = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
            wall = time.monotonic() - t0
            cpu = cpu_seconds(proc.pid) - c0
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    sent, received, lost = parse_uclient(run.stdout + run.stderr)
    return {
        "sent": sent,
        "received": received,
        "lost": lost,
        "loss_pct": 100.0 * lost / sent if sent else 0.0,
        "cpu_s": cpu,
        "wall_s": wall,
        "us_per_pkt": 1e6 * cpu / (2 * received) if received else float("nan"),
        "cmd": " ".join(cmd),  # type: ignore[dict-item]
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--udp", action="store_true", help="TURN over UDP instead of TCP")
    parser.add_argument("--throughput", action="store_true", help="20 x 20000 x 1000 B at -z 1")
    parser.add_argument("--messages", type=int, default=1000, help="-n (default %(default)s)")
    parser.add_argument("--clients", type=int, default=100, help="-m (default %(default)s)")
    parser.add_argument("--repeat", type=int, default=1, help="A/B rounds (default %(default)s)")
    parser.add_argument("--only", choices=["parley", "coturn"], help="measure one server only")
    args = parser.parse_args()
    for tool in ("turnutils_uclient", "turnutils_peer"):
        if shutil.which(tool) is None:
            print(f"{tool} not found (apt-get install coturn)", file=sys.stderr)
            return 2
    peer_port = free_port(pair=True)
    peer = subprocess.Popen(
        ["turnutils_peer", "-L", "127.0.0.1", "-p", str(peer_port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    results: list[tuple[str, dict[str, float]]] = []
    try:
        time.sleep(0.3)
        names = [args.only] if args.only else ["parley", "coturn"]
        for _ in range(args.repeat):
            for name in names:
                res = measure(name, peer_port, args)
                results.append((name, res))
                print(
                    f"{name:7s} sent {res['sent']:.0f} recv {res['received']:.0f} "
                    f"lost {res['lost']:.0f} ({res['loss_pct']:.2f} %) cpu {res['cpu_s']:.2f} s "
                    f"wall {res['wall_s']:.1f} s -> {res['us_per_pkt']:.1f} us/relayed packet",
                    flush=True,
                )
    finally:
        peer.terminate()
        peer.wait()
    print("\ncommand:", results[0][1]["cmd"] if results else "-")
    print(f"{'server':8s} {'us/pkt (median)':>16s} {'loss %':>8s}")
    medians: dict[str, float] = {}
    for name in dict.fromkeys(n for n, _ in results):
        values = sorted(r["us_per_pkt"] for n, r in results if n == name)
        medians[name] = values[len(values) // 2]
        loss = max(r["loss_pct"] for n, r in results if n == name)
        print(f"{name:8s} {medians[name]:16.1f} {loss:8.2f}")
    if "parley" in medians and "coturn" in medians:
        print(f"ratio parley/coturn: {medians['parley'] / medians['coturn']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())

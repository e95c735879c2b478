"""The ``parley`` command: ``parley serve`` (everything in one process), ``parley turn``
(the TURN server alone) and ``parley bench`` (the load tool)."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import os
import secrets
import signal
import ssl
import sys
import threading
from typing import Any

from aiohttp.abc import AbstractAccessLogger
from aiohttp.web import BaseRequest, StreamResponse

from parley.relay.config import MediaConfig

from .config import ServiceConfig, TurnSettings


def _port_range(text: str) -> tuple[int, int]:
    low, sep, high = text.partition("-")
    try:
        pair = (int(low), int(high if sep else low))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected LOW-HIGH, got {text!r}") from exc
    return pair


def _address(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an IP address: {text!r}") from exc


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    env = os.environ.get
    p.add_argument("--host", default=env("PARLEY_HOST", "127.0.0.1"), help="HTTP listen address")
    p.add_argument("--port", type=int, default=int(env("PARLEY_PORT", "8080")), help="HTTP port")
    p.add_argument(
        "--public-url",
        default=env("PARLEY_PUBLIC_URL", ""),
        help="base of the join URLs (default http://HOST:PORT)",
    )
    p.add_argument(
        "--api-key",
        default=env("PARLEY_API_KEY", ""),
        help="API key for the HTTP API (env PARLEY_API_KEY; generated if unset)",
    )
    p.add_argument(
        "--token-secret",
        default=env("PARLEY_TOKEN_SECRET", ""),
        help="key signing join tokens (env PARLEY_TOKEN_SECRET; random if unset)",
    )
    p.add_argument("--token-ttl", type=int, default=4 * 3600, help="seconds a join URL is valid")
    p.add_argument("--max-participants", type=int, default=4, help="per session (default 4)")
    p.add_argument(
        "--media-address",
        action="append",
        type=_address,
        default=None,
        help="IP address the relay's ICE host candidates bind and announce "
        "(repeatable; default 127.0.0.1)",
    )
    p.add_argument(
        "--media-ports",
        type=_port_range,
        default=None,
        help="UDP port range for media, e.g. 40000-40999 (default: any)",
    )
    p.add_argument(
        "--turn-port",
        type=int,
        default=int(env("PARLEY_TURN_PORT", "3478")),
        help="embedded TURN server port, UDP and TCP (0 disables it)",
    )
    p.add_argument(
        "--turn-tls-port",
        type=int,
        default=5349,
        help="embedded TURN server TLS port (with --tls-cert/--tls-key; 443 in production)",
    )
    p.add_argument(
        "--turn-listen",
        type=_address,
        default=None,
        help="address the embedded TURN server listens on (default: --host)",
    )
    p.add_argument(
        "--turn-public-host",
        default="",
        help="host name in turn: URLs (default: host of --public-url)",
    )
    p.add_argument(
        "--turn-relay-ports",
        type=_port_range,
        default=None,
        help="UDP port range of TURN relayed addresses (default 49152-65535)",
    )
    p.add_argument(
        "--turn-transports",
        default="udp,tcp",
        help="which turn: URLs to hand out: udp,tcp (default) or tcp",
    )
    p.add_argument(
        "--tls-cert", default=env("PARLEY_TLS_CERT"), help="PEM certificate for TURN TLS"
    )
    p.add_argument("--tls-key", default=env("PARLEY_TLS_KEY"), help="PEM key for TURN TLS")
    p.add_argument(
        "--turn-secret",
        default=env("PARLEY_TURN_SECRET", ""),
        help="TURN REST API shared secret (env PARLEY_TURN_SECRET; generated if unset)",
    )
    p.add_argument(
        "--turn-external-url",
        action="append",
        default=[],
        help="use this external TURN URL (e.g. coturn) instead of the embedded server (repeatable)",
    )
    p.add_argument(
        "--turn-external-username",
        default=env("PARLEY_TURN_USERNAME"),
        help="fixed username for an external TURN service (instead of --turn-secret)",
    )
    p.add_argument(
        "--turn-external-credential",
        default=env("PARLEY_TURN_CREDENTIAL"),
        help="fixed credential for an external TURN service",
    )
    p.add_argument(
        "--ice-transport-policy",
        choices=["all", "relay"],
        default=env("PARLEY_ICE_TRANSPORT_POLICY", "all"),
        help="'relay' makes clients use TURN only",
    )
    p.add_argument("--log-level", default=env("PARLEY_LOG_LEVEL", "INFO"))
    add_hardening_arguments(p)


def add_hardening_arguments(p: argparse.ArgumentParser) -> None:
    """Limits, shutdown, HTTPS and proxies (issue 12). ``--tls-cert``/``--tls-key`` above also
    serve HTTPS and WSS on ``--port``."""
    env = os.environ.get
    p.add_argument(
        "--shutdown-timeout",
        type=float,
        default=float(env("PARLEY_SHUTDOWN_TIMEOUT", "8")),
        help="seconds SIGTERM waits for pages and peers before exiting (default 8)",
    )
    p.add_argument(
        "--join-timeout",
        type=float,
        default=float(env("PARLEY_JOIN_TIMEOUT", "10")),
        help="seconds a WebSocket may stay open without joining (default 10)",
    )
    p.add_argument(
        "--sessions-per-minute",
        type=float,
        default=float(env("PARLEY_SESSIONS_PER_MINUTE", "600")),
        help="session creations per API key per minute (0: unlimited; default 600)",
    )
    p.add_argument(
        "--joins-per-minute",
        type=float,
        default=float(env("PARLEY_JOINS_PER_MINUTE", "600")),
        help="join attempts per client address per minute (0: unlimited; default 600)",
    )
    p.add_argument(
        "--messages-per-second",
        type=float,
        default=float(env("PARLEY_MESSAGES_PER_SECOND", "50")),
        help="WebSocket messages per connection per second (0: unlimited; default 50)",
    )
    p.add_argument(
        "--metrics-token",
        default=env("PARLEY_METRICS_TOKEN", ""),
        help="require Authorization: Bearer TOKEN on /metrics (env PARLEY_METRICS_TOKEN)",
    )
    p.add_argument(
        "--metrics-listen",
        default=env("PARLEY_METRICS_LISTEN", ""),
        help="serve /metrics only on HOST:PORT instead of --port (e.g. 127.0.0.1:9100)",
    )
    p.add_argument(
        "--trust-proxy",
        action="store_true",
        default=env("PARLEY_TRUST_PROXY", "") not in ("", "0", "false"),
        help="take client addresses from X-Forwarded-For (only behind a proxy that sets it)",
    )


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"--metrics-listen expects HOST:PORT, got {text!r}")
    return _address(host.strip("[]")), int(port)


def hardening_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The :class:`ServiceConfig` fields of :func:`add_hardening_arguments`."""
    metrics_host, metrics_port = ("", 0)
    if args.metrics_listen:
        metrics_host, metrics_port = _host_port(args.metrics_listen)
    return {
        "shutdown_timeout": args.shutdown_timeout,
        "join_timeout": args.join_timeout,
        "sessions_per_minute": args.sessions_per_minute,
        "joins_per_minute": args.joins_per_minute,
        "messages_per_second": args.messages_per_second,
        "metrics_token": args.metrics_token,
        "metrics_host": metrics_host,
        "metrics_port": metrics_port,
        "trust_proxy": args.trust_proxy,
    }


def config_from_args(args: argparse.Namespace) -> tuple[ServiceConfig, list[str]]:
    """The service config, and notes for the banner about generated secrets."""
    notes = []
    api_key = args.api_key
    if not api_key:
        api_key = "pk_" + secrets.token_urlsafe(24)  # never starts with "-"
        notes.append(f"generated API key: {api_key}")
    turn_secret = args.turn_secret or secrets.token_urlsafe(24)
    token_secret = (args.token_secret or secrets.token_urlsafe(32)).encode()
    turn = TurnSettings(
        enabled=args.turn_port != 0,
        port=args.turn_port,
        tls_port=args.turn_tls_port,
        listen_host=args.turn_listen or args.host,
        public_host=args.turn_public_host,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        secret=turn_secret,
        transports=tuple(t.strip() for t in args.turn_transports.split(",") if t.strip()),
        external_urls=tuple(args.turn_external_url),
        external_username=args.turn_external_username,
        external_credential=args.turn_external_credential,
        relay_ports=args.turn_relay_ports,
    )
    media = MediaConfig(
        addresses=tuple(args.media_address or ["127.0.0.1"]), port_range=args.media_ports
    )
    config = ServiceConfig(
        host=args.host,
        port=args.port,
        public_url=args.public_url,
        api_key=api_key,
        token_secret=token_secret,
        token_ttl=args.token_ttl,
        max_participants=args.max_participants,
        ice_transport_policy=args.ice_transport_policy,
        media=media,
        turn=turn,
        **hardening_settings(args),
    )
    return config, notes


def banner(config: ServiceConfig, notes: list[str], port: int) -> str:
    base = (
        config.public_url.rstrip("/")
        if config.public_url
        else f"{config.scheme}://{config.host}:{port}"
    )
    turn = config.turn
    if turn.external_urls:
        turn_line = "external TURN: " + " ".join(turn.external_urls)
    elif turn.enabled:
        turn_line = f"embedded TURN on {turn.listen_host}:{turn.port} (UDP+TCP)"
        if turn.tls_enabled:
            turn_line += f", TLS :{turn.tls_port}"
    else:
        turn_line = "no TURN server (direct UDP only)"
    lines = [
        "parley is running",
        f"  agent console   {base}/",
        f"  HTTP API        {base}/api/v1/sessions",
        f"  media address   {', '.join(config.media.addresses)}",
        f"  {turn_line}",
        *(f"  {n}" for n in notes),
        "create a session:",
        f"  curl -s -X POST {base}/api/v1/sessions -H 'Authorization: Bearer <API key>' "
        "-H 'Content-Type: application/json' -d '{\"conversation_id\": \"chat-1\"}'",
    ]
    return "\n".join(lines)


class RedactingAccessLogger(AbstractAccessLogger):
    """Access log without secrets: join tokens in paths are replaced."""

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        path = request.path
        if path.startswith("/join/"):
            path = "/join/<token>"
        self.logger.info(
            '%s "%s %s" %s %.1fms',
            request.remote,
            request.method,
            path,
            response.status,
            time * 1000,
        )


def server_ssl_context(config: ServiceConfig) -> ssl.SSLContext | None:
    """HTTPS/WSS on ``--port`` with the ``--tls-cert``/``--tls-key`` pair (None without)."""
    if not config.tls_enabled:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    assert config.turn.tls_cert is not None
    context.load_cert_chain(config.turn.tls_cert, config.turn.tls_key)
    return context


def _force_exit_after(seconds: float) -> threading.Timer:
    """A last resort if graceful shutdown hangs anyway: exit the process after ``seconds``."""

    def force() -> None:
        logging.getLogger(__name__).error("shutdown took longer than %.0f s; exiting", seconds)
        logging.shutdown()
        os._exit(1)

    timer = threading.Timer(seconds, force)
    timer.daemon = True
    timer.start()
    return timer


async def serve(config: ServiceConfig, notes: list[str]) -> None:
    from aiohttp import web

    from .app import create_app, create_metrics_app, shutdown

    log = logging.getLogger(__name__)
    app = create_app(config)
    # our own signal handling: SIGTERM/SIGINT start a bounded graceful shutdown while the loop
    # still runs (aiohttp's GracefulExit makes asyncio cancel every task, and the WebSocket
    # handlers' cleanup then waits forever on aiortc's close)
    runner = web.AppRunner(
        app,
        handle_signals=False,
        access_log_class=RedactingAccessLogger,
        shutdown_timeout=1.0,
        keepalive_timeout=15.0,
    )
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port, ssl_context=server_ssl_context(config))
    await site.start()
    metrics_runner: web.AppRunner | None = None
    if config.metrics_port:
        metrics_runner = web.AppRunner(create_metrics_app(app), handle_signals=False)
        await metrics_runner.setup()
        await web.TCPSite(metrics_runner, config.metrics_host, config.metrics_port).start()
    port = config.port
    server = getattr(site, "_server", None)
    if port == 0 and server is not None and server.sockets:
        port = server.sockets[0].getsockname()[1]
    print(banner(config, notes, port), flush=True)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = (signal.SIGTERM, signal.SIGINT)
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
        log.info("stopping (signal received); a second signal exits at once")
        for sig in signals:
            loop.add_signal_handler(sig, lambda: os._exit(1))
        _force_exit_after(config.shutdown_timeout + 1.5)
        await shutdown(app)  # still listening: new sessions get 503 meanwhile
    finally:
        try:
            await asyncio.wait_for(runner.cleanup(), 2.0)
            if metrics_runner is not None:
                await asyncio.wait_for(metrics_runner.cleanup(), 1.0)
        except TimeoutError:
            log.warning("the HTTP server did not stop in time")
        for sig in signals:
            loop.remove_signal_handler(sig)
        log.info("stopped")


def _run(coro: Any) -> None:
    try:
        import uvloop

        uvloop.run(coro)
    except ImportError:  # pragma: no cover - uvloop is a dependency
        asyncio.run(coro)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="parley", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve_parser = commands.add_parser("serve", help="run the relay, signaling and TURN server")
    add_serve_arguments(serve_parser)
    turn_parser = commands.add_parser("turn", help="run the TURN server alone")
    from parley.turn import cli as turn_cli

    turn_cli.add_arguments(turn_parser)
    turn_parser.add_argument("--log-level", default="INFO")
    bench_parser = commands.add_parser("bench", help="forwarding-latency and capacity benchmark")
    try:
        from parley.bench import load as bench_load

        bench_load.add_arguments(bench_parser)
    except ImportError:
        bench_load = None  # type: ignore[assignment]
    bench_parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        if args.command == "serve":
            config, notes = config_from_args(args)
            _run(serve(config, notes))
        elif args.command == "turn":
            _run(turn_cli.run(turn_cli.config_from_args(args)))
        elif args.command == "bench":
            if bench_load is None:
                parser.error("the benchmark tool is not installed")
            return int(bench_load.main(args) or 0)
    except ValueError as exc:
        print(f"parley: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

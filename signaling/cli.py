"""The ``parley`` command: ``parley serve`` (everything in one process), ``parley turn``
(the TURN server alone) and ``parley bench`` (the load tool)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import secrets
import signal
import ssl
import sys
import threading
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp.abc import AbstractAccessLogger
from aiohttp.web import BaseRequest, StreamResponse

from parley.relay import accel
from parley.relay.config import MediaConfig

from . import options
from . import recordings as recordings_cli
from .config import ServiceConfig, StoreSettings, TurnSettings


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    """The ``parley serve`` flags, from the one option table (signaling.options)."""
    options.add_arguments(p)


def resolve_serve_options(
    args: argparse.Namespace, environ: Mapping[str, str] | None = None
) -> options.Resolved:
    """Flags > ``PARLEY_*`` environment > ``--config`` file > defaults."""
    return options.resolve(args, environ)


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"--metrics-listen expects HOST:PORT, got {text!r}")
    return options.ADDRESS.parse(host.strip("[]")), int(port)


def hardening_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The service config fields composed from ``--metrics-listen``."""
    metrics_host, metrics_port = ("", 0)
    if args.metrics_listen:
        metrics_host, metrics_port = _host_port(args.metrics_listen)
    return {"metrics_host": metrics_host, "metrics_port": metrics_port}


def kept_secret(args: argparse.Namespace, name: str, make: str) -> tuple[str, bool]:
    """A secret kept in the data directory (created there, 0600, when missing), so that join
    URLs and the API key survive a restart; ``make`` when there is no data directory."""
    from . import keyfile

    if not args.data_dir:
        return make, True
    return keyfile.load_or_create(args.data_dir, name, make)


def store_settings_from_args(args: argparse.Namespace, notes: list[str]) -> StoreSettings:
    """The store section; the webhook secret is kept in the data directory when not given."""
    from . import keyfile
    from .webhooks import new_secret

    secret = args.webhook_secret
    if args.webhook_url and not secret:
        secret, made = keyfile.load_or_create(
            args.data_dir, keyfile.WEBHOOK_SECRET_FILE, new_secret()
        )
        where = os.path.join(args.data_dir, keyfile.WEBHOOK_SECRET_FILE)
        notes.append(f"webhook secret {'generated into' if made else 'read from'} {where}")
    return StoreSettings(
        data_dir=args.data_dir,
        database_url=args.database_url,
        webhook_urls=tuple(args.webhook_url),
        webhook_secret=secret,
        webhook_backoff_base=args.webhook_backoff,
        report_interval=args.report_interval,
    )


def workers_per_core(values: Mapping[str, Any], notes: list[str]) -> int:
    """``--workers 0``: one media worker per core, or one process where workers cannot run
    (one core; ``--port 0``, as the workers' URLs need the port before it is bound; no store),
    said in the banner."""
    cores = min(64, os.cpu_count() or 1)
    if cores == 1:
        notes.append("one process (one core)")
        return 1
    if values.get("port") == 0:
        notes.append("one process: media workers (one per core) need a fixed --port")
        return 1
    if not (values.get("data_dir") or values.get("database_url")):
        notes.append("one process: media workers (one per core) need the store (--data-dir)")
        return 1
    return cores


def config_from_args(args: argparse.Namespace) -> tuple[ServiceConfig, list[str]]:
    """The service config from resolved options, and notes for the banner about generated
    secrets. Options with a ``field`` go where it says; the others are composed here."""
    values = vars(args)
    by_section: dict[str, dict[str, Any]] = {"": {}, "turn": {}, "media": {}}
    for path, value in options.fields(values).items():
        section, _, name = path.rpartition(".")
        by_section[section][name] = value
    notes: list[str] = []
    if by_section[""].get("workers") == 0:  # issue 11: one media worker per core (the default)
        by_section[""]["workers"] = workers_per_core(values, notes)
    api_key = args.api_key
    if not api_key:
        # never starts with "-"; kept in the data directory
        api_key, made = kept_secret(args, "api-key", "pk_" + secrets.token_urlsafe(24))
        if made:
            notes.append(f"generated API key: {api_key}")
        else:
            notes.append(f"API key read from {os.path.join(args.data_dir, 'api-key')}")
    turn_secret = args.turn_secret or kept_secret(args, "turn-secret", secrets.token_urlsafe(24))[0]
    token_secret = (
        args.token_secret or kept_secret(args, "token-secret", secrets.token_urlsafe(32))[0]
    ).encode()
    turn = TurnSettings(
        **by_section["turn"],
        enabled=args.turn_port != 0,
        listen_host=args.turn_listen or args.host,
        secret=turn_secret,
        transports=tuple(t.strip() for t in args.turn_transports.split(",") if t.strip()),
    )
    recordings_dir = args.recordings_dir or (
        os.path.join(args.data_dir, "recordings") if args.data_dir else None
    )
    config = ServiceConfig(
        **by_section[""],
        api_key=api_key,
        token_secret=token_secret,
        media=MediaConfig(**by_section["media"]),
        turn=turn,
        store=store_settings_from_args(args, notes),
        recordings_dir=recordings_dir,
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
        f"  packet path     {accel.IMPLEMENTATION} (SRTP: {accel.SRTP_CRYPTO}, AES-GCM: "
        f"{accel.SRTP_GCM})",
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


async def run_until_signalled(
    stop: Callable[[], Awaitable[None]],
    cleanup: Callable[[], Awaitable[None]],
    grace: float,
    log: logging.Logger,
) -> None:
    """Wait for SIGTERM/SIGINT, then ``stop()`` (a bounded graceful shutdown while the loop still
    runs; a second signal exits at once, and the process exits anyway ``grace`` seconds later),
    then ``cleanup()``. Our own handlers, not aiohttp's: its GracefulExit makes asyncio cancel
    every task, and the WebSocket handlers' cleanup then waits forever on aiortc's close."""
    loop = asyncio.get_running_loop()
    signalled = asyncio.Event()
    signals = (signal.SIGTERM, signal.SIGINT)
    for sig in signals:
        loop.add_signal_handler(sig, signalled.set)
    try:
        await signalled.wait()
        log.info("stopping (signal received); a second signal exits at once")
        for sig in signals:
            loop.add_signal_handler(sig, lambda: os._exit(1))
        _force_exit_after(grace)
        await stop()
    finally:
        await cleanup()
        for sig in signals:
            loop.remove_signal_handler(sig)
        log.info("stopped")


async def serve(config: ServiceConfig, notes: list[str]) -> None:
    from aiohttp import web

    from .app import create_app, create_metrics_app, settle_heap, shutdown

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
    settle_heap()

    async def stop() -> None:
        await shutdown(app)  # still listening: new sessions get 503 meanwhile

    async def cleanup() -> None:
        try:
            await asyncio.wait_for(runner.cleanup(), 2.0)
            if metrics_runner is not None:
                await asyncio.wait_for(metrics_runner.cleanup(), 1.0)
        except TimeoutError:
            log.warning("the HTTP server did not stop in time")

    await run_until_signalled(stop, cleanup, config.shutdown_timeout + 1.5, log)


def _run(coro: Any) -> None:
    try:
        import uvloop

        uvloop.run(coro)
    except ImportError:  # pragma: no cover - uvloop is a dependency
        asyncio.run(coro)


def _command(argv: list[str]) -> str:
    """The sub-command named on the command line (the first word that is not an option)."""
    return next((word for word in argv if not word.startswith("-")), "")


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    """The ``parley`` parser. The benchmark's flags are added only for ``parley bench``, so
    that ``parley serve`` never imports the bench (nor numpy)."""
    parser = argparse.ArgumentParser(prog="parley", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve_parser = commands.add_parser("serve", help="run the relay, signaling and TURN server")
    add_serve_arguments(serve_parser)
    turn_parser = commands.add_parser("turn", help="run the TURN server alone")
    from parley.turn import cli as turn_cli

    turn_cli.add_arguments(turn_parser)
    turn_parser.add_argument("--log-level", default="INFO")
    recording_parser = commands.add_parser("recording", help="recordings on disk")
    recordings_cli.add_arguments(recording_parser)
    recording_parser.add_argument("--log-level", default="WARNING")
    bench_parser = commands.add_parser("bench", help="forwarding-latency and capacity benchmark")
    if _command(argv) == "bench":
        try:
            from parley.bench import options as bench_options
        except ImportError:
            parser.error("the benchmark tool is not installed (pip install 'parley-sfu[bench]')")
        bench_options.add_arguments(bench_parser)
    bench_parser.add_argument("--log-level", default="WARNING")
    return parser


CHATTY_LOGGERS = ("aioice",)
"""Libraries that log every ICE check of every peer connection at INFO (eight lines per
connection, the start-up probe's included): WARNING and above unless DEBUG is asked for."""


def _logging(level: str, prefix: str = "") -> None:
    """The service's logging (``prefix``: a media worker's ``worker<i> ``)."""
    value = getattr(logging, str(level).upper(), logging.INFO)
    logging.basicConfig(
        level=value, format=f"%(asctime)s %(levelname)s {prefix}%(name)s: %(message)s"
    )
    if value > logging.DEBUG:
        for name in CHATTY_LOGGERS:
            logging.getLogger(name).setLevel(max(value, logging.WARNING))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    try:
        if args.command == "serve":
            resolved = resolve_serve_options(args)
            config, notes = config_from_args(resolved.namespace())  # checks every value
            if args.print_config:
                print(options.render(resolved))
                return 0
            _logging(resolved.values["log_level"])
            if config.workers > 1 or config.redis_url:  # issue 11: control and media workers
                from . import workers

                _run(workers.serve_control(config, notes))
            else:
                _run(serve(config, notes))
        elif args.command == "turn":
            from parley.turn import cli as turn_cli

            _logging(args.log_level)
            _run(turn_cli.run(turn_cli.config_from_args(args)))
        elif args.command == "recording":
            return recordings_cli.main(args)
        elif args.command == "bench":
            from parley.bench import main as bench_main

            _logging(args.log_level)
            return int(bench_main.main(args) or 0)
    except ValueError as exc:
        print(f"parley: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

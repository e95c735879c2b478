"""The ``parley`` command: ``parley serve`` (everything in one process), ``parley turn``
(the TURN server alone) and ``parley bench`` (the load tool)."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import os
import secrets
import sys
from typing import Any

from aiohttp.abc import AbstractAccessLogger
from aiohttp.web import BaseRequest, StreamResponse

from parley.relay.config import MediaConfig

from .config import ServiceConfig, StoreSettings, TurnSettings


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
    add_store_arguments(p)


# --- store, webhooks, reports (issue 9) ------------------------------------------------------


def add_store_arguments(p: argparse.ArgumentParser) -> None:
    env = os.environ.get
    p.add_argument(
        "--data-dir",
        default=env("PARLEY_DATA_DIR", "parley-data"),
        help="folder of the SQLite store and the kept secrets (env PARLEY_DATA_DIR; "
        "default ./parley-data)",
    )
    p.add_argument(
        "--database-url",
        default=env("PARLEY_DATABASE_URL", ""),
        help="postgresql://user:password@host/db instead of SQLite (env PARLEY_DATABASE_URL)",
    )
    p.add_argument(
        "--webhook-url",
        action="append",
        default=[u for u in env("PARLEY_WEBHOOK_URLS", "").split(",") if u],
        help="POST signed events here (repeatable; env PARLEY_WEBHOOK_URLS, comma-separated)",
    )
    p.add_argument(
        "--webhook-secret",
        default=env("PARLEY_WEBHOOK_SECRET", ""),
        help="Standard Webhooks secret, whsec_<base64> (env PARLEY_WEBHOOK_SECRET; "
        "generated into the data directory if unset)",
    )
    p.add_argument(
        "--webhook-backoff",
        type=float,
        default=float(env("PARLEY_WEBHOOK_BACKOFF", "5")),
        help="seconds before the first webhook retry, doubled per attempt (default 5)",
    )
    p.add_argument(
        "--report-interval",
        type=float,
        default=float(env("PARLEY_REPORT_INTERVAL", "5")),
        help="seconds between quality samples of each track (default 5)",
    )


def store_settings_from_args(args: argparse.Namespace, notes: list[str]) -> StoreSettings:
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


def kept_secret(args: argparse.Namespace, name: str, make: str) -> tuple[str, bool]:
    """A secret from the data directory (created there when missing), or ``make`` when there is
    no data directory."""
    from . import keyfile

    if not args.data_dir:
        return make, True
    return keyfile.load_or_create(args.data_dir, name, make)


# --- end of issue 9 block ----------------------------------------------------------------------


def config_from_args(args: argparse.Namespace) -> tuple[ServiceConfig, list[str]]:
    """The service config, and notes for the banner about generated secrets."""
    notes: list[str] = []
    api_key = args.api_key
    if not api_key:
        # never starts with "-"; kept in the data directory (issue 9)
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
        store=store_settings_from_args(args, notes),
    )
    return config, notes


def banner(config: ServiceConfig, notes: list[str], port: int) -> str:
    base = config.public_url.rstrip("/") if config.public_url else f"http://{config.host}:{port}"
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


async def serve(config: ServiceConfig, notes: list[str]) -> None:
    from aiohttp import web

    from .app import create_app

    app = create_app(config)
    runner = web.AppRunner(app, handle_signals=True, access_log_class=RedactingAccessLogger)
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port)
    await site.start()
    port = config.port
    server = getattr(site, "_server", None)
    if port == 0 and server is not None and server.sockets:
        port = server.sockets[0].getsockname()[1]
    print(banner(config, notes, port), flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


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

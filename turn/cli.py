"""Command-line wiring for the standalone TURN server (``parley turn`` / ``python -m parley.turn``)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os

from .config import TurnConfig
from .errors import ConfigError
from .server import TurnServer

logger = logging.getLogger(__name__)


def _port_range(text: str) -> tuple[int, int]:
    try:
        lo, hi = (int(part) for part in text.split("-", 1))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected MIN-MAX, got {text!r}") from exc
    return lo, hi


def _user(text: str) -> tuple[str, str]:
    name, sep, password = text.partition(":")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected user:password, got {text!r}")
    return name, password


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``--turn-*`` and TLS flags to ``parser``."""
    group = parser.add_argument_group("TURN server")
    group.add_argument(
        "--turn-host", default="127.0.0.1", help="listen address (default %(default)s)"
    )
    group.add_argument(
        "--turn-port", type=int, default=3478, help="UDP+TCP port (default %(default)s)"
    )
    group.add_argument(
        "--turn-tls-port", type=int, default=5349, help="TLS port, used with --tls-cert/--tls-key"
    )
    group.add_argument("--tls-cert", default=None, help="PEM certificate chain for TURN over TLS")
    group.add_argument("--tls-key", default=None, help="PEM private key for TURN over TLS")
    group.add_argument(
        "--turn-secret",
        action="append",
        default=None,
        help="TURN REST API shared secret (repeatable for rotation; env PARLEY_TURN_SECRET)",
    )
    group.add_argument("--turn-realm", default="parley", help="realm (default %(default)s)")
    group.add_argument(
        "--turn-relay-address", default=None, help="relay socket address (default: --turn-host)"
    )
    group.add_argument(
        "--turn-relay-ports", type=_port_range, default=(49152, 65535), help="relay ports MIN-MAX"
    )
    group.add_argument(
        "--turn-allow-peer",
        action="append",
        default=None,
        metavar="CIDR",
        help="allowed peer network (repeatable; default: the relay address)",
    )
    group.add_argument(
        "--turn-general-relay",
        action="store_true",
        help="relay to any peer except the built-in deny list (off: allow-list only)",
    )
    group.add_argument(
        "--turn-user-quota",
        type=int,
        default=100,
        help="allocations per user (default %(default)s)",
    )
    group.add_argument(
        "--turn-user",
        type=_user,
        action="append",
        default=None,
        metavar="USER:PASS",
        help="static user, for testing (repeatable)",
    )


def config_from_args(args: argparse.Namespace) -> TurnConfig:
    """Build a :class:`TurnConfig` from parsed flags; raises :class:`ConfigError` when invalid."""
    secrets = list(args.turn_secret or [])
    env_secret = os.environ.get("PARLEY_TURN_SECRET")
    if not secrets and env_secret:
        secrets = [env_secret]
    relay = args.turn_relay_address or args.turn_host
    if relay in ("0.0.0.0", "::"):
        raise ConfigError("--turn-relay-address must be a concrete address")
    allowed = tuple(args.turn_allow_peer or (relay,))
    lo, hi = args.turn_relay_ports
    return TurnConfig(
        host=args.turn_host,
        port=args.turn_port,
        tls_port=args.turn_tls_port,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        realm=args.turn_realm,
        secrets=tuple(secrets),
        users=tuple(args.turn_user or ()),
        relay_address=relay,
        relay_port_min=lo,
        relay_port_max=hi,
        allowed_peers=allowed,
        general_relay=args.turn_general_relay,
        user_quota=args.turn_user_quota,
    )


async def run(config: TurnConfig) -> None:
    """Run a TURN server until cancelled."""
    server = TurnServer(config, metrics=True)
    await server.start()
    try:
        await asyncio.Event().wait()
    finally:
        await server.close()

"""The options of ``parley serve``, defined once: each row of :data:`SERVE_OPTIONS` is a command
line flag, an environment variable, a key of the TOML file given with ``--config``, and (its
``field``) a field of the service config.

Precedence: command line > environment > file > default. An empty environment variable counts as
unset. :func:`resolve` turns the three sources into one :class:`Resolved` (the values, and where
each came from); ``signaling.cli`` composes the service config from it. Adding an option is one
:class:`Option` row here, with ``field`` naming the service config field it fills (a field you
add to ``ServiceConfig`` or one of its sections).
"""

from __future__ import annotations

import argparse
import difflib
import ipaddress
import json
import os
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENV_PREFIX = "PARLEY_"
MASK = "********"


class ConfigError(ValueError):
    """A bad configuration file, key or value; the message names where it came from."""


# --- value kinds -------------------------------------------------------------------------------


def _text(text: str) -> str:
    return text


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"expected an integer, got {text!r}") from None


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"expected a number, got {text!r}") from None


def _boolean(text: str) -> bool:
    word = text.strip().lower()
    if word in ("1", "true", "yes", "on"):
        return True
    if word in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def _address(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise ValueError(f"not an IP address: {text!r}") from None


def _port_range(text: str) -> tuple[int, int]:
    low, sep, high = text.partition("-")
    try:
        return int(low), int(high if sep else low)
    except ValueError:
        raise ValueError(f"expected LOW-HIGH, got {text!r}") from None


def _same(value: Any) -> Any:
    return value


def _port_pair(value: list[Any]) -> tuple[int, int]:
    if len(value) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise ValueError(f"expected [LOW, HIGH], got {value!r}")
    return int(value[0]), int(value[1])


@dataclass(frozen=True)
class Kind:
    """How one type of value is read from text (flags, environment) and from TOML."""

    name: str
    """What the value looks like, for error messages."""
    parse: Callable[[str], Any]
    """Text to value; raises ValueError with a message saying what was expected."""
    toml_types: tuple[type, ...] = (str,)
    """TOML value types this kind takes (a TOML string always goes through ``parse``)."""
    native: Callable[[Any], Any] = _same
    """A TOML value of one of ``toml_types`` (other than a string) to the value."""

    def from_toml(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.parse(value)
        if isinstance(value, self.toml_types) and (
            not isinstance(value, bool) or bool in self.toml_types
        ):
            return self.native(value)
        raise ValueError(f"expected {self.name}, got {value!r}")


TEXT = Kind("a string", _text)
INTEGER = Kind("an integer", _integer, (int,))
NUMBER = Kind("a number", _number, (int, float), float)
BOOLEAN = Kind("true or false", _boolean, (bool,))
"""A switch: ``--x`` / ``--no-x`` on the command line, true/false/1/0/yes/no elsewhere."""
ADDRESS = Kind("an IP address", _address)
PORT_RANGE = Kind('a port range "LOW-HIGH" or [LOW, HIGH]', _port_range, (list,), _port_pair)


# --- the table ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Option:
    """One ``parley serve`` option: flag, environment variable and file key in one row."""

    flag: str
    """The command line flag, e.g. ``--turn-port``; the file key is ``turn_port``."""
    help: str
    kind: Kind = TEXT
    default: Any = None
    """The value when no source sets it (None: unset)."""
    env: str = ""
    """The environment variable; default ``PARLEY_`` + the key in capitals."""
    secret: bool = False
    """Masked by ``--print-config`` (and never logged)."""
    many: bool = False
    """Repeatable flag; a TOML array; comma-separated in the environment."""
    choices: tuple[str, ...] = ()
    field: str = ""
    """Where the value goes in the service config (``signaling.config.ServiceConfig``): a field
    name (``port``) or ``section.field`` (``turn.port``, ``media.addresses``); lists become
    tuples. Empty: ``signaling.cli.config_from_args`` composes it (generated or derived values),
    or it is not part of the service config (``log_level``)."""

    def __post_init__(self) -> None:
        if not self.flag.startswith("--") or self.flag != self.flag.lower():
            raise ValueError(f"option flags are --lower-case: {self.flag!r}")
        if self.many != isinstance(self.default, list) and self.default is not None:
            raise ValueError(f"{self.flag}: a repeatable option has a list default, others not")
        if self.choices and self.default not in self.choices:
            raise ValueError(f"{self.flag}: the default is not one of the choices")
        if self.many and self.kind is BOOLEAN:
            raise ValueError(f"{self.flag}: a switch cannot be repeated")

    @property
    def key(self) -> str:
        return self.flag.removeprefix("--").replace("-", "_")

    @property
    def env_var(self) -> str:
        return self.env or ENV_PREFIX + self.key.upper()

    def from_text(self, text: str) -> Any:
        if self.many:
            return [self._check(self.kind.parse(part.strip())) for part in text.split(",")]
        return self._check(self.kind.parse(text))

    def from_toml(self, value: Any) -> Any:
        if self.many:
            items = value if isinstance(value, list) else [value]
            return [self._check(self.kind.from_toml(item)) for item in items]
        return self._check(self.kind.from_toml(value))

    def _check(self, value: Any) -> Any:
        if self.choices and value not in self.choices:
            raise ValueError(f"expected one of {', '.join(self.choices)}, got {value!r}")
        return value


SERVE_OPTIONS: tuple[Option, ...] = (
    Option("--host", "HTTP listen address", default="127.0.0.1", field="host"),
    Option("--port", "HTTP port", INTEGER, default=8080, field="port"),
    Option(
        "--public-url",
        "base of the join URLs (default http://HOST:PORT)",
        default="",
        field="public_url",
    ),
    # generated when unset: composed in signaling.cli.config_from_args
    Option("--api-key", "API key for the HTTP API (generated if unset)", default="", secret=True),
    Option("--token-secret", "key signing join tokens (random if unset)", default="", secret=True),
    Option("--token-ttl", "seconds a join URL is valid", INTEGER, 4 * 3600, field="token_ttl"),
    Option("--max-participants", "per session", INTEGER, 4, field="max_participants"),
    Option(
        "--workers",
        "media worker processes, each owning whole sessions (0, the default: one per core; "
        "1: one process)",
        INTEGER,
        0,
        field="workers",
    ),  # issue 11; 0 is turned into the core count in signaling.cli.config_from_args
    Option(
        "--media-address",
        "IP address the relay's ICE host candidates bind and announce (repeatable)",
        ADDRESS,
        default=["127.0.0.1"],
        many=True,
        field="media.addresses",
    ),
    Option(
        "--media-ports",
        "UDP port range for media, e.g. 40000-40999 (default: any)",
        PORT_RANGE,
        field="media.port_range",
    ),
    Option(
        "--turn-port",
        "embedded TURN server port, UDP and TCP (0 disables it)",
        INTEGER,
        3478,
        field="turn.port",
    ),
    Option(
        "--turn-tls-port",
        "embedded TURN server TLS port (with --tls-cert/--tls-key; 443 in production)",
        INTEGER,
        5349,
        field="turn.tls_port",
    ),
    # default: --host (composed in signaling.cli.config_from_args)
    Option(
        "--turn-listen", "address the embedded TURN server listens on (default: --host)", ADDRESS
    ),
    Option(
        "--turn-public-host",
        "host name in turn: URLs (default: host of --public-url)",
        default="",
        field="turn.public_host",
    ),
    Option(
        "--turn-relay-ports",
        "UDP port range of TURN relayed addresses (default 49152-65535)",
        PORT_RANGE,
        field="turn.relay_ports",
    ),
    # a comma-separated list (composed in signaling.cli.config_from_args)
    Option(
        "--turn-transports",
        "which turn: URLs to hand out: udp,tcp (default) or tcp",
        default="udp,tcp",
    ),
    Option("--tls-cert", "PEM certificate for TURN TLS", field="turn.tls_cert"),
    Option("--tls-key", "PEM key for TURN TLS", field="turn.tls_key"),
    Option(
        "--turn-secret", "TURN REST API shared secret (generated if unset)", default="", secret=True
    ),
    Option(
        "--turn-external-url",
        "use this external TURN URL (e.g. coturn) instead of the embedded server (repeatable)",
        many=True,
        default=[],
        field="turn.external_urls",
    ),
    Option(
        "--turn-external-username",
        "fixed username for an external TURN service (instead of --turn-secret)",
        env="PARLEY_TURN_USERNAME",
        field="turn.external_username",
    ),
    Option(
        "--turn-external-credential",
        "fixed credential for an external TURN service",
        env="PARLEY_TURN_CREDENTIAL",
        secret=True,
        field="turn.external_credential",
    ),
    Option(
        "--ice-transport-policy",
        "'relay' makes clients use TURN only",
        default="all",
        choices=("all", "relay"),
        field="ice_transport_policy",
    ),
    # limits, shutdown, HTTPS and proxies (--tls-cert/--tls-key also serve HTTPS/WSS on --port)
    Option(
        "--shutdown-timeout",
        "seconds SIGTERM waits for pages and peers before exiting",
        NUMBER,
        8.0,
        field="shutdown_timeout",
    ),
    Option(
        "--join-timeout",
        "seconds a WebSocket may stay open without joining",
        NUMBER,
        10.0,
        field="join_timeout",
    ),
    Option(
        "--sessions-per-minute",
        "session creations per API key per minute (0: unlimited)",
        NUMBER,
        600.0,
        field="sessions_per_minute",
    ),
    Option(
        "--joins-per-minute",
        "join attempts per client address per minute (0: unlimited)",
        NUMBER,
        600.0,
        field="joins_per_minute",
    ),
    Option(
        "--messages-per-second",
        "WebSocket messages per connection per second (0: unlimited)",
        NUMBER,
        50.0,
        field="messages_per_second",
    ),
    Option(
        "--resume-grace",
        "seconds a participant whose connection dropped is kept for a resume",
        NUMBER,
        45.0,
        field="resume_grace",
    ),
    Option(
        "--metrics-token",
        "require Authorization: Bearer TOKEN on /metrics",
        default="",
        secret=True,
        field="metrics_token",
    ),
    # HOST:PORT, composed in signaling.cli.config_from_args
    Option(
        "--metrics-listen",
        "serve /metrics only on HOST:PORT instead of --port (e.g. 127.0.0.1:9100)",
        default="",
    ),
    Option(
        "--trust-proxy",
        "take client addresses from X-Forwarded-For (only behind a proxy that sets it)",
        BOOLEAN,
        False,
        field="trust_proxy",
    ),
    Option(
        "--recordings-dir",
        "where recordings are kept, created if missing (default: recordings in --data-dir)",
    ),  # composed in signaling.cli.config_from_args
    Option(
        "--data-dir",
        "folder of the SQLite store and the kept secrets (API key, token and TURN keys)",
        default="parley-data",
    ),
    Option(
        "--database-url",
        "postgresql://user:password@host/db instead of SQLite in --data-dir",
        default="",
        secret=True,
    ),
    Option(
        "--redis-url",
        "redis://host:6379/0 of the cluster registry: this node joins a cluster of nodes that "
        "share --database-url",
        default="",
        secret=True,
        field="redis_url",
    ),  # issue 11: several machines (signaling/cluster.py)
    Option(
        "--webhook-url",
        "POST signed events here (repeatable)",
        many=True,
        default=[],
        env="PARLEY_WEBHOOK_URLS",
    ),
    Option(
        "--webhook-secret",
        "Standard Webhooks secret, whsec_<base64> (generated into --data-dir if unset)",
        default="",
        secret=True,
    ),
    Option(
        "--webhook-backoff",
        "seconds before the first webhook retry, doubled per attempt",
        NUMBER,
        5.0,
    ),
    Option("--report-interval", "seconds between quality samples of each track", NUMBER, 5.0),
    # the store section is composed in signaling.cli.store_settings_from_args
    Option("--log-level", "log level", default="INFO"),  # for logging, not the service config
)
"""Every ``parley serve`` option. One row per option gives the flag, the ``PARLEY_*`` variable,
the file key, precedence, ``--print-config``, and (with ``field``) its place in the service
config; the tests in tests/signaling/test_config.py cover every row."""


def fields(values: Mapping[str, Any], options: Sequence[Option] = SERVE_OPTIONS) -> dict[str, Any]:
    """The values of the options that have a ``field``, by field path (lists as tuples)."""
    out = {}
    for option in options:
        if option.field:
            value = values[option.key]
            out[option.field] = tuple(value) if isinstance(value, list) else value
    return out


# --- argparse ----------------------------------------------------------------------------------


def _argparse_type(option: Option) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            return option._check(option.kind.parse(text))
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = option.kind.name  # argparse names the type in its messages
    return parse


def add_arguments(
    parser: argparse.ArgumentParser, options: Sequence[Option] = SERVE_OPTIONS
) -> None:
    """Flags for ``options`` (none has an argparse default: unset flags stay None), plus
    ``--config`` and ``--print-config``."""
    for option in options:
        default = "" if option.default in (None, "", []) else f"; default {option.default}"
        text = f"{option.help} (env {option.env_var}{default})"
        if option.kind is BOOLEAN:
            parser.add_argument(
                option.flag,
                dest=option.key,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=text,
            )
            continue
        parser.add_argument(
            option.flag,
            dest=option.key,
            type=_argparse_type(option),
            action="append" if option.many else "store",
            default=None,
            help=text,
        )
    parser.add_argument(
        "--config",
        default=None,
        metavar="FILE",
        help=f"TOML file with these options as keys (env {ENV_PREFIX}CONFIG)",
    )
    parser.add_argument(
        "--print-config",
        action="store_true",
        help="print the effective configuration (secrets masked) and exit",
    )


# --- resolution --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Resolved:
    """The effective value of every option, and where it came from."""

    values: Mapping[str, Any]
    sources: Mapping[str, str] = field(default_factory=dict)
    """``cli``, ``env PARLEY_X``, ``file <path>`` or ``default``."""

    def namespace(self) -> argparse.Namespace:
        return argparse.Namespace(**self.values)


def read_file(path: str, options: Sequence[Option] = SERVE_OPTIONS) -> dict[str, Any]:
    """The options a TOML file sets; unknown keys and bad values raise :class:`ConfigError`."""
    try:
        with Path(path).open("rb") as f:
            document = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read the configuration file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    by_key = {o.key: o for o in options}
    values: dict[str, Any] = {}
    for key, raw in document.items():
        option = by_key.get(key)
        if option is None:
            close = difflib.get_close_matches(key, by_key, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{path}: unknown key {key!r}{hint}")
        try:
            values[key] = option.from_toml(raw)
        except ValueError as exc:
            raise ConfigError(f"{path}: {key}: {exc}") from None
    return values


def resolve(
    cli: argparse.Namespace | Mapping[str, Any],
    environ: Mapping[str, str] | None = None,
    options: Sequence[Option] = SERVE_OPTIONS,
) -> Resolved:
    """Command line > environment > file (``--config`` or ``PARLEY_CONFIG``) > default."""
    given = dict(vars(cli)) if isinstance(cli, argparse.Namespace) else dict(cli)
    env = os.environ if environ is None else environ
    path = given.get("config") or env.get(ENV_PREFIX + "CONFIG") or None
    from_file = read_file(path, options) if path else {}
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for option in options:
        key = option.key
        text = env.get(option.env_var, "")
        if given.get(key) is not None:
            values[key], sources[key] = given[key], "cli"
        elif text:
            try:
                values[key] = option.from_text(text)
            except ValueError as exc:
                raise ConfigError(f"{option.env_var}: {exc}") from None
            sources[key] = f"env {option.env_var}"
        elif key in from_file:
            values[key], sources[key] = from_file[key], f"file {path}"
        else:
            default = option.default
            values[key] = list(default) if isinstance(default, list) else default
            sources[key] = "default"
    return Resolved(values, sources)


def _toml_value(value: Any) -> str:
    if isinstance(value, tuple):  # a port range
        return f'"{value[0]}-{value[1]}"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))  # a TOML basic string is a JSON string


def render(resolved: Resolved, options: Sequence[Option] = SERVE_OPTIONS) -> str:
    """The effective configuration as a TOML file (usable with ``--config``), secrets masked,
    each line commented with the value's source."""
    lines = ["# parley serve: effective configuration (secrets masked)"]
    for option in options:
        key = option.key
        value = resolved.values.get(key)
        source = resolved.sources.get(key, "default")
        if value is None or value == [] or (option.secret and value == ""):
            note = "generated at start" if option.secret and option.default == "" else "unset"
            lines.append(f"# {key} = ({note})  # {source}")
        elif option.secret:
            lines.append(f'{key} = "{MASK}"  # {source}')
        else:
            lines.append(f"{key} = {_toml_value(value)}  # {source}")
    return "\n".join(lines)

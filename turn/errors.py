"""Errors raised by the TURN package (STYLE.md §7).

One base class, :class:`TurnError`, and a few subclasses. Protocol errors carry the STUN error code
they map to, so the request handler can turn them into an ERROR-CODE response in one place.
"""

from __future__ import annotations


class TurnError(Exception):
    """Base class for every error raised by :mod:`turn`."""


class StunError(TurnError, ValueError):
    """Malformed STUN/TURN bytes (raised by :func:`turn.stun.parse`).

    Always a :class:`ValueError`, so callers parsing untrusted input can catch one type.
    """


class ConfigError(TurnError, ValueError):
    """An invalid :class:`turn.config.TurnConfig` value."""


class ProtocolError(TurnError):
    """A request that must be answered with a STUN error response (RFC 8489 §14.8).

    ``code`` is the ERROR-CODE number (400, 401, 403, 420, 437, 438, 440, 441, 442, 443, 486, 508),
    ``reason`` the reason phrase sent to the client.
    """

    def __init__(self, code: int, reason: str | None = None) -> None:
        self.code = code
        self.reason = reason if reason is not None else REASONS.get(code, "Error")
        super().__init__(f"{code} {self.reason}")


REASONS: dict[int, str] = {
    300: "Try Alternate",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    420: "Unknown Attribute",
    437: "Allocation Mismatch",
    438: "Stale Nonce",
    440: "Address Family not Supported",
    441: "Wrong Credentials",
    442: "Unsupported Transport Protocol",
    443: "Peer Address Family Mismatch",
    486: "Allocation Quota Reached",
    500: "Server Error",
    508: "Insufficient Capacity",
}

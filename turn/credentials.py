"""Credentials: long-term keys, TURN REST API ephemeral credentials, stateless nonces.

Pure functions; the caller passes the time. REST credentials follow coturn's ``use-auth-secret``
(draft-uberti-behave-turn-rest, pion ``lt_cred.go``): username ``"<expiry unix time>:<user id>"``,
password ``base64(HMAC-SHA1(secret, username))``. The long-term key is
``MD5(username ":" realm ":" password)`` (RFC 8489 §9.2.2).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


def rest_credentials(secret: str, user_id: str, ttl: int, now: float) -> tuple[str, str]:
    """Mint ``(username, password)`` valid for ``ttl`` seconds from ``now`` (unix time)."""
    if ttl <= 0:
        raise ValueError("ttl must be positive")
    username = f"{int(now) + ttl}:{user_id}"
    return username, rest_password(secret, username)


def rest_password(secret: str, username: str) -> str:
    """``base64(HMAC-SHA1(secret, username))`` as coturn's ``static-auth-secret`` expects."""
    mac = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return base64.b64encode(mac).decode("ascii")


def rest_expiry(username: str, separator: str = ":") -> int | None:
    """The expiry timestamp of a REST username, or None if it does not start with digits."""
    head = username.split(separator, 1)[0]
    if not head.isdigit() or len(head) > 12:
        return None
    return int(head)


def long_term_key(username: str, realm: str, password: str) -> bytes:
    """MD5 long-term credential key (RFC 8489 §9.2.2, SASLprep omitted as coturn does)."""
    return hashlib.md5(f"{username}:{realm}:{password}".encode()).digest()


@dataclass(frozen=True)
class AuthResult:
    """Outcome of a credential lookup: the integrity key and the quota account it counts against."""

    key: bytes
    account: str


class LongTermAuth:
    """Default auth callback: static users, then REST usernames signed by one of ``secrets``.

    ``__call__(username, realm, now)`` returns an :class:`AuthResult`, or None for an unknown user
    or an expired REST username. Several secrets may be given for rotation.
    """

    def __init__(self, users: Mapping[str, str] | None = None, secrets: Sequence[str] = ()) -> None:
        self._users = dict(users or {})
        self._secrets = tuple(secrets)

    def __call__(self, username: str, realm: str, now: float) -> list[AuthResult]:
        """All candidate keys for ``username`` (one per matching secret; empty if refused)."""
        results: list[AuthResult] = []
        password = self._users.get(username)
        if password is not None:
            results.append(AuthResult(long_term_key(username, realm, password), username))
        if self._secrets:
            expiry = rest_expiry(username)
            if expiry is not None and expiry >= now:
                account = username.split(":", 1)[1] if ":" in username else username
                for secret in self._secrets:
                    key = long_term_key(username, realm, rest_password(secret, username))
                    results.append(AuthResult(key, account))
        return results


class NonceFactory:
    """Stateless HMAC nonces (as coturn 4.17 and pion do): ``b64url(ts || HMAC(K, addr|ts)[:8])``,
    16 characters, so that a 401 to an unauthenticated request stays small (amplification).

    Nothing is stored per client; a nonce is valid for ``lifetime`` seconds for the client address it
    was issued to.
    """

    LENGTH = 16

    def __init__(self, key: bytes, lifetime: float) -> None:
        self._key = key
        self.lifetime = lifetime

    def _mac(self, client: str, ts: int) -> bytes:
        return hmac.new(self._key, f"{client}|{ts}".encode(), hashlib.sha256).digest()[:8]

    def make(self, client: str, now: float) -> str:
        ts = int(now) & 0xFFFFFFFF
        raw = ts.to_bytes(4, "big") + self._mac(client, ts)
        return base64.urlsafe_b64encode(raw).decode()

    def check(self, nonce: str, client: str, now: float) -> bool:
        """True if ``nonce`` was issued by us to ``client`` and is not older than the lifetime."""
        if len(nonce) != self.LENGTH or not nonce.isascii():
            return False
        try:
            raw = base64.urlsafe_b64decode(nonce)
        except ValueError:
            return False
        ts = int.from_bytes(raw[:4], "big")
        if not hmac.compare_digest(raw[4:], self._mac(client, ts)):
            return False
        return ts <= now + 5 and now - ts <= self.lifetime

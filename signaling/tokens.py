"""Join tokens: signed (HS256 JWT, PyJWT), naming the session, the participant slot and the
role, and expiring. A join URL is ``<public-url>/join/<token>``; joining again with the same
token is the same participant (a reload replaces the old connection)."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import jwt

from .errors import InvalidToken, TokenExpired

ALGORITHM = "HS256"
AUDIENCE = "parley-join"
ROLES = ("agent", "customer")
MAX_TOKEN_CHARS = 2048


@dataclass(frozen=True)
class JoinClaims:
    session_id: str
    participant_id: str
    role: str
    name: str
    expires_at: int


def mint(
    key: bytes, *, session_id: str, role: str, name: str, now: float, ttl: int
) -> tuple[str, JoinClaims]:
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}")
    claims = JoinClaims(
        session_id=session_id,
        participant_id="p_" + secrets.token_hex(6),
        role=role,
        name=name,
        expires_at=int(now) + ttl,
    )
    payload = {
        "sid": claims.session_id,
        "pid": claims.participant_id,
        "role": role,
        "name": name,
        "iat": int(now),
        "exp": claims.expires_at,
        "aud": AUDIENCE,
    }
    return jwt.encode(payload, key, algorithm=ALGORITHM), claims


def verify(key: bytes, token: object, *, now: float) -> JoinClaims:
    if not isinstance(token, str) or not token:
        raise InvalidToken("a join token is required")
    if len(token) > MAX_TOKEN_CHARS or not token.isascii():
        # a JWT is ASCII; PyJWT raises UnicodeEncodeError (not PyJWTError) on lone surrogates
        raise InvalidToken("the join token is not valid")
    try:
        payload = jwt.decode(
            token,
            key,
            algorithms=[ALGORITHM],
            audience=AUDIENCE,
            options={"require": ["exp", "sid", "pid", "role"], "verify_exp": False},
        )
    except (jwt.PyJWTError, ValueError) as exc:
        raise InvalidToken("the join token is not valid") from exc
    if int(payload["exp"]) <= now:
        raise TokenExpired("the join token has expired")
    role = payload["role"]
    if role not in ROLES:
        raise InvalidToken("the join token names an unknown role")
    return JoinClaims(
        session_id=str(payload["sid"]),
        participant_id=str(payload["pid"]),
        role=role,
        name=str(payload.get("name") or ""),
        expires_at=int(payload["exp"]),
    )

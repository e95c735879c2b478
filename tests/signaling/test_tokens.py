"""Join tokens (``signaling.tokens``): signed, naming session, slot and role, expiring at an
exact second. Pure: the time is an argument; no loop, no socket."""

from __future__ import annotations

import jwt
import pytest

from parley.signaling import tokens
from parley.signaling.errors import InvalidToken, TokenExpired

KEY = b"0123456789abcdef0123456789abcdef"
NOW = 1_700_000_000


def mint(**overrides: object) -> tuple[str, tokens.JoinClaims]:
    args: dict[str, object] = {
        "session_id": "s_1",
        "role": "customer",
        "name": "Carl",
        "now": NOW,
        "ttl": 60,
    }
    args.update(overrides)
    return tokens.mint(KEY, **args)  # type: ignore[arg-type]


def test_a_minted_token_verifies_to_its_claims() -> None:
    token, claims = mint()
    assert claims.session_id == "s_1" and claims.role == "customer" and claims.name == "Carl"
    assert claims.participant_id.startswith("p_") and claims.expires_at == NOW + 60
    assert tokens.verify(KEY, token, now=NOW + 59) == claims


def test_every_token_is_a_new_participant_slot() -> None:
    assert mint()[1].participant_id != mint()[1].participant_id


def test_a_token_expires_at_its_exact_second() -> None:
    token, _ = mint(ttl=60)
    tokens.verify(KEY, token, now=NOW + 59.999)
    with pytest.raises(TokenExpired, match="the join token has expired"):
        tokens.verify(KEY, token, now=NOW + 60)


def test_an_unknown_role_cannot_be_minted() -> None:
    with pytest.raises(ValueError, match="unknown role 'admin'"):
        mint(role="admin")


@pytest.mark.parametrize("token", [None, "", 42, b"bytes"])
def test_no_token_is_refused(token: object) -> None:
    with pytest.raises(InvalidToken, match="a join token is required"):
        tokens.verify(KEY, token, now=NOW)


def test_a_token_signed_with_another_key_is_refused() -> None:
    token, _ = tokens.mint(
        b"another key, 32 bytes long......", session_id="s", role="agent", name="", now=NOW, ttl=60
    )
    with pytest.raises(InvalidToken, match="the join token is not valid"):
        tokens.verify(KEY, token, now=NOW)


def test_a_tampered_token_is_refused() -> None:
    token, _ = mint()
    header, payload, signature = token.split(".")
    forged = jwt.encode(
        {"sid": "s_1", "pid": "p_x", "role": "agent", "exp": NOW + 60, "aud": tokens.AUDIENCE},
        KEY,
        algorithm="HS256",
    ).split(".")[1]
    with pytest.raises(InvalidToken):
        tokens.verify(KEY, f"{header}.{forged}.{signature}", now=NOW)
    with pytest.raises(InvalidToken):
        tokens.verify(KEY, "not.a.token", now=NOW)


def test_an_unsigned_token_is_refused() -> None:
    claims = {"sid": "s_1", "pid": "p_x", "role": "agent", "exp": NOW + 60, "aud": tokens.AUDIENCE}
    unsigned = jwt.encode(claims, None, algorithm="none")
    with pytest.raises(InvalidToken):
        tokens.verify(KEY, unsigned, now=NOW)


def test_a_token_for_another_audience_is_refused() -> None:
    claims = {"sid": "s_1", "pid": "p_x", "role": "agent", "exp": NOW + 60, "aud": "elsewhere"}
    with pytest.raises(InvalidToken):
        tokens.verify(KEY, jwt.encode(claims, KEY, algorithm="HS256"), now=NOW)


@pytest.mark.parametrize("missing", ["sid", "pid", "role", "exp"])
def test_a_token_missing_a_claim_is_refused(missing: str) -> None:
    claims = {"sid": "s_1", "pid": "p_x", "role": "agent", "exp": NOW + 60, "aud": tokens.AUDIENCE}
    del claims[missing]
    with pytest.raises(InvalidToken):
        tokens.verify(KEY, jwt.encode(claims, KEY, algorithm="HS256"), now=NOW)


def test_a_validly_signed_token_with_an_unknown_role_is_refused() -> None:
    claims = {"sid": "s_1", "pid": "p_x", "role": "root", "exp": NOW + 60, "aud": tokens.AUDIENCE}
    with pytest.raises(InvalidToken, match="unknown role"):
        tokens.verify(KEY, jwt.encode(claims, KEY, algorithm="HS256"), now=NOW)

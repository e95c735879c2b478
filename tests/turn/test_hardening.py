"""TURN under abuse (issue 12): the 401 to an unauthenticated Allocate does not amplify, such
answers are rate-limited per source address, and allocations per username are capped."""

from __future__ import annotations

import os

from parley.turn import stun
from parley.turn.allocation import FiveTuple
from parley.turn.handler import SourceBudget, ToClient
from tests.turn.test_handler import CLIENT, T0, Driver, error, make_handler


def first_allocate(*, fingerprint: bool, software: str | None = None) -> bytes:
    """An unauthenticated Allocate like aioice's or a browser's first one."""
    attrs: dict[int, object] = {stun.LIFETIME: 600, stun.REQUESTED_TRANSPORT: 17}
    if software is not None:
        attrs[stun.SOFTWARE] = software
    message = stun.Message(stun.ALLOCATE, stun.REQUEST, os.urandom(12), attrs)
    return message.encode(None, fingerprint=fingerprint)


def answer(handler: object, data: bytes, ft: FiveTuple = CLIENT, now: float = T0) -> bytes | None:
    outputs = handler.handle(data, ft, now)  # type: ignore[attr-defined]
    replies = [o.data for o in outputs if isinstance(o, ToClient)]
    assert len(replies) <= 1
    return replies[0] if replies else None


def test_401_challenge_is_as_small_as_the_rfc_allows() -> None:
    handler = make_handler(realm="parley")
    for fingerprint in (False, True):
        request = first_allocate(fingerprint=fingerprint)
        reply = answer(handler, request)
        assert reply is not None
        msg = stun.parse(reply)
        assert error(msg) == 401 and msg.get(stun.REALM) == "parley" and msg.get(stun.NONCE)
        assert stun.SOFTWARE not in msg
        assert (stun.FINGERPRINT in msg) == fingerprint  # mirrors the request
        # header 20 + ERROR-CODE 8 + REALM 12 + NONCE 20 (+ FINGERPRINT 8): it was 88 bytes
        assert len(reply) == 60 + 8 * fingerprint, len(reply)
        assert len(reply) <= 1.7 * len(request), (len(reply), len(request))


def test_401_is_no_larger_than_a_request_that_carries_software() -> None:
    handler = make_handler(realm="parley", software="parley")  # we still send no SOFTWARE
    request = first_allocate(fingerprint=True, software="Mozilla Firefox 133.0")
    reply = answer(handler, request)
    assert reply is not None and error(stun.parse(reply)) == 401
    assert len(reply) <= len(request), (len(reply), len(request))


def test_the_small_challenge_still_lets_a_client_authenticate() -> None:
    d = Driver(make_handler())
    resp = d.allocate()
    assert resp.cls == stun.SUCCESS, resp


def test_unauthenticated_answers_are_rate_limited_per_source_address() -> None:
    handler = make_handler(unauthenticated_rate=10.0, unauthenticated_burst=20.0)
    answered = sum(
        answer(handler, first_allocate(fingerprint=False)) is not None for _ in range(1000)
    )
    assert answered == 20
    binding = stun.Message(stun.BINDING, stun.REQUEST, os.urandom(12), {}).encode(None)
    assert answer(handler, binding) is None  # Binding answers share the budget
    other = FiveTuple("udp", ("192.0.2.99", 40000), CLIENT.server)
    assert answer(handler, first_allocate(fingerprint=False), other) is not None
    # the budget refills with time
    assert answer(handler, first_allocate(fingerprint=False), now=T0 + 1.0) is not None
    assert handler.stats()["turn_unauthenticated_dropped"] == 981


def test_source_budget_table_is_bounded() -> None:
    budget = SourceBudget(rate=1.0, burst=1.0, max_sources=50)
    for i in range(5000):
        assert budget.allow(f"10.0.{i // 256}.{i % 256}", T0)
    assert len(budget) == 50


def test_allocations_per_username_are_capped() -> None:
    handler = make_handler(user_quota=3)
    results = []
    for i in range(4):
        ft = FiveTuple("udp", ("192.0.2.10", 41000 + i), CLIENT.server)
        resp = Driver(handler, ft).allocate()
        results.append(error(resp))
    assert results == [None, None, None, 486]
    assert handler.allocations.count("alice") == 3

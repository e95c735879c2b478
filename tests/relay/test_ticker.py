"""relay.ticker: one timer per period for the whole process."""

from __future__ import annotations

import asyncio

import pytest

from parley.relay import ticker


async def wait_for(predicate: object, timeout: float = 3.0) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        await asyncio.sleep(0.005)
    return False


async def test_callbacks_of_one_period_share_one_timer_on_a_grid() -> None:
    calls: list[tuple[str, float]] = []
    ticks = [ticker.every(0.05, lambda now, n=n: calls.append((n, now))) for n in "abc"]
    assert ticker.registered(0.05) == 3
    assert await wait_for(lambda: len(calls) >= 9)
    for tick in ticks:
        tick.cancel()
    assert ticker.registered(0.05) == 0
    # called in the order added, all three at the same time, on multiples of the period
    first = calls[:3]
    assert [n for n, _ in first] == ["a", "b", "c"]
    assert len({now for _, now in first}) == 1
    grid = first[0][1] / 0.05
    assert abs(grid - round(grid)) < 0.2  # the loop fires at or just after the due time
    count = len(calls)
    await asyncio.sleep(0.15)
    assert len(calls) == count  # cancelled: no more calls


async def test_a_failing_callback_is_logged_and_the_others_still_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls: list[float] = []

    def broken(now: float) -> None:
        raise RuntimeError("boom")

    bad = ticker.every(0.02, broken)
    good = ticker.every(0.02, calls.append)
    assert await wait_for(lambda: len(calls) >= 3)
    bad.cancel()
    good.cancel()
    assert "tick callback failed" in caplog.text
    assert "boom" in caplog.text


async def test_a_callback_may_cancel_itself_and_a_later_one_of_the_same_tick() -> None:
    calls: list[str] = []
    holder: dict[str, ticker.Tick] = {}

    def first(now: float) -> None:
        calls.append("first")
        holder["first"].cancel()
        holder["second"].cancel()

    holder["first"] = ticker.every(0.02, first)
    holder["second"] = ticker.every(0.02, lambda now: calls.append("second"))
    third = ticker.every(0.02, lambda now: calls.append("third"))
    assert await wait_for(lambda: calls.count("third") >= 2)
    third.cancel()
    assert calls.count("first") == 1
    assert "second" not in calls
    assert not holder["first"].active
    holder["first"].cancel()  # idempotent


async def test_periods_are_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        ticker.every(0.0, lambda now: None)

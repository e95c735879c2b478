"""Capacity mode of ``parley bench``: the largest N that stays within the latency and loss
bounds, found by doubling and then bisecting."""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from typing import Any

from .results import Point


async def find_capacity(
    args: argparse.Namespace, point: Callable[[int], Awaitable[Point]]
) -> dict[str, Any]:
    """Double N until a point fails the bounds, then bisect between the last pass and the
    first failure (at most ~log2(max) + 4 points)."""
    good, bad = 0, args.max_sessions + 1
    n = max(1, args.sessions[0])
    steps = 0
    while good + 1 < bad and steps < 14:
        steps += 1
        p = await point(n)
        if p.passes(args.p99_bound, args.loss_bound):
            good = n
            n = n * 2 if bad > args.max_sessions else (good + bad) // 2
        else:
            bad = n
            n = (good + bad) // 2
        n = min(n, args.max_sessions)
        if n <= good or n >= bad:
            break
    return {
        "largest_passing_sessions": good,
        "first_failing_sessions": bad,
        "p99_bound_ms": args.p99_bound,
        "loss_bound_pct": args.loss_bound,
    }

"""One timer per period for the whole process, instead of one task per leg or per session.

Periodic checks off the packet path (the dead-leg watchdog of every leg, each session's look at
who is speaking) used to be a task each, sleeping in a loop: at N sessions that is N wakeups,
N futures and N task steps per period. A :class:`Beat` keeps one ``call_at`` handle per period
and event loop, on a grid (multiples of the period on the loop's clock), and calls every
registered callback from it, synchronously, in the order they were added. Callbacks must be
quick and must not block; one that raises is logged and stays registered (a bug in one
session's check must not stop the others').
"""

from __future__ import annotations

import asyncio
import logging
import math
import weakref
from collections.abc import Callable

logger = logging.getLogger(__name__)

TickCallback = Callable[[float], None]
"""Called with the loop's time (``loop.time()``) at the tick."""

_beats: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[float, Beat]] = (
    weakref.WeakKeyDictionary()
)


class Tick:
    """One registration; :meth:`cancel` removes it (idempotent)."""

    __slots__ = ("_beat", "_key")

    def __init__(self, beat: Beat, key: int) -> None:
        self._beat: Beat | None = beat
        self._key = key

    def cancel(self) -> None:
        beat, self._beat = self._beat, None
        if beat is not None:
            beat.remove(self._key)

    @property
    def active(self) -> bool:
        return self._beat is not None


class Beat:
    """The callbacks of one period on one loop, and the one timer that calls them."""

    __slots__ = ("period", "_loop", "_callbacks", "_next_key", "_handle", "__weakref__")

    def __init__(self, loop: asyncio.AbstractEventLoop, period: float) -> None:
        self.period = period
        self._loop = weakref.ref(loop)  # the registry's key: never hold it strongly
        self._callbacks: dict[int, TickCallback] = {}
        self._next_key = 0
        self._handle: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return len(self._callbacks)

    def add(self, callback: TickCallback) -> Tick:
        key = self._next_key
        self._next_key += 1
        self._callbacks[key] = callback
        if self._handle is None:
            self._schedule()
        return Tick(self, key)

    def remove(self, key: int) -> None:
        self._callbacks.pop(key, None)
        if not self._callbacks and self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _schedule(self) -> None:
        loop = self._loop()
        if loop is None or loop.is_closed():
            return
        # the next multiple of the period: every beat of this period fires on the same grid
        due = (math.floor(loop.time() / self.period) + 1) * self.period
        self._handle = loop.call_at(due, self._fire)

    def _fire(self) -> None:
        self._handle = None
        loop = self._loop()
        if loop is None:
            return
        now = loop.time()
        for key, callback in list(self._callbacks.items()):
            if key not in self._callbacks:
                continue  # removed by an earlier callback of this tick
            try:
                callback(now)
            except Exception:
                logger.exception("a %.3g s tick callback failed", self.period)
        if self._callbacks and self._handle is None:
            self._schedule()


def every(period: float, callback: TickCallback) -> Tick:
    """Call ``callback(now)`` every ``period`` seconds on the running loop, on the shared timer
    of that period (the first call within one period)."""
    if not period > 0:
        raise ValueError(f"a tick period must be positive, not {period!r}")
    loop = asyncio.get_running_loop()
    beats = _beats.get(loop)
    if beats is None:
        beats = _beats[loop] = {}
    beat = beats.get(period)
    if beat is None:
        beat = beats[period] = Beat(loop, period)
    return beat.add(callback)


def registered(period: float) -> int:
    """Callbacks registered for ``period`` on the running loop (for tests and metrics)."""
    beat = _beats.get(asyncio.get_running_loop(), {}).get(period)
    return len(beat) if beat is not None else 0

"""Talk time from the RFC 6464 audio-level header extension, without decoding.

Each audio packet carries the level of its audio in −dBov (0 loudest, 127 silence) and, from
browsers, a voice-activity flag. A packet louder than :data:`SPEECH_LEVEL` (or flagged) counts
as speech for its duration (RTP timestamp step, 20 ms for Opus); speech less than
:data:`HANGOVER` apart is one talk spurt, so the pauses inside a sentence are talk time too.
Spurts are kept as intervals of the relay's clock, turned into wall-clock intervals when taken,
so the report can add them up and find overlaps (both talking at once) across participants.
The same tracker answers "is this participant speaking now" (:meth:`SpeechTracker.speaking`),
which signaling sends to the pages: one implementation for talk time and the speaking rings.
"""

from __future__ import annotations

SPEECH_LEVEL = 50
"""Levels from 0 to this (−dBov) are speech: a quiet speaker is around −40 dBov, a silent
microphone below −70."""

HANGOVER = 0.3
"""Seconds of silence that still belong to the same talk spurt."""

DEFAULT_PACKET = 0.02
MAX_PACKET = 0.12


class SpeechTracker:
    """One audio producer's talk spurts. ``on_level`` is per packet and O(1)."""

    __slots__ = ("clock_rate", "spoken", "_start", "_end", "_done", "_last_ts")

    def __init__(self, clock_rate: int) -> None:
        self.clock_rate = clock_rate or 48000
        self.spoken = 0.0
        """Seconds of talk spurts taken so far (see :meth:`take`)."""
        self._start: float | None = None
        self._end = 0.0
        self._done: list[tuple[float, float]] = []
        self._last_ts: int | None = None

    def on_level(self, level: int, rtp_timestamp: int, now: float, voice: bool = False) -> None:
        """One packet's level (``now`` is the relay's monotonic clock)."""
        last, self._last_ts = self._last_ts, rtp_timestamp
        if not voice and level > SPEECH_LEVEL:
            return
        duration = DEFAULT_PACKET
        if last is not None:
            step = ((rtp_timestamp - last) & 0xFFFFFFFF) / self.clock_rate
            if 0 < step <= MAX_PACKET:
                duration = step
        if self._start is not None and now <= self._end + HANGOVER:
            self._end = max(self._end, now + duration)
            return
        if self._start is not None:
            self._done.append((self._start, self._end))
        self._start, self._end = now, now + duration

    def speaking(self, now: float) -> bool:
        """Whether a talk spurt is going on at ``now``: from the first loud packet until
        :data:`HANGOVER` after the last one."""
        return self._start is not None and now <= self._end + HANGOVER

    def take(self, now: float, wall: float) -> list[list[float]]:
        """The talk since the previous call as ``[start, end]`` wall-clock pairs (``wall`` is
        the wall-clock time of ``now``); a spurt still going on is split at ``now``."""
        pieces = self._done
        self._done = []
        if self._start is not None:
            end = min(self._end, now)
            if end > self._start:
                pieces.append((self._start, end))
            if self._end + HANGOVER < now:
                self._start = None
            else:
                self._start = end
        offset = wall - now
        out = [[round(a + offset, 3), round(b + offset, 3)] for a, b in pieces if b > a]
        self.spoken += sum(b - a for a, b in out)
        return out


def merge(intervals: list[list[float]], gap: float = 0.005) -> list[list[float]]:
    """Sorted, with touching or overlapping intervals joined."""
    out: list[list[float]] = []
    for a, b in sorted(intervals):
        if out and a <= out[-1][1] + gap:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return out


def total(intervals: list[list[float]]) -> float:
    return sum(b - a for a, b in intervals)


def overlap(spurts: dict[str, list[list[float]]]) -> tuple[float, dict[str, float]]:
    """Seconds when two or more talk at once, in total and for each speaker."""
    edges: list[tuple[float, int, str]] = []
    for who, intervals in spurts.items():
        for a, b in merge(intervals):
            edges.append((a, 1, who))
            edges.append((b, -1, who))
    edges.sort(key=lambda e: (e[0], e[1]))
    talking: set[str] = set()
    both = 0.0
    mine = {who: 0.0 for who in spurts}
    last = None
    for at, step, who in edges:
        if last is not None and len(talking) >= 2:
            both += at - last
            for w in talking:
                mine[w] += at - last
        if step > 0:
            talking.add(who)
        else:
            talking.discard(who)
        last = at
    return both, mine

"""What every page shows about each participant, decided once by the server for all browsers:
``participant_state`` (camera / microphone / screen on or off), ``speaking`` (who talks now)
and ``connection_quality`` (good / fair / poor).

- A source is on when the participant publishes a track of it and has not turned it off
  (``track_state``); a page that mutes also stops sending, so nobody guesses from silence.
- Speaking comes from the RFC 6464 audio levels the relay reads off every audio packet: the
  same :class:`relay.speech.SpeechTracker` that measures the reports' talk time.
- Quality is the worst of the participant's legs (what it sends, what it receives), scored
  like the reports do (:mod:`relay.quality`) over the last :data:`QUALITY_INTERVAL` seconds.

One :class:`Presence` per session polls the relay's counters every :data:`TICK` seconds (off
the packet path: the per-packet work is the tracker's O(1) ``on_level``) and sends on change.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from parley.relay.quality import LegScore, grade

from .messages import SOURCES

if TYPE_CHECKING:
    from .sessions import Participant, Session

logger = logging.getLogger(__name__)

TICK = 0.1
"""Seconds between looks at who is speaking."""
SPEAKING_MIN_INTERVAL = 0.25
"""At most one ``speaking`` message per this many seconds (a change waits for the next tick)."""
QUALITY_INTERVAL = 2.0
"""Seconds each connection-quality score covers (and between two looks)."""


def state_of(participant: Participant) -> dict[str, bool]:
    """``{"camera": …, "microphone": …, "screen": …}``: published and not turned off;
    ``"reconnecting"``: its network went away and it is expected back (resume or leg rebuild)."""
    peer = participant.peer
    sources = {p.source for p in peer.producers if not p.closed} if peer is not None else set()
    state = {s: s in sources and s not in participant.muted for s in SOURCES}
    state["reconnecting"] = participant.reconnecting
    return state


class Presence:
    """The session's ``participant_state``, ``speaking`` and ``connection_quality`` messages."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.speaking: list[str] = []
        """Who is speaking, as last sent (first started first)."""
        self.quality: dict[str, str] = {}
        """participant_id -> the grade last sent."""
        self._states: dict[str, dict[str, bool]] = {}
        self._legs: dict[str, LegScore] = {}
        self._task: asyncio.Task[None] | None = None
        self._spoken_at = -1e9

    # --- participant_state ------------------------------------------------------------------

    def state_message(self, participant: Participant) -> dict[str, Any]:
        return {"type": "participant_state", "participant_id": participant.id} | state_of(
            participant
        )

    async def state_changed(self, participant: Participant) -> None:
        """Tell everyone the participant's state if it differs from what they were told."""
        state = state_of(participant)
        if self._states.get(participant.id) == state:
            return
        self._states[participant.id] = state
        await self.session.broadcast(self.state_message(participant))

    def joined(self, participant: Participant) -> None:
        """A (re)joined participant starts from nothing published and nothing turned off."""
        participant.muted.clear()
        self._states[participant.id] = state_of(participant)
        self.quality.pop(participant.id, None)
        if self._task is None or self._task.done():
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # the loop-free session tests drive coroutines by hand
                return
            self._task = loop.create_task(self._run())

    # --- the loop ---------------------------------------------------------------------------

    async def _run(self) -> None:
        next_quality = time.monotonic() + QUALITY_INTERVAL
        while self.session.connected():
            await asyncio.sleep(TICK)
            try:
                now = time.monotonic()
                await self._check_speaking(now)
                if now >= next_quality:
                    next_quality = now + QUALITY_INTERVAL
                    await self._check_quality()
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug here must not stop the session
                logger.exception("[%s] presence update failed", self.session.id)

    async def _check_speaking(self, now: float) -> None:
        talking = set()
        for participant in self.session.connected():
            if participant.peer is None or "microphone" in participant.muted:
                continue
            for producer in participant.peer.producers:
                speech = producer.quality.speech
                if speech is not None and speech.speaking(now):
                    talking.add(participant.id)
                    break
        if talking == set(self.speaking) or now - self._spoken_at < SPEAKING_MIN_INTERVAL:
            return
        self.speaking = [p for p in self.speaking if p in talking] + sorted(
            talking.difference(self.speaking)
        )
        self._spoken_at = now
        await self.session.broadcast({"type": "speaking", "participant_ids": list(self.speaking)})

    async def _check_quality(self) -> None:
        legs: dict[str, LegScore] = {}
        for participant in self.session.connected():
            peer = participant.peer
            if peer is None:
                continue
            consumers = list(peer.subscribe.consumers.values())
            rtts = [c.quality.rtt for c in consumers if c.quality.rtt is not None]
            rtt_ms = 1000 * sum(rtts) / len(rtts) if rtts else None
            scores = []
            for producer in peer.producers:
                leg = legs[producer.id] = self._legs.get(producer.id) or LegScore()
                scores.append(leg.upstream(producer, rtt_ms))
            for consumer in consumers:
                leg = legs[consumer.id] = self._legs.get(consumer.id) or LegScore()
                scores.append(leg.downstream(consumer))
            measured = [s for s in scores if s is not None]
            quality = grade(min(measured)) if measured else None
            if quality is None or self.quality.get(participant.id) == quality:
                continue
            self.quality[participant.id] = quality
            await self.session.broadcast(
                {
                    "type": "connection_quality",
                    "participant_id": participant.id,
                    "quality": quality,
                }
            )
        self._legs = legs

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

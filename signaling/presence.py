"""What every page shows about each participant, decided once by the server for all browsers:
``participant_state`` (camera / microphone / screen on or off), ``speaking`` (who talks now)
and ``connection_quality`` (good / fair / poor).

- A source is on when the participant publishes a track of it and has not turned it off
  (``track_state``); a page that mutes also stops sending, so nobody guesses from silence.
- Speaking comes from the RFC 6464 audio levels the relay reads off every audio packet: the
  same :class:`relay.speech.SpeechTracker` that measures the reports' talk time.
- Quality is the worst of the participant's legs (what it sends, what it receives), scored
  like the reports do (:mod:`relay.quality`) over the last :data:`QUALITY_INTERVAL` seconds.

One :class:`Presence` per session looks at the relay's counters every :data:`TICK` seconds
while anybody publishes audio levels, and at the quality every :data:`QUALITY_INTERVAL` (off the
packet path: the per-packet work is the tracker's O(1) ``on_level``), on timers the whole
process shares (:mod:`relay.ticker`), and sends on change.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from typing import TYPE_CHECKING, Any

from parley.relay import ticker
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
        self._quality_tick: ticker.Tick | None = None
        self._speaking_tick: ticker.Tick | None = None
        self._outbox: collections.deque[dict[str, Any]] = collections.deque()
        self._sender: asyncio.Future[None] | None = None
        self._spoken_at = -1e9

    # --- participant_state ------------------------------------------------------------------

    def state_message(self, participant: Participant) -> dict[str, Any]:
        return {"type": "participant_state", "participant_id": participant.id} | state_of(
            participant
        )

    async def state_changed(self, participant: Participant) -> None:
        """Tell everyone the participant's state if it differs from what they were told."""
        self._watch_speech()
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
        if self._quality_tick is None or not self._quality_tick.active:
            try:
                asyncio.get_running_loop()
            except RuntimeError:  # the loop-free session tests drive coroutines by hand
                return
            self._quality_tick = ticker.every(QUALITY_INTERVAL, self._quality_due)
        self._watch_speech()

    # --- the looks, on the process's shared timers (relay/ticker.py) ---------------------------

    def _watch_speech(self) -> None:
        """Look at who is speaking every :data:`TICK` only while somebody may be: a session
        with no audio level to read (nobody publishes a microphone) costs no 10 Hz wakeup. Run
        on every published or turned-off track and at every quality look."""
        needed = bool(self.speaking) or any(
            producer.quality.speech is not None
            for participant in self.session.connected()
            if participant.peer is not None
            for producer in participant.peer.producers
        )
        if needed and self._speaking_tick is None and self._quality_tick is not None:
            self._speaking_tick = ticker.every(TICK, self._speaking_due)
        elif not needed and self._speaking_tick is not None:
            self._speaking_tick.cancel()
            self._speaking_tick = None

    def _speaking_due(self, now: float) -> None:
        if not self.session.connected():
            self.close()
            return
        # the tick's clock is the loop's; speech trackers use time.monotonic()
        message = self._check_speaking(time.monotonic())
        if message is not None:
            self._post(message)

    def _quality_due(self, now: float) -> None:
        if not self.session.connected():
            self.close()
            return
        for message in self._check_quality():
            self._post(message)
        self._watch_speech()

    def _post(self, message: dict[str, Any]) -> None:
        """Broadcast off the tick, in order: one sender per session drains the outbox (a slow
        page delays its own session's news only)."""
        self._outbox.append(message)
        if self._sender is None or self._sender.done():
            self._sender = asyncio.ensure_future(self._send_all())

    async def _send_all(self) -> None:
        while self._outbox:
            message = self._outbox.popleft()
            try:
                await self.session.broadcast(message)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug here must not stop the session
                logger.exception("[%s] presence update failed", self.session.id)

    def _check_speaking(self, now: float) -> dict[str, Any] | None:
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
            return None
        self.speaking = [p for p in self.speaking if p in talking] + sorted(
            talking.difference(self.speaking)
        )
        self._spoken_at = now
        return {"type": "speaking", "participant_ids": list(self.speaking)}

    def _check_quality(self) -> list[dict[str, Any]]:
        legs: dict[str, LegScore] = {}
        messages = []
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
            messages.append(
                {
                    "type": "connection_quality",
                    "participant_id": participant.id,
                    "quality": quality,
                }
            )
        self._legs = legs
        return messages

    def close(self) -> None:
        for tick in (self._speaking_tick, self._quality_tick):
            if tick is not None:
                tick.cancel()
        self._speaking_tick = self._quality_tick = None
        self._outbox.clear()
        if self._sender is not None:
            self._sender.cancel()
            self._sender = None

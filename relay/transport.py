"""Transports: one aiortc peer connection each (mediasoup's WebRtcTransport).

Every participant has two: a :class:`PublishTransport` on which the participant offers the
tracks it sends (each becomes a :class:`~relay.producer.Producer`), and a
:class:`SubscribeTransport` on which the relay offers everybody else's tracks (each a
:class:`~relay.consumer.Consumer`), re-offering whenever producers come or go, one negotiation
at a time.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence

from aiortc import (
    RTCBundlePolicy,
    RTCConfiguration,
    RTCIceCandidate,
    RTCPeerConnection,
    RTCRtpSender,
    RTCRtpTransceiver,
    RTCSessionDescription,
)
from aiortc import sdp as aiortc_sdp
from aiortc.rtcrtpparameters import RTCRtpCodecCapability, RTCRtpCodecParameters

from . import _aiortc, ticker
from .candidates import parse_candidate
from .config import MediaConfig
from .consumer import Consumer, SilentTrack, StreamPosition
from .errors import InvalidSdp, NegotiationError, NoMedia, TransportClosed, UnsupportedCodec
from .fanout import FanOut
from .producer import Producer

logger = logging.getLogger(__name__)

SOURCES = ("camera", "microphone", "screen")
DEFAULT_SOURCE = {"audio": "microphone", "video": "camera"}

OfferSender = Callable[[str, list[dict[str, str | None]]], Awaitable[None]]

GONE_STATES = ("failed", "closed")
"""Connection states after which a leg carries no media: aiortc closes a peer connection by
itself when its DTLS transport ends (the remote side closed, or a datagram killed it)."""


class LegWatchdog:
    """Calls ``on_dead`` once when a connected leg has received no datagram at all (RTP, RTCP,
    STUN consent) for ``after`` seconds: a dead network path, noticed well before aioice's
    consent expiry (6 failed checks 5 s apart). Reads only a counter the datagram guard keeps,
    so the packet path pays one increment; the looks ride the process's shared timer of their
    period (:mod:`relay.ticker`), not a task per leg."""

    def __init__(self, pc: RTCPeerConnection, after: float, on_dead: Callable[[], None]) -> None:
        self._pc = pc
        self._after = after
        self._on_dead = on_dead
        self._tick: ticker.Tick | None = None
        self._seen = -1
        self._since = 0.0

    def start(self) -> None:
        if self._after > 0 and self._tick is None:
            self._seen, self._since = -1, asyncio.get_running_loop().time()
            self._tick = ticker.every(min(1.0, self._after / 4), self._look)

    def stop(self) -> None:
        if self._tick is not None:
            self._tick.cancel()

    def _look(self, now: float) -> None:
        state = self._pc.connectionState
        if state != "connected":
            if state in GONE_STATES:
                self.stop()
            else:
                self._seen, self._since = -1, now  # connecting: nothing is due yet
            return
        count = _aiortc.datagrams_received(self._pc)
        if count != self._seen:
            self._seen, self._since = count, now
        elif now - self._since >= self._after:
            self.stop()
            self._on_dead()


class TrickledCandidates:
    """The remote candidates a page trickles after its offer or answer (RFC 8838), added to the
    leg's ICE agent in the background: aioice resolves mDNS names, which may take seconds, and
    the page's next signaling message must not wait for that. Candidates of another ICE
    generation (a leg this one replaced: their ``ufrag`` differs) and candidates before the
    remote description are ignored; aioice pairs each one it can with the relay's host
    candidates, and checks the page sends meanwhile already work (peer-reflexive)."""

    def __init__(self, pc: RTCPeerConnection, peer_id: str, leg: str) -> None:
        self._pc = pc
        self._name = f"[{peer_id}] {leg}"
        self._ufrag: str | None = None
        self._mid: str | None = None
        self._tasks: set[asyncio.Future[None]] = set()
        self.added = 0
        """Candidates handed to aiortc (end-of-candidates not counted)."""

    def described(self, parsed: aiortc_sdp.SessionDescription) -> None:
        """The remote description was applied: its ICE credentials and the bundle's mid."""
        first = parsed.media[0] if parsed.media else None
        if first is not None and first.ice is not None:
            self._ufrag = first.ice.usernameFragment
            self._mid = first.rtp.muxId

    def add(self, text: str | None, ufrag: str | None) -> bool:
        """One candidate line, or None (or "") for end-of-candidates. Whether it was taken;
        raises :class:`InvalidCandidate` for a malformed line."""
        candidate = parse_candidate(text) if text else None
        if self._ufrag is None or (ufrag and ufrag != self._ufrag):
            logger.debug("%s candidate ignored (no or another remote description)", self._name)
            return False
        if candidate is not None:
            if candidate.protocol != "udp":
                return False  # aioice's host candidates are UDP only: nothing would pair
            candidate.sdpMid = self._mid
            candidate.sdpMLineIndex = 0
            self.added += 1
        task = asyncio.ensure_future(self._apply(candidate))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def _apply(self, candidate: RTCIceCandidate | None) -> None:
        try:
            await self._pc.addIceCandidate(candidate)
        except Exception as exc:  # a closed connection, a candidate aioice refuses
            logger.debug("%s candidate not added: %r", self._name, exc)

    def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()


def _new_pc() -> RTCPeerConnection:
    # MAX_BUNDLE: one transport per peer connection; avoids aiortc's lost second track when one
    # offer adds two tracks of the same kind (shared/research/feasibility.md).
    return _aiortc.PeerConnection(
        RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)
    )


def parse_sdp(sdp: str) -> aiortc_sdp.SessionDescription:
    if not isinstance(sdp, str) or not sdp.strip():
        raise InvalidSdp("the SDP is empty")
    try:
        return aiortc_sdp.SessionDescription.parse(sdp)
    except Exception as exc:  # aiortc raises ValueError, IndexError, KeyError, ...
        raise InvalidSdp(f"the SDP cannot be parsed: {exc}") from exc


DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")


def with_default_directions(sdp: str) -> str:
    """Give every m-section without a direction attribute an explicit one: the session-level
    direction, else ``sendrecv`` (RFC 8866 §6.7; aiortc needs it explicit)."""
    lines = sdp.replace("\r\n", "\n").split("\n")
    sections: list[list[str]] = [[]]
    for line in lines:
        if line.startswith("m="):
            sections.append([])
        sections[-1].append(line)
    session_default = next(
        (line[2:].strip() for line in sections[0] if line[2:].strip() in DIRECTIONS), "sendrecv"
    )
    changed = False
    for section in sections[1:]:
        if not any(line.startswith("a=") and line[2:].strip() in DIRECTIONS for line in section):
            section.insert(1, f"a={session_default}")
            changed = True
    if not changed:
        return sdp
    return "\r\n".join(line for section in sections for line in section)


def check_offer(
    parsed: aiortc_sdp.SessionDescription, negotiated: Sequence[tuple[str, str]] = ()
) -> None:
    """Refuse, before aiortc applies it, an offer aiortc would half-apply and then fail on:
    missing or shared mids, missing ICE credentials, negotiated m-sections dropped, moved or
    changed in kind (RFC 8829 §5.2.2: m-lines are never removed or reordered), sections outside
    the BUNDLE group. ``negotiated``: the ``(mid, kind)`` of the last applied offer, in order."""
    seen: set[str] = set()
    for index, media in enumerate(parsed.media):
        mid = media.rtp.muxId
        if not mid:
            raise InvalidSdp(f"m-section {index} has no mid")
        if mid in seen:
            raise InvalidSdp(f"two m-sections share the mid {mid[:32]!r}")
        seen.add(mid)
        if media.ice is None or not media.ice.usernameFragment or not media.ice.password:
            raise InvalidSdp(f"m-section {mid[:32]!r} has no ICE credentials")
    offered = [(m.rtp.muxId, m.kind) for m in parsed.media]
    if offered[: len(negotiated)] != list(negotiated):
        raise InvalidSdp("the offer drops, moves or changes negotiated m-sections")
    # one transport per connection (max-bundle): aiortc leaves an unbundled section without one
    bundle = next((g.items for g in parsed.group if g.semantic == "BUNDLE"), None)
    if bundle is not None and any(mid not in seen for mid in bundle):
        raise InvalidSdp("the BUNDLE group names an m-section the offer does not have")
    active = [m.rtp.muxId for m in parsed.media if m.port != 0]
    if len(parsed.media) > 1 and (bundle is None or any(mid not in bundle for mid in active)):
        raise InvalidSdp("every m-section must be in the BUNDLE group")


def codec_preferences(codec: RTCRtpCodecParameters, kind: str) -> list[RTCRtpCodecCapability]:
    """The capabilities to offer a subscriber for a producer's ``codec``: that codec and RTX."""
    capabilities = RTCRtpSender.getCapabilities(kind).codecs
    chosen: list[RTCRtpCodecCapability] = []
    for cap in capabilities:
        if cap.mimeType.lower() != codec.mimeType.lower() or cap.clockRate != codec.clockRate:
            continue
        if codec.mimeType.lower() == "video/h264":
            mode = str(codec.parameters.get("packetization-mode", "0"))
            if str(cap.parameters.get("packetization-mode", "0")) != mode:
                continue
        chosen.append(cap)
        break
    if not chosen:
        raise UnsupportedCodec(f"cannot forward {codec.mimeType}")
    rtx = [c for c in capabilities if c.mimeType.lower().endswith("/rtx")]
    return chosen + rtx[:1]


CodecKey = tuple[str, int, str]


def codec_key(codec: RTCRtpCodecParameters) -> CodecKey:
    """What makes two producers' codecs the same on the wire (H.264 packetization modes
    differ)."""
    mode = str(codec.parameters.get("packetization-mode", "0"))
    return codec.mimeType.lower(), codec.clockRate, mode


class PublishTransport:
    """The peer connection a participant sends on; the participant offers."""

    def __init__(
        self,
        *,
        peer_id: str,
        config: MediaConfig,
        fanout: FanOut,
        on_producer: Callable[[Producer], None],
        on_producer_closed: Callable[[Producer], None],
        on_failed: Callable[[], None],
        orphans: Sequence[Producer] = (),
    ) -> None:
        self.peer_id = peer_id
        self.pc = _new_pc()
        self.producers: dict[str, Producer] = {}
        self.orphans: list[Producer] = list(orphans)
        """Producers of the publish leg this one replaces: the first offer adopts each one
        whose source and codec it publishes again (subscribers keep their consumers, no
        renegotiation), and closes the others."""
        self.closed = False
        self._config = config
        self._fanout = fanout
        self._on_producer = on_producer
        self._on_producer_closed = on_producer_closed
        self._lock = asyncio.Lock()
        self._negotiated: list[tuple[str, str]] = []
        """``(mid, kind)`` of the m-sections of the last offer applied, in order."""

        self.connected = asyncio.Event()
        self.replacement = False
        """Whether this leg replaces a dead one (set by the peer)."""
        self.candidates = TrickledCandidates(self.pc, peer_id, "publish")

        def dead() -> None:
            if not self.closed:
                logger.info("[%s] publish connection silent: dead", self.peer_id)
                on_failed()

        self.watchdog = LegWatchdog(self.pc, config.dead_leg_after, dead)

        @self.pc.on("connectionstatechange")
        def _state() -> None:
            if self.pc.connectionState == "connected":
                self.connected.set()
            if self.pc.connectionState in GONE_STATES and not self.closed:
                logger.info("[%s] publish connection %s", self.peer_id, self.pc.connectionState)
                on_failed()

    def detach(self) -> list[Producer]:
        """Close this leg but keep its producers open (for the leg that replaces it)."""
        self.closed = True
        self.watchdog.stop()
        self.candidates.close()
        kept = [*self.producers.values(), *self.orphans]
        self.producers.clear()
        self.orphans = []
        return kept

    async def handle_offer(self, sdp: str, sources: dict[str, str]) -> str:
        """Apply the participant's offer, create or close producers, return our answer.

        A refused offer leaves the connection as it was (the checks run before aiortc applies
        anything); negotiations run one at a time, so a failed one never blocks the next."""
        sdp = with_default_directions(sdp)
        parsed = parse_sdp(sdp)
        if not any(m.kind in ("audio", "video") for m in parsed.media):
            raise NoMedia("the offer has no audio or video section")
        async with self._lock:
            if self.closed:
                raise TransportClosed("the publish connection is closed")
            check_offer(parsed, self._negotiated)
            # under the lock nothing else negotiates: "have-remote-offer" is a failed earlier
            # attempt, which aiortc lets a new offer replace
            if self.pc.signalingState not in ("stable", "have-remote-offer"):
                raise NegotiationError("a publish negotiation is already in progress")
            try:
                await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
            except Exception as exc:
                if self.closed:
                    raise TransportClosed("the publish connection is closed") from exc
                raise InvalidSdp(f"the offer cannot be applied: {exc}") from exc
            self._negotiated = [(m.rtp.muxId, m.kind) for m in parsed.media]
            self.candidates.described(parsed)
            self._sync_producers(parsed, sources)
            for orphan in self.orphans:
                orphan.close()  # not published again on the new leg
            self.orphans = []
            _aiortc.configure_host_candidates(
                self.pc, list(self._config.addresses), self._config.port_range
            )
            try:
                answer = await self.pc.createAnswer()
                await self.pc.setLocalDescription(answer)
            except Exception as exc:
                if self.closed:
                    raise TransportClosed("the publish connection is closed") from exc
                raise NegotiationError(f"cannot answer this offer: {exc}") from exc
            _aiortc.install_fast_receive(self.pc)
            self.watchdog.start()
            return str(self.pc.localDescription.sdp)

    def _sync_producers(
        self, parsed: aiortc_sdp.SessionDescription, sources: dict[str, str]
    ) -> None:
        media_by_mid = {m.rtp.muxId: m for m in parsed.media}
        for transceiver in self.pc.getTransceivers():
            mid = transceiver.mid
            if mid is None:
                continue
            direction = _aiortc.transceiver_offer_direction(transceiver)
            sending = direction in ("recvonly", "sendrecv")
            producer = self.producers.get(mid)
            if producer is not None and not sending:
                self.producers.pop(mid)
                producer.close()
            elif producer is None and sending:
                media = media_by_mid.get(mid)
                ssrcs: list[int] = []
                rtx: dict[int, int] = {}
                if media is not None:
                    for group in media.ssrc_group:
                        if group.semantic == "FID" and len(group.items) == 2:
                            rtx[int(group.items[1])] = int(group.items[0])
                    ssrcs = [s.ssrc for s in media.ssrc if s.ssrc not in rtx]
                source = sources.get(mid) or DEFAULT_SOURCE[transceiver.kind]
                if source not in SOURCES:
                    source = DEFAULT_SOURCE[transceiver.kind]
                codecs = _aiortc.transceiver_codecs(transceiver)
                adopted = self._adopt(transceiver.kind, source, codecs)
                if adopted is not None:
                    adopted.rebind(transceiver.receiver, mid, codecs, ssrcs, rtx)
                    self.producers[mid] = adopted
                    logger.info(
                        "[%s] producing %s %s again on a new leg",
                        self.peer_id,
                        adopted.kind,
                        source,
                    )
                    continue
                producer = Producer(
                    id=uuid.uuid4().hex[:12],
                    peer_id=self.peer_id,
                    kind=transceiver.kind,
                    source=source,
                    mid=mid,
                    receiver=transceiver.receiver,
                    codecs=codecs,
                    ssrcs=ssrcs,
                    rtx_ssrcs=rtx,
                    config=self._config,
                    fanout=self._fanout,
                    on_close=self._on_producer_closed,
                )
                self.producers[mid] = producer
                logger.info(
                    "[%s] producing %s %s (%s)",
                    self.peer_id,
                    producer.kind,
                    producer.source,
                    producer.codec.mimeType,
                )
                self._on_producer(producer)

    def _adopt(
        self, kind: str, source: str, codecs: list[RTCRtpCodecParameters]
    ) -> Producer | None:
        """The replaced leg's producer of ``source``, if it can carry on with ``codecs``."""
        primary = next((c for c in codecs if not c.mimeType.lower().endswith("/rtx")), None)
        for orphan in self.orphans:
            if orphan.kind == kind and orphan.source == source and not orphan.closed:
                if primary is None or codec_key(primary) != codec_key(orphan.codec):
                    return None
                self.orphans.remove(orphan)
                return orphan
        return None

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.watchdog.stop()
        self.candidates.close()
        for producer in [*self.producers.values(), *self.orphans]:
            producer.close()
        self.producers.clear()
        self.orphans = []
        # shielded: aiortc may be closing the connection itself (its DTLS session ended), and a
        # cancelled caller awaiting aiortc's own close future would break that close
        await asyncio.shield(self.pc.close())


class SubscribeTransport:
    """The peer connection a participant receives on; the relay offers.

    Which consumers it carries is the router's fan-out table (:meth:`FanOut.consumed_by`);
    the transport owns only its transceivers. A consumer's transceiver goes ``inactive`` when
    the consumer is removed; once the subscriber has answered an offer with it inactive, the
    m-line is free and the next consumer of the same kind re-uses it (new track, new SSRCs),
    as browsers and mediasoup-client do, so the SDP does not grow with every track that
    comes and goes.
    """

    def __init__(
        self,
        *,
        peer_id: str,
        config: MediaConfig,
        fanout: FanOut,
        send_offer: OfferSender,
        on_failed: Callable[[], None],
    ) -> None:
        self.peer_id = peer_id
        self.pc = _new_pc()
        self.closed = False
        self.negotiations = 0
        self.recycled = 0
        """m-lines re-used for a new consumer."""
        self._config = config
        self._fanout = fanout
        self._send_offer = send_offer
        self._on_failed = on_failed
        self._retired: dict[RTCRtpTransceiver, tuple[CodecKey, StreamPosition | None]] = {}
        """Transceivers of removed consumers: their codec and where their stream stopped;
        free once negotiated inactive."""
        self._dirty = False
        self._task: asyncio.Task[None] | None = None
        self._answer: asyncio.Future[None] | None = None
        self.connected = asyncio.Event()
        self.replacement = False
        """Whether this leg replaces a dead one (set by the peer)."""
        self.candidates = TrickledCandidates(self.pc, peer_id, "subscribe")

        def dead() -> None:
            if not self.closed:
                logger.info("[%s] subscribe connection silent: dead", self.peer_id)
                on_failed()

        self.watchdog = LegWatchdog(self.pc, config.dead_leg_after, dead)

        @self.pc.on("connectionstatechange")
        def _state() -> None:
            if self.pc.connectionState == "connected":
                self.connected.set()
            if self.pc.connectionState in GONE_STATES and not self.closed:
                logger.info("[%s] subscribe connection %s", self.peer_id, self.pc.connectionState)
                on_failed()

    @property
    def consumers(self) -> Mapping[str, Consumer]:
        """This subscriber's consumers by producer id (a view of the router's table)."""
        return self._fanout.consumed_by(self.peer_id)

    def create_consumer(self, producer: Producer) -> Consumer | None:
        """A consumer of ``producer`` on a free m-line of its kind, or a new one (the router
        enters it in its table)."""
        if self.closed or producer.id in self.consumers:
            return None
        track = SilentTrack(producer.kind, id=producer.id)
        transceiver = self._free_transceiver(producer.kind, codec_key(producer.codec))
        resume = None
        if transceiver is None:
            transceiver = self.pc.addTransceiver(track, direction="sendonly")
        else:
            # same sender, same SSRCs: the stream continues where the last consumer stopped
            # (receivers that route by SSRC, like aiortc, keep routing it)
            _, resume = self._retired.pop(transceiver)
            transceiver.sender.replaceTrack(track)
            transceiver.direction = "sendonly"
            self.recycled += 1
        transceiver.setCodecPreferences(codec_preferences(producer.codec, producer.kind))
        stream = producer.peer_id if producer.source != "screen" else producer.peer_id + "-screen"
        _aiortc.set_stream_id(transceiver.sender, stream)
        consumer = Consumer(
            id=uuid.uuid4().hex[:12],
            producer=producer,
            peer_id=self.peer_id,
            transceiver=transceiver,
            history_size=self._config.history_size,
            resume=resume,
        )
        self._schedule()
        return consumer

    def _free_transceiver(self, kind: str, key: CodecKey) -> RTCRtpTransceiver | None:
        """A retired transceiver of ``kind`` that last carried the codec ``key`` and that the
        subscriber has accepted as inactive. Same codec only: the stream continues on the same
        SSRC, and receivers such as aiortc fix a receiver's payload types when it starts."""
        for transceiver, (codec, _) in self._retired.items():
            if (
                transceiver.kind == kind
                and codec == key
                and transceiver.mid is not None
                and transceiver.currentDirection == "inactive"
            ):
                return transceiver
        return None

    def retire(self, consumer: Consumer) -> None:
        """Close a consumer the router took out of its table; its m-line goes inactive."""
        position = consumer.position()
        consumer.close()
        consumer.transceiver.direction = "inactive"
        self._retired[consumer.transceiver] = (codec_key(consumer.producer.codec), position)
        if not self.closed:
            self._schedule()

    def _schedule(self) -> None:
        self._dirty = True
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._negotiate())

    async def _negotiate(self) -> None:
        try:
            while self._dirty and not self.closed:
                self._dirty = False
                await self._negotiate_once()
        except TransportClosed:
            pass
        except TimeoutError:
            logger.warning("[%s] no answer to the subscribe offer in time", self.peer_id)
            self._on_failed()
        except Exception as exc:
            if self.closed or self.pc.connectionState == "closed":
                return
            logger.warning("[%s] subscribe negotiation failed: %r", self.peer_id, exc)
            logger.debug("subscribe negotiation failure", exc_info=True)
            self._on_failed()

    async def _negotiate_once(self) -> None:
        # consumers created from here on wait for the next offer (the loop in _negotiate)
        candidates = list(self.consumers.values())
        offer = await self.pc.createOffer()
        _aiortc.configure_host_candidates(
            self.pc, list(self._config.addresses), self._config.port_range
        )
        await self.pc.setLocalDescription(offer)
        _aiortc.guard_datagrams(self.pc)
        self.watchdog.start()
        if self.closed:
            raise TransportClosed("closed during negotiation")
        offered = [c for c in candidates if c.mid is not None and not c.closed]
        tracks = [c.track_info() for c in offered]
        loop = asyncio.get_running_loop()
        self._answer = loop.create_future()
        self.negotiations += 1
        await self._send_offer(str(self.pc.localDescription.sdp), tracks)
        await asyncio.wait_for(asyncio.shield(self._answer), self._config.negotiation_timeout)
        for consumer in offered:
            consumer.activate()

    async def handle_answer(self, sdp: str) -> None:
        """Apply the participant's answer to our outstanding offer."""
        parsed = parse_sdp(sdp)
        if self.closed:
            raise TransportClosed("the subscribe connection is closed")
        if (
            self._answer is None
            or self._answer.done()
            or self.pc.signalingState != "have-local-offer"
        ):
            raise NegotiationError("there is no subscribe offer to answer")
        try:
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))
        except Exception as exc:
            raise InvalidSdp(f"the answer cannot be applied: {exc}") from exc
        self.candidates.described(parsed)
        if not self._answer.done():
            self._answer.set_result(None)

    def detach(self) -> None:
        """Stop this leg (no more offers, no failure reports); the connection itself closes
        with :meth:`close` or, for a replaced leg, in the background."""
        self.closed = True
        self.watchdog.stop()
        self.candidates.close()
        if self._answer is not None and not self._answer.done():
            self._answer.cancel()
        if self._task is not None and not self._task.done():
            self._task.cancel()

    async def close(self) -> None:
        """Close the connection (the router has taken this subscriber's consumers out of its
        table first)."""
        if self.closed:
            return
        self.detach()
        for consumer in list(self.consumers.values()):
            consumer.close()
        # shielded: aiortc may be closing the connection itself (its DTLS session ended), and a
        # cancelled caller awaiting aiortc's own close future would break that close
        await asyncio.shield(self.pc.close())

"""The Router is one session's media plane (mediasoup's Router): it owns the participants'
transports and the producer -> consumers fan-out table. Closing it closes everything below."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Literal

from .config import MediaConfig
from .consumer import Consumer
from .fanout import FanOut
from .producer import Producer
from .transport import OfferSender, PublishTransport, SubscribeTransport

logger = logging.getLogger(__name__)


Leg = Literal["publish", "subscribe"]


class Peer:
    """One participant's media: a publish and a subscribe transport. Either can be rebuilt
    alone (:meth:`rebuild`) while the other, the participant's producers and everybody else's
    connections stay as they are."""

    def __init__(
        self,
        *,
        id: str,
        router: Router,
        send_offer: OfferSender,
        on_failed: Callable[[Peer], None],
    ) -> None:
        self.id = id
        self.router = router
        self.closed = False
        self.failed_leg: Leg | None = None
        """The leg whose failure was reported last."""
        self.rebuilds = 0
        self._on_failed = on_failed
        self._send_offer = send_offer
        self._closing: set[asyncio.Future[None]] = set()
        """Closes of replaced legs still under way."""
        self.publish = self._new_publish()
        self.subscribe = self._new_subscribe()

    def _new_publish(self, orphans: list[Producer] | None = None) -> PublishTransport:
        transport: PublishTransport

        def failed() -> None:
            if self.publish is transport:
                self._failed("publish")

        transport = PublishTransport(
            peer_id=self.id,
            config=self.router.config,
            fanout=self.router.fanout,
            on_producer=self.router._producer_added,
            on_producer_closed=self.router._producer_closed,
            on_failed=failed,
            orphans=orphans or (),
        )
        transport.replacement = orphans is not None
        return transport

    def _new_subscribe(self) -> SubscribeTransport:
        transport: SubscribeTransport

        def failed() -> None:
            if self.subscribe is transport:
                self._failed("subscribe")

        transport = SubscribeTransport(
            peer_id=self.id,
            config=self.router.config,
            fanout=self.router.fanout,
            send_offer=self._send_offer,
            on_failed=failed,
        )
        return transport

    @property
    def producers(self) -> list[Producer]:
        return [*self.publish.producers.values(), *self.publish.orphans]

    def rebuild(self, leg: Leg) -> None:
        """Replace one leg by a new peer connection. ``publish``: the participant's next offer
        goes to the new leg, which adopts the producers (their consumers carry on, nobody else
        renegotiates). ``subscribe``: the participant's consumers move to a new leg, which
        offers at once. The old leg closes in the background."""
        if self.closed:
            return
        self.rebuilds += 1
        old: PublishTransport | SubscribeTransport
        if leg == "publish":
            old = self.publish
            self.publish = self._new_publish(old.detach())
        else:
            old = self.subscribe
            old.detach()  # its consumers leave the table without renegotiating it
            for consumer in list(self.router.fanout.consumed_by(self.id).values()):
                self.router.fanout.remove(consumer)
            self.subscribe = self._new_subscribe()
            self.subscribe.replacement = True
            for producer in self.router.producers():
                if producer.peer_id != self.id:
                    self.router._consume(self, producer)
        closing = asyncio.ensure_future(asyncio.shield(old.pc.close()))
        logger.info("[%s/%s] rebuilding the %s leg", self.router.id, self.id, leg)
        self._closing.add(closing)
        closing.add_done_callback(self._closing.discard)

    def had_media(self) -> bool:
        """Whether either leg ever connected (a rebuilt leg replaces one that had)."""
        return (
            self.rebuilds > 0
            or self.publish.connected.is_set()
            or self.subscribe.connected.is_set()
        )

    def leg_lost(self, leg: Leg) -> bool:
        """Whether ``leg`` was connected (or is a rebuild) and is not connected now."""
        transport = self.publish if leg == "publish" else self.subscribe
        if not (transport.connected.is_set() or transport.replacement):
            return False  # never negotiated yet (e.g. nothing published)
        return transport.closed or transport.pc.connectionState != "connected"

    def rebuilding(self, leg: Leg) -> bool:
        """Whether ``leg`` was rebuilt and has not connected yet."""
        transport = self.publish if leg == "publish" else self.subscribe
        return transport.replacement and not transport.connected.is_set()

    async def wait_connected(self, leg: Leg, timeout: float) -> bool:  # noqa: ASYNC109
        """Whether the (current) ``leg`` connects within ``timeout`` seconds."""
        transport = self.publish if leg == "publish" else self.subscribe
        try:
            await asyncio.wait_for(transport.connected.wait(), timeout)
        except TimeoutError:
            return False
        return not transport.closed and transport.pc.connectionState == "connected"

    async def handle_publish_offer(self, sdp: str, sources: dict[str, str]) -> str:
        return await self.publish.handle_offer(sdp, sources)

    async def handle_subscribe_answer(self, sdp: str) -> None:
        await self.subscribe.handle_answer(sdp)

    def add_candidate(self, leg: Leg, candidate: str | None, ufrag: str | None) -> bool:
        """A candidate the participant trickled for ``leg`` (None: end-of-candidates); whether
        the current leg took it (a replaced leg's candidates are ignored)."""
        transport = self.publish if leg == "publish" else self.subscribe
        if transport.closed:
            return False
        return transport.candidates.add(candidate, ufrag)

    def _failed(self, leg: Leg) -> None:
        if not self.closed:
            logger.info("[%s/%s] %s connection failed", self.router.id, self.id, leg)
            self.failed_leg = leg
            self._on_failed(self)

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.router._peer_closed(self)
        await asyncio.gather(
            self.publish.close(), self.subscribe.close(), *self._closing, return_exceptions=True
        )


class Router:
    """One session: peers, and the fan-out of every producer to every other peer."""

    def __init__(self, id: str, config: MediaConfig) -> None:
        self.id = id
        self.config = config
        self.peers: dict[str, Peer] = {}
        self.closed = False
        self.fanout = FanOut(on_removed=self._consumer_removed)
        """Who consumes which producer: the one table (producers and subscribe transports
        read views of it)."""
        self.producer_listeners: list[Callable[[Producer], None]] = []
        """Called with every new producer (the recorder attaches its sinks)."""

    def add_peer(
        self,
        peer_id: str,
        send_offer: OfferSender,
        on_failed: Callable[[Peer], None] = lambda peer: None,
    ) -> Peer:
        """Add a participant; it immediately consumes every existing producer."""
        if self.closed:
            raise RuntimeError("router is closed")
        if peer_id in self.peers:
            raise ValueError(f"peer {peer_id} already exists; close it first")
        peer = Peer(id=peer_id, router=self, send_offer=send_offer, on_failed=on_failed)
        self.peers[peer_id] = peer
        for other in self.peers.values():
            if other is not peer:
                for producer in other.producers:
                    self._consume(peer, producer)
        return peer

    def producers(self) -> list[Producer]:
        return [p for peer in self.peers.values() for p in peer.producers]

    def remove_consumer(self, consumer: Consumer) -> None:
        """Stop one subscriber's copy of a producer (its m-line goes inactive)."""
        if not self.fanout.remove(consumer):
            consumer.close()

    def _producer_added(self, producer: Producer) -> None:
        for peer in self.peers.values():
            if peer.id != producer.peer_id and not peer.closed:
                self._consume(peer, producer)
        for listener in self.producer_listeners:
            listener(producer)

    def _consume(self, peer: Peer, producer: Producer) -> None:
        consumer = peer.subscribe.create_consumer(producer)
        if consumer is not None:
            self.fanout.add(consumer)

    def _consumer_removed(self, consumer: Consumer) -> None:
        peer = self.peers.get(consumer.peer_id)
        if peer is not None and not peer.subscribe.closed:
            peer.subscribe.retire(consumer)
        else:
            consumer.close()

    def _producer_closed(self, producer: Producer) -> None:
        for consumer in self.fanout.consumers_of(producer.id):
            self.fanout.remove(consumer)
        self.fanout.discard_view(producer.id)

    def _peer_closed(self, peer: Peer) -> None:
        self.peers.pop(peer.id, None)
        # drop it as a subscriber now; its producers close with its publish transport
        for consumer in list(self.fanout.consumed_by(peer.id).values()):
            self.fanout.remove(consumer)
        for producer in peer.producers:
            producer.close()

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        await asyncio.gather(*(peer.close() for peer in list(self.peers.values())))

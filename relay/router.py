"""The Router is one session's media plane (mediasoup's Router): it owns the participants'
transports and the producer -> consumers fan-out table. Closing it closes everything below."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from .config import MediaConfig
from .consumer import Consumer
from .fanout import FanOut
from .producer import Producer
from .transport import OfferSender, PublishTransport, SubscribeTransport

logger = logging.getLogger(__name__)


class Peer:
    """One participant's media: a publish and a subscribe transport."""

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
        self._on_failed = on_failed
        self.publish = PublishTransport(
            peer_id=id,
            config=router.config,
            fanout=router.fanout,
            on_producer=router._producer_added,
            on_producer_closed=router._producer_closed,
            on_failed=self._failed,
        )
        self.subscribe = SubscribeTransport(
            peer_id=id,
            config=router.config,
            fanout=router.fanout,
            send_offer=send_offer,
            on_failed=self._failed,
        )

    @property
    def producers(self) -> list[Producer]:
        return list(self.publish.producers.values())

    async def handle_publish_offer(self, sdp: str, sources: dict[str, str]) -> str:
        return await self.publish.handle_offer(sdp, sources)

    async def handle_subscribe_answer(self, sdp: str) -> None:
        await self.subscribe.handle_answer(sdp)

    def _failed(self) -> None:
        if not self.closed:
            logger.info("[%s/%s] media connection failed", self.router.id, self.id)
            self._on_failed(self)

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.router._peer_closed(self)
        await asyncio.gather(self.publish.close(), self.subscribe.close())


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

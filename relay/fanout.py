"""The producer -> consumers table of one router (mediasoup's Router owns the same table).

It is the only place that says who consumes what. The router holds it; a producer reads its
own row through a :class:`ConsumerView` (a tuple swapped on change, never mutated while the
packet path iterates it), a subscribe transport reads its subscriber's column through
:meth:`FanOut.consumed_by`. Nothing else keeps a copy, so a removal cannot reach one place and
miss another: :meth:`FanOut.remove` is the one way out, and it tells the router (``on_removed``)
so that the subscriber's m-line goes inactive in its next offer.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .consumer import Consumer


class ConsumerView:
    """One producer's consumers, as the packet path reads them."""

    __slots__ = ("consumers",)

    def __init__(self) -> None:
        self.consumers: tuple[Consumer, ...] = ()


class FanOut:
    """Consumers by producer id and by subscriber (peer) id; at most one consumer per pair."""

    def __init__(self, on_removed: Callable[[Consumer], None] = lambda consumer: None) -> None:
        self._rows: dict[str, dict[str, Consumer]] = {}
        """producer id -> subscriber peer id -> consumer"""
        self._columns: dict[str, dict[str, Consumer]] = {}
        """subscriber peer id -> producer id -> consumer"""
        self._views: dict[str, ConsumerView] = {}
        self._on_removed = on_removed

    def view(self, producer_id: str) -> ConsumerView:
        """The live view of ``producer_id``'s consumers (the same object until discarded)."""
        view = self._views.get(producer_id)
        if view is None:
            view = self._views[producer_id] = ConsumerView()
            view.consumers = tuple(self._rows.get(producer_id, {}).values())
        return view

    def add(self, consumer: Consumer) -> None:
        producer_id, peer_id = consumer.producer.id, consumer.peer_id
        row = self._rows.setdefault(producer_id, {})
        if peer_id in row:
            raise ValueError(f"{peer_id} already consumes {producer_id}")
        row[peer_id] = consumer
        self._columns.setdefault(peer_id, {})[producer_id] = consumer
        self._refresh(producer_id)

    def remove(self, consumer: Consumer) -> bool:
        """Take ``consumer`` out of the table (False if it was not in it), then ``on_removed``."""
        producer_id, peer_id = consumer.producer.id, consumer.peer_id
        row = self._rows.get(producer_id)
        if row is None or row.get(peer_id) is not consumer:
            return False
        del row[peer_id]
        if not row:
            del self._rows[producer_id]
        column = self._columns[peer_id]
        del column[producer_id]
        if not column:
            del self._columns[peer_id]
        self._refresh(producer_id)
        self._on_removed(consumer)
        return True

    def consumers_of(self, producer_id: str) -> tuple[Consumer, ...]:
        return tuple(self._rows.get(producer_id, {}).values())

    def consumed_by(self, peer_id: str) -> Mapping[str, Consumer]:
        """A read-only live mapping producer id -> consumer of one subscriber."""
        column = self._columns.get(peer_id)
        if column is None:
            return MappingProxyType({})
        return MappingProxyType(column)

    def discard_view(self, producer_id: str) -> None:
        """Forget a closed producer's view (its row is empty by then)."""
        view = self._views.pop(producer_id, None)
        if view is not None:
            view.consumers = ()

    def __len__(self) -> int:
        return sum(len(row) for row in self._rows.values())

    def _refresh(self, producer_id: str) -> None:
        view = self._views.get(producer_id)
        if view is not None:
            view.consumers = tuple(self._rows.get(producer_id, {}).values())

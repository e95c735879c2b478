"""The per-track packet journal: an append-only file that survives ``kill -9``.

Layout (the Janus ``.mjr`` idea plus the sender-report clocks it lacks)::

    b"PARLEYJ1" | u32 header length | header JSON (kind, codec, clock rate, who, source)
    then records, each  u8 type | u16 body length | body
      b"P": u64 arrival µs (wall clock) | u16 seq | u32 RTP timestamp | u8 marker | payload
      b"S": u64 arrival µs | u64 NTP timestamp | u32 RTP timestamp   (the publisher's RTCP SR)

A reader stops at a truncated record (what a killed process leaves behind) and keeps everything
before it. Records are appended on the event loop into an in-memory queue; one writer thread per
process writes the queues to disk at least every :data:`FLUSH_INTERVAL` seconds, so a slow or
full disk never blocks forwarding (it fails the recording instead).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import os
import struct
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

MAGIC = b"PARLEYJ1"
HEADER_LENGTH = struct.Struct("!I")
PACKET = struct.Struct("!cHQHIB")
SENDER_REPORT = struct.Struct("!cHQQI")
RECORD_PREFIX = struct.Struct("!cH")
PACKET_FIXED = PACKET.size - RECORD_PREFIX.size
SR_BODY = SENDER_REPORT.size - RECORD_PREFIX.size
FLUSH_INTERVAL = 0.25
"""Seconds between two writes of a journal's queue (a crash loses at most about this much)."""
MAX_QUEUED = 60_000
"""Queued items (two per packet: ~30k packets, ~30 MB, minutes of video) before the disk counts
as stalled and the recording fails instead of filling the memory."""


class JournalError(ValueError):
    """A file that is not a journal (bad magic or header)."""


def packet_record(arrival_us: int, seq: int, ts: int, marker: int, payload: bytes) -> bytes:
    return PACKET.pack(b"P", PACKET_FIXED + len(payload), arrival_us, seq, ts, marker) + payload


def sender_report_record(arrival_us: int, ntp: int, rtp: int) -> bytes:
    return SENDER_REPORT.pack(b"S", SR_BODY, arrival_us, ntp, rtp)


def header_bytes(header: dict[str, Any]) -> bytes:
    data = json.dumps(header, separators=(",", ":")).encode()
    return MAGIC + HEADER_LENGTH.pack(len(data)) + data


@dataclass
class JournalPacket:
    arrival_us: int
    seq: int
    ts: int
    marker: int
    payload: bytes


@dataclass
class JournalContents:
    header: dict[str, Any]
    packets: list[JournalPacket] = field(default_factory=list)
    sender_reports: list[tuple[int, int, int]] = field(default_factory=list)
    """``(arrival µs, NTP, RTP)``."""
    truncated: bool = False
    """The last record was cut short (the writer was killed mid-write)."""


def read_journal(path: Path) -> JournalContents:
    """Parse a journal file; a truncated tail is dropped, not an error."""
    data = path.read_bytes()
    if len(data) < len(MAGIC) + 4 or not data.startswith(MAGIC):
        raise JournalError(f"{path.name} is not a parley journal")
    (length,) = HEADER_LENGTH.unpack_from(data, len(MAGIC))
    start = len(MAGIC) + 4
    try:
        header = json.loads(data[start : start + length])
    except ValueError as exc:
        raise JournalError(f"{path.name} has a damaged header") from exc
    if not isinstance(header, dict):
        raise JournalError(f"{path.name} has a damaged header")
    contents = JournalContents(header=header)
    for record in iter_records(data, start + length):
        if record is None:
            contents.truncated = True
            break
        if isinstance(record, JournalPacket):
            contents.packets.append(record)
        else:
            contents.sender_reports.append(record)
    return contents


def iter_records(data: bytes, pos: int) -> Iterator[JournalPacket | tuple[int, int, int] | None]:
    """Records from ``pos``; yields None once for a truncated or unknown tail, then stops."""
    end = len(data)
    view = memoryview(data)
    while pos < end:
        if end - pos < RECORD_PREFIX.size:
            yield None
            return
        kind, length = RECORD_PREFIX.unpack_from(data, pos)
        body_end = pos + RECORD_PREFIX.size + length
        if body_end > end:
            yield None
            return
        if kind == b"P" and length >= PACKET_FIXED:
            _, _, arrival, seq, ts, marker = PACKET.unpack_from(data, pos)
            yield JournalPacket(arrival, seq, ts, marker, bytes(view[pos + PACKET.size : body_end]))
        elif kind == b"S" and length == SR_BODY:
            _, _, arrival, ntp, rtp = SENDER_REPORT.unpack_from(data, pos)
            yield (arrival, ntp, rtp)
        else:
            yield None
            return
        pos = body_end


class Journal:
    """One journal file being written. :meth:`append` runs on the event loop and only queues;
    the :class:`JournalWriter` thread opens, writes and closes the file."""

    def __init__(
        self,
        path: Path,
        header: dict[str, Any],
        on_error: Callable[[str], None] = lambda reason: None,
        writer: JournalWriter | None = None,
    ) -> None:
        self.path = path
        self.error: str | None = None
        self.closing = False
        self.written = 0
        """Bytes on disk so far (updated by the writer thread)."""
        self.done: concurrent.futures.Future[None] = concurrent.futures.Future()
        """Resolved once the file is closed with everything written (or failed)."""
        self._queue: deque[bytes] = deque([header_bytes(header)])
        self._fd: int | None = None
        self._on_error = on_error
        try:
            self._loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            self._loop = None
        self._writer = writer or default_writer()
        self._writer.add(self)

    def append(self, record: bytes) -> None:
        self._queue.append(record)

    @property
    def queued(self) -> int:
        return len(self._queue)

    def fail(self, reason: str) -> None:
        """Stop writing this journal (from either thread); ``on_error`` runs on the loop."""
        if self.error is not None:
            return
        self.error = reason
        self._queue.clear()
        self.closing = True
        self._writer.wake()
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._on_error, reason)
        else:
            self._on_error(reason)

    def close(self) -> concurrent.futures.Future[None]:
        """Write what is queued, close the file; idempotent."""
        if not self.closing:
            self.closing = True
            self._writer.wake()
        return self.done

    # --- the writer thread's side ------------------------------------------------------------

    def _flush(self) -> None:
        queue = self._queue
        count = len(queue)
        if self.error is not None:
            return
        if count == 0 and self._fd is not None:
            return
        try:
            if self._fd is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            if count:
                data = b"".join([queue.popleft() for _ in range(count)])
                view = memoryview(data)
                while view:
                    n = os.write(self._fd, view)
                    view = view[n:]
                self.written += len(data)
        except OSError as exc:
            self.fail(f"cannot write {self.path.name}: {exc.strerror or exc}")

    def _finish(self) -> None:
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError as exc:
                if self.error is None:
                    self.fail(f"cannot close {self.path.name}: {exc.strerror or exc}")
            self._fd = None
        if not self.done.done():
            self.done.set_result(None)


class JournalWriter:
    """The thread that writes every open journal of this process."""

    def __init__(self, interval: float = FLUSH_INTERVAL) -> None:
        self.interval = interval
        self._journals: set[Journal] = set()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, journal: Journal) -> None:
        with self._lock:
            self._journals.add(journal)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="parley-journal-writer", daemon=True
                )
                self._thread.start()
        self._wake.set()

    def wake(self) -> None:
        self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait(self.interval)
            self._wake.clear()
            with self._lock:
                journals = list(self._journals)
            for journal in journals:
                try:
                    journal._flush()
                    if journal.closing:
                        journal._flush()
                        journal._finish()
                        with self._lock:
                            self._journals.discard(journal)
                except Exception:  # never let the thread die: one journal fails, not all
                    logger.exception("journal writer failed on %s", journal.path.name)
                    journal.fail("internal error while writing")
                    journal._finish()
                    with self._lock:
                        self._journals.discard(journal)


_default: JournalWriter | None = None


def default_writer() -> JournalWriter:
    global _default
    if _default is None:
        _default = JournalWriter()
    return _default

"""The recorder of one session (one Router): attaches a :class:`TrackSink` to every producer
while recording, groups tracks into recordings (a participant's camera with its microphone, a
screen share on its own), keeps their manifests, and has them remuxed in a worker process when
the recording stops."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import secrets
import sys
import time
import weakref
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .journal import Journal
from .manifest import SESSION_FILE, RecordingManifest, read_json, write_json
from .sink import TrackSink

if TYPE_CHECKING:
    from ..producer import Producer
    from ..router import Router

logger = logging.getLogger(__name__)

Describe = Callable[[str], tuple[str, str]]
"""participant id -> (role, name)."""

_io = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="parley-manifest")
"""Manifest writes, in order, off the event loop."""
_workers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
    weakref.WeakKeyDictionary()
)
"""One remux/compose process at a time per loop (CPU work on a shared machine)."""
WORKER_TIMEOUT = 3 * 3600.0
"""Seconds a remux/compose worker may take before it is killed (the recording then fails)."""


def group_of(source: str) -> str:
    return "screen" if source == "screen" else "camera"


async def run_worker(
    command: str, path: Path, progress: Callable[[float], None] = lambda f: None
) -> dict[str, Any] | None:
    """Run ``python -m parley.relay.recorder <command> <path>`` and return its ``done`` object."""
    loop = asyncio.get_running_loop()
    if loop not in _workers:
        _workers[loop] = asyncio.Semaphore(1)
    async with _workers[loop]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "parley.relay.recorder",
            command,
            str(path),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        done: dict[str, Any] | None = None
        assert proc.stdout is not None and proc.stderr is not None
        stderr_task = asyncio.ensure_future(proc.stderr.read())
        try:
            async with asyncio.timeout(WORKER_TIMEOUT):
                while line := await proc.stdout.readline():
                    try:
                        message = json.loads(line)
                    except ValueError:
                        continue
                    if "progress" in message:
                        progress(float(message["progress"]))
                    elif "done" in message:
                        done = message["done"]
                await proc.wait()
        except (asyncio.CancelledError, TimeoutError):
            proc.kill()
            await proc.wait()
            stderr_task.cancel()
            raise
        errors = await stderr_task
        if proc.returncode != 0:
            logger.warning(
                "recording worker %s %s exited with %s: %s",
                command,
                path.name,
                proc.returncode,
                errors.decode(errors="replace")[-500:],
            )
        return done


class Recording:
    """One file being recorded: its manifest and its live sinks."""

    def __init__(self, manifest: RecordingManifest, directory: Path) -> None:
        self.manifest = manifest
        self.directory = directory
        self.sinks: list[TrackSink] = []
        self.progress: float | None = None

    @property
    def id(self) -> str:
        return self.manifest.recording_id

    @property
    def path(self) -> Path:
        return self.directory / f"{self.id}.json"

    def to_json(self) -> dict[str, Any]:
        """The public listing entry (the caller adds ``url``)."""
        m = self.manifest
        duration = m.duration_s
        size = m.size_bytes
        if m.state == "recording":
            if m.started_at is not None:
                duration = round(time.time() - m.started_at, 3)
            size = sum(s.journal.written for s in self.sinks) or size
        return listing(m, duration, size, self.progress)


def listing(
    m: RecordingManifest,
    duration: float | None = None,
    size: int | None = None,
    progress: float | None = None,
) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "recording_id": m.recording_id,
        "participant_id": m.participant_id,
        "role": m.role,
        "name": m.name,
        "source": m.source,
        "format": m.format,
        "state": m.state,
        "started_at": iso(m.started_at),
        "duration_s": m.duration_s if duration is None else duration,
        "size_bytes": m.size_bytes if size is None else size,
    }
    if m.reason:
        entry["reason"] = m.reason
    if progress is not None and m.state == "finalizing":
        entry["progress"] = progress
    return entry


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts * 1000) % 1000:03d}Z"


class SessionRecorder:
    """Recording of one router. ``state`` is ``recording`` or ``stopped``."""

    def __init__(
        self,
        router: Router,
        directory: Path,
        describe: Describe,
        on_state: Callable[[str], None] = lambda state: None,
        on_ready: Callable[[Recording], None] = lambda recording: None,
        finalizer: Callable[[Path, Callable[[float], None]], Awaitable[Any]] | None = None,
    ) -> None:
        self.router = router
        self.directory = directory
        self.describe = describe
        self.on_state = on_state
        self.on_ready = on_ready
        """Called once per recording whose file is ready (for ``recording.ready`` events)."""
        self.finalizer = finalizer or (
            lambda path, progress: run_worker("finalize", path, progress)
        )
        self.state = "stopped"
        self.started_at: float | None = None
        self.stopped_at: float | None = None
        self.compose = False
        self.recordings: dict[str, Recording] = {}
        self._take: dict[tuple[str, str], Recording] = {}
        self._finalizing: set[asyncio.Task[None]] = set()
        router.producer_listeners.append(self._producer_added)

    # --- control -----------------------------------------------------------------------------

    def start(self) -> None:
        """Start recording every track, now and as they appear; starting twice is a no-op."""
        if self.state == "recording":
            return
        self.state = "recording"
        self.started_at = time.time()
        self.stopped_at = None
        self._take = {}
        logger.info("[%s] recording started", self.router.id)
        for producer in self.router.producers():
            if not producer.closed:
                self._attach(producer)
        self._save_session()
        self.on_state(self.state)

    async def stop(self) -> None:
        """Stop recording; the files are finalised in the background (see :meth:`wait`)."""
        if self.state != "recording":
            return
        self.state = "stopped"
        self.stopped_at = time.time()
        take, self._take = list(self._take.values()), {}
        for recording in take:
            for sink in list(recording.sinks):
                sink.close()
        logger.info("[%s] recording stopped", self.router.id)
        self._save_session()
        self.on_state(self.state)
        for recording in take:
            task = asyncio.ensure_future(self._finalize(recording))
            self._finalizing.add(task)
            task.add_done_callback(self._finalizing.discard)

    async def wait(self) -> None:
        """Until every stopped recording is ready or failed."""
        while self._finalizing:
            await asyncio.gather(*list(self._finalizing), return_exceptions=True)

    def session_state(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "started_at": iso(self.started_at),
            "stopped_at": iso(self.stopped_at),
        }

    # --- tracks --------------------------------------------------------------------------------

    def _producer_added(self, producer: Producer) -> None:
        if self.state == "recording":
            self._attach(producer)

    def _attach(self, producer: Producer) -> None:
        if producer.kind not in ("audio", "video"):
            return
        group = group_of(producer.source)
        key = (producer.peer_id, group)
        recording = self._take.get(key)
        if recording is None:
            role, name = self.describe(producer.peer_id)
            manifest = RecordingManifest(
                recording_id="r_" + secrets.token_hex(6),
                session_id=self.router.id,
                participant_id=producer.peer_id,
                role=role,
                name=name,
                source=group,
                format="webm",
                started_at=time.time(),
            )
            recording = Recording(manifest, self.directory)
            self.recordings[recording.id] = recording
            self._take[key] = recording
        manifest = recording.manifest
        if manifest.state != "recording":
            return
        mime = producer.codec.mimeType.lower()
        if producer.kind == "video":
            manifest.format = "mkv" if mime == "video/h264" else "webm"
        elif not any(s.producer.kind == "video" for s in recording.sinks) and not any(
            j.endswith("-video.journal") for j in manifest.journals
        ):
            manifest.format = "ogg"
        name = f"{recording.id}/{len(manifest.journals):03d}-{producer.kind}.journal"
        header = {
            "version": 1,
            "kind": producer.kind,
            "mime": mime,
            "clock_rate": producer.codec.clockRate,
            "channels": producer.codec.channels,
            "source": producer.source,
            "producer_id": producer.id,
            "participant_id": producer.peer_id,
            "created_at": time.time(),
        }

        def failed(reason: str, recording: Recording = recording) -> None:
            self._failed(recording, reason)

        journal = Journal(self.directory / name, header, on_error=failed)
        manifest.journals.append(name)
        recording.sinks.append(TrackSink(producer, journal))
        self._save(recording)

    def _failed(self, recording: Recording, reason: str) -> None:
        manifest = recording.manifest
        if manifest.state not in ("recording", "finalizing"):
            return
        manifest.state = "failed"
        manifest.reason = reason
        manifest.stopped_at = time.time()
        logger.warning("[%s] recording %s failed: %s", self.router.id, recording.id, reason)
        for sink in list(recording.sinks):
            sink.close()
        self._save(recording)

    async def _finalize(self, recording: Recording) -> None:
        manifest = recording.manifest
        await asyncio.gather(
            *(asyncio.wrap_future(s.journal.done) for s in recording.sinks),
            return_exceptions=True,
        )
        if manifest.state != "recording":
            return
        manifest.state = "finalizing"
        manifest.stopped_at = self.stopped_at
        recording.progress = 0.0
        await asyncio.wrap_future(self._save(recording))
        recording.sinks = []

        def progress(fraction: float) -> None:
            recording.progress = fraction

        try:
            await self.finalizer(recording.path, progress)
        except Exception:
            logger.exception("[%s] finalising %s failed", self.router.id, recording.id)
        data = await asyncio.get_running_loop().run_in_executor(_io, read_json, recording.path)
        if data is not None:
            recording.manifest = RecordingManifest.from_dict(data)
        if recording.manifest.state == "finalizing":
            recording.manifest.state = "failed"
            recording.manifest.reason = "the remux worker did not finish"
            self._save(recording)
        logger.info("[%s] recording %s %s", self.router.id, recording.id, recording.manifest.state)
        if recording.manifest.state == "ready":
            self.on_ready(recording)

    # --- manifests -----------------------------------------------------------------------------

    def _save(self, recording: Recording) -> concurrent.futures.Future[None]:
        return _io.submit(_write_quietly, recording.path, recording.manifest.to_dict())

    def _save_session(self) -> None:
        data = {
            "session_id": self.router.id,
            "compose": self.compose,
            **self.session_state(),
            "started_ts": self.started_at,
            "stopped_ts": self.stopped_at,
        }
        _io.submit(_write_quietly, self.directory / SESSION_FILE, data)


def _write_quietly(path: Path, data: dict[str, Any]) -> None:
    try:
        write_json(path, data)
    except OSError as exc:
        logger.warning("cannot write %s: %s", path, exc.strerror or exc)

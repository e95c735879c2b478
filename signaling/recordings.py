"""Recording in the service: start/stop (HTTP and the agent's page), the listing and downloads
(API key, HTTP Range), the composed file, start-up recovery, and ``parley recording export``.

State lives in files under the recordings directory (manifests written by
:mod:`parley.relay.recorder`); nothing here needs a database.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from parley.relay.recorder import SessionRecorder, run_worker
from parley.relay.recorder.finalize import finalize, needs_finalizing
from parley.relay.recorder.manifest import (
    COMPOSED_FILE,
    COMPOSED_STATE,
    SESSION_FILE,
    RecordingManifest,
    is_recording_id,
    is_session_id,
    load_recordings,
    read_json,
    session_dirs,
    write_json,
)
from parley.relay.recorder.session import Recording, listing

from . import (
    api,  # api imports this module too: use api.x at call time
    store_journal,
)
from .errors import BadRequest, Forbidden, NotFound, SignalingError
from .keys import CONFIG, SESSIONS
from .sessions import Participant, Session

logger = logging.getLogger(__name__)

DEFAULT_DIR = "parley-data/recordings"
ACTIONS = ("start", "stop")
CONTENT_TYPES = {"webm": "video/webm", "mkv": "video/x-matroska", "ogg": "audio/ogg"}
SHUTDOWN_WAIT = 30.0
"""Seconds shutdown waits for files being finalised (the next start finishes the rest)."""


class SessionEndedConflict(SignalingError):
    code = "session_ended"
    status = 409

EventSink = Callable[[str, Session, dict[str, Any]], Awaitable[None]]
"""``(type, session, recording)`` for the ``recording.*`` webhook events."""


class RecordingService:
    """The recorders of this process's sessions and the composed-file jobs."""

    def __init__(self, root: Path, events: EventSink | None = None) -> None:
        self.root = root
        self.events = events
        """Where ``recording.started`` / ``recording.ready`` go (the store's webhooks)."""
        self.recorders: dict[str, SessionRecorder] = {}
        self.compose_jobs: dict[str, asyncio.Task[None]] = {}
        self.compose_progress: dict[str, float] = {}
        self._tasks: set[asyncio.Future[Any]] = set()

    # --- sessions ------------------------------------------------------------------------------

    def recorder(self, session: Session) -> SessionRecorder:
        recorder = self.recorders.get(session.id)
        if recorder is None:

            def describe(participant_id: str) -> tuple[str, str]:
                p: Participant | None = session.participants.get(participant_id)
                return (p.role, p.name) if p is not None else ("customer", "")

            def announce(state: str) -> None:
                self._spawn(session.broadcast({"type": "recording", "state": state}))
                if state == "recording" and self.events is not None:
                    started = recorder.session_state() if recorder is not None else {}
                    self._spawn(self.events("recording.started", session, started))

            def ready(recording: Recording) -> None:
                if self.events is not None:
                    self._spawn(self.events("recording.ready", session, recording.to_json()))

            recorder = SessionRecorder(
                session.router,
                self.root / session.id,
                describe,
                on_state=announce,
                on_ready=ready,
            )
            self.recorders[session.id] = recorder
        return recorder

    def state(self, session_id: str) -> str:
        recorder = self.recorders.get(session_id)
        return recorder.state if recorder is not None else "stopped"

    async def control(self, session: Session, action: str) -> dict[str, Any]:
        if action not in ACTIONS:
            raise BadRequest("'action' must be 'start' or 'stop'")
        if session.ended_at is not None:
            raise SessionEndedConflict("the session has ended")
        recorder = self.recorder(session)
        if action == "start":
            recorder.start()
        else:
            await recorder.stop()
        return recorder.session_state()

    async def session_ended(self, session: Session) -> None:
        recorder = self.recorders.get(session.id)
        if recorder is None:
            return
        await recorder.stop()
        if recorder.compose and recorder.recordings:
            self.compose(session.id)

        async def forget() -> None:
            # once finalised, an ended session's recordings are served from their manifests
            await recorder.wait()
            if self.recorders.get(session.id) is recorder:
                del self.recorders[session.id]

        self._spawn(forget())

    # --- listing and files -----------------------------------------------------------------------

    def known(self, session_id: str) -> bool:
        return session_id in self.recorders or (
            is_session_id(session_id) and (self.root / session_id).is_dir()
        )

    def entries(self, session_id: str) -> list[tuple[RecordingManifest, dict[str, Any]]]:
        recorder = self.recorders.get(session_id)
        if recorder is not None:
            return [(r.manifest, r.to_json()) for r in recorder.recordings.values()]
        if not is_session_id(session_id):
            return []
        return [(m, listing(m)) for m in load_recordings(self.root / session_id)]

    def file_of(self, session_id: str, recording_id: str) -> tuple[RecordingManifest, Path]:
        if not is_session_id(session_id) or not is_recording_id(recording_id):
            raise NotFound("no such recording")
        for manifest, _ in self.entries(session_id):
            if manifest.recording_id == recording_id:
                root = self.root.resolve()
                path = (root / session_id / manifest.file_name).resolve()
                if not path.is_relative_to(root):
                    raise NotFound("no such recording")
                return manifest, path
        raise NotFound("no such recording")

    # --- the composed file -----------------------------------------------------------------------

    def composed_state(self, session_id: str) -> dict[str, Any]:
        if session_id in self.compose_jobs:
            return {"state": "composing", "progress": self.compose_progress.get(session_id, 0.0)}
        directory = self.root / session_id
        data = read_json(directory / COMPOSED_STATE) if is_session_id(session_id) else None
        if data is not None and data.get("state") == "ready":
            if (directory / COMPOSED_FILE).is_file():
                return data
            return {"state": "none"}
        return data or {"state": "none"}

    def compose(self, session_id: str) -> None:
        """Make the composed file in a worker process (after the recordings are ready)."""
        if session_id in self.compose_jobs:
            return
        self.compose_progress[session_id] = 0.0

        async def job() -> None:
            directory = self.root / session_id
            recorder = self.recorders.get(session_id)
            try:
                if recorder is not None:
                    await recorder.wait()

                def progress(fraction: float) -> None:
                    self.compose_progress[session_id] = fraction

                done = await run_worker("compose", directory, progress)
                state = done or {"state": "failed", "reason": "the compose worker failed"}
            except Exception as exc:  # a clear state, never an unhandled task error
                logger.exception("[%s] composing failed", session_id)
                state = {"state": "failed", "reason": str(exc)}
            with contextlib.suppress(OSError):
                await asyncio.to_thread(write_json, directory / COMPOSED_STATE, state)
            logger.info("[%s] composed file %s", session_id, state.get("state"))
            self.compose_jobs.pop(session_id, None)

        self.compose_jobs[session_id] = asyncio.ensure_future(job())

    # --- lifecycle -------------------------------------------------------------------------------

    async def recover(self, only: set[str] | None = None) -> None:
        """Finalise what a killed service left behind (state ``recording``/``finalizing``);
        ``only``: just these sessions (a media worker adopting a crashed worker's session)."""
        for directory in await asyncio.to_thread(session_dirs, self.root):
            if directory.name in self.recorders or (
                only is not None and directory.name not in only
            ):
                continue
            session = read_json(directory / SESSION_FILE)
            if session is not None and session.get("state") == "recording":
                session["state"] = "stopped"
                with contextlib.suppress(OSError):
                    await asyncio.to_thread(write_json, directory / SESSION_FILE, session)
            for manifest in await asyncio.to_thread(load_recordings, directory):
                if needs_finalizing(manifest, directory):
                    logger.info(
                        "finalising recording %s left by a previous run", manifest.recording_id
                    )
                    try:
                        await run_worker("finalize", directory / f"{manifest.recording_id}.json")
                    except TimeoutError:
                        logger.warning("finalising %s timed out", manifest.recording_id)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        waits = [r.wait() for r in self.recorders.values()] + list(self.compose_jobs.values())
        if waits:
            try:
                await asyncio.wait_for(
                    asyncio.gather(*waits, return_exceptions=True), SHUTDOWN_WAIT
                )
            except TimeoutError:
                logger.warning(
                    "recordings still finalising at shutdown: the next start finishes them"
                )


RECORDINGS = web.AppKey("recordings", RecordingService)


def recordings_root(config: Any) -> Path:
    return Path(getattr(config, "recordings_dir", None) or DEFAULT_DIR)


def setup(app: web.Application) -> None:
    """Routes, the service and its start-up/shutdown (call before the sessions context)."""
    async def events(type: str, session: Session, recording: dict[str, Any]) -> None:
        try:
            await store_journal.recording_event(app, type, session, recording)
        except Exception:  # an event that cannot be stored never disturbs the recording
            logger.exception("[%s] storing %s failed", session.id, type)

    app[RECORDINGS] = RecordingService(recordings_root(app[CONFIG]), events)
    app.add_routes(routes)
    app.cleanup_ctx.append(_context)


async def _context(app: web.Application) -> AsyncIterator[None]:
    service = app[RECORDINGS]
    if getattr(app[CONFIG], "recordings_dir", None):
        try:
            service.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            logger.warning("recordings directory %s: %s", service.root, exc.strerror or exc)
    recover = getattr(app[CONFIG], "recover_recordings", True)
    recovery = asyncio.ensure_future(service.recover() if recover else asyncio.sleep(0))
    yield
    recovery.cancel()
    await service.close()


# --- session creation and the agent's page -------------------------------------------------------


def parse_options(body: dict[str, Any]) -> dict[str, bool]:
    """``record`` and ``compose`` of ``POST /api/v1/sessions``."""
    options = {}
    for key in ("record", "compose"):
        value = body.get(key, False)
        if not isinstance(value, bool):
            raise BadRequest(f"'{key}' must be true or false")
        options[key] = value
    return options


def attach(app: web.Application, session: Session, options: dict[str, bool]) -> None:
    service = app[RECORDINGS]
    session.on_end.append(service.session_ended)
    if options.get("record") or options.get("compose"):
        recorder = service.recorder(session)
        recorder.compose = options.get("compose", False)
        if options.get("record"):
            recorder.start()


async def handle_message(
    app: web.Application, session: Session, participant: Participant, action: str
) -> None:
    """WebSocket ``{"type": "recording", "action"}``: agents only."""
    if participant.role != "agent":
        raise Forbidden("only an agent can start or stop the recording")
    await app[RECORDINGS].control(session, action)


def state_of(app: web.Application, session_id: str) -> str:
    return app[RECORDINGS].state(session_id)


# --- HTTP ------------------------------------------------------------------------------------------

routes = web.RouteTableDef()


def _service(request: web.Request) -> RecordingService:
    return request.app[RECORDINGS]


def _session_id(request: web.Request) -> str:
    session_id = request.match_info["session_id"]
    service = _service(request)
    if session_id not in request.app[SESSIONS].sessions and not service.known(session_id):
        raise NotFound(f"no session {session_id[:64]!r}", code="session_not_found")
    return session_id


@routes.post("/api/v1/sessions/{session_id}/recording")
async def recording_control(request: web.Request) -> web.Response:
    api._authorize(request)
    session = request.app[SESSIONS].get(request.match_info["session_id"])
    body = await api._json_body(request)
    state = await _service(request).control(session, body.get("action"))  # type: ignore[arg-type]
    return web.json_response({"recording": state})


@routes.get("/api/v1/sessions/{session_id}/recordings")
async def recordings_list(request: web.Request) -> web.Response:
    api._authorize(request)
    session_id = _session_id(request)
    base = request.app[CONFIG].public_url.rstrip("/") or str(request.url.origin())
    service = _service(request)
    out = []
    for manifest, entry in service.entries(session_id):
        entry["url"] = f"{base}/api/v1/sessions/{session_id}/recordings/{manifest.recording_id}"
        out.append(entry)
    composed = service.composed_state(session_id)
    return web.json_response({"recordings": out, "composed": composed})


@routes.get("/api/v1/sessions/{session_id}/recordings/composed")
async def recordings_composed(request: web.Request) -> web.StreamResponse:
    api._authorize(request)
    session_id = _session_id(request)
    service = _service(request)
    state = service.composed_state(session_id)
    if state.get("state") == "ready":
        path = (service.root / session_id / COMPOSED_FILE).resolve()
        return _file(path, "video/webm", f"{session_id}-composed.webm")
    if state.get("state") == "failed" and "retry" not in request.query:
        return web.json_response({"composed": state}, status=500)
    if state.get("state") != "composing":
        entries = service.entries(session_id)
        if not entries:
            raise NotFound("the session has no recordings", code="no_recordings")
        if service.state(session_id) == "recording":
            raise SignalingError("stop the recording first", code="recording", status=409)
        service.compose(session_id)
        state = service.composed_state(session_id)
    return web.json_response({"composed": state}, status=202)


@routes.get("/api/v1/sessions/{session_id}/recordings/{recording_id:r_[0-9a-f]{12}}")
async def recording_file(request: web.Request) -> web.StreamResponse:
    api._authorize(request)
    session_id = _session_id(request)
    manifest, path = _service(request).file_of(session_id, request.match_info["recording_id"])
    if manifest.state != "ready" or not path.is_file():
        raise SignalingError(
            f"the recording is {manifest.state}, not ready", code="not_ready", status=409
        )
    return _file(path, CONTENT_TYPES.get(manifest.format, "application/octet-stream"), path.name)


def _file(path: Path, content_type: str, name: str) -> web.FileResponse:
    response = web.FileResponse(path, headers={"Content-Type": content_type})
    response.headers["Content-Disposition"] = f'attachment; filename="{name}"'
    response.headers["Cache-Control"] = "no-store"
    return response


# --- parley recording export ----------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(dest="recording_command", required=True)
    export = commands.add_parser(
        "export", help="turn what a stopped or killed service left on disk into ready files"
    )
    export.add_argument(
        "target", help="a session id (under --recordings-dir) or a session directory"
    )
    export.add_argument(
        "--compose", action="store_true", help="also make the composed file of the session"
    )
    add_dir_argument(export)


def add_dir_argument(parser: argparse.ArgumentParser) -> None:
    import os

    parser.add_argument(
        "--recordings-dir",
        default=os.environ.get("PARLEY_RECORDINGS_DIR", DEFAULT_DIR),
        help=f"where recordings are kept (env PARLEY_RECORDINGS_DIR; default ./{DEFAULT_DIR})",
    )


class ProgressBar:
    """A plain text progress bar on stderr (no extra dependency)."""

    WIDTH = 30

    def __init__(self, label: str) -> None:
        self.label = label
        self._last = -1

    def __call__(self, fraction: float) -> None:
        filled = int(max(0.0, min(1.0, fraction)) * self.WIDTH)
        if filled == self._last:
            return
        self._last = filled
        bar = "#" * filled + "." * (self.WIDTH - filled)
        sys.stderr.write(f"\r{self.label} [{bar}] {int(fraction * 100):3d}%")
        sys.stderr.flush()
        if fraction >= 1.0:
            sys.stderr.write("\n")


def export(target: str, root: Path, compose: bool = False) -> int:
    """Finalise every unfinished recording of one session; 0 when all are ready."""
    directory = Path(target)
    if not directory.is_dir():
        if not is_session_id(target):
            print(f"parley: {target!r} is neither a directory nor a session id", file=sys.stderr)
            return 2
        directory = root / target
    if not directory.is_dir():
        print(f"parley: no recordings in {directory}", file=sys.stderr)
        return 2
    manifests = load_recordings(directory)
    if not manifests:
        print(f"parley: no recordings in {directory}", file=sys.stderr)
        return 2
    failed = 0
    for manifest in manifests:
        path = directory / f"{manifest.recording_id}.json"
        label = (
            f"{manifest.recording_id} {manifest.name or manifest.participant_id} {manifest.source}"
        )
        if needs_finalizing(manifest, directory):
            started = time.monotonic()
            result = finalize(path, ProgressBar(label))
            note = f"{result.state} in {time.monotonic() - started:.1f}s"
        else:
            result = manifest
            note = f"already {result.state}"
        if result.state != "ready":
            failed += 1
            note += f": {result.reason}"
        print(f"{label}: {note} -> {directory / result.file_name}")
    session = read_json(directory / SESSION_FILE)
    if session is not None and session.get("state") == "recording":
        session["state"] = "stopped"
        write_json(directory / SESSION_FILE, session)
    if compose:
        from parley.relay.recorder.compose import compose as make_composed

        try:
            state = make_composed(directory, ProgressBar("composed"))
        except Exception as exc:
            state = {"state": "failed", "reason": f"cannot compose: {exc}"}
            failed += 1
        write_json(directory / COMPOSED_STATE, state)
        print(f"composed: {state['state']} -> {directory / COMPOSED_FILE}")
    return 1 if failed else 0


def main(args: argparse.Namespace) -> int:
    return export(args.target, Path(args.recordings_dir), args.compose)

"""Janus (Debian's ``janus`` binary, the VideoRoom plugin) as the other server of the side-by-side
run (bench/sidebyside.py): started on loopback with a configuration written to a temp dir, and
driven over its HTTP API (long-poll for events) with aiohttp.

Only the VideoRoom plugin and the HTTP transport are loaded (their ``.so`` files linked into
folders of their own), HTTP listens on 127.0.0.1, ICE gathers on the run's own interface only
(``127.0.0.2`` in its own namespace, bench/netns.py: Janus never gathers on ``lo``; no STUN, no
TURN, half-trickle: our clients put every candidate in their SDP), nothing is recorded, and the
log level is warnings.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import secrets
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp

from .netns import JANUS_INTERFACE
from .service import free_port, stop_process, wait_healthy

VIDEOROOM = "janus.plugin.videoroom"
KEEPALIVE_S = 25.0
"""Janus drops a session after ``session_timeout`` (60 s) without a request."""
POLL_S = 40.0
"""A long poll returns after 30 s at most (a ``keepalive`` event when nothing happened)."""
LIB_DIRS = ("/usr/lib/*/janus", "/usr/lib/janus", "/usr/local/lib/janus", "/opt/janus/lib/janus")


class JanusError(RuntimeError):
    """Janus or its VideoRoom plugin refused a request (carries Janus's code and reason)."""


def janus_binary() -> str | None:
    return shutil.which("janus")


def lib_dir() -> str:
    """The folder holding Janus's ``plugins/`` and ``transports/`` (Debian: multiarch)."""
    for pattern in LIB_DIRS:
        for path in sorted(glob.glob(pattern)):
            if os.path.exists(os.path.join(path, "plugins", "libjanus_videoroom.so")):
                return path
    raise RuntimeError("Janus's VideoRoom plugin (libjanus_videoroom.so) is not installed")


def write_config(root: str, http_port: int, debug_level: int = 3) -> str:
    """Janus's configuration folder under ``root`` (VideoRoom + HTTP only, loopback only)."""
    lib = lib_dir()
    conf, plugins, transports, empty = (
        os.path.join(root, d) for d in ("conf", "plugins", "transports", "empty")
    )
    for folder in (conf, plugins, transports, empty):
        os.makedirs(folder, exist_ok=True)
    os.symlink(
        os.path.join(lib, "plugins", "libjanus_videoroom.so"),
        os.path.join(plugins, "libjanus_videoroom.so"),
    )
    os.symlink(
        os.path.join(lib, "transports", "libjanus_http.so"),
        os.path.join(transports, "libjanus_http.so"),
    )
    files = {
        "janus.jcfg": f"""general: {{
\tconfigs_folder = "{conf}"
\tplugins_folder = "{plugins}"
\ttransports_folder = "{transports}"
\tevents_folder = "{empty}"
\tloggers_folder = "{empty}"
\tdebug_level = {debug_level}
\tsession_timeout = 60
}}
media: {{
\tipv6 = false
}}
nat: {{
\tnice_debug = false
\tice_enforce_list = "{JANUS_INTERFACE}"
}}
plugins: {{
}}
transports: {{
}}
events: {{
\tbroadcast = false
}}
loggers: {{
}}
""",
        "janus.transport.http.jcfg": f"""general: {{
\tjson = "plain"
\tbase_path = "/janus"
\thttp = true
\tport = {http_port}
\tip = "127.0.0.1"
\thttps = false
}}
admin: {{
\tadmin_http = false
\tadmin_https = false
}}
""",
        # no static rooms: the run creates its own
        "janus.plugin.videoroom.jcfg": "general: {\n}\n",
    }
    for name, text in files.items():
        with open(os.path.join(conf, name), "w") as f:
            f.write(text)
    return conf


@dataclass
class JanusService:
    url: str
    """``http://127.0.0.1:PORT/janus``"""
    pid: int


@contextlib.asynccontextmanager
async def janus_service(log_dir: str, cpus: set[int] | None = None) -> AsyncIterator[JanusService]:
    """``janus -F <conf>`` on loopback (pinned to ``cpus`` when given), stopped on exit."""
    binary = janus_binary()
    if binary is None:
        raise RuntimeError("the janus binary is not installed (apt-get install janus)")
    port = free_port()
    conf = write_config(os.path.join(log_dir, f"janus-{port}"), port)

    def pin() -> None:
        if cpus:
            os.sched_setaffinity(0, cpus)

    log = open(os.path.join(log_dir, "janus.log"), "ab")  # noqa: SIM115
    proc = await asyncio.create_subprocess_exec(
        binary,
        "-F",
        conf,
        "--disable-colors",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=log,
        stderr=log,
        preexec_fn=pin if cpus else None,  # noqa: PLW1509 - only sched_setaffinity
    )
    log.close()
    url = f"http://127.0.0.1:{port}/janus"
    try:
        await wait_healthy(url, proc, "janus (see janus.log)", 15.0, path="/info")
        yield JanusService(url=url, pid=proc.pid)
    finally:
        await stop_process(proc)


def _plugin_data(message: dict[str, Any]) -> dict[str, Any]:
    data = message.get("plugindata", {}).get("data", {})
    if not isinstance(data, dict):
        raise JanusError(f"malformed plugin reply: {message}")
    if "error_code" in data or "error" in data:
        raise JanusError(f"videoroom error {data.get('error_code')}: {data.get('error')}")
    return data


class JanusSession:
    """One Janus API session (as one browser holds): requests over HTTP POST, events from a
    long poll, a keepalive well inside the session timeout."""

    def __init__(self, http: aiohttp.ClientSession, url: str) -> None:
        self.http = http
        self.url = url
        self.id = 0
        self.hangups: list[dict[str, Any]] = []
        """``hangup`` events Janus sent (a peer connection it closed), kept for the notes."""
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.lost = ""
        """Why Janus stopped answering the long poll (the session is gone), when it did."""
        self._up: dict[int, asyncio.Event] = {}
        """Per handle: set on Janus's ``webrtcup`` (its DTLS is done)."""
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False

    async def _post(self, path: str, message: dict[str, Any]) -> dict[str, Any]:
        async with self.http.post(f"{self.url}{path}", json=message) as response:
            reply = await response.json(content_type=None)
        if not isinstance(reply, dict):
            raise JanusError(f"malformed reply: {reply!r}")
        if reply.get("janus") == "error":
            error = reply.get("error", {})
            raise JanusError(f"janus error {error.get('code')}: {error.get('reason')}")
        return reply

    async def create(self) -> None:
        reply = await self._post("", {"janus": "create", "transaction": secrets.token_hex(6)})
        self.id = int(reply["data"]["id"])
        self._tasks = [
            asyncio.ensure_future(self._poll()),
            asyncio.ensure_future(self._keepalive()),
        ]

    async def attach(self, plugin: str = VIDEOROOM) -> int:
        reply = await self._post(
            f"/{self.id}",
            {"janus": "attach", "plugin": plugin, "transaction": secrets.token_hex(6)},
        )
        return int(reply["data"]["id"])

    async def request(
        self,
        handle: int,
        body: dict[str, Any],
        jsep: dict[str, Any] | None = None,
        timeout: float = 15.0,  # noqa: ASYNC109
    ) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """A plugin message; its (plugin data, JSEP), from the synchronous reply or, when Janus
        acknowledges it, from the event of the same transaction."""
        transaction = secrets.token_hex(6)
        message: dict[str, Any] = {"janus": "message", "body": body, "transaction": transaction}
        if jsep is not None:
            message["jsep"] = jsep
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[transaction] = future
        try:
            reply = await self._post(f"/{self.id}/{handle}", message)
            if reply.get("janus") == "ack":
                reply = await asyncio.wait_for(future, timeout)
        finally:
            self._pending.pop(transaction, None)
        return _plugin_data(reply), reply.get("jsep")

    async def _poll(self) -> None:
        # ends with the session; each poll is bounded by POLL_S
        while not self._closed:
            try:
                async with self.http.get(
                    f"{self.url}/{self.id}",
                    params={"maxev": "10"},
                    timeout=aiohttp.ClientTimeout(total=POLL_S),
                ) as response:
                    reply = await response.json(content_type=None)
            except (aiohttp.ClientError, TimeoutError):
                if self._closed:
                    return
                await asyncio.sleep(0.1)
                continue
            if isinstance(reply, dict) and reply.get("janus") == "error":
                self.lost = str(reply.get("error", {}).get("reason"))  # e.g. "No such session"
                return
            for event in reply if isinstance(reply, list) else [reply]:
                self._dispatch(event)

    def _dispatch(self, event: dict[str, Any]) -> None:
        kind = event.get("janus")
        if kind == "hangup":
            self.hangups.append(event)
        elif kind == "webrtcup":
            self._up_event(int(event.get("sender", 0))).set()
        future = self._pending.get(str(event.get("transaction")))
        if future is not None and not future.done() and kind in ("event", "error", "success"):
            if kind == "error":
                error = event.get("error", {})
                future.set_exception(
                    JanusError(f"janus error {error.get('code')}: {error.get('reason')}")
                )
            else:
                future.set_result(event)

    def _up_event(self, handle: int) -> asyncio.Event:
        return self._up.setdefault(handle, asyncio.Event())

    async def wait_webrtc_up(self, handle: int, timeout: float = 15.0) -> None:  # noqa: ASYNC109
        """Until Janus says the handle's peer connection is up (a VideoRoom subscriber can
        only join a publisher whose connection is)."""
        await asyncio.wait_for(self._up_event(handle).wait(), timeout)

    async def _keepalive(self) -> None:
        while not self._closed:
            await asyncio.sleep(KEEPALIVE_S)
            with contextlib.suppress(aiohttp.ClientError, TimeoutError, JanusError):
                await self._post(
                    f"/{self.id}", {"janus": "keepalive", "transaction": secrets.token_hex(6)}
                )

    async def close(self) -> None:
        self._closed = True
        if self.id:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError, JanusError):
                await self._post(
                    f"/{self.id}", {"janus": "destroy", "transaction": secrets.token_hex(6)}
                )
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(BaseException):
                await task


async def create_room(http: aiohttp.ClientSession, url: str, publishers: int) -> int:
    """A VP8 VideoRoom for ``publishers`` publishers, no bitrate cap, no recording; its id."""
    room = secrets.randbelow(1 << 40) + 1
    session = JanusSession(http, url)
    try:
        await session.create()
        handle = await session.attach()
        data, _ = await session.request(
            handle,
            {
                "request": "create",
                "room": room,
                "description": "parley side-by-side",
                "publishers": publishers,
                "bitrate": 0,
                "videocodec": "vp8",
                "audiocodec": "opus",
                "record": False,
                "notify_joining": False,
            },
        )
        if data.get("videoroom") != "created":
            raise JanusError(f"room not created: {data}")
    finally:
        await session.close()
    return room

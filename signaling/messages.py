"""Typed WebSocket signaling messages (client to server). One ``parse`` turns a text frame into
one of these or raises a :class:`~signaling.errors.SignalingError` with the code the client sees.
Server-to-client messages are plain dicts built by the ``*_message`` helpers below."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from .errors import BadRequest, InvalidJson, SignalingError, UnknownMessageType

MAX_MESSAGE_BYTES = 128 * 1024
"""Largest text frame accepted (aiohttp closes the socket with 1009 above it)."""
MAX_SDP_CHARS = 64 * 1024
"""Largest offer or answer SDP (a browser's offer with a dozen tracks is about 15 KiB)."""
MAX_TOKEN_CHARS = 2048
SOURCES = ("camera", "microphone", "screen")


@dataclass(frozen=True)
class Join:
    token: str
    name: str
    resume: bool = False
    """The page still holds its peer connections and lost only its WebSocket: keep its media
    (within the relay's resume grace) instead of starting over."""


@dataclass(frozen=True)
class Offer:
    pc: str
    sdp: str
    sources: dict[str, str]


@dataclass(frozen=True)
class Answer:
    pc: str
    sdp: str


@dataclass(frozen=True)
class Leave:
    pass


@dataclass(frozen=True)
class End:
    pass


@dataclass(frozen=True)
class RecordingAction:
    action: str
    """``start`` or ``stop`` (agents only)."""


@dataclass(frozen=True)
class TrackState:
    """The user turned a source on or off (the page stops sending it too)."""

    source: str
    enabled: bool


@dataclass(frozen=True)
class Reconnect:
    pc: Literal["publish", "subscribe"]
    """``publish`` or ``subscribe``: the leg the page found dead and wants rebuilt."""


@dataclass(frozen=True)
class Candidate:
    """A trickled ICE candidate of the page's side of one leg (RFC 8838), sent after its offer
    (publish) or answer (subscribe); ``candidate`` None is end-of-candidates."""

    pc: Literal["publish", "subscribe"]
    candidate: str | None
    """The ``candidate-attribute`` (``candidate:...``), as ``RTCIceCandidate.candidate``."""
    ufrag: str | None = None
    """The candidate's ``usernameFragment``: which ICE generation (leg) it belongs to."""


@dataclass(frozen=True)
class MediaCheck:
    """The page's subscribe leg went silent: is the relay still sending to it? (answered with
    ``media_status``; the page compares two answers with what it received meanwhile)."""


ClientMessage = (
    Join
    | Offer
    | Answer
    | Leave
    | End
    | RecordingAction
    | TrackState
    | Reconnect
    | Candidate
    | MediaCheck
)
MAX_CANDIDATE_CHARS = 1024


def _str(data: dict[str, Any], key: str, *, required: bool = True, limit: int = 0) -> str:
    value = data.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value):
        raise BadRequest(f"'{key}' must be a non-empty string")
    if limit and len(value) > limit:
        raise BadRequest(f"'{key}' is longer than {limit} characters")
    return value


def parse(text: str | bytes) -> ClientMessage:
    if len(text) > MAX_MESSAGE_BYTES:
        raise BadRequest("message too large")
    try:
        data = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidJson("the message is not valid JSON") from exc
    except RecursionError as exc:
        raise InvalidJson("the message nests too deeply") from exc
    if not isinstance(data, dict):
        raise InvalidJson("the message must be a JSON object")
    kind = data.get("type")
    if kind == "join":
        return Join(
            token=_str(data, "token", limit=MAX_TOKEN_CHARS),
            name=_str(data, "name", required=False, limit=80),
            resume=data.get("resume") is True,
        )
    if kind in ("offer", "answer"):
        pc = data.get("pc")
        expected = "publish" if kind == "offer" else "subscribe"
        if pc != expected:
            raise BadRequest(f'\'{kind}\' messages must have "pc": "{expected}"')
        sdp = _str(data, "sdp", limit=MAX_SDP_CHARS)
        if not sdp.lstrip().startswith("v=0"):
            raise SignalingError("the SDP must start with v=0", code="invalid_sdp")
        if kind == "answer":
            return Answer(pc=pc, sdp=sdp)
        sources = data.get("sources") or {}
        if not isinstance(sources, dict) or not all(
            isinstance(k, str) and v in SOURCES for k, v in sources.items()
        ):
            raise BadRequest("'sources' must map mids to camera, microphone or screen")
        return Offer(pc=pc, sdp=sdp, sources=dict(sources))
    if kind == "reconnect":
        if data.get("pc") not in ("publish", "subscribe"):
            raise BadRequest("'pc' must be 'publish' or 'subscribe'")
        return Reconnect(pc="publish" if data["pc"] == "publish" else "subscribe")
    if kind == "candidate":
        return _candidate(data)
    if kind == "media_check":
        return MediaCheck()
    if kind == "leave":
        return Leave()
    if kind == "end":
        return End()
    if kind == "recording":
        if data.get("action") not in ("start", "stop"):
            raise BadRequest("'action' must be 'start' or 'stop'")
        return RecordingAction(action=data["action"])
    if kind == "track_state":
        if data.get("source") not in SOURCES:
            raise BadRequest("'source' must be camera, microphone or screen")
        if not isinstance(data.get("enabled"), bool):
            raise BadRequest("'enabled' must be true or false")
        return TrackState(source=data["source"], enabled=data["enabled"])
    if not isinstance(kind, str):
        raise BadRequest("the message has no 'type'")
    raise UnknownMessageType(f"unknown message type {kind[:40]!r}")


def _candidate(data: dict[str, Any]) -> Candidate:
    """``{"pc", "candidate": {"candidate", "sdpMid", "sdpMLineIndex", "usernameFragment"}}``
    (``RTCIceCandidate.toJSON()``), or ``"candidate": null`` for end-of-candidates."""
    pc = data.get("pc")
    if pc not in ("publish", "subscribe"):
        raise BadRequest("'pc' must be 'publish' or 'subscribe'")
    leg: Literal["publish", "subscribe"] = "publish" if pc == "publish" else "subscribe"
    init = data.get("candidate")
    if init is None:
        return Candidate(pc=leg, candidate=None)
    if not isinstance(init, dict):
        raise BadRequest("'candidate' must be an object (RTCIceCandidate.toJSON()) or null")
    text = init.get("candidate")
    ufrag = init.get("usernameFragment")
    if not isinstance(text, str) or len(text) > MAX_CANDIDATE_CHARS:
        raise BadRequest(
            f"'candidate.candidate' must be a string of at most {MAX_CANDIDATE_CHARS} characters"
        )
    if ufrag is not None and (not isinstance(ufrag, str) or len(ufrag) > 256):
        raise BadRequest("'candidate.usernameFragment' must be a string")
    return Candidate(pc=leg, candidate=text or None, ufrag=ufrag or None)


def error_message(code: str, message: str) -> dict[str, Any]:
    return {"type": "error", "code": code, "message": message}

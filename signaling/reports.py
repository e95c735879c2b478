"""Session reports: 5-second quality samples of every leg, the network path of each
participant, talk time, and what the API, the console pages and ``/metrics`` make of them.

The :class:`Reporter` samples what the relay already counts (relay/quality.py,
relay/speech.py) every ``report_interval`` seconds, and once more when a participant's media
closes, and writes the samples to the store. :func:`build_report` turns a session's rows into
the report; :func:`summary_of` is its one-line summary (also carried by ``session.ended``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import csv
import io
import logging
import math
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

from aiohttp import web
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily

from parley.relay import _aiortc
from parley.relay.quality import FORWARD_LATENCY
from parley.relay.router import Peer
from parley.relay.speech import merge, overlap, total

from .sessions import Participant, Session, SessionManager, iso
from .store import Store

logger = logging.getLogger(__name__)

PATHS = ("host-udp", "turn-udp", "turn-tcp", "turn-tls", "turn")
SCORE_BOUNDS = (1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.2, 4.5)
CSV_FIELDS = (
    "at", "participant_id", "track_id", "kind", "leg", "score", "packets", "bytes", "bitrate",
    "loss", "jitter_ms", "rtt_ms", "nacks", "plis", "firs", "rtx", "frames", "fps", "keyframes",
    "resolution",
)  # fmt: skip

TurnLookup = Callable[[str, int], str | None]
"""(relayed host, port) -> the client's transport to our embedded TURN server, or None."""


def classify_path(
    pair: tuple[Any, Any] | None, turn_lookup: TurnLookup | None
) -> tuple[str, str] | None:
    """The network path of a nominated candidate pair: ``(path, turn server)``."""
    if pair is None:
        return None
    _, remote = pair
    transport = turn_lookup(remote.host, remote.port) if turn_lookup is not None else None
    if transport is not None:
        return f"turn-{transport}", "embedded"
    if remote.type == "relay":
        return "turn", "external"  # the client's leg to a TURN server we do not run is not seen
    return "host-udp", ""


class ScoreHistogram:
    """Counts of leg scores by direction and kind, for /metrics (no per-session labels)."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str], list[int]] = {}
        self.sums: dict[tuple[str, str], float] = {}

    def observe(self, direction: str, kind: str, score: float) -> None:
        key = (direction, kind)
        counts = self.counts.setdefault(key, [0] * (len(SCORE_BOUNDS) + 1))
        index = next((i for i, b in enumerate(SCORE_BOUNDS) if score <= b), len(SCORE_BOUNDS))
        counts[index] += 1
        self.sums[key] = self.sums.get(key, 0.0) + score


class Reporter:
    """Samples every live session into the store."""

    def __init__(
        self,
        store: Store,
        manager: SessionManager,
        interval: float,
        turn_lookup: Callable[[], TurnLookup | None] = lambda: None,
        on_path: Callable[[Session, str, str, str], Any] | None = None,
    ) -> None:
        self.store = store
        self.manager = manager
        self.interval = interval
        self.turn_lookup = turn_lookup
        self.on_path = on_path
        self.scores = ScoreHistogram()
        self.paths: dict[tuple[str, str], str] = {}
        """Network path of each connected participant, by (session id, participant id)."""
        self._task: asyncio.Task[None] | None = None
        self.writes: set[asyncio.Future[None]] = set()

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.writes:
            await asyncio.gather(*self.writes, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                rows: list[dict[str, Any]] = []
                for session in list(self.manager.sessions.values()):
                    if session.ended_at is None:
                        for peer in list(session.router.peers.values()):
                            rows += self.sample_peer(session, peer)
                await self.store.add_samples(rows)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.warning("reports: sampling failed", exc_info=True)

    def flush(self, session: Session, participant: Participant) -> None:
        """A participant's media is about to close: take its last sample now."""
        peer = participant.peer
        if peer is None:
            return
        rows = self.sample_peer(session, peer)
        self.paths.pop((session.id, participant.id), None)
        if rows:
            task = asyncio.ensure_future(self.store.add_samples(rows))
            self.writes.add(task)
            task.add_done_callback(self.writes.discard)

    def sample_peer(self, session: Session, peer: Peer) -> list[dict[str, Any]]:
        now, wall = time.monotonic(), time.time()
        rows: list[dict[str, Any]] = []
        self._check_path(session, peer)
        consumers = list(peer.subscribe.consumers.values())
        rtts = [c.quality.rtt for c in consumers if c.quality.rtt is not None]
        rtt_ms = 1000 * sum(rtts) / len(rtts) if rtts else None
        for producer in peer.producers:
            data = producer.quality.sample(now, wall, producer, rtt_ms)
            rows.append(self._row(session, peer.id, producer.id, producer.kind, "up", wall, data))
        for consumer in consumers:
            producer = consumer.producer
            data = consumer.quality.sample(now, consumer)
            data["leg"] = peer.id
            rows.append(
                self._row(
                    session, producer.peer_id, producer.id, producer.kind, peer.id, wall, data
                )
            )
        return rows

    def _row(
        self,
        session: Session,
        participant_id: str,
        track_id: str,
        kind: str,
        leg: str,
        wall: float,
        data: dict[str, Any],
    ) -> dict[str, Any]:
        score = data.get("score")
        if score is not None:
            self.scores.observe("up" if leg == "up" else "down", kind, score)
        return {
            "session_id": session.id,
            "participant_id": participant_id,
            "track_id": track_id,
            "kind": kind,
            "leg": leg,
            "at": wall,
            "score": score,
            "data": data,
        }

    def _check_path(self, session: Session, peer: Peer) -> None:
        pair = None
        for pc in (peer.publish.pc, peer.subscribe.pc):
            if pc.connectionState == "connected":
                pair = _aiortc.nominated_pair(pc)
                if pair is not None:
                    break
        found = classify_path(pair, self.turn_lookup())
        if found is None:
            return
        path, turn = found
        key = (session.id, peer.id)
        if self.paths.get(key) != path:
            self.paths[key] = path
            if self.on_path is not None:
                self.on_path(session, peer.id, path, turn)


# --- the report --------------------------------------------------------------------------------


def _p95(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 2) if values else None


def leg_summary(samples: list[dict[str, Any]]) -> dict[str, Any]:
    scores = [s["score"] for s in samples if s["score"] is not None]
    data = [s["data"] for s in samples]
    live = [d for d in data if d.get("packets")]
    rtts = [d["rtt_ms"] for d in data if d.get("rtt_ms") is not None]
    freezes = 0
    if samples and samples[0]["kind"] == "video":
        started = False
        for d in data:
            stalled = not d.get("packets") or (d.get("leg") == "up" and d.get("fps") == 0)
            if started and stalled:
                freezes += 1
            started = started or bool(d.get("packets"))
    return {
        "samples": len(samples),
        "mean_score": _mean(scores),
        "min_score": min(scores) if scores else None,
        "mean_loss": _mean([d["loss"] for d in live]),
        "p95_loss": _p95([d["loss"] for d in live]),
        "mean_rtt_ms": _mean(rtts),
        "mean_jitter_ms": _mean([d["jitter_ms"] for d in live]),
        "mean_bitrate": _mean([d["bitrate"] for d in live]),
        "packets": sum(d.get("packets", 0) for d in data),
        "nacks": sum(d.get("nacks", 0) for d in data),
        "plis": sum(d.get("plis", 0) for d in data),
        "firs": sum(d.get("firs", 0) for d in data),
        "freezes": freezes,
    }


def talk_time(
    samples: list[dict[str, Any]], duration: float | None
) -> tuple[dict[str, dict[str, Any]], float]:
    """Per participant: seconds spoken, share, overlap; and the session's total overlap."""
    spurts: dict[str, list[list[float]]] = {}
    for s in samples:
        if s["leg"] == "up" and s["kind"] == "audio":
            spurts.setdefault(s["participant_id"], []).extend(s["data"].get("speech", []))
    merged = {who: merge(v) for who, v in spurts.items()}
    both, mine = overlap(merged)
    spoken = {who: total(v) for who, v in merged.items()}
    everyone = sum(spoken.values())
    out = {
        who: {
            "seconds": round(seconds, 2),
            "share": round(seconds / everyone, 3) if everyone else 0.0,
            "share_of_call": round(seconds / duration, 3) if duration else None,
            "overlap_seconds": round(mine.get(who, 0.0), 2),
        }
        for who, seconds in spoken.items()
    }
    return out, round(both, 2)


def summary_line(
    row: dict[str, Any],
    scores: tuple[float, float] | None,
    now: float | None = None,
    recorded: bool = False,
) -> dict[str, Any]:
    """One line of the report list: no samples needed, the scores come aggregated."""
    joined = [p for p in row.get("participants", []) if p["joined_at"] is not None]
    return {
        "session_id": row["id"],
        "conversation_id": row["conversation_id"],
        "created_at": iso(row["created_at"]),
        "started_at": iso(row["started_at"]),
        "ended_at": iso(row["ended_at"]),
        "end_reason": row["end_reason"],
        "duration_seconds": round(_duration(row, now), 1),
        "participants": len(joined),
        "worst_score": round(scores[0], 2) if scores else None,
        "mean_score": round(scores[1], 2) if scores else None,
        "network_paths": sorted({p["network_path"] for p in joined if p["network_path"]}),
        "recorded": recorded,
    }


def _duration(row: dict[str, Any], now: float | None) -> float:
    if row["started_at"] is None:
        return 0.0
    end = row["ended_at"] or (now if now is not None else time.time())
    return max(0.0, end - row["started_at"])


def summary_of(
    row: dict[str, Any],
    samples: list[dict[str, Any]],
    now: float | None = None,
    recorded: bool = False,
) -> dict[str, Any]:
    duration = _duration(row, now)
    scores = [s["score"] for s in samples if s["score"] is not None]
    talk, both = talk_time(samples, duration)
    joined = [p for p in row.get("participants", []) if p["joined_at"] is not None]
    return {
        "session_id": row["id"],
        "conversation_id": row["conversation_id"],
        "created_at": iso(row["created_at"]),
        "started_at": iso(row["started_at"]),
        "ended_at": iso(row["ended_at"]),
        "end_reason": row["end_reason"],
        "duration_seconds": round(duration, 1),
        "participants": len(joined),
        "worst_score": min(scores) if scores else None,
        "mean_score": _mean(scores),
        "talk_seconds": {who: t["seconds"] for who, t in talk.items()},
        "overlap_seconds": both,
        "network_paths": sorted({p["network_path"] for p in joined if p["network_path"]}),
        "recorded": recorded,
    }


async def build_report(store: Store, row: dict[str, Any]) -> dict[str, Any]:
    from .store_journal import session_json

    sid = row["id"]
    samples = await store.samples(sid)
    events = await store.events_of(sid)
    connections = await store.connections_of(sid)
    recorded = any(e["type"] == "recording.started" for e in events)
    summary = summary_of(row, samples, recorded=recorded)
    duration = summary["duration_seconds"] or None
    talk, both = talk_time(samples, duration)
    participants = []
    for p in row.get("participants", []):
        pid = p["participant_id"]
        mine = [s for s in samples if s["participant_id"] == pid]
        tracks: dict[str, dict[str, Any]] = {}
        for s in mine:
            track = tracks.setdefault(
                s["track_id"], {"track_id": s["track_id"], "kind": s["kind"], "legs": {}}
            )
            track["legs"].setdefault(s["leg"], []).append(s)
        participants.append(
            {
                "participant_id": pid,
                "role": p["role"],
                "name": p["name"],
                "joined_at": iso(p["joined_at"]),
                "left_at": iso(p["left_at"]),
                "network_path": p["network_path"],
                "turn_server": p["turn_server"],
                "connections": [
                    {
                        "joined_at": iso(c["joined_at"]),
                        "left_at": iso(c["left_at"]),
                        "user_agent": c["user_agent"],
                        "signaling": c["signaling"],
                        "network_path": c["network_path"],
                        "turn_server": c["turn_server"],
                    }
                    for c in connections
                    if c["participant_id"] == pid
                ],
                "talk": talk.get(
                    pid,
                    {"seconds": 0.0, "share": 0.0, "share_of_call": 0.0, "overlap_seconds": 0.0},
                ),
                "tracks": [
                    {
                        "track_id": t["track_id"],
                        "kind": t["kind"],
                        "legs": [
                            {"leg": leg, **leg_summary(legs)} for leg, legs in t["legs"].items()
                        ],
                    }
                    for t in tracks.values()
                ],
            }
        )
    return {
        "session": session_json(row),
        "summary": summary,
        "timeline": [
            {
                "at": iso(e["created_at"]),
                "type": e["type"],
                "participant_id": (e["payload"].get("participant") or {}).get("participant_id"),
            }
            for e in events
        ],
        "participants": participants,
        "talk": {"overlap_seconds": both},
        "score": "E-model MOS 1.0-4.5 (LiveKit's simplified E-model)",
        "samples": [_flat(s) for s in samples],
    }


def _flat(sample: dict[str, Any]) -> dict[str, Any]:
    data = {k: v for k, v in sample["data"].items() if k not in ("speech", "leg", "kind")}
    return {
        "at": iso(sample["at"]),
        "participant_id": sample["participant_id"],
        "track_id": sample["track_id"],
        "kind": sample["kind"],
        "leg": sample["leg"],
        **data,
        "score": sample["score"],
    }


def samples_csv(report: dict[str, Any]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_FIELDS, extrasaction="ignore")
    writer.writeheader()
    for sample in report["samples"]:
        writer.writerow({k: "" if sample.get(k) is None else sample.get(k) for k in CSV_FIELDS})
    return out.getvalue()


# --- HTTP ----------------------------------------------------------------------------------------

routes = web.RouteTableDef()


def _store(request: web.Request) -> Store:
    from .errors import SignalingError
    from .store_journal import STORE

    store = request.app.get(STORE)
    if store is None:
        raise SignalingError(
            "reports need the store (--data-dir or --database-url)", code="not_found", status=404
        )
    return store


def _time_param(request: web.Request, name: str) -> float | None:
    from .errors import BadRequest

    value = request.query.get(name)
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError as exc:
        raise BadRequest(f"'{name}' must be an ISO 8601 time or Unix seconds") from exc


def _cursor(value: str) -> tuple[float, str]:
    from .errors import BadRequest

    try:
        created, sid = base64.urlsafe_b64decode(value.encode()).decode().split("|", 1)
        return float(created), sid
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest("'cursor' is not valid") from exc


@routes.get("/api/v1/sessions/{session_id}/report")
async def session_report(request: web.Request) -> web.Response:
    from .api import _authorize
    from .errors import BadRequest, SessionNotFound

    _authorize(request)
    store = _store(request)
    sid = request.match_info["session_id"]
    row = await store.get_session(sid) if len(sid) <= 40 else None
    if row is None:
        raise SessionNotFound(f"no session {sid[:64]!r}")
    report = await build_report(store, row)
    fmt = request.query.get("format", "json")
    if fmt == "csv":
        return web.Response(
            text=samples_csv(report),
            content_type="text/csv",
            headers={"Content-Disposition": f'attachment; filename="{sid}-samples.csv"'},
        )
    if fmt != "json":
        raise BadRequest("'format' must be json or csv")
    return web.json_response(report)


@routes.get("/api/v1/reports")
async def list_reports(request: web.Request) -> web.Response:
    from .api import _authorize
    from .errors import BadRequest

    _authorize(request)
    store = _store(request)
    try:
        limit = int(request.query.get("limit", "50"))
    except ValueError as exc:
        raise BadRequest("'limit' must be an integer from 1 to 200") from exc
    if not 1 <= limit <= 200:
        raise BadRequest("'limit' must be an integer from 1 to 200")
    conversation = request.query.get("conversation_id") or None
    cursor = request.query.get("cursor")
    rows = await store.list_sessions(
        start=_time_param(request, "from"),
        end=_time_param(request, "to"),
        conversation_id=conversation,
        limit=limit + 1,
        after=_cursor(cursor) if cursor else None,
    )
    more, rows = len(rows) > limit, rows[:limit]
    scores = await store.score_summaries([row["id"] for row in rows])
    recorded = await store.recorded_sessions([row["id"] for row in rows])
    lines = [
        summary_line(row, scores.get(row["id"]), recorded=row["id"] in recorded) for row in rows
    ]
    next_cursor = None
    if more and rows:
        last = rows[-1]
        next_cursor = base64.urlsafe_b64encode(
            f"{last['created_at']!r}|{last['id']}".encode()
        ).decode()
    return web.json_response({"reports": lines, "next_cursor": next_cursor})


# --- /metrics ------------------------------------------------------------------------------------


class ReportCollector:
    """Relay-added latency, leg scores, sessions and participants by network path."""

    def __init__(self, app: web.Application) -> None:
        self.app = app

    def collect(self) -> Iterator[Any]:
        latency = HistogramMetricFamily(
            "parley_relay_forward_latency_seconds",
            "Time a packet spends inside the relay: arrival at its producer to the last send "
            "(1 packet in 16 sampled)",
        )
        latency.add_metric([], FORWARD_LATENCY.buckets(), FORWARD_LATENCY.total)
        yield latency
        reporter = self.app.get(REPORTER)
        if reporter is None:
            return
        scores = HistogramMetricFamily(
            "parley_quality_score",
            "E-model MOS of each 5 s leg sample (1.0-4.5)",
            labels=["direction", "kind"],
        )
        for (direction, kind), counts in reporter.scores.counts.items():
            running, buckets = 0, []
            for bound, count in zip((*SCORE_BOUNDS, math.inf), counts, strict=True):
                running += count
                buckets.append(("+Inf" if bound == math.inf else repr(bound), running))
            scores.add_metric([direction, kind], buckets, reporter.scores.sums[(direction, kind)])
        yield scores
        participants = GaugeMetricFamily(
            "parley_participants_by_network_path",
            "Connected participants by network path",
            labels=["path"],
        )
        sessions = GaugeMetricFamily(
            "parley_sessions_by_network_path",
            "Live sessions with at least one participant on this network path",
            labels=["path"],
        )
        by_path = dict.fromkeys(PATHS, 0)
        per_session: dict[str, set[str]] = {p: set() for p in PATHS}
        for (sid, _), path in reporter.paths.items():
            by_path[path] = by_path.get(path, 0) + 1
            per_session.setdefault(path, set()).add(sid)
        for path, count in by_path.items():
            participants.add_metric([path], count)
            sessions.add_metric([path], len(per_session.get(path, ())))
        yield participants
        yield sessions


REPORTER = web.AppKey("reporter", Reporter)

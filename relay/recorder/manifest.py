"""Recording state on disk: one small JSON manifest per recording (and one per session), so a
restarted service, ``parley recording export`` or a future store can pick it up.

    <recordings dir>/<session id>/session.json          the session's recording state
    <recordings dir>/<session id>/<recording id>.json   one recording (participant + source)
    <recordings dir>/<session id>/<recording id>/*.journal   its packet journals until remuxed
    <recordings dir>/<session id>/<recording id>.webm|.mkv|.ogg   the playable file
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

COMPOSED_FILE = "composed.webm"
"""The composed file of a session (grid video, mixed audio), in its recordings folder."""
COMPOSED_STATE = "composed.json"

SESSION_FILE = "session.json"
SESSION_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
RECORDING_ID = re.compile(r"^r_[0-9a-f]{12}$")
STATES = ("recording", "finalizing", "ready", "failed")
FORMATS = ("webm", "mkv", "ogg")


def is_session_id(text: str) -> bool:
    return bool(SESSION_ID.match(text)) and text not in (".", "..")


def is_recording_id(text: str) -> bool:
    return bool(RECORDING_ID.match(text))


@dataclass
class RecordingManifest:
    recording_id: str
    session_id: str
    participant_id: str
    role: str
    name: str
    source: str
    """``camera`` (camera video and microphone) or ``screen``."""
    state: str = "recording"
    format: str = "webm"
    started_at: float | None = None
    stopped_at: float | None = None
    duration_s: float | None = None
    size_bytes: int = 0
    reason: str | None = None
    """Why the recording failed."""
    journals: list[str] = field(default_factory=list)
    """Journal paths relative to the session directory."""

    @property
    def file_name(self) -> str:
        return f"{self.recording_id}.{self.format}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RecordingManifest:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Atomically replace ``path`` (a crash leaves the old or the new file, never half)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "w", encoding="utf8") as f:
        json.dump(data, f, indent=1)
    os.replace(temporary, path)


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def load_recordings(session_dir: Path) -> list[RecordingManifest]:
    """Every readable recording manifest of one session directory, oldest first."""
    out = []
    try:
        paths = sorted(session_dir.glob("r_*.json"))
    except OSError:
        return []
    for path in paths:
        if not is_recording_id(path.stem):
            continue
        data = read_json(path)
        if data is not None:
            try:
                out.append(RecordingManifest.from_dict(data))
            except TypeError:
                continue
    out.sort(key=lambda m: (m.started_at or 0, m.recording_id))
    return out


def session_dirs(root: Path) -> list[Path]:
    try:
        return sorted(p for p in root.iterdir() if p.is_dir() and is_session_id(p.name))
    except OSError:
        return []

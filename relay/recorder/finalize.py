"""Turn a recording's journals into its playable file and mark the manifest ready (or failed).
Idempotent: a ready recording whose file exists is left alone. Runs in a worker process
(``python -m parley.relay.recorder finalize``) or in ``parley recording export``."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from .manifest import RecordingManifest, read_json, write_json
from .remux import Progress, RemuxError, load_tracks, output_format, write_file

logger = logging.getLogger(__name__)


def needs_finalizing(manifest: RecordingManifest, session_dir: Path) -> bool:
    if manifest.state == "ready":
        return not (session_dir / manifest.file_name).exists()
    return manifest.state in ("recording", "finalizing")


def finalize(manifest_path: Path, progress: Progress = lambda f: None) -> RecordingManifest:
    data = read_json(manifest_path)
    if data is None:
        raise RemuxError(f"{manifest_path.name} is not a readable recording manifest")
    manifest = RecordingManifest.from_dict(data)
    session_dir = manifest_path.parent
    if not needs_finalizing(manifest, session_dir):
        progress(1.0)
        return manifest
    journals = [session_dir / name for name in manifest.journals]
    journals = [
        p for p in journals if p.is_file() and p.resolve().is_relative_to(session_dir.resolve())
    ]
    try:
        if not journals:
            raise RemuxError("no media was recorded")
        tracks = load_tracks(journals)
        for old in session_dir.glob(f"{manifest.recording_id}.*"):
            if old.suffix in (".webm", ".mkv", ".ogg"):
                old.unlink()
        manifest.format = output_format(tracks)
        target = session_dir / manifest.file_name
        write_file(tracks, target, progress)
        manifest.state = "ready"
        manifest.reason = None
        manifest.duration_s = round(tracks.end - tracks.start, 3)
        manifest.size_bytes = target.stat().st_size
        manifest.started_at = tracks.start
        if manifest.stopped_at is None:
            manifest.stopped_at = tracks.end
    except (RemuxError, OSError, ValueError) as exc:
        manifest.state = "failed"
        manifest.reason = f"cannot make the file: {exc}"
        logger.warning("recording %s failed: %s", manifest.recording_id, exc)
    except Exception as exc:  # PyAV errors and the like: still a clear state, never a crash
        manifest.state = "failed"
        manifest.reason = f"cannot make the file: {exc}"
        logger.exception("recording %s failed", manifest.recording_id)
    write_json(manifest_path, manifest.to_dict())
    if manifest.state == "ready":
        shutil.rmtree(session_dir / manifest.recording_id, ignore_errors=True)
    return manifest

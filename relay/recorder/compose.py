"""The composed file of a session: every participant's recording side by side (a grid), the
audio mixed, on one timeline (each file placed by its start time). This decodes and encodes, so
it only ever runs in a worker process (``python -m parley.relay.recorder compose DIR``)."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy

from .manifest import COMPOSED_FILE, RecordingManifest, load_recordings
from .remux import Progress, RemuxError

TILE = (320, 240)
FPS = 15
RATE = 48000
BLOCK = 960


@dataclass
class Input:
    manifest: RecordingManifest
    path: Path
    offset: float
    """Seconds from the composed file's start to this file's start."""


def _video_frames(path: Path) -> Iterator[tuple[float, numpy.ndarray]]:
    import av

    with av.open(str(path)) as container:
        if not container.streams.video:
            return
        for frame in container.decode(video=0):
            if frame.time is None:
                continue
            tile = frame.reformat(width=TILE[0], height=TILE[1], format="rgb24").to_ndarray()
            yield float(frame.time), tile


def _audio_blocks(path: Path) -> Iterator[tuple[float, numpy.ndarray]]:
    """(start time, mono float32 samples at 48 kHz)."""
    import av

    with av.open(str(path)) as container:
        if not container.streams.audio:
            return
        resampler = av.AudioResampler(format="flt", layout="mono", rate=RATE)
        for frame in container.decode(audio=0):
            for out in resampler.resample(frame):
                if out.time is not None:
                    yield float(out.time), out.to_ndarray().reshape(-1)


class VideoCursor:
    def __init__(self, source: Input) -> None:
        self.offset = source.offset
        self.frames = _video_frames(source.path)
        self.current: numpy.ndarray | None = None
        self.pending: tuple[float, numpy.ndarray] | None = next(self.frames, None)

    def at(self, t: float) -> numpy.ndarray | None:
        """The latest frame shown at ``t`` (held until the next one)."""
        while self.pending is not None and self.pending[0] + self.offset <= t:
            self.current = self.pending[1]
            self.pending = next(self.frames, None)
        return self.current


class AudioCursor:
    def __init__(self, source: Input) -> None:
        self.offset = source.offset
        self.blocks = _audio_blocks(source.path)
        self.buffer = numpy.zeros(0, numpy.float32)
        self.start = 0
        """Sample index (on the composed timeline) of ``buffer[0]``."""
        self.done = False

    def take(self, first: int, count: int) -> numpy.ndarray:
        while not self.done and self.start + len(self.buffer) < first + count:
            block = next(self.blocks, None)
            if block is None:
                self.done = True
                break
            at = round((block[0] + self.offset) * RATE)
            end = self.start + len(self.buffer)
            if not len(self.buffer):
                self.start, end = at, at
            if at > end:  # a gap: silence
                self.buffer = numpy.concatenate([self.buffer, numpy.zeros(at - end, numpy.float32)])
            self.buffer = numpy.concatenate([self.buffer, block[1][max(0, end - at) :]])
        out = numpy.zeros(count, numpy.float32)
        lo, hi = max(first, self.start), min(first + count, self.start + len(self.buffer))
        if hi > lo:
            out[lo - first : hi - first] = self.buffer[lo - self.start : hi - self.start]
        drop = max(0, first + count - self.start)
        if drop:
            self.buffer = self.buffer[drop:]
            self.start += drop
        return out


def compose(session_dir: Path, progress: Progress = lambda f: None) -> dict[str, Any]:
    import av

    ready = [
        m
        for m in load_recordings(session_dir)
        if m.state == "ready" and m.started_at is not None and (session_dir / m.file_name).is_file()
    ]
    if not ready:
        raise RemuxError("the session has no ready recordings")
    start = min(m.started_at or 0.0 for m in ready)
    end = max((m.started_at or 0.0) + (m.duration_s or 0.0) for m in ready)
    inputs = [Input(m, session_dir / m.file_name, (m.started_at or 0.0) - start) for m in ready]
    videos = [VideoCursor(i) for i in inputs if i.manifest.format != "ogg"]
    audios = [AudioCursor(i) for i in inputs]
    columns = max(1, math.ceil(math.sqrt(len(videos))))
    rows = max(1, math.ceil(len(videos) / columns))
    width, height = columns * TILE[0], rows * TILE[1]
    target = session_dir / COMPOSED_FILE
    temporary = target.with_name(target.name + ".tmp")
    container: Any = av.open(str(temporary), "w", format="webm")
    try:
        video = container.add_stream("libvpx", rate=FPS)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.bit_rate = 600_000
        video.options = {"deadline": "realtime", "cpu-used": "8"}
        audio = container.add_stream("libopus", rate=RATE, layout="mono")
        total = end - start
        frames = math.ceil(total * FPS)
        sample = 0
        canvas = numpy.zeros((height, width, 3), numpy.uint8)
        for index in range(frames):
            t = index / FPS
            canvas[:] = 24
            for n, cursor in enumerate(videos):
                tile = cursor.at(t)
                if tile is not None:
                    y, x = (n // columns) * TILE[1], (n % columns) * TILE[0]
                    canvas[y : y + TILE[1], x : x + TILE[0]] = tile
            frame = av.VideoFrame.from_ndarray(canvas, format="rgb24")
            frame.pts, frame.time_base = index, Fraction(1, FPS)
            container.mux(video.encode(frame.reformat(format="yuv420p")))
            while sample < (index + 1) * RATE / FPS:
                mixed = sum(
                    (c.take(sample, BLOCK) for c in audios), numpy.zeros(BLOCK, numpy.float32)
                )
                block = av.AudioFrame.from_ndarray(
                    numpy.clip(mixed, -1, 1).astype(numpy.float32).reshape(1, -1),
                    format="flt",
                    layout="mono",
                )
                block.sample_rate, block.pts, block.time_base = RATE, sample, Fraction(1, RATE)
                container.mux(audio.encode(block))
                sample += BLOCK
            if index % FPS == 0:
                progress(index / max(frames, 1))
        container.mux(video.encode(None))
        container.mux(audio.encode(None))
        container.close()
    except BaseException:
        container.close()
        temporary.unlink(missing_ok=True)
        raise
    os.replace(temporary, target)
    progress(1.0)
    return {
        "state": "ready",
        "duration_s": round(total, 3),
        "size_bytes": target.stat().st_size,
        "participants": len({m.participant_id for m in ready}),
    }

"""Journals -> one playable file, without transcoding (runs in its own process, never on the
relay's event loop): WebM for VP8 + Opus, Matroska for H.264 + Opus, Ogg for Opus alone.

- Packets are de-duplicated (retransmissions are journaled like any packet) and ordered by their
  unwrapped sequence number; video RTP is depacketized into frames (RFC 7741 VP8, RFC 6184 H.264);
  a frame with a missing packet is dropped together with everything up to the next keyframe, and
  every segment starts on a keyframe.
- Timeline: each track's RTP clock is mapped to the publisher's wall clock by its RTCP sender
  report (NTP <-> RTP), and the publisher's clock onto ours by the least-delayed packet (one offset
  for all its tracks), so audio and video stay in sync whatever their arrival order. Tracks
  without a sender report fall back to arrival times.
- Gaps (late start, leave and rejoin, mute, a second screen share) become Opus silence and a held
  video frame, so the file plays from start to end.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

from .journal import JournalContents, JournalError, read_journal

logger = logging.getLogger(__name__)

NTP_EPOCH_OFFSET = 2208988800
OPUS_SILENCE = b"\xf8\xff\xfe"
"""A 20 ms Opus frame of silence (CELT fullband, as Janus' post-processor writes)."""
AUDIO_FRAME = 0.02
VIDEO_RATE = 90000
AUDIO_RATE = 48000
VIDEO_TIMING_RATE = 120
"""The video stream's nominal rate (Matroska DefaultDuration): finer than any real frame rate."""
MIN_FRAME_SPACING = 0.010
"""Two video frames are at least this far apart (more than one 1/120 s slot after the
millisecond rounding of Matroska)."""
HELD_FRAME_AFTER = 0.05
"""Video that starts this much after the file: its first keyframe is also shown from 0."""
RESYNC_GAP = 0.3
"""Seconds the arrival of a frame may lag its RTP time beyond the best so far before the RTP
clock counts as paused (a new run, re-anchored by its own sender report)."""
SENDER_REPORT_WINDOW = 10.0
"""Seconds of a run's first sender reports among which the best mapping is chosen (longer
would let the sender's RTP clock drift against its wall clock into the choice)."""
MAX_CLOCK_DISAGREEMENT = 0.5
"""Seconds two tracks of one publisher may disagree on its clock before one is not trusted."""
MAX_AUDIO_PUSH = 0.01
"""Seconds an audio frame may be played after its own time to keep the timeline gapless: half a
frame. A push lasts until the next gap (every frame after it follows on), so more is left out
rather than pushed: where two runs meet, a lag of 40 ms kept the rest of the file 40 ms late."""
ANNEX_B = b"\x00\x00\x00\x01"

Progress = Callable[[float], None]


class RemuxError(RuntimeError):
    """Nothing playable in the journals (or the container refused the streams)."""


@dataclass
class Frame:
    time: float
    """Seconds on the wall clock of the relay."""
    data: bytes
    keyframe: bool = True
    duration: float = 0.0


@dataclass
class Segment:
    """One journal: one producer's packets, ordered and de-duplicated."""

    kind: str
    mime: str
    clock_rate: int
    packets: list[tuple[int, int, int, bytes, int]] = field(default_factory=list)
    """``(extended seq, extended ts, marker, payload, arrival µs)`` ordered by sequence."""
    filler: frozenset[int] = frozenset()
    """Extended sequence numbers of the journal's payload-less (padding) packets: not a loss."""
    sr_ntp: float | None = None
    sr_rtp: int | None = None
    """The run's sender report (the best of its first ones, see :func:`build_segments`):
    publisher wall clock (s) at extended RTP time ``sr_rtp``."""

    def sender_time(self, ext_ts: int) -> float:
        if self.sr_ntp is not None and self.sr_rtp is not None:
            return self.sr_ntp + (ext_ts - self.sr_rtp) / self.clock_rate
        return ext_ts / self.clock_rate

    def min_delay(self) -> float:
        """The smallest arrival - sender time (network delay plus clock offset)."""
        return min(p[4] / 1e6 - self.sender_time(p[1]) for p in self.packets)


def _signed(diff: int, bits: int) -> int:
    half = 1 << (bits - 1)
    return (diff + half) % (1 << bits) - half


def ntp_seconds(ntp: int) -> float:
    return (ntp >> 32) - NTP_EPOCH_OFFSET + (ntp & 0xFFFFFFFF) / 2**32


def build_segments(contents: JournalContents) -> list[Segment]:
    """One journal's packets, de-duplicated and ordered, cut into runs wherever the publisher's
    RTP clock stopped following the wall clock (a pause with continuous timestamps); each run
    gets the first sender report that belongs to it."""
    header = contents.header
    kind = str(header.get("kind", ""))
    clock_rate = int(header.get("clock_rate") or (AUDIO_RATE if kind == "audio" else VIDEO_RATE))
    mime = str(header.get("mime", "")).lower()
    if not contents.packets:
        return []
    by_seq: dict[int, Any] = {}
    filler: set[int] = set()
    last_seq = contents.packets[0].seq
    ext_seq = last_seq
    for packet in contents.packets:
        ext_seq += _signed(packet.seq - last_seq, 16)
        last_seq = packet.seq
        if not packet.payload:
            filler.add(ext_seq)  # padding (bandwidth probes): its number is used, not lost
        elif ext_seq not in by_seq:
            by_seq[ext_seq] = packet  # a retransmitted duplicate is never written twice
    if not by_seq:
        return []
    ordered = sorted(by_seq.items())
    first_ts = ordered[0][1].ts
    ext_ts = first_ts
    last_ts = first_ts
    packets = []
    for seq, packet in ordered:
        ext_ts += _signed(packet.ts - last_ts, 32)
        last_ts = packet.ts
        packets.append((seq, ext_ts, packet.marker, packet.payload, packet.arrival_us))
    runs = _runs(packets, clock_rate)
    # a sender report before the first packet was sent carries NTP 0 (aiortc): unusable; one
    # sent during a pause repeats the last packet's clocks and arrives late for them: stale
    reports = [r for r in contents.sender_reports if r[1] >> 32]
    if reports:
        best = min(r[0] / 1e6 - ntp_seconds(r[1]) for r in reports)
        reports = [r for r in reports if r[0] / 1e6 - ntp_seconds(r[1]) - best <= RESYNC_GAP]
    segments = []
    frozen_filler = frozenset(filler)
    for number, run in enumerate(runs):
        segment = Segment(
            kind=kind, mime=mime, clock_rate=clock_rate, packets=run, filler=frozen_filler
        )
        first_arrival = -1 if number == 0 else min(p[4] for p in run)
        last_arrival = max(p[4] for p in run)
        own = [r for r in reports if first_arrival <= r[0] <= last_arrival]
        # the report whose RTP time maps earliest: a sender that stamps a report with its last
        # packet's RTP time and that packet's send time (aiortc) is late by however long the
        # packet waited to be sent, and that wait varies from report to report (a loaded
        # publisher: 100 ms and more); a sender that extrapolates (libwebrtc) agrees with itself
        mappings = []
        for arrival, ntp, rtp in own:
            if arrival - own[0][0] > SENDER_REPORT_WINDOW * 1e6:
                break
            rtp_ext = run[0][1] + _signed(rtp - run[0][1], 32)
            mappings.append((ntp_seconds(ntp) - rtp_ext / clock_rate, ntp_seconds(ntp), rtp_ext))
        if mappings:
            _, segment.sr_ntp, segment.sr_rtp = min(mappings)
        segments.append(segment)
    return segments


def _runs(
    packets: list[tuple[int, int, int, bytes, int]], clock_rate: int
) -> list[list[tuple[int, int, int, bytes, int]]]:
    """Cut where (arrival - RTP time) of a frame's first packet jumps up by more than
    :data:`RESYNC_GAP`: the publisher's RTP clock paused while its timestamps ran on. A run whose
    lag comes back down to within :data:`RESYNC_GAP` of the run before it was a late delivery
    (the publisher or the network stalled, then caught up), not a pause: it joins that run."""
    runs: list[list[tuple[int, int, int, bytes, int]]] = [[]]
    floors: list[float] = []
    index = 0
    while index < len(packets):
        end = index
        while end < len(packets) and packets[end][1] == packets[index][1]:
            end += 1
        group = packets[index:end]
        lag = min(p[4] for p in group) / 1e6 - group[0][1] / clock_rate
        if not floors:
            floors.append(lag)
        elif lag - floors[-1] > RESYNC_GAP:
            _join_if_caught_up(runs, floors)
            if lag - floors[-1] > RESYNC_GAP:
                runs.append([])
                floors.append(lag)
        floors[-1] = min(floors[-1], lag)
        runs[-1].extend(group)
        index = end
    _join_if_caught_up(runs, floors)
    return runs


def _join_if_caught_up(runs: list[list[Any]], floors: list[float]) -> None:
    """The last run joins the one before when its lag came back down (a late delivery)."""
    if len(runs) > 1 and floors[-1] - floors[-2] <= RESYNC_GAP:
        runs[-2].extend(runs.pop())
        caught_up = floors.pop()
        floors[-1] = min(floors[-1], caught_up)


# --- depacketizers --------------------------------------------------------------------------


def vp8_depacketize(payload: bytes) -> tuple[bytes, bool]:
    """The VP8 data of one RTP payload and whether it starts a frame (RFC 7741 §4.2)."""
    first = payload[0]
    pos = 1
    if first & 0x80:
        ext = payload[1]
        pos = 2
        if ext & 0x80:
            pos += 2 if payload[pos] & 0x80 else 1
        if ext & 0x40:
            pos += 1
        if ext & 0x30:
            pos += 1
    return payload[pos:], bool(first & 0x10) and not first & 0x07


def vp8_size(frame: bytes) -> tuple[int, int] | None:
    """Width and height from a VP8 key frame header (RFC 6386 §9.1)."""
    if len(frame) < 10 or frame[0] & 0x01 or frame[3:6] != b"\x9d\x01\x2a":
        return None
    return (frame[6] | frame[7] << 8) & 0x3FFF, (frame[8] | frame[9] << 8) & 0x3FFF


def h264_depacketize(payload: bytes) -> tuple[bytes, bool, bool]:
    """Annex B bytes of one RTP payload, whether it starts a NAL unit, and whether it carries
    an IDR slice (RFC 6184 §5.6-5.8: single NAL, STAP-A, FU-A)."""
    nal_type = payload[0] & 0x1F
    if 1 <= nal_type <= 23:
        return ANNEX_B + payload, True, nal_type == 5
    if nal_type == 24:
        parts = []
        idr = False
        pos = 1
        while pos + 2 <= len(payload):
            size = (payload[pos] << 8) | payload[pos + 1]
            nal = payload[pos + 2 : pos + 2 + size]
            if not nal:
                break
            idr = idr or nal[0] & 0x1F == 5
            parts.append(ANNEX_B + nal)
            pos += 2 + size
        return b"".join(parts), True, idr
    if nal_type == 28 and len(payload) > 2:
        indicator, fu = payload[0], payload[1]
        if fu & 0x80:
            return (
                ANNEX_B + bytes([(indicator & 0xE0) | (fu & 0x1F)]) + payload[2:],
                True,
                fu & 0x1F == 5,
            )
        return payload[2:], False, False
    return b"", False, False


def opus_duration(payload: bytes) -> float:
    """Seconds of audio in one Opus packet (RFC 6716 §3.1, the TOC byte)."""
    toc = payload[0]
    config = toc >> 3
    if config < 12:
        frame = (0.01, 0.02, 0.04, 0.06)[config % 4]
    elif config < 16:
        frame = (0.01, 0.02)[config % 2]
    else:
        frame = (0.0025, 0.005, 0.01, 0.02)[config % 4]
    code = toc & 0x03
    count = (
        1 if code == 0 else 2 if code in (1, 2) else (payload[1] & 0x3F if len(payload) > 1 else 1)
    )
    return frame * max(count, 1)


# --- frames -----------------------------------------------------------------------------------


def audio_frames(segment: Segment, offset: float) -> list[Frame]:
    return [
        Frame(segment.sender_time(ts) + offset, payload, True, opus_duration(payload))
        for _, ts, _, payload, _ in segment.packets
    ]


def video_frames(runs: list[tuple[Segment, float]]) -> list[Frame]:
    """Complete frames of one journal's runs (each with its clock offset); after an incomplete
    frame, or a frame lost whole (a gap in the sequence numbers between two frames that
    padding does not explain), nothing until the next keyframe; the journal starts on a
    keyframe."""
    groups: list[tuple[list[tuple[int, int, int, bytes, int]], Segment, float]] = []
    for segment, offset in runs:
        for packet in segment.packets:
            if groups and groups[-1][0][0][1] == packet[1] and groups[-1][1] is segment:
                groups[-1][0].append(packet)
            else:
                groups.append(([packet], segment, offset))
    frames: list[Frame] = []
    need_keyframe = True
    previous_last: int | None = None
    for index, (group, segment, offset) in enumerate(groups):
        h264 = segment.mime == "video/h264"
        first_seq, last = group[0][0], group[-1]
        if previous_last is not None and not all(
            seq in segment.filler for seq in range(previous_last + 1, first_seq)
        ):
            need_keyframe = True  # a whole frame (or more) is missing before this one
        previous_last = last[0]
        complete = last[0] - first_seq + 1 == len(group) and (
            bool(last[2]) or (index + 1 < len(groups) and groups[index + 1][0][0][0] == last[0] + 1)
        )
        data = b""
        keyframe = False
        if complete:
            parts = []
            for position, (_, _, _, payload, _) in enumerate(group):
                if h264:
                    part, start, idr = h264_depacketize(payload)
                    keyframe = keyframe or idr
                else:
                    part, start = vp8_depacketize(payload)
                    if position == 0:
                        complete = start
                parts.append(part)
            data = b"".join(parts)
            if h264:
                complete = complete and h264_depacketize(group[0][3])[1]
            else:
                keyframe = bool(data) and not data[0] & 0x01
        if not complete or not data:
            need_keyframe = True
            continue
        if need_keyframe and not keyframe:
            continue
        need_keyframe = False
        frames.append(Frame(segment.sender_time(group[0][1]) + offset, data, keyframe))
    return frames


def _place_audio(frames: list[Frame], start: float) -> list[Frame]:
    """Audio on one continuous timeline from ``start``: silence where nothing was sent. Frames
    never overlap: one that starts before the end of the timeline so far is played right after
    it, or, when that would put it more than :data:`MAX_AUDIO_PUSH` late (two runs of one
    track, or two tracks, that claim the same time), left out, so that audio stays in sync."""
    out: list[Frame] = []
    end = start
    for frame in frames:
        if frame.time < end - MAX_AUDIO_PUSH:
            continue
        missing = max(0, int((frame.time - end) / AUDIO_FRAME))
        for i in range(missing):
            out.append(Frame(end + i * AUDIO_FRAME, OPUS_SILENCE, True, AUDIO_FRAME))
        end += missing * AUDIO_FRAME
        time = max(frame.time, end)
        out.append(Frame(time, frame.data, True, frame.duration))
        end = time + frame.duration
    return out


def _place_video(frames: list[Frame], start: float) -> list[Frame]:
    """Strictly increasing times; the first keyframe held from ``start`` when video is late."""
    out: list[Frame] = []
    last = -1.0
    for frame in frames:
        time = max(frame.time, last + MIN_FRAME_SPACING)
        out.append(Frame(time, frame.data, frame.keyframe))
        last = time
    if out and out[0].time - start > HELD_FRAME_AFTER:
        out.insert(0, Frame(start, out[0].data, True))
    return out


@dataclass
class Tracks:
    audio: list[Frame]
    video: list[Frame]
    video_mime: str | None
    start: float
    """Wall-clock start of the file (seconds)."""

    @property
    def end(self) -> float:
        ends = [f.time + f.duration for f in self.audio[-1:]] + [f.time for f in self.video[-1:]]
        return max(ends, default=self.start)


def load_tracks(journals: Iterable[Path]) -> Tracks:
    """Read, order and place every segment of one recording."""
    journals_runs: list[list[Segment]] = []
    for path in journals:
        try:
            runs = build_segments(read_journal(path))
        except (OSError, JournalError) as exc:
            logger.warning("skipping %s: %s", path.name, exc)
            continue
        if runs and runs[0].kind in ("audio", "video"):
            journals_runs.append(runs)
    every = [run for runs in journals_runs for run in runs]
    with_sr = [s.min_delay() for s in every if s.sr_ntp is not None]
    shared = min(with_sr) if with_sr else None
    video_mime = next((s.mime for s in every if s.kind == "video"), None)

    def offset_of(segment: Segment) -> float:
        offset = segment.min_delay()
        if shared is not None and segment.sr_ntp is not None:
            if abs(offset - shared) <= MAX_CLOCK_DISAGREEMENT:
                return shared
            # a sender report from another clock: trust arrival times instead
            segment.sr_ntp = segment.sr_rtp = None
            offset = segment.min_delay()
        return offset

    audio: list[Frame] = []
    video: list[Frame] = []
    for runs in journals_runs:
        first = runs[0]
        if first.kind == "audio":
            if first.mime == "audio/opus":
                for run in runs:
                    audio.extend(audio_frames(run, offset_of(run)))
        elif first.mime == video_mime and first.mime in ("video/vp8", "video/h264"):
            video.extend(video_frames([(run, offset_of(run)) for run in runs]))
    audio.sort(key=lambda f: f.time)
    video.sort(key=lambda f: f.time)
    firsts = [f[0].time for f in (audio, video) if f]
    if not firsts:
        raise RemuxError("the recording has no playable media")
    start = min(firsts)
    return Tracks(
        audio=_place_audio(audio, start) if audio else [],
        video=_place_video(video, start),
        video_mime=video_mime if video else None,
        start=start,
    )


def output_format(tracks: Tracks) -> str:
    if tracks.video_mime == "video/h264":
        return "mkv"
    if tracks.video:
        return "webm"
    return "ogg"


CONTAINERS = {"webm": "webm", "mkv": "matroska", "ogg": "ogg"}


def _video_size(tracks: Tracks) -> tuple[int, int]:
    if tracks.video_mime == "video/vp8":
        for frame in tracks.video:
            size = vp8_size(frame.data)
            if size:
                return size
        return 640, 480
    import av

    decoder = av.CodecContext.create("h264", "r")
    for frame in tracks.video[:30]:
        try:
            pictures = list(decoder.decode(av.Packet(frame.data)))
        except av.FFmpegError:
            continue
        if pictures:
            return pictures[0].width, pictures[0].height
    return 640, 480


def write_file(tracks: Tracks, target: Path, progress: Progress = lambda f: None) -> str:
    """Mux ``tracks`` into ``target`` (written as ``target.tmp``, renamed when complete);
    returns the format name."""
    import av

    fmt = output_format(tracks)
    temporary = target.with_name(target.name + ".tmp")
    container: Any = av.open(str(temporary), "w", format=CONTAINERS[fmt])
    try:
        audio_stream: Any = None
        video_stream: Any = None
        if tracks.video:
            width, height = _video_size(tracks)
            codec = "vp8" if tracks.video_mime == "video/vp8" else "h264"
            # the nominal rate is the timing resolution, not a frame rate: frames keep their own
            # (variable) times, and players/ffmpeg do not round two of them onto one slot
            video_stream = container.add_mux_stream(
                codec, rate=VIDEO_TIMING_RATE, width=width, height=height
            )
        if tracks.audio:
            # an encoder stream only for its OpusHead (add_mux_stream cannot set extradata);
            # nothing is encoded: the journaled packets are muxed as they are
            audio_stream = container.add_stream("libopus", rate=AUDIO_RATE, layout="stereo")
        video_tb = Fraction(1, VIDEO_RATE)
        audio_tb = Fraction(1, AUDIO_RATE)
        events = [(f.time, 1, f) for f in tracks.video] + [(f.time, 0, f) for f in tracks.audio]
        events.sort(key=lambda e: (e[0], e[1]))
        total = len(events)
        last_pts = {0: -1, 1: -1}
        for index, (time, is_video, frame) in enumerate(events):
            packet = av.Packet(frame.data)
            if is_video:
                packet.stream = video_stream
                packet.time_base = video_tb
                pts = round((time - tracks.start) * VIDEO_RATE)
                packet.is_keyframe = frame.keyframe
            else:
                packet.stream = audio_stream
                packet.time_base = audio_tb
                pts = round((time - tracks.start) * AUDIO_RATE)
                packet.duration = round(frame.duration * AUDIO_RATE)
            pts = max(pts, last_pts[is_video] + 1)
            last_pts[is_video] = pts
            packet.pts = packet.dts = pts
            container.mux(packet)
            if index % 500 == 0:
                progress(index / max(total, 1))
        container.close()
    except BaseException:
        container.close()
        temporary.unlink(missing_ok=True)
        raise
    os.replace(temporary, target)
    progress(1.0)
    return fmt

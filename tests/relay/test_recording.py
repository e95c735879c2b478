"""Recording through a real Router with real aiortc publishers: the files play (ffmpeg decodes
them without an error), last as long as the recording, hold every frame that was sent, and keep
audio and video in sync (a flash frame and a beep sent at the same instants)."""

from __future__ import annotations

import asyncio
import fractions
import json
import math
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy
import pytest
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError
from av import AudioFrame, VideoFrame

from parley.relay.recorder import SessionRecorder
from parley.relay.recorder.journal import JournalContents, JournalPacket
from parley.relay.recorder.remux import (
    AUDIO_FRAME,
    MAX_AUDIO_PUSH,
    NTP_EPOCH_OFFSET,
    OPUS_SILENCE,
    Frame,
    Segment,
    Tracks,
    _place_audio,
    build_segments,
    h264_depacketize,
    opus_duration,
    video_frames,
    vp8_depacketize,
    vp8_size,
    write_file,
)
from tests.media_client import MediaClient, PatternVideoTrack, wait_for
from tests.relay.harness import RouterParticipant, session

pytestmark = pytest.mark.skipif(shutil.which("ffprobe") is None, reason="needs ffmpeg/ffprobe")

FLASH_PERIOD = 1.0
BEEP_LENGTH = 0.1
SYNC_TOLERANCE = 0.08


# --- test publishers: a white flash and a beep at the same instants --------------------------


class FlashVideoTrack(MediaStreamTrack):
    """Dark moving video at 30 fps; every FLASH_PERIOD from ``epoch`` one white frame."""

    kind = "video"

    def __init__(self, epoch: float, fps: int = 30) -> None:
        super().__init__()
        self.epoch, self.fps, self.count = epoch, fps, 0
        self._base = (numpy.indices((240, 320)).sum(axis=0) % 64).astype(numpy.uint8)

    async def recv(self) -> VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self.count == 0:  # a late start joins the epoch's frame grid, no burst
            self.count = max(0, math.ceil((time.monotonic() - self.epoch) * self.fps))
        target = self.epoch + self.count / self.fps
        delay = target - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        if self.count % round(FLASH_PERIOD * self.fps) == 0:
            gray = numpy.full((240, 320), 255, numpy.uint8)
        else:
            gray = numpy.roll(self._base, self.count, axis=1)
        frame = VideoFrame.from_ndarray(numpy.dstack([gray, gray, gray]), format="rgb24")
        frame.pts = self.count * (90000 // self.fps)
        frame.time_base = fractions.Fraction(1, 90000)
        self.count += 1
        return frame


class BeepAudioTrack(MediaStreamTrack):
    """Silence with a 1 kHz beep of BEEP_LENGTH every FLASH_PERIOD from ``epoch``; the first
    frame is sent at ``epoch + start_after``."""

    kind = "audio"

    def __init__(self, epoch: float, start_after: float = 0.0) -> None:
        super().__init__()
        self.epoch = epoch
        self.first = round(start_after / 0.02)
        self.count = 0
        self.muted_until = 0.0
        """Send nothing until then; the RTP timestamps then go on where they stopped, as
        aiortc's do (the relay sees a pause of the RTP clock)."""

    async def recv(self) -> AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self.count == 0:
            self.first = max(self.first, math.ceil((time.monotonic() - self.epoch) / 0.02))
        if time.monotonic() < self.muted_until:
            await asyncio.sleep(self.muted_until - time.monotonic())
            self.first = math.ceil((time.monotonic() - self.epoch) / 0.02) - self.count
        index = self.first + self.count
        delay = self.epoch + index * 0.02 - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        t = index * 0.02 + numpy.arange(960) / 48000
        beep = (t % FLASH_PERIOD) < BEEP_LENGTH
        samples = (numpy.sin(2 * numpy.pi * 1000 * t) * 12000 * beep).astype(numpy.int16)
        frame = AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = 48000
        frame.pts = self.count * 960
        frame.time_base = fractions.Fraction(1, 48000)
        self.count += 1
        return frame


# --- checking files ----------------------------------------------------------------------------


def probe(path: Path) -> dict[str, Any]:
    out = subprocess.run(
        [
            "ffprobe",
            "-v",
            "error",
            "-count_frames",
            "-show_format",
            "-show_streams",
            "-of",
            "json",
            str(path),
        ],
        capture_output=True,
        check=True,
        timeout=60,
    )
    return dict(json.loads(out.stdout))


def decode_errors(path: Path) -> str:
    out = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(path), "-f", "null", "-"],
        capture_output=True,
        timeout=60,
    )
    return out.stderr.decode() + ("" if out.returncode == 0 else f" (exit {out.returncode})")


def streams(info: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [s for s in info["streams"] if s["codec_type"] == kind]


def flash_times(path: Path) -> list[float]:
    import av

    times = []
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            if frame.to_ndarray(format="gray").mean() > 150:
                times.append(float(frame.time))
    # one flash may span a held duplicate: keep onsets only
    return [t for i, t in enumerate(times) if i == 0 or t - times[i - 1] > 0.5]


EDGE = 0.15
"""Seconds at the start of the audio where a beep may be cut (recording began mid-beep)."""


def beep_times(path: Path) -> list[float]:
    return beeps_and_start(path)[0]


def beeps_and_start(path: Path) -> tuple[list[float], float]:
    """Beep onsets after the first EDGE seconds of audio, and when the audio starts."""
    import av

    onsets: list[float] = []
    quiet_since = -1.0
    first: float | None = None
    with av.open(str(path)) as container:
        resampler = av.AudioResampler(format="s16", layout="mono", rate=48000)
        for frame in container.decode(audio=0):
            for out in resampler.resample(frame):
                samples = out.to_ndarray().reshape(-1).astype(numpy.float64)
                start = float(out.time)
                first = start if first is None else first
                for i in range(0, len(samples) - 239, 240):  # 5 ms windows
                    loud = numpy.sqrt(numpy.mean(samples[i : i + 240] ** 2)) > 2000
                    t = start + i / 48000
                    if loud and t - quiet_since > 0.5 and t - first >= EDGE:
                        onsets.append(t)
                    if loud:
                        quiet_since = t
    return onsets, first or 0.0


def assert_in_sync(path: Path, expected_flashes: int, audio_from: float = 0.0) -> None:
    """Every flash after the audio began has its beep within SYNC_TOLERANCE."""
    beeps, audio_start = beeps_and_start(path)
    flashes = flash_times(path)
    assert beeps, flashes
    for beep in beeps:
        nearest = min(flashes, key=lambda f: abs(f - beep))
        assert abs(nearest - beep) <= SYNC_TOLERANCE, (beep, nearest, flashes, beeps)
    if expected_flashes == 0:
        return
    # a flash whose beep may fall inside the first EDGE seconds (not counted as an onset) is not
    # expected to be heard: its beep starts at most SYNC_TOLERANCE from it
    heard = [
        f
        for f in flashes
        if f >= max(audio_from - SYNC_TOLERANCE, audio_start + EDGE + SYNC_TOLERANCE)
    ]
    assert len(heard) >= expected_flashes, (flashes, beeps)
    for flash in heard:
        nearest = min(beeps, key=lambda b: abs(b - flash))
        assert abs(nearest - flash) <= SYNC_TOLERANCE, (flash, nearest, flashes, beeps)


def assert_playable(path: Path, *, video: bool = True, audio: bool = True) -> dict[str, Any]:
    info = probe(path)
    assert bool(streams(info, "video")) == video, info["streams"]
    assert bool(streams(info, "audio")) == audio, info["streams"]
    assert decode_errors(path) == ""
    return info


# --- helpers --------------------------------------------------------------------------------------


def recorder_for(router: Any, directory: Path) -> SessionRecorder:
    roles = {"ann": "agent"}
    return SessionRecorder(router, directory, lambda pid: (roles.get(pid, "customer"), pid))


async def record_for(
    recorder: SessionRecorder, seconds: float, at_stop: Callable[[], None] = lambda: None
) -> float:
    """Record for ``seconds`` (the length of the scenario, not a timing assertion)."""
    start = time.monotonic()
    recorder.start()
    await asyncio.sleep(seconds)
    await recorder.stop()
    at_stop()
    elapsed = time.monotonic() - start
    await asyncio.wait_for(recorder.wait(), 60)
    return elapsed


def ready_files(recorder: SessionRecorder) -> dict[tuple[str, str], Path]:
    out = {}
    for recording in recorder.recordings.values():
        m = recording.manifest
        assert m.state == "ready", (m.recording_id, m.state, m.reason)
        out[(m.participant_id, m.source)] = recorder.directory / m.file_name
    return out


async def flowing(viewer: RouterParticipant, publisher: str, kind: str = "video") -> None:
    assert await wait_for(lambda: viewer.client.frames_from(publisher, kind) >= 5, timeout=20)


# --- tests ----------------------------------------------------------------------------------------


async def test_ten_second_two_party_recording_plays_with_every_frame(tmp_path: Path) -> None:
    async with session("ann", "bob") as (router, p):
        ann, bob = p["ann"], p["bob"]
        await ann.publish()
        await bob.publish()
        await flowing(bob, "ann")
        await flowing(ann, "bob")
        recorder = recorder_for(router, tmp_path)
        tracks = {
            name: next(t for t in p[name].client.tracks if isinstance(t, PatternVideoTrack))
            for name in ("ann", "bob")
        }
        before = {name: t._count for name, t in tracks.items()}
        sent: dict[str, int] = {}

        def count_sent() -> None:
            sent.update({name: t._count - before[name] for name, t in tracks.items()})

        elapsed = await record_for(recorder, 10.0, count_sent)
        files = ready_files(recorder)
        assert set(files) == {("ann", "camera"), ("bob", "camera")}
        for (name, _), path in files.items():
            assert path.suffix == ".webm"
            info = assert_playable(path)
            duration = float(info["format"]["duration"])
            assert abs(duration - elapsed) <= 0.02 * elapsed, (duration, elapsed)
            frames = int(streams(info, "video")[0]["nb_read_frames"])
            assert abs(frames - sent[name]) <= 0.02 * sent[name], (frames, sent[name])
        listing = [r.to_json() for r in recorder.recordings.values()]
        assert {r["role"] for r in listing} == {"agent", "customer"}
        assert all(r["size_bytes"] > 10000 and r["format"] == "webm" for r in listing)


@pytest.mark.parametrize("audio_delay", [0.0, 2.0])
async def test_flash_and_beep_stay_within_80_ms(tmp_path: Path, audio_delay: float) -> None:
    async with session("ann", "bob") as (router, p):
        ann, bob = p["ann"], p["bob"]
        bob.client.tracks.clear()
        epoch = time.monotonic() + 0.5
        ann.client.tracks[:] = [BeepAudioTrack(epoch, audio_delay), FlashVideoTrack(epoch)]
        recorder = recorder_for(router, tmp_path)
        recorder.start()  # before the first packet: recording starts as media arrives
        await ann.publish()
        await flowing(bob, "ann")
        await asyncio.sleep(audio_delay + 3.5)
        await recorder.stop()
        await asyncio.wait_for(recorder.wait(), 60)
        path = ready_files(recorder)[("ann", "camera")]
        assert_playable(path)
        # the file starts with the video; the audio starts audio_delay later, in sync
        assert_in_sync(path, expected_flashes=3, audio_from=audio_delay)
        if audio_delay:  # silence until then, the first beep where it was sent
            assert beep_times(path)[0] == pytest.approx(audio_delay, abs=SYNC_TOLERANCE)


def flash_publisher(client: MediaClient, epoch: float) -> None:
    client.tracks[:] = [BeepAudioTrack(epoch), FlashVideoTrack(epoch)]


async def test_late_joiner_and_rejoin_give_one_in_sync_file_each(tmp_path: Path) -> None:
    async with session("bob") as (router, p):
        bob = p["bob"]
        epoch = time.monotonic()
        flash_publisher(bob.client, epoch)
        recorder = recorder_for(router, tmp_path)
        recorder.start()
        await bob.publish()
        await asyncio.sleep(1.5)
        # ann joins late, publishes, leaves and comes back with a new connection
        ann = p["ann"] = RouterParticipant(router, MediaClient("ann"))
        flash_publisher(ann.client, epoch)
        await ann.publish()
        await flowing(bob, "ann")
        await asyncio.sleep(2.0)
        await ann.close()
        await asyncio.sleep(1.5)
        ann = p["ann"] = RouterParticipant(router, MediaClient("ann"))
        flash_publisher(ann.client, epoch)
        await ann.publish()
        await flowing(bob, "ann")
        await asyncio.sleep(2.5)
        await recorder.stop()
        await asyncio.wait_for(recorder.wait(), 60)
        files = ready_files(recorder)
        assert set(files) == {("ann", "camera"), ("bob", "camera")}
        by_id = {r.manifest.participant_id: r.manifest for r in recorder.recordings.values()}
        assert by_id["ann"].started_at > by_id["bob"].started_at + 1.0
        assert len(by_id["ann"].journals) == 4  # two segments of audio and video
        for path in files.values():
            assert_playable(path)
            assert_in_sync(path, expected_flashes=3)
        # the gap while ann was away is in her file (silence and a held frame)
        ann_info = probe(files[("ann", "camera")])
        assert float(ann_info["format"]["duration"]) > 5.5


async def test_screen_shared_twice_is_one_file_and_the_camera_file_is_unharmed(
    tmp_path: Path,
) -> None:
    async with session("ann", "bob") as (router, p):
        ann, bob = p["ann"], p["bob"]
        bob.client.tracks.clear()
        flash_publisher(ann.client, time.monotonic())
        recorder = recorder_for(router, tmp_path)
        recorder.start()
        await ann.publish()
        await flowing(bob, "ann")
        microphone = ann.client.tracks[0]
        assert isinstance(microphone, BeepAudioTrack)
        for share in range(2):
            if share == 1:  # and a mute between the shares
                microphone.muted_until = time.monotonic() + 1.2
            screen = PatternVideoTrack(640, 360, fps=15)
            ann.client.add_track(screen, "screen")
            await ann.publish()
            assert await wait_for(lambda: len(bob.client.offered_tracks) == 3, timeout=10)
            await asyncio.sleep(1.5)
            ann.client.remove_track(screen)
            await ann.publish()
            await asyncio.sleep(1.0)
        await recorder.stop()
        await asyncio.wait_for(recorder.wait(), 60)
        files = ready_files(recorder)
        assert set(files) == {("ann", "camera"), ("ann", "screen")}
        screen_info = assert_playable(files[("ann", "screen")], audio=False)
        assert streams(screen_info, "video")[0]["width"] == 640
        assert float(screen_info["format"]["duration"]) > 3.0  # both shares and the gap
        camera = files[("ann", "camera")]
        assert_playable(camera)
        # every beep, before and after the mute, with its flash; the muted second is silent
        assert_in_sync(camera, expected_flashes=0)
        beeps = beep_times(camera)
        assert len(beeps) >= 3 and len(beeps) < len(flash_times(camera)), beeps


async def test_three_percent_loss_repaired_by_nack_records_each_frame_once(
    tmp_path: Path,
) -> None:
    async with session("ann", "bob") as (router, p):
        ann, bob = p["ann"], p["bob"]
        bob.client.tracks.clear()
        epoch = time.monotonic()
        flash_publisher(ann.client, epoch)
        await ann.publish()
        await flowing(bob, "ann")
        producer = ann.producer("video")
        receiver: Any = producer._receiver
        rng = __import__("random").Random(5)
        dropped = duplicated = 0

        def lossy_input(packet: Any) -> None:
            nonlocal dropped, duplicated
            if packet.payload_type == producer.payload_type:
                if rng.random() < 0.03:
                    dropped += 1
                    return
                if rng.random() < 0.03:  # and a few arrive twice
                    duplicated += 1
                    producer.forward(packet)
            producer.forward(packet)

        receiver._parley_forward = lossy_input
        recorder = recorder_for(router, tmp_path)
        video_track = ann.client.tracks[1]
        assert isinstance(video_track, FlashVideoTrack)
        first = video_track.count
        sent: list[int] = []
        await record_for(recorder, 5.0, lambda: sent.append(video_track.count - first))
        assert dropped >= 3 and duplicated >= 3 and producer.retransmissions > 0
        path = ready_files(recorder)[("ann", "camera")]
        info = assert_playable(path)
        frames = int(streams(info, "video")[0]["nb_read_frames"])
        assert 0.9 * sent[0] <= frames <= sent[0] + 1, (frames, sent, dropped)
        assert_in_sync(path, expected_flashes=4)


async def test_h264_is_recorded_into_matroska_in_sync(tmp_path: Path) -> None:
    async with session("ann", "bob") as (router, p):
        ann, bob = p["ann"], p["bob"]
        bob.client.tracks.clear()
        ann.client.video_codec = "video/H264"
        flash_publisher(ann.client, time.monotonic())
        await ann.publish()
        await flowing(bob, "ann")
        assert ann.producer("video").codec.mimeType.lower() == "video/h264"
        recorder = recorder_for(router, tmp_path)
        await record_for(recorder, 4.5)
        path = ready_files(recorder)[("ann", "camera")]
        assert path.suffix == ".mkv"
        info = assert_playable(path)
        assert streams(info, "video")[0]["codec_name"] == "h264"
        assert streams(info, "video")[0]["width"] == 320
        assert_in_sync(path, expected_flashes=3)


def test_depacketizers_follow_the_payload_formats() -> None:
    # VP8 with an extended descriptor and a 15-bit picture id (RFC 7741 §4.2)
    assert vp8_depacketize(bytes([0x90, 0x80, 0x81, 0x23, 0xAA])) == (b"\xaa", True)
    assert vp8_depacketize(bytes([0x00, 0xBB])) == (b"\xbb", False)
    key = bytes([0x50, 0x01, 0x00, 0x9D, 0x01, 0x2A, 0x40, 0x01, 0xF0, 0x00])
    assert vp8_size(key) == (320, 240)
    # H.264: single NAL, STAP-A (SPS + PPS), FU-A start and middle (RFC 6184)
    assert h264_depacketize(b"\x65\x01") == (b"\x00\x00\x00\x01\x65\x01", True, True)
    stap = b"\x18\x00\x02\x67\x42\x00\x02\x68\xce"
    assert h264_depacketize(stap) == (
        b"\x00\x00\x00\x01\x67\x42\x00\x00\x00\x01\x68\xce",
        True,
        False,
    )
    assert h264_depacketize(b"\x7c\x85\x11") == (b"\x00\x00\x00\x01\x65\x11", True, True)
    assert h264_depacketize(b"\x7c\x05\x22") == (b"\x22", False, False)
    assert opus_duration(OPUS_SILENCE) == 0.02


def test_a_frame_lost_whole_stops_the_video_until_the_next_keyframe() -> None:
    key, delta = b"\x10\x50\x01\x00", b"\x10\x51\x01\x00"  # VP8 descriptor S=1, then frame tag

    def frame(seq: int, payload: bytes) -> tuple[int, int, int, bytes, int]:
        return (seq, seq * 3000, 1, payload, seq * 33_000)

    packets = [
        frame(10, key),
        frame(11, delta),
        # 12: lost whole, not one of its packets journaled; 13 refers to it
        frame(13, delta),
        frame(14, key),
        frame(15, delta),
        # 16: padding, journaled without payload: not a loss
        frame(17, delta),
    ]
    segment = Segment("video", "video/vp8", 90000, packets, filler=frozenset({16}))
    kept = [round(f.time * 90000 / 3000) for f in video_frames([(segment, 0.0)])]
    assert kept == [10, 11, 14, 15, 17]


def audio_journal(
    lags: list[float],
    reports: list[tuple[float, float, int]] = (),  # type: ignore[assignment]
) -> JournalContents:
    """An Opus journal of 20 ms packets, packet ``i`` arriving ``lags[i]`` s after its RTP
    time; ``reports``: ``(arrival s, NTP wall clock s, RTP timestamp)``."""
    packets = [
        JournalPacket(round((i * AUDIO_FRAME + lag) * 1e6), i, i * 960, 0, OPUS_SILENCE)
        for i, lag in enumerate(lags)
    ]

    def ntp(seconds: float) -> int:
        return round((seconds + NTP_EPOCH_OFFSET) * 2**32)

    return JournalContents(
        header={"kind": "audio", "mime": "audio/opus", "clock_rate": 48000},
        packets=packets,
        sender_reports=[(round(a * 1e6), ntp(n), rtp) for a, n, rtp in reports],
    )


def test_a_late_delivery_is_not_a_pause_of_the_rtp_clock() -> None:
    # 2 s on time, 0.5 s delivered 0.4 s late (the publisher stalled), then caught up
    stalled = [0.01] * 100 + [0.41] * 25 + [0.01] * 100
    assert [len(run.packets) for run in build_segments(audio_journal(stalled))] == [225]
    # the clock paused for 0.4 s while the timestamps ran on: a run of its own
    paused = [0.01] * 100 + [0.41] * 125
    assert [len(run.packets) for run in build_segments(audio_journal(paused))] == [100, 125]
    # a stall inside the paused run is still one run
    both = [0.01] * 100 + [0.41] * 50 + [0.9] * 10 + [0.41] * 50
    assert [len(run.packets) for run in build_segments(audio_journal(both))] == [100, 110]


def test_the_least_late_sender_report_maps_the_run() -> None:
    # aiortc stamps a report with its last packet's send time: late by however long that
    # packet waited (here 120, 5 and 30 ms after its RTP time, which maps to 1000 + t)
    reports = [(1.0, 1001.0 + 0.12, 48000), (2.0, 1002.0 + 0.005, 96000), (3.0, 1003.03, 144000)]
    (run,) = build_segments(audio_journal([0.01] * 200, reports))
    assert run.sr_ntp is not None and run.sr_rtp is not None
    assert abs(run.sr_ntp - run.sr_rtp / 48000 - 1000.005) < 1e-6


def test_audio_that_claims_the_same_time_twice_is_played_once_and_in_sync(tmp_path: Path) -> None:
    # two runs of one track overlapping by 240 ms (a publisher's clock mapped two ways)
    first = [Frame(i * AUDIO_FRAME, b"\xfc\xff\xfe", True, AUDIO_FRAME) for i in range(50)]
    second = [Frame(0.76 + i * AUDIO_FRAME, OPUS_SILENCE, True, AUDIO_FRAME) for i in range(50)]
    placed = _place_audio(sorted(first + second, key=lambda f: f.time), 0.0)
    for before, after in zip(placed, placed[1:], strict=False):
        assert after.time >= before.time + before.duration - 1e-9, (before, after)
    for frame in placed:  # nothing played later than MAX_AUDIO_PUSH after its own time
        assert any(
            frame.data == f.data and 0 <= frame.time - f.time <= MAX_AUDIO_PUSH + 1e-9
            for f in first + second
        )
    # the overlap is played once: about 1.76 s of audio, no silence was needed
    assert 1.76 <= placed[-1].time + placed[-1].duration <= 1.76 + MAX_AUDIO_PUSH + 1e-9
    assert len(placed) >= 88 and OPUS_SILENCE not in [f.data for f in placed[:38]]
    target = tmp_path / "overlap.ogg"
    write_file(Tracks(audio=placed, video=[], video_mime=None, start=0.0), target)
    assert decode_errors(target) == ""


async def test_audio_only_participant_is_recorded_into_ogg(tmp_path: Path) -> None:
    async with session("ann", "bob") as (router, p):
        ann, bob = p["ann"], p["bob"]
        bob.client.tracks.clear()
        ann.client.tracks[:] = [BeepAudioTrack(time.monotonic())]
        await ann.publish()
        await flowing(bob, "ann", "audio")
        recorder = recorder_for(router, tmp_path)
        elapsed = await record_for(recorder, 3.0)
        path = ready_files(recorder)[("ann", "camera")]
        assert path.suffix == ".ogg"
        info = assert_playable(path, video=False)
        assert abs(float(info["format"]["duration"]) - elapsed) <= 0.05 * elapsed
        assert len(beep_times(path)) >= 2

"""Recording without transcoding: a sink per producer journals RTP packets (crash-safe, cheap
in the packet path); a worker process remuxes the journals into WebM / Matroska / Ogg files."""

from .journal import Journal, JournalWriter
from .session import Recording, SessionRecorder, run_worker
from .sink import TrackSink

__all__ = ["Journal", "JournalWriter", "Recording", "SessionRecorder", "TrackSink", "run_worker"]

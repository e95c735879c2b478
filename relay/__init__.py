"""parley's media plane: an SFU that forwards RTP packets between WebRTC participants.

Router (a session) -> Peer (a participant) -> PublishTransport / SubscribeTransport (one
aiortc peer connection each) -> Producer (an incoming track) -> Consumer (one subscriber's copy).
"""

from .config import MediaConfig
from .consumer import Consumer
from .errors import RelayError
from .producer import Producer
from .router import Peer, Router

__all__ = ["Consumer", "MediaConfig", "Peer", "Producer", "RelayError", "Router"]

"""Media-plane configuration."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass


@dataclass(frozen=True)
class MediaConfig:
    """How the relay's own WebRTC side is reached and how it forwards."""

    addresses: tuple[str, ...] = ("127.0.0.1",)
    """IP addresses the relay's ICE host candidates bind and announce (loopback allowed)."""

    port_range: tuple[int, int] | None = None
    """Inclusive UDP port range for media sockets; None lets the kernel choose."""

    keyframe_request_interval: float = 0.3
    """Minimum seconds between two PLIs sent to one publisher (debounce)."""

    keyframe_retry_interval: float = 1.0
    """Seconds after which an unanswered keyframe request for a waiting consumer is repeated."""

    history_size: int = 512
    """Packets each consumer keeps for answering NACKs (a power of two)."""

    negotiation_timeout: float = 15.0
    """Seconds a subscriber has to answer the relay's offer."""

    dead_leg_after: float = 8.0
    """Seconds without a single datagram (RTP, RTCP or STUN) on a connected leg after which it
    counts as dead (peers send consent checks at least every 6 s, RFC 7675); 0 turns it off
    (aioice's own consent expiry, about 30 s, remains)."""

    def __post_init__(self) -> None:
        if not self.addresses:
            raise ValueError("MediaConfig.addresses needs at least one address")
        for address in self.addresses:
            ipaddress.ip_address(address)  # raises ValueError with the bad value
        if self.port_range is not None:
            low, high = self.port_range
            if not 1024 <= low <= high <= 65535:
                raise ValueError(f"invalid media port range {low}-{high}")
        if self.dead_leg_after < 0:
            raise ValueError("dead_leg_after must be >= 0")
        if self.history_size < 16 or self.history_size & (self.history_size - 1):
            raise ValueError("history_size must be a power of two >= 16")

"""Trickled ICE candidates (RFC 8838): the ``candidate-attribute`` a page sends once it has
offered or answered, checked before aiortc and aioice see it. Pure functions, no I/O."""

from __future__ import annotations

import ipaddress

from aiortc import RTCIceCandidate
from aiortc.sdp import candidate_from_sdp

from .errors import InvalidCandidate

MAX_CANDIDATE_CHARS = 1024
"""Longest candidate line accepted (a browser's is about 150 characters)."""
TYPES = ("host", "srflx", "prflx", "relay")


def _valid_host(host: str) -> bool:
    if host.endswith(".local") and 6 < len(host) <= 253:
        return all(part and len(part) <= 63 for part in host[:-6].split("."))
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def parse_candidate(text: str) -> RTCIceCandidate:
    """``candidate:<foundation> <component> <transport> <priority> <address> <port> typ <type>
    [raddr <a> rport <p>] [tcptype <t>] ...`` (RFC 8839 §5.1; the ``candidate:`` prefix is
    optional). Raises :class:`InvalidCandidate` naming what is wrong."""
    if len(text) > MAX_CANDIDATE_CHARS:
        raise InvalidCandidate(f"the candidate is longer than {MAX_CANDIDATE_CHARS} characters")
    value = text[len("candidate:") :] if text.startswith("candidate:") else text
    bits = value.split()
    if len(bits) < 8 or bits[6] != "typ":
        raise InvalidCandidate(
            "the candidate needs foundation, component, transport, priority, "
            "address, port, 'typ' and type"
        )
    foundation, component, transport, priority, host, port, _, kind = bits[:8]
    if not 1 <= len(foundation) <= 32 or not foundation.isascii():
        raise InvalidCandidate("the candidate's foundation must be 1 to 32 characters")
    if not (component.isdigit() and 1 <= int(component) <= 256):
        raise InvalidCandidate("the candidate's component must be 1 to 256")
    if transport.lower() not in ("udp", "tcp"):
        raise InvalidCandidate("the candidate's transport must be udp or tcp")
    if not (priority.isdigit() and int(priority) < 2**32):
        raise InvalidCandidate("the candidate's priority must be a 32-bit number")
    if not _valid_host(host):
        raise InvalidCandidate("the candidate's address must be an IP address or an mDNS name")
    if not (port.isdigit() and int(port) <= 65535):
        raise InvalidCandidate("the candidate's port must be 0 to 65535")
    if kind not in TYPES:
        raise InvalidCandidate("the candidate's type must be host, srflx, prflx or relay")
    extensions = bits[8:]
    for name, arg in zip(extensions[::2], extensions[1::2], strict=False):
        if name == "raddr" and not _valid_host(arg):
            raise InvalidCandidate("the candidate's raddr must be an IP address")
        if name == "rport" and not (arg.isdigit() and int(arg) <= 65535):
            raise InvalidCandidate("the candidate's rport must be 0 to 65535")
    candidate = candidate_from_sdp(value)
    candidate.protocol = candidate.protocol.lower()
    return candidate

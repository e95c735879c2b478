"""Errors raised by the media plane. Each carries a stable ``code`` that signaling maps to the
``error`` message a client sees."""

from __future__ import annotations


class RelayError(Exception):
    """Base class for media-plane errors."""

    code = "relay_error"


class InvalidSdp(RelayError):
    """An offer or answer that cannot be parsed or applied."""

    code = "invalid_sdp"


class NoMedia(RelayError):
    """A publish offer that carries no audio or video section."""

    code = "no_media"


class UnsupportedCodec(RelayError):
    """No codec of an offered media section is one the relay forwards."""

    code = "unsupported_codec"


class NegotiationError(RelayError):
    """A negotiation arrived at the wrong time (e.g. an answer with no offer outstanding)."""

    code = "negotiation_error"


class TransportClosed(RelayError):
    """The peer connection is closed."""

    code = "transport_closed"


class InvalidCandidate(RelayError):
    """A trickled ICE candidate that cannot be parsed."""

    code = "invalid_candidate"

"""Connectivity checks of an established ICE pair (STUN Binding requests, RFC 8445 §7.3;
consent freshness, RFC 7675) without aioice's general message codec: the answer to the peer's,
and our own request and the verdict on its response.

Every peer sends one every 4-6 s on each leg, and aioice answers it through a general STUN
parser and encoder that builds the message three times over (integrity, fingerprint, the
bytes). This answers the steady state itself, byte for byte as aioice would: a well-formed,
authenticated request carrying nothing that could change the ICE agent's state. Anything else
(another method, an unknown comprehension-required attribute, USE-CANDIDATE, a role conflict,
a bad username, integrity or fingerprint, no fingerprint) gets ``None`` and goes to aioice,
which answers or rejects it as before. Our own consent check (:func:`binding_request`) is the
request aioice's ``Connection.query_consent`` sends, byte for byte, and :func:`response_verdict`
judges a datagram as aioice's transaction would: an authenticated success or error response to
it, or not an answer to it at all (which stays aioice's). Sans-I/O: bytes in, bytes out."""

from __future__ import annotations

import hmac
import socket
import struct
import zlib

COOKIE = 0x2112A442
HEADER = struct.Struct("!HHI12s")
ATTR = struct.Struct("!HH")
BINDING_REQUEST = 0x0001
BINDING_SUCCESS = 0x0101
BINDING_ERROR = 0x0111

USERNAME = 0x0006
MESSAGE_INTEGRITY = 0x0008
XOR_MAPPED_ADDRESS = 0x0020
PRIORITY = 0x0024
USE_CANDIDATE = 0x0025
FINGERPRINT = 0x8028
ICE_CONTROLLED = 0x8029
ICE_CONTROLLING = 0x802A
FINGERPRINT_XOR = 0x5354554E

_COOKIE_BYTES = struct.pack("!I", COOKIE)
_FIXED_LENGTH = {PRIORITY: 4, ICE_CONTROLLED: 8, ICE_CONTROLLING: 8}


def _with_length(data: bytes, length: int) -> bytes:
    """``data`` (a message's first bytes) with its header's length field set to ``length``."""
    return data[:2] + length.to_bytes(2, "big") + data[4:]


def _attributes(data: bytes, end: int) -> list[tuple[int, int, int, int]] | None:
    """(type, start, value start, value end) of each attribute of the message in ``data[:end]``
    in order, or None when one runs past ``end``."""
    out = []
    pos = 20
    while pos < end:
        if end - pos < 4:
            return None
        code, size = ATTR.unpack_from(data, pos)
        value = pos + 4
        after = value + size
        if after > end:
            return None
        out.append((code, pos, value, after))
        pos = value + ((size + 3) & ~3)
    return out


def _integrity_ok(data: bytes, key: bytes, pos: int, value: int, after: int) -> bool:
    """Whether the MESSAGE-INTEGRITY at ``pos`` signs ``data[:pos]`` with ``key``."""
    if after - value != 20:
        return False
    mac = hmac.digest(key, _with_length(data[:pos], pos + 24 - 20), "sha1")
    return hmac.compare_digest(mac, data[value:after])


def _fingerprint_ok(data: bytes, pos: int, value: int, after: int) -> bool:
    """Whether the FINGERPRINT at ``pos`` is that of ``data[:pos]``."""
    if after - value != 4:
        return False
    expected = zlib.crc32(_with_length(data[:pos], pos + 8 - 20)) ^ FINGERPRINT_XOR
    return int.from_bytes(data[value:after], "big") == expected


def _signed(kind: int, transaction_id: bytes, body: bytes, key: bytes) -> bytes:
    """The message of ``kind`` with ``body``, then MESSAGE-INTEGRITY (``key``) and FINGERPRINT,
    as aioice's ``add_message_integrity`` makes it."""
    signed = HEADER.pack(kind, len(body) + 24, COOKIE, transaction_id) + body
    mac = hmac.digest(key, signed, "sha1")
    message = _with_length(signed, len(body) + 32) + ATTR.pack(MESSAGE_INTEGRITY, 20) + mac
    crc = zlib.crc32(message) ^ FINGERPRINT_XOR
    return message + ATTR.pack(FINGERPRINT, 4) + crc.to_bytes(4, "big")


def binding_response(
    data: bytes, host: str, port: int, username: bytes, key: bytes, controlling: bool
) -> bytes | None:
    """The Binding success response to ``data``, a request from ``(host, port)`` that must
    name ``username`` (``local-ufrag:remote-ufrag``) and be signed with ``key`` (the local
    password), when the agent (``controlling`` or not) would only answer it; else ``None``."""
    if len(data) < 20 + 32:  # header, and at least MESSAGE-INTEGRITY and FINGERPRINT
        return None
    kind, length, cookie, transaction_id = HEADER.unpack_from(data)
    end = 20 + length
    if kind != BINDING_REQUEST or cookie != COOKIE or length & 3 or end != len(data):
        return None
    attributes = _attributes(data, end)
    if attributes is None:
        return None
    named = prioritised = signed = False
    for code, pos, value, after in attributes:
        if signed:
            # only FINGERPRINT may follow MESSAGE-INTEGRITY, and it is last
            if code != FINGERPRINT or after != end or not _fingerprint_ok(data, pos, value, after):
                return None
            return _response(transaction_id, host, port, key)
        if code == USERNAME:
            if data[value:after] != username:
                return None
            named = True
        elif code == MESSAGE_INTEGRITY:
            if not named or not prioritised or not _integrity_ok(data, key, pos, value, after):
                return None
            signed = True
        elif code in _FIXED_LENGTH:
            if after - value != _FIXED_LENGTH[code]:
                return None
            if code == PRIORITY:
                prioritised = True
            elif (code == ICE_CONTROLLING) is controlling:
                return None  # both claim the same role: aioice repairs the conflict
        elif code < 0x8000:
            return None  # USE-CANDIDATE, or a comprehension-required attribute we do not know
    return None  # unsigned, or no FINGERPRINT


def _response(transaction_id: bytes, host: str, port: int, key: bytes) -> bytes:
    if ":" in host:
        family, address = 2, socket.inet_pton(socket.AF_INET6, host)
        pad = _COOKIE_BYTES + transaction_id
    else:
        family, address = 1, socket.inet_pton(socket.AF_INET, host)
        pad = _COOKIE_BYTES
    xored = (int.from_bytes(address, "big") ^ int.from_bytes(pad, "big")).to_bytes(
        len(address), "big"
    )
    value = struct.pack("!BBH", 0, family, port ^ (COOKIE >> 16)) + xored
    body = ATTR.pack(XOR_MAPPED_ADDRESS, len(value)) + value
    return _signed(BINDING_SUCCESS, transaction_id, body, key)


def binding_request(
    transaction_id: bytes,
    username: bytes,
    key: bytes,
    controlling: bool,
    tie_breaker: int,
    priority: int,
) -> bytes:
    """A consent check (RFC 7675 §5.1) as aioice's ``query_consent`` sends it: USERNAME
    (``remote-ufrag:local-ufrag``), PRIORITY, ICE-CONTROLLING or ICE-CONTROLLED with our
    ``tie_breaker``, signed with ``key`` (the remote password), and FINGERPRINT."""
    role = ICE_CONTROLLING if controlling else ICE_CONTROLLED
    body = b"".join(
        (
            ATTR.pack(USERNAME, len(username)),
            username,
            bytes(-len(username) % 4),
            ATTR.pack(PRIORITY, 4),
            priority.to_bytes(4, "big"),
            ATTR.pack(role, 8),
            tie_breaker.to_bytes(8, "big"),
        )
    )
    return _signed(BINDING_REQUEST, transaction_id, body, key)


def response_verdict(data: bytes, transaction_id: bytes, key: bytes) -> bool | None:
    """Whether ``data`` answers our Binding request ``transaction_id``: ``True`` for a success
    response, ``False`` for an error response, each signed with ``key`` (the remote password),
    and ``None`` for anything else (another transaction, a bad or missing MESSAGE-INTEGRITY or
    FINGERPRINT, a malformed message), which aioice would discard or handle itself."""
    if len(data) < 20 + 24:
        return None
    kind, length, cookie, tid = HEADER.unpack_from(data)
    end = 20 + length
    if (
        (kind != BINDING_SUCCESS and kind != BINDING_ERROR)
        or cookie != COOKIE
        or tid != transaction_id
        or length & 3
        or end != len(data)
    ):
        return None
    attributes = _attributes(data, end)
    if attributes is None:
        return None
    signed = False
    for code, pos, value, after in attributes:
        if code == FINGERPRINT:
            if not _fingerprint_ok(data, pos, value, after):
                return None
        elif code == MESSAGE_INTEGRITY and not signed:
            if not _integrity_ok(data, key, pos, value, after):
                return None
            signed = True
    if not signed:
        return None
    return kind == BINDING_SUCCESS

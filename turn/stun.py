"""STUN/TURN message codec (RFC 8489 §5–§14, RFC 8656 §18, §12.4 ChannelData).

Sans-I/O: pure functions over bytes. :func:`parse` turns bytes into a :class:`Message` whose
attributes hold typed Python values (addresses as ``(host, port)``, :class:`ErrorCode`, ints, str,
bytes); ``bytes(message)`` serialises it again. One table, :data:`ATTRIBUTES`, keyed by attribute
type code, drives both directions. Attributes that are not in the table are kept as raw bytes so a
message round-trips byte for byte.

MESSAGE-INTEGRITY, MESSAGE-INTEGRITY-SHA256 and FINGERPRINT are plain ``bytes``/``int`` attributes
for ``bytes()``; :meth:`Message.encode` appends freshly computed ones, and :meth:`Message.check_integrity`
verifies a parsed message against the exact bytes it was parsed from.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import ipaddress
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .errors import StunError

MAGIC_COOKIE = 0x2112A442
COOKIE_BYTES = struct.pack("!I", MAGIC_COOKIE)
FINGERPRINT_XOR = 0x5354554E
HEADER_LENGTH = 20

# Message classes (RFC 8489 §5)
REQUEST = 0x000
INDICATION = 0x010
SUCCESS = 0x100
ERROR = 0x110

# Methods (RFC 8489 §18.2, RFC 8656 §17)
BINDING = 0x001
ALLOCATE = 0x003
REFRESH = 0x004
SEND = 0x006
DATA = 0x007
CREATE_PERMISSION = 0x008
CHANNEL_BIND = 0x009

METHOD_NAMES = {
    BINDING: "BINDING",
    ALLOCATE: "ALLOCATE",
    REFRESH: "REFRESH",
    SEND: "SEND",
    DATA: "DATA",
    CREATE_PERMISSION: "CREATE_PERMISSION",
    CHANNEL_BIND: "CHANNEL_BIND",
}
CLASS_NAMES = {REQUEST: "REQUEST", INDICATION: "INDICATION", SUCCESS: "SUCCESS", ERROR: "ERROR"}

# Attribute type codes
MAPPED_ADDRESS = 0x0001
USERNAME = 0x0006
MESSAGE_INTEGRITY = 0x0008
ERROR_CODE = 0x0009
UNKNOWN_ATTRIBUTES = 0x000A
CHANNEL_NUMBER = 0x000C
LIFETIME = 0x000D
XOR_PEER_ADDRESS = 0x0012
DATA_ATTR = 0x0013
REALM = 0x0014
NONCE = 0x0015
XOR_RELAYED_ADDRESS = 0x0016
REQUESTED_ADDRESS_FAMILY = 0x0017
EVEN_PORT = 0x0018
REQUESTED_TRANSPORT = 0x0019
DONT_FRAGMENT = 0x001A
MESSAGE_INTEGRITY_SHA256 = 0x001C
PASSWORD_ALGORITHM = 0x001D
USERHASH = 0x001E
XOR_MAPPED_ADDRESS = 0x0020
RESERVATION_TOKEN = 0x0022
PRIORITY = 0x0024
USE_CANDIDATE = 0x0025
PASSWORD_ALGORITHMS = 0x8002
ALTERNATE_DOMAIN = 0x8003
SOFTWARE = 0x8022
ALTERNATE_SERVER = 0x8023
FINGERPRINT = 0x8028
ICE_CONTROLLED = 0x8029
ICE_CONTROLLING = 0x802A

Address = tuple[str, int]

FAMILY_IPV4 = 0x01
FAMILY_IPV6 = 0x02


@dataclass(frozen=True, slots=True)
class ErrorCode:
    """ERROR-CODE value (RFC 8489 §14.8): a code in 300–699 and a UTF-8 reason phrase."""

    code: int
    reason: str


# --- attribute value codecs -------------------------------------------------------------------
# Each decoder gets (value, transaction_id) and returns a typed value; each encoder the reverse.


def _dec_address(value: bytes, tid: bytes) -> Address:
    """MAPPED-ADDRESS / ALTERNATE-SERVER (RFC 8489 §14.1)."""
    if len(value) < 4:
        raise StunError("address attribute shorter than 4 bytes")
    family = value[1]
    port = (value[2] << 8) | value[3]
    if family == FAMILY_IPV4:
        if len(value) != 8:
            raise StunError("IPv4 address attribute must be 8 bytes")
        return str(ipaddress.IPv4Address(value[4:8])), port
    if family == FAMILY_IPV6:
        if len(value) != 20:
            raise StunError("IPv6 address attribute must be 20 bytes")
        return str(ipaddress.IPv6Address(value[4:20])), port
    raise StunError(f"unknown address family 0x{family:02x}")


def _enc_address(addr: Address, tid: bytes) -> bytes:
    ip = ipaddress.ip_address(addr[0])
    family = FAMILY_IPV4 if ip.version == 4 else FAMILY_IPV6
    return struct.pack("!BBH", 0, family, addr[1]) + ip.packed


def _xor_bytes(data: bytes, tid: bytes) -> bytes:
    key = COOKIE_BYTES + tid
    return bytes(a ^ b for a, b in zip(data, key, strict=False))


def _dec_xor_address(value: bytes, tid: bytes) -> Address:
    """XOR-MAPPED-ADDRESS, XOR-PEER-ADDRESS, XOR-RELAYED-ADDRESS (RFC 8489 §14.2)."""
    if len(value) < 4:
        raise StunError("address attribute shorter than 4 bytes")
    family = value[1]
    port = ((value[2] << 8) | value[3]) ^ (MAGIC_COOKIE >> 16)
    if family == FAMILY_IPV4:
        if len(value) != 8:
            raise StunError("IPv4 address attribute must be 8 bytes")
        return str(ipaddress.IPv4Address(_xor_bytes(value[4:8], tid))), port
    if family == FAMILY_IPV6:
        if len(value) != 20:
            raise StunError("IPv6 address attribute must be 20 bytes")
        return str(ipaddress.IPv6Address(_xor_bytes(value[4:20], tid))), port
    raise StunError(f"unknown address family 0x{family:02x}")


def _enc_xor_address(addr: Address, tid: bytes) -> bytes:
    ip = ipaddress.ip_address(addr[0])
    family = FAMILY_IPV4 if ip.version == 4 else FAMILY_IPV6
    port = addr[1] ^ (MAGIC_COOKIE >> 16)
    return struct.pack("!BBH", 0, family, port) + _xor_bytes(ip.packed, tid)


def _dec_u32(value: bytes, tid: bytes) -> int:
    if len(value) != 4:
        raise StunError("32-bit attribute must be 4 bytes")
    return int.from_bytes(value, "big")


def _enc_u32(value: int, tid: bytes) -> bytes:
    return struct.pack("!I", value)


def _dec_u64(value: bytes, tid: bytes) -> int:
    if len(value) != 8:
        raise StunError("64-bit attribute must be 8 bytes")
    return int.from_bytes(value, "big")


def _enc_u64(value: int, tid: bytes) -> bytes:
    return struct.pack("!Q", value)


def _dec_high_u16(value: bytes, tid: bytes) -> int:
    """CHANNEL-NUMBER (RFC 8656 §18.1): 16-bit number then 16 bits RFFU."""
    if len(value) != 4:
        raise StunError("CHANNEL-NUMBER must be 4 bytes")
    return (value[0] << 8) | value[1]


def _enc_high_u16(value: int, tid: bytes) -> bytes:
    return struct.pack("!HH", value, 0)


def _dec_high_u8(value: bytes, tid: bytes) -> int:
    """REQUESTED-TRANSPORT / REQUESTED-ADDRESS-FAMILY (RFC 8656 §18.6, §18.9): 8 bits + 24 RFFU."""
    if len(value) != 4:
        raise StunError("attribute must be 4 bytes")
    return value[0]


def _enc_high_u8(value: int, tid: bytes) -> bytes:
    return struct.pack("!B3x", value)


def _dec_u8(value: bytes, tid: bytes) -> int:
    """EVEN-PORT (RFC 8656 §18.8): one byte, the R bit is the top bit."""
    if len(value) != 1:
        raise StunError("EVEN-PORT must be 1 byte")
    return value[0]


def _enc_u8(value: int, tid: bytes) -> bytes:
    return bytes((value,))


def _dec_text(value: bytes, tid: bytes) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise StunError("text attribute is not valid UTF-8") from exc


def _enc_text(value: str, tid: bytes) -> bytes:
    return value.encode("utf-8")


def _dec_bytes(value: bytes, tid: bytes) -> bytes:
    return value


def _enc_bytes(value: bytes, tid: bytes) -> bytes:
    return bytes(value)


def _dec_empty(value: bytes, tid: bytes) -> bool:
    if value:
        raise StunError("flag attribute must be empty")
    return True


def _enc_empty(value: bool, tid: bytes) -> bytes:
    return b""


def _dec_error_code(value: bytes, tid: bytes) -> ErrorCode:
    """ERROR-CODE (RFC 8489 §14.8)."""
    if len(value) < 4:
        raise StunError("ERROR-CODE shorter than 4 bytes")
    code = (value[2] & 0x07) * 100 + value[3]
    return ErrorCode(code, _dec_text(value[4:], tid))


def _enc_error_code(value: ErrorCode, tid: bytes) -> bytes:
    return struct.pack("!2xBB", value.code // 100, value.code % 100) + value.reason.encode()


def _dec_unknown(value: bytes, tid: bytes) -> tuple[int, ...]:
    """UNKNOWN-ATTRIBUTES (RFC 8489 §14.9): a list of 16-bit types."""
    if len(value) % 2:
        raise StunError("UNKNOWN-ATTRIBUTES length must be even")
    return tuple(struct.unpack(f"!{len(value) // 2}H", value))


def _enc_unknown(value: tuple[int, ...], tid: bytes) -> bytes:
    return struct.pack(f"!{len(value)}H", *value)


@dataclass(frozen=True, slots=True)
class AttributeSpec:
    """One row of :data:`ATTRIBUTES`: name plus value decoder/encoder."""

    name: str
    decode: Callable[[bytes, bytes], Any]
    encode: Callable[[Any, bytes], bytes]


def _spec(
    name: str, dec: Callable[[bytes, bytes], Any], enc: Callable[[Any, bytes], bytes]
) -> AttributeSpec:
    return AttributeSpec(name, dec, enc)


ATTRIBUTES: dict[int, AttributeSpec] = {
    MAPPED_ADDRESS: _spec("MAPPED-ADDRESS", _dec_address, _enc_address),
    USERNAME: _spec("USERNAME", _dec_text, _enc_text),
    MESSAGE_INTEGRITY: _spec("MESSAGE-INTEGRITY", _dec_bytes, _enc_bytes),
    ERROR_CODE: _spec("ERROR-CODE", _dec_error_code, _enc_error_code),
    UNKNOWN_ATTRIBUTES: _spec("UNKNOWN-ATTRIBUTES", _dec_unknown, _enc_unknown),
    CHANNEL_NUMBER: _spec("CHANNEL-NUMBER", _dec_high_u16, _enc_high_u16),
    LIFETIME: _spec("LIFETIME", _dec_u32, _enc_u32),
    XOR_PEER_ADDRESS: _spec("XOR-PEER-ADDRESS", _dec_xor_address, _enc_xor_address),
    DATA_ATTR: _spec("DATA", _dec_bytes, _enc_bytes),
    REALM: _spec("REALM", _dec_text, _enc_text),
    NONCE: _spec("NONCE", _dec_text, _enc_text),
    XOR_RELAYED_ADDRESS: _spec("XOR-RELAYED-ADDRESS", _dec_xor_address, _enc_xor_address),
    REQUESTED_ADDRESS_FAMILY: _spec("REQUESTED-ADDRESS-FAMILY", _dec_high_u8, _enc_high_u8),
    EVEN_PORT: _spec("EVEN-PORT", _dec_u8, _enc_u8),
    REQUESTED_TRANSPORT: _spec("REQUESTED-TRANSPORT", _dec_high_u8, _enc_high_u8),
    DONT_FRAGMENT: _spec("DONT-FRAGMENT", _dec_empty, _enc_empty),
    MESSAGE_INTEGRITY_SHA256: _spec("MESSAGE-INTEGRITY-SHA256", _dec_bytes, _enc_bytes),
    PASSWORD_ALGORITHM: _spec("PASSWORD-ALGORITHM", _dec_bytes, _enc_bytes),
    USERHASH: _spec("USERHASH", _dec_bytes, _enc_bytes),
    XOR_MAPPED_ADDRESS: _spec("XOR-MAPPED-ADDRESS", _dec_xor_address, _enc_xor_address),
    RESERVATION_TOKEN: _spec("RESERVATION-TOKEN", _dec_bytes, _enc_bytes),
    PRIORITY: _spec("PRIORITY", _dec_u32, _enc_u32),
    USE_CANDIDATE: _spec("USE-CANDIDATE", _dec_empty, _enc_empty),
    PASSWORD_ALGORITHMS: _spec("PASSWORD-ALGORITHMS", _dec_bytes, _enc_bytes),
    ALTERNATE_DOMAIN: _spec("ALTERNATE-DOMAIN", _dec_text, _enc_text),
    SOFTWARE: _spec("SOFTWARE", _dec_text, _enc_text),
    ALTERNATE_SERVER: _spec("ALTERNATE-SERVER", _dec_address, _enc_address),
    FINGERPRINT: _spec("FINGERPRINT", _dec_u32, _enc_u32),
    ICE_CONTROLLED: _spec("ICE-CONTROLLED", _dec_u64, _enc_u64),
    ICE_CONTROLLING: _spec("ICE-CONTROLLING", _dec_u64, _enc_u64),
}


@dataclass(eq=False)
class Message:
    """A STUN message (RFC 8489 §5): method, class, 96-bit transaction id and attributes.

    ``attributes`` maps type code to typed value, in wire order; unknown types map to raw bytes.
    Only the first occurrence of a type is kept (RFC 8489 §14: later duplicates are ignored).
    """

    method: int
    cls: int
    transaction_id: bytes
    attributes: dict[int, Any] = field(default_factory=dict)
    #: bytes this message was parsed from (empty for built messages)
    raw: bytes = field(default=b"", repr=False)
    #: offset of MESSAGE-INTEGRITY / -SHA256 in ``raw``, or -1
    integrity_offset: int = field(default=-1, repr=False)
    integrity_sha256_offset: int = field(default=-1, repr=False)
    #: repeated attributes after the first of their type (e.g. several XOR-PEER-ADDRESS in a
    #: CreatePermission, RFC 8656 §9.1); serialised after :attr:`attributes`
    extra: list[tuple[int, Any]] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        if len(self.transaction_id) != 12:
            raise StunError("transaction id must be 12 bytes")

    @property
    def message_type(self) -> int:
        """The 14-bit STUN message type with method and class bits interleaved (RFC 8489 §5)."""
        m = self.method
        return (m & 0x000F) | ((m & 0x0070) << 1) | ((m & 0x0F80) << 2) | self.cls

    def get(self, code: int, default: Any = None) -> Any:
        return self.attributes.get(code, default)

    def get_all(self, code: int) -> list[Any]:
        """Every value of ``code``: the first occurrence, then repeats kept in :attr:`extra`."""
        first = [self.attributes[code]] if code in self.attributes else []
        return first + [v for c, v in self.extra if c == code]

    def __contains__(self, code: int) -> bool:
        return code in self.attributes

    def _body(self, skip: tuple[int, ...] = (), pad: bytes = b"\x00") -> bytes:
        out = []
        tid = self.transaction_id
        items = (
            list(self.attributes.items()) + self.extra if self.extra else self.attributes.items()
        )
        for code, value in items:
            if code in skip:
                continue
            spec = ATTRIBUTES.get(code)
            raw = spec.encode(value, tid) if spec is not None else bytes(value)
            out.append(struct.pack("!HH", code, len(raw)))
            out.append(raw)
            if len(raw) % 4:
                out.append(pad * (4 - len(raw) % 4))
        return b"".join(out)

    def _header(self, body_length: int) -> bytes:
        return (
            struct.pack("!HHI", self.message_type, body_length, MAGIC_COOKIE) + self.transaction_id
        )

    def __bytes__(self) -> bytes:
        body = self._body()
        return self._header(len(body)) + body

    def encode(
        self,
        integrity_key: bytes | None = None,
        *,
        fingerprint: bool = False,
        integrity_sha256_key: bytes | None = None,
        pad: bytes = b"\x00",
    ) -> bytes:
        """Serialise, appending fresh MESSAGE-INTEGRITY(-SHA256) and FINGERPRINT as asked.

        Any such attributes already in :attr:`attributes` are left out. ``pad`` is the padding byte
        (RFC 8489 §14 lets senders choose; RFC 5769's vectors use spaces).
        """
        body = self._body((MESSAGE_INTEGRITY, MESSAGE_INTEGRITY_SHA256, FINGERPRINT), pad)
        if integrity_key is not None:
            head = self._header(len(body) + 24)
            mac = hmac.new(integrity_key, head + body, hashlib.sha1).digest()
            body += struct.pack("!HH", MESSAGE_INTEGRITY, 20) + mac
        if integrity_sha256_key is not None:
            head = self._header(len(body) + 36)
            mac = hmac.new(integrity_sha256_key, head + body, hashlib.sha256).digest()
            body += struct.pack("!HH", MESSAGE_INTEGRITY_SHA256, 32) + mac
        if fingerprint:
            head = self._header(len(body) + 8)
            crc = binascii.crc32(head + body) ^ FINGERPRINT_XOR
            body += struct.pack("!HHI", FINGERPRINT, 4, crc)
        return self._header(len(body)) + body

    def check_integrity(self, key: bytes) -> bool:
        """Verify MESSAGE-INTEGRITY (HMAC-SHA1, RFC 8489 §14.5) over the parsed bytes.

        Falls back to MESSAGE-INTEGRITY-SHA256 (§14.6) when only that one is present.
        """
        if self.integrity_offset >= 0:
            return _check_mac(self.raw, self.integrity_offset, 20, key, hashlib.sha1)
        if self.integrity_sha256_offset >= 0:
            return _check_mac(self.raw, self.integrity_sha256_offset, 32, key, hashlib.sha256)
        return False

    def __repr__(self) -> str:
        names = [ATTRIBUTES[c].name if c in ATTRIBUTES else f"0x{c:04x}" for c in self.attributes]
        return (
            f"Message({METHOD_NAMES.get(self.method, hex(self.method))} "
            f"{CLASS_NAMES.get(self.cls, hex(self.cls))} tid={self.transaction_id.hex()} {names})"
        )


def _check_mac(raw: bytes, offset: int, size: int, key: bytes, algo: Any) -> bool:
    # the MAC attribute's own length (SHA-256 may be truncated to >= 16 bytes, RFC 8489 §14.6)
    alen = (raw[offset + 2] << 8) | raw[offset + 3]
    # the length field covers everything up to and including the MAC attribute (§14.5)
    length = offset - HEADER_LENGTH + 4 + alen
    head = raw[:2] + struct.pack("!H", length) + raw[4:offset]
    expected = raw[offset + 4 : offset + 4 + alen]
    if alen > size or len(expected) != alen:
        return False
    return hmac.compare_digest(hmac.new(key, head, algo).digest()[:alen], expected)


def message_length(data: bytes) -> int:
    """Total length of the STUN message starting ``data`` from its header, or -1 if < 4 bytes."""
    if len(data) < 4:
        return -1
    return HEADER_LENGTH + ((data[2] << 8) | data[3])


def parse(data: bytes) -> Message:
    """Parse one whole STUN message; raise :class:`StunError` on any malformation.

    Checks: header size, zero top bits, magic cookie, 4-byte aligned length matching ``data``,
    attribute TLVs within bounds, FINGERPRINT (if present) last and correct.
    """
    data = bytes(data)
    if len(data) < HEADER_LENGTH:
        raise StunError("STUN message shorter than 20 bytes")
    msg_type, length, cookie = struct.unpack_from("!HHI", data)
    if msg_type & 0xC000:
        raise StunError("top two bits of a STUN message must be zero")
    if cookie != MAGIC_COOKIE:
        raise StunError("bad magic cookie")
    if length % 4:
        raise StunError("STUN message length not a multiple of 4")
    if len(data) != HEADER_LENGTH + length:
        raise StunError("STUN message length does not match the data")
    method = (msg_type & 0x000F) | ((msg_type & 0x00E0) >> 1) | ((msg_type & 0x3E00) >> 2)
    cls = msg_type & 0x0110
    tid = data[8:20]
    msg = Message(method, cls, tid, raw=data)
    attrs = msg.attributes
    pos = HEADER_LENGTH
    end = len(data)
    after_integrity = False
    while pos < end:
        if end - pos < 4:
            raise StunError("truncated attribute header")
        code, alen = struct.unpack_from("!HH", data, pos)
        vstart = pos + 4
        vend = vstart + alen
        if vend > end:
            raise StunError("attribute runs past the end of the message")
        value = data[vstart:vend]
        if code == FINGERPRINT:
            if vend + (-alen % 4) != end:
                raise StunError("FINGERPRINT is not the last attribute")
            crc = _dec_u32(value, tid)
            head = data[:2] + struct.pack("!H", vend - HEADER_LENGTH) + data[4:pos]
            if (binascii.crc32(head) ^ FINGERPRINT_XOR) != crc:
                raise StunError("FINGERPRINT mismatch")
            attrs.setdefault(code, crc)
        elif after_integrity and code != MESSAGE_INTEGRITY_SHA256:
            pass  # RFC 8489 §14.5: attributes after MESSAGE-INTEGRITY are ignored
        elif code in attrs:
            if code == XOR_PEER_ADDRESS:
                msg.extra.append((code, _dec_xor_address(value, tid)))
        else:
            spec = ATTRIBUTES.get(code)
            attrs[code] = spec.decode(value, tid) if spec is not None else value
            if code == MESSAGE_INTEGRITY:
                if alen != 20:
                    raise StunError("MESSAGE-INTEGRITY must be 20 bytes")
                msg.integrity_offset = pos
                after_integrity = True
            elif code == MESSAGE_INTEGRITY_SHA256:
                if alen < 16 or alen > 32 or alen % 4:
                    raise StunError("bad MESSAGE-INTEGRITY-SHA256 length")
                msg.integrity_sha256_offset = pos
                after_integrity = True
        pos = vend + (-alen % 4)
    if pos != end:
        raise StunError("attribute padding runs past the end of the message")
    return msg


def unknown_comprehension_required(msg: Message) -> tuple[int, ...]:
    """Attribute types in 0x0000–0x7FFF that we do not understand (RFC 8489 §6.3.1 → 420)."""
    return tuple(c for c in msg.attributes if c < 0x8000 and c not in ATTRIBUTES)


# --- ChannelData (RFC 8656 §12.4) ---------------------------------------------------------------


def is_channel_data(data: bytes) -> bool:
    """First two bits 0b01 mark ChannelData (RFC 8656 §12; RFC 7983 demultiplexing)."""
    return len(data) >= 4 and (data[0] & 0xC0) == 0x40


@dataclass(frozen=True, slots=True)
class ChannelData:
    """A ChannelData message (RFC 8656 §12.4): channel number 0x4000–0x7FFF and application data."""

    channel: int
    data: bytes

    @classmethod
    def parse(cls, data: bytes) -> ChannelData:
        if len(data) < 4:
            raise StunError("ChannelData shorter than 4 bytes")
        channel, length = struct.unpack_from("!HH", data)
        if not 0x4000 <= channel <= 0x7FFF:
            raise StunError("ChannelData channel number out of range")
        if length > len(data) - 4:
            raise StunError("ChannelData length exceeds the data")
        if len(data) - 4 - length > 3:
            raise StunError("ChannelData has trailing bytes beyond padding")
        return cls(channel, bytes(data[4 : 4 + length]))

    def encode(self, pad: bool = False) -> bytes:
        """Serialise; ``pad=True`` pads to 4 bytes as required over TCP/TLS (§12.5)."""
        out = struct.pack("!HH", self.channel, len(self.data)) + self.data
        if pad and len(self.data) % 4:
            out += b"\x00" * (4 - len(self.data) % 4)
        return out

    def __bytes__(self) -> bytes:
        return self.encode()


def stream_frame_length(buf: bytes | bytearray, pos: int = 0) -> int:
    """Length of the next STUN or (padded) ChannelData frame at ``buf[pos:]`` on a stream.

    Returns 0 if fewer than 4 bytes are buffered, -1 if the bytes cannot start either frame.
    """
    if len(buf) - pos < 4:
        return 0
    first = buf[pos]
    length = (buf[pos + 2] << 8) | buf[pos + 3]
    kind = first & 0xC0
    if kind == 0x40:
        return 4 + length + (-length % 4)
    if kind == 0x00:
        if length % 4:
            return -1
        return HEADER_LENGTH + length
    return -1

"""Configuration of the TURN server (STYLE.md §5): one frozen dataclass, checked on creation."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from .errors import ConfigError


@dataclass(frozen=True)
class TurnConfig:
    """Everything :class:`turn.server.TurnServer` and :class:`turn.handler.TurnHandler` need."""

    host: str = "127.0.0.1"
    """Address the UDP, TCP and TLS listeners bind to."""

    port: int = 3478
    """UDP and TCP listening port (0 = ephemeral, for tests)."""

    tls_port: int | None = 5349
    """TLS listening port; used only when ``tls_cert`` and ``tls_key`` are set (0 = ephemeral)."""

    tls_cert: str | None = None
    """Path to the PEM certificate chain for the TLS listener."""

    tls_key: str | None = None
    """Path to the PEM private key for the TLS listener."""

    realm: str = "parley"
    """Long-term credential realm (RFC 8489 §9.2)."""

    secrets: tuple[str, ...] = ()
    """TURN REST API shared secrets (coturn ``static-auth-secret``); several allow rotation."""

    users: tuple[tuple[str, str], ...] = ()
    """Static ``(username, password)`` pairs, for testing."""

    relay_address: str = "127.0.0.1"
    """Local address relay sockets bind to and that is advertised as XOR-RELAYED-ADDRESS."""

    relay_advertised_address: str | None = None
    """Address advertised instead of ``relay_address`` (e.g. a public IP behind 1:1 NAT)."""

    relay_port_min: int = 49152
    """Lowest relay port (inclusive); 0 together with ``relay_port_max`` 0 = ephemeral ports."""

    relay_port_max: int = 65535
    """Highest relay port (inclusive)."""

    allowed_peers: tuple[str, ...] = ("127.0.0.1/32",)
    """Allow-list of peer networks (CIDR); the relay's own media addresses. Ignored in general mode."""

    general_relay: bool = False
    """Opt-in open relay mode: any peer except the always-on deny list (see turn/policy.py)."""

    allow_loopback_peers: bool = False
    """Test-only: in general-relay mode, let loopback peers through the deny list."""

    user_quota: int = 100
    """Maximum simultaneous allocations per user (486 beyond)."""

    total_quota: int = 10000
    """Maximum simultaneous allocations in total (486 beyond)."""

    max_permissions: int = 32
    """Maximum permissions (peer IPs) per allocation (508 beyond)."""

    max_channels: int = 64
    """Maximum channel bindings per allocation (508 beyond)."""

    default_lifetime: int = 600
    """Allocation lifetime when the client asks for less or nothing (RFC 8656 §7.2)."""

    max_lifetime: int = 3600
    """Upper bound for a requested allocation lifetime."""

    permission_lifetime: int = 300
    """Permission lifetime (RFC 8656 §9: 300 s)."""

    channel_lifetime: int = 600
    """Channel binding lifetime (RFC 8656 §12: 600 s)."""

    nonce_lifetime: int = 600
    """Seconds a nonce stays valid before 438 Stale Nonce."""

    max_bps: int = 10_000_000
    """Per-allocation bandwidth cap in bytes per second, each direction (0 = unlimited)."""

    software: str | None = None
    """SOFTWARE attribute value in responses; None (default) sends none."""

    fingerprint: bool = True
    """Add FINGERPRINT to responses and indications we send."""

    unauthenticated_rate: float = 20.0
    """Answers to unauthenticated requests (401/438 challenges, Binding) per second per source
    IP address; beyond it and ``unauthenticated_burst`` they are dropped (reflection
    amplification). 0 = unlimited."""

    unauthenticated_burst: float = 40.0

    def __post_init__(self) -> None:
        for name in ("port", "relay_port_min", "relay_port_max"):
            value = getattr(self, name)
            if not 0 <= value <= 65535:
                raise ConfigError(f"{name} must be in 0..65535, got {value}")
        if self.tls_port is not None and not 0 <= self.tls_port <= 65535:
            raise ConfigError(f"tls_port must be in 0..65535, got {self.tls_port}")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("tls_cert and tls_key must be given together")
        if self.relay_port_min > self.relay_port_max:
            raise ConfigError("relay_port_min must not exceed relay_port_max")
        if (self.relay_port_min == 0) != (self.relay_port_max == 0):
            raise ConfigError("relay port range 0 means ephemeral and needs both bounds 0")
        for name in ("host", "relay_address"):
            try:
                ipaddress.ip_address(getattr(self, name))
            except ValueError as exc:
                raise ConfigError(f"{name} must be an IP address: {exc}") from exc
        for net in self.allowed_peers:
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError as exc:
                raise ConfigError(f"bad allowed peer network {net!r}: {exc}") from exc
        if not self.realm:
            raise ConfigError("realm must not be empty")
        if not self.secrets and not self.users:
            raise ConfigError("configure a shared secret or at least one static user")
        if any(not s for s in self.secrets):
            raise ConfigError("shared secrets must not be empty")
        for user in self.users:
            if len(user) != 2 or not user[0]:
                raise ConfigError("users must be (username, password) pairs")
        for name in ("user_quota", "total_quota", "max_permissions", "max_channels"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1")
        if not 0 < self.default_lifetime <= self.max_lifetime:
            raise ConfigError("need 0 < default_lifetime <= max_lifetime")
        for name in ("permission_lifetime", "channel_lifetime", "nonce_lifetime"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive")
        if self.max_bps < 0:
            raise ConfigError("max_bps must be >= 0")
        if self.unauthenticated_rate < 0 or self.unauthenticated_burst < 1:
            raise ConfigError("need unauthenticated_rate >= 0 and unauthenticated_burst >= 1")

    @property
    def tls_enabled(self) -> bool:
        return self.tls_cert is not None and self.tls_port is not None

"""The service configuration: composed once at the entry point from flags and environment."""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlparse

from parley.relay.config import MediaConfig


@dataclass(frozen=True)
class IceServer:
    """One entry of the ``ice_servers`` list sent to participants."""

    urls: tuple[str, ...]
    username: str | None = None
    credential: str | None = None


@dataclass(frozen=True)
class TurnSettings:
    """How participants reach the relay through TURN."""

    enabled: bool = True
    """Run the embedded TURN server (``--turn-port 0`` turns it off)."""

    port: int = 3478
    """UDP+TCP port of the embedded TURN server (0 here = an ephemeral port, for tests)."""

    tls_port: int = 5349
    """TLS port of the embedded TURN server (only with a certificate and key)."""

    listen_host: str = "127.0.0.1"
    """Address the embedded TURN server listens on."""

    public_host: str = ""
    """Host name put in ``turn:`` URLs; default: the host of the public URL."""

    tls_cert: str | None = None
    tls_key: str | None = None

    secret: str = ""
    """Shared secret for TURN REST API credentials (coturn ``static-auth-secret``)."""

    credential_ttl: int = 6 * 3600
    """Lifetime of the TURN credentials minted for each participant."""

    transports: tuple[str, ...] = ("udp", "tcp")
    """Which ``turn:`` URLs to hand out (``turns:`` is added when TLS is configured)."""

    external_urls: tuple[str, ...] = ()
    """Use these TURN URLs (e.g. coturn) instead of the embedded server."""

    external_username: str | None = None
    """Fixed credentials for the external TURN service (instead of minting from the secret)."""

    external_credential: str | None = None

    relay_ports: tuple[int, int] | None = None
    """UDP port range of the embedded server's relayed addresses."""

    def __post_init__(self) -> None:
        for port in (self.port, self.tls_port):
            if not 0 <= port <= 65535:
                raise ValueError(f"invalid TURN port {port}")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("--tls-cert and --tls-key go together")
        for transport in self.transports:
            if transport not in ("udp", "tcp"):
                raise ValueError(f"unknown TURN transport {transport!r}")
        for url in self.external_urls:
            if not url.startswith(("turn:", "turns:", "stun:")):
                raise ValueError(f"not a TURN URL: {url!r}")

    @property
    def embedded(self) -> bool:
        return self.enabled and not self.external_urls

    @property
    def tls_enabled(self) -> bool:
        return self.tls_cert is not None


# --- store, webhooks, reports (issue 9) ------------------------------------------------------


@dataclass(frozen=True)
class StoreSettings:
    """What is kept across restarts, and who is told (signaling/store.py, webhooks.py)."""

    data_dir: str = ""
    """Folder of the SQLite database and the kept secrets; "" with no database URL: nothing
    is persisted (embedding, unit tests)."""

    database_url: str = ""
    """postgresql://... (or sqlite://...) instead of SQLite in the data directory."""

    webhook_urls: tuple[str, ...] = ()
    webhook_secret: str = ""
    """Standard Webhooks signing secret (``whsec_`` + base64)."""

    webhook_backoff_base: float = 5.0
    """Seconds before the first retry; doubled per attempt up to ``webhook_backoff_max``."""

    webhook_backoff_max: float = 3600.0
    webhook_retry_window: float = 72 * 3600.0
    """Seconds an event is retried before it is abandoned (at least 24 h in production)."""

    webhook_timeout: float = 10.0
    report_interval: float = 5.0
    """Seconds between two quality samples of each track."""

    def __post_init__(self) -> None:
        for url in self.webhook_urls:
            if urlparse(url).scheme not in ("http", "https") or not urlparse(url).netloc:
                raise ValueError(f"--webhook-url must be an http(s) URL, got {url!r}")
        if self.webhook_urls and not self.webhook_secret:
            raise ValueError("webhooks need a signing secret (--webhook-secret)")
        if self.webhook_backoff_base <= 0 or self.webhook_backoff_max < self.webhook_backoff_base:
            raise ValueError("webhook backoff must be positive and below its maximum")
        if not 0.1 <= self.report_interval <= 3600:
            raise ValueError("the report interval must be between 0.1 and 3600 seconds")

    @property
    def persistent(self) -> bool:
        return bool(self.data_dir or self.database_url)


# --- end of issue 9 block ----------------------------------------------------------------------


@dataclass(frozen=True)
class ServiceConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    public_url: str = ""
    """Base of the join URLs; default http://<host>:<port>."""

    api_key: str = ""
    token_secret: bytes = b""
    """Key that signs join tokens (random per start unless configured)."""

    token_ttl: int = 4 * 3600
    """Seconds a join URL stays valid."""

    max_participants: int = 4
    ice_transport_policy: str = "all"
    media: MediaConfig = field(default_factory=MediaConfig)
    turn: TurnSettings = field(default_factory=TurnSettings)
    ended_sessions_kept: int = 10000
    """How many ended sessions the history keeps in memory."""
    recordings_dir: str | None = None
    """Where recordings are kept (created at start-up); None: ./parley-data/recordings,
    created when the first recording starts."""

    # --- limits, shutdown, HTTPS and proxies (issue 12) -----------------------------------------
    shutdown_timeout: float = 8.0
    """Seconds SIGTERM waits for pages to be told and peers to close before the process exits."""

    join_timeout: float = 10.0
    """Seconds a WebSocket may stay open without sending ``join``."""

    sessions_per_minute: float = 600.0
    """Session creations allowed per API key per minute (0: unlimited)."""

    joins_per_minute: float = 600.0
    """``join`` attempts allowed per client address per minute (0: unlimited)."""

    messages_per_second: float = 50.0
    """WebSocket messages allowed per connection per second, with a burst of 5 seconds' worth
    (0: unlimited)."""

    resume_grace: float = 45.0
    """Seconds a participant whose socket vanished (a network drop) stays listed as
    reconnecting, its media kept, for its page to resume without a full reconnect."""

    metrics_token: str = ""
    """When set, ``/metrics`` requires ``Authorization: Bearer <token>``."""

    metrics_host: str = ""
    """When set with ``metrics_port``, ``/metrics`` is served there only, not on ``port``."""

    metrics_port: int = 0

    trust_proxy: bool = False
    """Take the client address from ``X-Forwarded-For`` (set it only behind a proxy that
    overwrites that header)."""

    # --- media workers (issue 11) ---
    workers: int = 1
    """Media worker processes (``--workers``); 1: everything in this one process."""
    worker: bool = False
    """This process is one media worker of a control process (signaling/workers.py): sessions
    are not restored at start-up but adopted from the store when the control places them here."""
    recover_recordings: bool = True
    """Finalise recordings a killed run left behind at start-up (the first worker only)."""

    # --- several nodes (issue 11) ---
    redis_url: str = ""
    """``redis://`` (or ``rediss://``) URL of the cluster registry (``--redis-url``): this node is
    one member of a cluster that shares the store (``--database-url``); empty: standalone."""

    def _check_limits(self) -> None:
        for name in ("shutdown_timeout", "join_timeout", "resume_grace"):
            if not 0 < getattr(self, name) <= 600:
                raise ValueError(f"{name.replace('_', ' ')} must be between 0 and 600 seconds")
        for name in ("sessions_per_minute", "joins_per_minute", "messages_per_second"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name.replace('_', ' ')} must not be negative")
        if not 0 <= self.metrics_port <= 65535:
            raise ValueError(f"invalid metrics port {self.metrics_port}")
        if self.metrics_port and self.metrics_port == self.port:
            raise ValueError("the metrics port must differ from the HTTP port")

    @property
    def tls_enabled(self) -> bool:
        """HTTPS and WSS on ``port`` (the certificate and key also serve TURN over TLS)."""
        return self.turn.tls_enabled

    @property
    def scheme(self) -> str:
        return "https" if self.tls_enabled else "http"

    store: StoreSettings = field(default_factory=StoreSettings)

    def __post_init__(self) -> None:
        self._check_limits()
        if not 1 <= self.workers <= 64:
            raise ValueError("--workers must be from 1 to 64")
        if self.workers > 1 and not self.store.persistent:
            raise ValueError("--workers above 1 needs the store (--data-dir or --database-url)")
        if self.redis_url:
            if urlparse(self.redis_url).scheme not in ("redis", "rediss", "unix"):
                raise ValueError("--redis-url must start with redis://, rediss:// or unix://")
            if not self.store.database_url:
                raise ValueError(
                    "--redis-url needs the shared store: --database-url postgresql://..."
                )
        if not self.api_key:
            raise ValueError("an API key is required")
        if len(self.token_secret) < 16:
            raise ValueError("the token secret must be at least 16 bytes")
        if not 2 <= self.max_participants <= 32:
            raise ValueError("max participants must be between 2 and 32")
        if self.ice_transport_policy not in ("all", "relay"):
            raise ValueError("ice transport policy must be 'all' or 'relay'")
        if self.public_url and urlparse(self.public_url).scheme not in ("http", "https"):
            raise ValueError("the public URL must start with http:// or https://")

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return (self.public_url or f"{self.scheme}://{host}:{self.port}").rstrip("/")

    @property
    def turn_host(self) -> str:
        return self.turn.public_host or urlparse(self.base_url).hostname or self.host

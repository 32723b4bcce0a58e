"""Typed configuration: what `engine.config.load` produces and the runtime consumes.

Everything here is already validated (schema and semantic rules) and has `${ENV}` references
resolved; durations are seconds as floats. Each object keeps the `Pos` of the YAML node it came
from so that later errors (a step failing at run time, `engine test`) can still name
file:line:column.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:  # the runtime imports this module on hot paths: no crypto import here
    from engine.security.atrest import KeyRing

AckPolicy = Literal["commit", "processed", "delivered"]
ConflictPolicy = Literal["flag", "reject"]
Profile = Literal["production", "development"]


@dataclass(frozen=True)
class Pos:
    """Where a configuration value was written: 1-based line and column."""

    file: Path
    line: int
    column: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


@dataclass(frozen=True)
class ListenerTls:
    """`tls:` of a listener: its certificate and key; `client_ca` requires client certificates
    signed by that CA, `allow` narrows them to fingerprints or subjects. Paths are absolute."""

    cert: str
    key: str
    client_ca: str | None = None
    allow: tuple[str, ...] = ()


@dataclass(frozen=True)
class ClientTls:
    """`tls:` of a destination: `ca` replaces the system CAs, `cert` + `key` present a client
    certificate (mutual TLS), `verify: false` turns certificate checks off (logged)."""

    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    verify: bool = True


@dataclass(frozen=True)
class MllpListenerConfig:
    port: int
    host: str = "127.0.0.1"
    max_message_bytes: int = 10 * 1024 * 1024
    idle_timeout: float = 300.0
    max_connections: int = 512
    tls: ListenerTls | None = None
    # `plain: allow` lets a listener without TLS bind a non-loopback host.
    plain: str | None = None


@dataclass(frozen=True)
class Rate:
    """`count` requests per `seconds` (1, 60 or 3600); `text` as written, like `100/hour`."""

    count: int
    seconds: float
    text: str


@dataclass(frozen=True)
class RateLimit:
    """`rate_limit:` of an HTTP listener (engine.security.ratelimit). `per_ip` keys by the
    peer address (IPv6 by its /64); `per_client` by the client's identity (today the
    fingerprint of a verified client certificate). None = that limit is off."""

    per_ip: Rate | None = None
    per_client: Rate | None = None


DEFAULT_SERVE: tuple[str, ...] = ("fhir",)  # what an HTTP listener serves unless it says


@dataclass(frozen=True)
class HttpListenerConfig:
    """A FHIR REST endpoint: `path` is the FHIR base (`/fhir` serves `/fhir/Appointment`).
    No `rate_limit` (the default) means no request-rate limit on the listener."""

    port: int
    host: str = "127.0.0.1"
    path: str = "/fhir"
    max_body_bytes: int = 1024 * 1024
    max_connections: int = 512
    tls: ListenerTls | None = None
    plain: str | None = None  # as for MLLP
    rate_limit: RateLimit | None = None
    # `required`: every route but the public ones needs a credential (engine.security.
    # permissions); `none` (development profile only) serves everyone as admin.
    auth: Literal["required", "none"] = "required"
    # `fhir`: the FHIR API, fed to the listener's route; `admin`: the admin API and console,
    # /metrics and /health (engine.api). A listener serving only `admin` has no route.
    serve: tuple[str, ...] = DEFAULT_SERVE

    @property
    def fhir(self) -> bool:
        return "fhir" in self.serve


@dataclass(frozen=True)
class ListenerConfig:
    """Exactly one of `mllp` and `http` is set (the loader checks it)."""

    name: str
    pos: Pos
    mllp: MllpListenerConfig | None = None
    http: HttpListenerConfig | None = None
    ack: AckPolicy = "processed"
    # How long the `delivered` policy waits for the destinations before answering AE.
    ack_timeout: float = 30.0

    @property
    def address(self) -> tuple[str, int]:
        bound = self.mllp or self.http
        assert bound is not None  # the loader guarantees one
        return bound.host, bound.port


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff: delay n (1-based) = min(first * factor**(n-1), max) ± jitter."""

    attempts: int = 5
    first: float = 1.0
    max: float = 16.0
    factor: float = 2.0
    jitter: float = 0.2  # fraction of the delay, drawn uniformly from [-jitter, +jitter]


@dataclass(frozen=True)
class DestinationConfig:
    """One destination of a channel. `kind` names the registered destination type
    (`mllp`, `file`, ...) and `options` are its validated, env-resolved settings."""

    name: str
    channel: str
    kind: str
    options: dict[str, Any]
    pos: Pos
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    order_by: str | None = None  # field path; None = one strict FIFO lane


@dataclass(frozen=True)
class Condition:
    """A filter condition tree. `op` is one of the field tests
    (`equals`, `in`, `not_in`, `exists`, `matches`) with `field` and `value`,
    or a combinator (`all`, `any`, `not`) with `children`."""

    op: str
    pos: Pos
    field: str | None = None
    value: Any = None
    children: tuple[Condition, ...] = ()


@dataclass(frozen=True)
class StepSpec:
    """One channel step as written: `kind` is the registered step name (`set`, `map`, ...),
    `args` its validated arguments. The pipeline compiles it with the step registry."""

    kind: str
    args: Any
    pos: Pos
    index: int  # 1-based position in the channel's steps list


@dataclass(frozen=True)
class ChannelTest:
    name: str
    input: Path  # resolved against the configuration root
    pos: Pos
    # destination name -> {field path -> expected value}
    expect: dict[str, dict[str, str]] = field(default_factory=dict)
    # expected overall outcome: "delivered" (default when expect is given), "filtered", "error"
    outcome: str | None = None
    # the appointment's earlier version (for S13/S14 triggers and `updated` events)
    previous: Path | None = None


@dataclass(frozen=True)
class ChannelConfig:
    name: str
    file: Path
    pos: Pos
    description: str = ""
    accept_types: tuple[str, ...] = ()  # "SIU^S12"; empty = accept every type
    filter: Condition | None = None
    steps: tuple[StepSpec, ...] = ()
    destinations: tuple[DestinationConfig, ...] = ()
    dedupe_window: float = 86400.0  # seconds; 0 turns duplicate detection off
    tests: tuple[ChannelTest, ...] = ()
    # What an appointment conflict (unknown appointment, update after cancel, out of order,
    # double booking) does: `flag` stores it with a warning and an alert, `reject` fails the
    # channel (AE / 422) with the reason.
    conflicts: ConflictPolicy = "flag"


@dataclass(frozen=True)
class Table:
    """A mapping table: row key -> {column -> value}."""

    name: str
    file: Path
    rows: dict[str, dict[str, Any]]
    columns: frozenset[str]


@dataclass(frozen=True)
class LockoutConfig:
    """`security.lockout`: `failures` refusals of one credential within `window` seconds lock
    it for `lock_for` seconds (engine.security.identities.LockoutPolicy)."""

    failures: int = 5
    window: float = 15 * 60.0
    lock_for: float = 15 * 60.0


@dataclass(frozen=True)
class AlertWebhook:
    """`security.alerts.webhook`: where alerts are POSTed, signed with `secret` (whsec_...)."""

    url: str
    secret: str
    tls: ClientTls | None = None


@dataclass(frozen=True)
class BurstWatch:
    """`security.alerts.burst`: more than `reads` PHI reads or searches by one identity within
    `within` seconds raise one alert."""

    reads: int = 50
    within: float = 30.0


@dataclass(frozen=True)
class AccessHours:
    """`security.alerts.hours`: PHI access is expected from `start` to `end` (minutes after
    midnight; `end` <= `start` spans midnight) on `days` (0 = Monday), in `timezone`."""

    start: int
    end: int
    days: tuple[int, ...] = (0, 1, 2, 3, 4, 5, 6)
    timezone: str = "UTC"


@dataclass(frozen=True)
class AlertsConfig:
    """`security.alerts`: the burst watch is on by default; hours and the webhook only when
    written."""

    webhook: AlertWebhook | None = None
    burst: BurstWatch = field(default_factory=BurstWatch)
    hours: AccessHours | None = None


@dataclass(frozen=True)
class SecurityConfig:
    """`security:` of routes.yaml. `profile: production` (the default) turns every control on
    and makes `engine run` refuse to start without what they need (keys, authentication);
    `development` relaxes that for trying the engine on one machine, and says so at start."""

    profile: Profile = "production"
    lockout: LockoutConfig = field(default_factory=LockoutConfig)
    alerts: AlertsConfig = field(default_factory=AlertsConfig)
    # The at-rest keys (`security.encryption`); None: the store keeps values in clear.
    encryption: KeyRing | None = None

    @property
    def production(self) -> bool:
        return self.profile == "production"


@dataclass(frozen=True)
class ReloadConfig:
    """`reload:` of routes.yaml: `watch` makes the running engine reload when a configuration
    file changes, looking every `interval` seconds (engine.runtime.reload_watch)."""

    watch: bool = False
    interval: float = 1.0


@dataclass(frozen=True)
class EngineConfig:
    root: Path  # the folder holding routes.yaml; channels/ and transforms/ are beside it
    routes_file: Path
    store: str  # "sqlite:/absolute/path.db" after resolution against root
    listeners: dict[str, ListenerConfig]
    routes: dict[str, tuple[str, ...]]  # listener name -> channel names, in order
    channels: dict[str, ChannelConfig]
    tables: dict[str, Table]
    # IANA zone for HL7 times written without an offset (SIU -> FHIR, appointment state).
    timezone: str = "UTC"
    security: SecurityConfig = field(default_factory=SecurityConfig)
    reload: ReloadConfig = field(default_factory=ReloadConfig)

    @property
    def transforms_dir(self) -> Path:
        return self.root / "transforms"

"""Typed configuration: one validated object, loaded once from TOML plus overrides.

Cross-field rules (etcd timings, failover timings, OTLP endpoint) are checked
at load; a bad config fails with a message naming the field and the rule.
Nothing here reads the environment.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Self
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from citypost.errors import ConfigError


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class CityConfig(_Section):
    name: str = Field("dijon", pattern=r"^[a-z][a-z0-9-]{0,31}$")
    # 1.0 is the article's scale (34,000 lamps...); tests run a small slice.
    scale: float = Field(1.0, gt=0, le=1)
    seed: int = 7
    # A (class, group) with more devices than this is split into numbered groups,
    # so one actor never owns an unbounded share of the city.
    max_group_size: int = Field(2000, ge=1)


class SimConfig(_Section):
    # Simulated seconds per real second: 60 shows a day in 24 minutes.
    speed: float = Field(60.0, gt=0, le=100_000)
    # Where the simulated clock starts; None means now.
    start: datetime | None = None
    # The real instant the simulated clock reads `start`; None: when each clock is made.
    # The city's processes share it, or a post started 30 s after the city would run
    # 30 simulated minutes behind it at x60.
    origin: datetime | None = None
    # Multiplies every device's uplink interval; raise it to lighten the load.
    interval_factor: float = Field(1.0, gt=0)
    # Upper bound on uplinks per real second the simulated network server sends. Its one
    # publishing thread built and sent 2,300-2,900 a second on this 2-core machine with
    # both posts running; the clock's speed is fitted under this (see fleet.pacing).
    max_uplinks_per_s: float = Field(2400.0, gt=0)

    def start_or_now(self) -> datetime:
        return self.start if self.start is not None else datetime.now(UTC)


class RadioConfig(_Section):
    """The LoRaWAN radio the network server and the downlink gate plan for (EU868)."""

    # Class C downlinks and RX2 go at this data rate on 869.525 MHz. DR3 (SF9) as The
    # Things Network's EU868 plan: ChirpStack's default DR0 (SF12) takes ~7 times the
    # airtime per frame, and lamp controllers sit within SF9 range of a gateway here.
    rx2_dr: int = Field(3, ge=0, le=6)
    # ETSI EN 300 220 duty cycle: over a one-hour observation window, on the city's clock.
    duty_cycle_window_s: float = Field(3600.0, gt=0)
    # The network server's gRPC API (HOST:PORT) the downlink gate enqueues multicasts on:
    # a real ChirpStack's, or the simulated one's (the demo fills it in). None: the gate
    # has no multicast path and refuses group commands that need one.
    network_server_api: str | None = None
    network_server_api_token: str | None = None


class EtcdConfig(_Section):
    mode: Literal["local", "external"] = "local"
    members: int = Field(3, ge=1, le=7)
    endpoints: tuple[str, ...] = ()
    heartbeat_interval_ms: int = Field(50, ge=10)
    election_timeout_ms: int = Field(500, ge=50)
    # The leader defragments the members (one at a time; each is blocked meanwhile) this
    # often, those whose database file is at least this much, and this share, free space:
    # compaction frees pages, only a defragmentation gives the file's space back.
    defrag_interval_s: float = Field(3600.0, gt=0)
    defrag_min_free_mb: float = Field(64.0, ge=0)
    defrag_min_free_ratio: float = Field(0.5, ge=0, le=1)

    @model_validator(mode="after")
    def _rules(self) -> Self:
        if self.mode == "local" and self.members % 2 == 0:
            raise ValueError(f"members must be odd (1 or 3) for a local etcd, got {self.members}")
        if self.mode == "external" and not self.endpoints:
            raise ValueError("endpoints must list every member (host:port) when mode is 'external'")
        # etcd refuses to start otherwise.
        if self.election_timeout_ms < 5 * self.heartbeat_interval_ms:
            raise ValueError(
                f"election_timeout_ms ({self.election_timeout_ms}) must be at least 5 x "
                f"heartbeat_interval_ms ({self.heartbeat_interval_ms})"
            )
        return self


class MqttConfig(_Section):
    mode: Literal["local", "external"] = "local"
    host: str = "127.0.0.1"
    # None: a free loopback port for a local broker.
    port: int | None = Field(None, ge=1, le=65535)
    # A local broker keeps sessions and queued QoS 1 messages across its restarts.
    persistence: bool = True
    keepalive_s: int = Field(30, ge=5, le=3600)

    @model_validator(mode="after")
    def _rules(self) -> Self:
        if self.mode == "external" and self.port is None:
            raise ValueError("port is required when mode is 'external'")
        return self


class EdgeConfig(_Section):
    name: str = "edge-1"
    qos: Literal[0, 1] = 1
    # MQTT messages above this go to the dead letters unread.
    max_message_bytes: int = Field(65536, ge=256)
    # EU868 application payload limit at DR4+; LoRa frames above it cannot be real.
    lora_max_payload_bytes: int = Field(242, ge=11, le=242)
    # Dead letters keep at most this much of the raw payload.
    dead_letter_payload_bytes: int = Field(4096, ge=0)
    batch_max: int = Field(500, ge=1)
    batch_interval_ms: int = Field(50, ge=1)

    def dead_letter_topic(self, city: str) -> str:
        return f"citypost/{city}/dead-letters"


class FailoverConfig(_Section):
    lease_ttl_s: float = Field(2.0, gt=0)
    keepalive_interval_s: float = Field(0.25, gt=0)
    safety_margin_s: float = Field(0.5, ge=0)
    # Nobody could command for this long (a leader was seen, then none): the downlink
    # gate puts the devices in their declared fail-safe states. Real time.
    failsafe_after_s: float = Field(60.0, gt=0)

    @model_validator(mode="after")
    def _rules(self) -> Self:
        if self.failsafe_after_s <= self.lease_ttl_s:
            raise ValueError(
                f"failsafe_after_s ({self.failsafe_after_s}) must be > lease_ttl_s "
                f"({self.lease_ttl_s}): a normal takeover must not put the city in fail-safe"
            )
        if self.keepalive_interval_s >= self.lease_ttl_s / 3:
            raise ValueError(
                f"keepalive_interval_s ({self.keepalive_interval_s}) must be < lease_ttl_s / 3 "
                f"({self.lease_ttl_s / 3:.3f}) so two keepalives can be lost"
            )
        if self.safety_margin_s >= self.lease_ttl_s:
            raise ValueError(
                f"safety_margin_s ({self.safety_margin_s}) must be < lease_ttl_s ({self.lease_ttl_s})"
            )
        # etcd grants leases in whole seconds (LeaseGrantRequest.TTL is an integer).
        if self.lease_ttl_s != int(self.lease_ttl_s):
            raise ValueError(
                f"lease_ttl_s ({self.lease_ttl_s}) must be a whole number of seconds: "
                "etcd grants leases in whole seconds"
            )
        # The leader trusts its lease for TTL - margin after a keepalive was sent; if
        # one lost keepalive used that up, a healthy leader would demote itself.
        if self.lease_ttl_s - self.safety_margin_s <= 2 * self.keepalive_interval_s:
            raise ValueError(
                f"lease_ttl_s - safety_margin_s ({self.lease_ttl_s - self.safety_margin_s:.3f}) "
                f"must be > 2 x keepalive_interval_s ({2 * self.keepalive_interval_s:.3f}) "
                "so one lost keepalive does not demote a healthy leader"
            )
        return self


class PostConfig(_Section):
    # The post's name. Its edge holds a persistent MQTT session of its own with a
    # plain subscription, so every post receives every uplink. Not a $share group:
    # mosquitto (2.0.11 and 2.0.21 alike, checked) does not restore shared
    # subscriptions from persistence, so uplinks published after a broker restart
    # and before the group re-subscribed would be lost.
    name: str = Field("primary", pattern=r"^[a-z0-9][a-z0-9-]{0,31}$")
    grpc_host: str = "127.0.0.1"
    # The console's default address is 127.0.0.1:50051. None: a free loopback port.
    grpc_port: int | None = Field(50051, ge=1, le=65535)
    # The citizen app's listener (CitizenService only, server-only TLS, an app credential),
    # on grpc_host. None: a free loopback port. Without security.tls there is no such
    # listener: CitizenService stays on grpc_port, plaintext (the benchmarks' baseline).
    citizen_port: int | None = Field(None, ge=1, le=65535)
    rpc_deadline_s: float = Field(10.0, gt=0)
    command_ttl_s: float = Field(60.0, gt=0)
    command_max_attempts: int = Field(3, ge=1, le=20)
    # An actor that does not answer within this is treated as down and restored.
    actor_call_timeout_s: float = Field(10.0, gt=0)
    # Actors hand over a snapshot every this many events (the replay bound after a crash).
    snapshot_every: int = Field(20, ge=1)
    # Past this many events waiting for one actor, the edge stops taking telemetry.
    max_buffered_events: int = Field(2000, ge=10)
    # The Ray actors (processes) hosting the post's (class, group) units, balanced by
    # their devices' uplink rate (every group stays a unit with its own snapshot and
    # restore). A Ray actor is a ~45 MB process using about 0.01 core idle, and a call
    # costs ~2.5 ms of CPU here whatever it carries: a few hosts, not one per class.
    actor_hosts: int = Field(4, ge=1, le=64)
    # Restart intensity (Erlang/OTP): more crashes of actor processes than this within
    # the window makes the post report itself unhealthy.
    max_restarts: int = Field(10, ge=1)
    restart_window_s: float = Field(60.0, gt=0)
    ray_object_store_mb: int = Field(256, ge=64)
    # Finished commands (and their idempotency records) leave etcd this long after they
    # finished: etcd refuses every write once its database reaches its quota, and the
    # city's policies issue thousands of commands a day. The audit keeps what expired,
    # in one entry per batch. A client retrying with the same idempotency key after
    # this long makes a new command.
    finished_command_retention_s: float = Field(3600.0, ge=60)
    # Audit entries stay in etcd this long (what `citypost console audit` lists); every
    # post writes all of them to its audit file (run_dir/audit-<post>.jsonl) as it sees
    # them, so nothing of the audit is lost when etcd lets them go.
    audit_retention_s: float = Field(3600.0, ge=60)
    retention_sweep_s: float = Field(60.0, gt=0)


class ApprovalConfig(_Section):
    # The two-person rule (security.approval): which dangerous commands wait for a
    # second person, who that may be, and for how long before the command expires unsent.
    require_for: tuple[
        Literal[
            "bollards_lowered_sector",
            "bollards_raised_sector",
            "lamps_off_group",
            "signals_flashing",
        ],
        ...,
    ] = ("bollards_lowered_sector", "bollards_raised_sector", "lamps_off_group", "signals_flashing")
    approver: Literal["supervisor", "same_role"] = "supervisor"
    window_s: float = Field(300.0, ge=10, le=3600)


_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


class OidcConfig(_Section):
    # Operators may also log in with an ID token of the city's OpenID Connect provider
    # (security.oidc), found from its discovery document (<issuer>/.well-known/
    # openid-configuration). Off unless enabled; local accounts keep working beside it.
    enabled: bool = False
    # The provider, exactly as its ID tokens name it (`iss`): https, or http on a
    # loopback host only (a provider on this machine).
    issuer: str = ""
    # The city's client at the provider: the audience its ID tokens must name.
    client_id: str = ""
    # The ID-token claim (a string or a list of strings) whose values map to roles.
    role_claim: str = "groups"
    # The claim that names the operator: the citypost user is "oidc:<its value>".
    username_claim: str = "sub"
    # Claim value -> citypost roles (checked against the roles table at start); a user
    # whose values map to no role is refused.
    role_map: dict[str, tuple[str, ...]] = {}
    # An ID token issued longer ago than this (`iat`) is refused: a login uses a fresh one.
    max_age_s: float = Field(600.0, ge=30, le=86400)
    # The provider's CA bundle for HTTPS; None: the system's.
    ca_file: Path | None = None

    @model_validator(mode="after")
    def _rules(self) -> Self:
        if not self.enabled:
            return self
        url = urlsplit(self.issuer)
        loopback = (url.hostname or "") in _LOOPBACK_HOSTS
        if url.scheme != "https" and not (url.scheme == "http" and loopback):
            raise ValueError(
                f"issuer ({self.issuer!r}) must be an https URL (http only on a loopback host)"
            )
        if url.query or url.fragment:
            raise ValueError(f"issuer ({self.issuer!r}) must have no query or fragment")
        if not self.client_id:
            raise ValueError("client_id is required: the audience the ID tokens must name")
        if not self.role_claim or not self.username_claim:
            raise ValueError("role_claim and username_claim must name claims")
        if not self.role_map:
            raise ValueError("role_map must map at least one claim value to roles")
        empty = sorted(value for value, roles in self.role_map.items() if not roles)
        if empty:
            raise ValueError(f"role_map: claim values mapped to no role: {empty}")
        return self


class SecurityConfig(_Section):
    # Mutual TLS with the city's certificates on etcd (clients and peers), the broker
    # and every gRPC server, with the access rules that key on them. Off only to
    # measure what it costs (the benchmarks' baseline): a city never runs without it.
    tls: bool = True
    # The city's PKI (security.pki_store); None: run_dir/pki.
    pki_dir: Path | None = None
    # Operators' local accounts (security.account_book); None: run_dir/accounts.json.
    accounts_file: Path | None = None
    # Apps allowed on the citizen listener (security.apps: id, SHA-256 of the secret);
    # None: run_dir/apps.json.
    apps_file: Path | None = None
    # An operator's access token lives this long; the console renews it with the refresh
    # token (a shift long) without asking for the password again.
    access_token_s: float = Field(300.0, ge=30, le=3600)
    refresh_token_s: float = Field(12 * 3600.0, ge=300, le=7 * 24 * 3600)
    # Role -> permissions (security.policy); None: its defaults, the six former posts
    # plus supervisor, administrator, auditor, wallboard and sre. Checked at start.
    roles: dict[str, tuple[str, ...]] | None = None
    # Certificate kind -> role, for calls without an operator token; None: chaos -> sre.
    machine_roles: dict[str, str] | None = None
    # Logging in through the city's OpenID Connect provider (off by default).
    oidc: OidcConfig = OidcConfig()
    approval: ApprovalConfig = ApprovalConfig()


class AlarmRuleConfig(_Section):
    """One alarm type's rule (ISA-18.2 practice; applied by actors.alarm_rules)."""

    # The condition must hold this long (the city's seconds) before the alarm is raised.
    delay_on_s: float = Field(0.0, ge=0)
    # It must be gone this long before the alarm clears.
    delay_off_s: float = Field(0.0, ge=0)
    # Raised this many times within the window: chattering, held raised until the
    # condition has been gone `chatter_stable_s`, with one notification.
    chatter_count: int = Field(3, ge=2)
    chatter_window_s: float = Field(3600.0, gt=0)
    chatter_stable_s: float = Field(1800.0, ge=0)


def _default_alarm_rules() -> dict[str, AlarmRuleConfig]:
    return {
        # A camera's outage is often a short network drop: cleared once back 10 minutes.
        "camera_offline": AlarmRuleConfig(delay_off_s=600),
        # A band crossed for one reading is a gust: it must hold 10 minutes, and be
        # below again 15 minutes, before the room hears of it.
        "air_quality_poor": AlarmRuleConfig(delay_on_s=600, delay_off_s=900),
    }


class SilenceConfig(_Section):
    """When silence is an alarm (post.silence_watch), in the data's own time."""

    # A device is silent after this many of its own reporting periods (the registry's
    # report_interval_s) with no uplink, plus the grace; a device with no known period
    # uses `default_period_s`.
    missed_reports: float = Field(3.0, ge=1)
    grace_s: float = Field(120.0, ge=0)
    default_period_s: float = Field(3600.0, gt=0)
    # A gateway is silent when nothing came through it for this many of its expected
    # gaps between uplinks (its devices' rates summed), and at least `gateway_min_s`.
    gateway_expected_uplinks: float = Field(20.0, ge=1)
    gateway_min_s: float = Field(300.0, gt=0)
    # Infrastructure, in real seconds: no uplink at all while the edge is connected (the
    # network server is silent), and the edge's broker connection lost.
    network_server_silent_after_s: float = Field(30.0, gt=0)
    broker_lost_after_s: float = Field(10.0, gt=0)
    # The stream stopped this long (real seconds: a broker restart, a network cut) and came
    # back: every device's silence is timed afresh from then, for the uplinks lost in the
    # gap say nothing about the devices.
    stream_gap_s: float = Field(5.0, gt=0)
    # A silence must also last this long in real seconds: at a high simulated speed the
    # pipeline's own jitter (the simulated city and the post running a second late) spans
    # minutes of simulated time, longer than a 15-second bus's threshold at x538. At x1
    # it is far below any threshold.
    min_real_s: float = Field(10.0, ge=0)


class ShelveLimits(_Section):
    info: float = Field(1440.0, gt=0)
    minor: float = Field(480.0, gt=0)
    major: float = Field(120.0, gt=0)
    critical: float = Field(30.0, gt=0)


class AlarmsConfig(_Section):
    # Per alarm type; a type named here replaces its default rule, the others keep theirs.
    rules: dict[str, AlarmRuleConfig] = {}
    default_rule: AlarmRuleConfig = AlarmRuleConfig()
    # The longest an alarm of each severity may be shelved, in minutes: a critical alarm
    # comes back within the half hour whatever the operator asked.
    shelve_max_minutes: ShelveLimits = ShelveLimits()
    silence: SilenceConfig = SilenceConfig()

    def rule_table(self) -> dict[str, AlarmRuleConfig]:
        """Every type's rule: the defaults, with the ones config names in their place."""
        return {**_default_alarm_rules(), **self.rules}


class ObservabilityConfig(_Section):
    exporter: Literal["none", "console", "otlp"] = "none"
    otlp_endpoint: str | None = None
    service_name: str = "citypost"
    metric_interval_s: float = Field(10.0, gt=0)

    @model_validator(mode="after")
    def _rules(self) -> Self:
        if self.exporter == "otlp" and not self.otlp_endpoint:
            raise ValueError("otlp_endpoint is required when exporter is 'otlp'")
        return self


class WebConfig(_Section):
    """The web console's gateway (console/web): a process of its own, a client of the
    posts. `make demo` serves it; the city's tests start it only where they test it."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int | None = Field(8080, ge=1, le=65535)  # None: a free port, said at start
    workstation: str = "web"  # its certificate: console.<workstation> in the city's PKI


class Config(_Section):
    city: CityConfig = CityConfig()
    sim: SimConfig = SimConfig()
    radio: RadioConfig = RadioConfig()
    etcd: EtcdConfig = EtcdConfig()
    mqtt: MqttConfig = MqttConfig()
    edge: EdgeConfig = EdgeConfig()
    failover: FailoverConfig = FailoverConfig()
    post: PostConfig = PostConfig()
    observability: ObservabilityConfig = ObservabilityConfig()
    security: SecurityConfig = SecurityConfig()
    alarms: AlarmsConfig = AlarmsConfig()
    web: WebConfig = WebConfig()
    run_dir: Path = Path("run")

    @property
    def pki_dir(self) -> Path:
        return self.security.pki_dir or self.run_dir / "pki"

    @property
    def accounts_file(self) -> Path:
        return self.security.accounts_file or self.run_dir / "accounts.json"


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = tree
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{dotted}: {part} is a value, not a section")
        node = child
    node[leaf] = value


def parse_override(text: str) -> tuple[str, Any]:
    """`city.scale=0.01` -> ("city.scale", 0.01); the value is read as TOML, else as a string."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} must look like section.key=value")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return key.strip(), value


def _describe(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"]) or "config"
        message = item["msg"].removeprefix("Value error, ")
        lines.append(f"{where}: {message} (got {item.get('input')!r})")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def load_config(
    path: Path | None = None,
    overrides: Mapping[str, Any] | Iterable[tuple[str, Any]] = (),
) -> Config:
    """Load, merge overrides (dotted keys win over the file), validate once."""
    tree: dict[str, Any] = {}
    if path is not None:
        try:
            tree = tomllib.loads(Path(path).read_text())
        except FileNotFoundError as exc:
            raise ConfigError(f"config file {path} does not exist") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    items = overrides.items() if isinstance(overrides, Mapping) else overrides
    for dotted, value in items:
        _set_dotted(tree, dotted, value)
    try:
        return Config.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from exc

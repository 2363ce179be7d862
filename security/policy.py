"""Who may call what: roles -> permissions -> one rule per RPC. Pure; no I/O.

A permission is `<area>.<verb>`, some of them scoped by asset class
(`commands.send:street_lamp`); a role grants a set of them, `*` as the scope
for every class. Each RPC of the posts has exactly one `Rule` in `RULES`:
the permission it needs, and for scoped ones how to read the class from the
request. `PUBLIC` methods need no caller at all (health checks, logging in);
`AUTHENTICATED` ones need only a known caller (who am I, reflection). The server refuses to start when one of its methods has no rule
(`missing_rules`): a new RPC is denied until someone decides who may call it.

Roles follow the six former posts of the control room, plus the room
supervisor, the administrator, the auditor and the wallboard (`DEFAULT_ROLES`,
replaceable in config). Machines (the chaos tools' certificate) get a role by
their certificate's kind (`DEFAULT_MACHINE_ROLES`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from citypost.errors import ConfigError, PermissionDeniedError
from citypost.names import class_name as class_name  # re-exported: callers import it here
from protos.citypost.v1 import assets_pb2

# Every permission there is; a role naming another is a config error.
PERMISSIONS: frozenset[str] = frozenset(
    {
        "status.read",  # the posts' status, failover status, airtime
        "failover.operate",  # resign (a planned switchover)
        "assets.read",  # assets, their readings, the event stream
        "commands.read",
        "commands.send",  # scoped by asset class
        "commands.approve",  # the second person of a dangerous command
        # Send a dangerous command at once, without a second person: it raises an alarm
        # for the room and is marked in the audit (security.approval).
        "commands.emergency",
        "overrides.read",
        "overrides.set",  # scoped by asset class (set and end)
        "alarms.read",
        # Acknowledge, clear: scoped by the alarm's asset class; an alarm of no class (the
        # city's own: a gateway, the broker) by anyone who handles alarms of some class.
        "alarms.handle",
        "incidents.read",
        "incidents.write",
        "tasks.read",
        "tasks.write",
        "audit.read",
        "accounts.admin",
        "certificates.admin",
        # The citizen app's service. It is served on each post's citizen listener, whose
        # own guard (api.citizen_guard: an app credential) decides; the operators' port
        # does not serve it with TLS on. No role grants it: were a server to register the
        # service on the operators' port, its rules below would refuse every caller.
        "citizen.use",
    }
)
SCOPED: frozenset[str] = frozenset({"commands.send", "overrides.set", "alarms.handle"})
ANY_SCOPE = "*"

_READS = (
    "status.read",
    "assets.read",
    "commands.read",
    "overrides.read",
    "alarms.read",
    "incidents.read",
    "tasks.read",
)
_OPERATOR = (*_READS, "incidents.write", "tasks.write")

DEFAULT_ROLES: Mapping[str, tuple[str, ...]] = {
    # The six former posts of the city, now one room.
    "security-centre": (
        *_OPERATOR,
        "commands.send:camera",
        "commands.send:bollard",
        "overrides.set:bollard",
        "commands.emergency",
        "alarms.handle:camera",
        "alarms.handle:bollard",
    ),
    "municipal-police": (
        *_OPERATOR,
        "commands.send:bollard",
        "overrides.set:bollard",
        "commands.emergency",
        "alarms.handle:bollard",
        "alarms.handle:camera",
        "alarms.handle:company_car",
    ),
    "urban-supervision": (
        *_OPERATOR,
        "commands.send:street_lamp",
        "overrides.set:street_lamp",
        "commands.send:parking_spot",
        "commands.send:air_quality",
        "commands.send:water_meter",
        "commands.emergency",
        "alarms.handle:street_lamp",
        "alarms.handle:parking_spot",
        "alarms.handle:air_quality",
        "alarms.handle:water_meter",
    ),
    "traffic-control": (
        *_OPERATOR,
        "commands.send:traffic_signal",
        "overrides.set:traffic_signal",
        "commands.send:bus",
        "commands.emergency",
        "alarms.handle:traffic_signal",
        "alarms.handle:bus",
    ),
    # Citizens' reports, incidents, tasks, the welfare calls (water meters); no commands.
    "help-line": (*_OPERATOR, "alarms.handle:water_meter"),
    "snow-control": (
        *_OPERATOR,
        "commands.send:road_weather",
        "commands.emergency",
        "alarms.handle:road_weather",
    ),
    # The room's supervisor: every operator action, approvals, a planned switchover.
    "supervisor": (
        *_OPERATOR,
        "commands.send:*",
        "overrides.set:*",
        "alarms.handle:*",
        "commands.approve",
        "commands.emergency",
        "failover.operate",
    ),
    "administrator": ("status.read", "accounts.admin", "certificates.admin"),
    "auditor": ("status.read", "audit.read"),
    "wallboard": ("status.read", "assets.read", "alarms.read", "incidents.read", "tasks.read"),
    # The SRE team's drills (by certificate, see DEFAULT_MACHINE_ROLES): they read and
    # hand leadership over; operator load in a drill logs in as an operator.
    "sre": (*_READS, "failover.operate"),
}
# Certificate kind -> role, for calls that carry no operator token.
DEFAULT_MACHINE_ROLES: Mapping[str, str] = {"chaos": "sre"}


@dataclass(frozen=True)
class Rule:
    """What one RPC needs. `permission` None with `public`: nothing; None without:
    any authenticated caller. `scope` reads the asset class from the request."""

    permission: str | None
    scope: Callable[[Any], str] | None = None
    public: bool = False


PUBLIC = Rule(None, public=True)
AUTHENTICATED = Rule(None)


def _command_class(request: Any) -> str:
    """The class a command names; "" when it names only a device (the post reads the
    device's class and checks it then: a caller needs commands.send for some class here)."""
    value = request.command.asset_class
    return class_name(value) if value else ""


def _override_class(request: Any) -> str:
    return class_name(request.asset_class)


_OP = "/citypost.v1.OperatorService/"
_ADMIN = "/citypost.v1.PostAdmin/"
_CITIZEN = "/citypost.v1.CitizenService/"
_AUTH = "/citypost.v1.AuthService/"

RULES: Mapping[str, Rule] = {
    "/grpc.health.v1.Health/Check": PUBLIC,
    "/grpc.health.v1.Health/Watch": PUBLIC,
    # Lists every service, as reflection does: for known callers only.
    "/grpc.health.v1.Health/List": AUTHENTICATED,
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": AUTHENTICATED,
    _AUTH + "Login": PUBLIC,
    _AUTH + "Refresh": PUBLIC,  # the refresh token in the request is the credential
    _AUTH + "WhoAmI": AUTHENTICATED,
    _ADMIN + "GetStatus": Rule("status.read"),
    _ADMIN + "GetFailoverStatus": Rule("status.read"),
    _ADMIN + "GetAirtime": Rule("status.read"),
    _ADMIN + "Resign": Rule("failover.operate"),
    _ADMIN + "ListAudit": Rule("audit.read"),
    _OP + "ListAssets": Rule("assets.read"),
    _OP + "GetAsset": Rule("assets.read"),
    _OP + "WatchEvents": Rule("assets.read"),
    _OP + "GetAssetMap": Rule("assets.read"),
    _OP + "WatchAssetStates": Rule("assets.read"),
    _OP + "SendCommand": Rule("commands.send", _command_class),
    _OP + "GetCommand": Rule("commands.read"),
    _OP + "ListCommands": Rule("commands.read"),
    # Who may be the second person depends on the command and its requester
    # (security.approval, `security.approval.approver`): the post checks it.
    _OP + "ApproveCommand": Rule("commands.read"),
    _OP + "RejectCommand": Rule("commands.read"),
    _OP + "SetOverride": Rule("overrides.set", _override_class),
    # The override's class is known only from the override itself: the post checks it.
    _OP + "EndOverride": Rule("overrides.set"),
    _OP + "ListOverrides": Rule("overrides.read"),
    _OP + "ListAlarms": Rule("alarms.read"),
    # The alarm's class is known only from the alarm: the post checks it (as EndOverride).
    _OP + "AcknowledgeAlarm": Rule("alarms.handle"),
    _OP + "ClearAlarm": Rule("alarms.handle"),
    _OP + "ShelveAlarm": Rule("alarms.handle"),
    _OP + "UnshelveAlarm": Rule("alarms.handle"),
    _OP + "ListIncidents": Rule("incidents.read"),
    _OP + "CreateIncident": Rule("incidents.write"),
    _OP + "CreateTask": Rule("tasks.write"),
    _OP + "AssignTask": Rule("tasks.write"),
    _OP + "CloseTask": Rule("tasks.write"),
    _OP + "ListTasks": Rule("tasks.read"),
    # Not served here with TLS (see citizen.use): kept so such a server would refuse.
    _CITIZEN + "GetTrafficConditions": Rule("citizen.use"),
    _CITIZEN + "ReportIncident": Rule("citizen.use"),
    _CITIZEN + "FindParking": Rule("citizen.use"),
    _AUTH + "Logout": PUBLIC,  # the refresh token it carries is the credential
    _AUTH + "RevokeSessions": Rule("accounts.admin"),
}


def missing_rules(methods: Iterable[str], rules: Mapping[str, Rule] = RULES) -> list[str]:
    """The methods a server would serve without a rule (it must not start then)."""
    return sorted(m for m in methods if m not in rules)


@dataclass(frozen=True)
class Grants:
    """What a set of roles allows: unscoped permissions and, per scoped one, classes."""

    plain: frozenset[str]
    scoped: Mapping[str, frozenset[str]]

    def allows(self, permission: str, scope: str | None = None) -> bool:
        if permission not in SCOPED:
            return permission in self.plain
        classes = self.scoped.get(permission, frozenset())
        if ANY_SCOPE in classes:
            return True
        # A scoped rule checked without its class (EndOverride): any class will do here.
        return bool(classes) if scope is None else scope in classes


def _valid_classes() -> frozenset[str]:
    return frozenset(
        class_name(v)
        for v in assets_pb2.AssetClass.values()
        if v != assets_pb2.ASSET_CLASS_UNSPECIFIED
    )


def check_roles(roles: Mapping[str, Iterable[str]]) -> None:
    """ConfigError naming each permission or class a role table names that does not exist."""
    classes = _valid_classes() | {ANY_SCOPE}
    problems = []
    for role, permissions in roles.items():
        for granted in permissions:
            name, _, scope = granted.partition(":")
            if name not in PERMISSIONS:
                problems.append(f"{role}: unknown permission {name!r}")
            elif scope and name not in SCOPED:
                problems.append(f"{role}: {name} takes no asset class (got {granted!r})")
            elif scope and scope not in classes:
                problems.append(f"{role}: unknown asset class {scope!r} in {granted!r}")
            elif name in SCOPED and not scope:
                problems.append(f"{role}: {name} needs an asset class or * ({name}:*)")
    if problems:
        raise ConfigError("roles: " + "; ".join(problems))


class Policy:
    """The roles table and the rules, checked once; answers one question per call."""

    def __init__(
        self,
        roles: Mapping[str, Iterable[str]] = DEFAULT_ROLES,
        machine_roles: Mapping[str, str] = DEFAULT_MACHINE_ROLES,
        rules: Mapping[str, Rule] = RULES,
    ) -> None:
        table = {role: tuple(perms) for role, perms in roles.items()}
        check_roles(table)
        unknown = sorted(r for r in machine_roles.values() if r not in table)
        if unknown:
            raise ConfigError(f"machine_roles: unknown roles {unknown}")
        self.roles = table
        self.machine_roles = dict(machine_roles)
        self.rules = rules

    def grants(self, roles: Iterable[str]) -> Grants:
        plain: set[str] = set()
        scoped: dict[str, set[str]] = {}
        for role in roles:
            for granted in self.roles.get(role, ()):
                name, _, scope = granted.partition(":")
                if scope:
                    scoped.setdefault(name, set()).add(scope)
                else:
                    plain.add(name)
        return Grants(frozenset(plain), {k: frozenset(v) for k, v in scoped.items()})

    def rule(self, method: str) -> Rule | None:
        return self.rules.get(method)

    def check(self, method: str, roles: Iterable[str], request: Any | None) -> None:
        """PermissionDeniedError naming what is missing; nothing if allowed."""
        rule = self.rules.get(method)
        if rule is None:
            raise PermissionDeniedError(f"{method} has no access rule: refused", "")
        if rule.permission is None:
            return
        scope = rule.scope(request) if rule.scope is not None and request is not None else None
        scope = scope or None  # "": the request names no class
        if self.grants(roles).allows(rule.permission, scope):
            return
        needed = rule.permission + (f":{scope}" if scope else "")
        held = ", ".join(sorted(roles)) or "no role"
        raise PermissionDeniedError(f"permission {needed} is needed ({held} lacks it)", needed)

"""The citizen listener's guard: which app calls (its credential), from where (the
peer's address), and how much it may (limits keyed on those, not on anything
the caller chooses).

Phones carry no certificate of the city, so the citizen listener is server-only
TLS (security.grpc_tls.server_only_credentials) and every call but the health
check names its app: metadata `x-citypost-app: <app id>:<secret>`, checked
against the apps file (security.apps). Missing, malformed, unknown or wrong:
UNAUTHENTICATED naming what was missing; the audit gets the precise reason.

Limits, all token buckets (api.rate_limit), all in this post's memory:
- calls of any kind per (app, address): 10 a second, 100 at once, so a
  flood of reads cannot load the post either;
- reports (CitizenService, api.citizen) per (app, address), per app and per
  post; the per-reporter limit stays as a courtesy to honest apps, since the
  reporter id is the caller's to choose (12 made-up ids were 12 reports).

The address is the host part of the peer (`ipv4:1.2.3.4:5678` -> 1.2.3.4); an
IPv6 address counts by its /64, which one phone may fill with addresses of its
own choosing (privacy addresses). Behind a NAT (a carrier's CGNAT, a campus)
many phones share one IPv4 address, so one address's budget is small beside
the app's and the post's: one abuser exhausts its address (and its NAT
neighbours), never the city; it takes 20 addresses to exhaust an app's budget
and 40 the post's. The post's budget protects the control state (each report
is an etcd transaction) and the room, whatever the number of addresses.

Refusals go to the post's audit file, at most 5 then one every 10 s per
address, each naming how many were left out since, so a flood of refused calls
does not become a flood of audit lines.

`CitizenGuard` stands where the operators' `Authorizer` stands in the server's
interceptor (api.server takes one): the same calls, check_methods and admit,
with an app credential in place of tokens and certificates.
"""

from __future__ import annotations

import contextvars
import ipaddress
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection

from api.authorization import NOBODY, Audit, Caller
from api.rate_limit import KeyedRateLimiter, Limit, Refusal
from citypost.errors import CitypostError, ConfigError, ResourceExhaustedError, UnauthenticatedError
from protos.citypost.v1 import citizen_pb2, control_state_pb2
from security.apps import AppBook

APP_METADATA = "x-citypost-app"
CITIZEN_SERVICE = citizen_pb2.DESCRIPTOR.services_by_name["CitizenService"].full_name
_HEALTH = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
# What needs no credential: a load balancer's health probe knows no app.
PUBLIC_METHODS = frozenset({f"/{_HEALTH}/Check", f"/{_HEALTH}/Watch"})
# What the citizen listener may serve at all.
SERVED_SERVICES = frozenset({CITIZEN_SERVICE, _HEALTH, reflection.SERVICE_NAME})
_CREDENTIAL_REFUSED = (
    f"app credential refused ({APP_METADATA}): unknown app or wrong secret; "
    "update the app, or ask the city for a new credential"
)


@dataclass(frozen=True)
class AppCaller:
    """Who calls the citizen listener: the app ("" on a post without TLS, where no app
    is checked) and the address it calls from (`peer_key`)."""

    app: str
    peer: str

    @property
    def actor(self) -> str:
        """As the audit names it."""
        return f"app:{self.app}@{self.peer}" if self.app else f"peer:{self.peer}"


# Set by the guard for the servicer (its report limits key on it).
app_caller: contextvars.ContextVar[AppCaller | None] = contextvars.ContextVar(
    "citypost_app_caller", default=None
)


# --- pure parts ---------------------------------------------------------------------------


def parse_app_credential(metadata: Sequence[tuple[str, Any]]) -> tuple[str, str]:
    """(app id, secret) from the call's metadata; UnauthenticatedError naming what is
    missing or malformed."""
    values = [value for key, value in metadata if key == APP_METADATA]
    if not values:
        raise UnauthenticatedError(
            f"no app credential: the citizen app sends {APP_METADATA}: <app id>:<secret>"
        )
    if len(values) > 1:
        raise UnauthenticatedError(f"{APP_METADATA} is given {len(values)} times: send it once")
    raw = values[0]
    text = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
    app, sep, secret = text.strip().partition(":")
    if not sep or not app or not secret:
        raise UnauthenticatedError(
            f"{APP_METADATA} is not '<app id>:<secret>'"
            + ("" if sep else " (no ':')")
            + (" (no app id)" if sep and not app else "")
            + (" (no secret)" if sep and app and not secret else "")
        )
    return app, secret


def peer_key(peer: str) -> str:
    """The part of gRPC's peer string a caller cannot choose per call: the IPv4 address,
    an IPv6 address's /64 (`2001:db8:1:2::/64`), or the whole string for anything else
    (a Unix socket). `ipv4:1.2.3.4:5678` -> `1.2.3.4`."""
    scheme, sep, rest = unquote(peer).partition(":")
    if not sep:
        return peer or "unknown"
    if scheme == "ipv4":
        host = rest.rpartition(":")[0] or rest
        return host
    if scheme == "ipv6":
        host = rest.rpartition(":")[0] if rest.startswith("[") else rest
        host = host.strip("[]").partition("%")[0]  # a zone id says nothing of the sender
        try:
            address = ipaddress.IPv6Address(host)
        except ValueError:
            return host
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network(f"{address}/64", strict=False))
    return peer


@dataclass(frozen=True)
class Budget:
    """A limit's size: `per_minute` on average, `burst` at once."""

    per_minute: float
    burst: int

    def limiter(
        self, monotonic: Callable[[], float], *, max_keys: int = 100_000
    ) -> KeyedRateLimiter:
        return KeyedRateLimiter(
            self.per_minute / 60.0, self.burst, max_keys=max_keys, monotonic=monotonic
        )

    def text(self) -> str:
        if self.per_minute >= 1:
            return f"at most {self.per_minute:g} a minute, {self.burst} at once"
        return f"at most {self.per_minute * 60:g} an hour, {self.burst} at once"


# Calls of any kind per (app, address): 10 a second, 100 at once.
CALLS_PER_ADDRESS = Budget(600.0, 100)


@dataclass(frozen=True)
class ReportBudgets:
    """The report limits keyed on the caller. One address is 1/20 of an app and 1/40 of
    the post: one abuser cannot take a city's budget from one address."""

    per_address: Budget = Budget(3.0, 10)
    per_app: Budget = Budget(60.0, 60)
    per_post: Budget = Budget(120.0, 120)


class ReportLimits:
    """The report limits a caller passes, narrowest first: its address (with its app),
    its app, the post. Only the address's memory grows with callers (bounded)."""

    def __init__(
        self,
        budgets: ReportBudgets = ReportBudgets(),
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.budgets = budgets
        self._address = budgets.per_address.limiter(monotonic)
        self._app = budgets.per_app.limiter(monotonic, max_keys=1_000)
        self._post = budgets.per_post.limiter(monotonic, max_keys=1)

    def limits(self, caller: AppCaller) -> list[Limit]:
        budgets = self.budgets
        with_app = f" with app {caller.app}" if caller.app else ""
        found = [
            Limit(
                f"too many reports from this address ({caller.peer}){with_app} "
                f"({budgets.per_address.text()})",
                self._address,
                f"{caller.app}|{caller.peer}",
            )
        ]
        if caller.app:  # without TLS no app is known: the post's budget covers them
            found.append(
                Limit(
                    f"too many reports through app {caller.app} ({budgets.per_app.text()})",
                    self._app,
                    caller.app,
                )
            )
        found.append(
            Limit(
                f"too many reports to this post from all citizens ({budgets.per_post.text()})",
                self._post,
                "",
            )
        )
        return found


def exhausted(refusal: Refusal) -> ResourceExhaustedError:
    """The caller's answer: which limit (named with its size) and when to retry."""
    return ResourceExhaustedError(
        f"{refusal.limit.name}; retry in {max(1, math.ceil(refusal.wait_s))} s"
    )


# --- refusals into the audit ---------------------------------------------------------------


class RefusalAudit:
    """Refused citizen calls into the post's audit file, throttled per address: at most
    `burst` at once then one every `every_s`; the next entry counts those left out."""

    def __init__(
        self,
        audit: Audit | None,
        *,
        every_s: float = 10.0,
        burst: int = 5,
        now: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        max_addresses: int = 10_000,
    ) -> None:
        self._audit = audit
        self._now = now
        self._limiter = KeyedRateLimiter(
            1.0 / every_s, burst, max_keys=max_addresses, monotonic=monotonic
        )
        self._left_out: OrderedDict[str, int] = OrderedDict()
        self._max = max_addresses

    def record(self, *, caller: AppCaller, target: str, error: CitypostError, reason: str) -> None:
        """One refusal: `error` is what the caller heard, `reason` the precise cause."""
        if self._audit is None:
            return
        if self._limiter.try_acquire(caller.peer) > 0:
            self._left_out[caller.peer] = self._left_out.pop(caller.peer, 0) + 1
            while len(self._left_out) > self._max:
                self._left_out.popitem(last=False)
            return
        left_out = self._left_out.pop(caller.peer, 0)
        detail = f"{type(error).__name__}: {reason}"
        if left_out:
            detail += f" (and {left_out} more refusals from {caller.peer} not audited since)"
        self._audit(
            control_state_pb2.AuditEntry(
                at_ms=int(self._now() * 1000),
                actor=caller.actor,
                action="rpc.refused",
                target=target,
                outcome=control_state_pb2.AUDIT_REFUSED,
                detail=detail,
            )
        )


# --- the guard -----------------------------------------------------------------------------


class _Refused(Exception):
    """Inside the guard: the error for the caller and the reason for the audit."""

    def __init__(self, error: CitypostError, reason: str) -> None:
        super().__init__(reason)
        self.error = error
        self.reason = reason


class CitizenGuard:
    """Every call of the citizen listener: the app credential, then the calls budget of
    its (app, address). Sets `app_caller` for the servicer."""

    def __init__(
        self,
        apps: AppBook,
        *,
        refusals: RefusalAudit,
        calls: Budget = CALLS_PER_ADDRESS,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._apps = apps
        self._refusals = refusals
        self._calls_budget = calls
        self._calls = calls.limiter(monotonic)

    def check_methods(self, methods: Collection[str]) -> None:
        """The listener's start: only the citizen service, health and reflection."""
        foreign = sorted(
            m for m in methods if m.count("/") != 2 or m.split("/")[1] not in SERVED_SERVICES
        )
        if foreign:
            raise ConfigError(
                "the citizen listener serves only CitizenService and health; these would "
                "be reachable with an app credential alone: " + ", ".join(foreign)
            )

    def _app_of(self, metadata: Sequence[tuple[str, Any]], peer: str) -> AppCaller:
        try:
            app, secret = parse_app_credential(metadata)
        except UnauthenticatedError as error:
            raise _Refused(error, error.message) from None
        reason = self._apps.refusal(app, secret)
        if reason is not None:
            raise _Refused(UnauthenticatedError(_CREDENTIAL_REFUSED), reason)
        return AppCaller(app, peer)

    def identify(self, metadata: Sequence[tuple[str, Any]], context: Any) -> Caller:
        """The app as a caller; UnauthenticatedError for a missing or bad credential."""
        try:
            found = self._app_of(metadata, peer_key(context.peer()))
        except _Refused as refused:
            raise refused.error from None
        return Caller(f"app:{found.app}")

    def admit(
        self, method: str, metadata: Sequence[tuple[str, Any]], context: Any, request: Any
    ) -> Caller:
        if method in PUBLIC_METHODS:
            return NOBODY
        peer = peer_key(context.peer())
        caller = AppCaller("", peer)
        try:
            caller = self._app_of(metadata, peer)
            wait = self._calls.try_acquire(f"{caller.app}|{peer}")
            if wait > 0:
                error = ResourceExhaustedError(
                    f"too many calls from this address ({peer}) with app {caller.app} "
                    f"({self._calls_budget.text()}); retry in {max(1, math.ceil(wait))} s"
                )
                raise _Refused(error, error.message)
        except _Refused as refused:
            self._refusals.record(
                caller=caller, target=method, error=refused.error, reason=refused.reason
            )
            raise refused.error from None
        app_caller.set(caller)
        return Caller(f"app:{caller.app}")

    def refused(self, method: str, caller: Caller, error: Exception, context: Any) -> None:
        who = AppCaller(caller.name.removeprefix("app:"), peer_key(context.peer()))
        message = getattr(error, "message", str(error))
        wrapped = error if isinstance(error, CitypostError) else CitypostError(message)
        self._refusals.record(caller=who, target=method, error=wrapped, reason=message)

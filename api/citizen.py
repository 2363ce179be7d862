"""CitizenService: traffic by commune, incident reports, nearest free parking.

Reads are anonymous and answer from what the post already holds: the latest
telemetry per device (the edge's `MemorySink.latest`) and the control state.
A report carries a pseudonymous reporter id; it is validated, rate-limited, and
becomes an incident through the dispatcher (the one writer), which also opens
the departments' tasks. Nothing personal is answered: areas are communes,
parking spaces are sensors.

Rate limits: per reporter (a courtesy: the id is the caller's to choose), and,
given `limits` (api.citizen_guard.ReportLimits), per (app, address), per app
and per post, which the caller cannot choose. One token from each or from
none; invalid reports and retries of answered ones take none.

Duplicates: given `duplicates` (RecentReports), a report of the same kind in
the same commune within 150 m and 30 minutes of one that opened an incident,
still open, is attached to it: the answer is that incident's id with
`merged`, and the post's audit file gets `citizen.report.merged` with the
report's place and text. The incident record itself is unchanged (the
dispatcher, the one writer, has no call to add a report to an incident yet).
The memory of recent reports is this post's: a restart or a failover forgets
it, and a report there opens a new incident.

Traffic level from the mean queue at a commune's signals (vehicles waiting on
the controlled approach, as the controllers report it): below 3 FLUID, below 6
DENSE, else CONGESTED; no signal heard in the commune: TRAFFIC_LEVEL_UNSPECIFIED
(unknown). A simulated junction averages about 0.5 at night, 3 at midday and
6-7 at the rush hours.

Idempotency: a bounded in-memory map (app, reporter_id, idempotency_key) ->
(incident_id, merged), least recently used forgotten first. It does not survive a
restart or a failover; the control state's `idempotency/` records will, once
the dispatcher writes one in the incident's own transaction.
"""

from __future__ import annotations

import asyncio
import difflib
import hashlib
import math
import time
import unicodedata
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from actors.decisions import OpenIncident
from actors.geo import haversine_m
from actors.incidents import nearest_commune, validate_citizen_report
from api.authorization import Audit
from api.citizen_guard import AppCaller, RefusalAudit, ReportLimits, app_caller, exhausted, peer_key
from api.rate_limit import KeyedRateLimiter, Limit, acquire_all
from api.server import Service
from bridges.registry import Device, DeviceRegistry
from citypost.errors import (
    InfrastructureError,
    InvalidArgumentError,
    NotFoundError,
)
from failover.control_state import INCIDENTS, ControlState, FencedError, incident_key
from fleet.dijon import BOUNDS, COMMUNES
from post.dispatcher import Dispatcher
from protos.citypost.v1 import (
    assets_pb2,
    citizen_pb2,
    citizen_pb2_grpc,
    control_state_pb2,
    operations_pb2,
    telemetry_pb2,
)

SERVICE_NAME = citizen_pb2.DESCRIPTOR.services_by_name["CitizenService"].full_name
REPORT_METHOD = f"/{SERVICE_NAME}/ReportIncident"

# Traffic levels by mean queue length at the signals (vehicles).
DENSE_FROM_QUEUE = 3.0
CONGESTED_FROM_QUEUE = 6.0

# Reports: 5 per 10 minutes on average, at most 3 at once.
REPORTS_PER_WINDOW = 5
REPORT_WINDOW_S = 600.0
REPORT_BURST = 3

# Duplicates: the same kind, commune and place (this close to the first report) within
# this long of it are one incident. 150 m is a crossing and its approaches; 30 minutes
# is how long the first witnesses of an accident keep reporting it.
MERGE_RADIUS_M = 150.0
MERGE_WINDOW_MS = 30 * 60 * 1000

MAX_REPORTER_ID_CHARS = 64
MAX_IDEMPOTENCY_KEY_CHARS = 128
MAX_REMEMBERED_REPORTS = 10_000

DEFAULT_PARKING_LIMIT = 5
MAX_PARKING_LIMIT = 50

_PAGE = 500


def default_report_limiter(*, monotonic: Callable[[], float] = time.monotonic) -> KeyedRateLimiter:
    """The citizens' default: 5 reports per 10 minutes per reporter, burst 3."""
    return KeyedRateLimiter(REPORTS_PER_WINDOW / REPORT_WINDOW_S, REPORT_BURST, monotonic=monotonic)


def citizen_service(servicer: CitizenService) -> Service:
    """The servicer as the post's gRPC server registers it."""
    return Service(SERVICE_NAME, citizen_pb2_grpc.add_CitizenServiceServicer_to_server, servicer)


# --- pure parts -----------------------------------------------------------------------


def traffic_level(mean_queue: float | None) -> citizen_pb2.TrafficLevel.ValueType:
    if mean_queue is None:
        return citizen_pb2.TRAFFIC_LEVEL_UNSPECIFIED
    if mean_queue < DENSE_FROM_QUEUE:
        return citizen_pb2.FLUID
    if mean_queue < CONGESTED_FROM_QUEUE:
        return citizen_pb2.DENSE
    return citizen_pb2.CONGESTED


def _slug(text: str) -> str:
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    return "-".join(ascii_text.strip().lower().replace("'", " ").replace("-", " ").split())


_COMMUNE_BY_SLUG: Mapping[str, str] = {_slug(c.name): c.name for c in COMMUNES}


def resolve_commune(asked: str) -> str:
    """The commune's official name; case, accents, spaces and hyphens do not matter."""
    name = _COMMUNE_BY_SLUG.get(_slug(asked))
    if name is not None:
        return name
    shown = asked if len(asked) <= 64 else asked[:64] + "…"
    close = difflib.get_close_matches(_slug(asked), list(_COMMUNE_BY_SLUG), n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(_COMMUNE_BY_SLUG[s] for s in close)}?" if close else ""
    valid = ", ".join(c.name for c in COMMUNES)
    raise NotFoundError(
        f"commune: {shown!r} is not a commune of the metropolis{hint} (valid: {valid})"
    )


def _inside(latitude: float, longitude: float) -> bool:
    south, west, north, east = BOUNDS
    return south <= latitude <= north and west <= longitude <= east


@dataclass
class _Area:
    queues: list[int]
    delays: list[float]
    open_incidents: int = 0

    def to_proto(self, commune: str) -> citizen_pb2.AreaTraffic:
        mean_queue = sum(self.queues) / len(self.queues) if self.queues else None
        return citizen_pb2.AreaTraffic(
            commune=commune,
            level=traffic_level(mean_queue),
            mean_queue_length=mean_queue or 0.0,
            mean_bus_delay_s=sum(self.delays) / len(self.delays) if self.delays else 0.0,
            open_incidents=self.open_incidents,
        )


def traffic_by_commune(
    signals: Iterable[tuple[Device, telemetry_pb2.Telemetry]],
    buses: Iterable[telemetry_pb2.Telemetry],
    incidents: Iterable[operations_pb2.Incident],
) -> dict[str, citizen_pb2.AreaTraffic]:
    """Every commune's traffic from the latest readings and the incidents (closed ones skipped)."""
    areas = {c.name: _Area([], []) for c in COMMUNES}
    for device, item in signals:
        area = areas.get(device.commune)
        if area is not None and item.WhichOneof("reading") == "traffic_signal":
            area.queues.append(item.traffic_signal.queue_length)
    for item in buses:
        if item.WhichOneof("reading") != "vehicle":
            continue
        where = item.vehicle
        # A bus without a fix (0, 0) or off the map is in no commune.
        if math.isfinite(where.delay_s) and _inside(where.latitude, where.longitude):
            areas[nearest_commune(where.latitude, where.longitude)].delays.append(where.delay_s)
    for incident in incidents:
        if incident.closed:
            continue
        commune = incident.commune
        if not commune and _inside(incident.location.latitude, incident.location.longitude):
            commune = nearest_commune(incident.location.latitude, incident.location.longitude)
        if commune in areas:
            areas[commune].open_incidents += 1
    return {name: area.to_proto(name) for name, area in areas.items()}


def nearest_free_spaces(
    free: Sequence[Device], latitude: float, longitude: float, limit: int
) -> citizen_pb2.FindParkingResponse:
    """The `limit` nearest of the free spaces, and how many are free in the nearest one's zone."""
    ranked = sorted(
        ((haversine_m(latitude, longitude, d.latitude, d.longitude), d.dev_eui, d) for d in free),
        key=lambda entry: (entry[0], entry[1]),
    )[:limit]
    spaces = [
        citizen_pb2.ParkingSpace(
            spot_id=device.dev_eui,
            zone=device.group,
            location=operations_pb2.GeoPoint(latitude=device.latitude, longitude=device.longitude),
            distance_m=distance,
        )
        for distance, _, device in ranked
    ]
    zone = spaces[0].zone if spaces else None
    in_zone = sum(1 for d in free if d.group == zone)
    return citizen_pb2.FindParkingResponse(spaces=spaces, free_in_zone=in_zone)


def check_limit(limit: int) -> int:
    if limit == 0:
        return DEFAULT_PARKING_LIMIT
    if not 1 <= limit <= MAX_PARKING_LIMIT:
        raise InvalidArgumentError(
            f"limit: must be between 1 and {MAX_PARKING_LIMIT} (0 means {DEFAULT_PARKING_LIMIT}),"
            f" got {limit}"
        )
    return limit


def check_location(field: str, point: operations_pb2.GeoPoint) -> tuple[float, float]:
    south, west, north, east = BOUNDS
    for name, value, low, high in (
        ("latitude", point.latitude, south, north),
        ("longitude", point.longitude, west, east),
    ):
        if not math.isfinite(value):
            raise InvalidArgumentError(f"{field}.{name}: must be a finite number")
        if not low <= value <= high:
            raise InvalidArgumentError(
                f"{field}.{name}: {value} is outside the metropolis ({low}..{high})"
            )
    return point.latitude, point.longitude


def check_token(field: str, value: str, max_chars: int) -> str:
    """A required identifier: 1..max_chars printable characters, no spaces."""
    if not value:
        raise InvalidArgumentError(f"{field}: required")
    if len(value) > max_chars:
        raise InvalidArgumentError(f"{field}: {len(value)} characters, at most {max_chars}")
    if not value.isprintable() or any(ch.isspace() for ch in value):
        raise InvalidArgumentError(f"{field}: printable characters only, without spaces")
    return value


def report_originator(reporter_id: str, idempotency_key: str) -> str:
    """The incident's `reported_by`: the pseudonym plus a digest of the report's key.

    One originator per report, so two reports of one reporter are two incidents
    even within the same millisecond; the key itself is not stored.
    """
    digest = hashlib.sha256(idempotency_key.encode()).hexdigest()[:12]
    return f"{reporter_id}#{digest}"


def reporter_of(app: str, reporter_id: str) -> str:
    """A reporter as the post knows it: its id within its app (two apps may both have an
    "alice"); the bare id on a post without TLS, where no app is known."""
    return f"{app}/{reporter_id}" if app else reporter_id


def validate_report(request: citizen_pb2.ReportIncidentRequest, app: str = "") -> OpenIncident:
    """The request checked and turned into an incident; InvalidArgumentError names the field."""
    reporter = reporter_of(
        app, check_token("reporter_id", request.reporter_id, MAX_REPORTER_ID_CHARS)
    )
    key = check_token("idempotency_key", request.idempotency_key, MAX_IDEMPOTENCY_KEY_CHARS)
    if not request.HasField("location"):
        raise InvalidArgumentError("location: required")
    try:
        return validate_citizen_report(
            request.kind,
            request.location.latitude,
            request.location.longitude,
            request.text,
            reporter=report_originator(reporter, key),
        )
    except InvalidArgumentError as error:
        # Name the field as the request spells it.
        if error.message.startswith(("latitude:", "longitude:")):
            raise InvalidArgumentError(f"location.{error.message}") from error
        raise


@dataclass(frozen=True)
class _Opened:
    incident_id: str
    kind: int
    commune: str
    latitude: float
    longitude: float
    at_ms: int


@dataclass(frozen=True)
class Duplicate:
    incident_id: str
    distance_m: float
    age_ms: int


class RecentReports:
    """The incidents citizens' reports opened lately, to merge a report of the same thing
    into them: the same kind, the same commune, within `radius_m` of the report that
    opened it and within `window_ms` after it (not chained: a slow trickle of reports
    along a street does not stretch one incident for ever).

    In this post's memory, at most `max_remembered` (oldest forgotten first).
    """

    def __init__(
        self,
        *,
        radius_m: float = MERGE_RADIUS_M,
        window_ms: int = MERGE_WINDOW_MS,
        max_remembered: int = MAX_REMEMBERED_REPORTS,
    ) -> None:
        if radius_m <= 0 or window_ms <= 0 or max_remembered < 1:
            raise InvalidArgumentError("radius_m, window_ms must be > 0, max_remembered >= 1")
        self.radius_m, self.window_ms = radius_m, window_ms
        self._max = max_remembered
        self._opened: OrderedDict[str, _Opened] = OrderedDict()  # by incident id, oldest first

    def __len__(self) -> int:
        return len(self._opened)

    def _expire(self, now_ms: int) -> None:
        while self._opened:
            oldest = next(iter(self._opened.values()))
            if now_ms - oldest.at_ms <= self.window_ms and len(self._opened) <= self._max:
                return
            self._opened.popitem(last=False)

    def match(self, report: OpenIncident, now_ms: int) -> Duplicate | None:
        """The nearest incident this report duplicates, or None."""
        self._expire(now_ms)
        best: Duplicate | None = None
        for opened in self._opened.values():
            if opened.kind != report.kind or opened.commune != report.commune:
                continue
            if not 0 <= now_ms - opened.at_ms <= self.window_ms:
                continue
            distance = haversine_m(
                report.latitude, report.longitude, opened.latitude, opened.longitude
            )
            if distance <= self.radius_m and (best is None or distance < best.distance_m):
                best = Duplicate(opened.incident_id, distance, now_ms - opened.at_ms)
        return best

    def remember(self, report: OpenIncident, incident_id: str, now_ms: int) -> None:
        self._opened.pop(incident_id, None)
        self._opened[incident_id] = _Opened(
            incident_id, report.kind, report.commune, report.latitude, report.longitude, now_ms
        )
        self._expire(now_ms)

    def forget(self, incident_id: str) -> None:
        self._opened.pop(incident_id, None)


# --- the service ----------------------------------------------------------------------


class CitizenService(citizen_pb2_grpc.CitizenServiceServicer):
    """`latest` is the edge's latest telemetry per devEui (`MemorySink.latest`): it is only
    read key by key, which is safe while the edge's threads write it.
    """

    def __init__(
        self,
        dispatcher: Dispatcher,
        registry: DeviceRegistry,
        latest: Mapping[str, telemetry_pb2.Telemetry],
        *,
        state: ControlState,
        limiter: KeyedRateLimiter,
        wall_ms: Callable[[], int],
        max_remembered_reports: int = MAX_REMEMBERED_REPORTS,
        limits: ReportLimits | None = None,
        duplicates: RecentReports | None = None,
        refusals: RefusalAudit | None = None,
        audit: Audit | None = None,
    ) -> None:
        """`limiter` is the per-reporter courtesy; `limits` the ones keyed on the caller
        (none: the reporter's alone, as before the citizen listener); `duplicates` the
        memory that merges reports (none: every report its own incident); `refusals`
        audits refused reports, `audit` the merged ones (the post's audit file)."""
        if max_remembered_reports < 1:
            raise InvalidArgumentError("max_remembered_reports: must be >= 1")
        self._dispatcher = dispatcher
        self._state = state
        self._latest = latest
        self._limiter = limiter
        self._limits = limits
        self._duplicates = duplicates
        self._refusals = refusals
        self._audit = audit
        self._wall_ms = wall_ms
        self._signals = _of_class(registry, assets_pb2.TRAFFIC_SIGNAL)
        self._buses = _of_class(registry, assets_pb2.BUS)
        self._spots = _of_class(registry, assets_pb2.PARKING_SPOT)
        self._reports: OrderedDict[tuple[str, str, str], tuple[str, bool]] = OrderedDict()
        self._max_reports = max_remembered_reports
        # One report at a time: an idempotent retry never races its first attempt.
        self._report_lock = asyncio.Lock()

    # --- traffic ---

    async def GetTrafficConditions(
        self, request: citizen_pb2.TrafficConditionsRequest, context: Any
    ) -> citizen_pb2.TrafficConditions:
        asked = resolve_commune(request.commune) if request.commune else None
        signals = [(d, t) for d in self._signals if (t := self._latest.get(d.dev_eui)) is not None]
        buses = [t for d in self._buses if (t := self._latest.get(d.dev_eui)) is not None]
        incidents = await self._incidents()
        areas = traffic_by_commune(signals, buses, incidents)
        chosen = [areas[asked]] if asked is not None else list(areas.values())
        return citizen_pb2.TrafficConditions(areas=chosen, as_of_ms=self._wall_ms())

    async def _incidents(self) -> list[operations_pb2.Incident]:
        out: list[operations_pb2.Incident] = []
        start_after = ""
        while True:
            page = await self._state.list(
                INCIDENTS, operations_pb2.Incident, limit=_PAGE, start_after=start_after
            )
            out.extend(entry.value for entry in page.entries)
            if page.next_start_after is None:
                return out
            start_after = page.next_start_after

    # --- reports ---

    async def ReportIncident(
        self, request: citizen_pb2.ReportIncidentRequest, context: Any
    ) -> citizen_pb2.ReportIncidentResponse:
        # The guard of the citizen listener says who; without one (no TLS), the address.
        caller = app_caller.get() or AppCaller("", peer_key(context.peer()))
        incident = validate_report(request, caller.app)
        # Shielded: a caller's deadline must not cut a report between its write and the
        # idempotency map, or the retry would open a second incident.
        task = asyncio.create_task(
            self._report(caller, request.reporter_id, request.idempotency_key, incident)
        )
        task.add_done_callback(_retrieve)
        incident_id, merged = await asyncio.shield(task)
        return citizen_pb2.ReportIncidentResponse(incident_id=incident_id, merged=merged)

    async def _report(
        self,
        caller: AppCaller,
        reporter_id: str,
        key: str,
        incident: OpenIncident,
    ) -> tuple[str, bool]:
        reporter = reporter_of(caller.app, reporter_id)
        async with self._report_lock:
            known = self._reports.get((caller.app, reporter_id, key))
            if known is not None:
                # A retry answers as the first time did, rate limit or not.
                self._reports.move_to_end((caller.app, reporter_id, key))
                return known
            self._acquire(caller, reporter)
            now = self._wall_ms()
            merged = await self._merge(caller, reporter, incident, now)
            if merged is not None:
                answer = (merged, True)
            else:
                answer = (await self._open(reporter, key, incident), False)
                if self._duplicates is not None:
                    self._duplicates.remember(incident, answer[0], now)
            self._reports[(caller.app, reporter_id, key)] = answer
            while len(self._reports) > self._max_reports:
                self._reports.popitem(last=False)
            return answer

    def _acquire(self, caller: AppCaller, reporter: str) -> None:
        """A token of every limit (the reporter's first), or ResourceExhaustedError naming
        the narrowest that has none, audited."""
        limits = [
            Limit("reporter_id: too many reports from this reporter", self._limiter, reporter)
        ]
        if self._limits is not None:
            limits += self._limits.limits(caller)
        refusal = acquire_all(limits)
        if refusal is None:
            return
        error = exhausted(refusal)
        if self._refusals is not None:
            self._refusals.record(
                caller=caller, target=REPORT_METHOD, error=error, reason=error.message
            )
        raise error

    async def _merge(
        self,
        caller: AppCaller,
        reporter: str,
        incident: OpenIncident,
        now: int,
    ) -> str | None:
        """The open incident this report is attached to, or None to open one."""
        if self._duplicates is None:
            return None
        duplicate = self._duplicates.match(incident, now)
        if duplicate is None:
            return None
        current = await self._state.get(
            incident_key(duplicate.incident_id), operations_pb2.Incident
        )
        if current is None or current.closed:
            # Closed by the room (or gone): a new report is news again.
            self._duplicates.forget(duplicate.incident_id)
            return None
        if self._audit is not None:
            # The app, not the address: an honest citizen's address is not the audit's.
            through = f" through app {caller.app}" if caller.app else ""
            self._audit(
                control_state_pb2.AuditEntry(
                    at_ms=now,
                    actor=f"citizen:{reporter}",
                    action="citizen.report.merged",
                    target=f"incident/{duplicate.incident_id}",
                    outcome=control_state_pb2.AUDIT_OK,
                    detail=(
                        f"{operations_pb2.IncidentKind.Name(incident.kind)} at "
                        f"{incident.latitude:.5f},{incident.longitude:.5f} "
                        f"({incident.commune}), {duplicate.distance_m:.0f} m and "
                        f"{duplicate.age_ms // 1000} s from the report that opened it"
                        f"{through}: {incident.detail}"
                    ),
                )
            )
        return duplicate.incident_id

    async def _open(self, reporter: str, key: str, incident: OpenIncident) -> str:
        try:
            # Durable idempotency too: the same key after a restart finds the incident.
            opened = await self._dispatcher.open_incident(
                incident,
                opened_by=f"citizen:{reporter}",
                idempotency_key=f"citizen:{reporter}:{key}",
            )
        except FencedError as exc:
            raise InfrastructureError(
                "the report could not be recorded now; retry with the same idempotency_key"
            ) from exc
        return opened.incident_id

    # --- parking ---

    async def FindParking(
        self, request: citizen_pb2.FindParkingRequest, context: Any
    ) -> citizen_pb2.FindParkingResponse:
        limit = check_limit(request.limit)
        if not request.HasField("near"):
            raise InvalidArgumentError("near: required")
        latitude, longitude = check_location("near", request.near)
        free = [d for d in self._spots if _is_free(self._latest.get(d.dev_eui))]
        return nearest_free_spaces(free, latitude, longitude, limit)


def _of_class(
    registry: DeviceRegistry, asset_class: assets_pb2.AssetClass.ValueType
) -> list[Device]:
    return [d for d in registry if d.asset_class == asset_class]


def _retrieve(task: asyncio.Task[tuple[str, bool]]) -> None:
    # A report whose caller gave up still finishes; its outcome was only for that caller.
    if not task.cancelled():
        task.exception()


def _is_free(item: telemetry_pb2.Telemetry | None) -> bool:
    # Unknown (never heard) is not free: sending a driver there is worse than silence.
    return (
        item is not None and item.WhichOneof("reading") == "parking" and not item.parking.occupied
    )

"""OperatorService: the control room's gRPC API over the post's dispatcher and control state.

Reads come from the control state (alarms, ledger, tasks, incidents,
overrides), the device registry and the latest telemetry; every write goes
through the dispatcher, the post's one writer, and is answered only after the
control state committed it. Each RPC checks its request first and raises
`citypost.errors` kinds whose messages name the field; the shared interceptor
(`api.server`) turns them into statuses.

Choices worth knowing:
- Idempotency keys are required on writes (1..128 characters). A retry with
  the same key answers with the record the first request created or changed,
  as it is now, and acts no more. A key reused for a different kind of record,
  another target or by another operator is refused (INVALID_ARGUMENT); a key
  reused for another action on the same alarm or task cannot be told apart
  from a retry and answers with that record.
- Lists walk the control state in key order (the registry in devEui order for
  assets); a page token is the last key returned, so each item that exists
  throughout a walk is returned exactly once.
- AssignTask needs a named assignee: the nearest-car choice lives in the
  post's dispatch actors, which this service does not reach (yet).
- CloseTask as done: an ASSIGNED task is started and completed in one step
  (no RPC reports IN_PROGRESS yet); an OPEN task must be assigned or cancelled.
- ListAlarms shows the annunciated alarms by default: neither shelved now
  (shelved_until_ms later than the post's wall clock) nor suppressed under a
  cause; `view` asks for the shelved, the suppressed or all of them, and
  `cause_alarm_id` for those behind one cause, whatever the view.
- ShelveAlarm needs a reason and at most the maximum of the alarm's severity
  (config.alarms.shelve_max_minutes), checked on the alarm record as the
  dispatcher writes it (so a severity that rose meanwhile counts, and a retry
  answers as the first request did). Shelving, unshelving and the leader's
  unshelving when the time is up are audited.
- WatchEvents streams alarms, commands, tasks, incidents and overrides as the
  control state changes, from the moment the stream's initial metadata is sent;
  tasks and incidents belong to no asset class and pass any class filter;
  an event's at_ms is when the post streamed it.
  Telemetry streaming is not implemented: `include_telemetry` is UNIMPLEMENTED.
- GetAssetMap and WatchAssetStates are the map's: the registry as columns once,
  then display states and vehicle positions by row index (post.asset_board), at
  most one message per interval, the latest state of each asset winning. A
  stream starts with a snapshot; so does a new stream after a failover (the new
  leader's board counts its own sequence).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import math
import unicodedata
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from typing import Any, Protocol, TypeAlias, TypeVar

from google.protobuf.message import Message

from actors.decisions import OpenIncident, RequestTask
from actors.incidents import DEFAULT_PRIORITY, ROUTING, nearest_commune
from api import pagination
from api.authorization import current
from api.server import Service, caller
from bridges.registry import Device, DeviceRegistry, class_name
from citypost.config import ApprovalConfig, ShelveLimits
from citypost.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    UnimplementedError,
)
from failover.control_state import (
    ALARMS,
    INCIDENTS,
    LEDGER,
    MAX_PAGE,
    OVERRIDES,
    TASKS,
    Change,
    ControlState,
    RevisionCompactedError,
    alarm_key,
    ledger_key,
    override_key,
)
from fleet.dijon import BOUNDS
from post import alarm_book
from post.asset_board import AssetBoard, asset_map, asset_states
from post.dispatcher import Dispatcher
from protos.citypost.v1 import (
    assets_pb2,
    command_pb2,
    control_state_pb2,
    operations_pb2,
    operator_pb2,
    operator_pb2_grpc,
    telemetry_pb2,
)
from protos.metadata import OPERATOR_METADATA, WATCH_REVISION_METADATA
from security.approval import (
    APPROVE_PERMISSION,
    EMERGENCY_PERMISSION,
    Approver,
    Danger,
    check_approver,
    danger_of,
)

M = TypeVar("M", bound=Message)
AssetClass: TypeAlias = assets_pb2.AssetClass.ValueType

SERVICE_NAME = operator_pb2.DESCRIPTOR.services_by_name["OperatorService"].full_name

MAX_KEY_CHARS = 128
MAX_ID_CHARS = 128
MAX_TEXT_CHARS = 500
MAX_KIND_CHARS = 64
MIN_TTL_MS, MAX_TTL_MS = 1_000, 3_600_000
MIN_MAP_INTERVAL_MS, MAX_MAP_INTERVAL_MS, DEFAULT_MAP_INTERVAL_MS = 200, 5_000, 500
MIN_OVERRIDE_MS, MAX_OVERRIDE_MS = 60_000, 86_400_000
# The traffic policy's default maximum bus-priority extension: an operator gets no longer.
MAX_GREEN_EXTENSION_MS = 15_000
DEFAULT_TASK_PRIORITY = 3

# Which commands each commandable class takes (the simulated devices accept the same).
ACTIONS: dict[AssetClass, tuple[str, ...]] = {
    assets_pb2.STREET_LAMP: ("set_brightness",),
    assets_pb2.BOLLARD: ("set_bollard_position",),
    assets_pb2.TRAFFIC_SIGNAL: ("signal_priority", "set_signal_mode"),
}

_ASSETS_TOKEN = "assets/"
_EVENT_KINDS: tuple[tuple[str, str, type[Message]], ...] = (
    (ALARMS, "alarm", operations_pb2.Alarm),
    (LEDGER, "command", control_state_pb2.CommandRecord),
    (TASKS, "task", operations_pb2.Task),
    (INCIDENTS, "incident", operations_pb2.Incident),
    (OVERRIDES, "override", control_state_pb2.Override),
)


class LatestTelemetry(Protocol):
    """The last reading per device (bridges.sinks.MemorySink)."""

    def last(self, dev_eui: str) -> telemetry_pb2.Telemetry | None: ...


class OperatorService(operator_pb2_grpc.OperatorServiceServicer):
    def __init__(
        self,
        dispatcher: Dispatcher,
        state: ControlState,
        registry: DeviceRegistry,
        latest: LatestTelemetry,
        board: AssetBoard,
        *,
        wall_ms: Callable[[], int],
        approval: ApprovalConfig | None = None,
        audit_failure: Callable[[], str] = lambda: "",
        shelve_limits: ShelveLimits | None = None,
    ) -> None:
        self._approval = approval or ApprovalConfig()
        # The longest each severity may be shelved (config.alarms.shelve_max_minutes).
        self._shelve_limits = shelve_limits or ShelveLimits()
        self._audit_failure = audit_failure
        self._dangers = frozenset(Danger(d) for d in self._approval.require_for)
        self._dispatcher = dispatcher
        self._state = state
        self._registry = registry
        self._latest = latest
        self._board = board
        self._map = asset_map(board.devices)  # the registry does not change: built once
        self._wall_ms = wall_ms
        # The board's rows: the registry sorted once by devEui (it does not change while
        # the post runs), for paging.
        self._devices = board.devices

    # --- assets --------------------------------------------------------------------------

    async def ListAssets(
        self, request: operator_pb2.ListAssetsRequest, context: Any
    ) -> operator_pb2.ListAssetsResponse:
        asset_class = _asset_class("asset_class", request.asset_class, required=False)
        size = pagination.page_size(request.page_size)
        after = _token_key(request.page_token, _ASSETS_TOKEN).removeprefix(_ASSETS_TOKEN)
        commune = request.commune.strip().casefold()
        counts = self._dispatcher.active_alarm_counts()

        def keep(device: Device) -> bool:
            return (
                (not asset_class or device.asset_class == asset_class)
                and (not commune or device.commune.casefold() == commune)
                and (not request.group or device.group == request.group)
                and (not request.only_alarmed or counts.get(device.dev_eui, 0) > 0)
            )

        matching = [d for d in self._devices if keep(d)]
        start = bisect.bisect_right(matching, after, key=lambda d: d.dev_eui) if after else 0
        page = matching[start : start + size]
        response = operator_pb2.ListAssetsResponse(
            assets=[self._asset(d, counts) for d in page], total=len(matching)
        )
        if start + size < len(matching):
            response.next_page_token = pagination.encode_token(_ASSETS_TOKEN + page[-1].dev_eui)
        return response

    async def GetAsset(
        self, request: operator_pb2.GetAssetRequest, context: Any
    ) -> operator_pb2.Asset:
        dev_eui = _id("dev_eui", request.dev_eui).lower()
        device = self._registry.get(dev_eui)
        if device is None:
            raise NotFoundError(
                f"asset {dev_eui!r} does not exist: ListAssets shows the known ones"
            )
        return self._asset(device, self._dispatcher.active_alarm_counts())

    def _asset(self, device: Device, alarm_counts: dict[str, int]) -> operator_pb2.Asset:
        asset = operator_pb2.Asset(
            dev_eui=device.dev_eui,
            name=device.name,
            asset_class=device.asset_class,
            group=device.group,
            commune=device.commune,
            location=operations_pb2.GeoPoint(latitude=device.latitude, longitude=device.longitude),
            active_alarms=alarm_counts.get(device.dev_eui, 0),
            overridden=self._dispatcher.override_for(device.asset_class, device.group) is not None,
        )
        last = self._latest.last(device.dev_eui)
        if last is not None:
            asset.last_telemetry.CopyFrom(last)
        return asset

    # --- the map -------------------------------------------------------------------------

    async def GetAssetMap(
        self, request: operator_pb2.GetAssetMapRequest, context: Any
    ) -> operator_pb2.AssetMap:
        return self._map

    async def WatchAssetStates(
        self, request: operator_pb2.WatchAssetStatesRequest, context: Any
    ) -> AsyncIterator[operator_pb2.AssetStates]:
        interval_ms = request.interval_ms or DEFAULT_MAP_INTERVAL_MS
        if not MIN_MAP_INTERVAL_MS <= interval_ms <= MAX_MAP_INTERVAL_MS:
            raise InvalidArgumentError(
                f"interval_ms: 0 for {DEFAULT_MAP_INTERVAL_MS} ms, or "
                f"{MIN_MAP_INTERVAL_MS}..{MAX_MAP_INTERVAL_MS} ms, got {interval_ms}"
            )
        changes = self._board.snapshot()
        yield asset_states(self._board.map_id, changes)
        while True:
            await asyncio.sleep(interval_ms / 1000)
            later = self._board.since(changes.sequence)
            if later.snapshot or later.states or later.positions:
                yield asset_states(self._board.map_id, later)
            changes = later

    # --- events --------------------------------------------------------------------------

    async def WatchEvents(
        self, request: operator_pb2.WatchEventsRequest, context: Any
    ) -> AsyncIterator[operator_pb2.Event]:
        classes = {
            _asset_class("asset_classes", value, required=True) for value in request.asset_classes
        }
        if request.include_telemetry:
            raise UnimplementedError(
                "include_telemetry: telemetry streaming is not available yet; watch without it "
                "and read each asset's last_telemetry with GetAsset or ListAssets"
            )
        if request.start_revision < 0:
            raise InvalidArgumentError(
                f"start_revision: a revision is >= 1 (0: from now), got {request.start_revision}"
            )
        # A client resuming names the revision after the last event it saw.
        start = request.start_revision or await self._state.revision() + 1
        # Sent once the start is pinned: a client that awaits it misses nothing written after.
        await context.send_initial_metadata(((WATCH_REVISION_METADATA, str(start - 1)),))
        try:
            async with contextlib.aclosing(self._state.watch(start)) as changes:
                async for change in changes:
                    event = self._event(change, classes)
                    if event is not None:
                        yield event
        except RevisionCompactedError as error:
            raise FailedPreconditionError(
                "the event stream fell behind the post's history: open WatchEvents again"
            ) from error

    def _event(self, change: Change, classes: Collection[AssetClass]) -> operator_pb2.Event | None:
        if change.deleted:
            return None
        for namespace, field, message_type in _EVENT_KINDS:
            if not change.key.startswith(namespace):
                continue
            value = change.decode(message_type)
            if value is None:
                return None
            if classes and not _in_classes(value, classes):
                return None
            event = operator_pb2.Event(at_ms=self._wall_ms(), revision=change.revision)
            getattr(event, field).CopyFrom(value)
            return event
        return None  # audit, idempotency, notifications, config: not operator events

    # --- commands ------------------------------------------------------------------------

    async def SendCommand(
        self, request: operator_pb2.SendCommandRequest, context: Any
    ) -> control_state_pb2.CommandRecord:
        key = _idempotency_key(request.idempotency_key)
        operator = _operator()
        if not request.HasField("command"):
            raise InvalidArgumentError(
                "command: give the command to send (target, asset_class and one action)"
            )
        given = request.command
        target = given.target.WhichOneof("kind")
        if target is None:
            raise InvalidArgumentError("command.target: name a dev_eui or a group")
        asset_class = _asset_class("command.asset_class", given.asset_class, required=False)
        if request.ttl_ms != 0 and not MIN_TTL_MS <= request.ttl_ms <= MAX_TTL_MS:
            raise InvalidArgumentError(
                f"ttl_ms: 0 for the post's default, or {MIN_TTL_MS}..{MAX_TTL_MS} ms "
                f"(1 s..1 h), got {request.ttl_ms}"
            )
        reason = _text("reason", request.reason)
        if given.WhichOneof("action") is None:
            raise InvalidArgumentError(
                "command.action: set one of set_brightness (street lamps), "
                "set_bollard_position (bollards), signal_priority or set_signal_mode (signals)"
            )
        command = command_pb2.Command()
        if target == "dev_eui":
            dev_eui = _id("command.target.dev_eui", given.target.dev_eui).lower()
            device = self._registry.get(dev_eui)
            if device is None:
                raise NotFoundError(
                    f"command.target.dev_eui: no device {dev_eui!r}: ListAssets shows the known ones"
                )
            if asset_class and asset_class != device.asset_class:
                raise InvalidArgumentError(
                    f"command.asset_class: device {dev_eui} is a {class_name(device.asset_class)}, "
                    f"not a {class_name(asset_class)}"
                )
            asset_class = device.asset_class
            # The policy checked the class the request named, if any; this is the device's.
            _check_class("commands.send", asset_class, f"command device {dev_eui}")
            command.target.dev_eui = dev_eui
            devices = 1
        else:
            group = _id("command.target.group", given.target.group)
            if not asset_class:
                raise InvalidArgumentError(
                    "command.asset_class: a group command names the asset class of its group"
                )
            members = self._registry.group(asset_class, group)
            if not members:
                raise NotFoundError(
                    f"command.target.group: no group {group!r} of {class_name(asset_class)}"
                )
            command.target.group = group
            devices = len(members)
            self._require_audit(f"a command to every device of {group}")
        command.asset_class = asset_class
        _copy_action("command", given, command, asset_class, class_field="command.asset_class")
        return await self._dispatcher.issue_command(
            command,
            issued_by=operator,
            ttl_ms=request.ttl_ms,
            reason=reason,
            idempotency_key=key,
            approval=self._approval_for(command, devices, request.emergency, reason),
        )

    def _require_audit(self, what: str) -> None:
        """While the post's audit file cannot be written, mass commands and overrides are
        refused; a command to one device still goes, so no safety action waits on a disk
        (IEC 62443-3-3 SR 1.1). Every change is audited in the control state as well, in
        the same transaction: the file catches up when it can be written again."""
        failure = self._audit_failure()
        if failure:
            raise FailedPreconditionError(
                f"the post's audit file cannot be written ({failure}): {what} is refused "
                "until it can; a command to one device still goes"
            )

    def _approval_for(
        self, command: command_pb2.Command, devices: int, emergency: bool, reason: str
    ) -> control_state_pb2.Approval | None:
        """The two-person rule on a dangerous command: it waits for a second person, or,
        an emergency, goes at once and is marked (security.approval)."""
        danger = danger_of(command, devices, self._dangers)
        if not danger:
            return None  # `emergency` changes nothing on a command that would not wait
        now = self._wall_ms()
        who = current.get()
        if emergency:
            if who.grants is not None and not who.grants.allows(EMERGENCY_PERMISSION):
                raise PermissionDeniedError(
                    f"permission {EMERGENCY_PERMISSION} is needed to send this without "
                    f"approval ({danger}); send it without --emergency to ask for approval",
                    EMERGENCY_PERMISSION,
                )
            if not reason:
                raise InvalidArgumentError(
                    "reason: an emergency command says why it cannot wait for approval"
                )
            return control_state_pb2.Approval(
                danger=danger, emergency=True, requester_roles=who.roles, decided_at_ms=now
            )
        return control_state_pb2.Approval(
            danger=danger,
            approve_by_ms=now + int(self._approval.window_s * 1000),
            requester_roles=who.roles,
        )

    async def ApproveCommand(
        self, request: operator_pb2.DecideCommandRequest, context: Any
    ) -> control_state_pb2.CommandRecord:
        return await self._decide(request, approve=True)

    async def RejectCommand(
        self, request: operator_pb2.DecideCommandRequest, context: Any
    ) -> control_state_pb2.CommandRecord:
        return await self._decide(request, approve=False)

    async def _decide(
        self, request: operator_pb2.DecideCommandRequest, *, approve: bool
    ) -> control_state_pb2.CommandRecord:
        key = _idempotency_key(request.idempotency_key)
        operator = _operator()
        command_id = _id("command_id", request.command_id)
        reason = _text("reason", request.reason)
        if not approve and not reason:
            raise InvalidArgumentError("reason: say why the command is rejected")
        who = current.get()
        rule = Approver(self._approval.approver)

        def check(record: control_state_pb2.CommandRecord) -> None:
            scope = class_name(record.command.asset_class)
            grants = who.grants
            check_approver(
                requester=record.issued_by,
                requester_roles=record.approval.requester_roles,
                approver=operator,
                approver_roles=who.roles,
                may_approve=grants is None or grants.allows(APPROVE_PERMISSION),
                may_command_class=grants is None or grants.allows("commands.send", scope),
                rule=rule,
            )

        return await self._dispatcher.decide_approval(
            command_id,
            approve=approve,
            by=operator,
            reason=reason,
            check=check,
            idempotency_key=key,
        )

    async def GetCommand(
        self, request: operator_pb2.GetCommandRequest, context: Any
    ) -> control_state_pb2.CommandRecord:
        command_id = _id("command_id", request.command_id)
        record = await self._state.get(ledger_key(command_id), control_state_pb2.CommandRecord)
        if record is None:
            raise NotFoundError(f"command {command_id!r} does not exist")
        return record

    async def ListCommands(
        self, request: operator_pb2.ListCommandsRequest, context: Any
    ) -> operator_pb2.ListCommandsResponse:
        status = _enum("status", command_pb2.CommandStatus.values(), request.status)
        records, token = await self._page(
            LEDGER,
            control_state_pb2.CommandRecord,
            request.page_size,
            request.page_token,
            lambda r: not status or r.status == status,
        )
        return operator_pb2.ListCommandsResponse(commands=records, next_page_token=token)

    # --- overrides -----------------------------------------------------------------------

    async def SetOverride(
        self, request: operator_pb2.SetOverrideRequest, context: Any
    ) -> control_state_pb2.Override:
        key = _idempotency_key(request.idempotency_key)
        operator = _operator()
        asset_class = _asset_class("asset_class", request.asset_class, required=True)
        group = _id("group", request.group)
        if not request.HasField("action"):
            raise InvalidArgumentError(
                "action: give the command that holds the group (e.g. set_brightness)"
            )
        if not MIN_OVERRIDE_MS <= request.duration_ms <= MAX_OVERRIDE_MS:
            raise InvalidArgumentError(
                f"duration_ms: {MIN_OVERRIDE_MS}..{MAX_OVERRIDE_MS} ms (1 min..24 h), "
                f"got {request.duration_ms}"
            )
        reason = _text("reason", request.reason)
        self._require_audit("an override")
        action = command_pb2.Command(asset_class=asset_class)
        action.target.group = group
        _copy_action("action", request.action, action, asset_class, class_field="asset_class")
        if not self._registry.group(asset_class, group):
            raise NotFoundError(f"group: no group {group!r} of {class_name(asset_class)}")
        now = self._wall_ms()
        override = control_state_pb2.Override(
            group=group,
            asset_class=asset_class,
            action=action,
            starts_at_ms=now,
            ends_at_ms=now + request.duration_ms,
            reason=reason,
        )
        return await self._dispatcher.set_override(override, set_by=operator, idempotency_key=key)

    async def EndOverride(
        self, request: operator_pb2.EndOverrideRequest, context: Any
    ) -> control_state_pb2.Override:
        key = _idempotency_key(request.idempotency_key)
        operator = _operator()
        override_id = _id("override_id", request.override_id)
        self._require_audit("ending an override")
        found = await self._state.get(override_key(override_id), control_state_pb2.Override)
        if found is not None:  # else the dispatcher answers NOT_FOUND
            _check_class("overrides.set", found.asset_class, "end this override")
        return await self._dispatcher.end_override(
            override_id, ended_by=operator, idempotency_key=key
        )

    async def ListOverrides(
        self, request: operator_pb2.ListOverridesRequest, context: Any
    ) -> operator_pb2.ListOverridesResponse:
        now = self._wall_ms()
        overrides, token = await self._page(
            OVERRIDES,
            control_state_pb2.Override,
            request.page_size,
            request.page_token,
            lambda o: not request.active_only or o.starts_at_ms <= now < o.ends_at_ms,
        )
        return operator_pb2.ListOverridesResponse(overrides=overrides, next_page_token=token)

    # --- alarms --------------------------------------------------------------------------

    async def ListAlarms(
        self, request: operator_pb2.ListAlarmsRequest, context: Any
    ) -> operator_pb2.ListAlarmsResponse:
        states = {
            _enum("states", operations_pb2.AlarmState.values(), s, required=True)
            for s in request.states
        }
        asset_class = _asset_class("asset_class", request.asset_class, required=False)
        min_severity = _enum("min_severity", operations_pb2.Severity.values(), request.min_severity)
        view = _enum("view", operator_pb2.AlarmView.values(), request.view)
        cause = request.cause_alarm_id.strip()
        if len(cause) > MAX_ID_CHARS:
            raise InvalidArgumentError(
                f"cause_alarm_id: at most {MAX_ID_CHARS} characters, got {len(cause)}"
            )
        now = self._wall_ms()

        def in_view(alarm: operations_pb2.Alarm) -> bool:
            if cause:  # the alarms behind one cause, shelved or not
                return alarm.suppressed_by == cause
            shelved = alarm_book.is_shelved(alarm, now)
            if view == operator_pb2.ALARM_VIEW_SHELVED:
                return shelved
            if view == operator_pb2.ALARM_VIEW_SUPPRESSED:
                return bool(alarm.suppressed_by)
            if view == operator_pb2.ALARM_VIEW_ALL:
                return True
            return not shelved and not alarm.suppressed_by  # annunciated

        alarms, token = await self._page(
            ALARMS,
            operations_pb2.Alarm,
            request.page_size,
            request.page_token,
            lambda a: (
                (not states or a.state in states)
                and (not asset_class or a.asset_class == asset_class)
                and a.severity >= min_severity
                and in_view(a)
            ),
        )
        return operator_pb2.ListAlarmsResponse(alarms=alarms, next_page_token=token)

    async def AcknowledgeAlarm(
        self, request: operator_pb2.AlarmActionRequest, context: Any
    ) -> operations_pb2.Alarm:
        return await self._alarm_action(
            request, "acknowledge it", self._dispatcher.acknowledge_alarm
        )

    async def ClearAlarm(
        self, request: operator_pb2.AlarmActionRequest, context: Any
    ) -> operations_pb2.Alarm:
        return await self._alarm_action(request, "clear it", self._dispatcher.clear_alarm)

    async def ShelveAlarm(
        self, request: operator_pb2.ShelveAlarmRequest, context: Any
    ) -> operations_pb2.Alarm:
        key = _idempotency_key(request.idempotency_key)
        operator = _operator()
        alarm_id = _id("alarm_id", request.alarm_id)
        reason = _text("reason", request.reason, required=True)
        minutes = request.minutes
        if not (math.isfinite(minutes) and minutes > 0):
            raise InvalidArgumentError(
                f"minutes: how long to shelve it, > 0 (at most its severity's maximum), "
                f"got {minutes:g}"
            )
        await self._check_alarm_class(alarm_id, "shelve it")
        # The maximum of the alarm's severity is checked on the alarm as the dispatcher
        # writes it, once a retry's key is looked up: a retry answers as the first did.
        return await self._dispatcher.shelve_alarm(
            alarm_id,
            operator=operator,
            minutes=minutes,
            reason=reason,
            max_minutes=self._shelve_limits,
            idempotency_key=key,
        )

    async def UnshelveAlarm(
        self, request: operator_pb2.AlarmActionRequest, context: Any
    ) -> operations_pb2.Alarm:
        return await self._alarm_action(request, "unshelve it", self._dispatcher.unshelve_alarm)

    async def _alarm_action(
        self,
        request: operator_pb2.AlarmActionRequest,
        what: str,
        act: Callable[..., Awaitable[operations_pb2.Alarm]],
    ) -> operations_pb2.Alarm:
        """An operator's action on one alarm with a comment: checked, then the dispatcher's."""
        key = _idempotency_key(request.idempotency_key)
        operator = _operator()
        alarm_id = _id("alarm_id", request.alarm_id)
        comment = _text("comment", request.comment)
        await self._check_alarm_class(alarm_id, what)
        return await act(alarm_id, operator=operator, comment=comment, idempotency_key=key)

    async def _check_alarm_class(self, alarm_id: str, what: str) -> operations_pb2.Alarm | None:
        """The alarm as read now, once the caller may handle its class; None if it does
        not exist (the dispatcher answers NOT_FOUND)."""
        found = await self._state.get(alarm_key(alarm_id), operations_pb2.Alarm)
        if found is not None:
            _check_class("alarms.handle", found.asset_class, what)
        return found

    # --- incidents -----------------------------------------------------------------------

    async def ListIncidents(
        self, request: operator_pb2.ListIncidentsRequest, context: Any
    ) -> operator_pb2.ListIncidentsResponse:
        incidents, token = await self._page(
            INCIDENTS,
            operations_pb2.Incident,
            request.page_size,
            request.page_token,
            lambda i: not request.open_only or not i.closed,
        )
        return operator_pb2.ListIncidentsResponse(incidents=incidents, next_page_token=token)

    async def CreateIncident(
        self, request: operator_pb2.CreateIncidentRequest, context: Any
    ) -> operations_pb2.Incident:
        key = _idempotency_key(request.idempotency_key)
        operator = _operator()
        kind = request.kind
        if kind not in ROUTING:
            raise InvalidArgumentError(
                f"kind: name the incident kind (INCIDENT_ACCIDENT..INCIDENT_OTHER), got {kind}"
            )
        latitude, longitude = _location(request)
        detail = _text("detail", request.detail, required=True)
        priority = _priority(request.priority, DEFAULT_PRIORITY[kind])
        incident = OpenIncident(
            kind=kind,
            source=operations_pb2.OPERATOR,
            latitude=latitude,
            longitude=longitude,
            commune=nearest_commune(latitude, longitude),
            detail=detail,
            priority=priority,
            originator=operator,
        )
        return await self._dispatcher.open_incident(
            incident, opened_by=operator, idempotency_key=key
        )

    # --- tasks ---------------------------------------------------------------------------

    async def CreateTask(
        self, request: operator_pb2.CreateTaskRequest, context: Any
    ) -> operations_pb2.Task:
        key = _idempotency_key(request.idempotency_key)
        operator = _operator()
        department = _enum(
            "department", operations_pb2.Department.values(), request.department, True
        )
        kind = _text("kind", request.kind, required=True, max_chars=MAX_KIND_CHARS)
        priority = _priority(request.priority, DEFAULT_TASK_PRIORITY)
        latitude, longitude = _location(request)
        detail = _text("detail", request.detail)
        origin = _text("origin", request.origin, max_chars=MAX_ID_CHARS)
        task = RequestTask(department, kind, priority, latitude, longitude, detail, origin)
        return await self._dispatcher.create_task(task, created_by=operator, idempotency_key=key)

    async def AssignTask(
        self, request: operator_pb2.AssignTaskRequest, context: Any
    ) -> operations_pb2.Task:
        key = _idempotency_key(request.idempotency_key)
        operator = _operator()
        task_id = _id("task_id", request.task_id)
        if not request.assignee.strip():
            raise FailedPreconditionError(
                "assignee: no automatic assignment yet: name an assignee "
                "(a company car's devEui or a team)"
            )
        assignee = _text("assignee", request.assignee, max_chars=MAX_ID_CHARS)
        return await self._dispatcher.assign_task(
            task_id, assignee, operator=operator, idempotency_key=key
        )

    async def CloseTask(
        self, request: operator_pb2.CloseTaskRequest, context: Any
    ) -> operations_pb2.Task:
        key = _idempotency_key(request.idempotency_key)
        operator = _operator()
        task_id = _id("task_id", request.task_id)
        comment = _text("comment", request.comment)
        return await self._dispatcher.close_task(
            task_id,
            operator=operator,
            cancelled=request.cancelled,
            comment=comment,
            idempotency_key=key,
        )

    async def ListTasks(
        self, request: operator_pb2.ListTasksRequest, context: Any
    ) -> operator_pb2.ListTasksResponse:
        department = _enum("department", operations_pb2.Department.values(), request.department)
        statuses = {
            _enum("statuses", operations_pb2.TaskStatus.values(), s, required=True)
            for s in request.statuses
        }
        tasks, token = await self._page(
            TASKS,
            operations_pb2.Task,
            request.page_size,
            request.page_token,
            lambda t: (
                (not department or t.department == department)
                and (not statuses or t.status in statuses)
            ),
        )
        return operator_pb2.ListTasksResponse(tasks=tasks, next_page_token=token)

    # --- paging --------------------------------------------------------------------------

    async def _page(
        self,
        prefix: str,
        message_type: type[M],
        page_size: int,
        page_token: str,
        keep: Callable[[M], bool],
    ) -> tuple[list[M], str]:
        """One page of the records under `prefix` that `keep` accepts, and the next token.

        Reads ahead to one more match, so the last page carries no token.
        """
        size = pagination.page_size(page_size)
        start_after = _token_key(page_token, prefix)
        found: list[tuple[str, M]] = []
        revision: int | None = None
        while True:
            page = await self._state.list(
                prefix,
                message_type,
                limit=min(MAX_PAGE, size + 1),
                start_after=start_after,
                revision=revision,
            )
            revision = page.revision  # one snapshot for the whole call
            for entry in page.entries:
                if not keep(entry.value):
                    continue
                if len(found) == size:
                    return [v for _, v in found], pagination.encode_token(found[-1][0])
                found.append((entry.key, entry.value))
            if page.next_start_after is None:
                return [v for _, v in found], ""
            start_after = page.next_start_after


def operator_service(
    dispatcher: Dispatcher,
    state: ControlState,
    registry: DeviceRegistry,
    latest: LatestTelemetry,
    board: AssetBoard,
    *,
    wall_ms: Callable[[], int],
    approval: ApprovalConfig | None = None,
    audit_failure: Callable[[], str] = lambda: "",
    shelve_limits: ShelveLimits | None = None,
) -> Service:
    """The service, ready for `api.server.start_server`."""
    servicer = OperatorService(
        dispatcher,
        state,
        registry,
        latest,
        board,
        wall_ms=wall_ms,
        approval=approval,
        audit_failure=audit_failure,
        shelve_limits=shelve_limits,
    )
    return Service(SERVICE_NAME, operator_pb2_grpc.add_OperatorServiceServicer_to_server, servicer)


# --- checks ---------------------------------------------------------------------------------


def _check_class(permission: str, asset_class: assets_pb2.AssetClass.ValueType, what: str) -> None:
    """A rule the policy cannot check from the request, which names only a record (an
    alarm, an override): the permission scoped by that record's class. A record of no
    class needs the permission for some class. Nothing where no authorization is in force."""
    grants = current.get().grants
    if grants is None:
        return
    scope = class_name(asset_class) if asset_class else None
    if not grants.allows(permission, scope):
        needed = f"{permission}:{scope}" if scope else permission
        raise PermissionDeniedError(
            f"permission {needed} is needed to {what} ({scope or 'no class'})", needed
        )


def _operator() -> str:
    """The caller's operator id, from the call's metadata (authentication will replace it)."""
    who = caller.get()
    if who.startswith(("policy:", "post:")):
        raise InvalidArgumentError(
            f"{OPERATOR_METADATA}: {who[:40]!r} uses a reserved prefix (policy:, post:): "
            "send the operator's own id"
        )
    if len(who) > MAX_ID_CHARS:
        raise InvalidArgumentError(f"{OPERATOR_METADATA}: at most {MAX_ID_CHARS} characters")
    return who


def _idempotency_key(value: str) -> str:
    if not value:
        raise InvalidArgumentError(
            "idempotency_key: required on every write: send a fresh key (e.g. a UUID) "
            "and the same one when you retry"
        )
    if len(value) > MAX_KEY_CHARS:
        raise InvalidArgumentError(
            f"idempotency_key: at most {MAX_KEY_CHARS} characters, got {len(value)}"
        )
    return value


def _id(field: str, value: str) -> str:
    if not value.strip():
        raise InvalidArgumentError(f"{field}: required")
    if len(value) > MAX_ID_CHARS:
        raise InvalidArgumentError(f"{field}: at most {MAX_ID_CHARS} characters, got {len(value)}")
    return value.strip()


def _text(
    field: str, value: str, *, required: bool = False, max_chars: int = MAX_TEXT_CHARS
) -> str:
    text = unicodedata.normalize("NFC", value).strip()
    if required and not text:
        raise InvalidArgumentError(f"{field}: required")
    if len(text) > max_chars:
        raise InvalidArgumentError(f"{field}: at most {max_chars} characters, got {len(text)}")
    if any(unicodedata.category(ch) == "Cc" and ch not in "\n\t" for ch in text):
        raise InvalidArgumentError(f"{field}: must not contain control characters")
    return text


def _enum(field: str, values: Collection[int], value: int, required: bool = False) -> Any:
    """`value` if it is one of the enum's `values` (0, UNSPECIFIED, only when not required)."""
    if value == 0 and required:
        raise InvalidArgumentError(f"{field}: required (UNSPECIFIED is not a value here)")
    if value not in values:
        raise InvalidArgumentError(f"{field}: unknown value {value}")
    return value


def _asset_class(field: str, value: int, *, required: bool) -> AssetClass:
    checked: AssetClass = _enum(field, assets_pb2.AssetClass.values(), value, required)
    return checked


def _priority(value: int, default: int) -> int:
    if value == 0:
        return default
    if not 1 <= value <= 5:
        raise InvalidArgumentError(f"priority: 1 (highest)..5, or 0 for the default; got {value}")
    return value


def _location(request: Any) -> tuple[float, float]:
    """The request's `location`, which must lie inside the metropolis."""
    if not request.HasField("location"):
        raise InvalidArgumentError("location: give its latitude and longitude")
    south, west, north, east = BOUNDS
    latitude, longitude = request.location.latitude, request.location.longitude
    if not (math.isfinite(latitude) and south <= latitude <= north):
        raise InvalidArgumentError(
            f"location.latitude: {latitude} is outside the metropolis ({south}..{north})"
        )
    if not (math.isfinite(longitude) and west <= longitude <= east):
        raise InvalidArgumentError(
            f"location.longitude: {longitude} is outside the metropolis ({west}..{east})"
        )
    return latitude, longitude


def _token_key(token: str, prefix: str) -> str:
    key = pagination.decode_token(token)
    if key and not key.startswith(prefix):
        raise InvalidArgumentError(
            "page_token: it belongs to another list: pass next_page_token back unchanged"
        )
    return key


def _copy_action(
    field: str,
    given: command_pb2.Command,
    into: command_pb2.Command,
    asset_class: AssetClass,
    *,
    class_field: str,
) -> None:
    """Check `given`'s action fits `asset_class` and copy it (and nothing else) into `into`."""
    allowed = ACTIONS.get(asset_class)
    name = class_name(asset_class)
    if allowed is None:
        commandable = ", ".join(class_name(c) for c in ACTIONS)
        raise InvalidArgumentError(
            f"{class_field}: {name} devices take no command (commands go to {commandable})"
        )
    action = given.WhichOneof("action")
    if action is None:
        raise InvalidArgumentError(f"{field}: set one action: {' or '.join(allowed)} for {name}")
    if action not in allowed:
        raise InvalidArgumentError(
            f"{field}.{action}: {name} devices take {' or '.join(allowed)}, not {action}"
        )
    if action == "set_brightness":
        pct = given.set_brightness.brightness_pct
        if not (math.isfinite(pct) and 0.0 <= pct <= 100.0):
            raise InvalidArgumentError(
                f"{field}.set_brightness.brightness_pct: must be within 0..100, got {pct}"
            )
    elif action == "set_bollard_position":
        position = given.set_bollard_position.position
        if position not in (telemetry_pb2.LOWERED, telemetry_pb2.RAISED):
            raise InvalidArgumentError(
                f"{field}.set_bollard_position.position: LOWERED or RAISED, got {position}"
            )
    elif action == "signal_priority":
        extend = given.signal_priority.extend_green_ms
        if not 1 <= extend <= MAX_GREEN_EXTENSION_MS:
            raise InvalidArgumentError(
                f"{field}.signal_priority.extend_green_ms: 1..{MAX_GREEN_EXTENSION_MS} ms, "
                f"got {extend}"
            )
    elif action == "set_signal_mode":
        # UNSPECIFIED hands the signal back to its normal cycle; FLASHING_AMBER is fail-safe.
        _enum(
            f"{field}.set_signal_mode.phase",
            telemetry_pb2.SignalPhase.values(),
            given.set_signal_mode.phase,
        )
    getattr(into, action).CopyFrom(getattr(given, action))


def _in_classes(value: Message, classes: Collection[AssetClass]) -> bool:
    if isinstance(value, control_state_pb2.CommandRecord):
        return value.command.asset_class in classes
    if isinstance(value, operations_pb2.Alarm | control_state_pb2.Override):
        return value.asset_class in classes
    return True  # tasks and incidents belong to no asset class

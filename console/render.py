"""What the console shows: API messages to table rows, detail lines, event lines and JSON.

Pure functions over messages; the only rich objects are built at the end
(`rich_table`, `rich_detail`) from the plain rows, so the rows are what the
tests look at. Times are shown in UTC, to the second.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

from console.names import (
    ALARM_STATE,
    ASSET_CLASS,
    BOLLARD_POSITION,
    CAMERA_EVENT,
    COMMAND_STATUS,
    DEPARTMENT,
    INCIDENT_KIND,
    INCIDENT_SOURCE,
    SEVERITY,
    SIGNAL_PHASE,
    TASK_STATUS,
)
from protos.citypost.v1 import (
    admin_pb2,
    command_pb2,
    control_state_pb2,
    operations_pb2,
    operator_pb2,
    telemetry_pb2,
)

if TYPE_CHECKING:
    from rich.table import Table

Row = tuple[str, ...]
MAX_UNBROKEN = 36  # a UUID: longer words may be cut to fit the terminal
Pairs = list[tuple[str, str]]


@dataclass(frozen=True)
class TableData:
    title: str
    columns: tuple[str, ...]
    rows: Sequence[Row] = ()
    footer: str = ""  # e.g. how many more there are and how to see them


# --- small values ---------------------------------------------------------------------------


def when(ms: int) -> str:
    """A wall-clock instant (ms since the Unix epoch) as `2027-01-15 08:00:00Z`; '-' if unset."""
    if ms <= 0:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def clock(ms: int) -> str:
    """The time of day only, for event lines."""
    if ms <= 0:
        return "--:--:--Z"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%H:%M:%SZ")


def _group_of(asset_class: int, group: str) -> str:
    return f"{ASSET_CLASS.label(asset_class)}/{group}"


def target_summary(command: command_pb2.Command) -> str:
    kind = command.target.WhichOneof("kind")
    if kind == "dev_eui":
        return f"device {command.target.dev_eui}"
    if kind == "group":
        return f"group {command.target.group}"
    return "-"


def action_summary(command: command_pb2.Command) -> str:
    """What a command does, in words: `brightness 30%`, `bollard raised`, `green +5000 ms`."""
    action = command.WhichOneof("action")
    if action == "set_brightness":
        return f"brightness {command.set_brightness.brightness_pct:g}%"
    if action == "set_bollard_position":
        return f"bollard {BOLLARD_POSITION.label(command.set_bollard_position.position)}"
    if action == "signal_priority":
        return f"green +{command.signal_priority.extend_green_ms} ms"
    if action == "set_signal_mode":
        phase = command.set_signal_mode.phase
        # UNSPECIFIED hands the signal back to its own cycle.
        return "signal normal" if phase == 0 else f"signal {SIGNAL_PHASE.label(phase)}"
    if action == "set_lamp_profile":
        p = command.set_lamp_profile
        return (
            f"profile {p.profile_id}: {p.night_pct:g}% below {p.on_below_elevation_deg:g}°, "
            f"{p.boost_pct:g}% on presence for {p.boost_hold_s} s"
        )
    return "-"


def _flags(*named: tuple[bool, str]) -> list[str]:
    return [word for on, word in named if on]


def reading_summary(telemetry: telemetry_pb2.Telemetry) -> str:
    """The reading of one uplink in a few words; '-' if there is none."""
    kind = telemetry.WhichOneof("reading")
    parts: list[str]
    if kind == "lamp":
        r = telemetry.lamp
        parts = [
            f"{r.brightness_pct:g}%",
            f"{r.power_w:.1f} W",
            f"presence {r.presence_count}",
            f"{r.ambient_lux:g} lx",
            *_flags((r.fault, "FAULT")),
        ]
    elif kind == "traffic_signal":
        s = telemetry.traffic_signal
        parts = [
            SIGNAL_PHASE.label(s.phase),
            f"queue {s.queue_length}",
            *_flags((s.bus_priority_active, "bus priority"), (s.fault, "FAULT")),
        ]
    elif kind == "bollard":
        b = telemetry.bollard
        parts = [
            BOLLARD_POSITION.label(b.position),
            *_flags((b.vehicle_present, "vehicle present"), (b.fault, "FAULT")),
        ]
    elif kind == "water_meter":
        w = telemetry.water_meter
        parts = [
            f"{w.litres_since_last:g} L",
            f"battery {w.battery_pct:g}%",
            *_flags((w.leak_suspected, "LEAK suspected")),
        ]
    elif kind == "parking":
        p = telemetry.parking
        parts = ["occupied" if p.occupied else "free", f"battery {p.battery_pct:g}%"]
    elif kind == "air_quality":
        a = telemetry.air_quality
        parts = [
            f"NO2 {a.no2_ugm3:g}",
            f"O3 {a.o3_ugm3:g}",
            f"PM10 {a.pm10_ugm3:g}",
            f"PM2.5 {a.pm25_ugm3:g} µg/m³",
        ]
    elif kind == "camera":
        c = telemetry.camera
        parts = [
            "online" if c.online else "OFFLINE",
            f"{c.people_count} people",
            f"{c.vehicle_count} vehicles",
        ]
        if c.event not in (telemetry_pb2.CAMERA_EVENT_UNSPECIFIED, telemetry_pb2.NO_EVENT):
            parts.append(CAMERA_EVENT.label(c.event).upper())
    elif kind == "road_weather":
        rw = telemetry.road_weather
        parts = [
            f"road {rw.road_temperature_c:.1f} °C",
            f"air {rw.air_temperature_c:.1f} °C",
            *_flags((rw.ice_detected, "ICE")),
        ]
    elif kind == "vehicle":
        v = telemetry.vehicle
        parts = [f"{v.latitude:.5f},{v.longitude:.5f}", f"{v.speed_kmh:.0f} km/h"]
        if v.line:
            parts += [f"line {v.line}", f"delay {v.delay_s:+.0f} s"]
    else:
        return "-"
    return ", ".join(parts)


def _last_seen(asset: operator_pb2.Asset) -> str:
    if not asset.HasField("last_telemetry"):
        return "never"
    t = asset.last_telemetry
    return when(t.observed_at_ms or t.received_at_ms)


def _count(n: int, noun: str) -> str:
    """`no alarms`, `1 alarm`, `3 alarms` (`noun` is a plural in -s)."""
    if n == 0:
        return f"no {noun}"
    return f"{n} {noun.removesuffix('s') if n == 1 else noun}"


def _more(shown: int, next_page_token: str, noun: str, total: int | None = None) -> str:
    if total is not None and (total > shown or next_page_token):
        return f"{shown} of {total} {noun}; --all lists them all"
    if next_page_token:
        return f"{_count(shown, noun)} shown, more exist; --all lists them all"
    return _count(shown, noun)


# --- lists ----------------------------------------------------------------------------------


def assets_table(
    assets: Sequence[operator_pb2.Asset], *, total: int | None = None, next_page_token: str = ""
) -> TableData:
    rows = [
        (
            a.dev_eui,
            a.name,
            ASSET_CLASS.label(a.asset_class),
            a.group,
            a.commune,
            str(a.active_alarms) if a.active_alarms else "",
            "held" if a.overridden else "",
            _last_seen(a),
            reading_summary(a.last_telemetry) if a.HasField("last_telemetry") else "",
        )
        for a in assets
    ]
    return TableData(
        "assets",
        (
            "devEUI",
            "name",
            "class",
            "group",
            "commune",
            "alarms",
            "override",
            "last seen",
            "reading",
        ),
        rows,
        _more(len(rows), next_page_token, "assets", total),
    )


def commands_table(
    records: Sequence[control_state_pb2.CommandRecord], *, next_page_token: str = ""
) -> TableData:
    rows = [
        (
            r.command.command_id,
            COMMAND_STATUS.label(r.status),
            ASSET_CLASS.label(r.command.asset_class),
            target_summary(r.command),
            action_summary(r.command),
            f"{r.acked_count}/{r.expected_acks}",
            f"{r.attempts}/{r.max_attempts}",
            r.issued_by,
            when(r.created_at_ms),
        )
        for r in records
    ]
    return TableData(
        "commands",
        ("id", "status", "class", "target", "action", "acks", "sends", "issued by", "created"),
        rows,
        _more(len(rows), next_page_token, "commands"),
    )


def override_phase(override: control_state_pb2.Override, now_ms: int) -> str:
    """`scheduled`, `active` or `ended`, as of `now_ms`."""
    if now_ms < override.starts_at_ms:
        return "scheduled"
    if now_ms < override.ends_at_ms:
        return "active"
    return "ended"


def overrides_table(
    overrides: Sequence[control_state_pb2.Override], *, now_ms: int, next_page_token: str = ""
) -> TableData:
    rows = [
        (
            o.override_id,
            override_phase(o, now_ms),
            _group_of(o.asset_class, o.group),
            action_summary(o.action),
            when(o.starts_at_ms),
            when(o.ends_at_ms),
            o.set_by,
            o.reason,
        )
        for o in overrides
    ]
    return TableData(
        "overrides",
        ("id", "state", "group", "holds at", "from", "until", "set by", "reason"),
        rows,
        _more(len(rows), next_page_token, "overrides"),
    )


def alarm_notes(alarm: operations_pb2.Alarm, *, now_ms: int = 0) -> str:
    """What sets an alarm apart in the list: shelved (until when, by whom), suppressed
    (under which cause), a cause (how many it suppresses), chattering; '' for none.
    A shelve that ended before `now_ms` is not shown (0: every shelve is)."""
    notes = []
    if alarm.shelved_until_ms > now_ms:
        notes.append(f"shelved until {when(alarm.shelved_until_ms)} by {alarm.shelved_by}")
    if alarm.suppressed_by:
        notes.append(f"suppressed under {alarm.suppressed_by}")
    if alarm.suppressed_count:
        notes.append(f"suppresses {alarm.suppressed_count}")
    if alarm.chattering:
        notes.append("chattering")
    return "; ".join(notes)


def alarms_table(
    alarms: Sequence[operations_pb2.Alarm], *, now_ms: int = 0, next_page_token: str = ""
) -> TableData:
    rows = [
        (
            a.alarm_id,
            ALARM_STATE.label(a.state),
            SEVERITY.label(a.severity),
            ASSET_CLASS.label(a.asset_class),
            a.originator,
            a.type,
            when(a.raised_at_ms),
            a.acknowledged_by,
            alarm_notes(a, now_ms=now_ms),
            a.detail,
        )
        for a in alarms
    ]
    return TableData(
        "alarms",
        (
            "id",
            "state",
            "severity",
            "class",
            "originator",
            "type",
            "raised",
            "acked by",
            "notes",
            "detail",
        ),
        rows,
        _more(len(rows), next_page_token, "alarms"),
    )


def incidents_table(
    incidents: Sequence[operations_pb2.Incident], *, next_page_token: str = ""
) -> TableData:
    rows = [
        (
            i.incident_id,
            INCIDENT_KIND.label(i.kind),
            "closed" if i.closed else "open",
            str(i.priority),
            i.commune,
            INCIDENT_SOURCE.label(i.source),
            when(i.opened_at_ms),
            i.detail,
        )
        for i in incidents
    ]
    return TableData(
        "incidents",
        ("id", "kind", "state", "priority", "commune", "source", "opened", "detail"),
        rows,
        _more(len(rows), next_page_token, "incidents"),
    )


def tasks_table(tasks: Sequence[operations_pb2.Task], *, next_page_token: str = "") -> TableData:
    rows = [
        (
            t.task_id,
            DEPARTMENT.label(t.department),
            t.kind,
            TASK_STATUS.label(t.status),
            str(t.priority),
            t.assignee,
            t.origin,
            when(t.updated_at_ms or t.created_at_ms),
        )
        for t in tasks
    ]
    return TableData(
        "tasks",
        ("id", "department", "kind", "status", "priority", "assignee", "origin", "updated"),
        rows,
        _more(len(rows), next_page_token, "tasks"),
    )


def actors_table(status: admin_pb2.PostStatus) -> TableData:
    rows = [
        (
            a.name,
            ASSET_CLASS.label(a.asset_class),
            a.group,
            "yes" if a.healthy else "NO",
            str(a.restarts),
            str(a.devices),
        )
        for a in status.actors
    ]
    unhealthy = sum(1 for a in status.actors if not a.healthy)
    return TableData(
        "actors",
        ("actor", "class", "group", "healthy", "restarts", "devices"),
        rows,
        f"{_count(len(rows), 'actors')}, {unhealthy} unhealthy",
    )


def counts_table(title: str, what: str, counts: Mapping[str, int]) -> TableData:
    rows = [(name, str(counts[name])) for name in sorted(counts)]
    return TableData(title, (what, "count"), rows, f"{sum(counts.values())} in all")


def airtime_table(airtime: admin_pb2.Airtime) -> TableData:
    """Each gateway's airtime per sub-band over the duty cycle's window, against its budget."""
    rows = [
        (
            g.gateway_id,
            g.sub_band,
            f"{g.used_s:.1f} s",
            f"{g.budget_s:.0f} s",
            f"{(g.used_s / g.budget_s if g.budget_s else 0):.0%}",
        )
        for g in sorted(airtime.gateways, key=lambda g: (g.gateway_id, g.sub_band))
    ]
    footer = (
        f"over the last {airtime.window_s / 60:g} min (the city's clock), as of "
        f"{when(airtime.as_of_ms)}; {airtime.held} command(s) waiting for airtime, "
        f"{airtime.refused} refused for lack of it"
        if airtime.known
        else "the downlink gate has not reported yet"
    )
    return TableData("airtime", ("gateway", "sub-band", "used", "budget", "share"), rows, footer)


# --- one record -----------------------------------------------------------------------------


def asset_detail(asset: operator_pb2.Asset) -> Pairs:
    pairs: Pairs = [
        ("devEUI", asset.dev_eui),
        ("name", asset.name),
        ("class", ASSET_CLASS.label(asset.asset_class)),
        ("group", asset.group),
        ("commune", asset.commune),
        ("location", f"{asset.location.latitude:.5f}, {asset.location.longitude:.5f}"),
        ("active alarms", str(asset.active_alarms)),
        ("override", "held by an operator's override" if asset.overridden else "none"),
        ("last seen", _last_seen(asset)),
    ]
    if asset.HasField("last_telemetry"):
        t = asset.last_telemetry
        pairs += [
            ("reading", reading_summary(t)),
            ("radio", f"fCnt {t.f_cnt}, RSSI {t.rssi} dBm, SNR {t.snr:.1f} dB"),
        ]
    return pairs


def command_detail(record: control_state_pb2.CommandRecord) -> Pairs:
    c = record.command
    pairs: Pairs = [
        ("id", c.command_id),
        ("status", COMMAND_STATUS.label(record.status)),
        ("class", ASSET_CLASS.label(c.asset_class)),
        ("target", target_summary(c)),
        ("action", action_summary(c)),
        ("epoch", str(c.epoch)),
        ("issued by", record.issued_by or c.issued_by),
        ("created", when(record.created_at_ms)),
        ("deadline", when(record.deadline_ms)),
        ("sends", f"{record.attempts} of at most {record.max_attempts}"),
        ("last sent", when(record.last_sent_at_ms)),
    ]
    if record.multicast:
        pairs.append(("sent as", "one multicast; confirmed by the state the devices report"))
        pairs.append(("confirmed", f"{record.acked_count} of {record.expected_acks}"))
    else:
        acks = f"{record.acked_count} of {record.expected_acks}, {record.nacked_count} negative"
        pairs.append(("acks", acks))
    if record.straggler_count:
        listed = ", ".join(record.stragglers)
        more = record.straggler_count - len(record.stragglers)
        pairs.append(
            (
                "stragglers",
                f"{record.straggler_count}: {listed}" + (f" and {more} more" if more else ""),
            )
        )
    if record.waiting:
        pairs.append(("waiting", record.waiting))
    approval = record.approval
    if approval.emergency:
        pairs.append(("EMERGENCY", f"sent without approval: {approval.danger}"))
    elif approval.danger:
        pairs.append(("needs approval", approval.danger))
        if approval.decided_by:
            verdict = "rejected" if record.status == command_pb2.REJECTED else "approved"
            pairs.append((verdict, f"by {approval.decided_by}, {when(approval.decided_at_ms)}"))
        else:
            pairs.append(("approve by", when(approval.approve_by_ms)))
    if record.finished_at_ms:
        pairs.append(("finished", when(record.finished_at_ms)))
    if record.detail:
        pairs.append(("detail", record.detail))
    return pairs


def override_detail(override: control_state_pb2.Override, *, now_ms: int) -> Pairs:
    return [
        ("id", override.override_id),
        ("state", override_phase(override, now_ms)),
        ("group", _group_of(override.asset_class, override.group)),
        ("holds at", action_summary(override.action)),
        ("from", when(override.starts_at_ms)),
        ("until", when(override.ends_at_ms)),
        ("set by", override.set_by),
        ("reason", override.reason),
        ("epoch", str(override.epoch)),
    ]


def alarm_detail(alarm: operations_pb2.Alarm) -> Pairs:
    pairs: Pairs = [
        ("id", alarm.alarm_id),
        ("state", ALARM_STATE.label(alarm.state)),
        ("severity", SEVERITY.label(alarm.severity)),
        ("class", ASSET_CLASS.label(alarm.asset_class)),
        ("group", alarm.group),
        ("originator", alarm.originator),
        ("type", alarm.type),
        ("raised", when(alarm.raised_at_ms)),
        ("updated", when(alarm.updated_at_ms)),
        ("acknowledged by", alarm.acknowledged_by or "-"),
    ]
    if alarm.shelved_until_ms:
        pairs += [
            ("shelved until", when(alarm.shelved_until_ms)),
            ("shelved by", alarm.shelved_by),
            ("shelve reason", alarm.shelve_reason),
        ]
    if alarm.suppressed_by:
        pairs.append(("suppressed under", alarm.suppressed_by))
    if alarm.suppressed_count:
        pairs.append(("suppresses", f"{alarm.suppressed_count} alarms"))
    if alarm.chattering:
        pairs.append(("chattering", "raised again and again: held until stable"))
    pairs.append(("detail", alarm.detail))
    return pairs


def incident_detail(incident: operations_pb2.Incident) -> Pairs:
    return [
        ("id", incident.incident_id),
        ("kind", INCIDENT_KIND.label(incident.kind)),
        ("state", "closed" if incident.closed else "open"),
        ("priority", str(incident.priority)),
        ("source", INCIDENT_SOURCE.label(incident.source)),
        ("reported by", incident.reported_by),
        ("commune", incident.commune),
        (
            "location",
            f"{incident.location.latitude:.5f}, {incident.location.longitude:.5f}",
        ),
        ("opened", when(incident.opened_at_ms)),
        ("detail", incident.detail),
    ]


def task_detail(task: operations_pb2.Task) -> Pairs:
    return [
        ("id", task.task_id),
        ("department", DEPARTMENT.label(task.department)),
        ("kind", task.kind),
        ("status", TASK_STATUS.label(task.status)),
        ("priority", str(task.priority)),
        ("assignee", task.assignee or "-"),
        ("origin", task.origin or "-"),
        ("location", f"{task.location.latitude:.5f}, {task.location.longitude:.5f}"),
        ("created", when(task.created_at_ms)),
        ("updated", when(task.updated_at_ms)),
        ("detail", task.detail),
    ]


def status_detail(status: admin_pb2.PostStatus) -> Pairs:
    health = "healthy" if status.healthy else f"UNHEALTHY: {status.unhealthy_reason or '?'}"
    restarts = sum(a.restarts for a in status.actors)
    down = sum(1 for a in status.actors if not a.healthy)
    return [
        ("post", status.post),
        ("role", status.role),
        ("epoch", str(status.epoch)),
        ("health", health),
        ("started", when(status.started_at_ms)),
        ("actors", f"{len(status.actors)} ({down} unhealthy, {restarts} restarts)"),
        ("uplinks", f"{sum(status.uplinks_by_class.values())} ({status.uplinks_per_s:.1f}/s)"),
        ("dead letters", str(sum(status.dead_letters_by_reason.values()))),
        ("commands pending", str(status.commands_pending)),
        (
            "reading to policy",
            f"p50 {status.apply_lag_p50_ms} ms, p99 {status.apply_lag_p99_ms} ms, "
            f"max {status.apply_lag_max_ms} ms ({status.readings_applied:,} readings)",
        ),
        (
            "footprint",
            f"{status.memory_pss_bytes / 2**30:.2f} GiB PSS, {status.cpu_cores:.2f} cores, "
            f"{status.processes} processes",
        ),
        ("data time", _data_time(status)),
        (
            "alarms held back",
            f"{status.alarms_suppressed} suppressed under a cause, {status.alarms_shelved} shelved",
        ),
    ]


def _data_time(status: admin_pb2.PostStatus) -> str:
    """The stream's own time and how fast it moves against the configured speed."""
    if not status.stream_time_ms:
        return "no uplink yet"
    speed = (
        f"effective x{status.effective_speed:.1f} of x{status.configured_speed:g}"
        if status.effective_speed
        else f"x{status.configured_speed:g}"
    )
    return f"{when(status.stream_time_ms)} ({speed})"


# --- events ---------------------------------------------------------------------------------


def event_line(event: operator_pb2.Event) -> str:
    """One line per event: `08:00:01Z alarm major active_unack lamp_fault on ...`."""
    kind = event.WhichOneof("kind")
    at = clock(event.at_ms)
    if kind == "alarm":
        a = event.alarm
        text = (
            f"{SEVERITY.label(a.severity)} {ALARM_STATE.label(a.state)} {a.type} "
            f"on {a.originator} ({_group_of(a.asset_class, a.group)}) [{a.alarm_id}]"
        )
        if a.detail:
            text += f": {a.detail}"
    elif kind == "command":
        r = event.command
        text = (
            f"{COMMAND_STATUS.label(r.status)} {ASSET_CLASS.label(r.command.asset_class)} "
            f"{target_summary(r.command)}: {action_summary(r.command)} "
            f"acks {r.acked_count}/{r.expected_acks} [{r.command.command_id}]"
        )
    elif kind == "task":
        t = event.task
        text = (
            f"{TASK_STATUS.label(t.status)} {DEPARTMENT.label(t.department)} {t.kind} "
            f"p{t.priority}" + (f" -> {t.assignee}" if t.assignee else "") + f" [{t.task_id}]"
        )
    elif kind == "incident":
        i = event.incident
        state = "closed" if i.closed else "open"
        text = (
            f"{state} {INCIDENT_KIND.label(i.kind)} p{i.priority} in {i.commune or '?'} "
            f"[{i.incident_id}]: {i.detail}"
        )
    elif kind == "override":
        o = event.override
        text = (
            f"{_group_of(o.asset_class, o.group)} held at {action_summary(o.action)} "
            f"until {when(o.ends_at_ms)} by {o.set_by} [{o.override_id}]"
        )
    elif kind == "telemetry":
        t2 = event.telemetry
        text = f"{t2.dev_eui} ({_group_of(t2.asset_class, t2.group)}): {reading_summary(t2)}"
    else:
        return f"{at} (an event of a kind this console does not know)"
    return f"{at} {kind} {text}"


# --- JSON -----------------------------------------------------------------------------------


def to_json(message: Message) -> dict[str, Any]:
    """The protobuf JSON mapping of a message, as a dict."""
    return MessageToDict(message)


def json_document(messages: Message | Iterable[Message]) -> str:
    """One JSON document: an object for a message, a list for several."""
    if isinstance(messages, Message):
        return json.dumps(to_json(messages), indent=2, ensure_ascii=False)
    return json.dumps([to_json(m) for m in messages], indent=2, ensure_ascii=False)


def json_line(message: Message) -> str:
    """One compact JSON line (for event streams)."""
    return json.dumps(to_json(message), ensure_ascii=False, separators=(",", ":"))


# --- rich -----------------------------------------------------------------------------------


def rich_table(data: TableData) -> Table:
    from rich.table import Table  # rich loads only when a table is shown

    table = Table(title=data.title, caption=data.footer or None, title_justify="left")
    for i, column in enumerate(data.columns):
        # Wrap at spaces only: an id or a devEUI cut in two cannot be copied.
        longest = max((len(w) for row in data.rows for w in row[i].split()), default=0)
        table.add_column(column, min_width=min(max(longest, len(column)), MAX_UNBROKEN))
    for row in data.rows:
        table.add_row(*row)
    return table


def rich_detail(title: str, pairs: Pairs) -> Table:
    from rich.table import Table

    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column("field", style="bold", no_wrap=True)
    table.add_column("value", overflow="fold")
    for name, value in pairs:
        table.add_row(name, value)
    return table

"""The console's rendering: rows per list type, detail lines, event lines, JSON, enum words."""

from __future__ import annotations

import io
import json

import pytest
from google.protobuf.json_format import MessageToDict
from rich.console import Console

from console import render
from console.names import ALARM_STATE, ASSET_CLASS, INCIDENT_KIND, SEVERITY
from protos.citypost.v1 import (
    admin_pb2,
    assets_pb2,
    command_pb2,
    control_state_pb2,
    operations_pb2,
    operator_pb2,
    telemetry_pb2,
)

pytestmark = pytest.mark.unit

AC = assets_pb2.AssetClass
T0 = 1_800_000_000_000  # 2027-01-15 08:00:00Z
UUID = "3e618958-4e0e-482f-8895-e3f974905b05"


def _lamp_command(pct: float = 30) -> command_pb2.Command:
    return command_pb2.Command(
        command_id=UUID,
        epoch=4,
        asset_class=AC.STREET_LAMP,
        target=command_pb2.Target(group="talant"),
        set_brightness=command_pb2.SetBrightness(brightness_pct=pct),
    )


def _record() -> control_state_pb2.CommandRecord:
    return control_state_pb2.CommandRecord(
        command=_lamp_command(),
        status=command_pb2.SENT,
        attempts=1,
        max_attempts=3,
        created_at_ms=T0,
        deadline_ms=T0 + 60_000,
        issued_by="op-claire",
        expected_acks=3,
        acked_count=2,
    )


def _asset(with_reading: bool) -> operator_pb2.Asset:
    asset = operator_pb2.Asset(
        dev_eui="0100000000000002",
        name="talant-2",
        asset_class=AC.STREET_LAMP,
        group="talant",
        commune="Talant",
        location=operations_pb2.GeoPoint(latitude=47.3372, longitude=5.0058),
        active_alarms=1,
        overridden=True,
    )
    if with_reading:
        asset.last_telemetry.CopyFrom(
            telemetry_pb2.Telemetry(
                dev_eui=asset.dev_eui,
                observed_at_ms=T0,
                f_cnt=12,
                rssi=-110,
                snr=-3.5,
                lamp=telemetry_pb2.LampReading(
                    brightness_pct=35, power_w=12.5, presence_count=2, fault=True
                ),
            )
        )
    return asset


def _alarm() -> operations_pb2.Alarm:
    return operations_pb2.Alarm(
        alarm_id="a-1",
        originator="0100000000000001",
        type="lamp_fault",
        severity=operations_pb2.MAJOR,
        state=operations_pb2.ACTIVE_ACK,
        asset_class=AC.STREET_LAMP,
        group="talant",
        detail="no light",
        raised_at_ms=T0,
        acknowledged_by="op-luc",
    )


def _override(starts: int, ends: int) -> control_state_pb2.Override:
    return control_state_pb2.Override(
        override_id="o-1",
        group="talant",
        asset_class=AC.STREET_LAMP,
        action=_lamp_command(100),
        starts_at_ms=starts,
        ends_at_ms=ends,
        set_by="op-claire",
        reason="night market",
    )


def _task() -> operations_pb2.Task:
    return operations_pb2.Task(
        task_id="t-1",
        department=operations_pb2.SNOW_SERVICE,
        kind="salt_route",
        status=operations_pb2.ASSIGNED,
        priority=2,
        assignee="car-7",
        origin="road_weather/north",
        created_at_ms=T0,
        updated_at_ms=T0 + 61_000,
    )


def _incident() -> operations_pb2.Incident:
    return operations_pb2.Incident(
        incident_id="i-1",
        kind=operations_pb2.INCIDENT_SNOW_ICE,
        source=operations_pb2.CITIZEN,
        commune="Talant",
        detail="black ice on the hill",
        priority=2,
        opened_at_ms=T0,
    )


# --- words ---------------------------------------------------------------------------------


def test_enum_words_read_and_parse_both_ways() -> None:
    assert ASSET_CLASS.label(AC.PARKING_SPOT) == "parking_spot"
    assert ASSET_CLASS.parse("street-lamp") == ASSET_CLASS.parse("STREET_LAMP") == AC.STREET_LAMP
    assert INCIDENT_KIND.label(operations_pb2.INCIDENT_SNOW_ICE) == "snow_ice"
    assert INCIDENT_KIND.parse("fire") == operations_pb2.INCIDENT_FIRE
    assert ASSET_CLASS.label(0) == "-" and ASSET_CLASS.label(99) == "99"
    assert set(ALARM_STATE.parse_many("active")) == {
        operations_pb2.ACTIVE_UNACK,
        operations_pb2.ACTIVE_ACK,
    }
    with pytest.raises(ValueError, match="names several values"):
        ALARM_STATE.parse("cleared")
    with pytest.raises(ValueError, match="'huge' is not one of: info, minor, major, critical"):
        SEVERITY.parse("huge")
    with pytest.raises(ValueError):
        ASSET_CLASS.parse("asset_class_unspecified")  # UNSPECIFIED is never a word


def test_times_are_utc_to_the_second_and_unset_is_a_dash() -> None:
    assert render.when(T0) == "2027-01-15 08:00:00Z"
    assert render.when(0) == "-"
    assert render.clock(T0 + 61_500) == "08:01:01Z"


def test_actions_and_targets_in_words() -> None:
    assert render.action_summary(_lamp_command(30)) == "brightness 30%"
    bollard = command_pb2.Command(
        set_bollard_position=command_pb2.SetBollardPosition(position=telemetry_pb2.RAISED)
    )
    assert render.action_summary(bollard) == "bollard raised"
    green = command_pb2.Command(signal_priority=command_pb2.SignalPriority(extend_green_ms=5000))
    assert render.action_summary(green) == "green +5000 ms"
    normal = command_pb2.Command()
    normal.set_signal_mode.SetInParent()
    assert render.action_summary(normal) == "signal normal"
    flashing = command_pb2.Command(
        set_signal_mode=command_pb2.SetSignalMode(phase=telemetry_pb2.FLASHING_AMBER)
    )
    assert render.action_summary(flashing) == "signal flashing_amber"
    assert render.action_summary(command_pb2.Command()) == "-"
    assert render.target_summary(_lamp_command()) == "group talant"
    one = command_pb2.Command(target=command_pb2.Target(dev_eui="0300000000000001"))
    assert render.target_summary(one) == "device 0300000000000001"


def test_readings_in_a_few_words() -> None:
    assert render.reading_summary(_asset(True).last_telemetry) == (
        "35%, 12.5 W, presence 2, 0 lx, FAULT"
    )
    road = telemetry_pb2.Telemetry(
        road_weather=telemetry_pb2.RoadWeatherReading(
            road_temperature_c=-1.25, air_temperature_c=0.5, ice_detected=True
        )
    )
    assert render.reading_summary(road) == "road -1.2 °C, air 0.5 °C, ICE"
    bus = telemetry_pb2.Telemetry(
        vehicle=telemetry_pb2.VehicleReading(
            latitude=47.3, longitude=5.04, speed_kmh=31.6, line=3, delay_s=95
        )
    )
    assert render.reading_summary(bus) == "47.30000,5.04000, 32 km/h, line 3, delay +95 s"
    camera = telemetry_pb2.Telemetry(
        camera=telemetry_pb2.CameraReading(online=True, people_count=4, event=telemetry_pb2.FIRE)
    )
    assert render.reading_summary(camera) == "online, 4 people, 0 vehicles, FIRE"
    assert render.reading_summary(telemetry_pb2.Telemetry()) == "-"


# --- tables --------------------------------------------------------------------------------


def test_assets_table_rows_and_how_many_more() -> None:
    table = render.assets_table([_asset(True), _asset(False)], total=5, next_page_token="next")
    assert table.columns[0] == "devEUI" and len(table.rows) == 2
    first, second = table.rows
    assert first == (
        "0100000000000002",
        "talant-2",
        "street_lamp",
        "talant",
        "Talant",
        "1",
        "held",
        "2027-01-15 08:00:00Z",
        "35%, 12.5 W, presence 2, 0 lx, FAULT",
    )
    assert second[7:] == ("never", "")
    assert table.footer == "2 of 5 assets; --all lists them all"
    assert render.assets_table([_asset(False)], total=1).footer == "1 asset"
    assert render.assets_table([], total=0).footer == "no assets"


def test_commands_table() -> None:
    table = render.commands_table([_record()], next_page_token="t")
    assert table.rows == [
        (
            UUID,
            "sent",
            "street_lamp",
            "group talant",
            "brightness 30%",
            "2/3",
            "1/3",
            "op-claire",
            "2027-01-15 08:00:00Z",
        )
    ]
    assert table.footer == "1 command shown, more exist; --all lists them all"


def test_overrides_table_tells_scheduled_active_and_ended() -> None:
    overrides = [_override(T0, T0 + 60_000), _override(T0 + 10_000, T0 + 20_000)]
    table = render.overrides_table(overrides, now_ms=T0 + 30_000)
    assert [row[1] for row in table.rows] == ["active", "ended"]
    assert table.rows[0][2:4] == ("street_lamp/talant", "brightness 100%")
    assert table.rows[0][5:] == ("2027-01-15 08:01:00Z", "op-claire", "night market")
    assert render.override_phase(overrides[1], T0) == "scheduled"


def test_alarms_incidents_tasks_tables() -> None:
    alarms = render.alarms_table([_alarm()])
    assert alarms.rows[0] == (
        "a-1",
        "active_ack",
        "major",
        "street_lamp",
        "0100000000000001",
        "lamp_fault",
        "2027-01-15 08:00:00Z",
        "op-luc",
        "",
        "no light",
    )
    marked = _alarm()
    marked.shelved_until_ms, marked.shelved_by = T0 + 60_000, "op-ana"
    marked.suppressed_by, marked.suppressed_count, marked.chattering = "a-0", 2, True
    assert render.alarms_table([marked], now_ms=T0).rows[0][8] == (
        "shelved until 2027-01-15 08:01:00Z by op-ana; suppressed under a-0; suppresses 2; "
        "chattering"
    )
    assert render.alarm_notes(marked, now_ms=T0 + 60_000).startswith("suppressed under a-0")
    incidents = render.incidents_table([_incident()])
    assert incidents.rows[0] == (
        "i-1",
        "snow_ice",
        "open",
        "2",
        "Talant",
        "citizen",
        "2027-01-15 08:00:00Z",
        "black ice on the hill",
    )
    tasks = render.tasks_table([_task()])
    assert tasks.rows[0] == (
        "t-1",
        "snow_service",
        "salt_route",
        "assigned",
        "2",
        "car-7",
        "road_weather/north",
        "2027-01-15 08:01:01Z",
    )
    assert (alarms.footer, incidents.footer, tasks.footer) == ("1 alarm", "1 incident", "1 task")


def _status() -> admin_pb2.PostStatus:
    return admin_pb2.PostStatus(
        post="primary",
        role="leader",
        epoch=7,
        healthy=False,
        unhealthy_reason="actors down: policy:bus/line-3",
        actors=[
            admin_pb2.ActorStatus(
                name="policy:bus/line-3", asset_class=AC.BUS, group="line-3", restarts=2, devices=9
            ),
            admin_pb2.ActorStatus(
                name="policy:camera/centre",
                asset_class=AC.CAMERA,
                group="centre",
                healthy=True,
                devices=4,
            ),
        ],
        uplinks_by_class={"bus": 120, "camera": 30},
        dead_letters_by_reason={"bad_lpp": 2},
        uplinks_per_s=12.5,
        commands_pending=3,
        started_at_ms=T0,
        memory_pss_bytes=3 * 2**29,
        cpu_cores=0.25,
        processes=14,
        apply_lag_p50_ms=40,
        apply_lag_p99_ms=900,
        apply_lag_max_ms=1500,
        readings_applied=12_345,
    )


def test_status_actors_and_counts() -> None:
    status = _status()
    detail = dict(render.status_detail(status))
    assert detail["health"] == "UNHEALTHY: actors down: policy:bus/line-3"
    assert detail["actors"] == "2 (1 unhealthy, 2 restarts)"
    assert detail["uplinks"] == "150 (12.5/s)" and detail["commands pending"] == "3"
    assert detail["footprint"] == "1.50 GiB PSS, 0.25 cores, 14 processes"
    assert detail["reading to policy"] == "p50 40 ms, p99 900 ms, max 1500 ms (12,345 readings)"
    actors = render.actors_table(status)
    assert actors.rows == [
        ("policy:bus/line-3", "bus", "line-3", "NO", "2", "9"),
        ("policy:camera/centre", "camera", "centre", "yes", "0", "4"),
    ]
    assert actors.footer == "2 actors, 1 unhealthy"
    counts = render.counts_table("uplinks", "class", status.uplinks_by_class)
    assert counts.rows == [("bus", "120"), ("camera", "30")] and counts.footer == "150 in all"


def test_details_of_one_record() -> None:
    record = _record()
    record.status = command_pb2.FAILED
    record.finished_at_ms = T0 + 30_000
    record.detail = "no ack after 3 sends"
    detail = dict(render.command_detail(record))
    assert detail["status"] == "failed" and detail["acks"] == "2 of 3, 0 negative"
    assert detail["finished"] == "2027-01-15 08:00:30Z" and detail["detail"] == record.detail
    assert "finished" not in dict(render.command_detail(_record()))
    asset = dict(render.asset_detail(_asset(True)))
    assert asset["radio"] == "fCnt 12, RSSI -110 dBm, SNR -3.5 dB"
    assert asset["override"] == "held by an operator's override"
    assert "reading" not in dict(render.asset_detail(_asset(False)))
    assert dict(render.alarm_detail(_alarm()))["acknowledged by"] == "op-luc"
    assert dict(render.task_detail(_task()))["assignee"] == "car-7"
    assert dict(render.incident_detail(_incident()))["source"] == "citizen"
    assert dict(render.override_detail(_override(T0, T0 + 1), now_ms=T0 + 1))["state"] == "ended"


# --- events --------------------------------------------------------------------------------


def test_one_line_per_event_of_each_kind() -> None:
    at = T0 + 1_000
    lines = [
        render.event_line(operator_pb2.Event(at_ms=at, alarm=_alarm())),
        render.event_line(operator_pb2.Event(at_ms=at, command=_record())),
        render.event_line(operator_pb2.Event(at_ms=at, task=_task())),
        render.event_line(operator_pb2.Event(at_ms=at, incident=_incident())),
        render.event_line(operator_pb2.Event(at_ms=at, override=_override(T0, T0 + 60_000))),
        render.event_line(operator_pb2.Event(at_ms=at, telemetry=_asset(True).last_telemetry)),
    ]
    assert lines[0] == (
        "08:00:01Z alarm major active_ack lamp_fault on 0100000000000001 "
        "(street_lamp/talant) [a-1]: no light"
    )
    assert lines[1] == (
        f"08:00:01Z command sent street_lamp group talant: brightness 30% acks 2/3 [{UUID}]"
    )
    assert lines[2] == "08:00:01Z task assigned snow_service salt_route p2 -> car-7 [t-1]"
    assert lines[3] == "08:00:01Z incident open snow_ice p2 in Talant [i-1]: black ice on the hill"
    assert lines[4] == (
        "08:00:01Z override street_lamp/talant held at brightness 100% "
        "until 2027-01-15 08:01:00Z by op-claire [o-1]"
    )
    assert lines[5].startswith("08:00:01Z telemetry 0100000000000002 (-/)")
    assert render.event_line(operator_pb2.Event(at_ms=at)).endswith("does not know)")


# --- JSON ----------------------------------------------------------------------------------


def test_json_is_the_protobuf_mapping() -> None:
    record = _record()
    assert json.loads(render.json_document(record)) == MessageToDict(record)
    assets = [_asset(True), _asset(False)]
    assert json.loads(render.json_document(assets)) == [MessageToDict(a) for a in assets]
    assert json.loads(render.json_document([])) == []
    event = operator_pb2.Event(at_ms=T0, alarm=_alarm())
    line = render.json_line(event)
    assert "\n" not in line and json.loads(line) == MessageToDict(event)
    status = _status()
    assert json.loads(render.json_document(status)) == MessageToDict(status)


def test_rich_table_keeps_ids_whole_on_a_narrow_terminal() -> None:
    buffer = io.StringIO()
    console = Console(file=buffer, width=70, color_system=None)
    console.print(render.rich_table(render.commands_table([_record()])))
    text = buffer.getvalue()
    assert UUID in text and "1 command" in text


def test_a_multicast_tells_who_confirmed_and_names_the_stragglers() -> None:
    record = control_state_pb2.CommandRecord(
        status=command_pb2.PARTIAL,
        multicast=True,
        expected_acks=120,
        acked_count=117,
        straggler_count=3,
        stragglers=["00000000000000c1", "00000000000000c2"],
        detail="117 of 120 devices reported the commanded state; 3 did not by the deadline",
    )
    record.command.set_lamp_profile.profile_id = 4
    record.command.set_lamp_profile.night_pct = 40
    record.command.set_lamp_profile.boost_pct = 100
    record.command.set_lamp_profile.boost_hold_s = 120
    record.command.set_lamp_profile.on_below_elevation_deg = -2
    detail = dict(render.command_detail(record))
    assert detail["status"] == "partial"
    assert detail["confirmed"] == "117 of 120" and "acks" not in detail
    assert detail["stragglers"] == "3: 00000000000000c1, 00000000000000c2 and 1 more"
    assert render.action_summary(record.command) == (
        "profile 4: 40% below -2°, 100% on presence for 120 s"
    )


def test_airtime_per_gateway_against_its_budget() -> None:
    airtime = admin_pb2.Airtime(
        known=True,
        as_of_ms=T0,
        window_s=3600,
        gateways=[
            admin_pb2.GatewayAirtime(
                gateway_id="0016c001f1000002", sub_band="P", used_s=36.0, budget_s=360
            ),
            admin_pb2.GatewayAirtime(
                gateway_id="0016c001f1000001", sub_band="P", used_s=324.4, budget_s=360
            ),
        ],
        held=2,
        refused=1,
    )
    table = render.airtime_table(airtime)
    assert [row[0] for row in table.rows] == ["0016c001f1000001", "0016c001f1000002"]
    assert table.rows[0][2:] == ("324.4 s", "360 s", "90%")
    assert "2 command(s) waiting" in table.footer and "1 refused" in table.footer
    unknown = render.airtime_table(admin_pb2.Airtime())
    assert unknown.rows == [] and "not reported" in unknown.footer

"""Silence judged in the data's own time and filed under its cause, on hand-made histories."""

from __future__ import annotations

import pytest

from actors.alarm_rules import AlarmShaper
from actors.decisions import ClearAlarm, Decision, RaiseAlarm
from bridges.registry import Device, DeviceRegistry
from citypost.config import AlarmsConfig, SilenceConfig
from post.silence_watch import (
    BROKER,
    BROKER_LOST,
    DEVICE_SILENT,
    GATEWAY_SILENT,
    NETWORK_SERVER,
    NETWORK_SERVER_SILENT,
    SilenceWatch,
    gateway_cause,
)
from protos.citypost.v1 import assets_pb2, telemetry_pb2

pytestmark = pytest.mark.timeout(30)

MIN = 60_000
GW_A, GW_B = "0016c001f1000001", "0016c001f1000002"
# Quick to judge: a device is silent after 3 periods + 1 min; a gateway after 5 min.
CONFIG = SilenceConfig(
    missed_reports=3,
    grace_s=60,
    gateway_expected_uplinks=5,
    gateway_min_s=300,
    network_server_silent_after_s=30,
    broker_lost_after_s=10,
    min_real_s=0,
)


def device(n: int, period_s: float, asset_class: int = assets_pb2.STREET_LAMP) -> Device:
    return Device(
        dev_eui=f"{n:016x}",
        name=f"dev-{n}",
        asset_class=asset_class,  # type: ignore[arg-type]
        group="g",
        commune="dijon",
        latitude=47.32,
        longitude=5.04,
        transport=assets_pb2.LORAWAN,
        application_id="app",
        report_interval_s=period_s,
    )


class Rig:
    """A watch with a hand-driven post clock (sim ms) and real clock (s)."""

    def __init__(self, devices: list[Device], config: SilenceConfig = CONFIG) -> None:
        self.clock_ms = 1_000_000 * MIN
        self.real = 0.0
        self.watch = SilenceWatch(
            DeviceRegistry(devices),
            config,
            AlarmShaper.of(AlarmsConfig()),
            clock_ms=lambda: self.clock_ms,
            monotonic=lambda: self.real,
        )

    def uplink(self, d: Device, at_ms: int, gateway: str = GW_A) -> None:
        self.watch.submit(
            [telemetry_pb2.Telemetry(dev_eui=d.dev_eui, observed_at_ms=at_ms, gateway_id=gateway)]
        )

    def run(self, minutes: float, speed_min_per_s: float = 1.0) -> list[Decision]:
        """Let `minutes` of the post's clock pass (real time at `speed` sim min per s)."""
        self.clock_ms += int(minutes * MIN)
        self.real += minutes / speed_min_per_s
        return self.watch.evaluate(self.real, broker_connected=True)


def raised(decisions: list[Decision], alarm_type: str = DEVICE_SILENT) -> list[RaiseAlarm]:
    return [d for d in decisions if isinstance(d, RaiseAlarm) and d.type == alarm_type]


def cleared(decisions: list[Decision], alarm_type: str = DEVICE_SILENT) -> list[ClearAlarm]:
    return [d for d in decisions if isinstance(d, ClearAlarm) and d.type == alarm_type]


def test_a_device_is_silent_after_its_own_periods_in_stream_time() -> None:
    lamp, camera, other = device(1, 900), device(2, 60), device(3, 60)
    rig = Rig([lamp, camera, other])
    t0 = rig.clock_ms
    for d in (lamp, camera, other):
        rig.uplink(d, t0)
    out: list[Decision] = []
    # `other` keeps the stream going every minute; lamp and camera fall silent.
    for minute in range(1, 50):
        rig.uplink(other, t0 + minute * MIN)
        rig.clock_ms = t0 + minute * MIN
        rig.real += 1
        step = rig.watch.evaluate(rig.real, broker_connected=True)
        out += [(minute, d.originator) for d in raised(step)]  # type: ignore[misc]
    # The camera (1-min period) after 3 + 1 min; the lamp (15-min) after 45 + 1 min.
    assert out == [(4, camera.dev_eui), (46, lamp.dev_eui)]
    rig.uplink(camera, t0 + 50 * MIN)
    back = rig.run(0)
    assert [c.originator for c in cleared(back)] == [camera.dev_eui]
    assert "heard again" in cleared(back)[0].detail


def test_a_stream_that_falls_behind_makes_no_one_silent() -> None:
    # The city publishes late (its uplinks carry the times the devices spoke): the post's
    # clock runs on, the stream's time lags, and nobody is silent for it.
    devices = [device(n, 60) for n in range(1, 6)]
    rig = Rig(devices)
    t0 = rig.clock_ms
    for step in range(60):
        # The post's clock runs 60 min; the stream advances only 20 (a third as fast).
        rig.clock_ms = t0 + step * MIN
        for d in devices:
            rig.uplink(d, t0 + step * MIN // 3)
        rig.real += 1
        assert raised(rig.watch.evaluate(rig.real, broker_connected=True)) == []
    figures = rig.watch.figures(rig.real)
    assert figures.effective_speed == pytest.approx(20.0, rel=0.05)  # sim s per real s


def test_before_the_first_uplink_nothing_is_judged() -> None:
    devices = [device(1, 60), device(2, 60)]
    rig = Rig(devices)
    # The post starts long before the city's devices: no alarm of any kind.
    for _ in range(30):
        assert rig.run(10) == []
    t = rig.clock_ms
    rig.uplink(devices[0], t)
    # Device 2 never heard: timed from the stream's first uplink, not from the post's start.
    assert raised(rig.run(0)) == []
    rig.uplink(devices[0], t + 3 * MIN)
    assert raised(rig.run(3)) == []
    rig.uplink(devices[0], t + 4 * MIN)
    assert [r.originator for r in raised(rig.run(1))] == [devices[1].dev_eui]


def test_a_dark_gateway_raises_one_cause_and_suppresses_the_devices_behind_it() -> None:
    behind = [device(n, 60) for n in range(1, 11)]
    elsewhere = [device(n, 60) for n in range(11, 16)]
    rig = Rig(behind + elsewhere)
    t0 = rig.clock_ms
    for minute in range(3):
        for d in behind:
            rig.uplink(d, t0 + minute * MIN, GW_A)
        for d in elsewhere:
            rig.uplink(d, t0 + minute * MIN, GW_B)
    rig.clock_ms = t0 + 2 * MIN
    assert rig.run(0) == []
    # Gateway A goes dark at minute 2: only B's devices are heard.
    decisions: list[Decision] = []
    for minute in range(3, 20):
        for d in elsewhere:
            rig.uplink(d, t0 + minute * MIN, GW_B)
        rig.clock_ms = t0 + minute * MIN
        rig.real += 1
        decisions += rig.watch.evaluate(rig.real, broker_connected=True)
    causes = raised(decisions, GATEWAY_SILENT)
    originators = {c.originator for c in causes}
    assert originators == {gateway_cause(GW_A)[0]}
    # Raised once, then its count rose as devices passed their thresholds (updates).
    assert causes[-1].suppressed_count == len(behind)
    devices = raised(decisions)
    assert {d.originator for d in devices} == {d.dev_eui for d in behind}
    assert all(d.cause == gateway_cause(GW_A) for d in devices)
    # The devices waited for the gateway's verdict: none was raised on its own before it.
    first_cause = decisions.index(causes[0])
    assert all(decisions.index(d) > first_cause for d in devices)
    figures = rig.watch.figures(rig.real)
    assert figures.suppressed == len(behind)
    assert figures.causes == (gateway_cause(GW_A),)
    # The gateway comes back with half its devices: the cause clears, the heard ones
    # clear, the others are timed afresh and raise their own alarms a threshold later.
    back_at = t0 + 20 * MIN
    for d in behind[:5]:
        rig.uplink(d, back_at, GW_A)
    rig.clock_ms = back_at
    rig.real += 1
    out = rig.watch.evaluate(rig.real, broker_connected=True)
    assert [c.originator for c in cleared(out, GATEWAY_SILENT)] == [gateway_cause(GW_A)[0]]
    assert len(cleared(out)) == len(behind)
    later: list[Decision] = []
    for minute in range(21, 26):
        for d in behind[:5] + elsewhere:
            rig.uplink(d, t0 + minute * MIN, GW_A if d in behind else GW_B)
        rig.clock_ms = t0 + minute * MIN
        rig.real += 1
        later += rig.watch.evaluate(rig.real, broker_connected=True)
    own = raised(later)
    assert {d.originator for d in own} == {d.dev_eui for d in behind[5:]}
    assert all(d.cause is None for d in own)
    assert raised(later, GATEWAY_SILENT) == []


def test_a_device_silent_while_its_gateway_hears_others_raises_its_own_alarm() -> None:
    quiet, chatty = device(1, 60), device(2, 60)
    rig = Rig([quiet, chatty])
    t0 = rig.clock_ms
    rig.uplink(quiet, t0)
    out: list[Decision] = []
    for minute in range(0, 6):
        rig.uplink(chatty, t0 + minute * MIN)
        rig.clock_ms = t0 + minute * MIN
        rig.real += 1
        out += rig.watch.evaluate(rig.real, broker_connected=True)
    assert [(r.originator, r.cause) for r in raised(out)] == [(quiet.dev_eui, None)]
    assert raised(out, GATEWAY_SILENT) == []


def test_a_silent_network_server_is_one_cause_judged_in_real_time() -> None:
    devices = [device(n, 60) for n in range(1, 4)]
    rig = Rig(devices)
    t0 = rig.clock_ms
    for d in devices:
        rig.uplink(d, t0)
    assert rig.run(0) == []
    # No uplink at all: 29 real seconds is not yet a cause, 30 is.
    assert raised(rig.run(0.25, speed_min_per_s=0.25 / 29), NETWORK_SERVER_SILENT) == []
    out = rig.run(0.5, speed_min_per_s=0.5)
    assert [(r.originator, r.type) for r in raised(out, NETWORK_SERVER_SILENT)] == [
        (NETWORK_SERVER, NETWORK_SERVER_SILENT)
    ]
    # The stream has stopped: the devices are judged on the post's clock, under the cause.
    out = rig.run(10)
    devices_raised = raised(out)
    assert len(devices_raised) == 3
    assert all(r.cause == (NETWORK_SERVER, NETWORK_SERVER_SILENT) for r in devices_raised)
    assert raised(out, NETWORK_SERVER_SILENT)[0].suppressed_count == 3
    # Uplinks again: the cause clears and so do the devices behind it (timed afresh).
    for d in devices:
        rig.uplink(d, rig.clock_ms)
    back = rig.run(0)
    assert len(cleared(back, NETWORK_SERVER_SILENT)) == 1
    assert len(cleared(back)) == 3


def test_a_lost_broker_connection_is_one_cause() -> None:
    d = device(1, 60)
    rig = Rig([d])
    rig.uplink(d, rig.clock_ms)
    assert rig.watch.evaluate(0.0, broker_connected=True) == []
    assert rig.watch.evaluate(5.0, broker_connected=False) == []
    assert rig.watch.evaluate(9.0, broker_connected=False) == []
    out = rig.watch.evaluate(15.0, broker_connected=False)
    assert [(r.originator, r.type) for r in raised(out, BROKER_LOST)] == [(BROKER, BROKER_LOST)]
    rig.uplink(d, rig.clock_ms)
    back = rig.watch.evaluate(16.0, broker_connected=True)
    assert len(cleared(back, BROKER_LOST)) == 1


def test_reconcile_clears_only_what_the_watch_has_seen_end() -> None:
    heard, unheard = device(1, 60), device(2, 60)
    rig = Rig([heard, unheard])
    assert rig.watch.reconcile([(heard.dev_eui, DEVICE_SILENT)]) == []  # knows nothing yet
    rig.uplink(heard, rig.clock_ms, GW_A)
    rig.run(0)
    stale = [
        (heard.dev_eui, DEVICE_SILENT),  # heard just now: ended
        (unheard.dev_eui, DEVICE_SILENT),  # never heard: cannot vouch
        ("gateway/" + GW_A, GATEWAY_SILENT),  # heard through just now: ended
        ("gateway/" + GW_B, GATEWAY_SILENT),  # never heard of: cannot vouch
        (NETWORK_SERVER, NETWORK_SERVER_SILENT),  # the stream flows
        (heard.dev_eui, "lamp_fault"),  # not the watch's
    ]
    out = rig.watch.reconcile(stale)
    assert [(c.originator, c.type) for c in out] == [stale[0], stale[2], stale[4]]


def test_a_stop_in_the_stream_restarts_every_device_s_clock() -> None:
    # A broker restart too short for an alarm: the city's uplinks in the gap were lost,
    # which says nothing about the devices. They are timed afresh from the resumption.
    fast, slow = device(1, 60), device(2, 60)
    rig = Rig([fast, slow])
    t0 = rig.clock_ms
    for d in (fast, slow):
        rig.uplink(d, t0)
    assert rig.run(0) == []
    # 8 real s of nothing (8 sim min at 1 min/s), then only `fast` is heard again.
    rig.clock_ms += 8 * MIN
    rig.real += 8
    rig.uplink(fast, rig.clock_ms)
    assert raised(rig.watch.evaluate(rig.real, broker_connected=True)) == []
    # `slow` stays silent: a whole threshold (4 min) after the resumption, it is raised.
    out: list[Decision] = []
    for _ in range(5):
        rig.clock_ms += MIN
        rig.real += 1
        rig.uplink(fast, rig.clock_ms)
        out += rig.watch.evaluate(rig.real, broker_connected=True)
    assert [r.originator for r in raised(out)] == [slow.dev_eui]


def test_a_silence_must_also_last_in_real_time() -> None:
    # At x3600 (a simulated hour per real second) a bus's 4-minute threshold is 0.07 real
    # s: the pipeline's own jitter. The silence must also last min_real_s real seconds.
    bus, other = device(1, 60), device(2, 60)
    rig = Rig([bus, other], CONFIG.model_copy(update={"min_real_s": 10.0}))
    t0 = rig.clock_ms
    rig.uplink(bus, t0)
    out: list[Decision] = []
    for step in range(1, 30):
        rig.clock_ms = t0 + step * 60 * MIN  # an hour of stream time per real second
        rig.real += 1
        rig.uplink(other, rig.clock_ms)
        out += [(step, r.originator) for r in raised(rig.watch.evaluate(rig.real, True))]  # type: ignore[misc]
    assert out == [(10, bus.dev_eui)]  # after 10 real seconds, not after the first


def test_devices_rerouted_round_a_dark_gateway_still_count_for_it() -> None:
    # Gateway A goes down: most of its devices are heard through B instead; `alone`, heard
    # by A only, spoke last before the others did. A is still judged on its own devices'
    # rate, and `alone` is filed under it, not raised on its own.
    alone = device(1, 60)
    rerouted = [device(n, 60) for n in range(2, 12)]
    rig = Rig([alone, *rerouted])
    t0 = rig.clock_ms
    rig.uplink(alone, t0, GW_A)
    for d in rerouted:
        rig.uplink(d, t0 + 30_000, GW_A)
    out: list[Decision] = []
    for minute in range(1, 15):
        for d in rerouted:
            rig.uplink(d, t0 + minute * MIN, GW_B)
        rig.clock_ms = t0 + minute * MIN
        rig.real += 1
        out += rig.watch.evaluate(rig.real, broker_connected=True)
    assert [r.originator for r in raised(out, GATEWAY_SILENT)][:1] == [gateway_cause(GW_A)[0]]
    assert [(r.originator, r.cause) for r in raised(out)] == [(alone.dev_eui, gateway_cause(GW_A))]

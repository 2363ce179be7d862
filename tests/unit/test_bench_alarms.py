"""bench.alarms' scoring on hand-made alarms and faults."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from bench.alarms import DataTime, Raised, Window, peak, score, welfare_visible_at
from fleet import faults
from protos.citypost.v1 import assets_pb2

pytestmark = pytest.mark.timeout(30)

T0 = datetime(2026, 12, 5, 14, 0, tzinfo=UTC)  # 15:00 in Paris
END = T0 + timedelta(hours=24)


def fault(kind: str, eui: str, start_h: float, end_h: float | None = None) -> faults.Fault:
    return faults.Fault(
        kind=kind,
        dev_eui=eui,
        asset_class=assets_pb2.STREET_LAMP,
        group="g",
        start=T0 + timedelta(hours=start_h),
        end=None if end_h is None else T0 + timedelta(hours=end_h),
    )


def alarm(kind: str, eui: str, at_h: float, *, cause: str = "", cls: str = "x") -> Raised:
    return Raised(f"{eui}-{at_h}", kind, eui, cls, T0 + timedelta(hours=at_h), cause, 0, False)


def test_precision_and_recall_match_alarms_to_faults_of_the_same_device_and_time() -> None:
    real = [
        fault(faults.LAMP_FAULT, "a", 1.0),
        fault(faults.LAMP_FAULT, "b", 2.0),
        fault(faults.LAMP_FAULT, "c", 23.99),  # too late to be seen within the day
        fault(faults.CAMERA_OFFLINE, "cam", 3.0, 4.0),
    ]
    alarms = [
        alarm(faults.LAMP_FAULT, "a", 1.2),
        alarm(faults.LAMP_FAULT, "z", 5.0),  # no fault: a false alarm
        alarm(faults.CAMERA_OFFLINE, "cam", 3.01),
        alarm(faults.CAMERA_OFFLINE, "cam", 8.0),  # long after the outage: false
    ]
    result = score(alarms, real, start=T0, end=END, unseen=set(), windows=[])
    lamps = result["scored"][faults.LAMP_FAULT]
    assert (lamps["raised"], lamps["matching"], lamps["precision"]) == (2, 1, 0.5)
    # b was visible and missed; c could not be seen before the end.
    assert (lamps["real_visible"], lamps["found"], lamps["recall"]) == (2, 1, 0.5)
    assert lamps["missed"] == [{"dev_eui": "b", "start": (T0 + timedelta(hours=2)).isoformat()}]
    cams = result["scored"][faults.CAMERA_OFFLINE]
    assert (cams["precision"], cams["recall"]) == (0.5, 1.0)
    # Faults of devices the post could not hear are not held against recall.
    unseen = score(alarms, real, start=T0, end=END, unseen={"b"}, windows=[])
    assert unseen["scored"][faults.LAMP_FAULT]["recall"] == 1.0


def test_rates_leave_out_suppressed_alarms_and_the_injected_windows() -> None:
    window = Window("outage", T0 + timedelta(hours=10), T0 + timedelta(hours=12))
    alarms = [
        alarm("device_silent", "d1", 10.5, cls="street_lamp"),  # in the window
        alarm("device_silent", "d2", 10.6, cause="gw-alarm", cls="street_lamp"),  # suppressed
        alarm(faults.LAMP_FAULT, "a", 1.0, cls="street_lamp"),
        alarm(faults.LAMP_FAULT, "b", 20.0, cls="street_lamp"),
    ]
    result = score(alarms, [], start=T0, end=END, unseen=set(), windows=[window])
    assert result["raised_total"] == 3
    assert result["suppressed"] == 1
    assert result["steady_per_hour"] == round(2 / 22, 2)  # 2 alarms in 22 hours outside


def test_peak_counts_the_busiest_ten_minutes() -> None:
    at = [0.0, 0.05, 0.1, 0.2, 1.0]  # hours: the first three within 10 minutes
    assert peak([alarm("t", str(i), h) for i, h in enumerate(at)], timedelta(minutes=10)) == 3
    assert peak([], timedelta(minutes=10)) == 0


def test_a_welfare_episode_is_visible_after_eight_hours_outside_the_quiet_period() -> None:
    # Begins 18:00 Paris: 18-23 is 5 hours, 23-06 is quiet, 06-09 makes 8.
    episode = fault(faults.NO_WATER_DRAWN, "w", 3.0, 20.0)
    assert welfare_visible_at(episode) == T0 + timedelta(hours=18)


def test_alarms_are_placed_in_the_data_s_time_the_post_was_seeing() -> None:
    data = DataTime()
    t0 = int(T0.timestamp() * 1000)
    # Wall 0 s: data at T0; wall 10 s: data 26 x 10 s later; a sample going back is ignored.
    data.add(1_000_000, t0)
    data.add(1_010_000, t0 + 260_000)
    data.add(1_011_000, t0 + 100_000)
    assert data.at(1_005_000) == T0 + timedelta(seconds=130)
    assert data.at(1_020_000) == T0 + timedelta(seconds=260)  # past the last: the last
    assert data.at(999_000) == T0 - timedelta(seconds=1)

"""The network server's pace: where receive windows open, how far behind and how fast it runs."""

from __future__ import annotations

import pytest

from fleet.pacing import PaceMeter, UplinkSchedule, receive_windows_at

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]


def test_receive_windows_open_at_the_uplink_unless_the_radio_has_moved_past_it() -> None:
    assert receive_windows_at(1000.0, 990.0) == 1000.0  # on time: at the event time
    assert receive_windows_at(1000.0, 1000.0) == 1000.0
    assert receive_windows_at(1000.0, 1300.0) == 1300.0  # late: at the radio's present


def test_a_device_late_by_less_than_an_interval_keeps_its_cadence_in_event_time() -> None:
    # Due at 100, handled at 130, every 60 s: next due at 160, not 190.
    assert UplinkSchedule.next_after(100.0, 130.0, 60.0) == 160.0
    # Over an interval late: it skips what it missed instead of replaying it.
    assert UplinkSchedule.next_after(100.0, 200.0, 60.0) == 260.0


def test_a_front_that_keeps_up_with_the_clock_runs_at_its_speed_with_no_lag() -> None:
    meter = PaceMeter(window_s=30.0, sample_s=0.25)
    assert meter.pace(0.0) is None
    speed = 26.0
    for k in range(41):  # 10 real seconds, a look every 0.25 s; nothing due yet
        real = k * 0.25
        meter.observe(real, 1000.0 + real * speed, 1000.0 + real * speed + 5.0)
    pace = meter.pace(10.0)
    assert pace is not None
    assert pace.effective_speed == pytest.approx(speed)
    assert pace.lag_s == 0.0 and pace.lag_max_s == 0.0
    assert pace.span_s == pytest.approx(10.0)


def test_a_front_held_back_by_the_cap_shows_its_real_speed_and_its_lag() -> None:
    meter = PaceMeter(window_s=30.0, sample_s=0.25)
    speed, real_speed = 26.0, 20.0
    for k in range(121):  # 30 real seconds; the front (earliest due) moves at 20 s/s
        real = k * 0.25
        meter.observe(real, real * speed, real * real_speed)
    pace = meter.pace(30.0)
    assert pace is not None and pace.effective_speed == pytest.approx(real_speed)
    assert pace.lag_s == pytest.approx(30.0 * (speed - real_speed))
    assert pace.lag_max_s == pace.lag_s


def test_the_window_slides_and_the_front_never_goes_back() -> None:
    meter = PaceMeter(window_s=10.0, sample_s=0.0, min_span_s=1.0)
    for k in range(11):  # far behind for 10 s ...
        meter.observe(float(k), 100.0 * k, 100.0 * k - 500.0)
    for k in range(11, 31):  # ... then caught up
        meter.observe(float(k), 100.0 * k, None)
    pace = meter.pace(30.0)
    assert pace is not None
    assert pace.lag_max_s == 0.0  # the bad seconds left the window
    assert pace.effective_speed == pytest.approx(100.0)
    # An uplink scheduled before the front (none should be) does not move it back.
    meter.observe(31.0, 3100.0, 2900.0)
    pace = meter.pace(31.0)
    assert pace is not None and pace.lag_s == 100.0  # from the front at 3000, not 2900
    # Only too soon to tell: one sample, or none in the window.
    meter = PaceMeter(window_s=10.0)
    meter.observe(0.0, 0.0, None)
    pace = meter.pace(0.5)
    assert pace is not None and pace.effective_speed is None
    assert meter.pace(20.0) is None


def test_looks_closer_than_a_sample_apart_are_not_kept() -> None:
    meter = PaceMeter(window_s=30.0, sample_s=1.0)
    meter.observe(0.0, 0.0, None)
    meter.observe(0.5, 50.0, 0.0)  # dropped: within a sample of the last
    meter.observe(1.0, 100.0, 100.0)
    pace = meter.pace(1.0)
    assert pace is not None and pace.effective_speed == pytest.approx(100.0)
    assert pace.lag_max_s == 0.0


def test_bad_windows_are_refused() -> None:
    with pytest.raises(ValueError):
        PaceMeter(window_s=0.0)
    with pytest.raises(ValueError):
        PaceMeter(sample_s=-1.0)

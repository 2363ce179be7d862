"""EU868 radio limits: time on air against published figures, payload table, sub-bands, duty cycle.

The time-on-air expectations are copied from sources outside this tree (each cited next to
its values), never computed with bridges.airtime. Values are in milliseconds there and
compared in seconds here to a nanosecond.
"""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridges.airtime import (
    DEFAULT_CHANNELS_HZ,
    EU868_DATA_RATES,
    EU868_SUB_BANDS,
    LORAWAN_OVERHEAD_BYTES,
    RX2_FREQUENCY_HZ,
    AirtimeBook,
    DataRate,
    DutyCycleWindow,
    SubBand,
    Usage,
    data_rate,
    downlink_airtime_s,
    max_app_payload,
    phy_payload_bytes,
    sub_band_of,
    time_on_air_s,
    uplink_airtime_s,
)
from citypost.errors import FailedPreconditionError, InvalidArgumentError

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]

NS = 1e-9


def ms(value: float) -> object:
    return pytest.approx(value / 1000, abs=NS)


# --- time on air: published reference values ----------------------------------------------

# (phy_payload, sf, bw_hz, kwargs, expected ms). CR 4/5, 8-symbol preamble, explicit header,
# payload CRC on and automatic low data-rate optimisation unless kwargs say otherwise.
REFERENCE: list[tuple[int, int, int, dict[str, object], float]] = [
    # The Things Network v2 stack, TheThingsArchive/ttn utils/toa/toa_test.go (TestComputeLoRa):
    # a 10-byte PHY payload per data rate, then coding rates, then payload sizes.
    (10, 7, 125_000, {}, 41.216),
    (10, 8, 125_000, {}, 72.192),
    (10, 9, 125_000, {}, 144.384),
    (10, 10, 125_000, {}, 288.768),
    (10, 11, 125_000, {}, 577.536),  # low data-rate optimisation on
    (10, 12, 125_000, {}, 991.232),  # low data-rate optimisation on
    (10, 7, 250_000, {}, 20.608),
    (10, 7, 500_000, {}, 10.304),
    (10, 7, 125_000, {"coding_rate": 2}, 45.312),
    (10, 7, 125_000, {"coding_rate": 3}, 49.408),
    (10, 7, 125_000, {"coding_rate": 4}, 53.504),
    (13, 7, 125_000, {}, 46.336),
    (15, 7, 125_000, {}, 46.336),
    (16, 7, 125_000, {}, 51.456),
    (19, 7, 125_000, {}, 51.456),
    # TTN airtime calculator, avbentem/airtime-calculator src/lora/Airtime.test.ts
    # (https://avbentem.github.io/airtime-calculator).
    (14, 7, 250_000, {}, 23.168),
    (25, 7, 250_000, {}, 30.848),
    (25, 7, 250_000, {"coding_rate": 4}, 43.136),
    (25, 7, 125_000, {}, 61.696),
    (25, 7, 125_000, {"coding_rate": 4}, 86.272),
    (14, 8, 125_000, {}, 82.432),
    (15, 8, 125_000, {}, 92.672),
    (14, 11, 125_000, {}, 659.456),
    (25, 11, 125_000, {}, 823.296),
    # AN1200.13 spreadsheet from the TTN forum (24 B application + 13 B header = 37 B),
    # https://docs.google.com/spreadsheets/d/1eL1nHxMidIcIdDE_l-DoY3kmE2e8b0YpOBW64WnYxj8
    (37, 7, 125_000, {}, 82.176),
    (37, 8, 125_000, {}, 143.872),
    (37, 9, 125_000, {}, 267.264),
    (37, 10, 125_000, {}, 493.568),
    (37, 11, 125_000, {}, 1069.056),
    (37, 12, 125_000, {}, 1974.272),
    # tanupoo/lorawan_toa test.py: 64 B = a 51-byte application payload at DR0 + 13 B.
    (64, 12, 125_000, {}, 2793.472),
    (64, 12, 125_000, {"low_dr_optimize": True}, 2793.472),
    (64, 12, 125_000, {"low_dr_optimize": False}, 2465.792),
    (64, 12, 125_000, {"crc": False}, 2793.472),
    (64, 12, 125_000, {"explicit_header": False}, 2793.472),
    (32, 12, 125_000, {}, 1810.432),
    (32, 11, 125_000, {}, 987.136),
    (32, 12, 250_000, {}, 905.216),  # T_sym 16.384 ms: optimisation on at 250 kHz too
    (12, 7, 125_000, {}, 41.216),
    (255, 7, 500_000, {"low_dr_optimize": False}, 99.904),
    (255, 7, 500_000, {"low_dr_optimize": True}, 137.024),
    (
        12,
        7,
        500_000,
        {"explicit_header": False, "crc": False, "coding_rate": 4, "preamble_symbols": 6},
        10.816,
    ),
    (
        8,
        12,
        500_000,
        {"low_dr_optimize": False, "explicit_header": False, "preamble_symbols": 6},
        190.464,
    ),
    # brocaar/lorawan airtime/airtime_test.go (TestCalculateLoRaAirtime): 13 B, SF12, no LDRO.
    (13, 12, 125_000, {"low_dr_optimize": False}, 1155.072),
    # lora-modulation crate README (https://docs.rs/crate/lora-modulation): SF9, 12 B.
    (12, 9, 125_000, {}, 144.384),
    # Semtech "SX1261 LoRa Calculator" outputs, micropython/micropython-lib
    # micropython/lora/tests/test_time_on_air.py (sx1262 cases with SF >= 7).
    (1, 12, 500_000, {}, 206.848),
    (64, 12, 500_000, {"preamble_symbols": 12}, 649.216),
    (1, 12, 500_000, {"crc": False}, 165.888),
    (192, 12, 500_000, {}, 1476.608),
    (16, 12, 500_000, {"preamble_symbols": 12, "explicit_header": False, "crc": False}, 280.576),
    (3, 8, 125_000, {"coding_rate": 2}, 66.048),
    (3, 8, 125_000, {"coding_rate": 2, "crc": False}, 53.760),
    (253, 8, 125_000, {"coding_rate": 2}, 827.904),
    (10, 8, 125_000, {"coding_rate": 2, "preamble_symbols": 12, "explicit_header": False}, 86.528),
]


@pytest.mark.parametrize(("phy", "sf", "bw", "kwargs", "expected_ms"), REFERENCE)
def test_time_on_air_matches_published_values(
    phy: int, sf: int, bw: int, kwargs: dict[str, object], expected_ms: float
) -> None:
    assert time_on_air_s(phy, sf, bw, **kwargs) == ms(expected_ms)  # type: ignore[arg-type]


def test_low_data_rate_optimisation_follows_the_symbol_time_at_any_bandwidth() -> None:
    # Semtech SX1261 calculator (micropython-lib test_time_on_air.py): SF11 at 10.42 kHz,
    # CR 4/7, LDRO on (T_sym 196.545 ms), 25-symbol preamble, 16 B -> 12824.568 ms.
    assert time_on_air_s(
        16, 11, 10_420, coding_rate=3, preamble_symbols=25
    ) * 1000 == pytest.approx(12824.568, abs=0.001)
    # SF10 at 125 kHz (8.192 ms) is below the 16 ms threshold: forcing it on costs symbols.
    assert time_on_air_s(51, 10, low_dr_optimize=True) > time_on_air_s(51, 10)


def test_lorawan_frames_against_published_values() -> None:
    # A 51-byte application payload at DR0 is a 64-byte PHY payload: tanupoo/lorawan_toa
    # test.py gives 2793.472 ms with and without the payload CRC.
    assert uplink_airtime_s(51, 0) == ms(2793.472)
    assert downlink_airtime_s(51, 0) == ms(2793.472)
    # 0 B of application payload = the bare 13 B header; TTN toa_test.go: 46.336 ms at SF7.
    assert uplink_airtime_s(0, 5) == ms(46.336)
    # 1 B at DR6 (SF7/250 kHz) = 14 B; avbentem Airtime.test.ts: 23.168 ms.
    assert uplink_airtime_s(1, 6) == ms(23.168)
    # 24 B at DR3 (SF9) = 37 B; AN1200.13 spreadsheet: 267.264 ms.
    assert uplink_airtime_s(24, 3) == ms(267.264)


def test_downlinks_carry_no_crc_so_never_take_longer() -> None:
    shorter = 0
    for rate in EU868_DATA_RATES:
        for app in range(max_app_payload(rate.dr) + 1):
            down, up = downlink_airtime_s(app, rate.dr), uplink_airtime_s(app, rate.dr)
            assert down <= up
            assert down == time_on_air_s(app + 13, rate.sf, rate.bw_hz, crc=False)
            shorter += down < up
    assert shorter > 0


def test_design_doc_orders_of_magnitude_for_a_40_byte_frame() -> None:
    # DESIGN.md: "a ~40-byte frame is ~80 ms at SF7, ~290 ms at SF9, ~1.8 s at SF12".
    assert time_on_air_s(40, 7) == pytest.approx(0.080, abs=0.005)
    assert time_on_air_s(40, 9) == pytest.approx(0.290, abs=0.005)
    # At SF12 a 40-byte frame takes 1.97 s with the low data-rate optimisation LoRaWAN
    # uses at SF12/125 kHz; ~1.8 s is a ~32-byte frame (tanupoo: 1810.432 ms) or SF12
    # without the optimisation.
    assert time_on_air_s(40, 12) == pytest.approx(1.974, abs=0.001)
    assert time_on_air_s(32, 12) == pytest.approx(1.8, abs=0.02)
    assert time_on_air_s(40, 12, low_dr_optimize=False) == pytest.approx(1.8, abs=0.02)


@pytest.mark.parametrize(
    ("args", "kwargs", "fragment"),
    [
        ((256, 7), {}, "phy_payload"),
        ((-1, 7), {}, "phy_payload"),
        ((10.0, 7), {}, "phy_payload"),
        ((10, 6), {}, "sf"),
        ((10, 13), {}, "sf"),
        ((10, True), {}, "sf"),
        ((10, 7, 0), {}, "bw_hz"),
        ((10, 7, 125_000.0), {}, "bw_hz"),
        ((10, 7), {"coding_rate": 0}, "coding_rate"),
        ((10, 7), {"coding_rate": 5}, "coding_rate"),
        ((10, 7), {"preamble_symbols": -1}, "preamble_symbols"),
        ((10, 7), {"crc": 1}, "crc"),
        ((10, 7), {"explicit_header": None}, "explicit_header"),
        ((10, 7), {"low_dr_optimize": 0}, "low_dr_optimize"),
    ],
)
def test_time_on_air_refuses_bad_input(
    args: tuple[object, ...], kwargs: dict[str, object], fragment: str
) -> None:
    with pytest.raises(InvalidArgumentError, match=fragment):
        time_on_air_s(*args, **kwargs)  # type: ignore[arg-type]


# --- data rates and payload sizes ----------------------------------------------------------


def test_eu868_data_rates() -> None:
    # RP002 EU863-870: DR0..5 = SF12..SF7 at 125 kHz, DR6 = SF7 at 250 kHz.
    assert [data_rate(dr) for dr in range(7)] == [
        DataRate(0, 12, 125_000),
        DataRate(1, 11, 125_000),
        DataRate(2, 10, 125_000),
        DataRate(3, 9, 125_000),
        DataRate(4, 8, 125_000),
        DataRate(5, 7, 125_000),
        DataRate(6, 7, 250_000),
    ]
    assert list(EU868_DATA_RATES) == [data_rate(dr) for dr in range(7)]


@pytest.mark.parametrize("dr", [8, -1, 15, True, 1.0, "0"])
def test_data_rate_refuses_what_is_not_an_eu868_lora_rate(dr: object) -> None:
    with pytest.raises(InvalidArgumentError, match="dr must be"):
        data_rate(dr)  # type: ignore[arg-type]


def test_dr7_is_fsk_and_refused() -> None:
    with pytest.raises(InvalidArgumentError, match="DR7 is FSK"):
        data_rate(7)


def test_max_app_payload_per_data_rate() -> None:
    # Regional Parameters "EU863-870 maximum payload size (not repeater compatible)", N column;
    # the same table as Semtech LoRaPHYEU868 max_payloads_EU868 and RadioLib's EU868.
    assert [max_app_payload(dr) for dr in range(8)] == [51, 51, 51, 115, 242, 242, 242, 242]
    for dr in (8, -1, True):
        with pytest.raises(InvalidArgumentError, match="dr"):
            max_app_payload(dr)


def test_phy_payload_adds_the_lorawan_overhead() -> None:
    assert LORAWAN_OVERHEAD_BYTES == 13
    assert phy_payload_bytes(0) == 13
    assert phy_payload_bytes(51) == 64
    assert phy_payload_bytes(10, f_opts=3) == 26
    assert phy_payload_bytes(242, 15) == 270
    for app, f_opts in ((-1, 0), (1.5, 0), (10, 16), (10, -1)):
        with pytest.raises(InvalidArgumentError, match=r"app_payload|f_opts"):
            phy_payload_bytes(app, f_opts)  # type: ignore[arg-type]


def test_frame_airtime_refuses_payloads_above_the_data_rate_maximum() -> None:
    assert uplink_airtime_s(51, 0) > 0
    with pytest.raises(InvalidArgumentError, match=r"52 B exceeds the 51 B .* DR0"):
        downlink_airtime_s(52, 0)
    with pytest.raises(InvalidArgumentError, match="116 B exceeds the 115 B"):
        uplink_airtime_s(116, 3)
    with pytest.raises(InvalidArgumentError, match="FSK"):
        downlink_airtime_s(10, 7)
    with pytest.raises(InvalidArgumentError, match="app_payload"):
        downlink_airtime_s(10.0, 5)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="dr"):
        uplink_airtime_s(10, 5.0)  # type: ignore[arg-type]


# --- sub-bands -----------------------------------------------------------------------------


def test_default_channels_share_the_one_percent_sub_band() -> None:
    assert DEFAULT_CHANNELS_HZ == (868_100_000, 868_300_000, 868_500_000)
    bands = {sub_band_of(f) for f in DEFAULT_CHANNELS_HZ}
    assert bands == {SubBand("M", 868_000_000, 868_600_000, 0.01)}


def test_rx2_is_in_the_ten_percent_sub_band() -> None:
    assert RX2_FREQUENCY_HZ == 869_525_000
    assert sub_band_of(RX2_FREQUENCY_HZ) == SubBand("P", 869_400_000, 869_650_000, 0.1)


def test_the_eu868_plan_sub_bands() -> None:
    # ETSI EN 300 220-2 bands as TheThingsNetwork/lorawan-stack pkg/band/eu_863_870.go lists them.
    assert [(b.low_hz, b.high_hz, b.duty_cycle) for b in EU868_SUB_BANDS] == [
        (863_000_000, 865_000_000, 0.001),
        (865_000_000, 868_000_000, 0.01),
        (868_000_000, 868_600_000, 0.01),
        (868_700_000, 869_200_000, 0.001),
        (869_400_000, 869_650_000, 0.1),
        (869_700_000, 870_000_000, 0.01),
    ]
    assert sub_band_of(867_100_000).duty_cycle == 0.01  # the usual extra channels, 865-868 MHz
    assert sub_band_of(864_000_000).duty_cycle == 0.001
    assert sub_band_of(869_000_000).duty_cycle == 0.001
    assert sub_band_of(869_850_000).duty_cycle == 0.01
    # Edges are half-open: the low edge belongs to the band, the high edge does not.
    assert sub_band_of(868_000_000).name == "M"
    assert sub_band_of(865_000_000).name == "L"


@pytest.mark.parametrize(
    "frequency",
    [862_999_999, 868_600_000, 868_650_000, 869_300_000, 869_650_000, 870_000_000, 915_000_000],
)
def test_sub_band_of_refuses_frequencies_outside_the_plan(frequency: int) -> None:
    with pytest.raises(InvalidArgumentError, match=str(frequency)):
        sub_band_of(frequency)


@pytest.mark.parametrize("frequency", [868.1e6, "868100000", True])
def test_sub_band_of_refuses_non_integer_frequencies(frequency: object) -> None:
    with pytest.raises(InvalidArgumentError, match="frequency_hz"):
        sub_band_of(frequency)  # type: ignore[arg-type]


# --- DutyCycleWindow -----------------------------------------------------------------------


def test_budget_is_the_duty_cycle_of_an_hour() -> None:
    assert DutyCycleWindow(0.01).budget_s == pytest.approx(36.0)
    assert DutyCycleWindow(0.001).budget_s == pytest.approx(3.6)
    assert DutyCycleWindow(0.1).budget_s == pytest.approx(360.0)
    assert DutyCycleWindow(0.01, window_s=60.0).budget_s == pytest.approx(0.6)


@pytest.mark.parametrize(
    ("duty_cycle", "window_s"),
    [(0.0, 3600.0), (1.5, 3600.0), (math.nan, 3600.0), (0.01, 0.0), (0.01, math.inf)],
)
def test_window_refuses_bad_parameters(duty_cycle: float, window_s: float) -> None:
    with pytest.raises(InvalidArgumentError):
        DutyCycleWindow(duty_cycle, window_s)


def full_window() -> DutyCycleWindow:
    """1 %: 10 s at t=0, 20 s at t=5, 6 s at t=10: the 36 s budget is spent."""
    w = DutyCycleWindow(0.01)
    w.record(0.0, 10.0)
    w.record(5.0, 20.0)
    w.record(10.0, 6.0)
    return w


def test_fits_record_and_used() -> None:
    w = DutyCycleWindow(0.01)
    assert w.used_s(0.0) == 0.0
    w.record(0.0, 10.0)
    w.record(5.0, 20.0)
    assert w.used_s(4.0) == pytest.approx(10.0)
    assert w.used_s(10.0) == pytest.approx(30.0)
    assert w.fits(10.0, 6.0)
    assert not w.fits(10.0, 6.5)
    with pytest.raises(FailedPreconditionError, match="does not fit"):
        w.record(10.0, 6.5)
    assert w.used_s(10.0) == pytest.approx(30.0)  # a refused record changes nothing
    w.record(10.0, 6.0)
    assert w.used_s(10.0) == pytest.approx(36.0)
    assert not w.fits(10.0, 0.001)
    assert len(w) == 3


def test_thirty_six_one_second_frames_fill_one_percent_exactly() -> None:
    w = DutyCycleWindow(0.01)
    for i in range(36):
        assert w.fits(float(i), 1.0)
        w.record(float(i), 1.0)
    assert not w.fits(36.0, 1e-6)


def test_a_transmission_leaves_the_window_exactly_window_s_later() -> None:
    w = DutyCycleWindow(0.01)
    w.record(100.0, 1.0)
    assert w.used_s(3699.999) == 1.0
    assert w.used_s(3700.0) == 0.0
    w = DutyCycleWindow(0.01)
    w.record(0.1, 36.0)  # 0.1 + 3600 is not exact in binary: the leave time must still be
    leaves = w.earliest_fit(1.0, 1.0)
    assert leaves == 0.1 + 3600.0
    assert w.fits(leaves, 1.0)
    assert not w.fits(math.nextafter(leaves, 0.0), 1.0)


def test_earliest_fit() -> None:
    w = full_window()
    # 5 s fit once the 10 s of t=0 leave; 15 s need the 20 s of t=5 gone too; 36 s need all.
    assert w.earliest_fit(10.0, 5.0) == 3600.0
    assert w.earliest_fit(10.0, 15.0) == 3605.0
    assert w.earliest_fit(10.0, 36.0) == 3610.0
    assert w.earliest_fit(10.0, 36.5) is None
    assert w.earliest_fit(3601.0, 5.0) == 3601.0  # fits already: now
    for airtime in (5.0, 15.0, 36.0):
        t = w.earliest_fit(10.0, airtime)
        assert t is not None
        assert w.fits(t, airtime)
        assert not w.fits(t - 1e-6, airtime)


def test_earliest_fit_on_an_empty_window_is_now() -> None:
    assert DutyCycleWindow(0.001).earliest_fit(42.5, 3.6) == 42.5
    assert DutyCycleWindow(0.001).earliest_fit(42.5, 3.7) is None


def test_out_of_order_records_count_against_every_window_they_share() -> None:
    w = DutyCycleWindow(0.01)
    w.record(1000.0, 30.0)  # scheduled ahead
    assert w.used_s(999.0) == 0.0  # not used yet...
    assert not w.fits(999.0, 6.5)  # ...but it will share an hour with a frame sent now
    w.record(999.0, 6.0)
    assert w.used_s(1000.0) == pytest.approx(36.0)
    assert w.to_json() == [[999.0, 6.0], [1000.0, 30.0]]
    assert w.earliest_fit(1000.0, 6.0) == 999.0 + 3600.0


def test_time_may_not_go_back_more_than_a_window() -> None:
    w = DutyCycleWindow(0.01)
    w.record(10_000.0, 1.0)
    assert w.fits(10_000.0 - 3600.0, 1.0)
    with pytest.raises(InvalidArgumentError, match="before the latest time"):
        w.fits(10_000.0 - 3601.0, 1.0)


@pytest.mark.parametrize(
    ("now", "airtime"),
    [(math.nan, 1.0), (math.inf, 1.0), ("0", 1.0), (0.0, 0.0), (0.0, -1.0), (0.0, math.nan)],
)
def test_window_refuses_bad_time_or_airtime(now: object, airtime: object) -> None:
    w = DutyCycleWindow(0.01)
    for call in (w.fits, w.earliest_fit, w.record):
        with pytest.raises(InvalidArgumentError, match=r"now|airtime_s"):
            call(now, airtime)  # type: ignore[arg-type]
    assert len(w) == 0


def test_window_json_round_trip() -> None:
    w = full_window()
    text = json.dumps(w.to_json())
    back = DutyCycleWindow.from_json(0.01, json.loads(text))
    assert back.to_json() == w.to_json() == [[0.0, 10.0], [5.0, 20.0], [10.0, 6.0]]
    assert back.used_s(10.0) == pytest.approx(36.0)
    assert not back.fits(10.0, 0.5)
    assert back.earliest_fit(10.0, 15.0) == 3605.0
    # Unsorted input is accepted and sorted.
    assert DutyCycleWindow.from_json(0.01, [[5.0, 1.0], [1.0, 2.0]]).to_json() == [
        [1.0, 2.0],
        [5.0, 1.0],
    ]


@pytest.mark.parametrize(
    "data",
    [
        {"0": [0.0, 1.0]},
        [[0.0]],
        [[0.0, 1.0, 2.0]],
        [["0", 1.0]],
        [[0.0, "1"]],
        [[0.0, -1.0]],
        [[math.nan, 1.0]],
        [[0.0, True]],
        [None],
    ],
)
def test_window_from_json_refuses_malformed_data(data: object) -> None:
    with pytest.raises(InvalidArgumentError, match="duty cycle window"):
        DutyCycleWindow.from_json(0.01, data)


def test_memory_stays_bounded_after_many_records() -> None:
    w = DutyCycleWindow(0.01)
    for i in range(36_000):  # 100 hours, a frame every 10 s, 0.1 s each (0.1 % of 1 % used)
        t = 10.0 * i
        w.record(t, 0.1)
    # Held: at most two windows' worth (360 per hour); counted: the last hour only.
    assert len(w) <= 2 * 360 + 1
    assert w.used_s(t) == pytest.approx(360 * 0.1)  # starts in (t - 3600, t]: 360 frames
    assert len(w.to_json()) == len(w)
    w.used_s(t + 3 * 3600.0)
    assert len(w) <= 1


@settings(max_examples=200, deadline=None)
@given(
    steps=st.lists(
        st.tuples(
            st.floats(min_value=0.0, max_value=600.0), st.floats(min_value=0.01, max_value=5.0)
        ),
        max_size=60,
    ),
    probe=st.floats(min_value=0.01, max_value=40.0),
)
def test_window_agrees_with_a_brute_force_count(
    steps: list[tuple[float, float]], probe: float
) -> None:
    """In-order records against the definition: a frame started at s counts while s <= now < s + window."""
    w = DutyCycleWindow(0.01, window_s=1000.0)
    kept: list[tuple[float, float]] = []
    now = 0.0
    for gap, airtime in steps:
        now += gap
        used = sum(a for s, a in kept if s <= now < s + 1000.0)
        assert w.used_s(now) == pytest.approx(used, abs=1e-6)
        fits = used + airtime <= 10.0 + 1e-9
        assert w.fits(now, airtime) is fits
        if fits:
            w.record(now, airtime)
            kept.append((now, airtime))
    t = w.earliest_fit(now, probe)
    if probe > 10.0 + 1e-9:
        assert t is None
        return
    assert t is not None and t >= now

    def used_at(x: float) -> float:
        return sum(a for s, a in kept if s <= x < s + 1000.0)

    assert used_at(t) + probe <= 10.0 + 1e-6
    if t > now:
        assert used_at(math.nextafter(t, -math.inf)) + probe > 10.0


# --- AirtimeBook ---------------------------------------------------------------------------


def test_book_keeps_a_budget_per_gateway_and_per_sub_band() -> None:
    book = AirtimeBook()
    for i in range(36):
        book.record("gw1", 868_100_000, float(i), 1.0)
    assert not book.fits("gw1", 868_100_000, 40.0, 0.5)
    assert not book.fits("gw1", 868_500_000, 40.0, 0.5)  # same sub-band M
    assert book.fits("gw2", 868_100_000, 40.0, 0.5)  # another gateway
    assert book.fits("gw1", RX2_FREQUENCY_HZ, 40.0, 0.5)  # sub-band P, 10 %
    assert book.fits("gw1", 867_100_000, 40.0, 0.5)  # sub-band L: its own 1 %
    with pytest.raises(FailedPreconditionError):
        book.record("gw1", 868_300_000, 40.0, 0.5)
    assert book.earliest_fit("gw1", 868_300_000, 40.0, 0.5) == 3600.0
    assert book.earliest_fit("gw2", 868_300_000, 40.0, 0.5) == 40.0
    assert book.earliest_fit("gw2", 868_300_000, 40.0, 36.5) is None
    assert not book.fits("gw2", 863_500_000, 40.0, 3.7)  # sub-band K: 0.1 % = 3.6 s


def test_book_usage_is_listed_by_gateway_then_sub_band() -> None:
    book = AirtimeBook()
    book.record("gw2", 868_100_000, 0.0, 2.0)
    book.record("gw1", RX2_FREQUENCY_HZ, 0.0, 3.0)
    book.record("gw1", 868_500_000, 1.0, 1.0)
    assert not book.fits("gw3", 868_100_000, 1.0, 40.0)  # queries create nothing
    assert book.usage(10.0) == [
        Usage("gw1", "M", 1.0, pytest.approx(36.0)),  # type: ignore[arg-type]
        Usage("gw1", "P", 3.0, pytest.approx(360.0)),  # type: ignore[arg-type]
        Usage("gw2", "M", 2.0, pytest.approx(36.0)),  # type: ignore[arg-type]
    ]
    assert [u.used_s for u in book.usage(3600.5)] == [1.0, 0.0, 0.0]


def test_book_json_round_trip() -> None:
    book = AirtimeBook()
    book.record("gw1", 868_100_000, 0.0, 30.0)
    book.record("gw1", RX2_FREQUENCY_HZ, 1.0, 100.0)
    book.record("gw2", 868_300_000, 2.0, 5.0)
    back = AirtimeBook.from_json(json.loads(json.dumps(book.to_json())))
    assert back.to_json() == book.to_json()
    assert back.usage(5.0) == book.usage(5.0)
    assert not back.fits("gw1", 868_500_000, 5.0, 6.5)
    assert back.fits("gw1", 868_500_000, 5.0, 6.0)


@pytest.mark.parametrize(
    "data",
    [
        [],
        {"windows": []},
        {"version": 2, "windows": []},
        {"version": 1},
        {"version": 1, "windows": [None]},
        {"version": 1, "windows": [{"gateway_id": "", "sub_band": "M", "transmissions": []}]},
        {"version": 1, "windows": [{"gateway_id": "gw", "sub_band": "Z", "transmissions": []}]},
        {"version": 1, "windows": [{"gateway_id": "gw", "sub_band": "M", "transmissions": "x"}]},
        {
            "version": 1,
            "windows": [
                {"gateway_id": "gw", "sub_band": "M", "transmissions": []},
                {"gateway_id": "gw", "sub_band": "M", "transmissions": []},
            ],
        },
    ],
)
def test_book_from_json_refuses_malformed_data(data: object) -> None:
    with pytest.raises(InvalidArgumentError, match=r"airtime book|duty cycle window"):
        AirtimeBook.from_json(data)


def test_book_refuses_bad_arguments() -> None:
    book = AirtimeBook()
    with pytest.raises(InvalidArgumentError, match="gateway_id"):
        book.fits("", 868_100_000, 0.0, 1.0)
    with pytest.raises(InvalidArgumentError, match="915000000"):
        book.record("gw1", 915_000_000, 0.0, 1.0)
    with pytest.raises(InvalidArgumentError, match="airtime_s"):
        book.fits("gw1", 868_100_000, 0.0, 0.0)
    with pytest.raises(InvalidArgumentError, match="now"):
        book.earliest_fit("gw1", 868_100_000, math.nan, 1.0)
    with pytest.raises(FailedPreconditionError):
        book.record("gw1", 868_100_000, 0.0, 36.5)
    assert book.usage(0.0) == []  # a refused first record leaves no window behind

"""EU868 LoRaWAN radio limits: time on air, payload sizes and the duty cycle a gateway owes.

Why: every downlink a post sends leaves through a gateway that may transmit only a
fraction of each hour in each ETSI sub-band (1 % around the default channels, 10 % on
RX2). A city that ignores it finds its commands dropped by the network server
(ChirpStack's `DUTY_CYCLE_OVERFLOW`) exactly when it sends the most: a storm, an
incident. So the post and the simulated network server account for airtime the way a
gateway must, with the same numbers: Semtech's time-on-air formula, the LoRaWAN
Regional Parameters (RP002) payload table, the EN 300 220 sub-bands.

Everything here is pure: no I/O and no clock. Time is a float of seconds the caller
passes in (`now`), on any base, as long as one book sees one base.

The duty cycle (ETSI: the on-time of one transmitter in one sub-band within any one-hour
observation window) is kept per (gateway, sub-band) by `DutyCycleWindow`. A
transmission is charged whole at its start: recorded at `t`, it counts until
`t + window_s` and not from then on. Times may arrive a little out of order (a frame
scheduled for RX2 two seconds ahead, then a class C frame now): `fits` then counts every
transmission that could share an observation window with the new one, which is never
less safe than the regulation and exact when times come in order. Time may not go back by
more than one window (InvalidArgumentError).

Sub-band edges are half-open, `low_hz <= f < high_hz`, on the channel's centre
frequency; the names are the EN 300 220-2 band letters as The Things Stack labels them.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections.abc import Mapping
from functools import cache
from typing import Any, Final, NamedTuple

from citypost.errors import FailedPreconditionError, InvalidArgumentError

# --- sub-bands -----------------------------------------------------------------------------


class SubBand(NamedTuple):
    name: str
    low_hz: int  # inclusive
    high_hz: int  # exclusive
    duty_cycle: float  # fraction of the observation window, 0.01 = 1 %


# ETSI EN 300 220-2 (V3.1.1/V3.2.1) non-specific SRD bands inside EU863-870, as The Things
# Stack declares them (lorawan-stack pkg/band/eu_863_870.go) and Semtech's LoRaMac-node
# EU868 bands 0..5 bound them. Band O (not a LoRaWAN band) is not modelled.
EU868_SUB_BANDS: Final[tuple[SubBand, ...]] = (
    SubBand("K", 863_000_000, 865_000_000, 0.001),
    SubBand("L", 865_000_000, 868_000_000, 0.01),
    SubBand("M", 868_000_000, 868_600_000, 0.01),  # default channels: uplinks and RX1
    SubBand("N", 868_700_000, 869_200_000, 0.001),
    SubBand("P", 869_400_000, 869_650_000, 0.1),  # RX2, up to 500 mW e.r.p.
    SubBand("R", 869_700_000, 870_000_000, 0.01),
)
_SUB_BANDS_BY_NAME: Final[Mapping[str, SubBand]] = {b.name: b for b in EU868_SUB_BANDS}

RX2_FREQUENCY_HZ: Final = 869_525_000
DEFAULT_CHANNELS_HZ: Final = (868_100_000, 868_300_000, 868_500_000)
DUTY_CYCLE_WINDOW_S: Final = 3600.0  # ETSI observation period


def sub_band_of(frequency_hz: int) -> SubBand:
    """The EU868 sub-band holding this centre frequency; InvalidArgumentError if none does."""
    if type(frequency_hz) is not int:
        raise InvalidArgumentError(f"frequency_hz must be an int in Hz, got {frequency_hz!r}")
    for band in EU868_SUB_BANDS:
        if band.low_hz <= frequency_hz < band.high_hz:
            return band
    raise InvalidArgumentError(
        f"frequency {frequency_hz} Hz is in no EU868 sub-band (863-865, 865-868, 868-868.6, "
        "868.7-869.2, 869.4-869.65, 869.7-870 MHz)"
    )


# --- data rates and payload sizes ----------------------------------------------------------


class DataRate(NamedTuple):
    dr: int
    sf: int
    bw_hz: int


# RP002 EU863-870 data rates; DR7 is FSK 50 kbit/s and DR8..11 LR-FHSS: not modelled.
EU868_DATA_RATES: Final[tuple[DataRate, ...]] = (
    DataRate(0, 12, 125_000),
    DataRate(1, 11, 125_000),
    DataRate(2, 10, 125_000),
    DataRate(3, 9, 125_000),
    DataRate(4, 8, 125_000),
    DataRate(5, 7, 125_000),
    DataRate(6, 7, 250_000),
)

# RP002 / Regional Parameters 1.0.3 "EU863-870 maximum payload size (not repeater
# compatible)": N, the application payload without FOpts, per DR0..DR7.
_MAX_APP_PAYLOAD: Final = (51, 51, 51, 115, 242, 242, 242, 242)

LORAWAN_OVERHEAD_BYTES: Final = 13  # MHDR 1 + FHDR 7 (no FOpts) + FPort 1 + MIC 4
MAX_F_OPTS_BYTES: Final = 15  # FOptsLen is 4 bits
MAX_PHY_PAYLOAD_BYTES: Final = 255  # the LoRa header's length field is one byte


def _is_int(x: object) -> bool:
    return type(x) is int


def data_rate(dr: int) -> DataRate:
    """EU868 LoRa data rate DR0..DR6; InvalidArgumentError otherwise (DR7 is FSK)."""
    if not _is_int(dr) or not 0 <= dr < len(EU868_DATA_RATES):
        if dr == 7 and _is_int(dr):
            raise InvalidArgumentError("DR7 is FSK 50 kbit/s in EU868: not a LoRa data rate")
        raise InvalidArgumentError(f"dr must be an EU868 LoRa data rate 0..6, got {dr!r}")
    return EU868_DATA_RATES[dr]


def max_app_payload(dr: int) -> int:
    """Largest EU868 application payload (FRMPayload, no FOpts) at this DR, DR0..DR7."""
    if not _is_int(dr) or not 0 <= dr < len(_MAX_APP_PAYLOAD):
        raise InvalidArgumentError(f"dr must be an EU868 data rate 0..7, got {dr!r}")
    return _MAX_APP_PAYLOAD[dr]


def phy_payload_bytes(app_payload: int, f_opts: int = 0) -> int:
    """PHYPayload length of a data frame carrying `app_payload` bytes and `f_opts` of FOpts."""
    if not _is_int(app_payload) or app_payload < 0:
        raise InvalidArgumentError(f"app_payload must be an int >= 0, got {app_payload!r}")
    if not _is_int(f_opts) or not 0 <= f_opts <= MAX_F_OPTS_BYTES:
        raise InvalidArgumentError(f"f_opts must be an int 0..{MAX_F_OPTS_BYTES}, got {f_opts!r}")
    return LORAWAN_OVERHEAD_BYTES + f_opts + app_payload


# --- time on air ---------------------------------------------------------------------------


def time_on_air_s(
    phy_payload: int,
    sf: int,
    bw_hz: int = 125_000,
    *,
    coding_rate: int = 1,
    preamble_symbols: int = 8,
    explicit_header: bool = True,
    crc: bool = True,
    low_dr_optimize: bool | None = None,
) -> float:
    """Seconds a LoRa frame of `phy_payload` bytes occupies the air (SX1276 §4.1.1.7, AN1200.13).

    T_sym = 2^SF / BW; preamble (n + 4.25) symbols; payload
    8 + max(ceil((8PL - 4SF + 28 + 16CRC - 20IH) / (4(SF - 2DE))) * (CR + 4), 0) symbols.
    `coding_rate` is CR in 4/(4+CR), 1..4. Low data-rate optimisation (DE) is on when
    T_sym >= 16 ms (SF11 and SF12 at 125 kHz, SF12 at 250 kHz) unless given. SF5/SF6
    follow other rules per chip and are refused.
    """
    if not _is_int(phy_payload) or not 0 <= phy_payload <= MAX_PHY_PAYLOAD_BYTES:
        raise InvalidArgumentError(
            f"phy_payload must be an int 0..{MAX_PHY_PAYLOAD_BYTES} bytes, got {phy_payload!r}"
        )
    if not _is_int(sf) or not 7 <= sf <= 12:
        raise InvalidArgumentError(f"sf must be an int 7..12, got {sf!r}")
    if not _is_int(bw_hz) or bw_hz <= 0:
        raise InvalidArgumentError(f"bw_hz must be a positive int in Hz, got {bw_hz!r}")
    if not _is_int(coding_rate) or not 1 <= coding_rate <= 4:
        raise InvalidArgumentError(f"coding_rate must be 1..4 (4/5..4/8), got {coding_rate!r}")
    if not _is_int(preamble_symbols) or not 0 <= preamble_symbols <= 65535:
        raise InvalidArgumentError(
            f"preamble_symbols must be an int 0..65535, got {preamble_symbols!r}"
        )
    for name, flag in (("explicit_header", explicit_header), ("crc", crc)):
        if type(flag) is not bool:
            raise InvalidArgumentError(f"{name} must be a bool, got {flag!r}")
    if low_dr_optimize is not None and type(low_dr_optimize) is not bool:
        raise InvalidArgumentError(
            f"low_dr_optimize must be a bool or None, got {low_dr_optimize!r}"
        )
    chips = 1 << sf  # T_sym = chips / bw_hz
    if low_dr_optimize is None:
        low_dr_optimize = chips * 1000 >= 16 * bw_hz  # T_sym >= 16 ms, in integers
    de = 1 if low_dr_optimize else 0
    ih = 0 if explicit_header else 1
    numerator = 8 * phy_payload - 4 * sf + 28 + 16 * int(crc) - 20 * ih
    blocks = -(-numerator // (4 * (sf - 2 * de)))  # ceil, exact in integers
    payload_symbols = 8 + max(blocks * (coding_rate + 4), 0)
    # (preamble + 4.25 + payload) symbols, in quarter symbols so one division rounds once.
    quarter_symbols = 4 * preamble_symbols + 17 + 4 * payload_symbols
    return quarter_symbols * chips / (4 * bw_hz)


@cache
def _frame_airtime_s(app_payload: int, dr: int, crc: bool) -> float:
    # Arguments are checked by the callers (a cache must not answer 10.0 for 10).
    rate = data_rate(dr)
    limit = max_app_payload(dr)
    if app_payload > limit:
        raise InvalidArgumentError(
            f"app_payload {app_payload} B exceeds the {limit} B EU868 maximum at DR{dr}"
        )
    return time_on_air_s(phy_payload_bytes(app_payload), rate.sf, rate.bw_hz, crc=crc)


def _check_frame(app_payload: int, dr: int) -> None:
    if not _is_int(app_payload) or app_payload < 0:
        raise InvalidArgumentError(f"app_payload must be an int >= 0, got {app_payload!r}")
    if not _is_int(dr):
        raise InvalidArgumentError(f"dr must be an int, got {dr!r}")


def downlink_airtime_s(app_payload: int, dr: int) -> float:
    """Airtime of a LoRaWAN downlink (no payload CRC) with no FOpts at an EU868 LoRa DR."""
    _check_frame(app_payload, dr)
    return _frame_airtime_s(app_payload, dr, False)


def uplink_airtime_s(app_payload: int, dr: int) -> float:
    """Airtime of a LoRaWAN uplink (payload CRC on) with no FOpts at an EU868 LoRa DR."""
    _check_frame(app_payload, dr)
    return _frame_airtime_s(app_payload, dr, True)


# --- duty cycle ----------------------------------------------------------------------------

_EPS_S: Final = 1e-9  # a nanosecond of slack, so 36 transmissions of 1 s fill 1 % exactly


def _check_now(now: float) -> float:
    if type(now) not in (float, int) or not math.isfinite(now):
        raise InvalidArgumentError(f"now must be a finite number of seconds, got {now!r}")
    return float(now)


def _check_airtime(airtime_s: float) -> float:
    if type(airtime_s) not in (float, int) or not math.isfinite(airtime_s) or airtime_s <= 0:
        raise InvalidArgumentError(f"airtime_s must be a finite number > 0, got {airtime_s!r}")
    return float(airtime_s)


class DutyCycleWindow:
    """Airtime one transmitter spent in one sub-band, over a sliding window (ETSI: an hour).

    Transmissions are kept sorted by start with prefix sums, so a query is two binary
    searches; in-order records append. A transmission is dropped once it left the window
    more than a window ago (before that it still matters to a query that comes a little
    back in time), so memory is bounded by two windows' worth of transmissions.
    """

    __slots__ = (
        "_airtimes",
        "_before",
        "_budget_s",
        "_clock",
        "_duty_cycle",
        "_ends",
        "_head",
        "_starts",
        "_total",
        "_window_s",
    )

    def __init__(self, duty_cycle: float, window_s: float = DUTY_CYCLE_WINDOW_S) -> None:
        if type(duty_cycle) not in (float, int) or not 0 < duty_cycle <= 1:
            raise InvalidArgumentError(f"duty_cycle must be in (0, 1], got {duty_cycle!r}")
        if type(window_s) not in (float, int) or not math.isfinite(window_s) or window_s <= 0:
            raise InvalidArgumentError(f"window_s must be a finite number > 0, got {window_s!r}")
        self._duty_cycle = float(duty_cycle)
        self._window_s = float(window_s)
        self._budget_s = self._duty_cycle * self._window_s
        # Entries [_head:] are live, sorted by start; _ends[k] = _starts[k] + window_s.
        self._starts: list[float] = []
        self._ends: list[float] = []
        self._airtimes: list[float] = []
        self._before: list[float] = []  # airtime of entries [0, k), since the last compaction
        self._total = 0.0  # airtime of all entries, since the last compaction
        self._head = 0
        self._clock = -math.inf  # the latest `now` seen

    @property
    def duty_cycle(self) -> float:
        return self._duty_cycle

    @property
    def window_s(self) -> float:
        return self._window_s

    @property
    def budget_s(self) -> float:
        return self._budget_s

    def __len__(self) -> int:
        """Transmissions held (those that may still count)."""
        return len(self._starts) - self._head

    def __repr__(self) -> str:
        return (
            f"DutyCycleWindow(duty_cycle={self._duty_cycle}, window_s={self._window_s}, "
            f"transmissions={len(self)})"
        )

    # -- queries ----------------------------------------------------------------------------

    def used_s(self, now: float) -> float:
        """Airtime of the transmissions started at or before `now` and still in its window."""
        now = self._advance(_check_now(now))
        lo = bisect_right(self._ends, now, self._head)  # first still in the window
        hi = bisect_right(self._starts, now, self._head)  # first not started yet
        return self._sum(lo, hi)

    def fits(self, now: float, airtime_s: float) -> bool:
        """Whether a transmission of `airtime_s` starting at `now` keeps the duty cycle."""
        airtime_s = _check_airtime(airtime_s)
        now = self._advance(_check_now(now))
        return self._load(now) + airtime_s <= self._budget_s + _EPS_S

    def earliest_fit(self, now: float, airtime_s: float) -> float | None:
        """The earliest t >= now at which `airtime_s` fits; None if it exceeds the whole budget."""
        airtime_s = _check_airtime(airtime_s)
        now = self._advance(_check_now(now))
        limit = self._budget_s + _EPS_S
        if airtime_s > limit:
            return None
        if self._load(now) + airtime_s <= limit:
            return now
        # The load only drops when a transmission leaves the window: try those instants in order.
        ends = self._ends
        n = len(ends)
        k = bisect_right(ends, now, self._head)
        while k < n:
            t = ends[k]
            if self._load(t) + airtime_s <= limit:
                return t
            k = bisect_right(ends, t, k)  # past every transmission leaving at t at once
        return ends[n - 1]  # not reached: once the last one has left, the load is zero

    # -- changes ----------------------------------------------------------------------------

    def record(self, now: float, airtime_s: float) -> None:
        """Charge a transmission of `airtime_s` starting at `now`; it must fit (`fits` first)."""
        airtime_s = _check_airtime(airtime_s)
        now = self._advance(_check_now(now))
        load = self._load(now)
        if load + airtime_s > self._budget_s + _EPS_S:
            raise FailedPreconditionError(
                f"{airtime_s:.6f} s of airtime at t={now} does not fit the "
                f"{self._duty_cycle:.1%} duty cycle: {load:.6f} s of {self._budget_s:.6f} s "
                f"already counted within {self._window_s:g} s"
            )
        self._insert(now, airtime_s)

    # -- persistence ------------------------------------------------------------------------

    def to_json(self) -> list[list[float]]:
        """The transmissions held, `[[start, airtime_s], ...]` by start."""
        h = self._head
        return [[s, a] for s, a in zip(self._starts[h:], self._airtimes[h:], strict=True)]

    @classmethod
    def from_json(
        cls, duty_cycle: float, data: object, window_s: float = DUTY_CYCLE_WINDOW_S
    ) -> DutyCycleWindow:
        """A window holding what `to_json` wrote (no budget check: what was used, was used)."""
        window = cls(duty_cycle, window_s)
        if not isinstance(data, list):
            raise InvalidArgumentError(f"duty cycle window data must be a list, got {data!r}")
        entries: list[tuple[float, float]] = []
        for i, item in enumerate(data):
            if not isinstance(item, list | tuple) or len(item) != 2:
                raise InvalidArgumentError(
                    f"duty cycle window entry {i} must be [start, airtime_s], got {item!r}"
                )
            try:
                entries.append((_check_now(item[0]), _check_airtime(item[1])))
            except InvalidArgumentError as e:
                raise InvalidArgumentError(f"duty cycle window entry {i}: {e.message}") from None
        entries.sort(key=lambda e: e[0])
        for start, airtime in entries:
            window._insert(start, airtime)
        return window

    # -- internals --------------------------------------------------------------------------

    def _advance(self, now: float) -> float:
        clock = self._clock
        if now > clock:
            self._clock = now
            horizon = now - self._window_s  # drop what left the window before this
            ends = self._ends
            head = self._head
            if head < len(ends) and ends[head] <= horizon:
                self._head = bisect_right(ends, horizon, head)
                if self._head > 32 and 2 * self._head > len(ends):
                    self._compact()
        elif now < clock - self._window_s:
            raise InvalidArgumentError(
                f"now={now} is more than window_s={self._window_s:g} s before the latest "
                f"time this window saw ({clock})"
            )
        return now

    def _compact(self) -> None:
        h = self._head
        base = self._before[h] if h < len(self._before) else self._total
        del self._starts[:h], self._ends[:h], self._airtimes[:h], self._before[:h]
        self._before = [b - base for b in self._before]
        self._total -= base
        self._head = 0

    def _prefix(self, k: int) -> float:
        return self._before[k] if k < len(self._before) else self._total

    def _sum(self, lo: int, hi: int) -> float:
        if hi <= lo:
            return 0.0
        return max(self._prefix(hi) - self._prefix(lo), 0.0)

    def _load(self, t: float) -> float:
        # Every transmission that can share an observation window with one starting at t:
        # started before t + window_s and not yet left at t. With times in order, that is
        # exactly the window ending at t.
        lo = bisect_right(self._ends, t, self._head)
        hi = bisect_left(self._starts, t + self._window_s, self._head)
        return self._sum(lo, hi)

    def _insert(self, start: float, airtime_s: float) -> None:
        starts = self._starts
        if not starts or starts[-1] <= start:
            starts.append(start)
            self._ends.append(start + self._window_s)
            self._airtimes.append(airtime_s)
            self._before.append(self._total)
        else:
            pos = bisect_right(starts, start, self._head)
            before = self._prefix(pos)
            starts.insert(pos, start)
            self._ends.insert(pos, start + self._window_s)
            self._airtimes.insert(pos, airtime_s)
            self._before.insert(pos, before)
            for k in range(pos + 1, len(self._before)):
                self._before[k] += airtime_s
        self._total += airtime_s


# --- the book of all gateways --------------------------------------------------------------


class Usage(NamedTuple):
    gateway_id: str
    sub_band: str
    used_s: float
    budget_s: float


BOOK_JSON_VERSION: Final = 1
# How far ahead a network server schedules a gateway's transmissions (ChirpStack's class
# C scheduler, and the simulated one, look a few seconds ahead; beyond it, the next
# gateway is tried or the frame waits).
LOOKAHEAD_S: Final = 5.0
# A moment after the transmission that frees the budget has left: at the very instant
# (a sum of POSIX seconds, exact to ~1e-7 s) the window could still hold it.
AFTER_LEAVING_S: Final = 1e-3


class AirtimeBook:
    """A DutyCycleWindow per (gateway, sub-band), made on the first `record` there.

    A gateway with no record in a sub-band has its whole budget: `fits` and
    `earliest_fit` answer without creating a window, so `usage` lists only what was used.
    """

    __slots__ = ("_band_of", "_window_s", "_windows")

    def __init__(self, *, window_s: float = DUTY_CYCLE_WINDOW_S) -> None:
        DutyCycleWindow(0.01, window_s)  # validates window_s the same way
        self._window_s = float(window_s)
        self._windows: dict[tuple[str, str], DutyCycleWindow] = {}
        self._band_of: dict[int, SubBand] = {}  # frequency -> sub-band, memoised

    @property
    def window_s(self) -> float:
        return self._window_s

    def _band(self, frequency_hz: int) -> SubBand:
        band = self._band_of.get(frequency_hz) if type(frequency_hz) is int else None
        if band is None:
            band = sub_band_of(frequency_hz)
            self._band_of[frequency_hz] = band
        return band

    @staticmethod
    def _check_gateway(gateway_id: str) -> None:
        if type(gateway_id) is not str or not gateway_id:
            raise InvalidArgumentError(f"gateway_id must be a non-empty str, got {gateway_id!r}")

    def _find(self, gateway_id: str, frequency_hz: int) -> tuple[SubBand, DutyCycleWindow | None]:
        self._check_gateway(gateway_id)
        band = self._band(frequency_hz)
        return band, self._windows.get((gateway_id, band.name))

    def fits(self, gateway_id: str, frequency_hz: int, now: float, airtime_s: float) -> bool:
        band, window = self._find(gateway_id, frequency_hz)
        if window is not None:
            return window.fits(now, airtime_s)
        _check_now(now)
        return _check_airtime(airtime_s) <= band.duty_cycle * self._window_s + _EPS_S

    def earliest_fit(
        self, gateway_id: str, frequency_hz: int, now: float, airtime_s: float
    ) -> float | None:
        band, window = self._find(gateway_id, frequency_hz)
        if window is not None:
            return window.earliest_fit(now, airtime_s)
        now = _check_now(now)
        fits = _check_airtime(airtime_s) <= band.duty_cycle * self._window_s + _EPS_S
        return now if fits else None

    def record(self, gateway_id: str, frequency_hz: int, now: float, airtime_s: float) -> None:
        """Charge the transmission; FailedPreconditionError if it does not fit (check first)."""
        band, window = self._find(gateway_id, frequency_hz)
        if window is None:
            window = DutyCycleWindow(band.duty_cycle, self._window_s)
            window.record(now, airtime_s)  # raises before the window joins the book
            self._windows[gateway_id, band.name] = window
        else:
            window.record(now, airtime_s)

    def usage(self, now: float) -> list[Usage]:
        """Airtime used at `now` per (gateway, sub-band) that has a record, sorted."""
        return [
            Usage(gateway_id, name, window.used_s(now), window.budget_s)
            for (gateway_id, name), window in sorted(self._windows.items())
        ]

    def to_json(self) -> dict[str, Any]:
        return {
            "version": BOOK_JSON_VERSION,
            "windows": [
                {"gateway_id": gateway_id, "sub_band": name, "transmissions": window.to_json()}
                for (gateway_id, name), window in sorted(self._windows.items())
            ],
        }

    @classmethod
    def from_json(cls, data: object, *, window_s: float = DUTY_CYCLE_WINDOW_S) -> AirtimeBook:
        """A book holding what `to_json` wrote; InvalidArgumentError on malformed data."""
        book = cls(window_s=window_s)
        if not isinstance(data, dict) or data.get("version") != BOOK_JSON_VERSION:
            raise InvalidArgumentError(
                f"airtime book data must be an object with version {BOOK_JSON_VERSION}"
            )
        windows = data.get("windows")
        if not isinstance(windows, list):
            raise InvalidArgumentError("airtime book data: 'windows' must be a list")
        for i, entry in enumerate(windows):
            if not isinstance(entry, dict):
                raise InvalidArgumentError(f"airtime book window {i} must be an object")
            gateway_id = entry.get("gateway_id")
            name = entry.get("sub_band")
            if type(gateway_id) is not str or not gateway_id:
                raise InvalidArgumentError(
                    f"airtime book window {i}: bad gateway_id {gateway_id!r}"
                )
            band = _SUB_BANDS_BY_NAME.get(name) if type(name) is str else None
            if band is None:
                raise InvalidArgumentError(f"airtime book window {i}: unknown sub_band {name!r}")
            if (gateway_id, band.name) in book._windows:
                raise InvalidArgumentError(
                    f"airtime book window {i}: {gateway_id!r} sub-band {name} appears twice"
                )
            book._windows[gateway_id, band.name] = DutyCycleWindow.from_json(
                band.duty_cycle, entry.get("transmissions"), window_s
            )
        return book


def gateway_slot(
    book: AirtimeBook,
    gateway: str,
    frequency_hz: int,
    now: float,
    busy_until: float,
    airtime_s: float,
) -> float | None:
    """When a gateway can start a frame of `airtime_s`: after the frames it has queued
    (`busy_until`) and within its duty cycle, if that is within the look-ahead; None if
    not soon enough. The one rule the network server sends by and the gate plans by."""
    start = max(now, busy_until)
    if start <= now + LOOKAHEAD_S and not book.fits(gateway, frequency_hz, start, airtime_s):
        fit = book.earliest_fit(gateway, frequency_hz, start, airtime_s)
        start = fit + AFTER_LEAVING_S if fit is not None else now + 2 * LOOKAHEAD_S
    return start if start <= now + LOOKAHEAD_S else None

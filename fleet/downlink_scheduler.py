"""The simulated network server's downlink side: when each frame can go on air, and where.

Pure: frames and the simulated time in, what happened out (`Sent`, `Deferred`,
`Dropped`, `MulticastSent`); the network server (fleet/network_server.py) does
the MQTT and the devices. It keeps what a LoRaWAN network server and its
gateways keep:

- a queue per device, as ChirpStack's device queue: a class C device is sent its
  frame at once with the RX2 parameters (869.525 MHz, `rx2_dr`); a class A
  device only in RX1 (its uplink's frequency and data rate) or RX2 right after
  one of its own uplinks, one frame per uplink; an IP device at once, no radio;
- each gateway's duty cycle per sub-band (bridges.airtime.AirtimeBook): a frame
  goes through the device's best gateway whose budget allows it; when none does
  it waits (`Deferred`, once, as ChirpStack logs the gateway's
  DUTY_CYCLE_OVERFLOW) and goes as soon as one does; a frame longer than a
  whole budget can never go and is dropped;
- a gateway is one transmitter: its frames go one after the other, each
  starting when the previous one ended (scheduled up to `LOOKAHEAD_S` ahead,
  as a gateway's concentrator takes a short queue of timed frames);
- the payload limit of the data rate it goes with (`Dropped`,
  DOWNLINK_PAYLOAD_SIZE, as ChirpStack does);
- class C multicast: one transmission per gateway that serves a member (its
  best gateway), each when that gateway's budget allows, heard by the members
  that gateway serves; no acknowledgement exists.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from bridges.airtime import (
    LOOKAHEAD_S,
    RX2_FREQUENCY_HZ,
    AirtimeBook,
    downlink_airtime_s,
    gateway_slot,
    max_app_payload,
)
from bridges.registry import RadioClass
from citypost.errors import InvalidArgumentError

DUTY_CYCLE_OVERFLOW = "DUTY_CYCLE_OVERFLOW"  # gw.TxAckStatus name ChirpStack logs
PAYLOAD_SIZE = "DOWNLINK_PAYLOAD_SIZE"  # integration.LogCode
GATEWAY = "DOWNLINK_GATEWAY"  # integration.LogCode: the gateway could not send it


class DeviceLink(NamedTuple):
    """How the network server reaches one device."""

    radio_class: RadioClass
    gateways: tuple[str, ...]  # best first; empty for IP devices
    dr: int  # the data rate of its uplinks (RX1 uses it; offset 0)


@dataclass(frozen=True, slots=True)
class Frame:
    """One downlink in a device's queue (ChirpStack's DeviceQueueItem)."""

    queue_id: str
    dev_eui: str
    f_port: int
    data: bytes
    confirmed: bool
    enqueued_at: float  # simulated POSIX seconds


class Sent(NamedTuple):
    frame: Frame
    gateway_id: str  # "" for an IP device
    frequency_hz: int
    dr: int
    airtime_s: float
    at: float
    immediately: bool  # class C / IP; False: in a class A receive window


class Deferred(NamedTuple):
    """No gateway of the device has the airtime now: the frame waits (said once)."""

    frame: Frame
    reason: str
    retry_at: float | None  # when one gateway's budget will allow it


class Dropped(NamedTuple):
    frame: Frame
    code: str  # an integration.LogCode name
    description: str


class MulticastSent(NamedTuple):
    group_id: str
    f_cnt: int
    f_port: int
    data: bytes
    gateway_id: str
    frequency_hz: int
    dr: int
    airtime_s: float
    at: float  # when it starts on air
    receivers: tuple[str, ...]  # members this gateway serves


Event = Sent | Deferred | Dropped | MulticastSent


@dataclass(slots=True)
class _Multicast:
    group_id: str
    f_cnt: int
    f_port: int
    data: bytes
    dr: int
    frequency_hz: int
    by_gateway: dict[str, tuple[str, ...]]  # gateway -> the members it serves, still to send


@dataclass(slots=True)
class _Stats:
    sent: int = 0
    sent_multicast: int = 0
    deferred: int = 0
    dropped: dict[str, int] = field(default_factory=dict)


class DownlinkScheduler:
    def __init__(
        self,
        links: Mapping[str, DeviceLink],
        *,
        rx2_dr: int,
        book: AirtimeBook | None = None,
    ) -> None:
        max_app_payload(rx2_dr)  # validates it
        self._links = links
        self.rx2_dr = rx2_dr
        self.book = book if book is not None else AirtimeBook()
        self._queues: dict[str, deque[Frame]] = {}
        # Class C devices whose head frame waits for airtime: (retry at, order, devEui).
        self._waiting: list[tuple[float, int, str]] = []
        self._waiting_set: set[str] = set()
        self._told: set[str] = set()  # queue ids already reported Deferred
        self._multicasts: list[_Multicast] = []
        self._busy_until: dict[str, float] = {}  # gateway -> when its last frame ends
        self._turns: dict[str, float] = {}  # gateway -> when the frames waiting for it end
        self._order = 0
        self.stats = _Stats()

    # --- unicast -------------------------------------------------------------------------

    def enqueue(self, frame: Frame, now: float) -> list[Event]:
        link = self._link(frame.dev_eui)
        if link.radio_class is RadioClass.IP:
            self.stats.sent += 1
            return [Sent(frame, "", 0, 0, 0.0, now, True)]
        self._queues.setdefault(frame.dev_eui, deque()).append(frame)
        if link.radio_class is RadioClass.C and frame.dev_eui not in self._waiting_set:
            return self._class_c(frame.dev_eui, link, now)
        return []

    def on_uplink(self, dev_eui: str, frequency_hz: int, now: float) -> list[Event]:
        """A class A device just sent an uplink: its receive windows open (one frame)."""
        queue = self._queues.get(dev_eui)
        if not queue:
            return []
        link = self._link(dev_eui)
        if link.radio_class is not RadioClass.A:
            return []
        frame = queue[0]
        windows = ((frequency_hz, link.dr), (RX2_FREQUENCY_HZ, self.rx2_dr))  # RX1, then RX2
        fitting = [(f, dr) for f, dr in windows if len(frame.data) <= max_app_payload(dr)]
        if not fitting:
            return [self._drop_head(dev_eui, PAYLOAD_SIZE, self._size_text(frame, self.rx2_dr))]
        gateway = link.gateways[0] if link.gateways else ""
        for (frequency, dr), delay in zip(fitting, (1.0, 2.0), strict=False):
            airtime = downlink_airtime_s(len(frame.data), dr)
            at = now + delay  # RX1 opens 1 s after the uplink, RX2 2 s
            if (
                gateway
                and self._busy_until.get(gateway, at) <= at
                and self.book.fits(gateway, frequency, at, airtime)
            ):
                self._transmit(gateway, frequency, at, airtime)
                return [self._pop_sent(dev_eui, gateway, frequency, dr, airtime, at, False)]
        return self._defer(frame, None)

    def _class_c(self, dev_eui: str, link: DeviceLink, now: float) -> list[Event]:
        """Send the head of a class C device's queue if a gateway allows; else wait."""
        out: list[Event] = []
        queue = self._queues.get(dev_eui)
        while queue:
            frame = queue[0]
            if len(frame.data) > max_app_payload(self.rx2_dr):
                out.append(
                    self._drop_head(dev_eui, PAYLOAD_SIZE, self._size_text(frame, self.rx2_dr))
                )
                continue
            airtime = downlink_airtime_s(len(frame.data), self.rx2_dr)
            slot = next(
                (
                    (g, start)
                    for g in link.gateways
                    if (start := self._slot(g, RX2_FREQUENCY_HZ, now, airtime)) is not None
                ),
                None,
            )
            if slot is None:
                retry = self._reserve_turn(link.gateways, now, airtime)
                if retry is None:  # longer than a whole budget: it can never go
                    out.append(
                        self._drop_head(
                            dev_eui,
                            GATEWAY,
                            f"{DUTY_CYCLE_OVERFLOW}: {airtime:.3f} s of airtime is more than "
                            "a gateway's whole duty-cycle budget",
                        )
                    )
                    continue
                self._wait(dev_eui, retry, now)
                self._waiting_set.add(dev_eui)
                out.extend(self._defer(frame, retry))
                break
            gateway, start = slot
            self._transmit(gateway, RX2_FREQUENCY_HZ, start, airtime)
            out.append(
                self._pop_sent(
                    dev_eui, gateway, RX2_FREQUENCY_HZ, self.rx2_dr, airtime, start, True
                )
            )
        return out

    def _wait(self, dev_eui: str, turn: float, now: float) -> None:
        """Look at the device again a look-ahead before its turn (not before the next poll)."""
        self._order += 1
        heapq.heappush(self._waiting, (max(turn - LOOKAHEAD_S, now + 1e-3), self._order, dev_eui))

    def _slot(self, gateway: str, frequency: int, now: float, airtime: float) -> float | None:
        """When this gateway can start the frame (after its queued ones, within its duty
        cycle), if that is within the look-ahead; None if not soon enough."""
        busy = self._busy_until.get(gateway, now)
        return gateway_slot(self.book, gateway, frequency, now, busy, airtime)

    def _transmit(self, gateway: str, frequency: int, start: float, airtime: float) -> None:
        self.book.record(gateway, frequency, start, airtime)
        self._busy_until[gateway] = start + airtime

    # --- multicast -----------------------------------------------------------------------

    def enqueue_multicast(
        self,
        group_id: str,
        f_cnt: int,
        f_port: int,
        data: bytes,
        members: Iterable[str],
        now: float,
        *,
        dr: int | None = None,
        frequency_hz: int = RX2_FREQUENCY_HZ,
    ) -> list[Event]:
        """One class C multicast frame: one transmission per gateway serving a member."""
        rate = self.rx2_dr if dr is None else dr
        if len(data) > max_app_payload(rate):
            raise InvalidArgumentError(
                f"multicast frame of {len(data)} bytes, above {max_app_payload(rate)} at DR{rate}"
            )
        by_gateway: dict[str, list[str]] = {}
        for dev_eui in members:
            link = self._links.get(dev_eui)
            if link is None or link.radio_class is not RadioClass.C or not link.gateways:
                continue  # only class C devices listen for multicast
            by_gateway.setdefault(link.gateways[0], []).append(dev_eui)
        if not by_gateway:
            return []
        self._multicasts.append(
            _Multicast(
                group_id,
                f_cnt,
                f_port,
                data,
                rate,
                frequency_hz,
                {g: tuple(sorted(m)) for g, m in sorted(by_gateway.items())},
            )
        )
        return self._run_multicasts(now)

    def _run_multicasts(self, now: float) -> list[Event]:
        out: list[Event] = []
        for mc in self._multicasts:
            airtime = downlink_airtime_s(len(mc.data), mc.dr)
            for gateway in list(mc.by_gateway):
                start = self._slot(gateway, mc.frequency_hz, now, airtime)
                if start is None:
                    continue
                self._transmit(gateway, mc.frequency_hz, start, airtime)
                receivers = mc.by_gateway.pop(gateway)
                self.stats.sent_multicast += 1
                out.append(
                    MulticastSent(
                        mc.group_id,
                        mc.f_cnt,
                        mc.f_port,
                        mc.data,
                        gateway,
                        mc.frequency_hz,
                        mc.dr,
                        airtime,
                        start,
                        receivers,
                    )
                )
        self._multicasts = [mc for mc in self._multicasts if mc.by_gateway]
        return out

    # --- time passes ---------------------------------------------------------------------

    def poll(self, now: float) -> list[Event]:
        """Send what waited for airtime and now fits; call it as simulated time passes."""
        out = self._run_multicasts(now) if self._multicasts else []
        due: list[str] = []
        while self._waiting and self._waiting[0][0] <= now:
            due.append(heapq.heappop(self._waiting)[2])
        # Each device once per poll: one deferred again waits for a later poll. Once every
        # gateway of a device has no room left in this poll, it waits again at once: with
        # thousands queued, most of them are in that case.
        full: set[str] = set()
        for dev_eui in due:
            link = self._link(dev_eui)
            if link.gateways and full.issuperset(link.gateways):
                queue = self._queues[dev_eui]
                airtime = downlink_airtime_s(len(queue[0].data), self.rx2_dr)
                retry = self._reserve_turn(link.gateways, now, airtime)
                self._wait(dev_eui, retry if retry is not None else now + 1.0, now)
                continue
            self._waiting_set.discard(dev_eui)
            events = self._class_c(dev_eui, link, now)
            out.extend(events)
            if dev_eui in self._waiting_set:  # deferred again: its gateways are full for now
                full.update(link.gateways)
        return out

    def next_due(self, now: float) -> float | None:
        """When `poll` may have something to send (None: nothing waits on time)."""
        due = [self._waiting[0][0]] if self._waiting else []
        for mc in self._multicasts:
            airtime = downlink_airtime_s(len(mc.data), mc.dr)
            for gateway in mc.by_gateway:
                fit = self.book.earliest_fit(gateway, mc.frequency_hz, now, airtime)
                if fit is not None:
                    due.append(max(fit, self._busy_until.get(gateway, now) - LOOKAHEAD_S))
        return min(due) if due else None

    def queued(self, dev_eui: str | None = None) -> int:
        if dev_eui is not None:
            return len(self._queues.get(dev_eui, ()))
        return sum(len(q) for q in self._queues.values())

    def multicasts_pending(self) -> int:
        return sum(len(mc.by_gateway) for mc in self._multicasts)

    # --- helpers -------------------------------------------------------------------------

    def _link(self, dev_eui: str) -> DeviceLink:
        link = self._links.get(dev_eui)
        if link is None:
            raise InvalidArgumentError(f"no radio link for device {dev_eui}")
        return link

    def _reserve_turn(self, gateways: Iterable[str], now: float, airtime: float) -> float | None:
        """When to look at a waiting frame again: its turn on the gateway that frees first,
        after the frames already waiting there (so thousands waiting are looked at a few
        at a time, not all at every poll). None: longer than any whole budget."""
        best: tuple[float, str] | None = None
        for g in gateways:
            fit = self.book.earliest_fit(g, RX2_FREQUENCY_HZ, now, airtime)
            if fit is None:
                continue
            turn = max(fit, self._busy_until.get(g, now), self._turns.get(g, now))
            if best is None or turn < best[0]:
                best = (turn, g)
        if best is None:
            return None
        turn, gateway = best
        self._turns[gateway] = turn + airtime
        return turn

    def _defer(self, frame: Frame, retry_at: float | None) -> list[Event]:
        if frame.queue_id in self._told:
            return []
        self._told.add(frame.queue_id)
        self.stats.deferred += 1
        return [Deferred(frame, DUTY_CYCLE_OVERFLOW, retry_at)]

    def _pop_sent(
        self,
        dev_eui: str,
        gateway: str,
        frequency: int,
        dr: int,
        airtime: float,
        now: float,
        immediately: bool,
    ) -> Sent:
        frame = self._pop(dev_eui)
        self.stats.sent += 1
        return Sent(frame, gateway, frequency, dr, airtime, now, immediately)

    def _drop_head(self, dev_eui: str, code: str, description: str) -> Dropped:
        frame = self._pop(dev_eui)
        self.stats.dropped[code] = self.stats.dropped.get(code, 0) + 1
        return Dropped(frame, code, description)

    def _pop(self, dev_eui: str) -> Frame:
        queue = self._queues[dev_eui]
        frame = queue.popleft()
        if not queue:
            del self._queues[dev_eui]
        self._told.discard(frame.queue_id)
        return frame

    @staticmethod
    def _size_text(frame: Frame, dr: int) -> str:
        return f"payload of {len(frame.data)} bytes, above {max_app_payload(dr)} at DR{dr}"

"""The downlink gate's airtime plan: what goes on air now, what waits, what is refused.

Pure: requests and the simulated time in, decisions out; the gate does the MQTT.
The plan keeps its own estimate of each gateway's duty cycle (an `AirtimeBook`
of what it forwarded), so it can say *before* sending what the network server
would otherwise refuse with DUTY_CYCLE_OVERFLOW:

- a class C unicast goes through the device's best gateway whose budget allows
  it; a class A unicast is forwarded at once (the network server holds it for
  the device's next uplink) and counted on its best gateway; an IP downlink
  costs nothing; a multicast is forwarded at once and counted on every
  gateway serving a member (the network server sends each when it can);
- priorities share one budget by reserves, as a control room needs: policy
  commands leave `POLICY_RESERVE` of every budget unused, operators'
  `OPERATOR_RESERVE`, so a bollard for emergency access (safety) always finds
  airtime; among waiting requests, safety goes first, then operators, then
  policies, each oldest first;
- a request that cannot go on air before its deadline is refused at once,
  with the reason and the time the gateway would have had the airtime.
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import IntEnum
from typing import NamedTuple

from bridges.airtime import (
    LOOKAHEAD_S,
    RX2_FREQUENCY_HZ,
    AirtimeBook,
    downlink_airtime_s,
    gateway_slot,
    max_app_payload,
    sub_band_of,
)
from bridges.registry import RadioClass


class Priority(IntEnum):
    """command_pb2.CommandPriority's values; lower goes first."""

    SAFETY = 1
    OPERATOR = 2
    POLICY = 3


# Share of every budget a priority may not use, kept for those above it.
POLICY_RESERVE = 0.2
OPERATOR_RESERVE = 0.05
_RESERVE = {
    Priority.SAFETY: 0.0,
    Priority.OPERATOR: OPERATOR_RESERVE,
    Priority.POLICY: POLICY_RESERVE,
}
# A gateway has one transmitter, and the network server's queues know no priority: a
# frame forwarded while a gateway has seconds of frames queued waits behind them, a
# bollard's too. Only safety may be forwarded to a gateway busy for longer than this
# (simulated seconds), so the queue a safety frame meets is never deeper.
QUEUE_HORIZON_S = 1.0
_HORIZON = {
    Priority.SAFETY: LOOKAHEAD_S,
    Priority.OPERATOR: QUEUE_HORIZON_S,
    Priority.POLICY: QUEUE_HORIZON_S,
}


class Route(NamedTuple):
    """How the gate's frame reaches its device(s)."""

    radio_class: RadioClass
    gateways: tuple[str, ...]  # best first; for a multicast every serving gateway


@dataclass(frozen=True, slots=True)
class Request:
    key: int  # the gate's handle for the message (it acknowledges it when decided)
    route: Route
    payload_bytes: int
    priority: Priority
    deadline: float | None  # simulated POSIX seconds; None: no deadline given
    received_at: float
    multicast: bool = False


class Forward(NamedTuple):
    request: Request
    gateway_id: str  # "" for IP / multicast (several)
    airtime_s: float


class Refuse(NamedTuple):
    request: Request
    reason: str


Decision = Forward | Refuse


class _Wait(NamedTuple):
    """No decision yet: the request waits for airtime on this gateway."""

    gateway: str


@dataclass(order=True, slots=True)
class _Held:
    priority: int
    order: int
    request: Request = field(compare=False)


def _clock(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%H:%M:%SZ")


class AirtimePlanner:
    def __init__(self, *, rx2_dr: int, book: AirtimeBook | None = None) -> None:
        max_app_payload(rx2_dr)  # validates it
        self.rx2_dr = rx2_dr
        self._rx2 = sub_band_of(RX2_FREQUENCY_HZ)
        self.book = book if book is not None else AirtimeBook()
        self._held: list[_Held] = []
        self._busy: dict[str, float] = {}  # gateway -> when its queued frames end
        # Airtime of the held requests, by the gateway each should go through and priority:
        # a request waits behind those of its priority and above on its gateway.
        self._held_load: dict[tuple[str, int], float] = {}
        self._order = itertools.count()
        self.refused = 0

    def offer(self, request: Request, now: float) -> list[Decision]:
        """A new request: forwarded now, refused now, or held (no decision yet)."""
        ahead: dict[str, float] = {}
        for (gateway, priority), load in self._held_load.items():
            if priority <= request.priority:  # it waits behind these
                ahead[gateway] = ahead.get(gateway, 0.0) + load
        decision = self._try(request, now, ahead)
        if not isinstance(decision, _Wait):
            return [decision]
        self._hold(request, decision.gateway, ahead)
        heapq.heappush(self._held, _Held(int(request.priority), next(self._order), request))
        return []

    def due(self, now: float) -> list[Decision]:
        """Decisions on held requests: call it as time passes; highest priority first."""
        out: list[Decision] = []
        kept: list[_Held] = []
        ahead: dict[str, float] = {}  # airtime of the requests kept so far, by gateway
        self._held_load.clear()
        while self._held:
            held = heapq.heappop(self._held)
            decision = self._try(held.request, now, ahead)
            if isinstance(decision, _Wait):
                kept.append(held)
                self._hold(held.request, decision.gateway, ahead)
            else:
                out.append(decision)
        for held in kept:
            heapq.heappush(self._held, held)
        return out

    def held(self) -> int:
        return len(self._held)

    def next_due(self, now: float) -> float | None:
        """When a held request may be decided (its gateway frees, or its deadline)."""
        times = []
        for held in self._held:
            request = held.request
            fit = self._earliest(request, now, {})
            if fit is not None:
                times.append(fit[0])
            if request.deadline is not None:
                times.append(request.deadline)
        return min(times) if times else None

    # --- the rule ------------------------------------------------------------------------

    def _hold(self, request: Request, gateway: str, ahead: dict[str, float]) -> None:
        """Count a held request's airtime on the gateway it waits for, ahead of those that
        come after it (`ahead` grows too)."""
        airtime = self._airtime(request)
        ahead[gateway] = ahead.get(gateway, 0.0) + airtime
        key = (gateway, int(request.priority))
        self._held_load[key] = self._held_load.get(key, 0.0) + airtime

    def _airtime(self, request: Request) -> float:
        size = min(request.payload_bytes, max_app_payload(self.rx2_dr))
        return downlink_airtime_s(size, self.rx2_dr)

    def _try(self, request: Request, now: float, ahead: dict[str, float]) -> Decision | _Wait:
        route = request.route
        if route.radio_class is RadioClass.IP:
            return Forward(request, "", 0.0)
        if request.payload_bytes > max_app_payload(self.rx2_dr):
            return self._refuse(
                request,
                f"{request.payload_bytes} bytes do not fit a downlink at DR{self.rx2_dr} "
                f"(at most {max_app_payload(self.rx2_dr)})",
            )
        if not route.gateways:
            return self._refuse(request, "no gateway hears the device")
        airtime = downlink_airtime_s(request.payload_bytes, self.rx2_dr)
        if request.multicast:
            # One frame per serving gateway, each sent when its gateway can: count it there.
            for gateway in route.gateways:
                start = max(now, self._busy.get(gateway, now))
                fit = self.book.earliest_fit(gateway, RX2_FREQUENCY_HZ, start, airtime)
                if fit is not None:
                    self._transmit(gateway, fit, airtime)
            return Forward(request, "", airtime)
        if route.radio_class is RadioClass.A:
            # Sent in a receive window after the device's next uplink: when is unknown.
            gateway = route.gateways[0]
            if self.book.fits(gateway, RX2_FREQUENCY_HZ, now, airtime):
                self.book.record(gateway, RX2_FREQUENCY_HZ, now, airtime)
            return Forward(request, gateway, airtime)
        # The network server sends a class C frame on the first of the device's gateways
        # with a slot (gateway_slot, its rule). Predict that gateway, and forward only if
        # the frame leaves that gateway's reserve for higher priorities and queues there no
        # deeper than its priority may.
        for gateway in route.gateways:
            busy = self._busy.get(gateway, now)
            slot = gateway_slot(self.book, gateway, RX2_FREQUENCY_HZ, now, busy, airtime)
            if slot is None:
                continue
            if slot <= now + _HORIZON[request.priority] and self._fits(
                gateway, slot, airtime, request.priority
            ):
                self._transmit(gateway, slot, airtime)
                return Forward(request, gateway, airtime)
            break
        # It waits behind what is held ahead of it: refused now if that alone ends past
        # its deadline, not when the others have taken the airtime.
        soonest = self._earliest(request, now, ahead)
        earliest = soonest[0] if soonest is not None else None
        if request.deadline is not None and (earliest is None or earliest > request.deadline):
            when = "not within an hour" if earliest is None else f"not before {_clock(earliest)}"
            return self._refuse(
                request,
                f"no airtime before its deadline {_clock(request.deadline)}: the RX2 duty cycle "
                f"({self._rx2.duty_cycle:.0%}) of gateway(s) {', '.join(route.gateways)} is spent, "
                f"{when}; "
                "send it again later or to fewer devices",
            )
        return _Wait(soonest[1] if soonest is not None else route.gateways[0])

    def _transmit(self, gateway: str, start: float, airtime: float) -> None:
        self.book.record(gateway, RX2_FREQUENCY_HZ, start, airtime)
        self._busy[gateway] = start + airtime

    def _fits(self, gateway: str, now: float, airtime: float, priority: Priority) -> bool:
        # Leaving the reserve unused is fitting a transmission larger by the reserve.
        return self.book.fits(gateway, RX2_FREQUENCY_HZ, now, airtime + self._reserve_s(priority))

    def _earliest(
        self, request: Request, now: float, ahead: dict[str, float]
    ) -> tuple[float, str] | None:
        """When, and through which gateway, the request could go at the earliest once the
        airtime held `ahead` of it on each gateway has gone."""
        wanted = self._airtime(request) + self._reserve_s(request.priority)
        horizon = _HORIZON[request.priority]
        best: tuple[float, str] | None = None
        for gateway in request.route.gateways:
            queued = ahead.get(gateway, 0.0)
            fit = self.book.earliest_fit(gateway, RX2_FREQUENCY_HZ, now, wanted + queued)
            if fit is None:
                continue
            # Not before the gateway's queue is short enough either.
            at = max(fit, self._busy.get(gateway, now) - horizon)
            if best is None or at < best[0]:
                best = (at, gateway)
        return best

    def _reserve_s(self, priority: Priority) -> float:
        return _RESERVE[priority] * self._rx2.duty_cycle * self.book.window_s

    def _refuse(self, request: Request, reason: str) -> Refuse:
        self.refused += 1
        return Refuse(request, reason)

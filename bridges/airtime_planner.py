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
    RX2_FREQUENCY_HZ,
    AirtimeBook,
    downlink_airtime_s,
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
        self._order = itertools.count()
        self.refused = 0

    def offer(self, request: Request, now: float) -> list[Decision]:
        """A new request: forwarded now, refused now, or held (no decision yet)."""
        decision = self._try(request, now)
        if decision is not None:
            return [decision]
        heapq.heappush(self._held, _Held(int(request.priority), next(self._order), request))
        return []

    def due(self, now: float) -> list[Decision]:
        """Decisions on held requests: call it as time passes; highest priority first."""
        out: list[Decision] = []
        kept: list[_Held] = []
        while self._held:
            held = heapq.heappop(self._held)
            decision = self._try(held.request, now)
            if decision is None:
                kept.append(held)
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
            fit = self._earliest(request, now)
            if fit is not None:
                times.append(fit)
            if request.deadline is not None:
                times.append(request.deadline)
        return min(times) if times else None

    # --- the rule ------------------------------------------------------------------------

    def _try(self, request: Request, now: float) -> Decision | None:
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
        if request.multicast or route.radio_class is RadioClass.A:
            # The network server sends each part when it can: count it where it will go.
            targets = route.gateways if request.multicast else route.gateways[:1]
            for gateway in targets:
                if self.book.fits(gateway, RX2_FREQUENCY_HZ, now, airtime):
                    self.book.record(gateway, RX2_FREQUENCY_HZ, now, airtime)
            return Forward(request, "" if request.multicast else targets[0], airtime)
        for gateway in route.gateways:
            if self._fits(gateway, now, airtime, request.priority):
                self.book.record(gateway, RX2_FREQUENCY_HZ, now, airtime)
                return Forward(request, gateway, airtime)
        earliest = self._earliest(request, now)
        if request.deadline is not None and (earliest is None or earliest > request.deadline):
            when = "not within an hour" if earliest is None else f"not before {_clock(earliest)}"
            return self._refuse(
                request,
                f"no airtime before its deadline {_clock(request.deadline)}: the RX2 duty cycle "
                f"({self._rx2.duty_cycle:.0%}) of gateway(s) {', '.join(route.gateways)} is spent, "
                f"{when}; "
                "send it again later or to fewer devices",
            )
        return None

    def _fits(self, gateway: str, now: float, airtime: float, priority: Priority) -> bool:
        # Leaving the reserve unused is fitting a transmission larger by the reserve.
        return self.book.fits(gateway, RX2_FREQUENCY_HZ, now, airtime + self._reserve_s(priority))

    def _earliest(self, request: Request, now: float) -> float | None:
        size = min(request.payload_bytes, max_app_payload(self.rx2_dr))
        wanted = downlink_airtime_s(size, self.rx2_dr) + self._reserve_s(request.priority)
        fits = [
            self.book.earliest_fit(gateway, RX2_FREQUENCY_HZ, now, wanted)
            for gateway in request.route.gateways
        ]
        known = [f for f in fits if f is not None]
        return min(known) if known else None

    def _reserve_s(self, priority: Priority) -> float:
        return _RESERVE[priority] * self._rx2.duty_cycle * self.book.window_s

    def _refuse(self, request: Request, reason: str) -> Refuse:
        self.refused += 1
        return Refuse(request, reason)

"""The gate's airtime plan: budgets shared by priority, waiting, refusing before the deadline."""

from __future__ import annotations

import pytest

from bridges.airtime import RX2_FREQUENCY_HZ, AirtimeBook, downlink_airtime_s
from bridges.airtime_planner import (
    OPERATOR_RESERVE,
    POLICY_RESERVE,
    QUEUE_HORIZON_S,
    AirtimePlanner,
    Forward,
    Priority,
    Refuse,
    Request,
    Route,
)
from bridges.registry import RadioClass

pytestmark = pytest.mark.unit

GW1, GW2 = "0016c001f1000001", "0016c001f1000002"
T0 = 1_800_000_000.0
FRAME = 45  # bytes: a lamp profile
AIRTIME = downlink_airtime_s(FRAME, 3)
BUDGET = 0.10 * 3600


def request(
    key: int,
    priority: Priority = Priority.OPERATOR,
    *,
    gateways: tuple[str, ...] = (GW1,),
    deadline: float | None = None,
    at: float = T0,
    radio_class: RadioClass = RadioClass.C,
    size: int = FRAME,
    multicast: bool = False,
) -> Request:
    return Request(key, Route(radio_class, gateways), size, priority, deadline, at, multicast)


def spend(book: AirtimeBook, gateway: str, share: float, at: float = T0) -> None:
    """Fill a gateway's RX2 budget up to `share` of it."""
    while book.fits(gateway, RX2_FREQUENCY_HZ, at, AIRTIME) and (
        sum(u.used_s for u in book.usage(at) if u.gateway_id == gateway) + AIRTIME <= share * BUDGET
    ):
        book.record(gateway, RX2_FREQUENCY_HZ, at, AIRTIME)


def test_a_request_that_fits_is_forwarded_through_the_best_gateway_and_counted() -> None:
    planner = AirtimePlanner(rx2_dr=3)
    (decision,) = planner.offer(request(1, gateways=(GW1, GW2)), T0)
    assert isinstance(decision, Forward) and decision.gateway_id == GW1
    assert decision.airtime_s == pytest.approx(AIRTIME)
    assert planner.book.usage(T0)[0].used_s == pytest.approx(AIRTIME)


def test_ip_costs_nothing_and_class_a_goes_at_once_to_wait_for_its_uplink() -> None:
    planner = AirtimePlanner(rx2_dr=3)
    (ip,) = planner.offer(request(1, gateways=(), radio_class=RadioClass.IP), T0)
    assert isinstance(ip, Forward) and ip.airtime_s == 0.0
    spend(planner.book, GW1, 1.0)
    (class_a,) = planner.offer(request(2, radio_class=RadioClass.A), T0)
    assert isinstance(class_a, Forward)  # the network server holds it for the next uplink


def test_policies_leave_a_reserve_that_operators_and_safety_still_use() -> None:
    planner = AirtimePlanner(rx2_dr=3)
    spend(planner.book, GW1, 1.0 - POLICY_RESERVE)
    assert planner.offer(request(1, Priority.POLICY), T0) == []  # held
    (operator,) = planner.offer(request(2, Priority.OPERATOR), T0)
    assert isinstance(operator, Forward)
    spend(planner.book, GW1, 1.0 - OPERATOR_RESERVE)
    assert planner.offer(request(3, Priority.OPERATOR), T0) == []
    (safety,) = planner.offer(request(4, Priority.SAFETY), T0)
    assert isinstance(safety, Forward)
    assert planner.held() == 2


def test_held_requests_go_as_the_budget_frees_safety_first_then_by_age() -> None:
    planner = AirtimePlanner(rx2_dr=3)
    spend(planner.book, GW1, 1.0)
    for key, priority in ((1, Priority.POLICY), (2, Priority.OPERATOR), (3, Priority.OPERATOR)):
        assert planner.offer(request(key, priority), T0) == []
    assert planner.offer(request(4, Priority.SAFETY), T0 + 1) == []
    due = planner.next_due(T0 + 1)
    assert due is not None and due > T0 + 1
    assert planner.due(T0 + 600) == []  # nothing left the hour's window yet
    later = planner.due(T0 + 3600 + 1)
    # One transmitter: three frames queue within the horizon, the fourth waits its turn.
    assert [d.request.key for d in later] == [4, 2, 3]
    assert planner.next_due(T0 + 3600 + 1) == pytest.approx(T0 + 3600 + 1 + 3 * AIRTIME - 1.0)
    last = planner.due(T0 + 3600 + 2)
    assert [d.request.key for d in later + last] == [4, 2, 3, 1]
    assert all(isinstance(d, Forward) for d in later + last) and planner.held() == 0


def test_a_busy_transmitter_holds_operators_and_policies_but_not_safety() -> None:
    planner = AirtimePlanner(rx2_dr=3)
    queued = int(QUEUE_HORIZON_S // AIRTIME) + 1  # frames starting within the horizon
    forwarded = [planner.offer(request(k, Priority.POLICY), T0) for k in range(queued)]
    assert all(isinstance(d, Forward) for (d,) in forwarded)
    assert planner.offer(request(50, Priority.POLICY), T0) == []
    assert planner.offer(request(51, Priority.OPERATOR), T0) == []
    # Another gateway the device hears is no way round: the network server uses the first.
    assert planner.offer(request(52, Priority.OPERATOR, gateways=(GW1, GW2)), T0) == []
    (safety,) = planner.offer(request(53, Priority.SAFETY), T0)
    assert isinstance(safety, Forward) and safety.gateway_id == GW1
    assert planner.held() == 3


def test_the_gateway_the_network_server_will_use_is_the_one_charged() -> None:
    planner = AirtimePlanner(rx2_dr=3)
    # GW1 spent down to its operator reserve: the network server would still send on it
    # (its budget allows), so an operator frame there would eat the reserve: held.
    spend(planner.book, GW1, 1.0 - OPERATOR_RESERVE / 2)
    assert planner.offer(request(1, Priority.OPERATOR, gateways=(GW1, GW2)), T0) == []
    # GW1 entirely spent: the network server goes to GW2, and so does the plan.
    spend(planner.book, GW1, 1.0)
    (moved,) = planner.offer(request(2, Priority.OPERATOR, gateways=(GW1, GW2)), T0)
    assert isinstance(moved, Forward) and moved.gateway_id == GW2


def test_a_multicast_is_charged_when_each_gateway_will_send_it() -> None:
    planner = AirtimePlanner(rx2_dr=3)
    spend(planner.book, GW1, 1.0)
    (decision,) = planner.offer(
        request(1, Priority.POLICY, gateways=(GW1, GW2), multicast=True), T0
    )
    assert isinstance(decision, Forward)
    # GW2 now; GW1 once a transmission leaves its window (not now: it is spent).
    assert planner.book.fits(GW2, RX2_FREQUENCY_HZ, T0, BUDGET - AIRTIME)
    assert not planner.book.fits(GW2, RX2_FREQUENCY_HZ, T0, BUDGET - AIRTIME / 2)
    used_later = sum(u.used_s for u in planner.book.usage(T0 + 3600 + 1) if u.gateway_id == GW1)
    assert used_later == pytest.approx(AIRTIME)


def test_a_request_that_cannot_go_before_its_deadline_is_refused_at_once_with_a_reason() -> None:
    planner = AirtimePlanner(rx2_dr=3)
    spend(planner.book, GW1, 1.0)
    (refused,) = planner.offer(request(1, deadline=T0 + 60), T0)
    assert isinstance(refused, Refuse)
    assert GW1 in refused.reason and "deadline" in refused.reason and "not before" in refused.reason
    assert planner.held() == 0 and planner.refused == 1
    # With time enough it waits instead.
    assert planner.offer(request(2, deadline=T0 + 7200), T0) == []


def test_a_held_request_past_its_deadline_is_refused_when_looked_at() -> None:
    planner = AirtimePlanner(rx2_dr=3)
    spend(planner.book, GW1, 1.0, at=T0)
    assert planner.offer(request(1, deadline=T0 + 3600 + 10), T0 + 5) == []
    # Something else takes the freed airtime first: it no longer fits before its deadline.
    spend(planner.book, GW1, 1.0, at=T0 + 3600 + 1)
    (late,) = planner.due(T0 + 3600 + 2)
    assert isinstance(late, Refuse)


def test_a_frame_too_large_for_rx2_is_refused() -> None:
    planner = AirtimePlanner(rx2_dr=3)
    (refused,) = planner.offer(request(1, size=116), T0)
    assert isinstance(refused, Refuse) and "116 bytes" in refused.reason


def test_a_multicast_is_forwarded_at_once_and_counted_on_every_serving_gateway() -> None:
    planner = AirtimePlanner(rx2_dr=3)
    multicast = Request(
        1, Route(RadioClass.C, (GW1, GW2)), FRAME, Priority.POLICY, None, T0, multicast=True
    )
    (decision,) = planner.offer(multicast, T0)
    assert isinstance(decision, Forward)
    used = {u.gateway_id: u.used_s for u in planner.book.usage(T0)}
    assert used == pytest.approx({GW1: AIRTIME, GW2: AIRTIME})


def test_a_request_is_refused_at_once_when_those_held_ahead_fill_its_time() -> None:
    planner = AirtimePlanner(rx2_dr=3, book=AirtimeBook(window_s=60.0))
    budget = 0.10 * 60.0
    # The gateway's minute is spent, and frees within the next 30 s.
    for i in range(int(budget / AIRTIME)):
        planner.book.record(GW1, RX2_FREQUENCY_HZ, T0 - 59 + i * 30 / (budget / AIRTIME), AIRTIME)
    deadline = T0 + 40
    offered = [
        planner.offer(request(k, Priority.OPERATOR, deadline=deadline), T0) for k in range(40)
    ]
    held = sum(1 for d in offered if d == [])
    refused = [d for (d,) in (o for o in offered if o) if isinstance(d, Refuse)]
    # What frees before the deadline is held (about the budget's worth); the rest refused
    # now, not at the deadline.
    assert 0 < held <= int(budget / AIRTIME) + 1
    assert len(refused) == 40 - held and "deadline" in refused[0].reason
    # A safety request does not wait behind them: it takes the first airtime that frees
    # (a second from now: within the network server's look-ahead, so forwarded now).
    (safety,) = planner.offer(request(99, Priority.SAFETY, deadline=deadline), T0)
    assert isinstance(safety, Forward) and safety.gateway_id == GW1
    assert planner.held() == held

"""The gate's airtime plan: budgets shared by priority, waiting, refusing before the deadline."""

from __future__ import annotations

import pytest

from bridges.airtime import RX2_FREQUENCY_HZ, AirtimeBook, downlink_airtime_s
from bridges.airtime_planner import (
    OPERATOR_RESERVE,
    POLICY_RESERVE,
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
) -> Request:
    return Request(key, Route(radio_class, gateways), size, priority, deadline, at)


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
    assert [d.request.key for d in later] == [4, 2, 3, 1]
    assert all(isinstance(d, Forward) for d in later) and planner.held() == 0


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

"""The simulated network server's radio rules: device classes, duty cycle, payload limits, multicast."""

from __future__ import annotations

import pytest

from bridges.airtime import RX2_FREQUENCY_HZ, AirtimeBook, downlink_airtime_s
from bridges.registry import RadioClass
from citypost.errors import InvalidArgumentError
from fleet.downlink_scheduler import (
    DUTY_CYCLE_OVERFLOW,
    PAYLOAD_SIZE,
    Deferred,
    DeviceLink,
    DownlinkScheduler,
    Dropped,
    Frame,
    MulticastSent,
    Sent,
)

pytestmark = pytest.mark.unit

GW1, GW2 = "0016c001f1000001", "0016c001f1000002"
LAMP, LAMP2, METER, BUS = (
    "00000000000000c1",
    "00000000000000c2",
    "00000000000000a1",
    "00000000000000f1",
)
LINKS = {
    LAMP: DeviceLink(RadioClass.C, (GW1, GW2), 5),
    LAMP2: DeviceLink(RadioClass.C, (GW2,), 3),
    METER: DeviceLink(RadioClass.A, (GW1,), 5),
    BUS: DeviceLink(RadioClass.IP, (), 0),
}
T0 = 1_800_000_000.0
G1_CHANNEL = 868_100_000


def frame(dev_eui: str, n: int = 0, size: int = 40, at: float = T0) -> Frame:
    return Frame(f"q-{dev_eui}-{n}", dev_eui, 100, bytes(size), True, at)


def scheduler(**kwargs: object) -> DownlinkScheduler:
    return DownlinkScheduler(LINKS, rx2_dr=3, **kwargs)  # type: ignore[arg-type]


def test_a_class_c_frame_goes_at_once_in_rx2_through_the_best_gateway() -> None:
    s = scheduler()
    (sent,) = s.enqueue(frame(LAMP), T0)
    assert isinstance(sent, Sent)
    assert (sent.gateway_id, sent.frequency_hz, sent.dr, sent.immediately) == (
        GW1,
        RX2_FREQUENCY_HZ,
        3,
        True,
    )
    assert sent.airtime_s == pytest.approx(downlink_airtime_s(40, 3))
    assert s.book.usage(T0)[0].used_s == pytest.approx(sent.airtime_s)


def test_an_ip_device_takes_its_frame_at_once_without_airtime() -> None:
    s = scheduler()
    (sent,) = s.enqueue(frame(BUS), T0)
    assert isinstance(sent, Sent) and sent.gateway_id == "" and sent.airtime_s == 0.0
    assert s.book.usage(T0) == []


def test_a_class_a_frame_waits_for_the_devices_uplink_and_goes_in_rx1() -> None:
    s = scheduler()
    assert s.enqueue(frame(METER), T0) == []
    assert s.poll(T0 + 3600) == []  # time alone does not open a class A device's windows
    assert s.queued(METER) == 1
    (sent,) = s.on_uplink(METER, G1_CHANNEL, T0 + 3600)
    assert isinstance(sent, Sent)
    assert (sent.frequency_hz, sent.dr, sent.immediately) == (G1_CHANNEL, 5, False)
    assert s.queued(METER) == 0


def test_a_class_a_device_gets_one_frame_per_uplink() -> None:
    s = scheduler()
    s.enqueue(frame(METER, 1), T0)
    s.enqueue(frame(METER, 2), T0)
    first = s.on_uplink(METER, G1_CHANNEL, T0 + 10)
    second = s.on_uplink(METER, G1_CHANNEL, T0 + 20)
    assert [e.frame.queue_id for e in first + second if isinstance(e, Sent)] == [
        f"q-{METER}-1",
        f"q-{METER}-2",
    ]


def test_class_a_falls_back_to_rx2_when_rx1s_sub_band_is_spent() -> None:
    book = AirtimeBook()
    airtime = downlink_airtime_s(40, 5)
    t = T0
    while book.fits(GW1, G1_CHANNEL, t, airtime):
        book.record(GW1, G1_CHANNEL, t, airtime)
        t += 0.001
    s = scheduler(book=book)
    s.enqueue(frame(METER), t)
    (sent,) = s.on_uplink(METER, G1_CHANNEL, t)
    assert isinstance(sent, Sent) and sent.frequency_hz == RX2_FREQUENCY_HZ and sent.dr == 3


def fill_rx2(book: AirtimeBook, gateway: str, at: float, size: int = 40) -> None:
    airtime = downlink_airtime_s(size, 3)
    while book.fits(gateway, RX2_FREQUENCY_HZ, at, airtime):
        book.record(gateway, RX2_FREQUENCY_HZ, at, airtime)


def test_over_the_best_gateways_budget_a_frame_goes_through_the_next_one() -> None:
    book = AirtimeBook()
    fill_rx2(book, GW1, T0)
    s = scheduler(book=book)
    (sent,) = s.enqueue(frame(LAMP), T0)
    assert isinstance(sent, Sent) and sent.gateway_id == GW2


def test_over_every_gateways_budget_a_frame_waits_said_once_then_goes() -> None:
    book = AirtimeBook()
    fill_rx2(book, GW1, T0)
    fill_rx2(book, GW2, T0)
    s = scheduler(book=book)
    (deferred,) = s.enqueue(frame(LAMP, 1), T0 + 1)
    assert isinstance(deferred, Deferred) and deferred.reason == DUTY_CYCLE_OVERFLOW
    assert deferred.retry_at is not None and deferred.retry_at > T0 + 1
    # A second frame queues behind the first; nothing is said twice.
    assert s.enqueue(frame(LAMP, 2), T0 + 2) == []
    assert s.poll(T0 + 600) == []
    assert s.queued(LAMP) == 2
    # The budget frees an hour after the transmissions that filled it.
    later = s.poll(deferred.retry_at)
    assert [e.frame.queue_id for e in later if isinstance(e, Sent)][:1] == [f"q-{LAMP}-1"]
    after = s.poll(T0 + 3600 + 60)
    sent_ids = [e.frame.queue_id for e in later + after if isinstance(e, Sent)]
    assert sent_ids == [f"q-{LAMP}-1", f"q-{LAMP}-2"]
    assert s.queued(LAMP) == 0


def test_a_frame_too_large_for_the_data_rate_is_dropped_with_chirpstacks_code() -> None:
    s = scheduler()
    (dropped,) = s.enqueue(frame(LAMP, size=116), T0)  # DR3 carries at most 115 bytes
    assert isinstance(dropped, Dropped) and dropped.code == PAYLOAD_SIZE
    assert "115" in dropped.description
    (sent,) = s.enqueue(frame(LAMP, 2, size=115), T0)
    assert isinstance(sent, Sent)


def test_a_multicast_goes_once_per_serving_gateway_to_the_members_it_serves() -> None:
    s = scheduler()
    events = s.enqueue_multicast("g1", 7, 100, bytes(45), [LAMP, LAMP2, METER, BUS], T0)
    assert all(isinstance(e, MulticastSent) for e in events)
    by_gateway = {e.gateway_id: e.receivers for e in events if isinstance(e, MulticastSent)}
    # METER (class A) and BUS (IP) do not listen for multicast.
    assert by_gateway == {GW1: (LAMP,), GW2: (LAMP2,)}
    assert s.multicasts_pending() == 0
    used = {u.gateway_id: u.used_s for u in s.book.usage(T0)}
    assert used == pytest.approx({GW1: downlink_airtime_s(45, 3), GW2: downlink_airtime_s(45, 3)})


def test_a_multicast_waits_for_a_spent_gateway_and_the_others_go_at_once() -> None:
    book = AirtimeBook()
    fill_rx2(book, GW2, T0, size=45)
    s = scheduler(book=book)
    events = s.enqueue_multicast("g1", 1, 100, bytes(45), [LAMP, LAMP2], T0)
    assert [e.gateway_id for e in events if isinstance(e, MulticastSent)] == [GW1]
    assert s.multicasts_pending() == 1
    due = s.next_due(T0)
    assert due is not None and due > T0
    later = s.poll(due)
    assert [(e.gateway_id, e.receivers) for e in later if isinstance(e, MulticastSent)] == [
        (GW2, (LAMP2,))
    ]
    assert s.multicasts_pending() == 0


def test_a_multicast_over_the_payload_limit_is_refused() -> None:
    with pytest.raises(InvalidArgumentError, match="116 bytes"):
        scheduler().enqueue_multicast("g1", 1, 100, bytes(116), [LAMP], T0)


def test_an_unknown_device_is_an_error() -> None:
    with pytest.raises(InvalidArgumentError, match="no radio link"):
        scheduler().enqueue(frame("00000000000000ff"), T0)


def test_a_gateway_sends_its_frames_one_after_the_other() -> None:
    s = scheduler()
    first, second = (s.enqueue(frame(LAMP, n), T0)[0] for n in (1, 2))
    assert isinstance(first, Sent) and isinstance(second, Sent)
    assert first.at == T0 and second.at == pytest.approx(T0 + first.airtime_s)
    # Past the gateway's short queue of timed frames, a frame waits for the next poll.
    many = [s.enqueue(frame(LAMP2, n), T0) for n in range(40)]
    sent = [e for events in many for e in events if isinstance(e, Sent)]
    assert sent and max(e.at for e in sent) <= T0 + 5.0 + sent[0].airtime_s
    assert any(isinstance(e, Deferred) for events in many for e in events)
    later = s.poll(T0 + 60)
    assert any(isinstance(e, Sent) for e in later)


def test_a_frame_longer_than_a_whole_budget_is_dropped_instead_of_waiting_forever() -> None:
    s = scheduler(book=AirtimeBook(window_s=1.0))  # a 0.1 s budget: no frame fits
    (dropped,) = s.enqueue(frame(LAMP), T0)
    assert isinstance(dropped, Dropped) and DUTY_CYCLE_OVERFLOW in dropped.description
    assert s.poll(T0 + 10) == [] and s.queued(LAMP) == 0

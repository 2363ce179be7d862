"""The command lifecycle: QUEUED -> SENT -> ACKED, or EXPIRED / FAILED."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from citypost.errors import FailedPreconditionError, InvalidArgumentError
from post import command_ledger as ledger
from post.command_ledger import ACKED, EXPIRED, FAILED, QUEUED, SENT, Action
from protos.citypost.v1 import assets_pb2, command_pb2

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]

T0 = 1_700_000_000_000


def lamp_command(command_id: str = "c-1", group: str = "") -> command_pb2.Command:
    command = command_pb2.Command(command_id=command_id, asset_class=assets_pb2.STREET_LAMP)
    if group:
        command.target.group = group
    else:
        command.target.dev_eui = "70b3d57ed0000001"
    command.set_brightness.brightness_pct = 40.0
    return command


def record(ttl_ms: int = 60_000, max_attempts: int = 3, **kwargs: int) -> ledger.CommandRecord:
    return ledger.new_record(
        lamp_command(), ttl_ms, max_attempts, T0, "idem-1", "operator-7", **kwargs
    )


# --- creation


def test_a_new_record_is_queued_and_due_at_once() -> None:
    r = record()
    assert r.status == QUEUED
    assert (r.attempts, r.max_attempts, r.expected_acks) == (0, 3, 1)
    assert r.deadline_ms == T0 + 60_000
    assert r.command.ttl_ms == 60_000 and r.command.issued_at_ms == T0
    assert r.issued_by == r.command.issued_by == "operator-7"
    assert r.idempotency_key == "idem-1"
    assert ledger.decide(r, T0) == Action.RESEND


def test_new_record_does_not_change_the_callers_command() -> None:
    command = lamp_command()
    ledger.new_record(command, 1_000, 1, T0)
    assert command.ttl_ms == 0 and command.issued_at_ms == 0


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda c: c.ClearField("command_id"), "command_id"),
        (lambda c: c.ClearField("target"), "target"),
        (lambda c: c.ClearField("set_brightness"), "action"),
    ],
)
def test_an_incomplete_command_is_refused(
    change: Callable[[command_pb2.Command], None], field: str
) -> None:
    command = lamp_command()
    change(command)
    with pytest.raises(InvalidArgumentError, match=field):
        ledger.new_record(command, 1_000, 1, T0)


@pytest.mark.parametrize(
    ("ttl_ms", "max_attempts", "kwargs", "field"),
    [
        (0, 1, {}, "ttl_ms"),
        (1_000, 0, {}, "max_attempts"),
        (1_000, 1, {"expected_acks": 2}, "expected_acks"),  # one device, two acks?
        (1_000, 1, {"backoff_initial_ms": 0}, "backoff"),
        (1_000, 1, {"backoff_initial_ms": 500, "backoff_max_ms": 100}, "backoff"),
    ],
)
def test_bad_ledger_parameters_are_refused(
    ttl_ms: int, max_attempts: int, kwargs: dict[str, int], field: str
) -> None:
    with pytest.raises(InvalidArgumentError, match=field):
        ledger.new_record(lamp_command(), ttl_ms, max_attempts, T0, **kwargs)  # type: ignore[arg-type]


# --- the happy path


def test_sent_then_acked() -> None:
    queued = record()
    sent = ledger.on_sent(queued, T0 + 5, epoch=4)
    assert sent.status == SENT and sent.attempts == 1
    assert sent.last_sent_at_ms == T0 + 5 and sent.command.epoch == 4
    assert queued.status == QUEUED and queued.attempts == 0  # inputs are never changed
    assert ledger.decide(sent, T0 + 6) == Action.WAIT
    result = ledger.on_ack(sent, True, T0 + 50)
    assert not result.ignored
    assert result.record.status == ACKED
    assert result.record.acked_at_ms == result.record.finished_at_ms == T0 + 50
    assert ledger.decide(result.record, T0 + 10**9) == Action.DONE
    assert ledger.next_wake_ms(result.record) is None


def test_an_ack_while_still_queued_counts() -> None:
    # The device answered before the SENT write landed (or the write was lost with a leader).
    result = ledger.on_ack(record(), True, T0 + 1)
    assert result.record.status == ACKED


# --- retries and back-off


def test_back_off_doubles_up_to_its_cap() -> None:
    r = record(backoff_initial_ms=100, backoff_max_ms=1_000)
    assert [ledger.backoff_ms(r, n) for n in range(1, 7)] == [100, 200, 400, 800, 1_000, 1_000]
    assert ledger.backoff_ms(r, 10_000) == 1_000
    with pytest.raises(InvalidArgumentError):
        ledger.backoff_ms(r, 0)


def test_an_unanswered_send_is_resent_after_its_back_off() -> None:
    r = ledger.on_sent(record(backoff_initial_ms=100), T0)
    assert r.next_retry_at_ms == T0 + 100
    assert ledger.decide(r, T0 + 99) == Action.WAIT
    assert ledger.next_wake_ms(r) == T0 + 100
    assert ledger.decide(r, T0 + 100) == Action.RESEND
    r = ledger.on_sent(r, T0 + 100)
    assert r.attempts == 2 and r.next_retry_at_ms == T0 + 300


def test_no_ack_after_the_last_attempt_fails() -> None:
    r = record(max_attempts=2, backoff_initial_ms=100)
    r = ledger.on_sent(r, T0)
    r = ledger.on_sent(r, T0 + 100)
    assert ledger.decide(r, T0 + 299) == Action.WAIT  # the last attempt's ack window
    assert ledger.decide(r, T0 + 300) == Action.FAIL
    failed = ledger.fail(r, T0 + 300)
    assert failed.status == FAILED and failed.finished_at_ms == T0 + 300
    assert "2 attempt" in failed.detail


def test_a_send_with_no_attempt_left_is_refused() -> None:
    r = ledger.on_sent(record(max_attempts=1), T0)
    with pytest.raises(FailedPreconditionError, match="no attempt left"):
        ledger.on_sent(r, T0 + 10_000)


@given(
    ttl_ms=st.integers(1, 120_000),
    max_attempts=st.integers(1, 30),
    initial=st.integers(1, 5_000),
    cap_factor=st.integers(1, 64),
    lateness=st.lists(st.integers(0, 3_000), min_size=30, max_size=30),
)
def test_retries_never_go_past_the_deadline(
    ttl_ms: int, max_attempts: int, initial: int, cap_factor: int, lateness: list[int]
) -> None:
    """A driver that wakes late, each time, still never sends at or after the deadline."""
    r = ledger.new_record(
        lamp_command(),
        ttl_ms,
        max_attempts,
        T0,
        backoff_initial_ms=initial,
        backoff_max_ms=initial * cap_factor,
    )
    now = T0
    sends: list[int] = []
    for late in lateness:
        action = ledger.decide(r, now)
        if action == Action.RESEND:
            r = ledger.on_sent(r, now)
            sends.append(now)
            assert r.next_retry_at_ms <= r.deadline_ms
        elif action == Action.EXPIRE:
            r = ledger.expire(r, now)
        elif action == Action.FAIL:
            r = ledger.fail(r, now)
        elif action == Action.DONE:
            break
        wake = ledger.next_wake_ms(r)
        if wake is not None:
            now = max(now, wake) + late
    assert all(t < T0 + ttl_ms for t in sends)
    assert len(sends) <= max_attempts
    assert all(b - a >= initial for a, b in itertools.pairwise(sends))


# --- TTL expiry


def test_the_deadline_expires_a_queued_or_sent_command() -> None:
    queued = record(ttl_ms=1_000)
    assert ledger.decide(queued, T0 + 999) == Action.RESEND
    assert ledger.decide(queued, T0 + 1_000) == Action.EXPIRE
    sent = ledger.on_sent(queued, T0, epoch=1)
    assert sent.next_retry_at_ms == T0 + 1_000  # the back-off is cut at the deadline
    assert ledger.decide(sent, T0 + 1_000) == Action.EXPIRE  # EXPIRE wins over a due retry
    expired = ledger.expire(sent, T0 + 1_000)
    assert expired.status == EXPIRED and expired.finished_at_ms == T0 + 1_000
    assert ledger.decide(expired, T0 + 5_000) == Action.DONE


def test_expiring_before_the_deadline_is_refused() -> None:
    with pytest.raises(FailedPreconditionError, match="before its deadline"):
        ledger.expire(record(ttl_ms=1_000), T0 + 999)


def test_sending_at_the_deadline_is_refused() -> None:
    with pytest.raises(FailedPreconditionError, match="deadline"):
        ledger.on_sent(record(ttl_ms=1_000), T0 + 1_000)


# --- negative acks


def test_a_negative_ack_asks_for_a_resend_under_the_current_epoch() -> None:
    sent = ledger.on_sent(record(backoff_initial_ms=100), T0, epoch=3)
    nacked = ledger.on_ack(sent, False, T0 + 10, detail="stale epoch 3 < 4").record
    assert nacked.status == QUEUED  # not a success
    assert nacked.nacked_count == 1 and nacked.detail == "stale epoch 3 < 4"
    # The back-off spacing of sends still holds.
    assert ledger.decide(nacked, T0 + 50) == Action.WAIT
    assert ledger.decide(nacked, T0 + 100) == Action.RESEND
    resent = ledger.on_sent(nacked, T0 + 100, epoch=4)
    assert resent.command.epoch == 4 and resent.command.command_id == sent.command.command_id
    assert ledger.on_ack(resent, True, T0 + 120).record.status == ACKED


def test_a_negative_ack_on_the_last_attempt_fails() -> None:
    sent = ledger.on_sent(record(max_attempts=1), T0)
    failed = ledger.on_ack(sent, False, T0 + 10).record
    assert failed.status == FAILED and failed.finished_at_ms == T0 + 10
    assert failed.detail == "negative ack"


def test_a_resend_under_an_older_epoch_is_refused() -> None:
    sent = ledger.on_sent(record(), T0, epoch=5)
    with pytest.raises(FailedPreconditionError, match="epoch 4"):
        ledger.on_sent(ledger.on_ack(sent, False, T0 + 1).record, T0 + 5_000, epoch=4)


# --- terminal states are final


def terminal_records() -> list[ledger.CommandRecord]:
    sent = ledger.on_sent(record(ttl_ms=1_000, max_attempts=1), T0)
    return [
        ledger.on_ack(sent, True, T0 + 1).record,
        ledger.expire(sent, T0 + 1_000),
        ledger.fail(sent, T0 + 2),
    ]


@pytest.mark.parametrize("final", terminal_records(), ids=["acked", "expired", "failed"])
@pytest.mark.parametrize("acknowledged", [True, False])
def test_an_ack_after_a_terminal_state_is_ignored_with_a_flag(
    final: ledger.CommandRecord, acknowledged: bool
) -> None:
    result = ledger.on_ack(final, acknowledged, T0 + 10_000)
    assert result.ignored
    assert result.record == final


@pytest.mark.parametrize("final", terminal_records(), ids=["acked", "expired", "failed"])
def test_no_transition_leaves_a_terminal_state(final: ledger.CommandRecord) -> None:
    later = T0 + 10_000
    with pytest.raises(FailedPreconditionError):
        ledger.on_sent(final, later)
    with pytest.raises(FailedPreconditionError):
        ledger.expire(final, later)
    with pytest.raises(FailedPreconditionError):
        ledger.fail(final, later)
    assert ledger.decide(final, later) == Action.DONE
    with pytest.raises(FailedPreconditionError):
        ledger.on_sent(final, later, epoch=final.command.epoch + 1)  # nor a takeover's send


def test_fail_is_legal_from_queued_with_a_named_cause() -> None:
    failed = ledger.fail(record(), T0 + 1, "unknown device")
    assert failed.status == FAILED and failed.detail == "unknown device"


# --- group commands


def test_a_group_command_is_acked_when_every_device_acked() -> None:
    group = ledger.new_record(lamp_command(group="talant"), 60_000, 3, T0, expected_acks=3)
    r = ledger.on_sent(group, T0)
    for i in range(2):
        r = ledger.on_ack(r, True, T0 + 10 + i).record
        assert r.status == SENT
    assert r.acked_count == 2
    r = ledger.on_ack(r, True, T0 + 20).record
    assert r.status == ACKED and r.acked_count == 3


def test_a_partly_acked_group_command_is_resent_when_its_retry_is_due() -> None:
    group = ledger.new_record(
        lamp_command(group="talant"), 60_000, 3, T0, expected_acks=2, backoff_initial_ms=100
    )
    r = ledger.on_ack(ledger.on_sent(group, T0), True, T0 + 10).record
    assert ledger.decide(r, T0 + 100) == Action.RESEND


# --- promotion


def test_a_new_leader_resends_under_its_epoch_and_keeps_counting_attempts() -> None:
    sent = ledger.on_sent(record(backoff_initial_ms=10_000), T0, epoch=3)
    resent = ledger.on_sent(sent, T0 + 500, epoch=9)
    assert resent.command.epoch == 9 and resent.attempts == 2
    assert resent.next_retry_at_ms == T0 + 500 + 20_000  # its own ack window


def test_a_new_leader_owes_one_send_of_a_command_whose_attempts_were_used_up() -> None:
    r = record(max_attempts=2, backoff_initial_ms=1_000)
    r = ledger.on_sent(r, T0, epoch=3)
    r = ledger.on_sent(r, T0 + 1_000, epoch=3)
    with pytest.raises(FailedPreconditionError, match="no attempt left"):
        ledger.on_sent(r, T0 + 2_000, epoch=3)  # the same leader has no attempt left
    taken = ledger.on_sent(r, T0 + 2_000, epoch=9)
    assert taken.attempts == 3 and taken.command.epoch == 9
    assert ledger.decide(taken, T0 + 2_000 + 3_999) == Action.WAIT  # backoff after send 3
    assert ledger.decide(taken, T0 + 2_000 + 4_000) == Action.FAIL
    with pytest.raises(FailedPreconditionError, match="no attempt left"):
        ledger.on_sent(taken, T0 + 6_000, epoch=9)  # one send per takeover, not more


# --- multicast: confirmed by reported state ---------------------------------------------------


def _multicast_record(expected: int = 4) -> ledger.CommandRecord:
    command = command_pb2.Command(
        command_id="m1",
        asset_class=1,
        target=command_pb2.Target(group="talant"),
        set_lamp_profile=command_pb2.LampProfile(profile_id=3),
    )
    record = ledger.new_record(command, 10_000, 3, 0, expected_acks=expected, multicast=True)
    return ledger.on_sent(record, 0)


def test_a_multicast_is_resent_once_halfway_then_waits_for_its_deadline() -> None:
    sent = _multicast_record()
    assert sent.next_retry_at_ms == 5_000  # halfway: the stragglers' turn
    assert ledger.decide(sent, 4_999) is ledger.Action.WAIT
    assert ledger.decide(sent, 5_000) is ledger.Action.RESEND
    again = ledger.on_sent(sent, 5_000)
    assert again.next_retry_at_ms == again.deadline_ms == 10_000
    assert ledger.decide(again, 9_999) is ledger.Action.WAIT
    assert ledger.decide(again, 10_000) is ledger.Action.EXPIRE


def test_confirmations_grow_the_count_until_acked() -> None:
    sent = _multicast_record()
    two = ledger.on_confirmed(sent, 2, 100)
    assert (two.status, two.acked_count) == (ledger.SENT, 2)
    assert ledger.on_confirmed(two, 1, 200) is two  # a count never goes back
    done = ledger.on_confirmed(two, 4, 300)
    assert (done.status, done.acked_at_ms, done.finished_at_ms) == (ledger.ACKED, 300, 300)
    assert ledger.on_confirmed(done, 4, 400) is done


def test_settle_makes_it_partial_with_its_stragglers_or_expired_without_any_confirmation() -> None:
    sent = ledger.on_confirmed(_multicast_record(), 2, 100)
    with pytest.raises(FailedPreconditionError):
        ledger.settle(sent, 9_000, ["b", "a"])
    partial = ledger.settle(sent, 10_000, ["b", "a"])
    assert (partial.status, partial.acked_count, partial.straggler_count) == (ledger.PARTIAL, 2, 2)
    assert list(partial.stragglers) == ["a", "b"] and ledger.is_terminal(partial)
    nobody = ledger.settle(_multicast_record(), 10_000, ["a", "b", "c", "d"])
    assert nobody.status == ledger.EXPIRED and nobody.straggler_count == 4


def test_the_stragglers_listed_are_bounded_but_all_counted() -> None:
    many = ledger.MAX_LISTED_STRAGGLERS + 50
    record = ledger.on_confirmed(_multicast_record(expected=many + 1), 1, 5)
    settled = ledger.settle(record, 10_000, [f"{i:016x}" for i in range(many)])
    assert settled.straggler_count == many
    assert len(settled.stragglers) == ledger.MAX_LISTED_STRAGGLERS


def test_multicast_functions_refuse_unicast_records_and_unicast_targets() -> None:
    command = command_pb2.Command(
        command_id="u1",
        target=command_pb2.Target(dev_eui="00000000000000c1"),
        set_brightness=command_pb2.SetBrightness(brightness_pct=1),
    )
    unicast = ledger.new_record(command, 10_000, 3, 0)
    with pytest.raises(InvalidArgumentError):
        ledger.on_confirmed(unicast, 1, 0)
    with pytest.raises(InvalidArgumentError):
        ledger.settle(unicast, 10_000, [])
    with pytest.raises(InvalidArgumentError):
        ledger.new_record(command, 10_000, 3, 0, multicast=True)


def test_a_newer_state_for_the_same_group_supersedes_an_unconfirmed_one() -> None:
    evening = ledger.on_confirmed(_multicast_record(), 1, 100)
    night = command_pb2.Command(
        command_id="m2",
        asset_class=1,
        target=command_pb2.Target(group="talant"),
        set_lamp_profile=command_pb2.LampProfile(profile_id=4),
    )
    night_record = ledger.new_record(night, 10_000, 3, 200, expected_acks=4, multicast=True)
    assert ledger.supersedes(night, evening.command)
    done = ledger.supersede(evening, 300, night_record)
    assert done.status == ledger.SUPERSEDED and ledger.is_terminal(done)
    assert done.finished_at_ms == 300
    assert "m2" in done.detail and "1 of 4" in done.detail
    assert ledger.decide(done, 5_000) is ledger.Action.DONE  # never sent again
    with pytest.raises(FailedPreconditionError):
        ledger.supersede(done, 400, night_record)
    # Not superseded: itself, another group, another class, a device, a state-less action.
    assert not ledger.supersedes(evening.command, evening.command)

    def night_but(edit: Callable[[command_pb2.Command], object]) -> command_pb2.Command:
        changed = command_pb2.Command()
        changed.CopyFrom(night)
        edit(changed)
        return changed

    assert not ledger.supersedes(
        night_but(lambda c: setattr(c.target, "group", "daix")), evening.command
    )
    assert not ledger.supersedes(
        night_but(lambda c: setattr(c, "asset_class", assets_pb2.BOLLARD)), evening.command
    )
    assert not ledger.supersedes(
        night_but(lambda c: setattr(c.target, "dev_eui", "0102030405060708")), evening.command
    )
    priority = night_but(lambda c: c.signal_priority.SetInParent())
    assert not ledger.supersedes(priority, evening.command)
    # A fixed level replaces a profile: both are the lamps' state.
    level = night_but(lambda c: c.set_brightness.SetInParent())
    assert ledger.supersedes(level, evening.command)

"""The pure leadership decision: lead, stand by, campaign or demote, over its timings."""

from __future__ import annotations

import pytest

from citypost.errors import InvalidArgumentError
from failover.leadership import (
    Action,
    EtcdView,
    LeaderRecord,
    LeaderValue,
    LeaseView,
    decide,
    may_command,
)

pytestmark = pytest.mark.unit

ME = LeaderValue(name="primary", address="127.0.0.1:50051")
OTHER = LeaderValue(name="backup", address="127.0.0.1:50052")
TTL = 1.0
MARGIN = 0.3
MY_LEASE = 0x1234
SENT = 100.0  # when the last answered keepalive was sent
DEADLINE = SENT + TTL - MARGIN  # 100.7


def view(
    leader: LeaderRecord | None = None,
    *,
    sent_at: float | None = SENT,
    ttl: float = TTL,
    lease_id: int | None = MY_LEASE,
) -> EtcdView:
    lease = None if lease_id is None else LeaseView(lease_id, ttl, sent_at)
    return EtcdView(me=ME.name, leader=leader, lease=lease, safety_margin_s=MARGIN)


def mine(epoch: int = 7) -> LeaderRecord:
    return LeaderRecord(value=ME, epoch=epoch, lease_id=MY_LEASE)


def theirs(epoch: int = 9) -> LeaderRecord:
    return LeaderRecord(value=OTHER, epoch=epoch, lease_id=0x9999)


def test_holding_the_key_with_a_fresh_lease_leads_under_the_keys_epoch() -> None:
    decision = decide(view(mine(epoch=42)), SENT + 0.1)
    assert decision.action is Action.LEAD
    assert decision.epoch == 42 and decision.leader == ME
    assert decision.deadline == pytest.approx(DEADLINE)
    assert decision.may_command


@pytest.mark.parametrize(
    ("now", "action"),
    [
        (SENT, Action.LEAD),
        (DEADLINE - 1e-6, Action.LEAD),
        (DEADLINE, Action.DEMOTE),  # at the deadline exactly: no longer trusted
        (DEADLINE + 1e-6, Action.DEMOTE),
        (SENT + TTL - 1e-6, Action.DEMOTE),  # the margin: demoted before etcd could expire it
        (SENT + TTL + 5, Action.DEMOTE),
    ],
)
def test_the_leader_demotes_at_the_deadline_a_margin_before_the_ttl(
    now: float, action: Action
) -> None:
    decision = decide(view(mine()), now)
    assert decision.action is action
    assert may_command(view(mine()), now) is (action is Action.LEAD)
    # Demoted or not, it still reports the key it holds.
    assert decision.epoch == 7 and decision.leader == ME


def test_the_deadline_counts_from_the_send_not_the_answer() -> None:
    # A keepalive sent at 100.0 and answered at 100.5 is trusted until 100.7, not 101.2.
    lease = LeaseView(MY_LEASE, TTL, answered_sent_at=SENT)
    assert lease.deadline(MARGIN) == pytest.approx(DEADLINE)
    assert not lease.valid_at(SENT + 0.5 + TTL - MARGIN, MARGIN)


def test_a_longer_ttl_granted_by_etcd_moves_the_deadline() -> None:
    assert decide(view(mine(), ttl=2.0), SENT + 1.5).action is Action.LEAD
    assert decide(view(mine(), ttl=2.0), SENT + 1.7).action is Action.DEMOTE


def test_a_lease_never_answered_is_not_trusted() -> None:
    never = view(mine(), sent_at=None)
    assert decide(never, SENT).action is Action.DEMOTE
    assert never.lease_deadline() is None
    # Nor can it campaign.
    assert decide(view(None, sent_at=None), SENT).action is Action.STAND_BY


def test_without_a_lease_nothing_is_mine() -> None:
    no_lease = view(mine(), lease_id=None)
    decision = decide(no_lease, SENT)
    # My name on the key, but no lease of mine holds it: not mine to lead.
    assert decision.action is Action.STAND_BY and not decision.may_command
    assert decide(view(None, lease_id=None), SENT).action is Action.STAND_BY


def test_an_absent_key_with_a_valid_lease_means_campaign() -> None:
    decision = decide(view(None), SENT + 0.1)
    assert decision.action is Action.CAMPAIGN
    assert decision.leader is None and decision.epoch is None
    assert not decision.may_command  # campaigning is not leading


def test_an_absent_key_with_an_expired_lease_means_stand_by() -> None:
    assert decide(view(None), DEADLINE).action is Action.STAND_BY


def test_a_key_held_by_another_post_means_stand_by_with_its_name_and_epoch() -> None:
    for now in (SENT, DEADLINE + 10):
        decision = decide(view(theirs(epoch=9)), now)
        assert decision.action is Action.STAND_BY
        assert decision.leader == OTHER and decision.epoch == 9
        assert not decision.may_command


def test_my_own_old_key_under_an_earlier_lease_is_not_mine() -> None:
    # A restarted post finds its previous incarnation's key (older epoch, old lease):
    # it cannot keep that lease alive, so it waits for it to expire like anyone's.
    old = LeaderRecord(value=ME, epoch=3, lease_id=0x1111)
    decision = decide(view(old), SENT + 0.1)
    assert decision.action is Action.STAND_BY
    assert decision.leader == ME and decision.epoch == 3
    assert not decision.may_command


def test_may_command_is_the_decision() -> None:
    assert may_command(view(mine()), SENT + 0.1)
    assert not may_command(view(theirs()), SENT + 0.1)
    assert not may_command(view(None), SENT + 0.1)
    assert not may_command(view(mine()), DEADLINE)


def test_leader_value_round_trips_as_json() -> None:
    raw = ME.to_json()
    assert LeaderValue.from_json(raw) == ME
    assert LeaderValue.from_json(raw.decode()) == ME
    assert b'"name": "primary"' in raw and b'"address": "127.0.0.1:50051"' in raw


@pytest.mark.parametrize(
    "raw",
    [b"not json", b"[]", b'{"name": "primary"}', b'{"name": 3, "address": "x"}', b"\xff"],
)
def test_a_bad_leader_value_is_an_invalid_argument(raw: bytes) -> None:
    with pytest.raises(InvalidArgumentError):
        LeaderValue.from_json(raw)


def test_a_leader_value_needs_a_name() -> None:
    with pytest.raises(InvalidArgumentError, match="name"):
        LeaderValue(name="", address="127.0.0.1:1")

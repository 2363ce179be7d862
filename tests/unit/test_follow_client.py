"""The leader-following client's decisions: what a refusal means, whom to try next,
which calls are writes, and how the console is told its posts."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import grpc
import pytest

from citypost.errors import ConfigError
from console.cli import DEFAULT_POST, POSTS_ENV, posts_to_ask
from failover.follow_client import (
    SILENT_FOR_S,
    Kind,
    Move,
    PostDirectory,
    RetryPolicy,
    SilentPostError,
    Step,
    Walk,
    decide,
    kind_of,
    leader_of,
    parse_posts,
    with_key,
)
from protos.citypost.v1 import admin_pb2, operator_pb2
from protos.metadata import LEADER_METADATA

S = grpc.StatusCode
A, B, C = "10.0.0.1:50051", "10.0.0.2:50051", "10.0.0.3:50051"


# --- decide -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(Kind))
def test_a_refusal_naming_the_leader_is_followed(kind: Kind) -> None:
    assert decide(kind, S.FAILED_PRECONDITION, B) == Step(Move.FOLLOW, B)


@pytest.mark.parametrize("kind", list(Kind))
@pytest.mark.parametrize("code", [S.UNAVAILABLE, S.DEADLINE_EXCEEDED])
def test_an_unreachable_or_silent_post_means_try_another(kind: Kind, code: S) -> None:
    assert decide(kind, code, None) == Step(Move.NEXT)


def test_a_write_refused_without_a_leader_named_asks_whether_that_post_leads() -> None:
    # An election in progress, or the leader's own refusal: the post's role tells.
    assert decide(Kind.WRITE, S.FAILED_PRECONDITION, None) == Step(Move.ASK_ROLE)
    # Metadata present but empty: the post says nobody leads, so an election.
    assert decide(Kind.WRITE, S.FAILED_PRECONDITION, "") == Step(Move.NEXT)


@pytest.mark.parametrize(
    "code", [S.INVALID_ARGUMENT, S.NOT_FOUND, S.PERMISSION_DENIED, S.INTERNAL, S.UNIMPLEMENTED]
)
@pytest.mark.parametrize("kind", list(Kind))
def test_errors_not_about_leadership_go_back_to_the_caller(kind: Kind, code: S) -> None:
    assert decide(kind, code, None) == Step(Move.GIVE_UP)
    # A leader address on any other status than FAILED_PRECONDITION is not a redirect.
    assert decide(kind, code, B) == Step(Move.GIVE_UP)


def test_a_read_refused_with_a_precondition_is_final() -> None:
    assert decide(Kind.READ, S.FAILED_PRECONDITION, None) == Step(Move.GIVE_UP)


# --- whom to try ------------------------------------------------------------------------------


def test_reads_stick_to_the_post_that_answered_last() -> None:
    posts = PostDirectory([A, B, C, A])
    assert posts.posts == [A, B, C]
    assert posts.order(Kind.READ) == [A, B, C]
    posts.answered(B, Kind.READ)
    assert posts.order(Kind.READ) == [B, A, C]
    assert posts.leader is None  # a read says nothing about who leads


def test_writes_go_to_the_leader_first_then_the_others() -> None:
    posts = PostDirectory([A, B, C])
    posts.answered(C, Kind.READ)
    assert posts.order(Kind.WRITE) == [C, A, B]
    posts.named_leader(B)
    assert posts.order(Kind.WRITE) == [B, C, A]
    posts.answered(B, Kind.WRITE)
    assert posts.leader == B and posts.order(Kind.READ) == [B, A, C]
    posts.lost(B)
    assert posts.leader is None and posts.order(Kind.WRITE) == [A, B, C]


def test_a_leader_we_were_not_told_of_is_remembered() -> None:
    posts = PostDirectory([A])
    posts.named_leader(C)
    assert posts.posts == [A, C] and posts.order(Kind.WRITE) == [C, A]


def test_no_posts_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="at least one post"):
        PostDirectory([])


def test_a_walk_follows_the_named_leader_before_the_rest() -> None:
    posts = PostDirectory([A, B, C])
    walk = Walk(posts, Kind.WRITE)
    assert walk.next() == A
    assert walk.refused(A, S.FAILED_PRECONDITION, C, "refused") is Move.FOLLOW
    assert walk.next() == C  # jumps the queue
    walk.answered(C)
    assert posts.leader == C and posts.current == C
    assert walk.failures == [(A, "refused")]


def test_two_standbys_naming_each_other_end_the_pass() -> None:
    walk = Walk(PostDirectory([A, B]), Kind.WRITE)
    assert walk.next() == A
    walk.refused(A, S.FAILED_PRECONDITION, B, "a")
    assert walk.next() == B
    walk.refused(B, S.FAILED_PRECONDITION, A, "b")
    assert walk.next() is None  # each post once per pass: the retry loop waits, then again
    assert [address for address, _ in walk.failures] == [A, B]


def test_an_unreachable_leader_is_forgotten_and_the_others_tried() -> None:
    posts = PostDirectory([A, B])
    posts.named_leader(A)
    walk = Walk(posts, Kind.WRITE)
    assert walk.next() == A
    assert walk.refused(A, S.UNAVAILABLE, None, "down") is Move.NEXT
    assert posts.leader is None
    assert walk.next() == B


def test_a_final_refusal_is_not_counted_as_a_failure_to_retry() -> None:
    walk = Walk(PostDirectory([A, B]), Kind.WRITE)
    assert walk.next() == A
    assert walk.refused(A, S.INVALID_ARGUMENT, None, "bad") is Move.GIVE_UP
    assert walk.failures == []


def test_a_post_that_refused_and_does_not_lead_is_not_tried_first_again() -> None:
    posts = PostDirectory([A, B])
    posts.named_leader(A)
    walk = Walk(posts, Kind.WRITE)
    assert walk.next() == A
    assert walk.refused(A, S.FAILED_PRECONDITION, None, "no leader") is Move.ASK_ROLE
    walk.not_leading(A)
    assert posts.leader is None and walk.next() == B


# --- which calls are writes, and their keys ----------------------------------------------------


def test_writes_are_the_requests_with_an_idempotency_key() -> None:
    assert kind_of(operator_pb2.AlarmActionRequest()) is Kind.WRITE
    assert kind_of(operator_pb2.SendCommandRequest()) is Kind.WRITE
    assert kind_of(operator_pb2.CreateTaskRequest()) is Kind.WRITE
    assert kind_of(operator_pb2.ListAlarmsRequest()) is Kind.READ
    assert kind_of(operator_pb2.GetAssetRequest()) is Kind.READ
    assert kind_of(admin_pb2.GetStatusRequest()) is Kind.READ


def test_a_write_without_a_key_gets_one_and_a_given_key_is_kept() -> None:
    request = operator_pb2.AlarmActionRequest(alarm_id="a-1")
    keyed: Any = with_key(request, Kind.WRITE)
    assert keyed.idempotency_key and keyed.alarm_id == "a-1"
    assert request.idempotency_key == ""  # the caller's message is left alone
    given = operator_pb2.AlarmActionRequest(alarm_id="a-1", idempotency_key="k-1")
    assert with_key(given, Kind.WRITE) is given
    read = operator_pb2.ListAlarmsRequest()
    assert with_key(read, Kind.READ) is read


def test_the_leader_is_read_from_the_trailing_metadata() -> None:
    def error(*pairs: tuple[str, Any]) -> Any:
        return SimpleNamespace(trailing_metadata=lambda: pairs)

    assert leader_of(error((LEADER_METADATA, B))) == B
    assert leader_of(error(("other", "x"), (LEADER_METADATA, b"10.0.0.9:1"))) == "10.0.0.9:1"
    assert leader_of(error(("other", "x"))) is None
    assert leader_of(SimpleNamespace(trailing_metadata=lambda: None)) is None
    assert leader_of(RuntimeError("no metadata at all")) is None


# --- addresses --------------------------------------------------------------------------------


def test_posts_from_comma_lists_keep_their_order_without_repeats() -> None:
    assert parse_posts([f"{A}, {B}", B, f"{C},"]) == [A, B, C]
    assert parse_posts(["[::1]:50051"]) == ["[::1]:50051"]
    assert parse_posts(["", " , "]) == []


@pytest.mark.parametrize("bad", ["nowhere", "host:", ":50051", "host:0", "host:70000", "h:p"])
def test_a_bad_address_is_refused_with_an_example(bad: str) -> None:
    with pytest.raises(ConfigError, match="give HOST:PORT"):
        parse_posts([f"{A},{bad}"])


def test_the_console_takes_flags_then_the_environment_then_the_default() -> None:
    env = {POSTS_ENV: f"{A},{B}"}
    assert posts_to_ask([C], env) == [C]
    assert posts_to_ask(None, env) == [A, B]
    assert posts_to_ask([], {}) == [DEFAULT_POST]
    assert posts_to_ask(None, {POSTS_ENV: " "}) == [DEFAULT_POST]
    with pytest.raises(ConfigError):
        posts_to_ask(None, {POSTS_ENV: "primary"})


# --- retry policy -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        {"attempts": 0},
        {"initial_wait_s": 0},
        {"initial_wait_s": 3.0},
        {"write_window_s": 0},
        {"write_max_wait_s": 0},
        {"write_probe_after_s": 0},
    ],
)
def test_a_retry_policy_that_cannot_work_is_refused(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        RetryPolicy(**options)


def test_a_write_waits_less_between_passes_than_a_read() -> None:
    """A write lands soon after a takeover: its waits stay short however long it tried."""
    policy = RetryPolicy(initial_wait_s=0.25, max_wait_s=2.0, write_max_wait_s=0.25)
    late = SimpleNamespace(attempt_number=8, outcome=None, idle_for=0.0)  # tenacity's state
    writes = [policy.wait(Kind.WRITE)(late) for _ in range(500)]  # type: ignore[arg-type]
    reads = [policy.wait(Kind.READ)(late) for _ in range(500)]  # type: ignore[arg-type]
    assert min(writes) >= 0 and max(writes) <= 0.25
    assert max(reads) > 0.25 and max(reads) <= 2.0


# --- a post that went silent ------------------------------------------------------------------


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_silent_post_is_left_out_of_writes_until_it_answers_or_a_while_passed() -> None:
    clock = _Clock()
    posts = PostDirectory([A, B], clock=clock)
    posts.answered(A, Kind.WRITE)
    walk = Walk(posts, Kind.WRITE)
    assert walk.next() == A
    assert walk.refused(A, S.UNAVAILABLE, None, SilentPostError(A, 2.0)) is Move.NEXT
    assert posts.leader is None and posts.is_silent(A)
    assert posts.order(Kind.WRITE) == [B]
    assert posts.order(Kind.READ) == [A, B]  # reads may still ask it
    clock.now += SILENT_FOR_S
    assert posts.order(Kind.WRITE) == [A, B]  # a while later it is tried again
    posts.went_silent(A)
    posts.answered(A, Kind.READ)  # or as soon as it answers anything
    assert not posts.is_silent(A)


def test_a_refusal_naming_a_silent_post_as_leader_is_not_followed() -> None:
    posts = PostDirectory([A, B])
    posts.went_silent(A)
    walk = Walk(posts, Kind.WRITE)
    assert walk.next() == B
    # The standby still names the frozen leader: an election is under way, not a redirect.
    assert walk.refused(B, S.FAILED_PRECONDITION, A, "refused") is Move.NEXT
    assert walk.next() is None and posts.leader is None


def test_when_every_post_went_silent_writes_try_them_all_the_same() -> None:
    posts = PostDirectory([A, B])
    posts.went_silent(A)
    posts.went_silent(B)
    assert posts.order(Kind.WRITE) == [A, B]


def test_an_unreachable_post_is_not_silent() -> None:
    posts = PostDirectory([A, B])
    walk = Walk(posts, Kind.WRITE)
    assert walk.next() == A
    walk.refused(A, S.UNAVAILABLE, None, "connection refused")
    assert not posts.is_silent(A)

"""`citypost failover`: arguments, the status table, and the switchover decision (pure)."""

from __future__ import annotations

import argparse
import json

import grpc
import pytest

from console import failover_cli
from protos.citypost.v1 import admin_pb2

pytestmark = pytest.mark.unit

PRIMARY = "127.0.0.1:50051"
BACKUP = "127.0.0.1:50052"
LEADER = admin_pb2.POST_ROLE_LEADER
STANDBY = admin_pb2.POST_ROLE_STANDBY


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="citypost")
    failover_cli.add_failover_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["failover", *argv])


def status(
    post: str,
    role: admin_pb2.PostRole.ValueType,
    *,
    epoch: int = 7,
    leader: str = "primary",
    action: str = "",
    lease_ms: int | None = 1500,
    lag: int | None = None,
) -> admin_pb2.FailoverStatus:
    message = admin_pb2.FailoverStatus(
        post=post,
        role=role,
        action=action or ("lead" if role == LEADER else "stand_by"),
        epoch=epoch,
        leader_name=leader,
        leader_address={"primary": PRIMARY, "backup": BACKUP}.get(leader, ""),
    )
    if lease_ms is not None:
        message.lease_remaining_ms = lease_ms
    if lag is not None:
        message.store_revision = 100
        message.applied_revision = 100 - lag
        message.lag_revisions = lag
    return message


def two_posts(**backup: object) -> list[failover_cli.PostView]:
    return [
        failover_cli.PostView(PRIMARY, status("primary", LEADER)),
        failover_cli.PostView(BACKUP, status("backup", STANDBY, **backup)),  # type: ignore[arg-type]
    ]


# --- arguments -----------------------------------------------------------------------------


def test_status_takes_every_post_and_json() -> None:
    args = parse("status", "--post", PRIMARY, "--post", BACKUP, "--json")
    assert args.posts == [PRIMARY, BACKUP]
    assert args.json and args.timeout == failover_cli.DEFAULT_TIMEOUT_S


def test_without_post_the_demos_two_posts_are_asked() -> None:
    args = parse("status")
    assert args.posts is None
    assert failover_cli.posts_to_ask(args) == ["127.0.0.1:50051", "127.0.0.1:50052"]
    given = parse("status", "--post", BACKUP, "--post", BACKUP)
    assert failover_cli.posts_to_ask(given) == [BACKUP]  # no defaults added, repeats dropped


def test_switchover_defaults() -> None:
    args = parse("switchover", "--to", "backup", "--post", PRIMARY)
    assert (args.to, args.posts) == ("backup", [PRIMARY])
    assert args.hold_off == failover_cli.DEFAULT_HOLD_OFF_S
    assert args.timeout == failover_cli.DEFAULT_TIMEOUT_S


@pytest.mark.parametrize(
    "argv",
    [
        ("status", "--post", "localhost"),  # no port
        ("status", "--post", "127.0.0.1:70000"),
        ("status", "--post", PRIMARY, "--timeout", "0"),
        ("status", "--post", PRIMARY, "--timeout", "nan"),
        ("switchover", "--post", PRIMARY),  # no --to
        ("switchover", "--to", "backup", "--post", PRIMARY, "--hold-off", "-1"),
        ("switchover", "--to", "backup", "--post", PRIMARY, "--hold-off", "61"),
        ("switchover", "--to", "backup", "--post", PRIMARY, "--hold-off", "soon"),
    ],
)
def test_bad_arguments_exit_2(argv: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        parse(*argv)
    assert exited.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_help_documents_the_exit_statuses(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse("switchover", "--help")
    out = capsys.readouterr().out
    assert "exit status" in out and "3 the leader resigned but NAME did not lead" in out


# --- the table -----------------------------------------------------------------------------


def test_rows_show_role_epoch_leader_lease_and_lag() -> None:
    views = [
        failover_cli.PostView(PRIMARY, status("primary", LEADER, lease_ms=1234, lag=0)),
        failover_cli.PostView(BACKUP, status("backup", STANDBY, lease_ms=None, lag=3)),
        failover_cli.PostView("127.0.0.1:50053", error="no answer: cannot connect"),
    ]
    table = failover_cli.status_table(views)
    assert table.rows[0] == (
        "primary",
        PRIMARY,
        "leader",
        "7",
        f"primary ({PRIMARY})",
        "1.23 s",
        "0 rev",
        "",
    )
    assert table.rows[1][2:] == ("standby", "7", f"primary ({PRIMARY})", "-", "3 rev", "")
    assert table.rows[2] == (
        "?",
        "127.0.0.1:50053",
        "unreachable",
        "-",
        "-",
        "-",
        "-",
        "no answer: cannot connect",
    )
    assert len({len(row) for row in table.rows} | {len(table.columns)}) == 1
    assert table.footer == "primary leads, epoch 7"


def test_unknowns_are_shown_as_such() -> None:
    alone = status("backup", STANDBY, action="campaign", epoch=0, leader="", lease_ms=None)
    alone.store_error = "the control state did not answer within 2 s"
    row = failover_cli.status_row(failover_cli.PostView(BACKUP, alone))
    assert row[2:] == (
        "standby (campaign)",
        "-",
        "nobody",
        "-",
        "unknown",
        "the control state did not answer within 2 s",
    )


@pytest.mark.parametrize(
    ("views", "words"),
    [
        ([], "no post answered"),
        ([failover_cli.PostView(PRIMARY, error="x")], "no post answered"),
        (
            [
                failover_cli.PostView(PRIMARY, status("primary", LEADER, epoch=7)),
                failover_cli.PostView(BACKUP, status("backup", LEADER, epoch=9, leader="backup")),
            ],
            "more than one post says it leads: backup (epoch 9), primary (epoch 7)",
        ),
        (
            [
                failover_cli.PostView(PRIMARY, status("primary", STANDBY, epoch=7)),
                failover_cli.PostView(BACKUP, status("backup", LEADER, epoch=9, leader="backup")),
            ],
            "do not see the same leader yet: backup at epoch 9, primary at epoch 7",
        ),
        (
            [failover_cli.PostView(BACKUP, status("backup", STANDBY, epoch=0, leader=""))],
            "nobody leads now",
        ),
    ],
)
def test_the_footer_says_whether_the_posts_agree(
    views: list[failover_cli.PostView], words: str
) -> None:
    assert words in failover_cli.agreement(views)


def test_json_has_one_object_per_post() -> None:
    views = [
        failover_cli.PostView(PRIMARY, status("primary", LEADER)),
        failover_cli.PostView(BACKUP, error="down"),
    ]
    listed = json.loads(failover_cli.status_json(views))
    assert listed[0]["address"] == PRIMARY
    assert listed[0]["status"]["role"] == "POST_ROLE_LEADER"
    assert listed[0]["status"]["leaseRemainingMs"] == "1500"  # int64 as a string in JSON
    assert listed[1] == {"address": BACKUP, "error": "down"}


class _Failed(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


@pytest.mark.parametrize(
    ("code", "details", "line"),
    [
        (
            grpc.StatusCode.UNAVAILABLE,
            "failed to connect to all addresses; last error: ... Connection refused",
            "no answer: cannot connect (connection refused)",
        ),
        (grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded", "no answer in time"),
        (grpc.StatusCode.UNAVAILABLE, "etcd is out of reach", "UNAVAILABLE: etcd is out of reach"),
        (
            grpc.StatusCode.FAILED_PRECONDITION,
            "post primary runs alone",
            "FAILED_PRECONDITION: post primary runs alone",
        ),
    ],
)
def test_a_failed_call_is_one_line(code: grpc.StatusCode, details: str, line: str) -> None:
    assert line in failover_cli.describe(_Failed(code, details))


# --- the switchover decision ---------------------------------------------------------------


def test_handover_from_the_leader_to_a_ready_standby() -> None:
    plan = failover_cli.plan_switchover(two_posts(), "backup")
    assert isinstance(plan, failover_cli.Handover)
    assert (plan.leader.address, plan.target.address, plan.from_epoch) == (PRIMARY, BACKUP, 7)


def test_nothing_to_do_when_the_target_leads() -> None:
    plan = failover_cli.plan_switchover(two_posts(), "primary")
    assert isinstance(plan, failover_cli.AlreadyLeads) and plan.target.address == PRIMARY


@pytest.mark.parametrize(
    ("views", "target", "words"),
    [
        (two_posts(), "tertiary", "no post named 'tertiary' answered"),
        (
            [
                failover_cli.PostView(PRIMARY, status("primary", LEADER)),
                failover_cli.PostView(BACKUP, error="down"),
            ],
            "backup",
            f"no answer from {BACKUP}",
        ),
        (
            [failover_cli.PostView(BACKUP, status("backup", STANDBY))],
            "backup",
            f"backup sees primary at {PRIMARY}: add it with --post",
        ),
        (two_posts(action="campaign"), "backup", "not a ready standby (standby (campaign))"),
        (two_posts(epoch=5), "backup", "does not see the leader yet"),
        (two_posts(lease_ms=None), "backup", "holds no lease"),
    ],
)
def test_refusals_say_why(views: list[failover_cli.PostView], target: str, words: str) -> None:
    plan = failover_cli.plan_switchover(views, target)
    assert isinstance(plan, failover_cli.Refuse)
    assert words in plan.reason


def test_of_two_posts_claiming_to_lead_the_newer_epoch_is_asked() -> None:
    views = [
        failover_cli.PostView(PRIMARY, status("primary", LEADER, epoch=7)),
        failover_cli.PostView(
            "127.0.0.1:50053", status("tertiary", LEADER, epoch=9, leader="tertiary")
        ),
        failover_cli.PostView(BACKUP, status("backup", STANDBY, epoch=9, leader="tertiary")),
    ]
    plan = failover_cli.plan_switchover(views, "backup")
    assert isinstance(plan, failover_cli.Handover) and plan.leader.name == "tertiary"


def test_the_handover_is_done_only_under_a_newer_epoch() -> None:
    assert failover_cli.took_over(status("backup", LEADER, epoch=9, leader="backup"), "backup", 7)
    assert not failover_cli.took_over(
        status("backup", LEADER, epoch=7, leader="backup"), "backup", 7
    )
    assert not failover_cli.took_over(status("backup", STANDBY, epoch=9), "backup", 7)
    assert not failover_cli.took_over(status("primary", LEADER, epoch=9), "backup", 7)


def test_a_standbys_lag_is_measured_against_what_the_leader_applied() -> None:
    leader = admin_pb2.FailoverStatus(
        post="primary", role=LEADER, epoch=9, applied_revision=120, lag_revisions=2
    )
    standby = admin_pb2.FailoverStatus(
        post="backup", role=STANDBY, epoch=9, applied_revision=115, lag_revisions=7
    )
    rows = failover_cli.status_table(
        [failover_cli.PostView(PRIMARY, leader), failover_cli.PostView(BACKUP, standby)]
    ).rows
    lag = {row[0]: row[6] for row in rows}
    # Not the store's count, which includes leader-key writes nobody applies.
    assert lag == {"primary": "2 rev", "backup": "5 rev"}
    alone = failover_cli.status_table([failover_cli.PostView(BACKUP, standby)]).rows
    assert alone[0][6] == "7 rev"  # without the leader's answer: the store's figure

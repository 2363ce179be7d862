"""`citypost failover ...`: who leads, and a planned handover to the standby.

`add_failover_parser` hangs `failover status` and `failover switchover` under
the `citypost` parser. Both ask every post given with --post for its
PostAdmin.GetFailoverStatus; a post that does not answer is one line of the
table, not a traceback.

switchover --to NAME: NAME must answer as a standby that sees the current
leader and holds a lease (so it can campaign at once). The leader is asked to
Resign with a hold-off (it does not campaign again for that long), so the
standby's campaign wins; then NAME's status is polled until it leads with a
higher epoch. The time shown runs from the Resign call to that first status.

Decisions (what the table shows, whom to ask, whether the handover is done)
are pure functions over the status messages; the gRPC calls sit in `AdminCalls`.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from console import workstation
from console.render import TableData, rich_table, to_json
from protos.citypost.v1 import admin_pb2

if TYPE_CHECKING:
    import grpc

PROG = "citypost failover"
# The demo's posts: primary on post.grpc_port (50051 by default), backup on the next
# port (cluster/system.py, `post_configs`).
DEFAULT_POSTS = ("127.0.0.1:50051", "127.0.0.1:50052")
DEFAULT_TIMEOUT_S = 10.0
# Long enough for the standby's campaign (milliseconds), short enough that the old
# leader takes the key back soon if the standby cannot. The election keeps the
# hold-off even after the standby took over, so a switchover back within it waits.
DEFAULT_HOLD_OFF_S = 2.0
MAX_HOLD_OFF_S = 60.0  # the post refuses more (api.admin.MAX_HOLD_OFF_MS)
CALL_TIMEOUT_S = 2.0
POLL_INTERVAL_S = 0.005
RESIGN_ATTEMPTS = 3

# Exit statuses (also in --help).
EXIT_OK = 0
EXIT_REFUSED = 1  # status: some post did not answer; switchover: refused or not possible now
EXIT_UNREACHABLE = 2  # no post answered (argparse also exits 2 on bad input)
EXIT_TIMEOUT = 3  # switchover: the leader resigned but NAME did not lead in time

EXIT_CODES_HELP = """exit status:
  status:      0 every post answered; 1 some post did not (its line says why);
               2 no post answered, or bad arguments
  switchover:  0 NAME leads (it did already, or the handover finished);
               1 refused: no post named NAME answered, nobody leads, NAME is not
                 a ready standby, or the leader refused to resign;
               2 no post answered, or bad arguments;
               3 the leader resigned but NAME did not lead within --timeout
"""

_ROLE_WORDS = {admin_pb2.POST_ROLE_LEADER: "leader", admin_pb2.POST_ROLE_STANDBY: "standby"}
# Actions that go without saying for a role; others (campaign, demote) are shown.
_USUAL_ACTIONS = {"lead", "stand_by"}


# --- what each post said -------------------------------------------------------------------


@dataclass(frozen=True)
class PostView:
    """One post's answer: its status, or why there is none."""

    address: str
    status: admin_pb2.FailoverStatus | None = None
    error: str = ""

    @property
    def name(self) -> str:
        return self.status.post if self.status is not None else ""

    @property
    def leads(self) -> bool:
        return self.status is not None and self.status.role == admin_pb2.POST_ROLE_LEADER


def role_word(status: admin_pb2.FailoverStatus) -> str:
    word = _ROLE_WORDS.get(status.role, "unknown")
    if status.action and status.action not in _USUAL_ACTIONS:
        return f"{word} ({status.action})"
    return word


def lease_text(status: admin_pb2.FailoverStatus) -> str:
    if not status.HasField("lease_remaining_ms"):
        return "-"
    return f"{status.lease_remaining_ms / 1000:.2f} s"


def lag_text(status: admin_pb2.FailoverStatus, leader_applied: int | None = None) -> str:
    """A standby's lag behind the leader's own applied revision when the leader answered
    (the store's revision also counts leader-key writes, which no post applies)."""
    if (
        leader_applied is not None
        and status.role != admin_pb2.POST_ROLE_LEADER
        and status.HasField("applied_revision")
    ):
        return f"{max(0, leader_applied - status.applied_revision)} rev"
    if not status.HasField("lag_revisions"):
        return "unknown"
    return f"{status.lag_revisions} rev"


def leader_applied(views: Sequence[PostView]) -> int | None:
    for view in views:
        status = view.status
        if (
            status is not None
            and status.role == admin_pb2.POST_ROLE_LEADER
            and status.HasField("applied_revision")
        ):
            return status.applied_revision
    return None


def leader_text(status: admin_pb2.FailoverStatus) -> str:
    if not status.leader_name:
        return "nobody"
    if status.leader_address:
        return f"{status.leader_name} ({status.leader_address})"
    return status.leader_name


def status_row(view: PostView, leader_revision: int | None = None) -> tuple[str, ...]:
    status = view.status
    if status is None:
        return ("?", view.address, "unreachable", "-", "-", "-", "-", view.error)
    return (
        status.post,
        view.address,
        role_word(status),
        str(status.epoch) if status.epoch else "-",
        leader_text(status),
        lease_text(status),
        lag_text(status, leader_revision),
        status.store_error,
    )


def agreement(views: Sequence[PostView]) -> str:
    """One line on who leads, or on how the posts disagree (a handover in flight, a split)."""
    answered = [v.status for v in views if v.status is not None]
    if not answered:
        return "no post answered"
    claims = sorted({(s.post, s.epoch) for s in answered if s.role == admin_pb2.POST_ROLE_LEADER})
    seen = sorted({(s.leader_name, s.epoch) for s in answered})
    if len(claims) > 1:
        both = ", ".join(f"{name} (epoch {epoch})" for name, epoch in claims)
        return f"more than one post says it leads: {both}"
    if len(seen) > 1:
        views_text = ", ".join(f"{name or 'nobody'} at epoch {epoch}" for name, epoch in seen)
        return f"the posts do not see the same leader yet: {views_text}"
    name, epoch = seen[0]
    if not name:
        return "nobody leads now (an election is under way, or etcd is out of reach)"
    return f"{name} leads, epoch {epoch}"


def status_table(views: Sequence[PostView]) -> TableData:
    return TableData(
        title="failover",
        columns=("post", "address", "role", "epoch", "leader", "lease left", "lag", "note"),
        rows=[status_row(view, leader_applied(views)) for view in views],
        footer=agreement(views),
    )


def status_json(views: Sequence[PostView]) -> str:
    items: list[dict[str, Any]] = []
    for view in views:
        if view.status is not None:
            items.append({"address": view.address, "status": to_json(view.status)})
        else:
            items.append({"address": view.address, "error": view.error})
    return json.dumps(items, indent=2, ensure_ascii=False)


# --- the switchover decision ---------------------------------------------------------------


@dataclass(frozen=True)
class AlreadyLeads:
    target: PostView


@dataclass(frozen=True)
class Refuse:
    reason: str


@dataclass(frozen=True)
class Handover:
    leader: PostView
    target: PostView

    @property
    def from_epoch(self) -> int:
        assert self.leader.status is not None
        return self.leader.status.epoch


Plan = AlreadyLeads | Refuse | Handover


def _named(views: Sequence[PostView]) -> str:
    answered = ", ".join(f"{v.name} at {v.address}" for v in views if v.status is not None)
    silent = ", ".join(v.address for v in views if v.status is None)
    return f"answered: {answered or 'none'}" + (f"; no answer from {silent}" if silent else "")


def plan_switchover(views: Sequence[PostView], target_name: str) -> Plan:
    """Whom to ask to resign so `target_name` leads, or why not now."""
    targets = [v for v in views if v.name == target_name]
    if not targets:
        return Refuse(
            f"no post named {target_name!r} answered ({_named(views)}); "
            "give its address with --post, or wait until it answers"
        )
    target = targets[0]
    assert target.status is not None
    if target.leads:
        return AlreadyLeads(target)
    leaders = sorted((v for v in views if v.leads), key=lambda v: v.status.epoch if v.status else 0)
    if not leaders:
        seen = target.status.leader_name
        hint = (
            f"{target_name} sees {seen} at {target.status.leader_address}: add it with --post"
            if seen
            else "an election is under way, or etcd is out of reach; see `citypost failover status`"
        )
        return Refuse(f"no post among those that answered leads: {hint}")
    leader = leaders[-1]
    assert leader.status is not None
    if target.status.role != admin_pb2.POST_ROLE_STANDBY or target.status.action != "stand_by":
        return Refuse(
            f"{target_name} is not a ready standby ({role_word(target.status)}); try again shortly"
        )
    if target.status.epoch != leader.status.epoch or target.status.leader_name != leader.name:
        return Refuse(
            f"{target_name} does not see the leader yet ({leader_text(target.status)}, "
            f"epoch {target.status.epoch}; {leader.name} leads at epoch {leader.status.epoch}); "
            "try again shortly"
        )
    if not target.status.HasField("lease_remaining_ms"):
        return Refuse(
            f"{target_name} holds no lease, so it could not campaign (is etcd reachable from "
            "it?); nothing was changed"
        )
    return Handover(leader=leader, target=target)


def took_over(status: admin_pb2.FailoverStatus, target_name: str, from_epoch: int) -> bool:
    """The target's own status shows it leading under a newer epoch than the one resigned."""
    return (
        status.post == target_name
        and status.role == admin_pb2.POST_ROLE_LEADER
        and status.epoch > from_epoch
    )


# --- gRPC ----------------------------------------------------------------------------------


def _code_name(error: grpc.RpcError) -> str:
    code = getattr(error, "code", None)
    value = code() if callable(code) else None
    return str(getattr(value, "name", "UNKNOWN"))


def _details(error: grpc.RpcError) -> str:
    details = getattr(error, "details", None)
    return str((details() if callable(details) else None) or "")


def describe(error: grpc.RpcError) -> str:
    """One line for a failed call: unreachable, or the post's own status and message."""
    code, details = _code_name(error), _details(error)
    if code == "DEADLINE_EXCEEDED" and details in ("", "Deadline Exceeded"):
        return "no answer in time (DEADLINE_EXCEEDED)"
    if code == "UNAVAILABLE" and (not details or details.startswith("failed to connect")):
        # gRPC's own transport message is long and says nothing more to an operator.
        refused = " (connection refused)" if "refused" in details.lower() else ""
        return f"no answer: cannot connect{refused}"
    return f"{code}: {details or '(no message)'}"


class AdminCalls:
    """PostAdmin calls to several posts, one channel each; close() when done."""

    def __init__(
        self,
        call_timeout_s: float = CALL_TIMEOUT_S,
        *,
        channel_factory: Callable[[str], grpc.Channel] | None = None,
        token: Callable[[], str] | None = None,
    ) -> None:
        self._timeout_s = call_timeout_s
        self._token = token
        self._channels: dict[str, grpc.Channel] = {}
        self._channel_factory = channel_factory

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        token = self._token() if self._token is not None else ""
        return (("authorization", f"Bearer {token}"),) if token else ()

    def _stub(self, address: str) -> Any:
        import grpc

        from protos.citypost.v1 import admin_pb2_grpc

        channel = self._channels.get(address)
        if channel is None:
            factory = self._channel_factory or grpc.insecure_channel
            channel = factory(address)
            self._channels[address] = channel
        return admin_pb2_grpc.PostAdminStub(channel)

    def statuses(self, addresses: Sequence[str]) -> list[PostView]:
        """Every post's status, asked at once; each view holds the answer or the error."""
        import grpc

        request = admin_pb2.GetFailoverStatusRequest()
        futures = [
            (
                a,
                self._stub(a).GetFailoverStatus.future(
                    request, timeout=self._timeout_s, metadata=self._metadata()
                ),
            )
            for a in addresses
        ]
        views = []
        for address, future in futures:
            try:
                views.append(PostView(address, status=future.result()))
            except grpc.RpcError as error:
                views.append(PostView(address, error=describe(error)))
        return views

    def status(self, address: str) -> PostView:
        return self.statuses([address])[0]

    def resign(self, address: str, *, hold_off_ms: int) -> admin_pb2.ResignResponse:
        """Resign, retried with the same idempotency key while the answer may have been lost."""
        import grpc

        request = admin_pb2.ResignRequest(
            idempotency_key=str(uuid.uuid4()), hold_off_ms=hold_off_ms
        )
        for attempt in range(1, RESIGN_ATTEMPTS + 1):
            try:
                reply: admin_pb2.ResignResponse = self._stub(address).Resign(
                    request, timeout=self._timeout_s, metadata=self._metadata()
                )
                return reply
            except grpc.RpcError as error:
                if attempt == RESIGN_ATTEMPTS or _code_name(error) not in (
                    "UNAVAILABLE",
                    "DEADLINE_EXCEEDED",
                ):
                    raise
                time.sleep(0.05 * attempt)
        raise AssertionError("unreachable")  # the loop returns or raises

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()
        self._channels.clear()

    def __enter__(self) -> AdminCalls:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- handlers ------------------------------------------------------------------------------


def _say(text: str) -> None:
    print(text, flush=True)


def _complain(text: str) -> None:
    print(f"{PROG}: {text}", file=sys.stderr, flush=True)


def posts_to_ask(args: argparse.Namespace) -> list[str]:
    # append + default would add to the defaults: they apply only when no --post is given.
    return list(dict.fromkeys(args.posts or DEFAULT_POSTS))


def _calls(args: argparse.Namespace) -> AdminCalls:
    """Calls as this workstation, with the logged-in operator's token if any (a
    switchover needs failover.operate: the room supervisor)."""
    from console.session import token_source

    factory = workstation.from_environment(args)
    token = token_source(args, factory, posts_to_ask(args))
    return AdminCalls(min(args.timeout, CALL_TIMEOUT_S), channel_factory=factory, token=token)


def _cmd_status(args: argparse.Namespace) -> int:
    with _calls(args) as calls:
        views = calls.statuses(posts_to_ask(args))
    if args.json:
        _say(status_json(views))
    else:
        from rich.console import Console

        Console(highlight=False).print(rich_table(status_table(views)))
    answered = sum(v.status is not None for v in views)
    if answered == 0:
        return EXIT_UNREACHABLE
    return EXIT_OK if answered == len(views) else EXIT_REFUSED


def _wait_for(
    calls: AdminCalls, plan: Handover, deadline: float, clock: Callable[[], float]
) -> tuple[admin_pb2.FailoverStatus | None, PostView]:
    """Poll the target until it leads under a newer epoch, or the deadline; (status, last view)."""
    target = plan.target
    last = target
    while clock() < deadline:
        last = calls.status(target.address)
        if last.status is not None and took_over(last.status, target.name, plan.from_epoch):
            return last.status, last
        time.sleep(POLL_INTERVAL_S)
    return None, last


def _cmd_switchover(args: argparse.Namespace) -> int:
    import grpc

    clock = time.monotonic
    with _calls(args) as calls:
        views = calls.statuses(posts_to_ask(args))
        if not any(v.status is not None for v in views):
            for view in views:
                _complain(f"{view.address}: {view.error}")
            return EXIT_UNREACHABLE
        plan = plan_switchover(views, args.to)
        if isinstance(plan, Refuse):
            _complain(plan.reason)
            return EXIT_REFUSED
        if isinstance(plan, AlreadyLeads):
            assert plan.target.status is not None
            _say(f"{args.to} leads already (epoch {plan.target.status.epoch}): nothing to do")
            return EXIT_OK
        leader = plan.leader
        _say(
            f"asking {leader.name} ({leader.address}, epoch {plan.from_epoch}) to resign "
            f"for {args.to}"
        )
        started = clock()
        try:
            calls.resign(leader.address, hold_off_ms=round(args.hold_off * 1000))
        except grpc.RpcError as error:
            _complain(f"{leader.name} did not resign: {describe(error)}")
            return EXIT_REFUSED
        status, last = _wait_for(calls, plan, started + args.timeout, clock)
        took_ms = (clock() - started) * 1000
    if status is None:
        now = (
            f"last seen: {leader_text(last.status)} at epoch {last.status.epoch}"
            if last.status is not None
            else f"{args.to} last answered: {last.error}"
        )
        _complain(
            f"{leader.name} resigned, but {args.to} did not lead within {args.timeout:g} s "
            f"({now}); see `citypost failover status`"
        )
        return EXIT_TIMEOUT
    _say(
        f"{args.to} leads, epoch {status.epoch} (was {leader.name}, epoch {plan.from_epoch}); "
        f"handover took {took_ms:.0f} ms"
    )
    return EXIT_OK


# --- the parser ----------------------------------------------------------------------------


def _address(text: str) -> str:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r}: give HOST:PORT, e.g. 127.0.0.1:50051")
    return text


def _seconds(low: float, high: float) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not (math.isfinite(value) and low < value <= high):
            raise argparse.ArgumentTypeError(f"{text!r}: must be > {low:g} and <= {high:g}")
        return value

    parse.__name__ = "seconds"  # argparse names the type in its messages
    return parse


def _post_flags(parser: argparse.ArgumentParser) -> None:
    workstation.add_workstation_flags(parser, session=True)
    parser.add_argument(
        "--post",
        dest="posts",
        action="append",
        type=_address,
        metavar="HOST:PORT",
        help=(
            "a post's gRPC address; repeat it for every post "
            f"(default: the demo's primary and backup, {' and '.join(DEFAULT_POSTS)})"
        ),
    )
    parser.add_argument(
        "--timeout",
        type=_seconds(0, 3600),
        default=DEFAULT_TIMEOUT_S,
        metavar="S",
        help=f"give up after S seconds (default {DEFAULT_TIMEOUT_S:g})",
    )


def add_failover_parser(commands: argparse._SubParsersAction) -> None:
    """Add `failover status` and `failover switchover` to the `citypost` parser's sub-commands."""
    failover = commands.add_parser(
        "failover",
        help="who leads, the epoch, the lease, the standby's lag; planned switchover",
        description="Leadership of the posts: status, and a planned handover to the standby.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = failover.add_subparsers(dest="failover_command", required=True, metavar="COMMAND")

    status = sub.add_parser(
        "status",
        help="each post's role, epoch, leader, lease left and lag",
        description=(
            "Ask every post for its view of leadership: role, epoch, the leader it sees, how "
            "long its lease is trusted still, and how many control-state revisions it is "
            "behind the store."
        ),
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _post_flags(status)
    status.add_argument("--json", action="store_true", help="print JSON: one object per post")
    status.set_defaults(handler=_cmd_status)

    switchover = sub.add_parser(
        "switchover",
        help="hand leadership over to a standby on purpose",
        description=(
            "Find the leader among the posts, ask it to resign and hold off, and wait until "
            "the post named by --to leads under a new epoch; prints how long that took."
        ),
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    switchover.add_argument(
        "--to", required=True, metavar="NAME", help="the standby that should lead, e.g. backup"
    )
    _post_flags(switchover)
    switchover.add_argument(
        "--hold-off",
        type=_seconds(0, MAX_HOLD_OFF_S),
        default=DEFAULT_HOLD_OFF_S,
        metavar="S",
        help=(
            "the old leader does not campaign for S seconds, so the standby wins "
            f"(default {DEFAULT_HOLD_OFF_S:g}, at most {MAX_HOLD_OFF_S:g})"
        ),
    )
    switchover.set_defaults(handler=_cmd_switchover)


def run(argv: Sequence[str]) -> int:
    """Parse `argv` (what follows `citypost failover`) and run it: for tests and embedding."""
    parser = argparse.ArgumentParser(prog="citypost")
    add_failover_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["failover", *argv])
    code: int = args.handler(args)
    return code

"""`citypost console ...`: the operator's command line over the post's gRPC APIs.

`add_console_parser` hangs the `console` command and its sub-commands under
the `citypost` parser; each sub-command's handler returns the exit status:
0 done, 1 the post refused or failed the call (its status and message are
printed), 2 no post answers (or bad input, from argparse).

The console is told every post (`--post A --post B`, `--post A,B`, or
`CITYPOST_POSTS=A,B`): reads go to any post, writes follow the leader
through a failover (console/client.py).
"""

from __future__ import annotations

import argparse
import getpass
import math
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

from google.protobuf.message import Message

from citypost.errors import CitypostError, ConfigError, UnauthenticatedError
from console import render, workstation
from console.names import (
    ALARM_STATE,
    ASSET_CLASS,
    COMMAND_STATUS,
    DEPARTMENT,
    INCIDENT_KIND,
    SEVERITY,
    TASK_STATUS,
    Vocabulary,
)
from protos.citypost.v1 import (
    admin_pb2,
    auth_pb2,
    command_pb2,
    control_state_pb2,
    operations_pb2,
    operator_pb2,
    telemetry_pb2,
)

if TYPE_CHECKING:
    from rich.console import Console

    from console.client import PostClient
DEFAULT_POST = "127.0.0.1:50051"
POSTS_ENV = "CITYPOST_POSTS"  # every post, comma separated, when --post is not given
DEFAULT_TIMEOUT_S = 10.0
PROG = "citypost console"
AUDIT_OUTCOME = Vocabulary(control_state_pb2.AuditOutcome.DESCRIPTOR, prefix="AUDIT_")
AUDIT_PAGE = 50  # entries a page of `console audit`, unless --page-size
# `console alarms --view`: which alarms the list shows.
ALARM_VIEWS: Mapping[str, operator_pb2.AlarmView.ValueType] = {
    "annunciated": operator_pb2.ALARM_VIEW_UNSPECIFIED,  # neither shelved nor suppressed
    "shelved": operator_pb2.ALARM_VIEW_SHELVED,
    "suppressed": operator_pb2.ALARM_VIEW_SUPPRESSED,
    "all": operator_pb2.ALARM_VIEW_ALL,
}


def _cmd_login(args: argparse.Namespace) -> int:
    """Ask for the password (and a one-time code if the account has one), log in at the
    first post that answers, keep the session for the next commands."""
    from console.session import keep_session, login

    posts = posts_to_ask(args.posts, os.environ)
    factory = workstation.from_environment(args)
    if args.oidc:
        from console.oidc_login import cmd_oidc_login

        return cmd_oidc_login(args, factory, posts)
    try:
        user = args.user or input("user: ").strip()
        # From the terminal, else the first line of stdin (scripts); never a flag, which
        # would stay in the shell's history and the process list.
        password = getpass.getpass("password: ")
    except EOFError:
        print(f"{PROG}: no password given", file=sys.stderr)
        return 2
    try:
        try:
            session = login(factory, posts, user, password, args.otp)
        except UnauthenticatedError as error:
            if "second factor" not in error.message or args.otp:
                raise
            session = login(factory, posts, user, password, input("one-time code: ").strip())
    except CitypostError as error:
        print(f"{PROG}: {error.message}", file=sys.stderr)
        return 1
    return keep_session(args, session)


def _cmd_logout(args: argparse.Namespace) -> int:
    """End the session at the posts (its tokens stop working at both), then forget it."""
    from console.session import end_session

    return end_session(
        args, workstation.from_environment(args), posts_to_ask(args.posts, os.environ)
    )


# --- argument types -------------------------------------------------------------------------


def _addresses(text: str) -> list[str]:
    """`--post HOST:PORT`, or several at once: `--post HOST:PORT,HOST:PORT`."""
    from failover.follow_client import parse_posts  # loads gRPC: only for console commands

    try:
        posts = parse_posts([text])
    except ConfigError as error:
        raise argparse.ArgumentTypeError(error.message) from None
    if not posts:
        raise argparse.ArgumentTypeError(f"{text!r}: give HOST:PORT, e.g. {DEFAULT_POST}")
    return posts


def posts_to_ask(flags: Sequence[str] | None, environ: Mapping[str, str]) -> list[str]:
    """The posts from --post, else from $CITYPOST_POSTS (a comma list), else the default."""
    from failover.follow_client import parse_posts

    if flags:
        return list(dict.fromkeys(flags))
    return parse_posts([environ.get(POSTS_ENV, "")]) or [DEFAULT_POST]


def _positive(kind: Callable[[str], float]) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not (math.isfinite(value) and value > 0):
            raise argparse.ArgumentTypeError(f"{text!r}: must be positive")
        return value

    return parse


def _word(vocabulary: Vocabulary, *, many: bool = False) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            return vocabulary.parse_many(text) if many else vocabulary.parse(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    parse.__name__ = vocabulary.enum.name  # argparse names the type in its messages
    return parse


# --- output ---------------------------------------------------------------------------------


@dataclass
class Output:
    """Tables for people, or the protobuf JSON mapping with --json."""

    json: bool
    console: Console

    def one(self, message: Message, title: str, pairs: render.Pairs) -> None:
        if self.json:
            print(render.json_document(message), flush=True)
        else:
            self.console.print(render.rich_detail(title, pairs))

    def many(self, messages: Sequence[Message], table: render.TableData) -> None:
        if self.json:
            print(render.json_document(messages), flush=True)
        elif not table.rows:
            self.console.print(table.footer, markup=False)
        else:
            self.console.print(render.rich_table(table))

    def event(self, event: operator_pb2.Event) -> None:
        if self.json:
            print(render.json_line(event), flush=True)
        else:
            self.console.print(render.event_line(event), markup=False, highlight=False)


Handler = Callable[[argparse.Namespace, "PostClient", "Output"], None]


def _run(handler: Handler, args: argparse.Namespace) -> int:
    """Run one sub-command with a client; map failures to exit statuses and one-line messages."""
    # gRPC and rich load only when a console command runs, not for every `citypost` command.
    from rich.console import Console

    from console.client import PostClient, PostUnreachableError

    output = Output(json=args.json, console=Console(highlight=False))
    try:
        posts = posts_to_ask(args.posts, os.environ)
    except ConfigError as error:
        print(f"{PROG}: ${POSTS_ENV}: {error.message}", file=sys.stderr)
        return 2
    try:
        from console.session import token_source

        factory = workstation.from_environment(args)
        token = token_source(args, factory, posts)
        with PostClient(
            posts,
            operator=args.operator,
            timeout_s=args.timeout,
            channel_factory=factory,
            token=token,
        ) as client:
            handler(args, client, output)
    except PostUnreachableError as error:
        print(f"{PROG}: {error.message}", file=sys.stderr)
        return 2
    except CitypostError as error:  # CallFailedError: the post's status and message
        print(f"{PROG}: {error.message}", file=sys.stderr)
        return 1
    return 0


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _listing(
    client: PostClient, args: argparse.Namespace, rpc: str, request: Any, items: str
) -> tuple[list[Any], Any]:
    """One page (or every page with --all) and the last reply (for its token and total)."""
    request.page_size = args.page_size
    if args.all:
        return list(client.pages(rpc, request, items)), None
    reply = client.read(rpc, request)
    return list(getattr(reply, items)), reply


def _token(reply: Any) -> str:
    return str(reply.next_page_token) if reply is not None else ""


# --- handlers -------------------------------------------------------------------------------


def _whoami(args: argparse.Namespace, client: PostClient, out: Output) -> None:
    reply = client.read("WhoAmI", auth_pb2.WhoAmIRequest(), service="auth")
    if out.json:
        print(render.json_document(reply), flush=True)
        return
    out.console.print(f"{reply.caller} ({', '.join(reply.roles) or 'no role'})")
    if reply.expires_at_ms:
        until = time.strftime("%H:%M:%S", time.localtime(reply.expires_at_ms / 1000))
        out.console.print(f"access token until {until}, renewed by itself")
    out.console.print("may: " + ", ".join(reply.permissions))


def _sessions_revoke(args: argparse.Namespace, client: PostClient, out: Output) -> None:
    if not args.user and not args.sid:
        args.usage_error("name a --user (all of their sessions) or one or more --sid")
    request = auth_pb2.RevokeSessionsRequest(
        session_ids=args.sid or [], user=args.user or "", reason=args.reason
    )
    # Any post records it, leading or not: a revocation only ever adds a refusal.
    reply = client.read("RevokeSessions", request, service="auth")
    if out.json:
        print(render.json_document(reply), flush=True)
        return
    ended = [f"user {reply.user}: every session begun before now"] if reply.user else []
    ended += [f"session {sid}" for sid in reply.session_ids]
    out.console.print("ended at both posts: " + "; ".join(ended))


def _assets(args: argparse.Namespace, client: PostClient, out: Output) -> None:
    request = operator_pb2.ListAssetsRequest(
        asset_class=args.asset_class,
        commune=args.commune or "",
        group=args.group or "",
        only_alarmed=args.alarmed,
    )
    assets, reply = _listing(client, args, "ListAssets", request, "assets")
    total = reply.total if reply is not None else None
    out.many(assets, render.assets_table(assets, total=total, next_page_token=_token(reply)))


def _asset(args: argparse.Namespace, client: PostClient, out: Output) -> None:
    asset = client.read("GetAsset", operator_pb2.GetAssetRequest(dev_eui=args.dev_eui))
    out.one(asset, f"asset {asset.dev_eui}", render.asset_detail(asset))


def _watch(args: argparse.Namespace, client: PostClient, out: Output) -> None:
    request = operator_pb2.WatchEventsRequest(
        asset_classes=args.classes or [], include_telemetry=args.telemetry
    )
    events = client.watch(request)
    seen = 0
    try:
        for event in events:
            out.event(event)
            seen += 1
            if args.count and seen >= args.count:
                break
        else:
            raise CitypostError("the post ended the event stream (is it stopping?): watch again")
    except KeyboardInterrupt:
        pass  # Ctrl-C is how a watch ends
    finally:
        events.close()  # cancels the stream


def _action(args: argparse.Namespace) -> command_pb2.Command:
    """The command's action from --brightness / --bollard / --priority-ms / --signal-mode."""
    command = command_pb2.Command()
    if args.brightness is not None:
        command.set_brightness.brightness_pct = args.brightness
    elif args.bollard is not None:
        position = telemetry_pb2.RAISED if args.bollard == "raise" else telemetry_pb2.LOWERED
        command.set_bollard_position.position = position
    elif args.priority_ms is not None:
        command.signal_priority.extend_green_ms = args.priority_ms
    elif args.signal_mode is not None:
        # An empty SetSignalMode (UNSPECIFIED) hands the signal back to its own cycle.
        command.set_signal_mode.SetInParent()
        if args.signal_mode == "flashing":
            command.set_signal_mode.phase = telemetry_pb2.FLASHING_AMBER
    return command


def _command_send(args: argparse.Namespace, client: PostClient, out: Output) -> None:
    if args.group is not None and not args.asset_class:
        args.usage_error("--group needs --class: a group is named within its asset class")
    command = _action(args)
    command.asset_class = args.asset_class
    if args.device is not None:
        command.target.dev_eui = args.device
    else:
        command.target.group = args.group
    request = operator_pb2.SendCommandRequest(
        command=command,
        ttl_ms=round(args.ttl * 1000) if args.ttl else 0,
        reason=args.reason or "",
        emergency=args.emergency,
    )
    record = client.write("SendCommand", request)
    title = "command sent"
    if record.status == command_pb2.PENDING_APPROVAL:
        title = "command waiting for approval (citypost console command approve ID)"
    out.one(record, title, render.command_detail(record))


def _command_decide(rpc: str, done: str) -> Handler:
    def handler(args: argparse.Namespace, client: PostClient, out: Output) -> None:
        request = operator_pb2.DecideCommandRequest(command_id=args.id, reason=args.reason or "")
        record = client.write(rpc, request)
        out.one(record, f"command {done}", render.command_detail(record))

    return handler


def _command_show(args: argparse.Namespace, client: PostClient, out: Output) -> None:
    record = client.read("GetCommand", operator_pb2.GetCommandRequest(command_id=args.id))
    out.one(record, f"command {record.command.command_id}", render.command_detail(record))


def _commands(args: argparse.Namespace, client: PostClient, out: Output) -> None:
    request = operator_pb2.ListCommandsRequest(status=args.status)
    records, reply = _listing(client, args, "ListCommands", request, "commands")
    out.many(records, render.commands_table(records, next_page_token=_token(reply)))


def _override_set(args: argparse.Namespace, client: PostClient, out: Output) -> None:
    request = operator_pb2.SetOverrideRequest(
        asset_class=args.asset_class,
        group=args.group,
        action=_action(args),
        duration_ms=round(args.minutes * 60_000),
        reason=args.reason,
    )
    override = client.write("SetOverride", request)
    out.one(override, "override set", render.override_detail(override, now_ms=_now_ms()))


def _override_end(args: argparse.Namespace, client: PostClient, out: Output) -> None:
    override = client.write("EndOverride", operator_pb2.EndOverrideRequest(override_id=args.id))
    out.one(override, "override ended", render.override_detail(override, now_ms=_now_ms()))


def _overrides(args: argparse.Namespace, client: PostClient, out: Output) -> None:
    request = operator_pb2.ListOverridesRequest(active_only=args.active)
    overrides, reply = _listing(client, args, "ListOverrides", request, "overrides")
    table = render.overrides_table(overrides, now_ms=_now_ms(), next_page_token=_token(reply))
    out.many(overrides, table)


def _alarms(args: argparse.Namespace, client: PostClient, out: Output) -> None:
    states = sorted({state for named in args.states or [] for state in named})
    request = operator_pb2.ListAlarmsRequest(
        states=states,
        asset_class=args.asset_class,
        min_severity=args.min_severity,
        view=ALARM_VIEWS[args.view],
        cause_alarm_id=args.cause or "",
    )
    alarms, reply = _listing(client, args, "ListAlarms", request, "alarms")
    table = render.alarms_table(alarms, now_ms=_now_ms(), next_page_token=_token(reply))
    out.many(alarms, table)


def _alarm_action(rpc: str, done: str) -> Handler:
    def handler(args: argparse.Namespace, client: PostClient, out: Output) -> None:
        request = operator_pb2.AlarmActionRequest(alarm_id=args.id, comment=args.comment or "")
        alarm = client.write(rpc, request)
        out.one(alarm, f"alarm {done}", render.alarm_detail(alarm))

    return handler


def _alarm_shelve(args: argparse.Namespace, client: PostClient, out: Output) -> None:
    request = operator_pb2.ShelveAlarmRequest(
        alarm_id=args.id, minutes=args.minutes, reason=args.reason
    )
    alarm = client.write("ShelveAlarm", request)
    out.one(alarm, "alarm shelved", render.alarm_detail(alarm))


def _incidents(args: argparse.Namespace, client: PostClient, out: Output) -> None:
    request = operator_pb2.ListIncidentsRequest(open_only=args.open)
    incidents, reply = _listing(client, args, "ListIncidents", request, "incidents")
    out.many(incidents, render.incidents_table(incidents, next_page_token=_token(reply)))


def _incident_create(args: argparse.Namespace, client: PostClient, out: Output) -> None:
    request = operator_pb2.CreateIncidentRequest(
        kind=args.kind,
        location=operations_pb2.GeoPoint(latitude=args.lat, longitude=args.lon),
        detail=args.detail,
        priority=args.priority or 0,
    )
    incident = client.write("CreateIncident", request)
    out.one(incident, "incident opened", render.incident_detail(incident))


def _task_create(args: argparse.Namespace, client: PostClient, out: Output) -> None:
    request = operator_pb2.CreateTaskRequest(
        department=args.department,
        kind=args.kind,
        priority=args.priority or 0,
        location=operations_pb2.GeoPoint(latitude=args.lat, longitude=args.lon),
        detail=args.detail or "",
        origin=args.origin or "",
    )
    task = client.write("CreateTask", request)
    out.one(task, "task created", render.task_detail(task))


def _task_assign(args: argparse.Namespace, client: PostClient, out: Output) -> None:
    request = operator_pb2.AssignTaskRequest(task_id=args.id, assignee=args.to or "")
    task = client.write("AssignTask", request)
    out.one(task, "task assigned", render.task_detail(task))


def _task_close(args: argparse.Namespace, client: PostClient, out: Output) -> None:
    request = operator_pb2.CloseTaskRequest(
        task_id=args.id, cancelled=args.cancel, comment=args.comment or ""
    )
    task = client.write("CloseTask", request)
    out.one(task, "task cancelled" if args.cancel else "task closed", render.task_detail(task))


def _task_list(args: argparse.Namespace, client: PostClient, out: Output) -> None:
    request = operator_pb2.ListTasksRequest(
        department=args.department, statuses=args.statuses or []
    )
    tasks, reply = _listing(client, args, "ListTasks", request, "tasks")
    out.many(tasks, render.tasks_table(tasks, next_page_token=_token(reply)))


def _airtime(args: argparse.Namespace, client: PostClient, out: Output) -> None:
    airtime = client.read("GetAirtime", admin_pb2.GetAirtimeRequest(), service="admin")
    if out.json:
        out.one(airtime, "", [])
        return
    out.console.print(render.rich_table(render.airtime_table(airtime)))


def _status(args: argparse.Namespace, client: PostClient, out: Output) -> None:
    status = client.read("GetStatus", admin_pb2.GetStatusRequest(), service="admin")
    if out.json:
        out.one(status, "", [])
        return
    out.console.print(render.rich_detail(f"post {status.post}", render.status_detail(status)))
    out.console.print(render.rich_table(render.actors_table(status)))
    for table in (
        render.counts_table("uplinks", "class", status.uplinks_by_class),
        render.counts_table("dead letters", "reason", status.dead_letters_by_reason),
    ):
        if table.rows:
            out.console.print(render.rich_table(table))


def _audit_table(
    entries: Sequence[control_state_pb2.AuditEntry], post: str, next_page_token: str
) -> render.TableData:
    rows = [
        (
            render.when(e.at_ms),
            e.actor,
            e.action,
            e.target,
            AUDIT_OUTCOME.label(e.outcome),
            e.detail,
        )
        for e in entries
    ]
    footer = f"{len(rows)} entr{'y' if len(rows) == 1 else 'ies'} from post {post}'s audit file"
    if next_page_token:
        footer += "; more exist: --all lists them all"
    return render.TableData(
        f"audit of post {post}, newest first",
        ("at", "actor", "action", "target", "outcome", "detail"),
        rows,
        footer,
    )


def _audit(args: argparse.Namespace, client: PostClient, out: Output) -> None:
    """The audit from the file of the post that answers (each post keeps its own)."""
    size = args.page_size or AUDIT_PAGE
    request = admin_pb2.ListAuditRequest(
        actor=args.actor or "",
        action_prefix=args.action or "",
        target_prefix=args.target or "",
        outcome=args.outcome,
        page_size=size,
    )
    if args.since is not None:
        request.since_ms = _now_ms() - round(args.since * 60_000)
    entries: list[control_state_pb2.AuditEntry] = []
    post = ""
    while True:
        reply = client.read("ListAudit", request, service="admin")
        entries.extend(reply.entries)
        post = reply.post
        # A post reads a bounded part of its file a call: a short page may have more after.
        if not reply.next_page_token or (not args.all and len(entries) >= size):
            break
        request.page_token = reply.next_page_token
        if not args.all:
            request.page_size = size - len(entries)
    out.many(entries, _audit_table(entries, post, reply.next_page_token))


# --- the parser -----------------------------------------------------------------------------


def _common_flags(parser: argparse.ArgumentParser, *, default: Any) -> None:
    """The console's own flags; sub-commands take them too (after their name) without defaults."""
    workstation.add_workstation_flags(parser, default=default)
    parser.add_argument(
        "--post",
        dest="posts",
        action="extend",
        type=_addresses,
        metavar="HOST:PORT[,HOST:PORT]",
        default=default if default is argparse.SUPPRESS else None,
        help=(
            "a post's gRPC address; repeat it or give a comma list to name every post "
            "(reads go to any, writes follow the leader); default: "
            f"${POSTS_ENV}, else {DEFAULT_POST}"
        ),
    )
    parser.add_argument(
        "--operator",
        default=default if default is argparse.SUPPRESS else None,
        help="your operator id, sent with every call and kept in the audit (default: anonymous)",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        default=default if default is argparse.SUPPRESS else False,
        help="print the protobuf JSON mapping (one document; one line per event for watch)",
    )
    parser.add_argument(
        "--timeout",
        type=_positive(float),
        metavar="S",
        default=default if default is argparse.SUPPRESS else DEFAULT_TIMEOUT_S,
        help=f"seconds to wait for each answer (default {DEFAULT_TIMEOUT_S:g})",
    )


def _add_list_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--page-size", type=int, default=0, metavar="N", help="items per page")
    parser.add_argument("--all", action="store_true", help="every page, not only the first")


def _add_action_flags(parser: argparse.ArgumentParser) -> None:
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument(
        "--brightness", type=float, metavar="PCT", help="street lamps: output level 0..100"
    )
    action.add_argument("--bollard", choices=("raise", "lower"), help="bollards: raise or lower")
    action.add_argument(
        "--priority-ms", type=int, metavar="MS", help="traffic signals: extend the green by MS"
    )
    action.add_argument(
        "--signal-mode",
        choices=("normal", "flashing"),
        help="traffic signals: back to the normal cycle, or flashing amber (fail-safe)",
    )


def _enum_flag(
    parser: Any,
    flag: str,
    vocabulary: Vocabulary,
    metavar: str,
    *,
    many: bool = False,
    help: str = "",
    **options: Any,
) -> None:
    """A flag that takes one of an enum's words; the help lists them."""
    words = ", ".join(vocabulary.words())
    if not options.get("required") and options.get("action") != "append":
        options.setdefault("default", 0)  # UNSPECIFIED: the API's "any"
    parser.add_argument(
        flag,
        type=_word(vocabulary, many=many),
        metavar=metavar,
        help=f"{help}{'; ' if help else ''}one of: {words}",
        **options,
    )


def add_console_parser(commands: argparse._SubParsersAction) -> None:
    """Add `console` and its sub-commands to the `citypost` parser's sub-commands."""
    common = argparse.ArgumentParser(add_help=False)
    _common_flags(common, default=argparse.SUPPRESS)
    console = commands.add_parser(
        "console",
        help="the operator console: assets, events, commands, overrides, alarms, tasks",
        description="The operator console: a command line over a post's gRPC API.",
    )
    _common_flags(console, default=None)
    sub = console.add_subparsers(dest="console_command", required=True, metavar="COMMAND")

    def command(parent: Any, name: str, handler: Handler, help: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = parent.add_parser(
            name, help=help, description=help, parents=[common]
        )
        parser.set_defaults(handler=partial(_run, handler), usage_error=parser.error)
        return parser

    def group(name: str, help: str) -> Any:
        parser = sub.add_parser(name, help=help, description=help)
        return parser.add_subparsers(dest=f"{name}_command", required=True, metavar="COMMAND")

    login_parser = sub.add_parser(
        "login", help="log in: the next commands act as you", parents=[common]
    )
    login_parser.add_argument("--user", help="your user name (asked if not given)")
    login_parser.add_argument("--otp", help="the one-time code, if your account has one")
    from console.oidc_login import add_oidc_flags  # flags only: no gRPC loaded

    add_oidc_flags(login_parser)  # --oidc, --oidc-issuer, --oidc-client-id
    login_parser.set_defaults(handler=_cmd_login)
    logout = sub.add_parser(
        "logout", help="end this workstation's session at the posts", parents=[common]
    )
    logout.set_defaults(handler=_cmd_logout)
    command(sub, "whoami", _whoami, "who the posts see: user, roles, permissions")
    sessions_group = group("sessions", "end operators' sessions (administrator)")
    revoke = command(sessions_group, "revoke", _sessions_revoke, "end sessions now, at both posts")
    revoke.add_argument("--user", help="every session of this user begun before now")
    revoke.add_argument(
        "--sid", action="append", metavar="SID", help="one session (WhoAmI shows it); repeatable"
    )
    revoke.add_argument("--reason", required=True, help="for the audit and the refused caller")

    assets = command(sub, "assets", _assets, "list assets by class, commune, group or alarms")
    _enum_flag(assets, "--class", ASSET_CLASS, "CLASS", dest="asset_class")
    assets.add_argument("--commune", help="e.g. Talant")
    assets.add_argument("--group", help="a device group, e.g. talant")
    assets.add_argument("--alarmed", action="store_true", help="only assets with active alarms")
    _add_list_flags(assets)

    asset = command(sub, "asset", _asset, "one asset: where it is, its last reading, its alarms")
    asset.add_argument("dev_eui", metavar="DEVEUI")

    watch = command(sub, "watch", _watch, "stream events (alarms, commands, tasks...) until Ctrl-C")
    _enum_flag(
        watch,
        "--class",
        ASSET_CLASS,
        "CLASS",
        dest="classes",
        action="append",
        help="only events of this class, repeatable (tasks and incidents always pass)",
    )
    watch.add_argument("--telemetry", action="store_true", help="include every reading")
    watch.add_argument("--count", type=int, default=0, metavar="N", help="stop after N events")

    command_group = group("command", "send a command, or show one")
    send = command(command_group, "send", _command_send, "send a command to a device or a group")
    target = send.add_mutually_exclusive_group(required=True)
    target.add_argument("--device", metavar="DEVEUI", help="one device")
    target.add_argument("--group", help="every device of a group (with --class)")
    _enum_flag(send, "--class", ASSET_CLASS, "CLASS", dest="asset_class")
    _add_action_flags(send)
    send.add_argument("--ttl", type=_positive(float), metavar="S", help="give up after S seconds")
    send.add_argument("--reason", help="why, for the audit")
    send.add_argument(
        "--emergency",
        action="store_true",
        help="a dangerous command that cannot wait for a second person: sent at once, "
        "with an alarm for the whole room (needs --reason)",
    )
    show = command(command_group, "show", _command_show, "one command and its delivery")
    show.add_argument("id", metavar="ID")
    for name, rpc, done in (
        ("approve", "ApproveCommand", "approved"),
        ("reject", "RejectCommand", "rejected"),
    ):
        decide = command(
            command_group,
            name,
            _command_decide(rpc, done),
            f"{name} a command waiting for approval",
        )
        decide.add_argument("id", metavar="ID")
        decide.add_argument(
            "--reason", required=name == "reject", help="why, for the audit and the requester"
        )

    commands_list = command(sub, "commands", _commands, "list the commands in the ledger")
    _enum_flag(commands_list, "--status", COMMAND_STATUS, "STATUS")
    _add_list_flags(commands_list)

    override_group = group("override", "hold a group in a state for a while, or end that")
    hold = command(override_group, "set", _override_set, "hold a group; its policy waits")
    _enum_flag(hold, "--class", ASSET_CLASS, "CLASS", dest="asset_class", required=True)
    hold.add_argument("--group", required=True)
    _add_action_flags(hold)
    hold.add_argument("--minutes", type=_positive(float), required=True, metavar="M")
    hold.add_argument("--reason", required=True, help="why, for the audit")
    end = command(override_group, "end", _override_end, "end an override now")
    end.add_argument("id", metavar="ID")

    overrides = command(sub, "overrides", _overrides, "list overrides")
    overrides.add_argument("--active", action="store_true", help="only those holding now")
    _add_list_flags(overrides)

    alarms = command(sub, "alarms", _alarms, "list alarms")
    _enum_flag(
        alarms,
        "--state",
        ALARM_STATE,
        "STATE",
        many=True,
        dest="states",
        action="append",
        help="repeatable",
    )
    _enum_flag(alarms, "--class", ASSET_CLASS, "CLASS", dest="asset_class")
    _enum_flag(alarms, "--min-severity", SEVERITY, "SEVERITY")
    alarms.add_argument(
        "--view",
        choices=tuple(ALARM_VIEWS),
        default="annunciated",
        help="which alarms: annunciated (the default: neither shelved nor suppressed), "
        "shelved, suppressed, or all",
    )
    alarms.add_argument(
        "--cause",
        metavar="ALARM_ID",
        help="only the alarms suppressed under this cause alarm (whatever the view)",
    )
    _add_list_flags(alarms)

    alarm_group = group("alarm", "acknowledge, clear, shelve or unshelve an alarm")

    def alarm_action(name: str, rpc: str, done: str, what: str) -> None:
        action = command(alarm_group, name, _alarm_action(rpc, done), what)
        action.add_argument("id", metavar="ID")
        action.add_argument("--comment", help="for the audit")

    alarm_action("ack", "AcknowledgeAlarm", "acknowledged", "acknowledge an alarm")
    alarm_action("clear", "ClearAlarm", "cleared", "clear an alarm: its cause is gone")
    shelve = command(
        alarm_group,
        "shelve",
        _alarm_shelve,
        "take an alarm out of the list for a while (at most its severity's maximum)",
    )
    shelve.add_argument("id", metavar="ID")
    shelve.add_argument(
        "--minutes",
        type=_positive(float),
        required=True,
        metavar="M",
        help="back by itself after M minutes",
    )
    shelve.add_argument("--reason", required=True, help="why, for the audit")
    alarm_action("unshelve", "UnshelveAlarm", "unshelved", "put a shelved alarm back in the list")

    incidents = command(sub, "incidents", _incidents, "list incidents")
    incidents.add_argument("--open", action="store_true", help="only open ones")
    _add_list_flags(incidents)

    incident_group = group("incident", "open an incident")
    create = command(incident_group, "create", _incident_create, "open an incident")
    _enum_flag(create, "--kind", INCIDENT_KIND, "KIND", required=True)
    create.add_argument("--lat", type=float, required=True, help="latitude, e.g. 47.322")
    create.add_argument("--lon", type=float, required=True, help="longitude, e.g. 5.041")
    create.add_argument("--detail", required=True, help="what happened, for the responders")
    create.add_argument("--priority", type=int, metavar="1..5", help="1 is the highest")

    task_group = group("task", "create, assign, close and list tasks")
    task = command(task_group, "create", _task_create, "create a task for a department")
    _enum_flag(task, "--department", DEPARTMENT, "DEPARTMENT", required=True)
    task.add_argument("--kind", required=True, help="e.g. repair_lamp, salt_route")
    task.add_argument("--lat", type=float, required=True, help="latitude, e.g. 47.322")
    task.add_argument("--lon", type=float, required=True, help="longitude, e.g. 5.041")
    task.add_argument("--priority", type=int, metavar="1..5", help="1 is the highest")
    task.add_argument("--detail")
    task.add_argument("--origin", help="the alarm or incident that asked for it")
    assign = command(task_group, "assign", _task_assign, "assign a task")
    assign.add_argument("id", metavar="ID")
    assign.add_argument("--to", metavar="ASSIGNEE", help="a company car's devEUI or a team")
    close = command(task_group, "close", _task_close, "close a task as done, or cancel it")
    close.add_argument("id", metavar="ID")
    close.add_argument("--cancel", action="store_true", help="cancelled, not done")
    close.add_argument("--comment", help="for the audit")
    listing = command(task_group, "list", _task_list, "list tasks")
    _enum_flag(listing, "--department", DEPARTMENT, "DEPARTMENT")
    _enum_flag(
        listing,
        "--status",
        TASK_STATUS,
        "STATUS",
        dest="statuses",
        action="append",
        help="repeatable",
    )
    _add_list_flags(listing)

    audit = command(
        sub, "audit", _audit, "the audit, newest first, from one post's file (needs audit.read)"
    )
    audit.add_argument("--actor", help="exactly this actor, e.g. supervisor or console.room")
    audit.add_argument("--action", metavar="PREFIX", help="actions starting so, e.g. auth.")
    audit.add_argument("--target", metavar="PREFIX", help="targets starting so, e.g. alarm/")
    _enum_flag(audit, "--outcome", AUDIT_OUTCOME, "OUTCOME")
    audit.add_argument(
        "--since", type=_positive(float), metavar="MINUTES", help="only the last MINUTES"
    )
    _add_list_flags(audit)

    command(sub, "status", _status, "the post's status: role, epoch, actors, rates, dead letters")
    command(
        sub, "airtime", _airtime, "each gateway's airtime over the last hour against its duty cycle"
    )


def run(argv: Sequence[str]) -> int:
    """Parse `argv` (what follows `citypost console`) and run it: for tests and embedding."""
    parser = argparse.ArgumentParser(prog="citypost")
    add_console_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["console", *argv])
    code: int = args.handler(args)
    return code

"""PostAdmin: the post's own state, for operators and the SRE team.

Failover RPCs (`citypost failover status|switchover`):
- GetFailoverStatus answers this post's view: its role and the election's
  decision, the leader and epoch it sees, its lease, and how far its control
  state is behind the store (store revision - applied revision). What the post
  cannot know now is left absent: the store revision when the control state
  does not answer within STATE_TIMEOUT_S (the status still answers, with the
  reason), the applied revision on a post that does not track it.
- Resign makes this post stop leading (lease revoked, no campaign for the
  hold-off), refused with FAILED_PRECONDITION (and the leader's address in
  the trailing metadata) when it does not lead. Its idempotency key is kept
  in a bounded in-memory map: a retry after a lost answer returns the first
  answer instead of a "does not lead" refusal. Resigns run one at a time.

ListAudit reads the post's own audit file (post/audit_file.py) backwards, newest
first, in a worker thread, at most AUDIT_SCAN_BYTES a call: a selective filter over a
long file then answers with a short (even empty) page and a token instead of holding
the call; `--all` in the console pages on. A page token is a byte offset in this
post's file: the other post's file differs (its own refusals and logins), so a token
is refused there.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from actors.catalog import actor_name
from api import pagination
from api.server import Service
from citypost.errors import CitypostError, FailedPreconditionError, InvalidArgumentError
from failover.election import ElectionStatus, Role
from post.audit_file import complete_end, entry_of, lines_backwards
from protos.citypost.v1 import admin_pb2, admin_pb2_grpc, control_state_pb2
from security.audit_chain import parse_line

if TYPE_CHECKING:
    from post.post import Post

# A status must answer while etcd does not: the store revision is then left out.
STATE_TIMEOUT_S = 2.0
# Longer would leave the city without a leader that long if no standby takes over.
MAX_HOLD_OFF_MS = 60_000
MAX_KEY_CHARS = 128
REMEMBERED_RESIGNS = 256
# Read per ListAudit call, at most (about 13,000 lines of ~300 bytes, ~50 ms).
AUDIT_SCAN_BYTES = 4 << 20
_AUDIT_TOKEN = "audit/"

SERVICE_NAME = admin_pb2.DESCRIPTOR.services_by_name["PostAdmin"].full_name

_ROLES = {Role.LEADER: admin_pb2.POST_ROLE_LEADER, Role.STANDBY: admin_pb2.POST_ROLE_STANDBY}


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


def failover_status(
    status: ElectionStatus,
    *,
    store_revision: int | None,
    applied_revision: int | None,
    store_error: str = "",
    at_ms: int = 0,
) -> admin_pb2.FailoverStatus:
    """The FailoverStatus message from what the post knows; unknowns stay absent."""
    message = admin_pb2.FailoverStatus(
        post=status.name,
        role=_ROLES.get(status.role, admin_pb2.POST_ROLE_UNSPECIFIED),
        action=status.action.value,
        epoch=status.epoch or 0,
        leader_name=status.leader.name if status.leader else "",
        leader_address=status.leader.address if status.leader else "",
        lease_id=status.lease_id or 0,
        store_error=store_error,
        at_ms=at_ms,
    )
    if status.lease_remaining_s is not None:
        message.lease_remaining_ms = round(status.lease_remaining_s * 1000)
    if store_revision is not None:
        message.store_revision = store_revision
    if applied_revision is not None:
        message.applied_revision = applied_revision
    if store_revision is not None and applied_revision is not None:
        message.lag_revisions = max(0, store_revision - applied_revision)
    return message


def check_resign(request: admin_pb2.ResignRequest) -> tuple[str, float | None]:
    """The request's idempotency key and hold-off in seconds (None: the post's default)."""
    key = request.idempotency_key
    if not key:
        raise InvalidArgumentError(
            "idempotency_key: required: send a fresh key (e.g. a UUID) and the same one "
            "when you retry"
        )
    if len(key) > MAX_KEY_CHARS:
        raise InvalidArgumentError(
            f"idempotency_key: at most {MAX_KEY_CHARS} characters, got {len(key)}"
        )
    hold_off_ms = request.hold_off_ms
    if not 0 <= hold_off_ms <= MAX_HOLD_OFF_MS:
        raise InvalidArgumentError(
            f"hold_off_ms: 0..{MAX_HOLD_OFF_MS} ms (0: the post's default, its lease TTL), "
            f"got {hold_off_ms}"
        )
    return key, (hold_off_ms / 1000 if hold_off_ms else None)


AuditRecord = Mapping[str, Any]


def audit_filter(request: admin_pb2.ListAuditRequest) -> Callable[[AuditRecord], bool]:
    """Whether a file record passes the request's filters, on the record's JSON (the
    protobuf mapping: at_ms a string, the outcome by name) so only matches are parsed."""
    since, until = request.since_ms, request.until_ms
    if since < 0 or until < 0:
        raise InvalidArgumentError("since_ms and until_ms: ms since the Unix epoch, 0 for none")
    if since and until and until <= since:
        raise InvalidArgumentError(f"until_ms ({until}) must be after since_ms ({since})")
    outcome: str | int | None = None
    if request.outcome:
        if request.outcome not in control_state_pb2.AuditOutcome.values():
            raise InvalidArgumentError(f"outcome: no AuditOutcome {request.outcome}")
        outcome = control_state_pb2.AuditOutcome.Name(request.outcome)
    actor, action, target = request.actor, request.action_prefix, request.target_prefix

    def keep(record: AuditRecord) -> bool:
        if actor and record.get("actor") != actor:
            return False
        if action and not str(record.get("action", "")).startswith(action):
            return False
        if target and not str(record.get("target", "")).startswith(target):
            return False
        if outcome is not None and record.get("outcome") != outcome:
            return False
        if since or until:
            try:
                at_ms = int(record.get("at_ms", 0))
            except (TypeError, ValueError):
                return False
            if at_ms < since or (until and at_ms >= until):
                return False
        return True

    return keep


def _audit_end(token: str, post: str, size: int) -> int | None:
    """The offset a page token resumes before; None: from the file's end."""
    key = pagination.decode_token(token)
    if not key:
        return None
    issuer, _, offset = key.removeprefix(_AUDIT_TOKEN).rpartition("/")
    if not key.startswith(_AUDIT_TOKEN) or not offset.isdigit():
        raise InvalidArgumentError(
            "page_token: it belongs to another list: pass next_page_token back unchanged"
        )
    if issuer != post:
        raise InvalidArgumentError(
            f"page_token: post {issuer!r} issued it, for its own audit file: ask that post "
            f"(this is {post!r})"
        )
    end = int(offset)
    if not 0 < end <= size:
        raise InvalidArgumentError("page_token: not an offset of this post's audit file")
    return end


def audit_page(
    path: Path, post: str, request: admin_pb2.ListAuditRequest
) -> admin_pb2.ListAuditResponse:
    """One page of ListAudit from an audit file, newest first (blocking: run in a thread)."""
    size = pagination.page_size(request.page_size)
    keep = audit_filter(request)
    response = admin_pb2.ListAuditResponse(post=post)
    if not path.exists():
        return response  # nothing audited yet
    end = _audit_end(request.page_token, post, path.stat().st_size)
    if end is None:
        end = complete_end(path)  # a line being written past it waits for the next call
    else:
        with path.open("rb") as file:  # a token is plain text: it must name a line's start
            file.seek(end - 1)
            if file.read(1) != b"\n":
                raise InvalidArgumentError("page_token: not an offset of this post's audit file")
    scanned = 0
    for start, line in lines_backwards(path, end):
        scanned += len(line) + 1
        try:
            record = parse_line(line.decode("utf-8"))
        except ValueError:
            record = None  # an unparsable line lists as nothing (`audit verify` names it)
        entry = entry_of(record) if record is not None and keep(record) else None
        if entry is not None:
            response.entries.append(entry)
        if len(response.entries) == size or scanned >= AUDIT_SCAN_BYTES:
            if start > 0:
                response.next_page_token = pagination.encode_token(f"{_AUDIT_TOKEN}{post}/{start}")
            break
    return response


class PostAdminService(admin_pb2_grpc.PostAdminServicer):
    def __init__(self, post: Post) -> None:
        self._post = post
        self._resigns: OrderedDict[str, admin_pb2.ResignResponse] = OrderedDict()
        self._resign_lock = asyncio.Lock()

    async def GetStatus(
        self, request: admin_pb2.GetStatusRequest, context: Any
    ) -> admin_pb2.PostStatus:
        post = self._post
        feed = post.feed.stats()
        edge = post.edge.stats()
        health = post.health()
        footprint = post.footprint.latest
        lag = feed.apply_lag
        down = set(feed.down)
        actors = []
        for key, devices in sorted(post.registry.groups().items()):
            name = actor_name(*key)
            actors.append(
                admin_pb2.ActorStatus(
                    name=name,
                    asset_class=key[0],
                    group=key[1],
                    healthy=name not in down,
                    restarts=feed.restarts.get(name, 0),
                    devices=len(devices),
                    worker_pid=feed.worker_pids.get(name, 0),
                )
            )
        stream = post.silence.figures(time.monotonic())
        return admin_pb2.PostStatus(
            post=post.name,
            role="leader" if post.commanding() else "standby",
            epoch=post.epoch,
            healthy=health.healthy,
            unhealthy_reason=health.reason,
            actors=actors,
            uplinks_by_class=edge.decoded_by_class,
            uplinks_per_s=post.uplinks_per_s,
            dead_letters_by_reason=edge.dead_letters_by_reason,
            commands_pending=post.dispatcher.pending_commands(),
            started_at_ms=post.started_at_ms,
            memory_pss_bytes=footprint.pss_bytes,
            cpu_cores=footprint.cpu_cores,
            processes=footprint.processes,
            apply_lag_p50_ms=lag.p50_ms,
            apply_lag_p99_ms=lag.p99_ms,
            apply_lag_max_ms=lag.max_ms,
            readings_applied=lag.count,
            longest_gap_s_by_class=edge.longest_gap_s_by_class,
            stream_time_ms=stream.stream_time_ms,
            effective_speed=stream.effective_speed,
            configured_speed=post.clock.speed,
            alarms_suppressed=stream.suppressed,
            alarms_shelved=post.dispatcher.shelved_alarms(),
        )

    # --- failover ----------------------------------------------------------------------------

    async def GetAirtime(
        self, request: admin_pb2.GetAirtimeRequest, context: Any
    ) -> admin_pb2.Airtime:
        report = self._post.radio.latest()
        if report is None:
            return admin_pb2.Airtime(known=False)
        return admin_pb2.Airtime(
            known=True,
            as_of_ms=report.as_of_ms,
            window_s=report.window_s,
            gateways=[
                admin_pb2.GatewayAirtime(
                    gateway_id=u.gateway_id,
                    sub_band=u.sub_band,
                    used_s=u.used_s,
                    budget_s=u.budget_s,
                )
                for u in report.usage
            ],
            held=report.held,
            refused=report.refused,
        )

    async def ListAudit(
        self, request: admin_pb2.ListAuditRequest, context: Any
    ) -> admin_pb2.ListAuditResponse:
        audit = self._post.audit_file
        if audit is None:
            raise FailedPreconditionError(f"post {self._post.name} keeps no audit file")
        return await asyncio.to_thread(audit_page, audit.path, self._post.name, request)

    async def GetFailoverStatus(
        self, request: admin_pb2.GetFailoverStatusRequest, context: Any
    ) -> admin_pb2.FailoverStatus:
        leadership = self._post.leadership
        store_revision: int | None = None
        store_error = ""
        try:
            async with asyncio.timeout(STATE_TIMEOUT_S):
                store_revision = await self._post.state.revision()
        except TimeoutError:
            store_error = f"the control state did not answer within {STATE_TIMEOUT_S:g} s"
        except CitypostError as error:
            store_error = f"the control state did not answer: {error.message}"
        # Read after the store: a revision applied in between then shows as lag 0, not < 0.
        # getattr: a post that does not track what it applied reports its lag as unknown.
        applied: int | None = getattr(self._post, "applied_revision", None)
        return failover_status(
            leadership.status(),
            store_revision=store_revision,
            applied_revision=applied,
            store_error=store_error,
            at_ms=wall_ms(),
        )

    async def Resign(
        self, request: admin_pb2.ResignRequest, context: Any
    ) -> admin_pb2.ResignResponse:
        key, hold_off_s = check_resign(request)
        leadership = self._post.leadership
        async with self._resign_lock:
            done = self._resigns.get(key)
            if done is not None:
                return done
            epoch = leadership.command_epoch()  # NotLeaderError, naming the leader, if not
            await leadership.resign(hold_off_s=hold_off_s)
            answer = admin_pb2.ResignResponse(
                post=leadership.name, resigned_epoch=epoch, hold_off_ms=request.hold_off_ms
            )
            self._resigns[key] = answer
            while len(self._resigns) > REMEMBERED_RESIGNS:
                self._resigns.popitem(last=False)
            return answer


def admin_service(post: Post) -> Service:
    """The servicer as the post's gRPC server registers it."""
    return Service(
        SERVICE_NAME, admin_pb2_grpc.add_PostAdminServicer_to_server, PostAdminService(post)
    )

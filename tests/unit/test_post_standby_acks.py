"""A standby leaves acks to the leader: its edge must never be held by them.

The edge holds a batch until its sink takes it; a standby's dispatcher refuses the
ledger write an ack needs (not the leader), so handing it acks stopped the standby
reading the broker until it was promoted.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from bridges import chirpstack
from citypost.clock import SimClock
from citypost.config import load_config
from citypost.errors import NotLeaderError
from citypost.observability import setup_observability
from failover.control_state import ledger_key
from fleet.population import build_city
from post.post import Post, _Acks
from protos.citypost.v1 import assets_pb2, command_pb2, control_state_pb2
from tests.unit.test_actor_feed import InProcessPool

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]


@pytest.fixture
def post() -> Iterator[Post]:
    config = load_config(overrides={"city.scale": 0.0005, "mqtt.port": 1, "security.tls": False})
    city = build_city(config.city)
    observability = setup_observability(config.observability)
    try:
        yield Post(
            config,
            name="standby",
            registry=city.registry,
            pool=InProcessPool(city.registry.groups()),
            clock=SimClock(datetime(2026, 1, 15, 12, 0, tzinfo=UTC), 1.0),
            observability=observability,
        )
    finally:
        observability.shutdown()


def _ack(command_id: str = "some-command", dev_eui: str = "0000000000000001") -> chirpstack.Ack:
    info = chirpstack.DeviceInfo(application_id="app", dev_eui=dev_eui)
    return chirpstack.Ack("", 0, info, command_id, True, 1)


def _signal(post: Post) -> str:
    return next(d.dev_eui for d in post.registry if d.asset_class == assets_pb2.TRAFFIC_SIGNAL)


async def test_acks_seen_while_standing_by_settle_the_old_leaders_commands_at_promotion(
    post: Post,
) -> None:
    post.leading = True
    dev_eui = _signal(post)
    record = await post.dispatcher.issue_command(
        command_pb2.Command(
            asset_class=assets_pb2.TRAFFIC_SIGNAL,
            target=command_pb2.Target(dev_eui=dev_eui),
            signal_priority=command_pb2.SignalPriority(extend_green_ms=5000),
        ),
        issued_by="op-test",
    )
    command_id = record.command.command_id
    # The leader that sent it is gone before its ack came; this post stands by.
    post.leading = False
    _Acks(post).submit_acks([_ack(command_id, dev_eui), _ack()])  # never blocks the edge
    stored = await post.state.get(ledger_key(command_id), control_state_pb2.CommandRecord)
    assert stored is not None and stored.status == command_pb2.SENT  # not written by a standby

    await post._promote(1)
    stored = await post.state.get(ledger_key(command_id), control_state_pb2.CommandRecord)
    assert stored is not None and stored.status == command_pb2.ACKED


async def test_the_leaders_edge_never_waits_for_a_slow_ledger_write(
    post: Post, monkeypatch: pytest.MonkeyPatch
) -> None:
    post.leading = True
    post._loop = asyncio.get_running_loop()
    release = asyncio.Event()
    settled: list[int] = []

    async def slow_on_acks(acks: list[chirpstack.Ack]) -> None:
        await release.wait()  # etcd slow under load: the dispatcher's lock held
        settled.append(len(acks))

    monkeypatch.setattr(post.dispatcher, "on_acks", slow_on_acks)
    sink = _Acks(post)
    began = time.monotonic()
    for _ in range(3):
        await asyncio.to_thread(sink.submit_acks, [_ack()])
    assert time.monotonic() - began < 2.0  # the edge read on
    release.set()
    for _ in range(100):
        await asyncio.sleep(0.01)
        if len(settled) == 3:
            break
    assert settled == [1, 1, 1]  # all settled, in order


async def test_acks_refused_because_the_lead_just_ended_are_kept_too(
    post: Post, monkeypatch: pytest.MonkeyPatch
) -> None:
    post.leading = True
    post._loop = asyncio.get_running_loop()

    async def refused(acks: list[chirpstack.Ack]) -> None:
        raise NotLeaderError("the lease ran out", leader_name="backup")

    monkeypatch.setattr(post.dispatcher, "on_acks", refused)
    sink = _Acks(post)
    await asyncio.to_thread(sink.submit_acks, [_ack()])
    await asyncio.sleep(0.05)
    post.leading = False
    await asyncio.to_thread(sink.submit_acks, [_ack(), _ack()])  # a standby's: kept as well
    assert len(post._acks_for_promotion) == 3


async def test_leading_again_under_the_same_epoch_is_a_resume_not_a_takeover(post: Post) -> None:
    """A leader that fenced itself while its lease held (late keepalive answers) carries on:
    no second takeover entry, no command sent again."""

    async def takeovers() -> int:
        entries = (await post.state.list("audit/", control_state_pb2.AuditEntry)).entries
        return sum(e.value.action == "leadership.take" for e in entries)

    await post._promote(1)
    assert post.leading and await takeovers() == 1
    await post.dispatcher.issue_command(
        command_pb2.Command(
            asset_class=assets_pb2.TRAFFIC_SIGNAL,
            target=command_pb2.Target(dev_eui=_signal(post)),
            signal_priority=command_pb2.SignalPriority(extend_green_ms=5000),
        ),
        issued_by="op-test",
    )
    sent = post.dispatcher.stats.downlinks_sent
    post.leading = False  # it fenced itself
    await post._promote(1)  # the same epoch: its lease held
    assert post.leading
    assert await takeovers() == 1
    assert post.dispatcher.stats.downlinks_sent == sent  # nothing sent again

"""A write that hangs on an unreachable etcd is given up the instant the post's lead may
have ended: the operator hears "not the leader" at once, naming the leader."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
from google.protobuf.message import Message

from bridges.registry import DeviceRegistry
from citypost.errors import NotLeaderError
from failover.control_state import InMemoryControlState
from post.dispatcher import Dispatcher
from tests.unit.test_dispatcher import SIGNALS, Clock, _flashing_signal

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]


class UnreachableState(InMemoryControlState):
    """etcd behind a partition: every write waits for ever."""

    def __init__(self) -> None:
        super().__init__(epoch=5)
        self.writes_started = 0

    async def put_many(
        self,
        items: Sequence[tuple[str, Message | None]],
        *,
        epoch: int,
        absent: Sequence[str] = (),
    ) -> int:
        self.writes_started += 1
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


class Lease:
    """The post's lead: it ends (self-fence) at `ends_at` on the loop's clock."""

    def __init__(self, lasts_s: float) -> None:
        self.ends_at = asyncio.get_running_loop().time() + lasts_s

    def window(self) -> float:
        return max(0.0, self.ends_at - asyncio.get_running_loop().time())

    def epoch(self) -> int:
        if self.window() <= 0:
            raise NotLeaderError("fenced", leader_name="backup", leader_address="127.0.0.1:2")
        return 5


def _dispatcher(state: InMemoryControlState, lease: Lease) -> Dispatcher:
    return Dispatcher(
        state=state,
        registry=DeviceRegistry(SIGNALS),
        publish=lambda d: None,
        epoch=lease.epoch,
        write_window_s=lease.window,
        wall_ms=Clock(),
    )


async def test_writes_hanging_on_etcd_are_refused_when_the_lead_ends() -> None:
    state = UnreachableState()
    lease = Lease(0.3)
    dispatcher = _dispatcher(state, lease)
    loop = asyncio.get_running_loop()
    began = loop.time()
    first = asyncio.create_task(dispatcher.issue_command(_flashing_signal(), issued_by="op"))
    queued = asyncio.create_task(dispatcher.issue_command(_flashing_signal(), issued_by="op2"))
    results = await asyncio.wait_for(
        asyncio.gather(first, queued, return_exceptions=True), timeout=5
    )
    took = loop.time() - began
    for result in results:
        assert isinstance(result, NotLeaderError), result
        assert result.leader_address == "127.0.0.1:2"  # the client can follow at once
    assert state.writes_started == 1  # the queued one never reached etcd
    assert took >= 0.25  # at the fence (not before); wait_for bounds the rest


async def test_a_lead_renewed_while_writing_keeps_waiting_for_the_write() -> None:
    state = InMemoryControlState(epoch=5)
    lease = Lease(0.2)
    release = asyncio.Event()
    real_put_many = state.put_many

    async def slow_put_many(
        items: Sequence[tuple[str, Message | None]], *, epoch: int, absent: Sequence[str] = ()
    ) -> int:
        await release.wait()
        return await real_put_many(items, epoch=epoch, absent=absent)

    state.put_many = slow_put_many  # type: ignore[method-assign]
    dispatcher = _dispatcher(state, lease)
    task = asyncio.create_task(dispatcher.issue_command(_flashing_signal(), issued_by="op"))
    await asyncio.sleep(0.1)
    lease.ends_at += 10  # keepalive answered: the lead goes on
    await asyncio.sleep(0.3)  # past the first window
    assert not task.done()
    release.set()
    record = await asyncio.wait_for(task, 5)
    assert record.command.epoch == 5

import uuid

import pytest

from bridges.downlink_frame import DeviceCommand
from fleet.device_state import CommandGate, Outcome

pytestmark = pytest.mark.unit


def _cmd(epoch: int, command_id: str | None = None) -> DeviceCommand:
    return DeviceCommand(epoch, command_id or str(uuid.uuid4()), "set_brightness", 50.0)


def test_a_new_command_executes_once_then_is_a_duplicate() -> None:
    gate = CommandGate()
    cmd = _cmd(5)
    assert gate.admit(cmd) is Outcome.EXECUTE
    assert gate.admit(cmd) is Outcome.DUPLICATE
    assert gate.admit(cmd) is Outcome.DUPLICATE
    assert Outcome.DUPLICATE.acknowledged and Outcome.EXECUTE.acknowledged
    assert gate.executed(cmd.command_id)


def test_a_new_leader_resending_the_same_id_sees_it_acknowledged_not_rerun() -> None:
    gate = CommandGate()
    cmd = _cmd(5)
    assert gate.admit(cmd) is Outcome.EXECUTE
    resent = DeviceCommand(9, cmd.command_id, cmd.action, cmd.value)
    assert gate.admit(resent) is Outcome.DUPLICATE
    assert gate.highest_epoch == 9


def test_a_stale_epoch_is_dropped_and_not_acknowledged() -> None:
    gate = CommandGate()
    assert gate.admit(_cmd(7)) is Outcome.EXECUTE
    stale = _cmd(6)
    assert gate.admit(stale) is Outcome.STALE_EPOCH
    assert not Outcome.STALE_EPOCH.acknowledged
    assert not gate.executed(stale.command_id)
    assert gate.highest_epoch == 7
    # Once the fence is up, a deposed leader's re-send of an executed id is stale too.
    old = _cmd(7)
    assert gate.admit(old) is Outcome.EXECUTE
    assert gate.admit(_cmd(8)) is Outcome.EXECUTE
    assert (
        gate.admit(DeviceCommand(7, old.command_id, old.action, old.value)) is Outcome.STALE_EPOCH
    )


def test_equal_epoch_is_not_stale_and_higher_raises_the_mark() -> None:
    gate = CommandGate()
    assert gate.admit(_cmd(3)) is Outcome.EXECUTE
    assert gate.admit(_cmd(3)) is Outcome.EXECUTE
    assert gate.highest_epoch == 3
    assert gate.admit(_cmd(10)) is Outcome.EXECUTE
    assert gate.highest_epoch == 10
    assert gate.admit(_cmd(9)) is Outcome.STALE_EPOCH


def test_memory_is_bounded_to_the_most_recent_ids() -> None:
    gate = CommandGate(max_ids=100)
    ids = [str(uuid.uuid4()) for _ in range(250)]
    for command_id in ids:
        assert gate.admit(_cmd(1, command_id)) is Outcome.EXECUTE
    assert len(gate) == 100
    assert all(gate.executed(i) for i in ids[-100:])
    assert not gate.executed(ids[0])
    assert gate.admit(_cmd(1, ids[-1])) is Outcome.DUPLICATE
    with pytest.raises(ValueError):
        CommandGate(max_ids=0)

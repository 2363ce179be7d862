"""A drill pointed at a running system (`citypost drill run --against`): the system
is a supervised `CitySystem` (as the demo runs it) started by this test, the drill
finds it by its manifest and acts on its processes by PID; the devices' execution
log comes over MQTT. The crashed leader is brought back by the system's own
supervisor, not by the drill."""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from chaos import scenarios
from chaos.faults import Drilled
from chaos.runner import DrillRunner
from citypost.config import SimConfig
from citypost.errors import FailedPreconditionError, InfrastructureError
from cluster.drill_system import drill_config
from cluster.drill_targets import AttachedTarget, find_manifest
from cluster.system import MANIFEST_NAME, CitySystem

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CitySystem]:
    for attempt in (1, 2):
        root = tmp_path_factory.mktemp("attached")
        config = drill_config().model_copy(update={"sim": SimConfig(speed=60.0), "run_dir": root})
        system = CitySystem(config, root / "demo-1", supervise=True)
        try:
            system.start()  # stops what it started if it fails
            break
        except InfrastructureError as exc:
            if attempt == 2:
                raise
            warnings.warn(f"starting the running system failed, retrying: {exc}", stacklevel=1)
    try:
        yield system
    finally:
        system.stop()


@pytest.mark.timeout(400)
def test_leader_crash_on_a_running_supervised_system(running: CitySystem, tmp_path: Path) -> None:
    manifest = find_manifest(running.config)
    assert manifest == running.run_dir / MANIFEST_NAME
    before = json.loads(manifest.read_text())
    target = AttachedTarget(manifest)
    with DrillRunner(Drilled(target), tmp_path / "reports") as runner:
        leader = runner.targets().leader
        result = runner.run_round(scenarios.get("leader-crash"), 1)
    broken = [f"{v.invariant}: {v.detail}" for v in result.report.violations]
    assert result.ok, "leader-crash on the running system broke:\n" + "\n".join(broken[:20])
    # The running system's supervisor brought the crashed leader back (a new process).
    assert running.restarts.get(f"post-{leader}") == 1
    after = json.loads(manifest.read_text())
    assert after["posts"][leader]["pid"] != before["posts"][leader]["pid"]
    # The execution log came over MQTT and covers the round.
    data = json.loads(result.files.json.read_text())
    assert data["counts"]["executions"] > 0
    assert result.report.measures.takeover_ms is not None


def test_a_manifest_of_a_stopped_system_is_not_found(tmp_path: Path) -> None:
    stale = tmp_path / "demo-0"
    stale.mkdir()
    (stale / MANIFEST_NAME).write_text(json.dumps({"owner_pid": 2**22 + 12345}))
    config = drill_config().model_copy(update={"run_dir": tmp_path})
    with pytest.raises(FailedPreconditionError, match="no running system"):
        find_manifest(config)

"""`citypost demo` as a user runs it: it starts, shows the city, and stops all it started."""

from __future__ import annotations

from pathlib import Path

import psutil
import pytest

from cluster.cli import main

pytestmark = pytest.mark.integration


def _stack_processes() -> set[int]:
    names = {"etcd", "mosquitto"}
    return {p.pid for p in psutil.process_iter(["name"]) if p.info["name"] in names}


@pytest.mark.timeout(90)
def test_demo_runs_and_stops_everything(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = _stack_processes()
    code = main(
        [
            "demo",
            "--scale",
            "0.005",
            "--speed",
            "600",
            "--duration",
            "4",
            "--set",
            f"run_dir='{tmp_path}'",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "street_lamp" in out and "dead letters" in out
    assert "everything stopped" in out
    assert _stack_processes() == before  # the demo's etcd and mosquitto are gone
    run = next(tmp_path.glob("demo-*"))
    assert (run / "etcd" / "etcd-0.log").exists()
    assert any((run / "mosquitto").glob("*.log"))

"""`citypost demo` as a user runs it: it starts, shows the city, and stops all it started."""

from __future__ import annotations

import socket
from pathlib import Path

import psutil
import pytest

from cluster.cli import main
from cluster.demo import EXIT_PORTS_TAKEN
from cluster.ports import free_port

pytestmark = pytest.mark.integration


def _demo_processes(run_dir: Path) -> set[int]:
    """Processes of this demo: its etcd, mosquitto and post name the run dir; its Ray
    cluster lives in a temp dir named after the post."""
    found = set()
    for process in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(process.info["cmdline"] or ())
        if str(run_dir) in cmdline or "cpray-primary-" in cmdline or "cpray-backup-" in cmdline:
            found.add(process.pid)
    return found


@pytest.mark.timeout(240)
def test_demo_runs_and_stops_everything(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _demo_processes(tmp_path) == set()
    code = main(
        [
            "demo",
            "--scale",
            "0.005",
            "--speed",
            "600",
            "--duration",
            "6",
            "--set",
            f"run_dir='{tmp_path}'",
            "--set",
            f"post.grpc_port={free_port()}",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "street_lamp" in out and "dead letters" in out
    assert "post primary" in out and "post backup" in out and "actors" in out
    # One of the two leads (the table is the leader's), the other stands by.
    assert "leader (epoch" in out and "standby (epoch" in out
    assert "everything stopped" in out
    assert _demo_processes(tmp_path) == set()  # etcd, mosquitto, the post and its Ray: gone
    run = next(tmp_path.glob("demo-*"))
    assert (run / "etcd" / "etcd-0.log").exists()
    assert any((run / "mosquitto").glob("*.log"))


@pytest.mark.timeout(60)
def test_a_demo_whose_ports_are_taken_says_so_in_one_line_and_starts_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as other:  # another demo's post
        other.bind(("127.0.0.1", port))
        other.listen()
        code = main(
            [
                "demo",
                "--duration",
                "1",
                "--set",
                f"run_dir='{tmp_path}'",
                "--set",
                f"post.grpc_port={port}",
            ]
        )
    captured = capsys.readouterr()
    assert code == EXIT_PORTS_TAKEN
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and f"127.0.0.1:{port}" in lines[0] and "in use" in lines[0]
    assert "Traceback" not in captured.err + captured.out
    assert not list(tmp_path.glob("demo-*"))  # nothing started, not even a run dir
    assert _demo_processes(tmp_path) == set()

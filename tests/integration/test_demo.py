"""`citypost demo` as a user runs it: it starts, shows the city, and stops all it started."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from cluster.cli import main
from cluster.demo import EXIT_PORTS_TAKEN
from cluster.ports import free_port

pytestmark = pytest.mark.integration


def _demo_processes(run_dir: Path) -> set[int]:
    """Processes that may be this demo's: its etcd, mosquitto and post name the run dir;
    its Ray clusters live in temp dirs named after the posts (as would another run's,
    hence the test compares with what ran before it)."""
    found = set()
    for process in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(process.info["cmdline"] or ())
        if str(run_dir) in cmdline or "cpray-primary-" in cmdline or "cpray-backup-" in cmdline:
            found.add(process.pid)
    return found


@pytest.mark.timeout(240)
def test_demo_runs_and_stops_everything(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = _demo_processes(tmp_path)  # another run's Ray clusters, if any
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
            "--set",
            f"web.port={free_port()}",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "street_lamp" in out and "dead letters" in out
    assert "post primary" in out and "post backup" in out and "actors" in out
    # One of the two leads (the table is the leader's), the other stands by.
    assert "leader (epoch" in out and "standby (epoch" in out
    assert "everything stopped" in out
    assert "web console: http://127.0.0.1:" in out  # the demo serves the web console too
    # etcd, mosquitto, the posts and their Ray clusters: gone
    assert _demo_processes(tmp_path) - before == set()
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


def _wait_for_ready_posts(demo: subprocess.Popen[bytes], run_dir: Path, timeout_s: float) -> None:
    """Both posts serve: each wrote its ready file (a restarted post writes it anew)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert demo.poll() is None, "the demo exited"
        ready = list(run_dir.glob("demo-*/post-*.ready"))
        if len(ready) == 2 and all(f.read_text().strip() for f in ready):
            return
        time.sleep(0.5)
    raise AssertionError(f"the demo's posts were not ready within {timeout_s:.0f} s")


@pytest.mark.timeout(240)
def test_a_demo_killed_hard_takes_everything_it_started_with_it(tmp_path: Path) -> None:
    # SIGKILL runs none of the demo's clean-up: each child must notice its parent's death.
    demo = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cluster.cli",
            "demo",
            "--scale",
            "0.005",
            "--duration",
            "600",
            "--set",
            f"run_dir='{tmp_path}'",
            "--set",
            f"post.grpc_port={free_port()}",
            "--set",
            f"web.port={free_port()}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    started: dict[int, psutil.Process] = {}
    try:
        _wait_for_ready_posts(demo, tmp_path, 150)
        started.update((p.pid, p) for p in psutil.Process(demo.pid).children(recursive=True))
        names = " ".join(p.name() for p in started.values())
        assert "etcd" in names and "mosquitto" in names and "raylet" in names

        # A post killed hard: its Ray cluster (head, raylet, agents, workers) goes too,
        # and the demo's supervisor starts the post again.
        post = next(p for p in psutil.Process(demo.pid).children() if " post " in _cmd(p))
        post_tree = post.children(recursive=True)
        assert any(p.name() == "raylet" for p in post_tree)
        post.kill()
        _, alive = psutil.wait_procs(post_tree, timeout=60)
        assert [_cmd(p) for p in alive if _is_live(p)] == []
        _wait_for_ready_posts(demo, tmp_path, 150)

        started.update((p.pid, p) for p in psutil.Process(demo.pid).children(recursive=True))
        os.kill(demo.pid, signal.SIGKILL)
        demo.wait(10)
        _, alive = psutil.wait_procs(list(started.values()), timeout=60)
        left = [_cmd(p) for p in alive if _is_live(p)]
        assert left == [], f"left running after the demo was killed: {left}"
        assert _demo_processes(tmp_path) == set()
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
            demo.wait(10)
        for process in started.values():  # what the test found it had started, if left
            if _is_live(process):
                process.kill()


def _is_live(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _cmd(process: psutil.Process) -> str:
    try:
        return f"{process.pid} {' '.join(process.cmdline())[:100]}"
    except psutil.Error:
        return str(process.pid)

"""`citypost drill run` as the SRE team runs it, interrupted mid-fault: SIGTERM while
the leader is frozen still heals (thaws it), stops the drill's own system and
leaves no process of it behind; the exit status says it was interrupted."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from cluster.drill_cli import EXIT_INTERRUPTED

pytestmark = pytest.mark.integration


def _leftovers(needle: str) -> list[tuple[int, str]]:
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        if proc.pid == os.getpid() or proc.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        cmdline = " ".join(proc.info["cmdline"] or ())
        if needle in cmdline:
            found.append((proc.pid, cmdline[:160]))
    return found


@pytest.mark.timeout(300)
def test_sigterm_during_a_fault_heals_and_stops_everything(tmp_path: Path) -> None:
    out = tmp_path / "drill"
    proc = subprocess.Popen(
        [sys.executable, "-m", "cluster.cli", "drill", "run", "leader-freeze", "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.rstrip())
            if "injecting:" in line:
                break
        assert any("injecting:" in line for line in lines), "\n".join(lines)
        time.sleep(0.5)  # the leader is frozen now (the hold is twice the TTL)
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=240)
        lines += rest.splitlines()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    text = "\n".join(lines)
    assert proc.returncode == EXIT_INTERRUPTED, text
    assert "round 1: healing:" in text and "interrupted" in text, text
    assert not (out / "leader-freeze-round-1").exists()  # no report of a half round
    deadline = time.monotonic() + 15
    while _leftovers(str(out)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _leftovers(str(out)), _leftovers(str(out))

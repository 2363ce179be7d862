"""The footprint of this process tree: a busy child shows as CPU, its memory as PSS."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from post.footprint import FootprintSampler

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]


def test_a_busy_child_is_counted() -> None:
    sampler = FootprintSampler()
    alone = sampler.sample()
    child = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.2)
        sampler.sample()  # the child's first sample: its CPU so far is not counted
        time.sleep(1.0)
        busy = sampler.sample()
    finally:
        child.kill()
        child.wait()
    assert busy.processes == alone.processes + 1
    assert busy.pss_bytes > alone.pss_bytes
    assert busy.cpu_cores > 0.3  # a spinning child, generous on a loaded machine

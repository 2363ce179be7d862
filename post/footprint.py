"""What a post costs the machine: memory (PSS) and CPU of its whole process tree.

The tree is the post and every process it started: its Ray head, raylet, GCS,
agents and actor workers. PSS shares each shared page among the processes that
map it, so the figures of several posts add up to the machine's use.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass

import psutil


@dataclass(frozen=True)
class Footprint:
    processes: int
    pss_bytes: int
    cpu_cores: float  # cores used on average since the previous sample (1.0: one core)


class FootprintSampler:
    def __init__(self, pid: int | None = None) -> None:
        self._root = psutil.Process(pid or os.getpid())
        self._cpu: dict[int, float] = {}  # pid -> CPU seconds at the last sample
        self._at = time.monotonic()
        self.latest = Footprint(0, 0, 0.0)

    def sample(self) -> Footprint:
        """Read the tree now (a few ms per process: call it every few seconds)."""
        now = time.monotonic()
        cpu: dict[int, float] = {}
        pss = 0
        with contextlib.suppress(psutil.Error):
            tree = [self._root, *self._root.children(recursive=True)]
            for process in tree:
                with contextlib.suppress(psutil.Error):
                    times = process.cpu_times()
                    cpu[process.pid] = times.user + times.system
                    pss += process.memory_full_info().pss
        used = sum(t - self._cpu.get(pid, t) for pid, t in cpu.items())
        elapsed = now - self._at
        self._cpu, self._at = cpu, now
        self.latest = Footprint(len(cpu), pss, max(0.0, used / elapsed) if elapsed > 0 else 0.0)
        return self.latest

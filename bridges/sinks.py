"""Simple telemetry sinks: the latest reading per device, optionally every batch.

The post's actors are the real sink (a later stage); these serve the demo, the
benchmarks and the tests.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from protos.citypost.v1 import telemetry_pb2


class MemorySink:
    def __init__(self, *, keep_all: bool = False) -> None:
        self._lock = threading.Lock()
        self._keep_all = keep_all
        self.latest: dict[str, telemetry_pb2.Telemetry] = {}
        self.received: list[telemetry_pb2.Telemetry] = []
        self.count = 0

    def submit(self, batch: Sequence[telemetry_pb2.Telemetry]) -> None:
        with self._lock:
            self.count += len(batch)
            for item in batch:
                self.latest[item.dev_eui] = item
            if self._keep_all:
                self.received.extend(batch)

    def snapshot(self) -> list[telemetry_pb2.Telemetry]:
        with self._lock:
            return list(self.received)

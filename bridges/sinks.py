"""Simple telemetry sinks: the latest reading per device, optionally every batch,
and a fan-out to several sinks.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from bridges.edge import TelemetrySink
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

    def last(self, dev_eui: str) -> telemetry_pb2.Telemetry | None:
        with self._lock:
            return self.latest.get(dev_eui)


class FanOutSink:
    """Every batch to each sink in turn; the batch is accepted once all accepted it.

    A retry after a refusal goes to every sink again, so sinks after the first
    must take a batch twice without harm (the latest-value store does).
    """

    def __init__(self, *sinks: TelemetrySink) -> None:
        self._sinks = sinks

    def submit(self, batch: Sequence[telemetry_pb2.Telemetry]) -> None:
        for sink in self._sinks:
            sink.submit(batch)

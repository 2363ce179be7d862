"""Parts of the failover benchmark (bench/failover.py) that are not its driver.

`Sender` is the operator who never stops: lamp group commands one after the
other through the leader-following client, each acknowledgment logged with
the epoch it was accepted under, so a trial can wait for the first one of a
new leader. The rest is pure: the execution log's checks and the figures.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from bench.harness import percentiles_ms
from console.client import CallFailedError, PostClient, PostUnreachableError, RetryPolicy
from fleet.network_server import Execution
from protos.citypost.v1 import assets_pb2, command_pb2, operator_pb2

# Retry at once, nearly: the client's default backoff (up to 2 s, full jitter) would
# measure the console's patience rather than the takeover. The window outlasts any
# takeover the trial waits for.
FAST_RETRY = RetryPolicy(initial_wait_s=0.005, max_wait_s=0.05, write_window_s=30.0)
CALL_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Ack:
    """A SendCommand the API acknowledged, with the epoch its record carries."""

    key: str
    epoch: int
    sent_at: float  # monotonic, when the write was first sent
    acked_at: float  # monotonic


class AckLog:
    """Acknowledgments as they come, and a wait for the first under a newer epoch."""

    def __init__(self) -> None:
        self._acks: list[Ack] = []
        self._cond = threading.Condition()

    def add(self, ack: Ack) -> None:
        with self._cond:
            self._acks.append(ack)
            self._cond.notify_all()

    def acks(self) -> list[Ack]:
        with self._cond:
            return list(self._acks)

    def wait_first(self, *, above_epoch: int, timeout_s: float) -> Ack | None:
        """The first ack with an epoch above `above_epoch`; None if none came in time."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                found = first_above(self._acks, above_epoch)
                left = deadline - time.monotonic()
                if found is not None or left <= 0:
                    return found
                self._cond.wait(left)


def first_above(acks: Iterable[Ack], epoch: int) -> Ack | None:
    return next((a for a in acks if a.epoch > epoch), None)


def group_command(group: str, pct: float) -> command_pb2.Command:
    return command_pb2.Command(
        asset_class=assets_pb2.STREET_LAMP,
        target=command_pb2.Target(group=group),
        set_brightness=command_pb2.SetBrightness(brightness_pct=pct),
    )


class Sender:
    """Sends lamp group commands one at a time on a thread until stopped."""

    def __init__(
        self,
        addresses: Sequence[str],
        groups: Sequence[str],
        prefix: str,
        channel_factory: Callable[[str], grpc.Channel],
        token: Callable[[], str] | None = None,
    ) -> None:
        self._client = PostClient(
            addresses,
            operator="op-bench-failover",
            timeout_s=CALL_TIMEOUT_S,
            retry=FAST_RETRY,
            channel_factory=channel_factory,
            token=token,
        )
        self._groups = list(groups)
        self._prefix = prefix
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"sender-{prefix}", daemon=True)
        self.log = AckLog()
        self.failed: list[str] = []  # not acknowledged within the client's window

    def start(self) -> Sender:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        # A write in its retry window may take that long to give up.
        self._thread.join(timeout=FAST_RETRY.write_window_s + CALL_TIMEOUT_S + 5)
        self._client.close()

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            key = f"{self._prefix}-{n}-{uuid.uuid4().hex[:8]}"
            request = operator_pb2.SendCommandRequest(
                idempotency_key=key,
                command=group_command(self._groups[n % len(self._groups)], float(10 + n % 80)),
                reason="failover benchmark",
            )
            sent_at = time.monotonic()
            try:
                record = self._client.write("SendCommand", request)
            except (CallFailedError, PostUnreachableError) as error:
                self.failed.append(f"{key}: {error}")
                # A post that refuses (not a takeover) would otherwise be asked in a spin.
                self._stop.wait(0.05)
            else:
                self.log.add(Ack(key, int(record.command.epoch), sent_at, time.monotonic()))
            n += 1


# --- the execution log ---------------------------------------------------------------------


def executed_twice(log: Iterable[Execution]) -> int:
    """(device, command) pairs a device executed more than once: must be 0."""
    return sum(1 for n in Counter((e.dev_eui, e.command_id) for e in log).values() if n > 1)


def executed_after_newer_epoch(log: Iterable[Execution]) -> int:
    """Executions under an epoch older than one already executed before them: must be 0
    (a fenced old leader's command reaching a device after its successor's did)."""
    highest = 0
    late = 0
    for execution in log:
        if execution.epoch < highest:
            late += 1
        highest = max(highest, execution.epoch)
    return late


# --- figures -------------------------------------------------------------------------------


def figures(samples_s: Sequence[float], missing: int = 0) -> dict[str, Any]:
    """n, p50, p99, max and mean in ms (nearest rank), the raw samples, and how many trials
    gave no sample (a timeout or an error)."""
    summary = percentiles_ms(samples_s)
    return {
        "n": len(samples_s),
        "p50_ms": summary.get("p50_ms"),
        "p99_ms": summary.get("p99_ms"),
        "max_ms": summary.get("max_ms"),
        "mean_ms": summary.get("mean_ms"),
        "samples_ms": [round(s * 1000, 1) for s in samples_s],
        "missing": missing,
    }


def within(figure: dict[str, Any], target_p50_ms: float, trials: int) -> bool:
    """Every trial asked for gave a sample, and their median is at most the target."""
    p50 = figure.get("p50_ms")
    return figure["n"] == trials and p50 is not None and p50 <= target_p50_ms

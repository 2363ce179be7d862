"""An operator at work during a drill: group commands sent one after the other
through a leader-following client, and a record of what the API acknowledged.

What was acknowledged is evidence for the invariant "every acknowledged write
is present afterwards": each `Acked` names the ledger entry that must exist.
The failover tests use the same sender.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import grpc

from console.client import CallFailedError, PostClient, PostUnreachableError, RetryPolicy
from failover.control_state import ledger_key
from protos.citypost.v1 import assets_pb2, command_pb2, operator_pb2

OPERATOR = "op-drill"


@dataclass(frozen=True)
class Acked:
    """A SendCommand the API acknowledged."""

    key: str  # the idempotency key
    command_id: str
    epoch: int
    group: str
    acked_at: float  # monotonic
    at_ms: int  # wall clock, the drills' time line

    @property
    def ledger_key(self) -> str:
        """Where the control state keeps it (relative to the city's root)."""
        return ledger_key(self.command_id)


def lamp_command(group: str, pct: float) -> command_pb2.Command:
    return command_pb2.Command(
        asset_class=assets_pb2.STREET_LAMP,
        target=command_pb2.Target(group=group),
        set_brightness=command_pb2.SetBrightness(brightness_pct=pct),
    )


def send(
    client: PostClient, key: str, group: str, pct: float, *, ttl_ms: int = 0, reason: str = "drill"
) -> Acked:
    request = operator_pb2.SendCommandRequest(
        idempotency_key=key, command=lamp_command(group, pct), ttl_ms=ttl_ms, reason=reason
    )
    record = client.write("SendCommand", request)
    return Acked(
        key,
        record.command.command_id,
        record.command.epoch,
        group,
        time.monotonic(),
        time.time_ns() // 1_000_000,
    )


class Sender:
    """Sends lamp group commands in a loop on a thread, recording what was acknowledged.

    Each write keeps its idempotency key across the client's retries, over a
    window (`window_s`) longer than a takeover: a write the old leader took
    just before dying is answered by the new one, not done twice."""

    def __init__(
        self,
        addresses: Sequence[str],
        prefix: str,
        *,
        window_s: float,
        groups: Sequence[str],
        interval_s: float = 0.1,
        ttl_ms: int = 0,
        operator: str = OPERATOR,
        channel_factory: Callable[[str], grpc.Channel] = grpc.insecure_channel,
        token: Callable[[], str] | None = None,
    ) -> None:
        if not groups:
            raise ValueError("the sender needs at least one lamp group")
        policy = RetryPolicy(write_window_s=window_s)
        self._window_s = window_s
        self._client = PostClient(
            list(addresses),
            operator=operator,
            timeout_s=5.0,
            retry=policy,
            channel_factory=channel_factory,
            token=token,
        )
        self._prefix = prefix
        self._groups = tuple(groups)
        self._interval_s = interval_s
        self._ttl_ms = ttl_ms
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"sender-{prefix}", daemon=True)
        self.acked: list[Acked] = []
        self.failed: list[tuple[str, str]] = []  # (key, error): not acknowledged

    def start(self) -> Sender:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self._window_s + 30)
        self._client.close()

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            key = f"{self._prefix}-{n}"
            group = self._groups[n % len(self._groups)]
            try:
                self.acked.append(
                    send(self._client, key, group, float(10 + n % 80), ttl_ms=self._ttl_ms)
                )
            except (CallFailedError, PostUnreachableError, grpc.RpcError) as exc:
                self.failed.append((key, repr(exc)))
            n += 1
            self._stop.wait(self._interval_s)

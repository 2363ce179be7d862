"""Waiting for a running system to reach a state: the one polling loop of the drills."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import grpc
import psutil

from citypost.errors import FailedPreconditionError, InfrastructureError

POLL_S = 0.2
T = TypeVar("T")

# What a check may raise while the system is still on its way (a post restarting, a
# process gone, a member not answering): tried again until the deadline.
TRANSIENT = (grpc.RpcError, OSError, psutil.Error, FailedPreconditionError)


def wait_until(what: str, check: Callable[[], T | None], timeout_s: float) -> T:
    """Poll `check` until it returns something truthy and return that; after `timeout_s`
    an InfrastructureError naming `what` and the last error seen."""
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while True:
        try:
            got = check()
            if got:
                return got
        except TRANSIENT as exc:
            last_error = exc
        if time.monotonic() >= deadline:
            why = f" (last error: {last_error})" if last_error else ""
            raise InfrastructureError(f"{what}: not within {timeout_s:g} s{why}")
        time.sleep(POLL_S)

"""Dead letters: what the edge could not decode, kept whole with its reason.

A dead letter is published as the JSON mapping of citypost.v1.DeadLetter (raw
payload in base64), so a person can read the topic with mosquitto_sub and a
program can parse it with the proto.
"""

from __future__ import annotations

import threading
from collections import Counter

from google.protobuf import json_format

from citypost.errors import DeadLetterReason, DecodeError
from protos.citypost.v1 import dead_letter_pb2


def make_dead_letter(
    error: DecodeError,
    *,
    topic: str,
    payload: bytes,
    edge: str,
    received_at_ms: int,
    keep_bytes: int,
) -> dead_letter_pb2.DeadLetter:
    return dead_letter_pb2.DeadLetter(
        reason=error.reason.value,
        detail=error.message,
        topic=topic,
        payload=payload[:keep_bytes],
        payload_size=len(payload),
        received_at_ms=received_at_ms,
        edge=edge,
    )


def to_json(letter: dead_letter_pb2.DeadLetter) -> bytes:
    return json_format.MessageToJson(letter, indent=None).encode()


def from_json(raw: bytes | str) -> dead_letter_pb2.DeadLetter:
    return json_format.Parse(raw, dead_letter_pb2.DeadLetter())


class DeadLetterCounter:
    """Counts by reason; safe to bump from the MQTT thread and read from another."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[DeadLetterReason] = Counter()

    def add(self, reason: DeadLetterReason) -> None:
        with self._lock:
            self._counts[reason] += 1

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return {reason.value: n for reason, n in self._counts.items()}

    def total(self) -> int:
        with self._lock:
            return sum(self._counts.values())

"""What the downlink gate tells the posts about the radio: each gateway's airtime.

The gate publishes it retained on `citypost/<city>/gate/airtime` every few
seconds (JSON); each post keeps the latest and answers `PostAdmin.GetAirtime`
from it, so the console shows, per gateway and sub-band, the airtime used over
the last hour against the duty cycle's budget, and how many commands wait.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import orjson

from bridges.airtime import Usage
from citypost.errors import DeadLetterReason, DecodeError

STATUS_VERSION = 1


def airtime_topic(city: str) -> str:
    return f"citypost/{city}/gate/airtime"


@dataclass(frozen=True, slots=True)
class GateAirtime:
    as_of_ms: int  # wall clock of the gate's reading
    window_s: float  # the duty cycle's observation window
    usage: tuple[Usage, ...]  # per gateway and sub-band, what the gate counted
    held: int  # downlinks waiting for a gateway's duty cycle
    refused: int  # refused at once since the gate started: no airtime before their deadline

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "version": STATUS_VERSION,
                "as_of_ms": self.as_of_ms,
                "window_s": self.window_s,
                "usage": [list(u) for u in self.usage],
                "held": self.held,
                "refused": self.refused,
            }
        )


def parse_airtime(raw: bytes) -> GateAirtime:
    """DecodeError(BAD_ENVELOPE) if it is not a status this version writes."""
    try:
        data = orjson.loads(raw)
        if data["version"] != STATUS_VERSION:
            raise ValueError(f"version {data['version']!r}")
        usage: Sequence[Sequence[object]] = data["usage"]
        return GateAirtime(
            as_of_ms=int(data["as_of_ms"]),
            window_s=float(data["window_s"]),
            usage=tuple(
                Usage(str(g), str(band), float(used), float(budget))  # type: ignore[arg-type]
                for g, band, used, budget in usage
            ),
            held=int(data["held"]),
            refused=int(data["refused"]),
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise DecodeError(
            DeadLetterReason.BAD_ENVELOPE, f"not a gate airtime status: {exc}"
        ) from exc

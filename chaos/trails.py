"""Evidence built up from observations as a drill goes, as pure accumulators.

`TermBook` turns the leader key's changes, as the drill saw them, into
`LeaderTerm`s; `telemetry_from_samples` turns the posts' uplink counters, read
every second, into arrival times per asset class. The drill's collectors
(chaos/collect.py) feed them; nothing here does I/O.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from chaos.evidence import LeaderTerm, Telemetry


class TermBook:
    """The leader key's history: one term per epoch, from when it was seen to when it was
    seen gone (deleted, or replaced by another epoch). Times are the drill's observations,
    so a change that happened while etcd was out of reach is dated when it was read."""

    def __init__(self) -> None:
        self._closed: list[LeaderTerm] = []
        self._open: LeaderTerm | None = None

    def observe(self, at_ms: int, epoch: int | None, post: str = "") -> None:
        """The key at `at_ms`: held by `post` under `epoch`, or absent (epoch None)."""
        current = self._open
        if current is not None and current.epoch == epoch:
            return
        if current is not None:
            self._closed.append(LeaderTerm(current.epoch, current.post, current.from_ms, at_ms))
            self._open = None
        if epoch is not None:
            self._open = LeaderTerm(epoch, post, at_ms)

    def terms(self) -> tuple[LeaderTerm, ...]:
        return (*self._closed, *(() if self._open is None else (self._open,)))

    def current(self) -> LeaderTerm | None:
        return self._open


@dataclass(frozen=True)
class CounterSample:
    """One post's uplink counters per asset class, read at `at_ms` (since its start)."""

    at_ms: int
    post: str
    uplinks_by_class: Mapping[str, int]


def telemetry_from_samples(
    samples: Iterable[CounterSample], from_ms: int | None = None
) -> tuple[Telemetry, ...]:
    """Arrival times per asset class: each uplink a post's counter grew by since that
    post's previous sample arrives at the sample's time (one entry per uplink, so rates
    are real). Posts are merged (the city's view: a class is seen if any post took its
    uplinks). A counter that went down (the post restarted) counts its new value as
    growth from zero. Samples before `from_ms` serve only as baselines."""
    last: dict[str, Mapping[str, int]] = {}
    arrivals: dict[str, list[int]] = defaultdict(list)
    for sample in sorted(samples, key=lambda s: s.at_ms):
        before = last.get(sample.post)
        last[sample.post] = sample.uplinks_by_class
        if from_ms is not None and sample.at_ms < from_ms:
            continue
        for cls, n in sample.uplinks_by_class.items():
            arrivals.setdefault(cls, [])
            if before is None:
                continue
            prev = before.get(cls, 0)
            grew = n - prev if n >= prev else n
            arrivals[cls].extend([sample.at_ms] * grew)
    return tuple(Telemetry(cls, tuple(sorted(at))) for cls, at in sorted(arrivals.items()))


def recent_uplinks(
    samples: Iterable[CounterSample], post: str, window_ms: int, now_ms: int
) -> dict[str, int]:
    """Uplinks per class one post took in the last `window_ms`: the growth of its
    counters between consecutive samples within the window (a counter that went down,
    the post restarted, grew by its new value); empty with fewer than two samples."""
    mine = sorted(
        (s for s in samples if s.post == post and now_ms - window_ms <= s.at_ms <= now_ms),
        key=lambda s: s.at_ms,
    )
    if len(mine) < 2:
        return {}
    out: dict[str, int] = {}
    for before, after in itertools.pairwise(mine):
        for cls, n in after.uplinks_by_class.items():
            prev = before.uplinks_by_class.get(cls, 0)
            out[cls] = out.get(cls, 0) + (n - prev if n >= prev else n)
    return out

"""The simulated clock: a start instant and a speed factor over a monotonic clock.

Posts and the simulated city share one: the same start, speed and origin (the
real instant the clock reads `start`) from config, so dusk falls for every
process at once however late each started. Safety timeouts never use it: they
stay on real monotonic time.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from citypost.config import SimConfig
from citypost.errors import ConfigError


class SimClock:
    def __init__(
        self,
        start: datetime,
        speed: float,
        monotonic: Callable[[], float] = time.monotonic,
        *,
        origin: datetime | None = None,
    ) -> None:
        if speed <= 0:
            raise ConfigError(f"sim speed must be > 0, got {speed}")
        # A naive start is taken as UTC; everything after is aware UTC.
        self._start = start.replace(tzinfo=UTC) if start.tzinfo is None else start.astimezone(UTC)
        self._start_ts = self._start.timestamp()
        self.speed = speed
        self._monotonic = monotonic
        self._origin = monotonic()
        if origin is not None:
            # Anchored to a shared real instant, ticking on this process's monotonic clock.
            self._origin -= time.time() - origin.timestamp()

    @classmethod
    def of(cls, sim: SimConfig) -> SimClock:
        """The clock the config describes: now if it names no start, anchored to its
        origin if it names one."""
        return cls(sim.start_or_now(), sim.speed, origin=sim.origin)

    @property
    def start(self) -> datetime:
        return self._start

    def now_ts(self) -> float:
        """Simulated POSIX seconds."""
        return self._start_ts + (self._monotonic() - self._origin) * self.speed

    def now(self) -> datetime:
        """Simulated time, aware, UTC."""
        return self._start + timedelta(seconds=(self._monotonic() - self._origin) * self.speed)

    def now_ms(self) -> int:
        return int(self.now_ts() * 1000)

    def sim_seconds(self, real_s: float) -> float:
        """Simulated seconds that pass in `real_s` real seconds."""
        return real_s * self.speed

    def real_seconds(self, sim_s: float) -> float:
        """Real seconds it takes for `sim_s` simulated seconds to pass."""
        return sim_s / self.speed

"""Supervision decisions, pure: restart intensity and what to do about each actor.

As in Erlang/OTP, a supervisor restarts a dead child, but if more than
`max_restarts` restarts happen within `window_s` seconds it gives up and
escalates (here: the post resigns leadership). Time is a monotonic float in
seconds, passed in; nothing here reads a clock or does I/O.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from citypost.errors import ConfigError, InvalidArgumentError


class Verdict(StrEnum):
    RESTART_OK = "restart_ok"
    ESCALATE = "escalate"


def _check_now(now: float) -> None:
    if not math.isfinite(now):
        raise InvalidArgumentError(f"now must be a finite number of seconds, got {now!r}")


def _check_intensity(max_restarts: int, window_s: float) -> None:
    if max_restarts < 0:
        raise ConfigError(f"max_restarts must be >= 0, got {max_restarts}")
    if not (math.isfinite(window_s) and window_s > 0):
        raise ConfigError(f"window_s must be > 0, got {window_s!r}")


def restarts_within(restart_times: Iterable[float], now: float, window_s: float) -> int:
    """How many of `restart_times` fall in the last `window_s` seconds before `now`."""
    return sum(1 for t in restart_times if now - window_s < t <= now)


class RestartIntensity:
    """Counts restarts in a sliding window; the verdict turns to ESCALATE past the limit.

    `record(now)` says whether the restart just made keeps the supervisor
    within "at most `max_restarts` restarts in `window_s` seconds".
    max_restarts=0 escalates on the first restart.
    """

    def __init__(self, max_restarts: int, window_s: float) -> None:
        _check_intensity(max_restarts, window_s)
        self.max_restarts = max_restarts
        self.window_s = window_s
        self._times: deque[float] = deque()

    def __repr__(self) -> str:
        return (
            f"RestartIntensity(max_restarts={self.max_restarts}, window_s={self.window_s:g}, "
            f"recent={len(self._times)})"
        )

    @property
    def restart_times(self) -> tuple[float, ...]:
        """Restarts still inside the window at the last `record`, oldest first."""
        return tuple(self._times)

    def record(self, now: float) -> Verdict:
        """Record one restart at `now`; times must not go backwards."""
        _check_now(now)
        if self._times and now < self._times[-1]:
            raise InvalidArgumentError(
                f"restart times must not go backwards: {now!r} < {self._times[-1]!r}"
            )
        self._times.append(now)
        self._forget_before(now)
        return self.verdict(now)

    def verdict(self, now: float) -> Verdict:
        """The verdict at `now` without recording a restart."""
        _check_now(now)
        within = restarts_within(self._times, now, self.window_s)
        return Verdict.ESCALATE if within > self.max_restarts else Verdict.RESTART_OK

    def _forget_before(self, now: float) -> None:
        while self._times and self._times[0] <= now - self.window_s:
            self._times.popleft()


@dataclass(frozen=True)
class SupervisionPolicy:
    """Timing of a supervisor: ping after `ping_interval_s` of silence, restart after
    `deadline_s`, escalate past `max_restarts` restarts in `window_s`."""

    ping_interval_s: float
    deadline_s: float
    max_restarts: int
    window_s: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.ping_interval_s) and self.ping_interval_s > 0):
            raise ConfigError(f"ping_interval_s must be > 0, got {self.ping_interval_s!r}")
        # An actor must get at least one ping before it is declared dead.
        if not (math.isfinite(self.deadline_s) and self.deadline_s > self.ping_interval_s):
            raise ConfigError(
                f"deadline_s ({self.deadline_s!r}) must be greater than "
                f"ping_interval_s ({self.ping_interval_s!r})"
            )
        _check_intensity(self.max_restarts, self.window_s)


@dataclass(frozen=True)
class ActorHealth:
    """What the supervisor knows of one actor (monotonic seconds).

    `last_ok` is the last successful answer; after ordering a restart the loop
    sets it to the restart time, so the new incarnation gets a full deadline.
    `last_ping` is when the last ping was sent (None: never).
    """

    name: str
    last_ok: float
    last_ping: float | None = None


@dataclass(frozen=True)
class HealthView:
    """Everything `decide` looks at: the policy, the actors, the recent restarts."""

    policy: SupervisionPolicy
    actors: tuple[ActorHealth, ...]
    restart_times: tuple[float, ...] = ()


@dataclass(frozen=True)
class Ping:
    name: str


@dataclass(frozen=True)
class Restart:
    name: str
    silent_for_s: float


@dataclass(frozen=True)
class Escalate:
    reason: str


SupervisorAction = Ping | Restart | Escalate


def decide(view: HealthView, now: float) -> list[SupervisorAction]:
    """The actions due at `now`: restarts first, then pings, each in name order.

    - silent for `deadline_s` or more: Restart;
    - silent for `ping_interval_s` or more and not pinged in the last
      `ping_interval_s`: Ping;
    - if the restarts due would exceed the intensity (recent restarts + new
      ones > max_restarts within the window): a single Escalate instead of
      them, and no pings (the post is giving up its actors).
    """
    _check_now(now)
    _check_unique(view.actors)
    policy = view.policy
    restarts: list[Restart] = []
    pings: list[Ping] = []
    for actor in sorted(view.actors, key=lambda a: a.name):
        silent = max(0.0, now - actor.last_ok)
        if silent >= policy.deadline_s:
            restarts.append(Restart(actor.name, silent))
            continue
        last_heard_or_asked = max(actor.last_ok, actor.last_ping or -math.inf)
        if silent >= policy.ping_interval_s and now - last_heard_or_asked >= policy.ping_interval_s:
            pings.append(Ping(actor.name))
    if restarts:
        recent = restarts_within(view.restart_times, now, policy.window_s)
        if recent + len(restarts) > policy.max_restarts:
            names = ", ".join(r.name for r in restarts)
            return [
                Escalate(
                    f"{len(restarts)} actor(s) to restart ({names}) after {recent} restart(s) "
                    f"in the last {policy.window_s:g} s exceeds {policy.max_restarts}"
                )
            ]
    actions: list[SupervisorAction] = [*restarts, *pings]
    return actions


def _check_unique(actors: Sequence[ActorHealth]) -> None:
    seen: set[str] = set()
    for actor in actors:
        if actor.name in seen:
            raise InvalidArgumentError(f"actor {actor.name!r} appears twice in the health view")
        seen.add(actor.name)
        for value in (actor.last_ok, actor.last_ping):
            if value is not None and not math.isfinite(value):
                raise InvalidArgumentError(f"actor {actor.name!r}: times must be finite")

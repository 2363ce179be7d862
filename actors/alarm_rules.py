"""Alarm rules in one place (ISA-18.2 practice): what turns a policy's condition into an alarm.

A policy says what it sees: `RaiseAlarm` while a condition holds, `ClearAlarm`
when it is gone. `AlarmShaper` stands between it and the post and applies one
`AlarmRule` per alarm type:

- delay-on: the condition must hold `delay_on_s` before the alarm is raised (a
  condition gone sooner raises nothing);
- delay-off: it must be gone `delay_off_s` before the alarm clears (a condition
  back sooner leaves the alarm raised, untouched: no clear-and-raise again);
- chattering: a condition that came back `chatter_count` times within
  `chatter_window_s` marks its alarm chattering; the alarm is raised once (at
  once, whatever delay-on says: it is real) and held raised until the condition
  has been gone `chatter_stable_s`.

Updates of a raised alarm (another detail, another severity) pass through.
Time is the policy's (simulated in a demo), in milliseconds; `tick` releases
what a delay held. Pure, no I/O; its state is a JSON-able snapshot, so a
restarted actor goes on where the last one was.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from actors.decisions import ClearAlarm, Decision, RaiseAlarm
from citypost.config import AlarmRuleConfig, AlarmsConfig
from citypost.errors import InvalidArgumentError

Key = tuple[str, str]  # (originator, alarm type)


@dataclass(frozen=True)
class AlarmRule:
    delay_on_s: float = 0.0
    delay_off_s: float = 0.0
    chatter_count: int = 3  # condition onsets within the window that make it chattering
    chatter_window_s: float = 3600.0
    chatter_stable_s: float = 1800.0  # gone this long before a chattering alarm clears

    def __post_init__(self) -> None:
        if min(self.delay_on_s, self.delay_off_s) < 0:
            raise InvalidArgumentError("delay_on_s and delay_off_s must be >= 0")
        if self.chatter_count < 2:
            raise InvalidArgumentError("chatter_count must be at least 2")
        if self.chatter_window_s <= 0 or self.chatter_stable_s < 0:
            raise InvalidArgumentError("chatter_window_s must be > 0, chatter_stable_s >= 0")

    @classmethod
    def of(cls, config: AlarmRuleConfig) -> AlarmRule:
        return cls(**config.model_dump())


def rules_of(config: AlarmsConfig) -> tuple[dict[str, AlarmRule], AlarmRule]:
    """The rule of every type config names (its defaults included), and the default rule."""
    table = {name: AlarmRule.of(rule) for name, rule in config.rule_table().items()}
    return table, AlarmRule.of(config.default_rule)


DEFAULT_RULE = AlarmRule()
# Per type, where the default does not fit: config's defaults (citypost.config).
DEFAULT_RULES: Mapping[str, AlarmRule] = rules_of(AlarmsConfig())[0]


@dataclass
class _Track:
    """One (originator, type): its condition and what the post has been told."""

    condition: bool = False
    since_ms: int = 0  # when the condition last changed
    raised: bool = False  # the post holds this alarm raised
    chattering: bool = False
    onsets: list[int] = field(default_factory=list)  # condition onsets within the window
    last: RaiseAlarm | None = None  # the latest raise the policy asked for

    def to_json(self) -> dict[str, Any]:
        last = self.last
        return {
            "condition": self.condition,
            "since_ms": self.since_ms,
            "raised": self.raised,
            "chattering": self.chattering,
            "onsets": list(self.onsets),
            "last": None if last is None else [last.severity, last.detail],
        }


class AlarmShaper:
    @classmethod
    def of(cls, config: AlarmsConfig) -> AlarmShaper:
        return cls(*rules_of(config))

    def __init__(
        self, rules: Mapping[str, AlarmRule] | None = None, default: AlarmRule = DEFAULT_RULE
    ) -> None:
        self._rules = dict(rules or {})
        self._default = default
        self._tracks: dict[Key, _Track] = {}

    def rule(self, alarm_type: str) -> AlarmRule:
        return self._rules.get(alarm_type, self._default)

    def shape(self, decisions: Iterable[Decision], now_ms: int) -> list[Decision]:
        """The policy's decisions with its alarm conditions turned into alarms; every
        other decision passes through in order."""
        out: list[Decision] = []
        for decision in decisions:
            if isinstance(decision, RaiseAlarm):
                out.extend(self._condition_on(decision, now_ms))
            elif isinstance(decision, ClearAlarm):
                out.extend(self._condition_off(decision, now_ms))
            else:
                out.append(decision)
        return out

    def tick(self, now_ms: int) -> list[Decision]:
        """The raises and clears whose delay has run out by `now_ms`."""
        out: list[Decision] = []
        for (originator, alarm_type), track in list(self._tracks.items()):
            rule = self.rule(alarm_type)
            held_ms = now_ms - track.since_ms
            if track.condition and not track.raised and held_ms >= rule.delay_on_s * 1000:
                out.append(self._raise(track))
            elif not track.condition and track.raised and held_ms >= self._off_ms(rule, track):
                out.append(self._clear(originator, alarm_type, track, held_ms))
            if not track.condition and not track.raised and not self._recent(track, rule, now_ms):
                del self._tracks[(originator, alarm_type)]  # nothing left to remember
        return out

    def chattering(self) -> list[Key]:
        return sorted(k for k, t in self._tracks.items() if t.chattering)

    # --- conditions -----------------------------------------------------------------------

    def _condition_on(self, decision: RaiseAlarm, now_ms: int) -> list[Decision]:
        key = (decision.originator, decision.type)
        rule = self.rule(decision.type)
        track = self._tracks.setdefault(key, _Track())
        track.last = decision
        if track.condition:
            # Held already: an update of a raised alarm goes through; a pending one waits.
            if not track.raised:
                return []
            return [replace(decision, chattering=True) if track.chattering else decision]
        track.condition, track.since_ms = True, now_ms
        window_ms = rule.chatter_window_s * 1000
        track.onsets = [t for t in track.onsets if now_ms - t < window_ms] + [now_ms]
        if track.raised:
            # Back before delay-off ran out: the alarm never cleared. Coming back this
            # often is chattering: the alarm says so once and waits to be stable.
            if len(track.onsets) >= rule.chatter_count and not track.chattering:
                track.chattering = True
                return [self._raise(track)]
            return []
        if len(track.onsets) >= rule.chatter_count:
            track.chattering = True
            return [self._raise(track)]
        if rule.delay_on_s <= 0:
            return [self._raise(track)]
        return []

    def _condition_off(self, decision: ClearAlarm, now_ms: int) -> list[Decision]:
        key = (decision.originator, decision.type)
        track = self._tracks.get(key)
        if track is None:
            # Nothing known: the post may hold an alarm from before this actor (a
            # restart without a snapshot); let the lenient clear through.
            return [decision]
        if not track.condition:
            return []
        track.condition, track.since_ms = False, now_ms
        rule = self.rule(decision.type)
        if track.raised and self._off_ms(rule, track) <= 0:
            return [self._clear(decision.originator, decision.type, track, 0, decision.detail)]
        return []

    # --- inside ---------------------------------------------------------------------------

    @staticmethod
    def _off_ms(rule: AlarmRule, track: _Track) -> float:
        delay = (
            max(rule.delay_off_s, rule.chatter_stable_s) if track.chattering else rule.delay_off_s
        )
        return delay * 1000

    @staticmethod
    def _recent(track: _Track, rule: AlarmRule, now_ms: int) -> bool:
        return any(now_ms - t < rule.chatter_window_s * 1000 for t in track.onsets)

    @staticmethod
    def _raise(track: _Track) -> RaiseAlarm:
        assert track.last is not None
        track.raised = True
        if not track.chattering:
            return track.last
        count = len(track.onsets)
        return replace(
            track.last,
            detail=f"{track.last.detail} (chattering: {count} times within the window; "
            "held until stable)",
            chattering=True,
        )

    @staticmethod
    def _clear(
        originator: str, alarm_type: str, track: _Track, gone_ms: float, detail: str = ""
    ) -> ClearAlarm:
        track.raised = False
        was_chattering, track.chattering = track.chattering, False
        if not detail:
            detail = f"condition gone for {gone_ms / 60_000:.0f} min"
            if was_chattering:
                detail += "; stable again after chattering"
        return ClearAlarm(originator, alarm_type, detail)

    # --- state ----------------------------------------------------------------------------

    def snapshot(self) -> list[dict[str, Any]]:
        return [
            {"originator": o, "type": t, **track.to_json()}
            for (o, t), track in sorted(self._tracks.items())
        ]

    def restore(self, snapshot: Sequence[Mapping[str, Any]]) -> None:
        tracks: dict[Key, _Track] = {}
        try:
            for item in snapshot:
                originator, alarm_type = str(item["originator"]), str(item["type"])
                last = item["last"]
                tracks[(originator, alarm_type)] = _Track(
                    condition=bool(item["condition"]),
                    since_ms=int(item["since_ms"]),
                    raised=bool(item["raised"]),
                    chattering=bool(item["chattering"]),
                    onsets=[int(t) for t in item["onsets"]],
                    last=None
                    if last is None
                    else RaiseAlarm(originator, alarm_type, int(last[0]), str(last[1])),  # type: ignore[arg-type]
                )
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise InvalidArgumentError(f"snapshot: not an alarm shaper's ({exc!r})") from exc
        self._tracks = tracks

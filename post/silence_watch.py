"""Silence as an alarm: judged in the data's own time, and filed under its cause.

A device is silent once `missed_reports` of its own reporting periods (the
registry's `report_interval_s`) plus a grace pass with no uplink from it. The
time that passes is the stream's (the latest uplink time the post has seen, a
watermark), not the post's clock: a network server or a simulated city that
falls behind delays every uplink alike and makes no device silent, and a
post that starts before the devices waits for them to speak.

Silence often has one cause upstream, judged first:

- the broker: the edge's connection lost for `broker_lost_after_s` (real seconds);
- the network server: the edge connected, yet no uplink at all for
  `network_server_silent_after_s` (real seconds: a silent stream has no time);
- a gateway: nothing came through it for its expected span, `gateway_expected_uplinks`
  of its devices' summed rates (at least `gateway_min_s`), in stream time.

While a cause holds, the silence of the devices behind it (all of them for the
broker and the network server, judged on the post's clock since the stream has
stopped; a gateway's own for a gateway) is raised *suppressed* under the
cause's alarm: kept, counted on the cause, listed under it, not annunciated.
A device whose gateway has gone quiet too (no one heard through it for a
minute) waits for the gateway's verdict rather than raising on its own. When a cause clears, the
devices behind it are timed afresh from then: those heard again clear, those
still silent a whole threshold later raise their own alarms. So are all devices
after the stream stopped for `stream_gap_s` (a broker restart too short for an
alarm): the uplinks lost in a gap say nothing about the devices.

Pure: uplinks (`submit`, from the edge's thread) and real time (`evaluate`, from
the post's loop) in; `RaiseAlarm` / `ClearAlarm` out, shaped by the alarm rules
(`actors.alarm_rules`). A lock guards the state between the two threads.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from actors.alarm_rules import AlarmShaper
from actors.decisions import ClearAlarm, Decision, RaiseAlarm
from bridges.registry import DeviceRegistry
from citypost.config import SilenceConfig
from protos.citypost.v1 import operations_pb2, telemetry_pb2

DEVICE_SILENT = "device_silent"
GATEWAY_SILENT = "gateway_silent"
NETWORK_SERVER_SILENT = "network_server_silent"
BROKER_LOST = "broker_connection_lost"
TYPES = frozenset({DEVICE_SILENT, GATEWAY_SILENT, NETWORK_SERVER_SILENT, BROKER_LOST})

NETWORK_SERVER = "network-server"
BROKER = "broker"
GATEWAY_PREFIX = "gateway/"

Cause = tuple[str, str]  # (originator, type) of a cause's alarm
_NS_CAUSE: Cause = (NETWORK_SERVER, NETWORK_SERVER_SILENT)
_BROKER_CAUSE: Cause = (BROKER, BROKER_LOST)
_STREAM_GAP: Cause = ("", "stream_gap")  # not an alarm: restarts every device's clock

# A gateway that heard no one for this long (the city's time) may be down: the silent
# devices behind it wait for its verdict rather than raise on their own.
_QUIET_GATEWAY_MS = 60_000

# The stream's effective speed is measured over this much real time.
SPEED_WINDOW_S = 60.0


def gateway_cause(gateway_id: str) -> Cause:
    return (GATEWAY_PREFIX + gateway_id, GATEWAY_SILENT)


@dataclass(slots=True)
class _Device:
    threshold_ms: int  # silent after this long without an uplink
    period_s: float
    last_ms: int | None = None  # stream time of its latest uplink
    last_real: float | None = None  # when that uplink arrived (monotonic)
    since_ms: int | None = None  # timed from here when never heard, or after a cause cleared
    # The gateway it is first heard through, its best one ("" unknown or IP): a device
    # rerouted while that gateway is down still counts for it and waits on its verdict.
    gateway: str = ""
    raised: Cause | None = None  # its alarm is held under this cause
    alarmed: bool = False  # the watch holds its silence alarm (own or suppressed)


@dataclass(slots=True)
class _Gateway:
    last_ms: int = 0
    last_real: float = 0.0  # when its latest uplink arrived (monotonic)
    rate_per_s: float = 0.0  # the uplinks per second of the devices it is home to, summed


@dataclass(frozen=True)
class StreamFigures:
    stream_time_ms: int  # 0: no uplink seen yet
    effective_speed: float  # stream seconds per real second over the last minute; 0 unknown
    causes: tuple[Cause, ...]  # causes active now
    suppressed: int  # device alarms held under a cause now


@dataclass
class _Infra:
    connected_since: float | None = None
    lost_since: float | None = None
    last_uplink_real: float | None = None
    samples: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=256))


class SilenceWatch:
    def __init__(
        self,
        registry: DeviceRegistry,
        config: SilenceConfig,
        shaper: AlarmShaper,
        *,
        clock_ms: Callable[[], int],
        period_factor: float = 1.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._config = config
        self._shaper = shaper
        self._clock_ms = clock_ms  # the post's clock: caps the stream, judges a stopped one
        self._monotonic = monotonic  # real time, as `evaluate` is given it
        self._lock = threading.Lock()
        self._devices: dict[str, _Device] = {}
        for device in registry:
            # The simulated city stretches every interval by sim.interval_factor.
            period = (device.report_interval_s or config.default_period_s) * period_factor
            threshold = period * config.missed_reports + config.grace_s
            self._devices[device.dev_eui] = _Device(int(threshold * 1000), period)
        self._gateways: dict[str, _Gateway] = {}
        self._stream_ms: int | None = None
        self._infra = _Infra()
        self._causes: set[Cause] = set()
        self._cleared_at: dict[Cause, int] = {}
        self._first_ms: int | None = None  # devices never heard are timed from here
        self._suppressed = 0  # device silences under a cause at the last evaluate
        self._first_real = 0.0  # and, in real time, from here

    # --- the edge's thread ------------------------------------------------------------------

    def submit(self, batch: Sequence[telemetry_pb2.Telemetry]) -> None:
        """Uplinks as the edge decoded them (a TelemetrySink)."""
        if not batch:
            return
        cap = self._clock_ms() + 60_000  # a device's clock ahead of the city's moves nothing
        with self._lock:
            real_now = self._monotonic()
            top = self._stream_ms or 0
            for item in batch:
                device = self._devices.get(item.dev_eui)
                at = min(item.observed_at_ms, cap)
                if at > top:
                    top = at
                if device is None:
                    continue
                if device.last_ms is None or at > device.last_ms:
                    device.last_ms = at
                device.last_real = real_now
                if item.gateway_id:
                    gateway = self._gateways.get(item.gateway_id)
                    if gateway is None:
                        gateway = self._gateways[item.gateway_id] = _Gateway()
                    if not device.gateway:
                        device.gateway = item.gateway_id
                        gateway.rate_per_s += 1.0 / device.period_s
                    if at > gateway.last_ms:
                        gateway.last_ms = at
                    gateway.last_real = real_now
            self._stream_ms = top
            if self._first_ms is None:
                self._first_ms, self._first_real = top, real_now
            last = self._infra.last_uplink_real
            if last is not None and real_now - last > self._config.stream_gap_s:
                self._cleared_at[_STREAM_GAP] = top
            self._infra.last_uplink_real = real_now

    # --- the post's loop --------------------------------------------------------------------

    def evaluate(self, real_now: float, broker_connected: bool) -> list[Decision]:
        """The silence alarms to raise, update and clear now (`real_now`: monotonic s)."""
        with self._lock:
            causes = self._infra_causes(real_now, broker_connected)
            stream = self._stream_ms
            if stream is None:
                return self._shaped(self._cause_decisions(causes, {}), [])
            self._infra.samples.append((real_now, stream))
            # While the stream has stopped, time goes on on the post's clock.
            ref = max(stream, self._clock_ms()) if causes else stream
            silent_gateways = self._silent_gateways(stream, real_now)
            causes |= {gateway_cause(g) for g in silent_gateways}
            device_decisions, counts = self._judge_devices(ref, real_now, causes, silent_gateways)
            self._suppressed = sum(counts.values())
            return self._shaped(self._cause_decisions(causes, counts), device_decisions)

    def figures(self, real_now: float) -> StreamFigures:
        with self._lock:
            stream = self._stream_ms or 0
            speed = 0.0
            samples = [(t, s) for t, s in self._infra.samples if real_now - t <= SPEED_WINDOW_S]
            if len(samples) >= 2 and samples[-1][0] > samples[0][0]:
                (t0, s0), (t1, s1) = samples[0], samples[-1]
                speed = (s1 - s0) / 1000 / (t1 - t0)
            return StreamFigures(stream, speed, tuple(sorted(self._causes)), self._suppressed)

    def reconcile(self, active: Iterable[tuple[str, str]]) -> list[Decision]:
        """Clears for silence alarms the control state holds active (raised by a post that
        led before) whose condition this watch has seen end: a device or a gateway heard
        within its threshold, the stream flowing again. Nothing it cannot vouch for (a
        post that has just started knows little yet) is cleared."""
        with self._lock:
            stream = self._stream_ms
            if stream is None:
                return []
            out: list[Decision] = []
            for originator, alarm_type in active:
                if self._seen_ended(originator, alarm_type, stream):
                    out.append(ClearAlarm(originator, alarm_type, "no longer silent"))
            return out

    def _seen_ended(self, originator: str, alarm_type: str, stream: int) -> bool:
        if (originator, alarm_type) in self._causes:
            return False
        if alarm_type == DEVICE_SILENT:
            device = self._devices.get(originator)
            return (
                device is not None
                and not device.alarmed
                and device.last_ms is not None
                and stream - device.last_ms < device.threshold_ms
            )
        if alarm_type == GATEWAY_SILENT:
            gateway = self._gateways.get(originator.removeprefix(GATEWAY_PREFIX))
            return (
                gateway is not None and stream - gateway.last_ms < self._config.gateway_min_s * 1000
            )
        return alarm_type in (NETWORK_SERVER_SILENT, BROKER_LOST)  # the stream flows

    # --- inside (lock held) -----------------------------------------------------------------

    def _infra_causes(self, real_now: float, connected: bool) -> set[Cause]:
        infra, config = self._infra, self._config
        causes: set[Cause] = set()
        if connected:
            infra.lost_since = None
            if infra.connected_since is None:
                infra.connected_since = real_now
            # Judged once the stream has begun: before its first uplink the city may not
            # have started yet (the demo starts the devices once both posts are up).
            if infra.last_uplink_real is not None:
                quiet_since = max(infra.last_uplink_real, infra.connected_since)
                if real_now - quiet_since >= config.network_server_silent_after_s:
                    causes.add(_NS_CAUSE)
        else:
            infra.connected_since = None
            if infra.lost_since is None:
                infra.lost_since = real_now
            if real_now - infra.lost_since >= config.broker_lost_after_s:
                causes.add(_BROKER_CAUSE)
        return causes

    def _silent_gateways(self, stream: int, real_now: float) -> set[str]:
        config = self._config
        silent: set[str] = set()
        for gateway_id, gateway in self._gateways.items():
            if gateway.rate_per_s <= 0:
                continue  # home to no device: nothing to expect through it
            span_s = max(config.gateway_min_s, config.gateway_expected_uplinks / gateway.rate_per_s)
            if (
                stream - gateway.last_ms >= span_s * 1000
                and real_now - gateway.last_real >= config.min_real_s
            ):
                silent.add(gateway_id)
        return silent

    def _judge_devices(
        self, ref: int, real_now: float, causes: set[Cause], silent_gateways: set[str]
    ) -> tuple[list[Decision], dict[Cause, int]]:
        infra_cause = next((c for c in (_BROKER_CAUSE, _NS_CAUSE) if c in causes), None)
        # A cause that cleared restarts the silence clock of the devices behind it.
        for gone in self._causes - causes:
            self._cleared_at[gone] = ref
        start = self._first_ms or ref
        out: list[Decision] = []
        counts: dict[Cause, int] = {}
        for eui, device in self._devices.items():
            since = device.since_ms if device.since_ms is not None else start
            heard = max(device.last_ms or since, since)
            cleared = self._restart_for(device)
            if cleared is not None and cleared > heard:
                heard = cleared
                device.since_ms = cleared
            quiet_ms = ref - heard
            quiet_real = real_now - (device.last_real or self._first_real)
            if quiet_ms < device.threshold_ms or (
                infra_cause is None and quiet_real < self._config.min_real_s
            ):
                if device.alarmed:
                    heard_again = device.last_ms is not None and device.last_ms >= heard
                    device.alarmed, device.raised = False, None
                    out.append(
                        ClearAlarm(
                            eui,
                            DEVICE_SILENT,
                            "heard again" if heard_again else "its cause is gone: timed afresh",
                        )
                    )
                continue
            cause: Cause | None = infra_cause
            if cause is None and device.gateway:
                if device.gateway in silent_gateways:
                    cause = gateway_cause(device.gateway)
                elif ref - self._gateways[device.gateway].last_ms >= _QUIET_GATEWAY_MS:
                    continue  # its gateway has gone quiet too: its verdict first
            if cause is not None:
                counts[cause] = counts.get(cause, 0) + 1
            if device.alarmed and device.raised == cause:
                continue  # raised as it is: the silence's length is in the alarm's times
            device.alarmed, device.raised = True, cause
            minutes = quiet_ms / 60_000
            out.append(
                RaiseAlarm(
                    eui,
                    DEVICE_SILENT,
                    operations_pb2.MINOR,
                    f"no uplink for {minutes:.0f} min (reports every "
                    f"{device.period_s / 60:.0f} min)",
                    cause=cause,
                )
            )
        self._cleared_at = {
            c: t for c, t in self._cleared_at.items() if c not in causes or c == _STREAM_GAP
        }
        return out, counts

    def _restart_for(self, device: _Device) -> int | None:
        if not self._cleared_at:
            return None
        times = [self._cleared_at.get(c) for c in (_BROKER_CAUSE, _NS_CAUSE, _STREAM_GAP)]
        if device.gateway:
            times.append(self._cleared_at.get(gateway_cause(device.gateway)))
        known = [t for t in times if t is not None]
        return max(known) if known else None

    def _cause_decisions(self, causes: set[Cause], counts: dict[Cause, int]) -> list[Decision]:
        out: list[Decision] = []
        for cause in sorted(causes):
            originator, alarm_type = cause
            count = counts.get(cause, 0)
            out.append(
                RaiseAlarm(
                    originator,
                    alarm_type,
                    _CAUSE_SEVERITY[alarm_type],
                    f"{_CAUSE_WORDS[alarm_type]}; {count} silent device(s) behind it",
                    suppressed_count=count,
                )
            )
        for cause in sorted(self._causes - causes):
            out.append(ClearAlarm(*cause, "uplinks come through again"))
        self._causes = causes
        return out

    def _shaped(self, causes: list[Decision], devices: list[Decision]) -> list[Decision]:
        # Causes first, so a device's raise finds its cause's alarm in the book.
        now = self._stream_ms or self._clock_ms()
        return self._shaper.shape(causes, now) + self._shaper.shape(devices, now)


_CAUSE_SEVERITY: dict[str, operations_pb2.Severity.ValueType] = {
    GATEWAY_SILENT: operations_pb2.MAJOR,
    NETWORK_SERVER_SILENT: operations_pb2.CRITICAL,
    BROKER_LOST: operations_pb2.CRITICAL,
}
_CAUSE_WORDS = {
    GATEWAY_SILENT: "no uplink through this gateway",
    NETWORK_SERVER_SILENT: "no uplink from the network server",
    BROKER_LOST: "the post's connection to the broker is lost",
}

"""The city's alarms over a simulated day, scored against the faults the city really had.

The whole city as `make demo` runs it (`CitySystem`: both posts, etcd, the broker,
the simulated network server), from 15:00 local on a December day for `--hours`
simulated hours (dusk, night, dawn, day), at the fastest speed its uplinks fit (at
most `--max-speed`), with the simulated faults at their usual rates plus, injected:
one gateway outage (every uplink only that gateway hears is lost) and one broker
restart. At the end it reads every alarm from etcd and the ground truth from the
simulated city (`fleet.faults`), and prints one JSON object:

- alarms raised per simulated hour, per class and in total, and the peak count in ten
  simulated minutes (annunciated ones: not suppressed under a cause);
- the steady rate: annunciated alarms per hour outside the injected outages (each
  window runs from the injection to an hour after it ended);
- chattering alarms; suppressed alarms and, per cause, what it suppressed;
- per scored type (lamp_fault, camera_offline, no_water_drawn): precision (the share
  of raised alarms that match a real fault of that device at that time) and recall
  (the share of real faults the post could see within the run that raised an alarm);
- the injected gateway outage: cause alarms raised for it, and device alarms
  annunciated on their own meanwhile.

Targets: precision and recall >= 0.99 for the scored types, steady rate <= 6 an hour,
no chattering alarm, one cause alarm for the gateway outage and none of its devices
annunciated on its own.

    python -m bench.alarms [--scale 0.05] [--hours 24] [--max-speed 600]
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import json
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from actors.water import PARIS, quiet_seconds
from bench.city import status_of
from bench.harness import parse_overrides
from citypost.config import Config, load_config
from citypost.names import class_name
from cluster.system import CitySystem
from failover.control_state import ALARMS, list_all
from failover.etcd_control_state import EtcdControlState
from fleet import faults
from fleet.network_server import heard_by
from fleet.pacing import fitting_speed
from fleet.population import City, build_city
from post.silence_watch import DEVICE_SILENT, GATEWAY_SILENT, TYPES, gateway_cause
from protos.citypost.v1 import admin_pb2_grpc, operations_pb2
from security import identities
from security.pki import Kind
from security.pki_store import Identity

TIMEZONE = ZoneInfo("Europe/Paris")
SCORED = (faults.LAMP_FAULT, faults.CAMERA_OFFLINE, faults.NO_WATER_DRAWN)
TARGET_PRECISION = 0.99
TARGET_RECALL = 0.99
TARGET_STEADY_PER_H = 6.0
# How late an alarm may come after its fault began, and still match it (simulated s):
# a device's next uplink, the post's batching, the rule's delay-on.
MATCH_AFTER_S = {
    faults.LAMP_FAULT: 3 * 900.0,
    faults.CAMERA_OFFLINE: 15 * 60.0,
    faults.NO_WATER_DRAWN: 2 * 3600.0,
}
WELFARE_HOURS = 8.0  # actors.water's default no_water_hours
QUIET = (datetime.min.time().replace(hour=23), datetime.min.time().replace(hour=6))
AFTER_OUTAGE_S = 3600.0  # an injected outage's window runs this long after it ended


@dataclass(frozen=True)
class Raised:
    """An alarm as the bench scores it: its simulated raise time, from the record."""

    alarm_id: str
    type: str
    originator: str
    asset_class: str
    at: datetime  # simulated
    suppressed_by: str
    suppressed_count: int
    chattering: bool


@dataclass(frozen=True)
class Window:
    name: str
    start: datetime
    end: datetime  # the injection's end, plus AFTER_OUTAGE_S

    def holds(self, at: datetime) -> bool:
        return self.start <= at < self.end


class DataTime:
    """Wall-clock instants to the data's own time at the leading post (its stream time:
    the latest uplink time it had seen), from samples of its status. Alarms are stamped
    in wall time; a city that ran late delivered its faults late, so they are scored
    in the time the post was seeing, not the clock's."""

    def __init__(self) -> None:
        self.samples: list[tuple[int, int]] = []  # (wall ms, stream ms), both increasing

    def add(self, wall_ms: int, stream_ms: int) -> None:
        if stream_ms and (not self.samples or stream_ms >= self.samples[-1][1]):
            self.samples.append((wall_ms, stream_ms))

    def at(self, wall_ms: int) -> datetime:
        samples = self.samples
        if not samples:
            raise ValueError("no sample of the post's data time")
        i = bisect.bisect_right(samples, (wall_ms, 2**63))
        if i == 0:
            stream = samples[0][1] - (samples[0][0] - wall_ms)
        elif i == len(samples):
            stream = samples[-1][1]
        else:
            (w0, s0), (w1, s1) = samples[i - 1], samples[i]
            stream = s0 + (s1 - s0) * (wall_ms - w0) // max(1, w1 - w0)
        return datetime.fromtimestamp(stream / 1000, UTC)


def as_raised(alarm: operations_pb2.Alarm, data_time: DataTime) -> Raised:
    return Raised(
        alarm.alarm_id,
        alarm.type,
        alarm.originator,
        class_name(alarm.asset_class) if alarm.asset_class else "infrastructure",
        data_time.at(alarm.raised_at_ms),
        alarm.suppressed_by,
        alarm.suppressed_count,
        alarm.chattering,
    )


def welfare_visible_at(fault: faults.Fault) -> datetime:
    """When the post can first see a welfare episode: 8 hours without water outside the
    quiet period since it began (hour by hour, as the meter reports)."""
    at = fault.start
    while True:
        at += timedelta(hours=1)
        outside = (at - fault.start).total_seconds() - quiet_seconds(
            fault.start, at, QUIET[0], QUIET[1], PARIS
        )
        if outside >= WELFARE_HOURS * 3600:
            return at


def _matches(alarm: Raised, fault: faults.Fault) -> bool:
    late = timedelta(seconds=MATCH_AFTER_S[fault.kind])
    begins = fault.start - timedelta(minutes=2)  # the fault's first reading vs the clock
    return begins <= alarm.at and (fault.end is None or alarm.at <= fault.end + late)


def score(
    alarms: Sequence[Raised],
    real: Sequence[faults.Fault],
    *,
    start: datetime,
    end: datetime,
    unseen: set[str],
    windows: Sequence[Window],
) -> dict[str, Any]:
    """Precision and recall per scored type; rates, peak, chattering, suppression.

    `unseen`: devices whose faults the post could not see (behind the dark gateway);
    their faults are not counted against recall."""
    by_device: dict[tuple[str, str], list[faults.Fault]] = defaultdict(list)
    for fault in real:
        by_device[(fault.kind, fault.dev_eui)].append(fault)
    scored: dict[str, dict[str, Any]] = {}
    for kind in SCORED:
        raised = [a for a in alarms if a.type == kind]
        true = [a for a in raised if any(_matches(a, f) for f in by_device[(kind, a.originator)])]
        expected = [
            f
            for f in real
            if f.kind == kind
            and f.dev_eui not in unseen
            and _visible_at(f) + timedelta(seconds=MATCH_AFTER_S[kind]) <= end
            and (f.end is None or f.end > start)
        ]
        found = [
            f for f in expected if any(a.originator == f.dev_eui and _matches(a, f) for a in raised)
        ]
        scored[kind] = {
            "raised": len(raised),
            "matching": len(true),
            "real_visible": len(expected),
            "found": len(found),
            "precision": round(len(true) / len(raised), 4) if raised else None,
            "recall": round(len(found) / len(expected), 4) if expected else None,
            "false_alarms": [
                {"originator": a.originator, "at": a.at.isoformat()}
                for a in raised
                if a not in true
            ][:10],
            "missed": [
                {"dev_eui": f.dev_eui, "start": f.start.isoformat()}
                for f in expected
                if f not in found
            ][:10],
        }
    annunciated = [a for a in alarms if not a.suppressed_by]
    hours = max(1e-9, (end - start).total_seconds() / 3600)
    per_class = Counter(a.asset_class for a in annunciated)
    steady = [a for a in annunciated if not any(w.holds(a.at) for w in windows)]
    steady_hours = max(
        1e-9, hours - sum((min(w.end, end) - w.start).total_seconds() for w in windows) / 3600
    )
    return {
        "scored": scored,
        "raised_total": len(annunciated),
        "raised_per_hour": round(len(annunciated) / hours, 2),
        "raised_per_hour_by_class": {c: round(n / hours, 3) for c, n in sorted(per_class.items())},
        "raised_by_type": dict(sorted(Counter(a.type for a in annunciated).items())),
        "steady_per_hour": round(len(steady) / steady_hours, 2),
        "peak_10_min": peak(annunciated, timedelta(minutes=10)),
        "chattering": sum(1 for a in alarms if a.chattering),
        "suppressed": sum(1 for a in alarms if a.suppressed_by),
        "causes": [
            {"originator": a.originator, "type": a.type, "suppressed": a.suppressed_count}
            for a in alarms
            if a.type in TYPES and a.type != DEVICE_SILENT
        ],
    }


def _visible_at(fault: faults.Fault) -> datetime:
    return welfare_visible_at(fault) if fault.kind == faults.NO_WATER_DRAWN else fault.start


def peak(alarms: Sequence[Raised], width: timedelta) -> int:
    """The most raises within any `width` of simulated time."""
    times = sorted(a.at for a in alarms)
    best, first = 0, 0
    for last, at in enumerate(times):
        while at - times[first] >= width:
            first += 1
        best = max(best, last - first + 1)
    return best


def outage_check(alarms: Sequence[Raised], gateway: str, window: Window) -> dict[str, Any]:
    cause_originator = gateway_cause(gateway)[0]
    during = [a for a in alarms if window.holds(a.at)]
    causes = [a for a in during if a.type == GATEWAY_SILENT]
    own = [a for a in during if a.type == DEVICE_SILENT and not a.suppressed_by]
    return {
        "gateway": gateway,
        "cause_alarms": len(causes),
        "cause_is_the_gateway": [a.originator for a in causes] == [cause_originator],
        "suppressed_under_it": sum(
            1 for a in during if a.suppressed_by in {c.alarm_id for c in causes}
        ),
        "device_silent_annunciated": len(own),
    }


def sole_devices(city: City) -> dict[str, set[str]]:
    """Per gateway, the devices only it hears: those an outage of it silences (the
    others' uplinks reach the network server through another gateway)."""
    sole: dict[str, set[str]] = defaultdict(set)
    for sim in city.devices:
        heard = heard_by(sim)
        if len(heard) == 1:
            sole[heard[0]].add(sim.device.dev_eui)
    return sole


async def read_alarms(
    endpoints: list[str], city: str, tls: Identity | None
) -> list[operations_pb2.Alarm]:
    state = EtcdControlState.from_endpoints(endpoints, city, tls=tls)
    try:
        return [e.value for e in await list_all(state, ALARMS, operations_pb2.Alarm)]
    finally:
        await state.close()


def day_config(args: argparse.Namespace, tmp: str) -> Config:
    """The city at the fastest speed its uplinks fit (at most --max-speed), its clock
    reading 15:00 local `--startup-allowance-s` from now."""
    overrides: dict[str, Any] = {"city.scale": args.scale, **parse_overrides(args.set)}
    overrides["run_dir"] = tmp
    overrides.setdefault("post.grpc_port", None)
    config = load_config(overrides=overrides)
    demand = build_city(config.city).uplinks_per_sim_s(config.sim.interval_factor)
    speed = fitting_speed(args.max_speed, demand, config.sim.max_uplinks_per_s, explicit=False)
    origin = datetime.now(UTC) + timedelta(seconds=args.startup_allowance_s)
    local = origin.astimezone(TIMEZONE)
    start = datetime.combine(local.date(), datetime.min.time().replace(hour=15), TIMEZONE)
    sim = config.sim.model_copy(
        update={"speed": speed, "start": start.astimezone(UTC), "origin": origin}
    )
    return config.model_copy(update={"sim": sim})


def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-alarms-") as tmp:
        config = day_config(args, tmp)
        system = CitySystem(config, Path(tmp) / "run")
        try:
            system.start(lambda step: print(f"bench.alarms: {step}", file=sys.stderr))
            return observe(system, args)
        finally:
            system.stop()


class Watcher:
    """Samples the leading post's data time against the clock, about every second."""

    def __init__(self, system: CitySystem) -> None:
        assert system.network_server is not None
        self.clock = system.network_server.clock
        self.data_time = DataTime()
        self.lag_s: list[float] = []  # the clock minus the post's data time, simulated s
        self.stubs = [
            admin_pb2_grpc.PostAdminStub(system.channel(p.address)) for p in system.posts.values()
        ]

    def sample(self) -> None:
        for stub in self.stubs:
            status = status_of(stub)
            if status is not None and status.role == "leader" and status.stream_time_ms:
                wall = int(time.time() * 1000)
                self.data_time.add(wall, status.stream_time_ms)
                self.lag_s.append(self.clock.now_ts() - status.stream_time_ms / 1000)

    def wait_until(self, at: datetime) -> None:
        """Until the clock reads `at`, sampling meanwhile."""
        while self.clock.now() < at:
            self.sample()
            left = self.clock.real_seconds((at - self.clock.now()).total_seconds())
            time.sleep(min(1.0, max(0.05, left)))


def observe(system: CitySystem, args: argparse.Namespace) -> dict[str, Any]:
    assert system.network_server is not None and system.city is not None
    assert system.broker is not None
    config = system.config
    assert config.sim.start is not None
    start = config.sim.start
    end = start + timedelta(hours=args.hours)
    network_server, city = system.network_server, system.city
    sole = sole_devices(city)
    gateway = max(sole, key=lambda g: len(sole[g]))
    hour = timedelta(hours=1)
    # At least three times the real time a silence must last (alarms.silence.min_real_s):
    # at x538 an hour and a half is ten real seconds, shorter than the post's floor.
    floor_h = 3 * config.alarms.silence.min_real_s * config.sim.speed / 3600
    outage_h = max(args.outage_h, floor_h)
    outage = (start + args.outage_at_h * hour, start + (args.outage_at_h + outage_h) * hour)
    restart_at = start + args.broker_restart_at_h * hour
    windows = [
        Window("gateway_outage", outage[0], outage[1] + timedelta(seconds=AFTER_OUTAGE_S)),
        Window("broker_restart", restart_at, restart_at + timedelta(seconds=AFTER_OUTAGE_S)),
    ]
    events: list[tuple[datetime, str]] = sorted(
        [(outage[0], "gateway down"), (outage[1], "gateway up"), (restart_at, "broker restart")]
    )
    watcher = Watcher(system)
    for at, what in events:
        watcher.wait_until(at)
        print(f"bench.alarms: {at.astimezone(TIMEZONE):%H:%M} local: {what}", file=sys.stderr)
        if what == "gateway down":
            network_server.set_gateway_down(gateway, True)
        elif what == "gateway up":
            network_server.set_gateway_down(gateway, False)
        else:
            system.broker.restart()
    watcher.wait_until(end)
    pace = network_server.stats()  # the city's own pace at the end, before the drain
    network_server.stop_uplinks()
    time.sleep(args.drain_s)  # the posts apply what is queued
    watcher.sample()
    # Scored up to where the post's data had reached: a city that ran late had not said
    # the rest yet.
    seen_until = watcher.data_time.at(int(time.time() * 1000))
    tls = identities.tls_identity(config, Kind.CHAOS, identities.CHAOS)
    records = asyncio.run(read_alarms(list(system.endpoints), config.city.name, tls))
    alarms = [as_raised(a, watcher.data_time) for a in records]
    alarms = [a for a in alarms if start <= a.at < seen_until]
    real = faults.real_faults(city, start, seen_until, origin=start, kinds=SCORED)
    unseen = {f.dev_eui for f in real if f.dev_eui in sole[gateway] and f.start < outage[1]}
    result = score(alarms, real, start=start, end=seen_until, unseen=unseen, windows=windows)
    result["gateway_outage"] = outage_check(alarms, gateway, windows[0])
    scored = result["scored"]
    checks = {
        **{
            f"precision_{k}": v["precision"] is None or v["precision"] >= TARGET_PRECISION
            for k, v in scored.items()
        },
        **{
            f"recall_{k}": v["recall"] is None or v["recall"] >= TARGET_RECALL
            for k, v in scored.items()
        },
        "steady_rate": result["steady_per_hour"] <= TARGET_STEADY_PER_H,
        "no_chattering": result["chattering"] == 0,
        "one_cause_for_the_outage": result["gateway_outage"]["cause_alarms"] == 1
        and result["gateway_outage"]["cause_is_the_gateway"],
        "outage_devices_not_annunciated": result["gateway_outage"]["device_silent_annunciated"]
        == 0,
    }
    return {
        "scale": config.city.scale,
        "devices": len(city.registry),
        "speed": config.sim.speed,
        "simulated_hours": args.hours,
        "start_local": start.astimezone(TIMEZONE).isoformat(),
        "data_seen_until_local": seen_until.astimezone(TIMEZONE).isoformat(),
        "post_data_lag_s": {
            "mean": round(sum(watcher.lag_s) / len(watcher.lag_s), 1) if watcher.lag_s else None,
            "max": round(max(watcher.lag_s), 1) if watcher.lag_s else None,
        },
        "city_pace_at_end": {
            "effective_speed": pace.effective_speed,
            "lag_s": pace.lag_s,
            "lag_max_s": pace.lag_max_s,
            "uplinks": pace.uplinks,
            "lost_disconnected": pace.lost_disconnected,
            "lost_gateway_down": pace.lost_gateway_down,
        },
        "injected": {
            "gateway_outage_local": [t.astimezone(TIMEZONE).isoformat() for t in outage],
            "gateway_devices_only_it_hears": len(sole[gateway]),
            "broker_restart_local": restart_at.astimezone(TIMEZONE).isoformat(),
        },
        **result,
        "targets": {
            "precision": TARGET_PRECISION,
            "recall": TARGET_RECALL,
            "steady_per_hour": TARGET_STEADY_PER_H,
        },
        "checks": checks,
        "ok": all(checks.values()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scale", type=float, default=0.05)
    parser.add_argument("--hours", type=float, default=24.0, help="simulated hours")
    parser.add_argument("--max-speed", type=float, default=600.0)
    parser.add_argument("--outage-at-h", type=float, default=9.0, help="hours after 15:00")
    parser.add_argument(
        "--outage-h",
        type=float,
        default=1.5,
        help="simulated hours (at least 3 x alarms.silence.min_real_s in real time)",
    )
    parser.add_argument("--broker-restart-at-h", type=float, default=17.0)
    parser.add_argument("--startup-allowance-s", type=float, default=60.0)
    parser.add_argument("--drain-s", type=float, default=10.0)
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    args = parser.parse_args(argv)
    result = run(args)
    print(json.dumps(result, indent=2))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())

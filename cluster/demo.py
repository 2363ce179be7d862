"""`citypost demo`: the local stack, the simulated city and two control posts, live.

Starts what the config asks for (a local etcd and mosquitto, or points at
external ones), the downlink gate, two posts (`primary` and `backup`, each
`citypost post` in its own process with its own Ray cluster; one leads, the
other stands by hot), and the simulated network server of the city; shows
what the leading post reports over its PostAdmin API — uplinks per asset
class and their rate, actors, pending commands, dead letters — and each
post's role, until Ctrl-C or the given duration, then stops everything it
started, in reverse order.
"""

from __future__ import annotations

import signal
import sys
import time
from contextlib import ExitStack
from datetime import UTC, datetime
from types import FrameType

import grpc
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from citypost.clock import SimClock
from citypost.config import Config
from cluster.ports import port_is_bindable
from cluster.system import CitySystem, post_configs
from fleet.network_server import FleetStats
from protos.citypost.v1 import admin_pb2, admin_pb2_grpc
from security.demo_accounts import passwords_path

EXIT_PORTS_TAKEN = 3  # another server (most likely another demo) holds a post's port
# Simulated seconds behind its clock past which the screen says the city cannot keep up.
BEHIND_WARNING_S = 60.0


def _terminate(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _speed(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.1f}" if x >= 1 else f"{x:.2f}"


def pace_text(speed: float, radio: FleetStats | None) -> tuple[str, str | None]:
    """The speed for the header, `x26 (effective x25.7, 0.4 min behind)`, and a warning
    when the city runs more than BEHIND_WARNING_S of simulated time behind its clock."""
    if radio is None or radio.effective_speed is None:
        return f"x{speed:g}", None
    effective = _speed(radio.effective_speed)
    text = f"x{speed:g} (effective x{effective}, {radio.lag_s / 60:.1f} min behind)"
    lost = []
    if radio.lost_disconnected:
        lost.append(f"{radio.lost_disconnected:,} uplinks lost while the broker was away")
    for gateway in sorted({*radio.gateways_down, *radio.lost_gateway_down}):
        down = " (down)" if gateway in radio.gateways_down else ""
        lost.append(
            f"gateway {gateway}{down}: {radio.lost_gateway_down.get(gateway, 0):,} lost, "
            f"{radio.rerouted_gateway_down.get(gateway, 0):,} heard by others"
        )
    if lost:
        text += "; " + ", ".join(lost)
    if radio.lag_s <= BEHIND_WARNING_S:
        return text, None
    warning = (
        f"THE CITY IS {radio.lag_s / 60:.1f} MIN OF SIMULATED TIME BEHIND ITS CLOCK "
        f"(effective x{effective} of x{speed:g}): the network server cannot "
        "publish its uplinks as fast as they come due (rate cap, busy machine). They keep "
        "the time their devices spoke, so silence is judged right, but the posts see the "
        "city late; lower sim.speed"
    )
    return text, warning


def _render(
    status: admin_pb2.PostStatus,
    previous: admin_pb2.PostStatus | None,
    elapsed: float,
    devices: dict[str, int],
    header: str,
    warning: str | None = None,
) -> Group:
    table = Table(title=f"post {status.post} ({status.role}, epoch {status.epoch})")
    table.add_column("asset class")
    table.add_column("devices", justify="right")
    table.add_column("uplinks", justify="right")
    table.add_column("per second", justify="right")
    for name in sorted(devices):
        now = status.uplinks_by_class.get(name, 0)
        before = previous.uplinks_by_class.get(name, 0) if previous else 0
        rate = (now - before) / elapsed if previous and elapsed > 0 else 0.0
        table.add_row(name, f"{devices[name]:,}", f"{now:,}", f"{rate:,.0f}")
    dead = Table(title="dead letters")
    dead.add_column("reason")
    dead.add_column("count", justify="right")
    for reason, n in sorted(status.dead_letters_by_reason.items()):
        dead.add_row(reason, f"{n:,}")
    if not status.dead_letters_by_reason:
        dead.add_row("(none)", "0")
    down = [a.name for a in status.actors if not a.healthy]
    restarts = sum(a.restarts for a in status.actors)
    health = "healthy" if status.healthy else f"UNHEALTHY: {status.unhealthy_reason}"
    footer = Text(
        f"{len(status.actors)} actors, {len(down)} down, {restarts} restarts; "
        f"{status.commands_pending} commands pending; {health}\n"
        "Ctrl-C stops everything this demo started"
    )
    lines = [Text(header)]
    if warning is not None:
        lines.append(Text(warning, style="bold red"))
    return Group(*lines, table, dead, footer)


def _statuses(
    admins: dict[str, admin_pb2_grpc.PostAdminStub],
) -> tuple[list[admin_pb2.PostStatus], str]:
    statuses, roles = [], []
    for name, admin in admins.items():
        try:
            status = admin.GetStatus(admin_pb2.GetStatusRequest(), timeout=5)
        except grpc.RpcError as error:
            roles.append(f"{name}: no answer ({error.code().name})")
            continue
        statuses.append(status)
        roles.append(f"{name}: {status.role} (epoch {status.epoch})")
    return statuses, ", ".join(roles)


def run_demo(config: Config, *, duration_s: float | None = None) -> int:
    taken = [
        c.post.grpc_port
        for c in post_configs(config)
        if c.post.grpc_port is not None and not port_is_bindable("127.0.0.1", c.post.grpc_port)
    ]
    if taken:
        # Most likely another demo: starting a second would fail half way, after etcd.
        ports = ", ".join(f"127.0.0.1:{p}" for p in taken)
        print(
            f"citypost demo: {ports} already in use (another demo running?); stop it, or "
            "choose other ports with --set post.grpc_port=N",
            file=sys.stderr,
        )
        return EXIT_PORTS_TAKEN
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    run_dir = config.run_dir.resolve() / f"demo-{stamp}"
    run_dir.mkdir(parents=True, exist_ok=True)
    if config.security.pki_dir is None:
        # One CA for every demo (run/pki): a workstation's certificate, an integrator's
        # network server and the console's default (console/workstation.py) outlive a run.
        security = config.security.model_copy(
            update={
                "pki_dir": config.run_dir.resolve() / "pki",
                "accounts_file": config.security.accounts_file
                or config.run_dir.resolve() / "accounts.json",
            }
        )
        config = config.model_copy(update={"security": security})
    if "web" not in config.model_fields_set or "enabled" not in config.web.model_fields_set:
        # The demo serves the web console unless told not to (--set web.enabled=false).
        config = config.model_copy(update={"web": config.web.model_copy(update={"enabled": True})})
    console = Console()
    previous_handler = signal.signal(signal.SIGTERM, _terminate)
    try:
        with ExitStack() as stack:
            console.print(f"citypost demo: run dir {run_dir}")
            # Supervised, as a service manager would run it: what dies is restarted.
            system = CitySystem(config, run_dir, supervise=True)
            stack.callback(system.stop)
            began = time.monotonic()
            with console.status("starting") as spinner:

                def progress(step: str) -> None:
                    line = f"[{time.monotonic() - began:5.1f} s] {step}"
                    console.print(line, highlight=False)
                    spinner.update(f"{line} …")

                system.start(progress)
            console.print(f"[{time.monotonic() - began:5.1f} s] started", highlight=False)
            config = system.config
            assert system.city is not None and system.gate is not None
            console.print(
                f"etcd: {', '.join(system.endpoints)}; mqtt: {config.mqtt.host}:{config.mqtt.port}"
            )
            console.print(f"city: {config.city.name}, {len(system.city.registry):,} devices")
            if config.security.tls:
                console.print(
                    f"certificates: {config.pki_dir} (etcd, the broker and the posts take "
                    f"only these; citypost pki list --dir {config.pki_dir})"
                )
                console.print(
                    f"operators: {', '.join(sorted(system.passwords))}; their passwords are "
                    f"in {passwords_path(config.accounts_file)}. Log in with: citypost "
                    "console login --user supervisor",
                    highlight=False,
                )
            if system.web is not None:
                console.print(
                    f"web console: {system.web.url} (log in with a demo account; "
                    f"log: {run_dir}/web.log)",
                    highlight=False,
                )
            admins = {}
            for post in system.posts.values():
                console.print(
                    f"post {post.name}: gRPC on {post.address} "
                    f"(log: {run_dir}/post-{post.name}.log)"
                )
                channel = system.channel(post.address)  # the screen reads as an observer
                stack.callback(channel.close)
                admins[post.name] = admin_pb2_grpc.PostAdminStub(channel)
            clock = SimClock.of(config.sim)
            gate = system.gate
            devices = system.city.registry.count_by_class()
            started = last = time.monotonic()
            previous: admin_pb2.PostStatus | None = None
            with Live(console=console, refresh_per_second=1, transient=False) as live:
                while duration_s is None or time.monotonic() - started < duration_s:
                    time.sleep(1.0)
                    now = time.monotonic()
                    statuses, roles = _statuses(admins)
                    status = next((s for s in statuses if s.role == "leader"), None)
                    if status is None:
                        live.update(Text(f"no post leads right now: {roles}"))
                        continue
                    stats = gate.stats()
                    radio = system.network_server.stats() if system.network_server else None
                    pace, warning = pace_text(config.sim.speed, radio)
                    header = (
                        f"simulated time {clock.now():%Y-%m-%d %H:%M} {pace}; "
                        f"{roles}; gate forwarded {stats.forwarded:,} downlinks and "
                        f"{stats.multicast_forwarded:,} multicasts, dropped {stats.dropped:,}, "
                        f"{stats.held:,} waiting for airtime, "
                        f"{stats.refused_for_airtime:,} refused for lack of it"
                    )
                    if radio is not None:
                        busiest = max((u.used_s / u.budget_s for u in radio.airtime), default=0.0)
                        header += (
                            f"; on air {radio.downlinks_sent:,} frames and "
                            f"{radio.multicast_sent:,} multicast transmissions, busiest gateway "
                            f"at {busiest:.0%} of its hourly budget"
                        )
                    if system.restarts:
                        restarted = ", ".join(
                            f"{k} x{n}" for k, n in sorted(system.restarts.items())
                        )
                        header += f"; restarted by the supervisor: {restarted}"
                    live.update(_render(status, previous, now - last, devices, header, warning))
                    previous, last = status, now
        console.line()
    except KeyboardInterrupt:
        console.print("\ncitypost demo: stopping")
    finally:
        signal.signal(signal.SIGTERM, previous_handler)
    console.print("citypost demo: everything stopped")
    return 0

"""Failover of the whole city: crash, frozen leader, switchover, etcd member and quorum loss,
standby restart.

One `CitySystem` for the module (a 3-member etcd, mosquitto, the downlink gate,
the posts `primary` and `backup`, each `citypost post` with its own Ray cluster,
and the simulated network server). Each scenario starts from two live posts, one
leading, and leaves the system that way for the next. The evidence is
independent of the posts: the network server's execution log (what devices
did), the leader key in etcd, and what the operator API acknowledged.

Failover timings: the default lease (2 s TTL, keepalive 0.5 s, margin 0.5 s),
the robust choice on a slow 2-core machine running two Ray clusters.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import time
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from chaos.operator_load import Sender, lamp_command
from citypost.config import CityConfig, Config, FailoverConfig, PostConfig, SimConfig
from citypost.errors import InfrastructureError
from cluster.etcd_local import LocalEtcd
from cluster.ports import free_port_pair
from cluster.system import CitySystem, LeaderNow
from console import failover_cli
from console.session import SessionFile, login
from fleet.network_server import NetworkServer
from protos.citypost.v1 import admin_pb2, assets_pb2, operator_pb2, operator_pb2_grpc
from security import identities
from security.grpc_tls import secure_channel_factory
from security.identities import tls_identity
from security.pki import Kind
from tests.integration.failover_support import (
    GROUPS,
    TAKEOVER_BOUND_S,
    Acked,
    RolePoller,
    check_execution_log,
    failover_status,
    lost_commands,
    read_leader,
    send_some,
    wait_executed,
    wait_leader,
    wait_role,
)

pytestmark = pytest.mark.integration

CITY = "dijon"
FAILOVER = FailoverConfig()  # 2 s lease, keepalive 0.5 s, self-fence margin 0.5 s
TTL_S = FAILOVER.lease_ttl_s
SWITCHOVER_BOUND_S = 5.0
MAX_LAG_REVISIONS = 10
STANDBY = admin_pb2.POST_ROLE_STANDBY
LEADER = admin_pb2.POST_ROLE_LEADER


# The lamps' operators: the urban supervision post.
LAMPS = "urban-supervision"


class City:
    """The module's system, its role poller, and the Ray temp dirs its posts used."""

    def __init__(self, system: CitySystem, poller: RolePoller) -> None:
        self.system = system
        self.poller = poller
        self.ray_dirs: set[str] = set()
        self._session: Path | None = None

    @property
    def session(self) -> Path:
        """The room supervisor's console session (failover switchover needs one), logged
        in from the control room's workstation certificate."""
        if self._session is None:
            config = self.system.config
            room = tls_identity(config, Kind.CONSOLE, identities.CONSOLE)
            assert room is not None
            logged = login(
                secure_channel_factory(room),
                self.addresses(),
                "supervisor",
                self.system.passwords["supervisor"],
            )
            self._session = config.run_dir / "supervisor-session.json"
            SessionFile(self._session).save(logged)
        return self._session

    @property
    def network_server(self) -> NetworkServer:
        assert self.system.network_server is not None
        return self.system.network_server

    @property
    def etcd(self) -> LocalEtcd:
        assert self.system.etcd is not None
        return self.system.etcd

    def address(self, name: str) -> str:
        return self.system.posts[name].address

    def addresses(self) -> list[str]:
        return self.system.addresses()

    def note_ray_dirs(self) -> None:
        """Remember the Ray temp dirs below the posts, to prove none outlives the module."""
        for post in self.system.posts.values():
            pid = post.process.pid
            if pid is None:
                continue
            with contextlib.suppress(psutil.Error):
                for child in psutil.Process(pid).children(recursive=True):
                    with contextlib.suppress(psutil.Error):
                        for arg in child.cmdline():
                            if arg.startswith("--temp-dir="):
                                self.ray_dirs.add(arg.removeprefix("--temp-dir="))

    def leftovers(self) -> list[tuple[int, str]]:
        """Live processes of this system: naming its run dir or one of its Ray temp dirs."""
        needles = [str(self.system.run_dir), *self.ray_dirs]
        found = []
        for proc in psutil.process_iter(["cmdline", "status"]):
            if proc.pid == os.getpid() or proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            cmdline = " ".join(proc.info["cmdline"] or ())
            if any(n in cmdline for n in needles):
                found.append((proc.pid, cmdline[:200]))
        return found


@pytest.fixture(scope="module")
def city(tmp_path_factory: pytest.TempPathFactory) -> Iterator[City]:
    def make() -> CitySystem:
        run_dir = tmp_path_factory.mktemp("failover")
        config = Config(
            city=CityConfig(name=CITY, scale=0.005),
            sim=SimConfig(speed=60.0),
            failover=FAILOVER,
            # Fixed ports (primary, backup = port + 1), so a restarted post keeps its address.
            post=PostConfig(grpc_port=free_port_pair()),
            run_dir=run_dir,
        )
        return CitySystem(config, run_dir)

    system = make()
    try:
        system.start()
    except InfrastructureError as exc:
        # start() stopped what it started; a fresh run dir, since etcd keeps its members
        # in its data dir.
        infrastructure_retry("starting the system", exc)
        system = make()
    poller = RolePoller(system)
    state = City(system, poller)
    try:
        if not system.posts:
            system.start()
        state.note_ray_dirs()
        poller.start()
        yield state
    finally:
        poller.stop()
        system.stop()
        deadline = time.monotonic() + 15
        while state.leftovers() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not state.leftovers(), f"left running after the module: {state.leftovers()}"
        # A crashed post never removes its Ray temp dir; nothing uses them any more.
        for temp in state.ray_dirs:
            shutil.rmtree(temp, ignore_errors=True)


async def settled(city: City, *, timeout_s: float = 60.0) -> tuple[LeaderNow, str]:
    """Two live posts, one leading (etcd and its own word agree), the other a ready standby."""
    async with city.system.etcd_client() as etcd:
        leader, _ = await wait_leader(city.system, etcd, timeout_s)
    assert leader.name in city.system.posts, leader
    assert leader.address == city.address(leader.name)
    standby = next(name for name in city.system.posts if name != leader.name)
    await wait_role(city.system, city.address(leader.name), LEADER, timeout_s)
    status = await wait_role(city.system, city.address(standby), STANDBY, timeout_s)
    deadline = time.monotonic() + timeout_s
    while status.leader_name != leader.name or status.epoch != leader.epoch:
        assert time.monotonic() < deadline, f"{standby} does not see {leader}: {status}"
        await asyncio.sleep(0.1)
        status = await asyncio.to_thread(failover_status, city.system, city.address(standby))
    return leader, standby


def infrastructure_retry(what: str, exc: InfrastructureError) -> None:
    """Say loudly that a start is retried: on a loaded machine a Ray head can fail to start
    (its raylet waits a fixed 15 s for the dashboard agent's port file, then aborts)."""
    warnings.warn(f"{what} failed, retrying once: {str(exc)[-300:]}", stacklevel=2)


async def restart_post(city: City, name: str) -> None:
    try:
        await asyncio.to_thread(city.system.restart_post, name)
    except InfrastructureError as exc:
        infrastructure_retry(f"restarting post {name}", exc)
        await asyncio.to_thread(city.system.restart_post, name)
    city.note_ray_dirs()


def assert_no_split_brain(city: City, since: float) -> None:
    found = city.poller.split_brains(since)
    assert not found, f"two posts said they lead at once: {found[:5]}"


async def final_checks(city: City, acked: list[Acked], leader_address: str) -> None:
    """Every acknowledged command known to the leader and executed by its whole group;
    nothing executed twice; no older epoch executed after a newer one's first execution."""
    lost = await asyncio.to_thread(lost_commands, city.system, leader_address, acked)
    assert not lost, f"acknowledged but not in the leader's control state: {lost}"
    missing = await wait_executed(city.network_server, acked)
    assert not missing, f"acknowledged, never executed by every lamp of its group: {missing}"
    check_execution_log(city.network_server.executions())


def _bearer(system: CitySystem) -> tuple[tuple[str, str], ...]:
    token = system.operator()
    assert token is not None
    return (("authorization", f"Bearer {token()}"),)


async def switchover(city: City, to: str) -> float:
    """`citypost failover switchover --to <to>`; returns how long the command took.

    Retried while it refuses (exit 1): the target may still be taking its new lease
    after an earlier handover."""
    argv = ["switchover", "--to", to, "--timeout", str(SWITCHOVER_BOUND_S)]
    argv += ["--pki-dir", str(city.system.config.pki_dir), "--session", str(city.session)]
    for address in city.addresses():
        argv += ["--post", address]
    deadline = time.monotonic() + TAKEOVER_BOUND_S
    while True:
        started = time.monotonic()
        code = await asyncio.to_thread(failover_cli.run, argv)
        took = time.monotonic() - started
        if code != failover_cli.EXIT_REFUSED or time.monotonic() >= deadline:
            break
        await asyncio.sleep(0.2)
    assert code == failover_cli.EXIT_OK, f"switchover to {to} ended with {code}"
    return took


# --- 1. crash --------------------------------------------------------------------------------


@pytest.mark.timeout(420)  # includes starting the module's system
async def test_crash_failover_loses_nothing_and_executes_once(city: City) -> None:
    system = city.system
    started = time.monotonic()
    old, survivor = await settled(city, timeout_s=90.0)
    victim = old.name

    # A few commands to the leader, executed by the devices.
    before = await send_some(city.system, "crash-before", 3, 20.0)
    assert all(c.epoch == old.epoch for c in before), before
    missing = await wait_executed(city.network_server, before)
    assert not missing, f"not executed before the kill: {missing}"

    # Commands in flight; SIGKILL of the leader's whole session (post, Ray head, workers).
    sender = Sender(
        city.addresses(),
        "crash-during",
        window_s=TAKEOVER_BOUND_S + 5,
        groups=GROUPS,
        channel_factory=city.system.channel_factory(),
        token=city.system.operator(LAMPS),
    ).start()
    city.note_ray_dirs()
    async with system.etcd_client() as etcd:
        try:
            await asyncio.sleep(1.5)
            killed_at = time.monotonic()
            hit = await asyncio.to_thread(system.crash_post, victim)
            assert hit > 1, f"SIGKILL reached {hit} process(es) of post {victim}"
            new, seen_at = await wait_leader(system, etcd, TAKEOVER_BOUND_S, newer_than=old.epoch)
            print(f"crash failover: {victim} -> {new.name} in {seen_at - killed_at:.2f} s")
            assert new.name == survivor
            assert seen_at - killed_at <= TAKEOVER_BOUND_S
            await asyncio.sleep(2.0)  # writes keep coming under the new leader
        finally:
            await asyncio.to_thread(sender.stop)
    assert sender.acked, f"nothing acknowledged while the leader was killed: {sender.failed}"
    # Nothing of the crashed post survives it: its session is empty.
    assert await asyncio.to_thread(system.posts[victim].process.wait_exit, 10.0)
    assert system.posts[victim].process.signal_session(0) == 0

    # Commands sent after the takeover are acknowledged under the new epoch.
    after = await send_some(city.system, "crash-after", 3, 60.0)
    assert all(c.epoch == new.epoch for c in after), after

    acknowledged = before + sender.acked + after
    await final_checks(city, acknowledged, city.address(survivor))
    # The module's first scenario: only these two leaders ever commanded.
    others = [e for e in city.network_server.executions() if e.epoch not in (old.epoch, new.epoch)]
    assert not others, f"executed under an epoch of neither leader: {others[:10]}"

    # The crashed post comes back as the standby.
    await restart_post(city, victim)
    leader, standby = await settled(city)
    assert (leader.name, leader.epoch, standby) == (survivor, new.epoch, victim)
    assert_no_split_brain(city, started)


# --- 2. frozen leader ------------------------------------------------------------------------


@pytest.mark.timeout(180)
async def test_frozen_leader_is_fenced_and_wakes_as_standby(city: City) -> None:
    system = city.system
    started = time.monotonic()
    old, standby = await settled(city)
    frozen = old.name
    gate = system.gate
    assert gate is not None
    dropped_before = gate.stats().dropped
    log_before = len(city.network_server.executions())

    sender = Sender(
        city.addresses(),
        "frozen",
        window_s=TAKEOVER_BOUND_S + 10,
        groups=GROUPS,
        channel_factory=city.system.channel_factory(),
        token=city.system.operator(LAMPS),
    ).start()
    thawed = False
    async with system.etcd_client() as etcd:
        try:
            await asyncio.sleep(1.0)
            frozen_at = time.monotonic()
            assert await asyncio.to_thread(system.freeze_post, frozen) > 1
            new, seen_at = await wait_leader(system, etcd, TAKEOVER_BOUND_S, newer_than=old.epoch)
            print(f"frozen leader: {frozen} -> {new.name} in {seen_at - frozen_at:.2f} s")
            assert new.name == standby
            assert seen_at - frozen_at <= TAKEOVER_BOUND_S
            # Frozen past its TTL, then woken while the other leads.
            await asyncio.sleep(max(0.0, frozen_at + TTL_S + 2.0 - time.monotonic()))
            await asyncio.to_thread(system.thaw_post, frozen)
            thawed = True
            status = await wait_role(city.system, city.address(frozen), STANDBY, TAKEOVER_BOUND_S)
            assert (status.leader_name, status.epoch) == (new.name, new.epoch), status
            await asyncio.sleep(3.0)  # the thawed post has had time to do harm, if it would
        finally:
            if not thawed:
                await asyncio.to_thread(system.thaw_post, frozen)
            await asyncio.to_thread(sender.stop)
        now = await read_leader(system, etcd)
    assert now == new, f"leadership moved after the thaw: {now} (was {new})"
    assert sender.acked, f"nothing acknowledged around the freeze: {sender.failed}"

    after = await send_some(city.system, "frozen-after", 3, 40.0)
    assert all(c.epoch == new.epoch for c in after), after
    await final_checks(city, sender.acked + after, city.address(new.name))
    # The thawed post executed nothing under its old epoch after the new epoch's first.
    log = city.network_server.executions()[log_before:]
    first_new = next((i for i, e in enumerate(log) if e.epoch >= new.epoch), None)
    assert first_new is not None, "nothing executed under the new epoch"
    late = [e for e in log[first_new:] if e.epoch < new.epoch]
    assert not late, f"executed under the frozen leader's epoch after the takeover: {late}"
    dropped = gate.stats().dropped - dropped_before
    print(f"frozen leader: the gate dropped {dropped} downlink(s) of an old epoch")

    leader, standby_now = await settled(city)
    assert (leader.name, standby_now) == (new.name, frozen)
    assert_no_split_brain(city, started)


# --- 3. planned switchover -------------------------------------------------------------------


@pytest.mark.timeout(120)
async def test_planned_switchover_and_back(city: City) -> None:
    system = city.system
    started = time.monotonic()
    first, standby = await settled(city)
    sender = Sender(
        city.addresses(),
        "switch",
        window_s=TAKEOVER_BOUND_S + 5,
        groups=GROUPS,
        channel_factory=city.system.channel_factory(),
        token=city.system.operator(LAMPS),
    ).start()
    async with system.etcd_client() as etcd:
        try:
            await asyncio.sleep(1.0)
            took = await switchover(city, standby)
            second = await read_leader(system, etcd)
            assert second is not None and second.name == standby, second
            assert second.epoch > first.epoch
            print(f"switchover: {first.name} -> {standby} in {took * 1000:.0f} ms (CLI call)")
            assert took <= SWITCHOVER_BOUND_S
            await asyncio.sleep(1.5)  # commands flow under the new leader

            took_back = await switchover(city, first.name)
            third = await read_leader(system, etcd)
            assert third is not None and third.name == first.name, third
            assert third.epoch > second.epoch
            print(f"switchover back: {standby} -> {first.name} in {took_back * 1000:.0f} ms")
            assert took_back <= SWITCHOVER_BOUND_S
            await asyncio.sleep(1.5)
        finally:
            await asyncio.to_thread(sender.stop)
    assert sender.acked, f"nothing acknowledged: {sender.failed}"
    epochs = {c.epoch for c in sender.acked}
    assert third.epoch in epochs, f"no command acknowledged after switching back: {epochs}"
    await final_checks(city, sender.acked, city.address(first.name))
    await settled(city)
    assert_no_split_brain(city, started)


# --- 4. etcd member loss ---------------------------------------------------------------------


@pytest.mark.timeout(120)
async def test_losing_one_etcd_member_changes_nothing(city: City) -> None:
    system = city.system
    etcd_cluster = city.etcd
    started = time.monotonic()
    leader, _ = await settled(city)
    raft = await asyncio.to_thread(etcd_cluster.raft_leader)
    # A follower: a killed Raft leader with short leases may make the post pause briefly.
    victim = next(m.index for m in etcd_cluster.members if m.index != raft)
    print(f"etcd: Raft leader member {raft}, killing member {victim}")

    sender = Sender(
        city.addresses(),
        "member",
        window_s=TAKEOVER_BOUND_S + 5,
        groups=GROUPS,
        channel_factory=city.system.channel_factory(),
        token=city.system.operator(LAMPS),
    ).start()
    seen: list[LeaderNow | None] = []
    restarted = False
    try:
        async with system.etcd_client() as etcd:
            await asyncio.sleep(1.0)
            await asyncio.to_thread(etcd_cluster.kill_member, victim)
            until = time.monotonic() + TTL_S + 3.0
            while time.monotonic() < until:
                seen.append(await read_leader(system, etcd))
                await asyncio.sleep(0.2)
            await asyncio.to_thread(etcd_cluster.restart_member, victim)
            restarted = True
            await asyncio.to_thread(etcd_cluster.wait_all_healthy, 30.0)
            await asyncio.sleep(1.0)
            seen.append(await read_leader(system, etcd))
    finally:
        if not restarted:
            await asyncio.to_thread(etcd_cluster.restart_member, victim)
        await asyncio.to_thread(sender.stop)
    changed = [s for s in seen if s != leader]
    assert not changed, f"the leader key changed while one member was down: {changed}"
    assert sender.acked, f"nothing acknowledged: {sender.failed}"
    assert not sender.failed, f"writes failed while one member was down: {sender.failed}"
    assert {c.epoch for c in sender.acked} == {leader.epoch}
    await final_checks(city, sender.acked, city.address(leader.name))
    now, _ = await settled(city)
    assert now == leader
    assert_no_split_brain(city, started)


# --- 5. etcd quorum loss and return ----------------------------------------------------------


@pytest.mark.timeout(150)
async def test_quorum_loss_stops_commanding_and_return_restores_one_leader(city: City) -> None:
    system = city.system
    etcd_cluster = city.etcd
    started = time.monotonic()
    old, _ = await settled(city)
    victims = [m.index for m in etcd_cluster.members][:2]
    sender = Sender(
        city.addresses(),
        "quorum",
        window_s=40.0,
        groups=GROUPS,
        channel_factory=city.system.channel_factory(),
        token=city.system.operator(LAMPS),
    ).start()
    restarted = False
    try:
        await asyncio.sleep(1.0)
        killed_at = time.monotonic()
        for i in victims:
            await asyncio.to_thread(etcd_cluster.kill_member, i)
        # The leader demotes itself once its lease may have expired (its status call
        # itself waits up to 2 s for the store, hence the slack).
        status = await wait_role(city.system, city.address(old.name), STANDBY, TTL_S + 5.0)
        print(f"quorum lost: {old.name} reported standby {time.monotonic() - killed_at:.2f} s on")
        assert status.role == STANDBY
        # After a margin for downlinks already on their way, the devices execute nothing.
        quiet_from = killed_at + TTL_S + 2.0
        await asyncio.sleep(max(0.0, quiet_from - time.monotonic()))
        quiet_start = len(city.network_server.executions())
        await asyncio.sleep(3.0)
        during = city.network_server.executions()[quiet_start:]
        leading = [
            s for s in city.poller.samples if s.at >= quiet_from and LEADER in s.roles.values()
        ]
        returned_at = time.monotonic()
        for i in victims:
            await asyncio.to_thread(etcd_cluster.restart_member, i, wait_healthy=False)
        restarted = True
        await asyncio.to_thread(etcd_cluster.wait_all_healthy, 30.0)
        async with system.etcd_client() as etcd:
            new, seen_at = await wait_leader(
                system, etcd, TAKEOVER_BOUND_S, newer_than=old.epoch - 1
            )
        print(f"quorum back: {new.name} leads (epoch {new.epoch}) {seen_at - returned_at:.2f} s on")
        await wait_role(city.system, city.address(new.name), LEADER, TAKEOVER_BOUND_S)
        await asyncio.sleep(2.0)
    finally:
        if not restarted:
            for i in victims:
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(etcd_cluster.restart_member, i, wait_healthy=False)
        await asyncio.to_thread(sender.stop)
    assert not during, f"executed while etcd had no quorum: {during[:10]}"
    assert not leading, f"a post said it leads while etcd had no quorum: {leading[:5]}"
    assert new.epoch >= old.epoch

    after = await send_some(city.system, "quorum-after", 3, 30.0)
    assert all(c.epoch == new.epoch for c in after), after
    await final_checks(city, sender.acked + after, city.address(new.name))
    now, _ = await settled(city)
    assert now == new
    assert_no_split_brain(city, started)


# --- 6. standby restarted while the leader runs ----------------------------------------------


@pytest.mark.timeout(300)
async def test_restarted_standby_catches_up(city: City) -> None:
    started = time.monotonic()
    leader, standby = await settled(city)
    await restart_post(city, standby)
    assert await settled(city) == (leader, standby)

    # Operator writes on the leader once the standby is back.
    acked = await send_some(city.system, "restart", 3, 50.0)
    assert all(c.epoch == leader.epoch for c in acked), acked
    request = operator_pb2.SetOverrideRequest(
        idempotency_key=str(uuid.uuid4()),
        asset_class=assets_pb2.STREET_LAMP,
        group=GROUPS[0],
        action=lamp_command(GROUPS[0], 77.0),
        duration_ms=120_000,
        reason="failover test: standby catch-up",
    )
    with city.system.channel(city.address(leader.name)) as channel:
        operator = operator_pb2_grpc.OperatorServiceStub(channel)
        override = operator.SetOverride(request, timeout=10, metadata=_bearer(city.system))
    assert override.override_id

    # The standby applies up to the store's revision after those writes, and its lag
    # is small (the leader keeps writing: ledger updates, policy commands).
    written = (
        await asyncio.to_thread(failover_status, city.system, city.address(leader.name))
    ).store_revision
    deadline = time.monotonic() + TAKEOVER_BOUND_S
    while True:
        status = await asyncio.to_thread(failover_status, city.system, city.address(standby))
        if (
            status.HasField("applied_revision")
            and status.applied_revision >= written
            and status.HasField("lag_revisions")
            and status.lag_revisions <= MAX_LAG_REVISIONS
        ):
            break
        assert time.monotonic() < deadline, f"{standby} did not catch up to {written}: {status}"
        await asyncio.sleep(0.1)
    print(f"standby {standby} applied {status.applied_revision}, lag {status.lag_revisions}")

    # Leading, the restarted post has every write.
    await switchover(city, standby)
    address = city.address(standby)
    with city.system.channel(address) as channel:
        operator = operator_pb2_grpc.OperatorServiceStub(channel)
        overrides = operator.ListOverrides(operator_pb2.ListOverridesRequest(), timeout=10)
    assert override.override_id in {o.override_id for o in overrides.overrides}
    await final_checks(city, acked, address)
    now, standby_now = await settled(city)
    assert (now.name, standby_now) == (standby, leader.name)
    assert_no_split_brain(city, started)

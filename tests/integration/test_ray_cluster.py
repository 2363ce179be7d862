"""A post's own Ray head: named actors, restarts after SIGKILL, clean stop.

One LocalRay is started for the module and this process is its driver. Ray
start takes a few seconds, so the timeouts are generous. `ray stop` is never
called: stopping is by PID, and a second cluster checks nothing else is hit.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import psutil
import pytest

from actors import ray_api
from actors.ray_api import ActorCallError, ActorState, ActorUnavailableError
from citypost.errors import (
    CitypostError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
)
from cluster.ray_local import CLUSTER_MARKER_ENV, QUIET_RAY, LocalRay

pytestmark = pytest.mark.integration

NAMESPACE = "itest"
CALL_TIMEOUT_S = 10.0
RESTART_TIMEOUT_S = 60.0
LOOPBACK_ADDRESSES = {"127.0.0.1", "::ffff:127.0.0.1"}

T = TypeVar("T")


class Counter:
    """A stateful actor: its count lives only in the worker's memory."""

    def __init__(self, start: int = 0) -> None:
        self.count = start

    def incr(self) -> int:
        self.count += 1
        return self.count

    def value(self) -> int:
        return self.count

    def pid(self) -> int:
        return os.getpid()

    def node_ip(self) -> str:
        import ray

        ip: str = ray.util.get_node_ip_address()
        return ip

    def sleep(self, seconds: float) -> float:
        time.sleep(seconds)
        return seconds

    def fail_not_found(self) -> None:
        raise NotFoundError("no such lamp")

    def fail_bug(self) -> None:
        raise ValueError("a bug")


class AsyncCounter(Counter):
    async def slow_value(self, seconds: float) -> int:
        await asyncio.sleep(seconds)
        return self.count


def retry_until_available(fn: Callable[[], T], timeout_s: float = RESTART_TIMEOUT_S) -> T:
    """Call `fn` until it stops raising ActorUnavailableError (a restart in progress)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return fn()
        except ActorUnavailableError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.1)


def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def listening_addresses(procs: list[psutil.Process]) -> set[str]:
    found: set[str] = set()
    for proc in procs:
        try:
            conns = proc.net_connections(kind="inet")
        except psutil.Error:
            continue
        found.update(c.laddr.ip for c in conns if c.status == psutil.CONN_LISTEN)
    return found


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRay]:
    """A started head (2 CPUs, 128 MiB object store) with this process as its driver."""
    head = LocalRay(tmp_path_factory.mktemp("ray"), name="itest", num_cpus=2, object_store_mb=128)
    try:
        head.start()
        ray_api.connect(head.address, namespace=NAMESPACE, env=head.env_for_driver())
        yield head
    finally:
        ray_api.disconnect()
        head.stop()


@pytest.fixture
def spawn(ray_head: LocalRay) -> Iterator[Callable[..., ray_api.Actor]]:
    """spawn(name, cls=Counter, **options): a named actor, killed after the test."""
    made: list[ray_api.Actor] = []

    def make(name: str, cls: type = Counter, *args: Any, **options: Any) -> ray_api.Actor:
        options.setdefault("max_restarts", 0)
        actor = ray_api.spawn(cls, name, *args, **options)
        made.append(actor)
        return actor

    yield make
    for actor in made:
        # Already dead, or the driver is gone: nothing left to clean.
        with contextlib.suppress(CitypostError):
            ray_api.kill(actor)


@pytest.mark.timeout(120)
def test_head_listens_on_loopback_only_and_driver_is_local(ray_head: LocalRay) -> None:
    procs = ray_head.processes()
    assert procs, "the started head has processes"
    addresses = listening_addresses(procs)
    assert str(ray_head.ports.gcs) in ray_head.address
    assert addresses, "Ray listens somewhere"
    assert addresses <= LOOPBACK_ADDRESSES
    assert ray_api.driver_node_ip() == "127.0.0.1"
    assert ray_head.token_path.stat().st_mode & 0o077 == 0


@pytest.mark.timeout(120)
def test_named_actor_answers_and_is_found_by_name(
    spawn: Callable[..., ray_api.Actor],
) -> None:
    actor = spawn("counter-named", Counter, 10)
    assert ray_api.call(actor, "incr", timeout_s=CALL_TIMEOUT_S) == 11
    assert ray_api.call(actor, "node_ip", timeout_s=CALL_TIMEOUT_S) == "127.0.0.1"

    again = ray_api.get_actor("counter-named")
    assert again.namespace == NAMESPACE
    assert ray_api.call(again, "incr", timeout_s=CALL_TIMEOUT_S) == 12
    # get_if_exists: spawning the same name returns the live actor, state and all.
    same = ray_api.spawn(Counter, "counter-named", 0, max_restarts=0)
    assert ray_api.call(same, "value", timeout_s=CALL_TIMEOUT_S) == 12

    info = ray_api.actor_info(actor)
    assert info.state is ActorState.ALIVE
    assert info.ip_address == "127.0.0.1"
    assert ray_api.actor_pid(actor) == ray_api.call(actor, "pid", timeout_s=CALL_TIMEOUT_S)


@pytest.mark.timeout(60)
def test_unknown_actor_and_method_are_citypost_errors(
    spawn: Callable[..., ray_api.Actor],
) -> None:
    with pytest.raises(NotFoundError):
        ray_api.get_actor("nobody-here")
    actor = spawn("counter-methods")
    with pytest.raises(InvalidArgumentError):
        ray_api.call(actor, "no_such_method", timeout_s=CALL_TIMEOUT_S)


@pytest.mark.timeout(60)
def test_errors_raised_in_the_actor_are_translated(
    spawn: Callable[..., ray_api.Actor],
) -> None:
    actor = spawn("counter-errors")
    with pytest.raises(NotFoundError, match="no such lamp"):
        ray_api.call(actor, "fail_not_found", timeout_s=CALL_TIMEOUT_S)
    with pytest.raises(ActorCallError, match="ValueError: a bug"):
        ray_api.call(actor, "fail_bug", timeout_s=CALL_TIMEOUT_S)
    # The actor survives its methods' exceptions.
    assert ray_api.call(actor, "incr", timeout_s=CALL_TIMEOUT_S) == 1


@pytest.mark.timeout(60)
def test_call_many_returns_each_result_or_its_error_in_order(
    spawn: Callable[..., ray_api.Actor],
) -> None:
    fast = spawn("counter-many-fast", Counter, 1)
    slow = spawn("counter-many-slow", Counter, 2)
    results = ray_api.call_many(
        [
            (fast, "incr", ()),
            (slow, "sleep", (5.0,)),
            (fast, "fail_not_found", ()),
            (fast, "no_such_method", ()),
            (fast, "value", ()),
        ],
        timeout_s=1.0,
    )
    assert results[0] == 2
    assert isinstance(results[1], ActorUnavailableError)
    assert isinstance(results[2], NotFoundError)
    assert isinstance(results[3], InvalidArgumentError)
    assert results[4] == 2


@pytest.mark.timeout(60)
def test_a_slow_call_times_out_as_unavailable(spawn: Callable[..., ray_api.Actor]) -> None:
    actor = spawn("counter-slow")
    with pytest.raises(ActorUnavailableError, match="timed out") as caught:
        ray_api.call(actor, "sleep", 5.0, timeout_s=0.2)
    assert caught.value.actor == "counter-slow"
    assert caught.value.grpc_status == "UNAVAILABLE"


@pytest.mark.timeout(60)
async def test_call_async_awaits_without_blocking_the_loop(
    spawn: Callable[..., ray_api.Actor],
) -> None:
    actor = spawn("counter-async", AsyncCounter, 5)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.create_task(ticker())
    try:
        value = await ray_api.call_async(actor, "slow_value", 0.5, timeout_s=CALL_TIMEOUT_S)
    finally:
        task.cancel()
    assert value == 5
    assert ticks > 5, "the event loop kept running while the call was in flight"
    with pytest.raises(ActorUnavailableError):
        await ray_api.call_async(actor, "slow_value", 5.0, timeout_s=0.2)
    with pytest.raises(NotFoundError):
        await ray_api.call_async(actor, "fail_not_found", timeout_s=CALL_TIMEOUT_S)


@pytest.mark.timeout(180)
def test_sigkilled_actor_restarts_with_a_new_pid_and_empty_state(
    spawn: Callable[..., ray_api.Actor],
) -> None:
    actor = spawn("counter-restart", Counter, 0, max_restarts=3)
    for _ in range(3):
        ray_api.call(actor, "incr", timeout_s=CALL_TIMEOUT_S)
    old_pid = ray_api.call(actor, "pid", timeout_s=CALL_TIMEOUT_S)
    assert ray_api.actor_pid(actor) == old_pid

    os.kill(old_pid, signal.SIGKILL)
    wait_for(lambda: not psutil.pid_exists(old_pid), 10, "the worker to die")

    new_pid = retry_until_available(lambda: ray_api.call(actor, "pid", timeout_s=CALL_TIMEOUT_S))
    assert new_pid != old_pid
    # The contract the post builds on: a restarted actor starts from its
    # constructor; whatever it held must be restored by the post.
    assert ray_api.call(actor, "value", timeout_s=CALL_TIMEOUT_S) == 0
    info = ray_api.actor_info(actor)
    assert info.state is ActorState.ALIVE
    assert info.num_restarts == 1
    assert info.pid == new_pid
    # The same name still leads to the restarted actor.
    named = ray_api.get_actor("counter-restart")
    assert ray_api.call(named, "pid", timeout_s=CALL_TIMEOUT_S) == new_pid


@pytest.mark.timeout(120)
def test_without_restarts_left_a_killed_actor_stays_dead(
    spawn: Callable[..., ray_api.Actor],
) -> None:
    actor = spawn("counter-mortal", Counter, 0, max_restarts=0)
    pid = ray_api.call(actor, "pid", timeout_s=CALL_TIMEOUT_S)
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: ray_api.actor_info(actor).state is ActorState.DEAD, 30, "the actor to be DEAD")
    with pytest.raises(ActorUnavailableError):
        ray_api.call(actor, "value", timeout_s=CALL_TIMEOUT_S)
    with pytest.raises(ActorUnavailableError):
        ray_api.actor_pid(actor)
    with pytest.raises(NotFoundError):
        ray_api.get_actor("counter-mortal")
    # The name can be used again: a supervisor can spawn a fresh incarnation.
    fresh = spawn("counter-mortal", Counter, 7)
    assert ray_api.call(fresh, "value", timeout_s=CALL_TIMEOUT_S) == 7


@pytest.mark.timeout(120)
def test_kill_without_restart_is_final_even_with_restarts_left(
    spawn: Callable[..., ray_api.Actor],
) -> None:
    actor = spawn("counter-killed", Counter, 0, max_restarts=5)
    ray_api.call(actor, "incr", timeout_s=CALL_TIMEOUT_S)
    ray_api.kill(actor, no_restart=True)
    wait_for(lambda: ray_api.actor_info(actor).state is ActorState.DEAD, 30, "the actor to be DEAD")
    with pytest.raises(ActorUnavailableError):
        ray_api.call(actor, "value", timeout_s=CALL_TIMEOUT_S)


@pytest.mark.timeout(60)
def test_connecting_twice_is_refused(ray_head: LocalRay) -> None:
    with pytest.raises(FailedPreconditionError):
        ray_api.connect(ray_head.address, namespace=NAMESPACE, env=ray_head.env_for_driver())
    assert ray_api.is_connected()


_FOREIGN_DRIVER = """
import sys
import ray
ray.init(address=sys.argv[1], namespace="other")
print(ray.cluster_resources().get("CPU", 0))
"""

# A bare GCS client: refused at once on a bad token, where ray.init retries for 20 s.
_GCS_CLIENT = """
import sys
from ray._raylet import GcsClient
GcsClient(address=sys.argv[1]).get_all_node_info(timeout=10)
"""


def run_python(
    script: str, address: str, env: dict[str, str]
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-c", script, address],
        env=env,
        capture_output=True,
        timeout=90,
        check=False,
    )


@pytest.mark.timeout(120)
def test_a_driver_needs_the_cluster_token(ray_head: LocalRay) -> None:
    base = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    good = {**base, **ray_head.env_for_driver()}
    ok = run_python(_FOREIGN_DRIVER, ray_head.address, good)
    assert ok.returncode == 0, ok.stderr.decode(errors="replace")[-2000:]
    assert float(ok.stdout.decode().strip().splitlines()[-1]) == 2.0

    wrong_token = {**good, "RAY_AUTH_TOKEN": "0" * 64}  # the variable wins over the file
    no_auth = {**good, "RAY_AUTH_MODE": "disabled"}
    for env in (wrong_token, no_auth):
        refused = run_python(_GCS_CLIENT, ray_head.address, env)
        assert refused.returncode != 0
        assert b"Authentication token is missing or incorrect" in refused.stderr


_DETACHED_DRIVER = """
import os, sys
import ray
ray.init(address=sys.argv[1], namespace="victim", _node_ip_address="127.0.0.1")

@ray.remote
class Holder:
    def pid(self):
        return os.getpid()

h = Holder.options(name="holder", lifetime="detached", num_cpus=0).remote()
print(ray.get(h.pid.remote(), timeout=60))
"""


@pytest.mark.timeout(240)
def test_stop_removes_every_process_of_its_cluster_and_only_those(
    ray_head: LocalRay, tmp_path: Path, spawn: Callable[..., ray_api.Actor]
) -> None:
    # The module's head is the bystander: it has a live actor throughout.
    bystander_actor = spawn("bystander", Counter, 41)
    bystander_pids = {p.pid for p in ray_head.processes()}

    victim = LocalRay(tmp_path / "victim", name="victim", num_cpus=1, object_store_mb=96)
    try:
        victim.start()
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        env.update(victim.env_for_driver())
        # A detached actor outlives its driver: a worker process the stop must reach.
        out = subprocess.run(
            [sys.executable, "-c", _DETACHED_DRIVER, victim.address],
            env=env,
            capture_output=True,
            timeout=120,
            check=False,
        )
        assert out.returncode == 0, out.stderr.decode(errors="replace")[-2000:]
        worker_pid = int(out.stdout.decode().strip().splitlines()[-1])
        victim_procs = victim.processes()
        assert worker_pid in {p.pid for p in victim_procs}
        assert not bystander_pids & {p.pid for p in victim_procs}
        temp_dir = victim.temp_dir
    finally:
        victim.stop()

    assert victim.processes() == []
    assert not psutil.pid_exists(worker_pid) or psutil.Process(worker_pid).status() == (
        psutil.STATUS_ZOMBIE
    )
    for proc in psutil.process_iter(["cmdline"]):
        try:
            assert not any(str(temp_dir) in arg for arg in proc.info["cmdline"] or [])
        except psutil.Error:
            continue
    assert not temp_dir.exists()
    assert (tmp_path / "victim" / "ray-logs").is_dir(), "the logs are kept in run_dir"

    # The other cluster did not notice.
    assert bystander_pids <= {p.pid for p in ray_head.processes()}
    assert ray_api.call(bystander_actor, "incr", timeout_s=CALL_TIMEOUT_S) == 42
    victim.stop()  # idempotent


@pytest.mark.timeout(60)
def test_cluster_processes_carry_the_marker_and_the_driver_does_not(ray_head: LocalRay) -> None:
    assert CLUSTER_MARKER_ENV not in os.environ
    assert os.getpid() not in {p.pid for p in ray_head.processes()}


@pytest.mark.timeout(60)
def test_every_cluster_process_runs_without_rays_own_bookkeeping(ray_head: LocalRay) -> None:
    """Task events, metrics and event stats off: read at start by each Ray process."""
    procs = ray_head.processes()
    assert procs
    for proc in procs:
        env = proc.environ()
        missing = {k: v for k, v in QUIET_RAY.items() if env.get(k) != v}
        assert not missing, f"{proc.name()} ({proc.pid}) lacks {missing}"


@pytest.mark.timeout(240)
def test_one_process_can_drive_another_cluster_after_disconnecting(
    ray_head: LocalRay, tmp_path: Path
) -> None:
    # Ray caches the auth mode and token per process; connect must reload them,
    # or the second cluster would be offered the first cluster's token.
    other = LocalRay(tmp_path / "other", name="other", num_cpus=1, object_store_mb=96)
    ray_api.disconnect()
    assert not ray_api.is_connected()
    assert "RAY_AUTH_TOKEN_PATH" not in os.environ, "disconnect restores the environment"
    try:
        other.start()
        ray_api.connect(other.address, namespace="other", env=other.env_for_driver())
        actor = ray_api.spawn(Counter, "elsewhere", 3, max_restarts=0)
        assert ray_api.call(actor, "incr", timeout_s=CALL_TIMEOUT_S) == 4
        assert ray_api.call(actor, "node_ip", timeout_s=CALL_TIMEOUT_S) == "127.0.0.1"
        assert ray_api.actor_pid(actor) in {p.pid for p in other.processes()}
    finally:
        ray_api.disconnect()
        other.stop()
        ray_api.connect(ray_head.address, namespace=NAMESPACE, env=ray_head.env_for_driver())
    back = ray_api.spawn(Counter, "back-home", 1, max_restarts=0)
    assert ray_api.call(back, "incr", timeout_s=CALL_TIMEOUT_S) == 2
    ray_api.kill(back)

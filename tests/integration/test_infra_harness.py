"""The local infrastructure harness: real etcd and mosquitto processes, started and stopped by PID."""

from __future__ import annotations

import asyncio
import json
import os
import queue
import signal
import threading
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path

import aetcd
import paho.mqtt.client as mqtt
import psutil
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_fixed

from citypost.errors import ConfigError, InfrastructureError, InvalidArgumentError
from cluster.etcd_local import LocalEtcd
from cluster.mosquitto_local import LocalMosquitto, mqtt_connects
from cluster.processes import ManagedProcess, find_binary
from failover.etcd_client import etcd_client, grpc_target

pytestmark = pytest.mark.integration

BrokerFactory = Callable[..., LocalMosquitto]

# What a call sees while a member is down or an election runs: retry those only.
_TRANSIENT = (aetcd.exceptions.ConnectionFailedError, aetcd.exceptions.ConnectionTimeoutError)


def _retrying() -> AsyncRetrying:
    return AsyncRetrying(
        retry=retry_if_exception_type(_TRANSIENT),
        stop=stop_after_delay(20),
        wait=wait_fixed(0.1),
        reraise=True,
    )


async def put_then_get(client: aetcd.Client, key: bytes, value: bytes) -> bytes | None:
    async for attempt in _retrying():
        with attempt:
            await client.put(key, value)
            got = await client.get(key)
    return got.value if got is not None else None


async def wait_for_serializable_value(client: aetcd.Client, key: bytes, value: bytes) -> None:
    """Poll one member's local (serializable) view until it has `value`: it has caught up."""
    async for attempt in _retrying():
        with attempt:
            got = await client.get(key, serializable=True)
            if got is None or got.value != value:
                raise aetcd.exceptions.ConnectionTimeoutError(f"member still has {got!r}")


def leader_index(cluster: LocalEtcd) -> int:
    """Index of the member that leads, from each member's own maintenance status."""
    for i, url in enumerate(cluster.client_urls):
        request = urllib.request.Request(f"{url}/v3/maintenance/status", data=b"{}")
        with urllib.request.urlopen(request, timeout=2) as resp:
            status = json.loads(resp.read())
        if status["header"]["member_id"] == status["leader"]:
            return i
    raise AssertionError("no member reports itself as leader")


def is_gone(proc: psutil.Process) -> bool:
    """No live process: exited, or a zombie awaiting a reaper that is not ours."""
    try:
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def live_members_of_groups(pgids: Iterable[int]) -> list[int]:
    wanted = set(pgids)
    found = []
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) in wanted and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc.pid)
        except (ProcessLookupError, psutil.NoSuchProcess):
            continue
    return found


def with_descendants(pid: int) -> list[psutil.Process]:
    proc = psutil.Process(pid)
    return [proc, *proc.children(recursive=True)]


def mqtt_roundtrip(host: str, port: int, topic: str, payload: bytes) -> mqtt.MQTTMessage:
    """Publish `payload` at QoS 1 with one MQTT v5 client and return what another receives."""
    received: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
    ready = {name: threading.Event() for name in ("sub-conn", "pub-conn", "suback")}

    def make(name: str) -> mqtt.Client:
        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=f"harness-{name}-{os.getpid()}",
            protocol=mqtt.MQTTv5,
        )
        client.on_connect = lambda c, u, f, rc, p: ready[f"{name}-conn"].set()
        return client

    sub, pub = make("sub"), make("pub")
    sub.on_subscribe = lambda c, u, mid, rcs, p: ready["suback"].set()
    sub.on_message = lambda c, u, msg: received.put(msg)
    try:
        for client in (sub, pub):
            client.connect(host, port, keepalive=10)
            client.loop_start()
        assert ready["sub-conn"].wait(10) and ready["pub-conn"].wait(10)
        sub.subscribe(topic, qos=1)
        assert ready["suback"].wait(10)
        info = pub.publish(topic, payload, qos=1)
        info.wait_for_publish(10)  # returns once the broker's PUBACK arrived
        assert info.is_published()
        return received.get(timeout=10)
    finally:
        for client in (sub, pub):
            client.disconnect()
            client.loop_stop()


@pytest.mark.timeout(30)
async def test_session_fixtures_serve_etcd_and_mqtt(
    etcd: LocalEtcd, mqtt_broker: LocalMosquitto
) -> None:
    async with etcd.client() as client:
        assert await put_then_get(client, b"/harness/session", b"ok") == b"ok"
    assert etcd.member_count == 1 and etcd.member_healthy(0)
    message = await asyncio.to_thread(
        mqtt_roundtrip, mqtt_broker.host, mqtt_broker.port, "harness/session", b"hello"
    )
    assert message.payload == b"hello"


@pytest.mark.timeout(120)
async def test_three_member_etcd_survives_a_killed_leader_and_stops_clean(tmp_path: Path) -> None:
    cluster = LocalEtcd(tmp_path / "etcd3", members=3)
    seen: list[psutil.Process] = []
    try:
        await asyncio.to_thread(cluster.start)
        assert all(cluster.member_healthy(i) for i in range(3))
        assert len(set(cluster.endpoints)) == 3
        for pid in cluster.pids:
            assert pid is not None
            seen += with_descendants(pid)

        async with cluster.client(timeout=2) as client:
            assert await put_then_get(client, b"/harness/k", b"before") == b"before"

            victim = leader_index(cluster)
            victim_endpoint = cluster.endpoints[victim]
            cluster.kill_member(victim, signal.SIGKILL)
            assert not cluster.member_alive(victim)
            assert not cluster.member_healthy(victim)
            # The two others elect a leader; the same client, knowing every member, goes on.
            assert await put_then_get(client, b"/harness/k", b"during") == b"during"

            await asyncio.to_thread(cluster.restart_member, victim)
            assert cluster.endpoints[victim] == victim_endpoint
            assert cluster.member_healthy(victim)
            restarted_pid = cluster.pids[victim]
            assert restarted_pid is not None
            seen += with_descendants(restarted_pid)
            assert await put_then_get(client, b"/harness/k", b"after") == b"after"

        # The restarted member rejoined: its own log reaches the latest write.
        async with etcd_client([victim_endpoint], timeout=2) as solo:
            await wait_for_serializable_value(solo, b"/harness/k", b"after")
    finally:
        await asyncio.to_thread(cluster.stop)

    assert all(is_gone(p) for p in seen), [p.pid for p in seen if not is_gone(p)]
    assert live_members_of_groups(p.pid for p in seen) == []
    assert not any(cluster.member_alive(i) for i in range(3))


@pytest.mark.timeout(60)
def test_mosquitto_delivers_qos1_survives_kill_and_restarts_on_its_port(
    fresh_broker: BrokerFactory,
) -> None:
    broker = fresh_broker(persistence=True)
    port = broker.port
    assert broker.pid is not None
    first = with_descendants(broker.pid)

    message = mqtt_roundtrip(broker.host, port, "harness/mqtt", b"one")
    assert (message.payload, message.qos) == (b"one", 1)

    broker.kill(signal.SIGKILL)
    assert not broker.alive
    assert not mqtt_connects(broker.host, port)

    broker.restart()
    assert broker.port == port
    assert broker.pid is not None and broker.pid != first[0].pid
    second = with_descendants(broker.pid)
    assert all(is_gone(p) for p in first)
    assert mqtt_roundtrip(broker.host, port, "harness/mqtt", b"two").payload == b"two"

    broker.stop()
    assert all(is_gone(p) for p in first + second)
    assert live_members_of_groups(p.pid for p in first + second) == []
    assert not mqtt_connects(broker.host, port)
    assert "listener" in broker.config_path.read_text()
    assert (broker.persistence_dir / "mosquitto.db").exists()


def test_missing_binary_raises_with_install_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(InfrastructureError, match="citypost-no-such-daemon not found: install"):
        find_binary("citypost-no-such-daemon")

    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(InfrastructureError) as etcd_missing:
        find_binary("etcd", extra_dirs=())
    assert etcd_missing.value.message == (
        "etcd not found: install etcd-server (apt-get install etcd-server) "
        "or point the config at an existing cluster"
    )
    with pytest.raises(InfrastructureError, match=r"apt-get install mosquitto"):
        find_binary("mosquitto", extra_dirs=())
    # The same error reaches whoever starts a cluster.
    with pytest.raises(InfrastructureError, match="install etcd-server"):
        LocalEtcd(tmp_path / "etcd", members=1).start()


def test_find_binary_looks_in_sbin_when_path_lacks_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    found = Path(find_binary("mosquitto"))
    assert found.name == "mosquitto" and os.access(found, os.X_OK)


@pytest.mark.parametrize("members", [0, 2, 4, 9])
def test_etcd_refuses_an_even_or_out_of_range_member_count(tmp_path: Path, members: int) -> None:
    with pytest.raises(ConfigError, match="members must be odd"):
        LocalEtcd(tmp_path, members=members)


def test_grpc_target_names_every_member_by_ip() -> None:
    assert grpc_target(["127.0.0.1:1", "127.0.0.1:2"]) == "ipv4:127.0.0.1:1,127.0.0.1:2"
    assert grpc_target(["[::1]:1", "[::1]:2"]) == "ipv6:[::1]:1,[::1]:2"
    assert grpc_target(["etcd.example:2379"]) == "etcd.example:2379"
    with pytest.raises(InvalidArgumentError, match="IP address"):
        grpc_target(["a.example:2379", "b.example:2379"])
    with pytest.raises(InvalidArgumentError, match="at least one"):
        grpc_target([])


@pytest.mark.timeout(10)
def test_wait_ready_fails_fast_with_the_log_tail(tmp_path: Path) -> None:
    # The deadline is far beyond the test timeout: only the exit can end the wait in time.
    quitter = ManagedProcess(
        "quitter",
        ["sh", "-c", 'for i in $(seq 1 40); do echo "line-$i"; done; exit 3'],
        tmp_path / "quitter.log",
    )
    quitter.start()
    try:
        with pytest.raises(InfrastructureError) as failure:
            quitter.wait_ready(lambda: False, timeout=600)
    finally:
        code = quitter.stop()
    message = failure.value.message
    assert "exited with code 3" in message
    assert "line-40" in message and "line-11\n" in message
    assert "line-10\n" not in message  # only the last 30 lines
    assert code == 3


@pytest.mark.timeout(30)
def test_stop_kills_a_group_that_ignores_sigterm(tmp_path: Path) -> None:
    log = tmp_path / "stubborn.log"
    # SIG_IGN is inherited across exec, so the background sleep ignores SIGTERM too.
    stubborn = ManagedProcess(
        "stubborn", ["sh", "-c", "trap '' TERM; sleep 300 & echo ready; wait"], log
    )
    stubborn.start()
    try:
        stubborn.wait_ready(lambda: "ready" in log.read_text().splitlines(), timeout=10)
        assert stubborn.pid is not None
        procs = with_descendants(stubborn.pid)
        assert len(procs) == 2
    finally:
        code = stubborn.stop(timeout=0.5)
    assert code == -signal.SIGKILL
    assert all(is_gone(p) for p in procs)
    assert not stubborn.alive


@pytest.mark.timeout(30)
def test_stop_also_kills_a_child_that_left_the_group(tmp_path: Path) -> None:
    log = tmp_path / "escaper.log"
    escaper = ManagedProcess("escaper", ["sh", "-c", "setsid sleep 300 & echo ready; wait"], log)
    escaper.start()
    procs: list[psutil.Process] = []

    def escaped() -> bool:
        assert escaper.pid is not None
        procs[:] = with_descendants(escaper.pid)
        return len(procs) == 2 and os.getsid(procs[1].pid) != os.getsid(escaper.pid)

    try:
        escaper.wait_ready(escaped, timeout=10)
    finally:
        escaper.stop(timeout=5)
    assert all(is_gone(p) for p in procs)

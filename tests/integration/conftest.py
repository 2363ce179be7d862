"""Fixtures that run real etcd, mosquitto and Ray processes for the integration tier.

Every fixture stops what it started in its finalizer, also when tests fail.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from actors import ray_api
from cluster.etcd_local import LocalEtcd
from cluster.mosquitto_local import LocalMosquitto
from cluster.ray_local import LocalRay

BrokerFactory = Callable[..., LocalMosquitto]


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One directory for the session's processes: their data, configs and logs."""
    return tmp_path_factory.mktemp("run")


@pytest.fixture(scope="session")
def etcd(run_dir: Path) -> Iterator[LocalEtcd]:
    """A started 1-member etcd (50 ms heartbeat, 500 ms election) shared by the session."""
    cluster = LocalEtcd(run_dir / "etcd", members=1)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def etcd3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalEtcd]:
    """A private 3-member etcd per module (its tests may kill members), 50 ms heartbeat /
    500 ms election."""
    cluster = LocalEtcd(tmp_path_factory.mktemp("etcd3") / "etcd", members=3)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def mqtt_broker(run_dir: Path) -> Iterator[LocalMosquitto]:
    """A started mosquitto on a free loopback port, shared by the session."""
    broker = LocalMosquitto(run_dir / "mosquitto")
    try:
        broker.start()
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def fresh_broker(tmp_path: Path) -> Iterator[BrokerFactory]:
    """Factory for private brokers (to kill or restart); each is stopped after the test.

    `fresh_broker(**kwargs)` takes LocalMosquitto's keyword arguments
    (persistence=True, port=..., max_queued_messages=...) and returns it started.
    """
    started: list[LocalMosquitto] = []

    def make(**kwargs: Any) -> LocalMosquitto:
        broker = LocalMosquitto(tmp_path / f"mosquitto-{len(started)}", **kwargs)
        started.append(broker)
        return broker.start()

    try:
        yield make
    finally:
        failures: list[Exception] = []
        for broker in started:
            try:
                broker.stop()
            except Exception as exc:  # stop the others before reporting
                failures.append(exc)
        if failures:
            raise failures[0]


@pytest.fixture(scope="module")
def ray_cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalRay]:
    """A Ray head for one test module, with this process as its driver (a namespace of
    the module's own)."""
    name = request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_")[:10]
    head = LocalRay(tmp_path_factory.mktemp(f"ray-{name}"), name=name)
    head.start()
    ray_api.connect(head.address, namespace=name, env=head.env_for_driver())
    try:
        yield head
    finally:
        ray_api.disconnect()
        head.stop()

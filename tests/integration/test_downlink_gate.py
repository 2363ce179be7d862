"""The downlink gate against a real mosquitto: epoch fencing, dead letters, restart, raise_epoch,
confirming an epoch with etcd (here a stand-in: the real one is in test_gate_confirm), and
its airtime plan (refusing at once, safety first, held commands fenced again)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from bridges import chirpstack
from bridges.airtime import RX2_FREQUENCY_HZ, downlink_airtime_s
from bridges.airtime_planner import AirtimePlanner, Priority, Route
from bridges.dead_letters import from_json
from bridges.downlink_frame import COMMAND_F_PORT, decode_command, encode_command
from bridges.downlink_gate import DownlinkGate, gate_topic, plan_properties
from bridges.gate_book import GateStateError, load_mark
from bridges.mqtt_session import MqttSession
from bridges.registry import RadioClass
from citypost.clock import SimClock
from citypost.config import Config, load_config
from citypost.errors import InfrastructureError, InvalidArgumentError
from cluster.mosquitto_local import LocalMosquitto
from protos.citypost.v1 import command_pb2

pytestmark = pytest.mark.integration

# A component on its own against the plain test broker: the city's TLS and ACL are
# tested with the whole city (CitySystem) and in test_mqtt_access.
PLAIN = {"security.tls": False}

APP = "gate-test-app"
DEV = "70b3d57e00000042"


class LeaderKey:
    """What etcd's leader key says, as the gate's EpochConfirmer reads it: the epoch of
    the leader (None: no leader), or an outage (`failing`). Counts the reads."""

    def __init__(self, epoch: int | None = None) -> None:
        self.epoch = epoch
        self.failing = False
        self.reads = 0

    def __call__(self) -> int | None:
        self.reads += 1
        if self.failing:
            raise InfrastructureError("etcd has no quorum (the test says so)")
        return self.epoch


def _config(port: int, city: str) -> Config:
    # A city of its own per test: its own gate session, gate topics and dead-letter topic.
    return load_config(overrides={"mqtt.port": port, **PLAIN, "city.name": city})


def _downlink(epoch: int, command_id: str | None = None) -> tuple[str, bytes, str]:
    """(NS topic, ChirpStack command/down payload, command_id) of a brightness command."""
    command_id = command_id or str(uuid.uuid4())
    command = command_pb2.Command(command_id=command_id, epoch=epoch)
    command.set_brightness.brightness_pct = 30
    payload = chirpstack.build_downlink(
        DEV, COMMAND_F_PORT, encode_command(command), confirmed=True, id=command_id
    )
    return chirpstack.downlink_topic(APP, DEV), payload, command_id


class Watcher:
    """A plain subscriber that records (topic, payload) in arrival order."""

    def __init__(self, port: int, topic: str) -> None:
        self.received: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *_a: self._ready.set()
        self.client.connect("127.0.0.1", port)
        self.client.subscribe(topic, qos=1)
        self.client.loop_start()
        assert self._ready.wait(10), "the watcher's subscription was not acknowledged"

    def _on_message(self, _c: mqtt.Client, _u: object, message: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.received.append((message.topic, bytes(message.payload)))

    def snapshot(self) -> list[tuple[str, bytes]]:
        with self._lock:
            return list(self.received)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@contextmanager
def watching(port: int, topic: str) -> Iterator[Watcher]:
    watcher = Watcher(port, topic)
    try:
        yield watcher
    finally:
        watcher.close()


@contextmanager
def running_gate(
    config: Config, state_path: Path, leader: LeaderKey, *, end_session: bool = True
) -> Iterator[DownlinkGate]:
    gate = DownlinkGate(config=config, state_path=state_path, confirm=leader)
    gate.start()
    try:
        yield gate
    finally:
        gate.stop(end_session=end_session)


@contextmanager
def publishing(port: int) -> Iterator[MqttSession]:
    session = MqttSession(
        client_id=f"test-post-{uuid.uuid4().hex[:8]}", host="127.0.0.1", port=port
    )
    session.start()
    try:
        yield session
    finally:
        session.stop(end_session=True)


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _send(post: MqttSession, city: str, topic: str, payload: bytes) -> None:
    post.client.publish(gate_topic(city, topic), payload, qos=1).wait_for_publish(5)


@pytest.mark.timeout(30)
def test_forwards_current_and_newer_epochs_in_order_and_drops_stale(
    mqtt_broker: LocalMosquitto, tmp_path: Path
) -> None:
    config = _config(mqtt_broker.port, "gate-order")
    sent = {epoch: _downlink(epoch) for epoch in (5, 4, 6)}
    leader = LeaderKey(5)
    with (
        watching(mqtt_broker.port, chirpstack.downlink_topic(APP, DEV)) as network_server,
        running_gate(config, tmp_path / "mark.json", leader) as gate,
        publishing(mqtt_broker.port) as post,
    ):
        for epoch in (5, 4):
            topic, payload, _ = sent[epoch]
            _send(post, "gate-order", topic, payload)
        wait_for(lambda: gate.stats().dropped >= 1, 10, "the stale downlink dropped")
        leader.epoch = 6  # a new leader, whose first command beats the leader watch
        _send(post, "gate-order", *sent[6][:2])
        wait_for(lambda: len(network_server.snapshot()) >= 2, 10, "two forwarded downlinks")
        # Whatever the gate forwards comes in order: after 6 nothing of 4 can follow.
        wait_for(lambda: gate.stats().pending_acks == 0, 10, "the broker's PUBACKs")
        assert network_server.snapshot() == [
            (sent[5][0], sent[5][1]),
            (sent[6][0], sent[6][1]),
        ]
        stats = gate.stats()
        assert stats.forwarded == 2
        assert stats.dropped_by_reason == {"stale_epoch": 1}
        assert stats.dead_letters_by_reason == {}
        assert stats.highest_epoch == 6
        assert stats.persisted_epoch == 6
        assert leader.reads == 2  # once per new epoch, not per command
    assert load_mark(tmp_path / "mark.json") == 6


@pytest.mark.timeout(30)
def test_malformed_downlinks_go_to_dead_letters_and_the_gate_keeps_working(
    mqtt_broker: LocalMosquitto, tmp_path: Path
) -> None:
    city = "gate-bad"
    config = _config(mqtt_broker.port, city)
    topic, good, command_id = _downlink(3)
    other_device = chirpstack.downlink_topic(APP, "70b3d57e000000ff")
    short_frame = chirpstack.build_downlink(DEV, COMMAND_F_PORT, b"\x01\x02", id=command_id)
    wrong_port = good.replace(b'"fPort":100', b'"fPort":7')
    wrong_id = good.replace(command_id.encode(), str(uuid.uuid4()).encode())
    bad = [
        (topic, b"{not json", "bad_json"),
        (topic, b'{"devEui": 5}', "bad_envelope"),
        (topic, short_frame, "bad_envelope"),
        (topic, wrong_port, "wrong_fport"),
        (topic, wrong_id, "bad_envelope"),
        (other_device, good, "bad_envelope"),  # topic and payload name different devices
    ]
    assert wrong_port != good and wrong_id != good
    with (
        watching(mqtt_broker.port, config.edge.dead_letter_topic(city)) as letters,
        watching(mqtt_broker.port, f"application/{APP}/device/+/command/down") as network_server,
        running_gate(config, tmp_path / "mark.json", LeaderKey(3)) as gate,
        publishing(mqtt_broker.port) as post,
    ):
        for bad_topic, payload, _ in bad:
            _send(post, city, bad_topic, payload)
        _send(post, city, topic, good)
        wait_for(lambda: len(letters.snapshot()) >= len(bad), 10, "every dead letter")
        wait_for(lambda: len(network_server.snapshot()) >= 1, 10, "the good downlink")
        parsed = [from_json(raw) for _, raw in letters.snapshot()]
        assert sorted(p.reason for p in parsed) == sorted(reason for _, _, reason in bad)
        assert {p.payload for p in parsed if p.reason == "bad_json"} == {b"{not json"}
        assert all(p.edge == "downlink-gate" for p in parsed)
        assert network_server.snapshot() == [(topic, good)]
        stats = gate.stats()
        assert stats.connected
        assert stats.forwarded == 1
        assert sum(stats.dead_letters_by_reason.values()) == len(bad)
        assert stats.highest_epoch == 3


@pytest.mark.timeout(40)
def test_a_restarted_gate_still_fences_with_its_persisted_mark(
    mqtt_broker: LocalMosquitto, tmp_path: Path
) -> None:
    city = "gate-restart"
    config = _config(mqtt_broker.port, city)
    state = tmp_path / "mark.json"
    leader = LeaderKey(6)
    with (
        watching(mqtt_broker.port, chirpstack.downlink_topic(APP, DEV)) as network_server,
        publishing(mqtt_broker.port) as post,
    ):
        with running_gate(config, state, leader, end_session=False) as gate:
            _send(post, city, *_downlink(6)[:2])
            wait_for(lambda: len(network_server.snapshot()) == 1, 10, "epoch 6 forwarded")
            wait_for(lambda: gate.stats().pending_acks == 0, 10, "the broker's PUBACK")
        assert load_mark(state) == 6
        reads = leader.reads
        with running_gate(config, state, leader) as restarted:
            assert restarted.stats().highest_epoch == 6
            stale_topic, stale, _ = _downlink(4)
            _send(post, city, stale_topic, stale)
            wait_for(lambda: restarted.stats().dropped >= 1, 10, "epoch 4 dropped")
            fresh = _downlink(6)
            _send(post, city, *fresh[:2])
            wait_for(lambda: len(network_server.snapshot()) >= 2, 10, "epoch 6 forwarded again")
            assert restarted.stats().dropped_by_reason == {"stale_epoch": 1}
            assert [payload for _, payload in network_server.snapshot()][1:] == [fresh[1]]
            assert leader.reads == reads  # the mark on disk was confirmed: no read


@pytest.mark.timeout(30)
def test_raise_epoch_fences_older_commands_before_the_new_leader_speaks(
    mqtt_broker: LocalMosquitto, tmp_path: Path
) -> None:
    city = "gate-raise"
    config = _config(mqtt_broker.port, city)
    state = tmp_path / "mark.json"
    leader = LeaderKey(9)
    with (
        watching(mqtt_broker.port, chirpstack.downlink_topic(APP, DEV)) as network_server,
        running_gate(config, state, leader) as gate,
        publishing(mqtt_broker.port) as post,
    ):
        # The etcd watch runs elsewhere: raise_epoch is called from another thread.
        raiser = threading.Thread(target=gate.raise_epoch, args=(9,))
        raiser.start()
        raiser.join(5)
        assert load_mark(state) == 9  # durable before any command of epoch 9
        _send(post, city, *_downlink(8)[:2])
        wait_for(lambda: gate.stats().dropped >= 1, 10, "epoch 8 dropped")
        topic, payload, _ = _downlink(9)
        _send(post, city, topic, payload)
        wait_for(lambda: len(network_server.snapshot()) >= 1, 10, "epoch 9 forwarded")
        assert network_server.snapshot() == [(topic, payload)]
        assert gate.stats().dropped_by_reason == {"stale_epoch": 1}
        assert leader.reads == 0  # the watch told first: nothing to ask


@pytest.mark.timeout(10)
def test_a_corrupt_mark_file_stops_the_gate_from_starting(
    mqtt_broker: LocalMosquitto, tmp_path: Path
) -> None:
    state = tmp_path / "mark.json"
    state.write_bytes(b'{"version": 1, "highest_')  # what a torn, non-atomic write would leave
    with pytest.raises(GateStateError):
        DownlinkGate(config=_config(mqtt_broker.port, "gate-corrupt"), state_path=state)


def test_gate_topic_wraps_only_command_down_topics() -> None:
    down = chirpstack.downlink_topic(APP, DEV)
    assert gate_topic("dijon", down) == f"citypost/dijon/gate/{down}"
    with pytest.raises(InvalidArgumentError):
        gate_topic("dijon", chirpstack.uplink_topic(APP, DEV))
    with pytest.raises(InvalidArgumentError):
        gate_topic("dijon", "not/a/topic")


@pytest.mark.timeout(30)
def test_a_mark_that_cannot_be_persisted_blocks_the_higher_epoch(
    mqtt_broker: LocalMosquitto, tmp_path: Path
) -> None:
    city = "gate-nodisk"
    config = _config(mqtt_broker.port, city)
    leader = LeaderKey(2)
    with (
        watching(mqtt_broker.port, chirpstack.downlink_topic(APP, DEV)) as network_server,
        running_gate(config, tmp_path / "mark.json", leader) as gate,
        publishing(mqtt_broker.port) as post,
    ):
        _send(post, city, *_downlink(2)[:2])
        wait_for(lambda: len(network_server.snapshot()) == 1, 10, "epoch 2 forwarded")
        blocker = tmp_path / "not-a-directory"
        blocker.write_bytes(b"")
        gate.state_path = blocker / "mark.json"  # every write now fails
        leader.epoch = 3
        _send(post, city, *_downlink(3)[:2])
        wait_for(lambda: gate.stats().dropped >= 1, 10, "epoch 3 refused")
        assert gate.stats().dropped_by_reason == {"persist_failed": 1}
        with pytest.raises(InfrastructureError):
            gate.raise_epoch(4)
        assert gate.stats().highest_epoch == 4  # fenced in memory all the same
        assert gate.stats().persisted_epoch == 2
        _send(post, city, *_downlink(2)[:2])
        wait_for(lambda: gate.stats().dropped >= 2, 10, "epoch 2 now stale")
        assert len(network_server.snapshot()) == 1


# --- only etcd moves the mark -------------------------------------------------------------


@pytest.mark.timeout(30)
def test_an_epoch_etcd_does_not_confirm_is_dropped_dead_lettered_and_the_mark_stays(
    mqtt_broker: LocalMosquitto, tmp_path: Path
) -> None:
    city = "gate-unconfirmed"
    config = _config(mqtt_broker.port, city)
    leader = LeaderKey(5)
    state = tmp_path / "mark.json"
    forged = _downlink(10**15)  # far above the leader's epoch
    with (
        watching(mqtt_broker.port, config.edge.dead_letter_topic(city)) as letters,
        watching(mqtt_broker.port, chirpstack.downlink_topic(APP, DEV)) as network_server,
        running_gate(config, state, leader) as gate,
        publishing(mqtt_broker.port) as post,
    ):
        _send(post, city, *_downlink(5)[:2])
        wait_for(lambda: gate.stats().forwarded == 1, 10, "the leader's command")
        _send(post, city, *forged[:2])
        wait_for(lambda: len(letters.snapshot()) == 1, 10, "the forged command's dead letter")
        leader.epoch = None  # the leader key gone: nobody's epoch is confirmed
        _send(post, city, *_downlink(6)[:2])
        wait_for(lambda: gate.stats().dropped >= 2, 10, "epoch 6 unconfirmed")
        leader.epoch = 5
        after = _downlink(5)
        _send(post, city, *after[:2])  # the real leader's next command
        wait_for(lambda: gate.stats().forwarded == 2, 10, "the leader's next command")
        wait_for(lambda: gate.stats().pending_acks == 0, 10, "the broker's PUBACKs")
        # Forwarded is counted at the publish; the network server hears it a moment later.
        wait_for(lambda: len(network_server.snapshot()) == 2, 10, "the network server")
        stats = gate.stats()
        assert stats.dropped_by_reason == {"unconfirmed_epoch": 2}
        assert (stats.highest_epoch, stats.persisted_epoch) == (5, 5)
        assert stats.confirm_failures == 0
        assert [p for _, p in network_server.snapshot()][1:] == [after[1]]
        assert leader.reads == 3  # 5 once, then each unconfirmed epoch
        letter = from_json(letters.snapshot()[0][1])
        assert letter.reason == "unconfirmed_epoch" and letter.edge == "downlink-gate"
        assert letter.payload == forged[1] and forged[2] in letter.detail
    assert load_mark(state) == 5


@pytest.mark.timeout(40)
def test_when_etcd_cannot_answer_the_command_waits_in_the_broker_and_is_never_forwarded(
    mqtt_broker: LocalMosquitto, tmp_path: Path
) -> None:
    city = "gate-no-quorum"
    config = _config(mqtt_broker.port, city)
    leader = LeaderKey(5)
    state = tmp_path / "mark.json"
    command = _downlink(6)
    with (
        watching(mqtt_broker.port, config.edge.dead_letter_topic(city)) as letters,
        watching(mqtt_broker.port, chirpstack.downlink_topic(APP, DEV)) as network_server,
        publishing(mqtt_broker.port) as post,
    ):
        with running_gate(config, state, leader, end_session=False) as gate:
            _send(post, city, *_downlink(5)[:2])
            wait_for(lambda: gate.stats().forwarded == 1, 10, "the leader's command")
            leader.failing = True  # a new leader is elected; then etcd loses its quorum
            _send(post, city, *command[:2])
            wait_for(lambda: gate.stats().confirm_failures == 1, 10, "the failed read")
            time.sleep(0.3)
            stats = gate.stats()
            assert len(network_server.snapshot()) == 1  # not forwarded
            assert stats.dropped_by_reason == {} and letters.snapshot() == []  # nor dropped
            assert stats.highest_epoch == 5
        leader.failing, leader.epoch = False, 6  # etcd is back
        # Never acknowledged: the broker delivers it again to the gate's session.
        with running_gate(config, state, leader) as restarted:
            wait_for(lambda: len(network_server.snapshot()) == 2, 10, "the command again")
            assert network_server.snapshot()[1] == (command[0], command[1])
            assert restarted.stats().highest_epoch == 6
        assert letters.snapshot() == []


# --- the airtime plan ---------------------------------------------------------------------

GW = "0016c001f1000001"


@contextmanager
def planned_gate(
    config: Config, state_path: Path, planner: AirtimePlanner, leader: LeaderKey
) -> Iterator[DownlinkGate]:
    gate = DownlinkGate(
        config=config,
        state_path=state_path,
        planner=planner,
        routes={DEV: Route(RadioClass.C, (GW,))},
        clock=SimClock(datetime(2026, 1, 15, 18, 0, tzinfo=UTC), 1.0),
        confirm=leader,
    )
    gate.start()
    try:
        yield gate
    finally:
        gate.stop(end_session=True)


def _send_planned(
    post: MqttSession, city: str, topic: str, payload: bytes, priority: int, deadline_ms: int
) -> None:
    post.client.publish(
        gate_topic(city, topic), payload, qos=1, properties=plan_properties(priority, deadline_ms)
    ).wait_for_publish(5)


def _spent_planner() -> AirtimePlanner:
    """A plan whose gateway spent its budget almost an hour ago: it frees in a few seconds."""
    planner = AirtimePlanner(rx2_dr=3)
    clock = SimClock(datetime(2026, 1, 15, 18, 0, tzinfo=UTC), 1.0)
    airtime = downlink_airtime_s(41, 3)
    spent_at = clock.now_ts() - 3600 + 3
    while planner.book.fits(GW, RX2_FREQUENCY_HZ, spent_at, airtime):
        planner.book.record(GW, RX2_FREQUENCY_HZ, spent_at, airtime)
    return planner


@pytest.mark.timeout(30)
def test_with_the_gateway_spent_a_policy_command_is_refused_at_once_and_safety_still_goes(
    mqtt_broker: LocalMosquitto, tmp_path: Path
) -> None:
    config = _config(mqtt_broker.port, "gate-plan")
    planner = AirtimePlanner(rx2_dr=3)
    # Fill the gateway's RX2 budget past the policies' share (80 %), as traffic would.
    clock = SimClock(datetime(2026, 1, 15, 18, 0, tzinfo=UTC), 1.0)
    airtime = downlink_airtime_s(41, 3)
    while planner.book.fits(GW, RX2_FREQUENCY_HZ, clock.now_ts(), airtime + 0.15 * 360):
        planner.book.record(GW, RX2_FREQUENCY_HZ, clock.now_ts(), airtime)
    policy_topic, policy, policy_id = _downlink(5)
    safety_topic, safety, safety_id = _downlink(5)
    soon = int(time.time() * 1000) + 30_000
    with (
        watching(mqtt_broker.port, chirpstack.downlink_topic(APP, DEV)) as network_server,
        watching(mqtt_broker.port, chirpstack.log_topic(APP, DEV)) as logs,
        planned_gate(config, tmp_path / "mark.json", planner, LeaderKey(5)) as gate,
        publishing(mqtt_broker.port) as post,
    ):
        _send_planned(post, "gate-plan", policy_topic, policy, Priority.POLICY, soon)
        _send_planned(post, "gate-plan", safety_topic, safety, Priority.SAFETY, soon)
        wait_for(lambda: len(network_server.snapshot()) >= 1, 10, "the safety command forwarded")
        wait_for(lambda: len(logs.snapshot()) >= 1, 10, "the refusal told as an event/log")
        wait_for(lambda: gate.stats().pending_acks == 0, 10, "the broker's PUBACKs")
        assert [chirpstack.parse_downlink(p).id for _, p in network_server.snapshot()] == [
            safety_id
        ]
        (refusal,) = [chirpstack.parse_log(p) for _, p in logs.snapshot()]
        assert (refusal.level, refusal.code) == ("ERROR", "DOWNLINK_GATEWAY")
        assert refusal.context["queue_item_id"] == policy_id
        assert "DUTY_CYCLE_OVERFLOW" in refusal.description and GW in refusal.description
        assert gate.stats().refused_for_airtime == 1 and gate.stats().held == 0


@pytest.mark.timeout(30)
def test_a_held_command_goes_when_its_gateway_frees_and_not_if_its_epoch_was_fenced_meanwhile(
    mqtt_broker: LocalMosquitto, tmp_path: Path
) -> None:
    config = _config(mqtt_broker.port, "gate-held")
    planner = _spent_planner()
    old_topic, old, _ = _downlink(5)
    new_topic, new, new_id = _downlink(5)
    leader = LeaderKey(5)
    with (
        watching(mqtt_broker.port, chirpstack.downlink_topic(APP, DEV)) as network_server,
        planned_gate(config, tmp_path / "mark.json", planner, leader) as gate,
        publishing(mqtt_broker.port) as post,
    ):
        _send_planned(post, "gate-held", old_topic, old, Priority.OPERATOR, 0)
        wait_for(lambda: gate.stats().held == 1, 10, "the command held for airtime")
        leader.epoch = 6
        gate.raise_epoch(6)  # a new leader while it waits
        new = chirpstack.build_downlink(
            DEV,
            COMMAND_F_PORT,
            encode_command(
                command_pb2.Command(
                    command_id=new_id, epoch=6, set_brightness={"brightness_pct": 9}
                )
            ),
            confirmed=True,
            id=new_id,
        )
        _send_planned(post, "gate-held", new_topic, new, Priority.OPERATOR, 0)
        wait_for(lambda: gate.stats().held == 0, 15, "the held commands decided")
        wait_for(lambda: len(network_server.snapshot()) >= 1, 10, "the new leader's command")
        time.sleep(0.3)
        assert [chirpstack.parse_downlink(p).id for _, p in network_server.snapshot()] == [new_id]
        assert gate.stats().dropped_by_reason.get("stale_epoch") == 1


@pytest.mark.timeout(30)
def test_copies_of_a_held_command_wait_as_one_and_the_newest_goes(
    mqtt_broker: LocalMosquitto, tmp_path: Path
) -> None:
    config = _config(mqtt_broker.port, "gate-copies")
    planner = _spent_planner()
    topic, first, command_id = _downlink(5)
    _, retry, _ = _downlink(5, command_id)  # the post's retry of the same command
    _, replay, _ = _downlink(6, command_id)  # a new leader's replay of it
    leader = LeaderKey(5)
    with (
        watching(mqtt_broker.port, chirpstack.downlink_topic(APP, DEV)) as network_server,
        planned_gate(config, tmp_path / "mark.json", planner, leader) as gate,
        publishing(mqtt_broker.port) as post,
    ):
        _send_planned(post, "gate-copies", topic, first, Priority.OPERATOR, 0)
        wait_for(lambda: gate.stats().held == 1, 10, "the command held for airtime")
        _send_planned(post, "gate-copies", topic, retry, Priority.OPERATOR, 0)
        leader.epoch = 6
        gate.raise_epoch(6)
        _send_planned(post, "gate-copies", topic, replay, Priority.OPERATOR, 0)
        time.sleep(0.5)
        assert gate.stats().held == 1  # one copy waits
        wait_for(lambda: gate.stats().held == 0, 15, "the held command decided")
        wait_for(lambda: len(network_server.snapshot()) >= 1, 10, "the command forwarded")
        time.sleep(0.3)
        sent = [
            decode_command(chirpstack.parse_downlink(p).data) for _, p in network_server.snapshot()
        ]
        assert [(c.command_id, c.epoch) for c in sent] == [(command_id, 6)]


@pytest.mark.timeout(30)
def test_the_airtime_counted_survives_a_restart_of_the_gate(
    mqtt_broker: LocalMosquitto, tmp_path: Path
) -> None:
    config = _config(mqtt_broker.port, "gate-book")
    first = AirtimePlanner(rx2_dr=3)
    topic, payload, _ = _downlink(5)
    with (
        watching(mqtt_broker.port, chirpstack.downlink_topic(APP, DEV)) as network_server,
        planned_gate(config, tmp_path / "mark.json", first, LeaderKey(5)),
        publishing(mqtt_broker.port) as post,
    ):
        _send_planned(post, "gate-book", topic, payload, Priority.OPERATOR, 0)
        wait_for(lambda: len(network_server.snapshot()) == 1, 10, "the command forwarded")
    now = SimClock(datetime(2026, 1, 15, 18, 0, tzinfo=UTC), 1.0).now_ts()
    before = first.book.usage(now)
    assert [u.gateway_id for u in before] == [GW]
    second = AirtimePlanner(rx2_dr=3)
    with planned_gate(config, tmp_path / "mark.json", second, LeaderKey(5)):
        assert second.book.usage(now) == before

"""The targets a drill acts on (chaos.target.DrillTarget): its own `CitySystem`,
or a running system it was pointed at.

- `OwnTarget` wraps the `CitySystem` the drill started: faults heal by acting
  (restart the post, restart the members, restart the broker), and each post
  reaches etcd through a `LinkProxy` the drill controls.
- `AttachedTarget` reads a running system's manifest (`system.json`, written by
  `CitySystem`, e.g. the demo's). Its processes are the demo's, supervised by
  it: after a crash the heal waits for the demo's supervisor to bring the post
  or the broker back. etcd members are *stopped* (SIGSTOP, a hung member) and
  continued, not killed, since a killed one would be restarted by the
  supervisor at once. There is no link to control, so the partition and
  slow-link scenarios are refused. Every PID is checked to be what the
  manifest says (its command line) before it is signalled. The execution log
  comes from the network server's MQTT topic.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as mqtt
import psutil

from bridges.mqtt_session import MqttSession
from chaos.polling import wait_until
from chaos.target import DrillTarget, Link
from citypost.config import Config
from citypost.errors import FailedPreconditionError
from cluster.etcd_local import member_is_healthy, raft_leader_of
from cluster.mosquitto_local import mqtt_connects
from cluster.processes import signal_session
from cluster.system import MANIFEST_NAME, CitySystem
from fleet.network_server import Execution, executions_topic
from fleet.population import build_city


class OwnTarget(DrillTarget):
    def __init__(self, system: CitySystem, links: Mapping[str, Link]) -> None:
        if system.city is None:
            raise FailedPreconditionError("the drill's system is not started")
        self.system = system
        self.config = system.config
        self.city = system.city
        self.links = links

    def addresses(self) -> dict[str, str]:
        return {name: post.address for name, post in self.system.posts.items()}

    def session(self, post: str) -> int:
        pid = self.system.posts[post].process.pid
        if pid is None:
            raise FailedPreconditionError(f"post {post} is not running")
        return pid

    def crash_post(self, post: str) -> int:
        return self.system.crash_post(post)

    def freeze_post(self, post: str) -> int:
        return self.system.freeze_post(post)

    def thaw_post(self, post: str) -> int:
        return self.system.thaw_post(post)

    def restore_post(self, post: str, timeout_s: float) -> None:
        self.system.restart_post(post)

    def _etcd(self) -> Any:
        if self.system.etcd is None:
            raise FailedPreconditionError("this drill needs the etcd cluster the drill started")
        return self.system.etcd

    def etcd_member_count(self) -> int:
        return int(self._etcd().member_count)

    def raft_leader(self) -> int | None:
        leader: int | None = self._etcd().raft_leader()
        return leader

    def take_etcd_members(self, indices: Sequence[int]) -> None:
        for index in indices:
            self._etcd().kill_member(index)

    def give_back_etcd_members(self, indices: Sequence[int], timeout_s: float) -> None:
        etcd = self._etcd()
        for index in indices:
            # A lone member is not healthy without a quorum: wait for all at the end.
            etcd.restart_member(index, wait_healthy=False)
        etcd.wait_all_healthy(timeout_s)

    def kill_broker(self) -> None:
        if self.system.broker is None:
            raise FailedPreconditionError("this drill needs the broker the drill started")
        self.system.broker.kill()

    def restore_broker(self, timeout_s: float) -> None:
        broker = self.system.broker
        if broker is not None and not broker.alive:
            broker.restart()

    def executions(self) -> Sequence[Execution]:
        server = self.system.network_server
        return server.executions() if server is not None else []

    def start(self) -> None:
        pass  # the network server's log is in this process

    def close(self) -> None:
        pass  # the system is stopped by whoever started it


# --- a running system ------------------------------------------------------------------------


@dataclass(frozen=True)
class Manifest:
    path: Path
    data: Mapping[str, Any]

    @classmethod
    def read(cls, path: Path) -> Manifest:
        try:
            return cls(path, json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError) as exc:
            raise FailedPreconditionError(f"cannot read the system manifest {path}: {exc}") from exc

    @property
    def owner_alive(self) -> bool:
        return psutil.pid_exists(int(self.data["owner_pid"]))

    def post_pid(self, post: str) -> int:
        return int(self.data["posts"][post]["pid"])


def find_manifest(config: Config) -> Path:
    """The newest manifest under the config's run dir whose system still runs."""
    root = config.run_dir.resolve()
    found = sorted(root.glob(f"*/{MANIFEST_NAME}"), key=lambda p: p.stat().st_mtime)
    found += [root / MANIFEST_NAME] if (root / MANIFEST_NAME).exists() else []
    for path in reversed(found):
        if Manifest.read(path).owner_alive:
            return path
    raise FailedPreconditionError(
        f"no running system under {root} (looked for */{MANIFEST_NAME} of a live process); "
        "start one with `citypost demo` and the same config"
    )


def _cmdline(pid: int) -> str:
    try:
        return " ".join(psutil.Process(pid).cmdline())
    except psutil.Error:
        return ""


class AttachedTarget(DrillTarget):
    def __init__(self, manifest_path: Path) -> None:
        self._path = manifest_path
        manifest = Manifest.read(manifest_path)
        if not manifest.owner_alive:
            raise FailedPreconditionError(f"the system of {manifest_path} is not running")
        self.config = Config.model_validate(manifest.data["config"])
        self.city = build_city(self.config.city)
        self.links = {}
        self.supervised = bool(manifest.data.get("supervised"))
        self._lock = threading.Lock()
        self._log: list[Execution] = []
        self._session: MqttSession | None = None

    def _etcd_url(self, member: Mapping[str, Any]) -> str:
        scheme = "https" if self.identity is not None else "http"
        return f"{scheme}://{member['endpoint']}"

    def _manifest(self) -> Manifest:
        return Manifest.read(self._path)

    def _checked(self, pid: int, *needles: str) -> int:
        """`pid`, if its command line still names what the manifest says it runs."""
        line = _cmdline(pid)
        if not line or not all(n in line for n in needles):
            raise FailedPreconditionError(
                f"pid {pid} is not {' '.join(needles)} any more (it runs {line or 'nothing'})"
            )
        return pid

    def addresses(self) -> dict[str, str]:
        posts = self._manifest().data["posts"]
        return {name: str(post["address"]) for name, post in posts.items()}

    def session(self, post: str) -> int:
        return self._checked(self._manifest().post_pid(post), "cluster.cli", "post")

    def crash_post(self, post: str) -> int:
        return signal_session(self.session(post), signal.SIGKILL)

    def freeze_post(self, post: str) -> int:
        return signal_session(self.session(post), signal.SIGSTOP)

    def thaw_post(self, post: str) -> int:
        return signal_session(self._manifest().post_pid(post), signal.SIGCONT)

    def restore_post(self, post: str, timeout_s: float) -> None:
        if not self.supervised:
            raise FailedPreconditionError(
                f"the system of {self._path} does not restart its posts; start post {post} again"
            )
        wait_until(f"post {post} restarted by the system", lambda: self._post_back(post), timeout_s)

    def _post_back(self, post: str) -> bool:
        pid = self._manifest().post_pid(post)
        return bool(_cmdline(pid)) and psutil.Process(pid).status() != psutil.STATUS_STOPPED

    def _members(self) -> list[Mapping[str, Any]]:
        return list(self._manifest().data["etcd_members"])

    def etcd_member_count(self) -> int:
        return len(self._members())

    def raft_leader(self) -> int | None:
        return raft_leader_of(
            {int(m["index"]): self._etcd_url(m) for m in self._members()}, tls=self.identity
        )

    def take_etcd_members(self, indices: Sequence[int]) -> None:
        members = {int(m["index"]): m for m in self._members()}
        for index in indices:
            pid = self._checked(int(members[index]["pid"]), "etcd")
            os.kill(pid, signal.SIGSTOP)

    def give_back_etcd_members(self, indices: Sequence[int], timeout_s: float) -> None:
        members = {int(m["index"]): m for m in self._members()}
        for index in indices:
            pid = int(members[index]["pid"])
            if _cmdline(pid):
                os.kill(pid, signal.SIGCONT)
        wait_until(
            "every etcd member healthy",
            lambda: all(
                member_is_healthy(self._etcd_url(m), tls=self.identity) for m in self._members()
            ),
            timeout_s,
        )

    def kill_broker(self) -> None:
        pid = self._manifest().data.get("broker_pid")
        if pid is None:
            raise FailedPreconditionError("the running system's broker is not its own")
        os.kill(self._checked(int(pid), "mosquitto"), signal.SIGKILL)

    def restore_broker(self, timeout_s: float) -> None:
        if not self.supervised:
            raise FailedPreconditionError("the running system does not restart its broker")
        mqtt_config = self.config.mqtt
        port = mqtt_config.port or 0
        wait_until(
            "the broker restarted by the system",
            lambda: mqtt_connects(mqtt_config.host, port, tls=self.identity),
            timeout_s,
        )

    def start(self) -> None:
        mqtt_config = self.config.mqtt
        if mqtt_config.port is None:
            raise FailedPreconditionError("the running system's manifest names no broker port")
        topic = executions_topic(self.config.city.name)
        self._session = MqttSession(
            client_id=f"citypost-drill-{uuid.uuid4().hex[:12]}",
            host=mqtt_config.host,
            port=mqtt_config.port,
            subscriptions=[(topic, 1)],
            on_message=self._on_execution,
            tls=self.identity,
        )
        self._session.start()

    def _on_execution(self, message: mqtt.MQTTMessage) -> None:
        try:
            executions = [Execution(**record) for record in orjson.loads(message.payload)]
        except (orjson.JSONDecodeError, TypeError):
            return  # not a list of execution records: not evidence
        with self._lock:
            self._log.extend(executions)

    def executions(self) -> Sequence[Execution]:
        with self._lock:
            return list(self._log)

    def close(self) -> None:
        if self._session is not None:
            self._session.stop()
            self._session = None

"""A local mosquitto 2.0 broker on 127.0.0.1, for the demo and tests.

The broker's config, log and persistence live in its run dir:
run_dir/mosquitto.conf, run_dir/mosquitto.log, run_dir/mosquitto-data/.

With `BrokerSecurity` (the demo, the city's tests) its one listener is TLS
with a client certificate required from the city's CA (revoked ones refused
by the CRL), the certificate's CN as the user name, no anonymous access, and
the ACL generated from the PKI's principals (run_dir/mosquitto.acl,
security.mqtt_acl). `reload()` rewrites the ACL and sends SIGHUP: mosquitto
then reloads it, the CRL and its own certificate without dropping a client.
Without it (infrastructure tests of the broker alone) the listener is plain.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from bridges.mqtt_session import use_tls
from citypost.errors import ConfigError, InfrastructureError
from cluster.ports import free_port, port_is_bindable
from cluster.processes import ManagedProcess, find_binary
from security.mqtt_acl import acl_text
from security.pki import Kind, Principal
from security.pki_store import Identity, PkiStore

LOOPBACK = "127.0.0.1"

# The city's broker limits, per client (mosquitto's defaults: 1,000 queued, 20 in flight).
# Queued: a post's persistent session holds every uplink while the post is down. A
# full-scale post restarts in ~40 s and the city publishes up to sim.max_uplinks_per_s
# (2,400/s), ~100,000 messages; a million covers seven minutes of that (~0.4 GB at most).
MAX_QUEUED_MESSAGES = 1_000_000
# In flight: the edge acknowledges a batch at a time, a full one (edge.batch_max, 500)
# at once, else every edge.batch_interval_ms (50 ms). With 100 in flight a batch never
# filled and a post took at most 100 per 50 ms, 2,000 uplinks/s; 1,000 holds two batches.
MAX_INFLIGHT_MESSAGES = 1_000
# The in-memory store (sessions, queued messages) is written every second: a broker
# crash loses at most that second of accepted messages. While the queues are short this
# is cheap (the broker used 0.06-0.11 of a core with 3,000 uplinks/s in, twice that out).
AUTOSAVE_INTERVAL_S = 1


BROKER_NAME = "mosquitto"


@dataclass(frozen=True)
class BrokerSecurity:
    """The city's PKI the broker takes its certificate, CRL and ACL from."""

    store: PkiStore
    city: str

    @property
    def principal(self) -> Principal:
        return Principal(self.city, Kind.BROKER, BROKER_NAME)


def mqtt_connects(
    host: str, port: int, timeout: float = 1.0, *, tls: Identity | None = None
) -> bool:
    """True when an MQTT v5 client gets a successful CONNACK from host:port."""
    done = threading.Event()
    accepted: list[bool] = []

    def on_connect(
        client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any
    ) -> None:
        accepted.append(not reason.is_failure)
        done.set()

    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=f"citypost-probe-{uuid.uuid4().hex[:12]}",
        protocol=mqtt.MQTTv5,
    )
    client.on_connect = on_connect
    if tls is not None:
        use_tls(client, tls)
    try:
        client.connect(host, port, keepalive=10)
        deadline = time.monotonic() + timeout
        while not done.is_set() and time.monotonic() < deadline:
            client.loop(timeout=0.05)
        return bool(accepted and accepted[0])
    except OSError:
        return False
    finally:
        # Without a network thread, disconnect() writes DISCONNECT and closes the socket now.
        client.disconnect()


class LocalMosquitto:
    """One mosquitto process with a generated config, listening on 127.0.0.1 only."""

    def __init__(
        self,
        run_dir: Path,
        port: int | None = None,
        persistence: bool = False,
        max_queued_messages: int = MAX_QUEUED_MESSAGES,
        max_inflight_messages: int = MAX_INFLIGHT_MESSAGES,
        *,
        autosave_interval_s: int = AUTOSAVE_INTERVAL_S,
        start_timeout_s: float = 15.0,
        security: BrokerSecurity | None = None,
    ) -> None:
        if port is not None and not 1 <= port <= 65535:
            raise ConfigError(f"port must be 1..65535, got {port}")
        if max_queued_messages < 0:
            raise ConfigError(f"max_queued_messages must be >= 0, got {max_queued_messages}")
        if max_inflight_messages < 0:
            raise ConfigError(f"max_inflight_messages must be >= 0, got {max_inflight_messages}")
        if autosave_interval_s < 0:
            raise ConfigError(f"autosave_interval_s must be >= 0, got {autosave_interval_s}")
        self.run_dir = Path(run_dir)
        self.host = LOOPBACK
        self.port = port if port is not None else free_port()
        self.persistence = persistence
        self.max_queued_messages = max_queued_messages
        self.max_inflight_messages = max_inflight_messages
        self.autosave_interval_s = autosave_interval_s
        self.start_timeout_s = start_timeout_s
        self.config_path = self.run_dir / "mosquitto.conf"
        self.log_path = self.run_dir / "mosquitto.log"
        self.persistence_dir = self.run_dir / "mosquitto-data"
        self.acl_path = self.run_dir / "mosquitto.acl"
        self.security = security
        self._acl_stamp: tuple[int, int, int] | None = None  # the PKI index the ACL is from
        # The broker's own certificate; it also serves the readiness probe (a client
        # with no rights in the ACL: a CONNACK is all it needs).
        self.identity = None if security is None else security.store.ensure(security.principal)
        self._process: ManagedProcess | None = None
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        return f"LocalMosquitto({self.host}:{self.port}, pid={self.pid})"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def alive(self) -> bool:
        return self._process is not None and self._process.alive

    def config_text(self) -> str:
        """The mosquitto.conf this broker runs with."""
        lines = [
            "# Generated by citypost (cluster/mosquitto_local.py); rewritten on every start.",
            # Must precede the listener: it decides whether the options below are global.
            "per_listener_settings false",
            f"listener {self.port} {LOOPBACK}",
            *self._access_lines(),
            "set_tcp_nodelay true",
            f"max_queued_messages {self.max_queued_messages}",
            f"max_inflight_messages {self.max_inflight_messages}",
            f"persistence {'true' if self.persistence else 'false'}",
            # mosquitto 1.x appends the file name verbatim, so keep the trailing slash.
            f"persistence_location {self.persistence_dir}/",
            f"autosave_interval {self.autosave_interval_s}",
            # stderr goes to our log file, so the log is never written by a dropped user.
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "log_timestamp_format %Y-%m-%dT%H:%M:%S",
        ]
        if os.geteuid() == 0:
            # As root, mosquitto 2.0 would switch to user "mosquitto", which cannot
            # read a private run dir; staying root keeps every file reachable.
            lines.append("user root")
        return "\n".join(lines) + "\n"

    def _access_lines(self) -> list[str]:
        if self.identity is None:
            return ["allow_anonymous true"]
        return [
            f"cafile {self.identity.trust}",
            f"certfile {self.identity.cert}",
            f"keyfile {self.identity.key}",
            f"crlfile {self.identity.crl}",
            "tls_version tlsv1.2",
            "require_certificate true",
            "use_identity_as_username true",
            "allow_anonymous false",
            f"acl_file {self.acl_path}",
        ]

    def _write_acl(self) -> None:
        if self.security is None:
            return
        # Read before the principals: a change in between is seen by the next check.
        self._acl_stamp = self.security.store.index_stamp()
        text = acl_text(self.security.city, self.security.store.principals())
        temp = self.acl_path.with_suffix(".acl.tmp")
        temp.write_text(text)
        temp.replace(self.acl_path)

    def reload(self) -> None:
        """Rewrite the ACL from the PKI's current principals and have the broker reload
        it, the CRL and its certificate (SIGHUP); connected clients stay connected."""
        with self._lock:
            self._write_acl()
            process = self._process
            if process is None or not process.alive:
                raise InfrastructureError(f"mosquitto on port {self.port} is not running")
            before = self._reloads()
            process.kill(signal.SIGHUP)
            # The signal is handled in the broker's loop: wait until it says it reloaded,
            # so a connection made after reload() returns meets the new rules.
            deadline = time.monotonic() + self.start_timeout_s
            while self._reloads() == before:
                if time.monotonic() >= deadline:
                    raise InfrastructureError(f"mosquitto (pid {process.pid}) did not reload")
                time.sleep(0.02)

    def reload_if_pki_changed(self) -> bool:
        """Reload if a certificate was issued or revoked since the ACL was written (`citypost
        pki issue|revoke` from another process; the demo's supervisor asks every round)."""
        if self.security is None or self.security.store.index_stamp() == self._acl_stamp:
            return False
        self.reload()
        return True

    def _reloads(self) -> int:
        try:
            return self.log_path.read_text(errors="replace").count("Reloading config.")
        except FileNotFoundError:
            return 0

    def connects(self, timeout: float = 1.0) -> bool:
        """A CONNACK from this broker now (with its own certificate when secured)."""
        return mqtt_connects(self.host, self.port, timeout, tls=self.identity)

    def start(self) -> LocalMosquitto:
        """Write the config, start the broker and wait for a real MQTT v5 CONNACK."""
        with self._lock:
            if self.alive:
                raise InfrastructureError(f"mosquitto on port {self.port} is already running")
            binary = find_binary("mosquitto")
            self.run_dir.mkdir(parents=True, exist_ok=True)
            if self.persistence:
                self.persistence_dir.mkdir(parents=True, exist_ok=True)
            self.config_path.write_text(self.config_text())
            self._write_acl()
            self._wait_port_free()
            process = ManagedProcess(
                f"mosquitto on {self.host}:{self.port}",
                [binary, "-c", str(self.config_path)],
                self.log_path,
                cwd=self.run_dir,
            )
            self._process = process
            process.start()
            try:
                process.wait_ready(self.connects, self.start_timeout_s)
            except BaseException:
                process.stop()
                raise
            return self

    def kill(self, sig: int = signal.SIGKILL, *, wait: bool | None = None) -> None:
        """Send `sig` to the broker; by default wait for the exit only after SIGKILL."""
        with self._lock:
            process = self._process
            if process is None or not process.alive:
                raise InfrastructureError(f"mosquitto on port {self.port} is not running")
            process.kill(sig)
            if (sig == signal.SIGKILL if wait is None else wait) and not process.wait_exit(10.0):
                raise InfrastructureError(f"mosquitto (pid {process.pid}) did not exit after {sig}")

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (mosquitto then saves its persistence file), SIGKILL if needed, reap."""
        with self._lock:
            if self._process is not None:
                self._process.stop(timeout)

    def restart(self) -> LocalMosquitto:
        """Stop (or reap a killed broker) and start again on the same port and data dir."""
        with self._lock:
            self.stop()
            return self.start()

    def __enter__(self) -> LocalMosquitto:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _wait_port_free(self) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        while not port_is_bindable(self.host, self.port):
            if time.monotonic() >= deadline:
                raise InfrastructureError(
                    f"port {self.host}:{self.port} is still in use after "
                    f"{self.start_timeout_s:g} s; cannot start mosquitto there"
                )
            time.sleep(0.05)

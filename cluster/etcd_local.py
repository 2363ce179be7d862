"""A local etcd cluster (1, 3, ... members) on free 127.0.0.1 ports, for the demo and tests.

Members run Debian's etcd 3.4 with short Raft timings (50 ms heartbeat, 500 ms
election) so that 1 s leases work. Member i logs to run_dir/etcd-<i>.log and
keeps its data in run_dir/etcd-<i>.data.
"""

from __future__ import annotations

import json
import os
import platform
import signal
import threading
import time
import urllib.request
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import aetcd

from citypost.errors import ConfigError, InfrastructureError, InvalidArgumentError
from cluster.ports import free_ports
from cluster.processes import ManagedProcess, find_binary
from failover.etcd_client import etcd_client

LOOPBACK = "127.0.0.1"
MAX_MEMBERS = 7
# Architectures etcd 3.4 supports without ETCD_UNSUPPORTED_ARCH (uname -m spelling).
_SUPPORTED_MACHINES = {"x86_64", "amd64", "aarch64", "arm64", "ppc64le"}
_GO_ARCH = {"armv7l": "arm", "armv6l": "arm", "i686": "386", "i386": "386"}


@dataclass(frozen=True)
class EtcdMember:
    """Where one member listens and keeps its files."""

    index: int
    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    log_path: Path

    @property
    def endpoint(self) -> str:
        return f"{LOOPBACK}:{self.client_port}"

    @property
    def client_url(self) -> str:
        return f"http://{LOOPBACK}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://{LOOPBACK}:{self.peer_port}"


def member_is_healthy(client_url: str, timeout: float = 1.0) -> bool:
    """True when the member answers /health with {"health": "true"}.

    etcd 3.4 answers "true" only when the member sees a leader and a quorum
    read succeeds, so this also proves the cluster has a leader.
    """
    try:
        with urllib.request.urlopen(f"{client_url}/health", timeout=timeout) as resp:
            body = json.loads(resp.read())
    except (OSError, ValueError):
        # OSError covers refused connections, timeouts and HTTP 503 (HTTPError).
        return False
    return isinstance(body, dict) and body.get("health") == "true"


def raft_leader_of(client_urls: Mapping[int, str], timeout: float = 2.0) -> int | None:
    """Which member (by index) says in its /metrics that it is etcd's Raft leader."""
    for index, url in client_urls.items():
        try:
            with urllib.request.urlopen(f"{url}/metrics", timeout=timeout) as resp:
                text = resp.read().decode()
        except OSError:
            continue
        if "\netcd_server_is_leader 1" in text:
            return index
    return None


def _etcd_env() -> dict[str, str]:
    # etcd reads every ETCD_* variable as a flag; a stray one must not change our cluster.
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD_")}
    machine = platform.machine().lower()
    if machine not in _SUPPORTED_MACHINES:
        env["ETCD_UNSUPPORTED_ARCH"] = _GO_ARCH.get(machine, machine)
    return env


AUTO_COMPACTION_RETENTION = "10m"


class LocalEtcd:
    """An etcd cluster of `members` local processes (an odd number, 1 to 7).

    Ports are chosen at construction and kept for the object's life, so a
    restarted member comes back where the clients expect it.
    """

    def __init__(
        self,
        run_dir: Path,
        members: int = 1,
        heartbeat_interval_ms: int = 50,
        election_timeout_ms: int = 500,
        cluster_token: str | None = None,
        *,
        start_timeout_s: float = 30.0,
    ) -> None:
        if not 1 <= members <= MAX_MEMBERS or members % 2 == 0:
            raise ConfigError(f"members must be odd and 1..{MAX_MEMBERS}, got {members}")
        if heartbeat_interval_ms < 1:
            raise ConfigError(f"heartbeat_interval_ms must be >= 1, got {heartbeat_interval_ms}")
        # etcd refuses to start otherwise.
        if election_timeout_ms < 5 * heartbeat_interval_ms:
            raise ConfigError(
                f"election_timeout_ms ({election_timeout_ms}) must be at least 5 x "
                f"heartbeat_interval_ms ({heartbeat_interval_ms})"
            )
        self.run_dir = Path(run_dir)
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.election_timeout_ms = election_timeout_ms
        # A unique token keeps two local clusters from ever joining each other.
        self.cluster_token = cluster_token or f"citypost-{uuid.uuid4().hex[:12]}"
        self.start_timeout_s = start_timeout_s
        ports = free_ports(2 * members)
        self.members: tuple[EtcdMember, ...] = tuple(
            EtcdMember(
                index=i,
                name=f"m{i}",
                client_port=ports[2 * i],
                peer_port=ports[2 * i + 1],
                data_dir=self.run_dir / f"etcd-{i}.data",
                log_path=self.run_dir / f"etcd-{i}.log",
            )
            for i in range(members)
        )
        self._processes: list[ManagedProcess | None] = [None] * members
        self._lock = threading.RLock()

    @property
    def member_count(self) -> int:
        return len(self.members)

    @property
    def endpoints(self) -> list[str]:
        """Every member as "127.0.0.1:port", the form clients take."""
        return [m.endpoint for m in self.members]

    @property
    def client_urls(self) -> list[str]:
        return [m.client_url for m in self.members]

    @property
    def pids(self) -> list[int | None]:
        """PID of each member's current (or last) process; None if never started."""
        return [p.pid if p is not None else None for p in self._processes]

    def process(self, i: int) -> ManagedProcess | None:
        return self._processes[self._check_index(i)]

    def member_alive(self, i: int) -> bool:
        proc = self._processes[self._check_index(i)]
        return proc is not None and proc.alive

    def member_healthy(self, i: int) -> bool:
        return member_is_healthy(self.members[self._check_index(i)].client_url)

    def raft_leader(self) -> int | None:
        """The index of the member that is etcd's Raft leader (its /metrics say so), if any."""
        alive = {m.index: m.client_url for m in self.members if self.member_alive(m.index)}
        return raft_leader_of(alive)

    def wait_all_healthy(self, timeout_s: float) -> None:
        """Until every member answers /health with a leader; InfrastructureError after."""
        deadline = time.monotonic() + timeout_s
        while not all(self.member_healthy(m.index) for m in self.members):
            if time.monotonic() >= deadline:
                raise InfrastructureError(f"etcd not healthy on every member within {timeout_s} s")
            time.sleep(0.1)

    def client(self, *, timeout: float | None = 5.0) -> aetcd.Client:
        """An aetcd client that knows every member (see `etcd_client`)."""
        return etcd_client(self.endpoints, timeout=timeout)

    def start(self) -> LocalEtcd:
        """Start every member and wait until each answers /health with a leader."""
        with self._lock:
            if any(p is not None and p.alive for p in self._processes):
                raise InfrastructureError("this etcd cluster is already started; stop it first")
            binary = find_binary("etcd")
            self.run_dir.mkdir(parents=True, exist_ok=True)
            try:
                # All members first: none can elect a leader before a quorum runs.
                for m in self.members:
                    self._launch(binary, m, "new")
                for m in self.members:
                    self._wait_healthy(m.index)
            except BaseException:
                self.stop()
                raise
            return self

    def kill_member(self, i: int, sig: int = signal.SIGKILL, *, wait: bool | None = None) -> None:
        """Send `sig` to member i; by default wait for the exit only after SIGKILL.

        The killed process stays a zombie until `stop_member`, `restart_member` or `stop`.
        """
        with self._lock:
            proc = self._running(i)
            proc.kill(sig)
            if (sig == signal.SIGKILL if wait is None else wait) and not proc.wait_exit(10.0):
                raise InfrastructureError(
                    f"etcd member {i} (pid {proc.pid}) did not exit after {sig}"
                )

    def stop_member(self, i: int, timeout: float = 10.0) -> None:
        """Stop member i gracefully (SIGTERM, then SIGKILL) and reap it."""
        with self._lock:
            proc = self._processes[self._check_index(i)]
            if proc is not None:
                proc.stop(timeout)

    def restart_member(self, i: int, *, wait_healthy: bool = True) -> None:
        """Start member i again on its ports and data dir; it rejoins the cluster."""
        with self._lock:
            self._check_index(i)
            self.stop_member(i)
            self._launch(find_binary("etcd"), self.members[i], "existing")
            if wait_healthy:
                self._wait_healthy(i)

    def stop(self, grace_s: float | None = None) -> None:
        """Stop every member, one after the other; safe to call twice or after a failed start.

        One at a time is the fast way: a stopping leader hands over to a live
        follower in milliseconds, and the last one has no peer left to try.
        SIGTERM to all at once makes a leader wait about 5 s for peers that are
        leaving, so each member gets SIGKILL after `grace_s` (default: 4 election
        timeouts, at least 1 s); that loses nothing, as etcd fsyncs its WAL.
        """
        with self._lock:
            if grace_s is None:
                grace_s = max(1.0, 4 * self.election_timeout_ms / 1000)
            errors: list[InfrastructureError] = []
            for proc in self._processes:
                if proc is None:
                    continue
                try:
                    proc.stop(grace_s)
                except InfrastructureError as exc:
                    errors.append(exc)
            if errors:
                raise errors[0]

    def __enter__(self) -> LocalEtcd:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _argv(self, binary: str, m: EtcdMember, state: str) -> list[str]:
        initial_cluster = ",".join(f"{x.name}={x.peer_url}" for x in self.members)
        return [
            binary,
            f"--name={m.name}",
            f"--data-dir={m.data_dir}",
            f"--listen-client-urls={m.client_url}",
            f"--advertise-client-urls={m.client_url}",
            f"--listen-peer-urls={m.peer_url}",
            f"--initial-advertise-peer-urls={m.peer_url}",
            f"--initial-cluster={initial_cluster}",
            f"--initial-cluster-token={self.cluster_token}",
            f"--initial-cluster-state={state}",
            f"--heartbeat-interval={self.heartbeat_interval_ms}",
            f"--election-timeout={self.election_timeout_ms}",
            "--enable-v2=false",
            # Every write of the control state is a new revision, and etcd keeps them all
            # until compacted: its database would grow with the city's every command and
            # alarm until the quota (2 GiB) refuses all writes. Ten minutes of history is
            # what a post's watch needs; a post further behind reloads.
            "--auto-compaction-mode=periodic",
            f"--auto-compaction-retention={AUTO_COMPACTION_RETENTION}",
            "--logger=zap",
            "--log-outputs=stderr",
        ]

    def _launch(self, binary: str, m: EtcdMember, state: str) -> None:
        proc = ManagedProcess(
            f"etcd member {m.index} ({m.name})",
            self._argv(binary, m, state),
            m.log_path,
            env=_etcd_env(),
            cwd=self.run_dir,
        )
        self._processes[m.index] = proc
        proc.start()

    def _wait_healthy(self, i: int) -> None:
        proc = self._running(i)
        url = self.members[i].client_url
        proc.wait_ready(lambda: member_is_healthy(url), self.start_timeout_s)

    def _running(self, i: int) -> ManagedProcess:
        proc = self._processes[self._check_index(i)]
        if proc is None or not proc.alive:
            raise InfrastructureError(f"etcd member {i} is not running")
        return proc

    def _check_index(self, i: int) -> int:
        if not 0 <= i < len(self.members):
            raise InvalidArgumentError(f"member index must be 0..{len(self.members) - 1}, got {i}")
        return i

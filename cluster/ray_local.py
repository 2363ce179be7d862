"""A post's own Ray head (`ray start --head --block`) on free 127.0.0.1 ports.

Each post runs its own single-node cluster: its own ports, its own temp dir,
its own token, and it is stopped by PID. `ray stop` is never used, because it
kills every Ray cluster on the machine.

This module does not import ray: the head runs in its own session, and the
readiness probe runs in a subprocess, so starting a cluster changes nothing in
the calling process (which may later be a driver of another cluster).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import psutil

from citypost.errors import ConfigError, InfrastructureError
from cluster.ports import free_ports
from cluster.processes import ManagedProcess, find_binary

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
# Ray refuses a smaller object store (ray_constants.OBJECT_STORE_MINIMUM_MEMORY_BYTES).
MIN_OBJECT_STORE_MB = 75
# Ray's Unix sockets live at <temp>/session_<date>_<time>_<usec>_<pid>/sockets/plasma_store
# (about 65 characters below the temp dir) and sun_path holds 107 bytes.
MAX_TEMP_DIR_CHARS = 40
# Every process of the cluster inherits this variable from `ray start`
# (raylet passes its environment to workers), so leftovers can be found even
# when their command line no longer names the temp dir (`ray::IDLE`).
CLUSTER_MARKER_ENV = "CITYPOST_RAY_CLUSTER"
# Ray's own bookkeeping a post does not use (no dashboard, no state API, no timeline):
# every worker reports task events each second and metrics every few, and the raylet
# reports its resources ten times a second to a GCS that has no other node to place
# work on. Read by every Ray process at start (the head's children inherit them, a
# driver gets them from env_for_driver).
QUIET_RAY = {
    "RAY_task_events_report_interval_ms": "0",  # 0: task events neither kept nor sent
    "RAY_enable_metrics_collection": "0",
    "RAY_event_stats": "0",
    "RAY_raylet_report_resources_period_milliseconds": "1000",
}
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$")

# Run by the readiness check with the driver's environment: exit 0 once the GCS
# answers with our token and knows an alive node (the raylet registered).
_PROBE = """
import sys
from ray._raylet import GcsClient
from ray.core.generated import gcs_pb2
nodes = GcsClient(address=sys.argv[1]).get_all_node_info(timeout=5)
alive = [n for n in nodes.values() if n.state == gcs_pb2.GcsNodeInfo.ALIVE]
sys.exit(0 if alive else 3)
"""


@dataclass(frozen=True)
class RayPorts:
    """Every TCP port Ray lets us pin; workers take OS-chosen ports (min/max 0)."""

    gcs: int
    client_server: int
    node_manager: int
    object_manager: int
    dashboard_agent_http: int
    dashboard_agent_grpc: int
    runtime_env_agent: int
    metrics_export: int

    def flags(self) -> list[str]:
        return [
            f"--port={self.gcs}",
            # Ray's default 10001 would collide between two posts; it cannot be
            # switched off while ray[client]'s dependencies are installed.
            f"--ray-client-server-port={self.client_server}",
            f"--node-manager-port={self.node_manager}",
            f"--object-manager-port={self.object_manager}",
            # Default 52365 is fixed, so two heads would collide on it.
            f"--dashboard-agent-listen-port={self.dashboard_agent_http}",
            f"--dashboard-agent-grpc-port={self.dashboard_agent_grpc}",
            f"--runtime-env-agent-port={self.runtime_env_agent}",
            f"--metrics-export-port={self.metrics_export}",
            # 0/0: each worker binds a port the kernel picks, so two posts never
            # compete for Ray's default shared range 10002-19999.
            "--min-worker-port=0",
            "--max-worker-port=0",
        ]


def ray_binary() -> str:
    """The `ray` script of this interpreter's environment (the venv), else from PATH."""
    sibling = Path(sys.executable).parent / "ray"
    if sibling.is_file() and os.access(sibling, os.X_OK):
        return str(sibling)
    return find_binary("ray", extra_dirs=())


def _short_temp_root() -> Path:
    # Not tempfile.gettempdir(): a long $TMPDIR would break Ray's socket paths.
    root = Path("/tmp")
    return root if root.is_dir() else Path(tempfile.gettempdir())


def _clean_env() -> dict[str, str]:
    # A stray RAY_* variable (RAY_ADDRESS, RAY_AUTH_TOKEN, tuning knobs) in the
    # caller's environment must not change our cluster.
    return {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}


def _gcs_accepts(port: int) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=0.5):
            return True
    except OSError:
        return False


class LocalRay:
    """One post's Ray head on loopback, token-authenticated, stopped by PID.

    Ports are chosen at construction and kept, so a restarted head comes back
    at the same address. The temp dir (sockets, session, logs) lives under /tmp
    with a short name and is removed by `stop()`; its logs are first copied to
    run_dir/ray-logs.
    """

    def __init__(
        self,
        run_dir: Path,
        *,
        name: str,
        num_cpus: int | None = None,
        object_store_mb: int = 256,
        start_timeout_s: float = 90.0,
        stop_timeout_s: float = 15.0,
        keep_logs: bool = True,
        in_caller_group: bool = False,
    ) -> None:
        if not _NAME_RE.match(name):
            raise ConfigError(
                f"name must be 1-32 letters, digits, '-' or '_' (starting with a "
                f"letter or digit), got {name!r}"
            )
        if num_cpus is not None and num_cpus < 0:
            raise ConfigError(f"num_cpus must be >= 0, got {num_cpus}")
        if object_store_mb < MIN_OBJECT_STORE_MB:
            raise ConfigError(
                f"object_store_mb must be >= {MIN_OBJECT_STORE_MB} (Ray's minimum), "
                f"got {object_store_mb}"
            )
        if start_timeout_s <= 0 or stop_timeout_s <= 0:
            raise ConfigError("start_timeout_s and stop_timeout_s must be > 0")
        self.run_dir = Path(run_dir)
        self.name = name
        self.num_cpus = num_cpus
        self.object_store_mb = object_store_mb
        self.start_timeout_s = start_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.keep_logs = keep_logs
        # A post puts its Ray cluster in its own process group: SIGKILL of the post's
        # group (a crash drill, or the OS) then takes the cluster down with it.
        self._in_caller_group = in_caller_group
        self.ports = RayPorts(*free_ports(8))
        self.log_path = self.run_dir / "ray-head.log"
        self._marker = uuid.uuid4().hex
        self._temp_dir: Path | None = None
        self._proc: ManagedProcess | None = None
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        return f"LocalRay({self.name!r}, address={self.address!r}, pid={self.pid})"

    @property
    def address(self) -> str:
        """The GCS address drivers pass to ray.init: "127.0.0.1:<port>"."""
        return f"{LOOPBACK}:{self.ports.gcs}"

    @property
    def pid(self) -> int | None:
        """PID of `ray start` (also its process group id); None before start."""
        return self._proc.pid if self._proc is not None else None

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.alive

    @property
    def temp_dir(self) -> Path:
        """Ray's --temp-dir of the current run."""
        if self._temp_dir is None:
            raise InfrastructureError(f"ray head {self.name!r} is not started")
        return self._temp_dir

    @property
    def token_path(self) -> Path:
        """File holding this cluster's auth token (mode 0600, inside the temp dir)."""
        return self.temp_dir / "auth_token"

    def env_for_driver(self) -> dict[str, str]:
        """Variables a driver of this cluster needs (merge into its environment).

        RAY_AUTH_MODE must match the head's; the token is read from the file
        (RAY_AUTH_TOKEN would take precedence, so a driver must not also set it).
        The marker variable is deliberately left out: it identifies the
        cluster's own processes, and a driver is not one of them.
        """
        return {
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(self.token_path),
            # Read by Ray at import time; keeps a driver's node IP on loopback.
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
            "RAY_USAGE_STATS_ENABLED": "0",
            **QUIET_RAY,
        }

    def start(self) -> LocalRay:
        """Start the head and wait until its GCS answers with a live node.

        Tried twice: on a saturated machine the raylet gives its dashboard agent a
        fixed 15 s to register and aborts the node past it (seen at load 35-50 with
        two other clusters starting); a second start then usually succeeds.
        """
        try:
            return self._start_once()
        except InfrastructureError as error:
            log.warning("ray head %s did not start (%s): trying once more", self.name, error)
            return self._start_once()

    def _start_once(self) -> LocalRay:
        with self._lock:
            if self._proc is not None and self._proc.alive:
                raise InfrastructureError(f"ray head {self.name!r} is already started")
            binary = ray_binary()
            self.run_dir.mkdir(parents=True, exist_ok=True)
            try:
                self._make_temp_dir()
                proc = ManagedProcess(
                    f"ray head {self.name}",
                    self._argv(binary),
                    self.log_path,
                    env=self._head_env(),
                    cwd=self.run_dir,
                    own_group=not self._in_caller_group,
                )
                self._proc = proc
                proc.start()
                proc.wait_ready(self._ready, self.start_timeout_s, interval=0.2)
            except BaseException:
                self.stop()
                raise
            return self

    def processes(self) -> list[psutil.Process]:
        """Every live process of this cluster: `ray start` and what it spawned.

        Found by the marker variable in the environment or the temp dir on the
        command line; the calling process is never included.
        """
        me = os.getpid()
        needle = str(self._temp_dir) if self._temp_dir is not None else None
        found: list[psutil.Process] = []
        for proc in psutil.process_iter(["pid", "cmdline", "status"]):
            if proc.pid == me or proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            if self._belongs(proc, needle):
                found.append(proc)
        return found

    def stop(self) -> None:
        """Stop the head, sweep every leftover process, remove the temp dir.

        Idempotent. Raises InfrastructureError if a process of this cluster
        survives SIGKILL. Disconnect this process's driver first: a driver whose
        GCS disappears exits after Ray's reconnect timeout.
        """
        with self._lock:
            proc = self._proc
            if proc is not None:
                members = self.processes()
                if proc.alive and proc.pid is not None:
                    # The leader alone first: `ray start` then stops raylet, GCS and
                    # the rest in order. SIGTERM to the whole group at once kills
                    # the GCS under it while it drains.
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(proc.pid, signal.SIGTERM)
                    proc.wait_exit(self.stop_timeout_s)
                proc.stop(self.stop_timeout_s)  # sweeps the group, reaps the leader
                self._sweep(members)
            self._remove_temp_dir()

    def __enter__(self) -> LocalRay:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _argv(self, binary: str) -> list[str]:
        argv = [
            binary,
            "start",
            "--head",
            "--block",
            f"--node-ip-address={LOOPBACK}",
            f"--temp-dir={self.temp_dir}",
            "--include-dashboard=false",
            f"--object-store-memory={self.object_store_mb * 1024 * 1024}",
            "--disable-usage-stats",
            "--log-style=record",
            "--log-color=false",
            *self.ports.flags(),
        ]
        if self.num_cpus is not None:
            argv.append(f"--num-cpus={self.num_cpus}")
        return argv

    def _head_env(self) -> dict[str, str]:
        env = _clean_env()
        env.update(self.env_for_driver())
        env[CLUSTER_MARKER_ENV] = self._marker
        # On SIGTERM `ray start` otherwise asks the GCS to drain the node and
        # waits up to 30 s; a single-node post has nothing to drain.
        env["RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"] = "0"
        # Otherwise the head's own messages sit in a buffer when it is killed.
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def _make_temp_dir(self) -> None:
        self._remove_temp_dir()
        prefix = f"cpray-{self.name[:10]}-"
        temp = Path(tempfile.mkdtemp(prefix=prefix, dir=_short_temp_root()))  # mode 0700
        if len(str(temp)) > MAX_TEMP_DIR_CHARS:
            shutil.rmtree(temp, ignore_errors=True)
            raise ConfigError(
                f"Ray temp dir {temp} is longer than {MAX_TEMP_DIR_CHARS} characters; "
                "Ray's Unix socket paths would not fit"
            )
        self._temp_dir = temp
        token = self.token_path
        fd = os.open(token, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            # Ray's own generator uses the same: 256 random bits as hex.
            out.write(secrets.token_hex(32))

    def _ready(self) -> bool:
        if not _gcs_accepts(self.ports.gcs):
            return False
        env = _clean_env()
        env.update(self.env_for_driver())
        result = subprocess.run(
            [sys.executable, "-c", _PROBE, self.address],
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=30,
            check=False,
        )
        if result.returncode != 0:
            tail = result.stderr.decode(errors="replace").strip().splitlines()[-3:]
            raise InfrastructureError(
                f"probe exited {result.returncode}: {' | '.join(tail) or '(no output)'}"
            )
        return True

    def _belongs(self, proc: psutil.Process, needle: str | None) -> bool:
        try:
            cmdline = proc.info["cmdline"] or []
            if needle is not None and any(needle in arg for arg in cmdline):
                return True
            return bool(proc.environ().get(CLUSTER_MARKER_ENV) == self._marker)
        except psutil.Error:
            return False  # gone, or another user's process

    def _sweep(self, members: list[psutil.Process]) -> None:
        """SIGKILL whatever of the cluster outlived `ray start` (workers may leave the group)."""
        deadline = time.monotonic() + self.stop_timeout_s
        while True:
            left = {p.pid: p for p in members if _is_live(p)}
            left.update({p.pid: p for p in self.processes()})
            if not left:
                return
            if time.monotonic() >= deadline:
                names = ", ".join(f"{p.pid}" for p in left.values())
                raise InfrastructureError(
                    f"ray head {self.name!r}: processes survived SIGKILL: {names}"
                )
            for p in left.values():
                with contextlib.suppress(psutil.Error):
                    p.kill()
            time.sleep(0.05)

    def _remove_temp_dir(self) -> None:
        temp = self._temp_dir
        if temp is None:
            return
        if self.keep_logs:
            logs = temp / "session_latest" / "logs"
            if logs.is_dir():
                target = self.run_dir / "ray-logs"
                with contextlib.suppress(OSError):
                    shutil.rmtree(target, ignore_errors=True)
                    shutil.copytree(logs, target, symlinks=False, ignore_dangling_symlinks=True)
        shutil.rmtree(temp, ignore_errors=True)
        self._temp_dir = None


def _is_live(proc: psutil.Process) -> bool:
    """Running and not a zombie; is_running() checks the create time, so a reused PID is not."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False

"""A post as a child process (`citypost post`), started and stopped by PID.

The demo (and later the drills) run posts this way, so a post can be killed
like the real thing. Readiness is the post's own word: it writes its gRPC
address to a ready file once it serves, and what it is doing until then to a
phase file beside it (start-up takes tens of seconds at full scale).
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

from citypost.config import Config
from cluster.ports import free_port
from cluster.processes import ManagedProcess
from security.apps import apps_path

START_TIMEOUT_S = 180.0  # a Ray head and one worker per actor on a small machine


def ray_temp_file(ready_file: Path) -> Path:
    """Where a post records its Ray temp dir, beside its ready file."""
    return ready_file.with_suffix(".ray-temp")


def citizen_file(ready_file: Path) -> Path:
    """Where a post writes the address of its citizen service (its citizen listener
    with TLS, its one port without), beside its ready file and before it."""
    return ready_file.with_suffix(".citizen")


def phase_file(ready_file: Path) -> Path:
    """Where a starting post says what it is doing, beside its ready file."""
    return ready_file.with_suffix(".phase")


def write_whole(path: Path, text: str) -> None:
    """Readers poll these files: one must never be seen half written."""
    temp = path.with_name(path.name + ".tmp")
    temp.write_text(text)
    temp.replace(path)


def _toml_inline(value: object) -> str:
    """A value as TOML (an inline table for a dict; JSON strings and arrays are TOML)."""
    if isinstance(value, dict):
        pairs = (f"{json.dumps(k)} = {_toml_inline(v)}" for k, v in value.items() if v is not None)
        return "{" + ", ".join(pairs) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_inline(v) for v in value) + "]"
    return json.dumps(value)


def post_overrides(config: Config) -> list[str]:
    """The settings a child post must share with its parent, as --set flags."""
    values = {
        "city.name": f'"{config.city.name}"',
        "city.scale": repr(config.city.scale),
        "city.seed": str(config.city.seed),
        "city.max_group_size": str(config.city.max_group_size),
        "sim.start": config.sim.start_or_now().isoformat(),
        "sim.speed": repr(config.sim.speed),
        "sim.interval_factor": repr(config.sim.interval_factor),
        "radio.rx2_dr": str(config.radio.rx2_dr),
        "radio.duty_cycle_window_s": repr(config.radio.duty_cycle_window_s),
        "mqtt.host": f'"{config.mqtt.host}"',
        "mqtt.port": str(config.mqtt.port),
        "post.name": f'"{config.post.name}"',
        "post.command_ttl_s": repr(config.post.command_ttl_s),
        "post.max_restarts": str(config.post.max_restarts),
        "post.restart_window_s": repr(config.post.restart_window_s),
        "post.actor_hosts": str(config.post.actor_hosts),
        "post.finished_command_retention_s": repr(config.post.finished_command_retention_s),
        "post.retention_sweep_s": repr(config.post.retention_sweep_s),
        "post.audit_retention_s": repr(config.post.audit_retention_s),
        "run_dir": f'"{config.run_dir}"',
        "observability.exporter": f'"{config.observability.exporter}"',
        "failover.lease_ttl_s": repr(config.failover.lease_ttl_s),
        "failover.keepalive_interval_s": repr(config.failover.keepalive_interval_s),
        "failover.safety_margin_s": repr(config.failover.safety_margin_s),
    }
    security = config.security
    values["security.tls"] = "true" if security.tls else "false"
    values["security.pki_dir"] = json.dumps(str(config.pki_dir))
    values["security.accounts_file"] = json.dumps(str(config.accounts_file))
    values["security.apps_file"] = json.dumps(str(apps_path(config)))
    values["security.access_token_s"] = repr(security.access_token_s)
    values["security.refresh_token_s"] = repr(security.refresh_token_s)
    values["security.approval.window_s"] = repr(security.approval.window_s)
    values["security.approval.approver"] = json.dumps(security.approval.approver)
    values["security.approval.require_for"] = json.dumps(list(security.approval.require_for))
    for key, table in (("roles", security.roles), ("machine_roles", security.machine_roles)):
        if table is not None:  # a TOML inline table; JSON strings and arrays are TOML
            pairs = ", ".join(f"{json.dumps(k)} = {json.dumps(v)}" for k, v in table.items())
            values[f"security.{key}"] = "{" + pairs + "}"
    if security.oidc.enabled:
        values["security.oidc"] = _toml_inline(security.oidc.model_dump(mode="json"))
    if config.sim.origin is not None:
        values["sim.origin"] = config.sim.origin.isoformat()
    if config.etcd.endpoints:
        # The etcd the parent started (or was given) is external to the post.
        values["etcd.mode"] = '"external"'
        values["etcd.endpoints"] = json.dumps(list(config.etcd.endpoints))
    # Chosen here when unset: two children would both fall back to the default port.
    values["post.grpc_port"] = str(config.post.grpc_port or free_port())
    values["post.citizen_port"] = str(config.post.citizen_port or free_port())
    flags: list[str] = []
    for key, value in values.items():
        flags += ["--set", f"{key}={value}"]
    return flags


class PostProcess:
    def __init__(self, config: Config, run_dir: Path) -> None:
        self.name = config.post.name
        self._ready_file = run_dir / f"post-{self.name}.ready"
        argv = [
            sys.executable,
            "-m",
            "cluster.cli",
            "post",
            *post_overrides(config),
            "--ready-file",
            str(self._ready_file),
        ]
        self.process = ManagedProcess(f"post {self.name}", argv, run_dir / f"post-{self.name}.log")
        self.address = ""
        self.citizen_address = ""  # where its CitizenService answers, once ready

    def start(self) -> PostProcess:
        return self.launch().wait_ready()

    def launch(self) -> PostProcess:
        """Start the process without waiting (start several, then wait for each)."""
        self._ready_file.unlink(missing_ok=True)
        phase_file(self._ready_file).unlink(missing_ok=True)
        citizen_file(self._ready_file).unlink(missing_ok=True)
        self.process.start()
        return self

    def wait_ready(self, progress: Callable[[str], None] | None = None) -> PostProcess:
        """Wait until the post serves; `progress` hears each phase it reports on the way."""
        said = ""

        def ready() -> bool:
            nonlocal said
            if progress is not None:
                try:
                    phase = phase_file(self._ready_file).read_text().strip()
                except FileNotFoundError:
                    phase = ""
                if phase and phase != said:
                    said = phase
                    progress(f"post {self.name}: {phase}")
            return self._ready_file.exists()

        self.process.wait_ready(ready, START_TIMEOUT_S, interval=0.2)
        self.address = self._ready_file.read_text().strip()
        self.citizen_address = citizen_file(self._ready_file).read_text().strip()
        return self

    def stop(self) -> None:
        self.process.stop(timeout=60.0)

    def remove_ray_temp_dir(self) -> None:
        """After the post is gone: its Ray temp dir, which a SIGKILLed post leaves."""
        recorded = ray_temp_file(self._ready_file)
        if recorded.exists():
            shutil.rmtree(recorded.read_text().strip(), ignore_errors=True)
            recorded.unlink(missing_ok=True)

"""The web console's gateway as a child process (`citypost web`), started and stopped by
PID like a post: its own process, so the city's simulated devices in the demo's process
never hold the page back (one GIL each)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from citypost.config import Config
from citypost.errors import ConfigError
from cluster.ports import free_port
from cluster.processes import ManagedProcess
from failover.follow_client import parse_posts
from security import identities
from security.pki import Kind

START_TIMEOUT_S = 60.0


def run_web(config: Config, posts: str, ready_file: Path | None) -> int:
    """`citypost web`: serve until SIGINT or SIGTERM."""
    import grpc  # the gateway's imports load only in its own process

    from console.web.gateway import Gateway
    from console.web.serve import run_gateway
    from security.grpc_tls import aio_secure_channel_factory, secure_channel_factory

    addresses = tuple(parse_posts(posts.split(",")))
    if config.web.port is None:
        raise ConfigError("web.port: give the port to serve on (the system picks one for you)")
    identity = identities.tls_identity(config, Kind.CONSOLE, config.web.workstation)
    if identity is None:
        gateway = Gateway(addresses, grpc.insecure_channel, grpc.aio.insecure_channel)
    else:
        gateway = Gateway(
            addresses, secure_channel_factory(identity), aio_secure_channel_factory(identity)
        )
    run_gateway(gateway, config.web.host, config.web.port, ready_file)
    return 0


class WebProcess:
    def __init__(self, config: Config, run_dir: Path, posts: Sequence[str]) -> None:
        self._ready_file = run_dir / "web.ready"
        port = config.web.port or free_port()
        overrides = {
            "city.name": f'"{config.city.name}"',
            "security.tls": "true" if config.security.tls else "false",
            "security.pki_dir": f'"{config.pki_dir}"',
            "web.host": f'"{config.web.host}"',
            "web.port": str(port),
            "web.workstation": f'"{config.web.workstation}"',
            "run_dir": f'"{config.run_dir}"',
        }
        flags = [f for key, value in overrides.items() for f in ("--set", f"{key}={value}")]
        argv = [
            sys.executable,
            "-m",
            "cluster.cli",
            "web",
            *flags,
            "--posts",
            ",".join(posts),
            "--ready-file",
            str(self._ready_file),
        ]
        self.process = ManagedProcess("web console", argv, run_dir / "web.log")
        self.url = ""

    def start(self) -> WebProcess:
        self._ready_file.unlink(missing_ok=True)
        self.process.start()
        self.process.wait_ready(self._ready_file.exists, START_TIMEOUT_S, interval=0.1)
        self.url = self._ready_file.read_text().strip()
        return self

    def stop(self) -> None:
        self.process.stop(timeout=15.0)

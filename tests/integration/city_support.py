"""A small whole city for the integration tests that need one: both posts, etcd, the
broker, the gate and the simulated network server, mutual TLS, the demo accounts."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from citypost.config import CityConfig, Config, PostConfig, SimConfig
from cluster.ports import free_port_pair
from cluster.system import CitySystem

CITY = "dijon"


@contextmanager
def small_city(
    run_dir: Path, *, sim: SimConfig | None = None, **sections: Any
) -> Iterator[CitySystem]:
    """0.2 % of the city at x60 (or `sim`), the posts on free ports; `sections` are more
    Config sections (security=..., web=...). Everything it started is stopped on the way
    out."""
    config = Config(
        city=CityConfig(name=CITY, scale=0.002),
        sim=sim or SimConfig(speed=60.0),
        post=PostConfig(grpc_port=free_port_pair()),
        run_dir=run_dir,
        **sections,
    )
    system = CitySystem(config, run_dir)
    try:
        system.start()
        yield system
    finally:
        system.stop()

"""A small whole city for the integration tests that need one: both posts, etcd, the
broker, the gate and the simulated network server, mutual TLS, the demo accounts."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from citypost.config import CityConfig, Config, PostConfig, SimConfig
from cluster.ports import free_port_pair
from cluster.system import CitySystem

CITY = "dijon"


def daytime(hour_utc: int) -> SimConfig:
    """x60 from the next `hour_utc` o'clock (UTC), whatever the hour of the run: for a
    test that needs the lamps' policy quiet. Its profile commands come at 05:30 and
    23:00 local time, and supersede an operator's command to the same group still
    waiting (for approval, say); from 09:00 or 11:00 UTC, a module has ten hours of
    the city's day (ten minutes) before the next."""
    at = datetime.now(UTC).replace(hour=hour_utc, minute=0, second=0, microsecond=0)
    return SimConfig(speed=60.0, start=at if at > datetime.now(UTC) else at + timedelta(days=1))


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

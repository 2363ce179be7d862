"""The system a drill runs on when it is not given one: the whole city with both
posts (`CitySystem`), with each post's etcd traffic through a `LinkProxy` the
drill controls (for the partition and slow-link scenarios).

`drill_config` turns a config (the default, or `--against CONFIG`) into the
drill's: a free gRPC port pair (never the demo's 50051), commands with a TTL
short enough to settle within a round, a low restart intensity so that
"restart-intensity" needs few kills.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from chaos.faults import Drilled
from chaos.link_proxy import LinkProxy
from citypost.config import CityConfig, Config
from cluster.drill_targets import OwnTarget
from cluster.system import CitySystem

# The small city of the default drill: 0.5% of Dijon (about 200 devices, 2 posts).
SMALL_SCALE = 0.005
DRILL_MAX_RESTARTS = 3  # restart intensity: more than this in the window escalates
DRILL_COMMAND_TTL_TTL = 10.0  # the policies' command TTL, in lease TTLs


def drill_config(base: Config | None = None, *, small: bool = True) -> Config:
    config = base or Config()
    if small:
        config = config.model_copy(
            update={"city": CityConfig(name=config.city.name, scale=SMALL_SCALE)}
        )
    post = config.post.model_copy(
        update={
            "grpc_port": None,
            "max_restarts": DRILL_MAX_RESTARTS,
            "command_ttl_s": DRILL_COMMAND_TTL_TTL * config.failover.lease_ttl_s,
        }
    )
    return config.model_copy(update={"post": post})


@dataclass
class DrillSystem:
    system: CitySystem
    links: dict[str, LinkProxy]

    def target(self) -> OwnTarget:
        return OwnTarget(self.system, self.links)

    def drilled(self, *, seed: int = 0) -> Drilled:
        return Drilled(self.target(), seed=seed)


@contextmanager
def own_system(config: Config, run_dir: Path) -> Iterator[DrillSystem]:
    """Start the drill's own system; stop it (and its links) on the way out."""
    links: dict[str, LinkProxy] = {}
    # The links outlive the system: stopping posts still talk to etcd through them.
    with ExitStack() as link_stack:

        def route(post: str, endpoints: Sequence[str]) -> list[str]:
            link = links.get(post)
            if link is None:
                link = LinkProxy(list(endpoints), name=f"{post}-etcd").start()
                link_stack.callback(link.stop)
                links[post] = link
            return list(link.endpoints)

        system = CitySystem(config, run_dir, etcd_route=route)
        with ExitStack() as system_stack:
            system_stack.callback(system.stop)
            system.start()
            yield DrillSystem(system, links)

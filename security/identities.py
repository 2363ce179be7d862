"""Which certificate each process of a city presents, and the set a city issues.

Every process finds its identity from the config alone (`tls_identity`): the
post by its name, the gate, the network server, the chaos tools by theirs.
`None` when `security.tls` is off (the benchmarks' baseline).
"""

from __future__ import annotations

from collections.abc import Iterable

from citypost.config import Config
from security.pki import Kind, Principal
from security.pki_store import Identity, PkiStore

GATE = "gate"
NETWORK_SERVER = "ns"
# The drills, the benchmarks' observers, the test harness: read-only everywhere.
CHAOS = "drill"
# The control room's workstation the demo's console runs as.
CONSOLE = "room"


def store(config: Config) -> PkiStore:
    return PkiStore(config.pki_dir, config.city.name)


def tls_identity(config: Config, kind: Kind, name: str) -> Identity | None:
    """The issued identity of (kind, name), or None without TLS; ConfigError if missing."""
    if not config.security.tls:
        return None
    return store(config).identity(Principal(config.city.name, kind, name))


def city_principals(config: Config, post_names: Iterable[str]) -> list[Principal]:
    """What a whole city (the demo, the city's tests) runs as, apart from etcd and the
    broker, which issue their own."""
    city = config.city.name
    return [
        *(Principal(city, Kind.POST, name) for name in post_names),
        Principal(city, Kind.GATE, GATE),
        Principal(city, Kind.NETWORK_SERVER, NETWORK_SERVER),
        Principal(city, Kind.CHAOS, CHAOS),
        Principal(city, Kind.CONSOLE, CONSOLE),
        Principal(city, Kind.CONSOLE, config.web.workstation),  # the web console's gateway
    ]


def prepare(config: Config, post_names: Iterable[str]) -> PkiStore | None:
    """The city's CA and every certificate it runs with, made or renewed as needed."""
    if not config.security.tls:
        return None
    found = store(config)
    found.init()
    for principal in city_principals(config, post_names):
        found.ensure(principal)
    return found

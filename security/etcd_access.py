"""Who may touch what in etcd: the city's etcd users and roles, as data.

etcd (with `--client-cert-auth` and auth enabled) takes a client certificate's
CN as the user name, so each principal that talks to etcd is a user named
`<kind>.<name>` with the role of its kind:

- `post`: reads and writes everything under `/citypost/<city>/` (the election's
  leader key and the control state); and, unless `posts_defragment=False`, the
  `root` role, because etcd 3.4 lets only root call `Maintenance.Defragment`
  (its `IsAdminPermitted`: "auth: permission denied" for any other role), and
  the leader post defragments the members (failover/etcd_defrag.py), without
  which the database file grows to etcd's quota and every write is refused.
  Root passes every key check, so this makes a post's certificate etcd's admin.
- `gate`: reads the leader key (it fences on its epoch) and reads and writes
  its own `/citypost/<city>/gate/`;
- `chaos` (the drills' collectors): reads everything under `/citypost/<city>/`.

Any other kind gets no user, so etcd refuses its every key and lease-key call.
What needs no role was checked on etcd 3.4.23: lease grant, keep-alive,
time-to-live and list; `Maintenance.Status` and `Alarm`; `Cluster.MemberList`;
`KV.Compact` (any certificate of the city's CA may call those). A lease
revoke needs write access to every key attached to the lease, a transaction
access to every key it compares or touches, a watch read access.

No I/O here: cluster/etcd_local.py applies these with etcdctl.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from citypost.errors import InvalidArgumentError
from security.pki import Kind, Principal

# The role etcd requires before `auth enable`, and which alone may defragment.
ROOT = "root"


class Access(StrEnum):
    """etcd's permission types (etcdctl's spelling)."""

    READ = "read"
    WRITE = "write"
    READWRITE = "readwrite"


@dataclass(frozen=True)
class KeyGrant:
    """Access to one key, or with `prefix` to every key that starts with it."""

    access: Access
    key: str
    prefix: bool = False


@dataclass(frozen=True)
class EtcdRole:
    name: str
    grants: tuple[KeyGrant, ...]


@dataclass(frozen=True)
class EtcdUser:
    """A user authenticated by a certificate whose CN is `name`; it has no password."""

    name: str
    roles: tuple[str, ...]


@dataclass(frozen=True)
class EtcdAccess:
    """The roles to create (root excepted: etcd has it built in) and the users. Every
    role is created, also one no principal has yet, so a user added later by hand
    (`etcdctl user add <cn> --no-password`) only needs `user grant-role`."""

    roles: tuple[EtcdRole, ...]
    users: tuple[EtcdUser, ...]


def city_prefix(city: str) -> str:
    """Must match failover.control_state.city_root (security/ cannot import failover)."""
    if not city or "/" in city:
        raise InvalidArgumentError(f"city must be a non-empty name without '/', got {city!r}")
    return f"/citypost/{city}/"


def leader_key(city: str) -> str:
    """Must match failover.election.leader_key (city root + control_state.LEADER_KEY)."""
    return city_prefix(city) + "leader"


def gate_prefix(city: str) -> str:
    return city_prefix(city) + "gate/"


def roles(city: str) -> dict[Kind, EtcdRole]:
    """The role of each kind that may use etcd at all."""
    return {
        Kind.POST: EtcdRole("post", (KeyGrant(Access.READWRITE, city_prefix(city), prefix=True),)),
        Kind.GATE: EtcdRole(
            "gate",
            (
                KeyGrant(Access.READ, leader_key(city)),
                KeyGrant(Access.READWRITE, gate_prefix(city), prefix=True),
            ),
        ),
        Kind.CHAOS: EtcdRole("chaos", (KeyGrant(Access.READ, city_prefix(city), prefix=True),)),
    }


def etcd_access(
    city: str, principals: Iterable[Principal], *, posts_defragment: bool = True
) -> EtcdAccess:
    """The roles and users for `principals` of `city`; principals of kinds without a role
    get no user. `posts_defragment=False` keeps the posts off the root role (someone
    else, as root, must then defragment)."""
    by_kind = roles(city)
    users: dict[str, EtcdUser] = {}
    for principal in principals:
        if principal.city != city:
            raise InvalidArgumentError(
                f"{principal.common_name} belongs to city {principal.city!r}, not {city!r}"
            )
        role = by_kind.get(principal.kind)
        if role is None:
            continue
        names = [role.name]
        if principal.kind is Kind.POST and posts_defragment:
            names.append(ROOT)  # Maintenance.Defragment: root only in etcd 3.4
        users[principal.common_name] = EtcdUser(principal.common_name, tuple(names))
    return EtcdAccess(roles=tuple(by_kind.values()), users=tuple(users.values()))

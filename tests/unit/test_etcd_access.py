"""The etcd access rules: which principal becomes which etcd user, with which role."""

from __future__ import annotations

import pytest

from citypost.errors import InvalidArgumentError
from security.etcd_access import (
    ROOT,
    Access,
    EtcdRole,
    KeyGrant,
    city_prefix,
    etcd_access,
    gate_prefix,
    leader_key,
)
from security.pki import Kind, Principal

pytestmark = [pytest.mark.unit, pytest.mark.timeout(10)]

CITY = "dijon"


def _p(kind: Kind, name: str, city: str = CITY) -> Principal:
    return Principal(city, kind, name)


def _roles_by_name(city: str = CITY) -> dict[str, EtcdRole]:
    return {role.name: role for role in etcd_access(city, []).roles}


def test_the_keys_match_the_election_and_the_control_state() -> None:
    # Recomputed in security/ (it may not import failover): they must stay equal.
    from failover.control_state import city_root
    from failover.election import leader_key as election_leader_key

    assert city_prefix(CITY) == city_root(CITY) == "/citypost/dijon/"
    assert leader_key(CITY).encode() == election_leader_key(CITY)
    assert gate_prefix(CITY) == "/citypost/dijon/gate/"


def test_a_post_reads_and_writes_its_city_and_is_root_to_defragment() -> None:
    access = etcd_access(CITY, [_p(Kind.POST, "primary"), _p(Kind.POST, "backup")])

    assert [(u.name, u.roles) for u in access.users] == [
        ("post.primary", ("post", ROOT)),
        ("post.backup", ("post", ROOT)),
    ]
    assert _roles_by_name()["post"].grants == (
        KeyGrant(Access.READWRITE, "/citypost/dijon/", prefix=True),
    )


def test_posts_stay_off_root_when_they_do_not_defragment() -> None:
    access = etcd_access(CITY, [_p(Kind.POST, "primary")], posts_defragment=False)

    assert [(u.name, u.roles) for u in access.users] == [("post.primary", ("post",))]


def test_the_gate_reads_the_leader_key_and_owns_its_prefix_only() -> None:
    access = etcd_access(CITY, [_p(Kind.GATE, "gate")])

    assert [(u.name, u.roles) for u in access.users] == [("gate.gate", ("gate",))]
    assert _roles_by_name()["gate"].grants == (
        KeyGrant(Access.READ, "/citypost/dijon/leader", prefix=False),
        KeyGrant(Access.READWRITE, "/citypost/dijon/gate/", prefix=True),
    )


def test_chaos_reads_the_city_only() -> None:
    access = etcd_access(CITY, [_p(Kind.CHAOS, "drill")])

    assert [(u.name, u.roles) for u in access.users] == [("chaos.drill", ("chaos",))]
    assert _roles_by_name()["chaos"].grants == (
        KeyGrant(Access.READ, "/citypost/dijon/", prefix=True),
    )


@pytest.mark.parametrize(
    "kind",
    [Kind.ETCD, Kind.BROKER, Kind.NETWORK_SERVER, Kind.CONSOLE],
)
def test_other_kinds_get_no_user(kind: Kind) -> None:
    assert etcd_access(CITY, [_p(kind, "x")]).users == ()


def test_a_device_gets_no_user() -> None:
    assert etcd_access(CITY, [_p(Kind.DEVICE, "0011223344556677")]).users == ()


def test_every_role_exists_even_without_a_user_and_root_is_not_created() -> None:
    names = [role.name for role in etcd_access(CITY, []).roles]

    assert names == ["post", "gate", "chaos"]  # root is etcd's own


def test_a_principal_issued_twice_is_one_user() -> None:
    access = etcd_access(CITY, [_p(Kind.GATE, "gate"), _p(Kind.GATE, "gate")])

    assert [u.name for u in access.users] == ["gate.gate"]


def test_the_prefixes_are_per_city() -> None:
    grants = {g.key for role in etcd_access("lyon", []).roles for g in role.grants}

    assert grants == {"/citypost/lyon/", "/citypost/lyon/leader", "/citypost/lyon/gate/"}


def test_a_principal_of_another_city_is_refused() -> None:
    with pytest.raises(InvalidArgumentError, match="lyon"):
        etcd_access(CITY, [_p(Kind.POST, "primary", city="lyon")])


@pytest.mark.parametrize("city", ["", "a/b"])
def test_a_city_that_is_no_single_key_segment_is_refused(city: str) -> None:
    with pytest.raises(InvalidArgumentError):
        city_prefix(city)

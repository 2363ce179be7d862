"""The authorization policy: every RPC has a rule, roles grant what the room expects."""

from __future__ import annotations

import pytest

from api.server import method_names
from citypost.errors import ConfigError, PermissionDeniedError
from protos.citypost.v1 import (
    admin_pb2,  # noqa: F401 — registers the services in the default pool
    assets_pb2,
    auth_pb2,  # noqa: F401
    citizen_pb2,  # noqa: F401
    command_pb2,
    operator_pb2,
)
from security.policy import DEFAULT_ROLES, RULES, Policy, check_roles, missing_rules

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]

SERVICES = [
    "citypost.v1.OperatorService",
    "citypost.v1.PostAdmin",
    "citypost.v1.CitizenService",
    "citypost.v1.AuthService",
    "grpc.health.v1.Health",
    "grpc.reflection.v1alpha.ServerReflection",
]


def _send(asset_class: int) -> operator_pb2.SendCommandRequest:
    return operator_pb2.SendCommandRequest(command=command_pb2.Command(asset_class=asset_class))


def test_every_served_method_has_a_rule() -> None:
    from grpc_health.v1 import health_pb2  # noqa: F401
    from grpc_reflection.v1alpha import reflection_pb2  # noqa: F401

    assert missing_rules(method_names(SERVICES)) == []
    # and a new one would be caught
    assert missing_rules(["/citypost.v1.OperatorService/DropTheCity"]) == [
        "/citypost.v1.OperatorService/DropTheCity"
    ]


def test_a_post_commands_only_its_own_classes() -> None:
    policy = Policy()
    method = "/citypost.v1.OperatorService/SendCommand"
    policy.check(method, ["urban-supervision"], _send(assets_pb2.STREET_LAMP))
    with pytest.raises(PermissionDeniedError) as refused:
        policy.check(method, ["urban-supervision"], _send(assets_pb2.BOLLARD))
    assert refused.value.permission == "commands.send:bollard"
    assert "commands.send:bollard is needed" in refused.value.message
    policy.check(method, ["municipal-police"], _send(assets_pb2.BOLLARD))
    policy.check(method, ["supervisor"], _send(assets_pb2.BOLLARD))


@pytest.mark.parametrize("role", ["help-line", "administrator", "auditor", "wallboard", "sre"])
def test_roles_without_device_commands(role: str) -> None:
    with pytest.raises(PermissionDeniedError, match=r"commands.send:street_lamp"):
        Policy().check(
            "/citypost.v1.OperatorService/SendCommand", [role], _send(assets_pb2.STREET_LAMP)
        )


def test_a_command_to_a_device_naming_no_class_needs_some_class_here() -> None:
    """The post reads the device's class and checks it (api.operator); the rule can only
    ask for commands.send of some class."""
    policy = Policy()
    method = "/citypost.v1.OperatorService/SendCommand"
    device_only = _send(assets_pb2.ASSET_CLASS_UNSPECIFIED)
    policy.check(method, ["traffic-control"], device_only)
    with pytest.raises(PermissionDeniedError, match=r"permission commands\.send is needed"):
        policy.check(method, ["help-line"], device_only)


def test_reads_and_administration() -> None:
    policy = Policy()
    policy.check("/citypost.v1.OperatorService/ListAlarms", ["wallboard"], None)
    with pytest.raises(PermissionDeniedError, match=r"alarms.handle"):
        policy.check("/citypost.v1.OperatorService/AcknowledgeAlarm", ["wallboard"], None)
    with pytest.raises(PermissionDeniedError, match=r"failover.operate"):
        policy.check("/citypost.v1.PostAdmin/Resign", ["traffic-control"], None)
    policy.check("/citypost.v1.PostAdmin/Resign", ["supervisor"], None)
    policy.check("/citypost.v1.PostAdmin/Resign", ["sre"], None)
    with pytest.raises(PermissionDeniedError, match=r"status.read"):
        policy.check("/citypost.v1.PostAdmin/GetStatus", [], None)
    with pytest.raises(PermissionDeniedError, match="no access rule"):
        policy.check("/citypost.v1.OperatorService/Unknown", ["supervisor"], None)


def test_overrides_scoped_and_end_override_needs_some_class() -> None:
    policy = Policy()
    set_lamp = operator_pb2.SetOverrideRequest(asset_class=assets_pb2.STREET_LAMP)
    policy.check("/citypost.v1.OperatorService/SetOverride", ["urban-supervision"], set_lamp)
    with pytest.raises(PermissionDeniedError, match=r"overrides.set:street_lamp"):
        policy.check("/citypost.v1.OperatorService/SetOverride", ["traffic-control"], set_lamp)
    policy.check("/citypost.v1.OperatorService/EndOverride", ["traffic-control"], None)
    with pytest.raises(PermissionDeniedError, match=r"overrides.set"):
        policy.check("/citypost.v1.OperatorService/EndOverride", ["help-line"], None)


def test_public_and_authenticated_rules() -> None:
    assert RULES["/grpc.health.v1.Health/Check"].public
    assert RULES["/citypost.v1.AuthService/Login"].public
    who = RULES["/citypost.v1.AuthService/WhoAmI"]
    assert who.permission is None and not who.public


def test_bad_role_tables_are_config_errors() -> None:
    check_roles(DEFAULT_ROLES)
    with pytest.raises(ConfigError, match=r"unknown permission 'commands.fly'"):
        check_roles({"x": ["commands.fly"]})
    with pytest.raises(ConfigError, match="unknown asset class 'tram'"):
        check_roles({"x": ["commands.send:tram"]})
    with pytest.raises(ConfigError, match="needs an asset class"):
        check_roles({"x": ["commands.send"]})
    with pytest.raises(ConfigError, match="takes no asset class"):
        check_roles({"x": ["alarms.read:camera"]})
    with pytest.raises(ConfigError, match="machine_roles"):
        Policy(machine_roles={"chaos": "nobody"})

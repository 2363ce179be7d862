"""The multicast groups the gate keeps on the network server: one per class C group."""

from __future__ import annotations

import pytest

from bridges.airtime import RX2_FREQUENCY_HZ
from bridges.registry import RadioClass, class_name, radio_class
from citypost.config import CityConfig
from cluster.gate_runner import multicast_groups, plan_routes
from fleet.population import build_city

pytestmark = pytest.mark.unit


def test_one_group_per_class_c_group_with_exactly_its_members() -> None:
    registry = build_city(CityConfig(scale=0.01)).registry
    wanted = multicast_groups(registry, dr=3)
    class_c = {k: v for k, v in registry.groups().items() if radio_class(k[0]) is RadioClass.C}
    assert len(wanted) == len(class_c) > 0
    for (asset_class, group), members in class_c.items():
        name, spec = wanted[members[0].application_id, group]
        assert name == f"citypost/{class_name(asset_class)}/{group}"
        assert spec.dev_euis == {d.dev_eui for d in members}
        assert (spec.dr, spec.frequency_hz) == (3, RX2_FREQUENCY_HZ)
        assert spec.application_id == members[0].application_id
    assert not any("water_meter" in n or "traffic_signal" in n for n, _ in wanted.values())


def test_the_plan_routes_each_device_as_the_network_server_reaches_it() -> None:
    city = build_city(CityConfig(scale=0.01))
    unicast, groups = plan_routes(city)
    assert set(unicast) == {d.device.dev_eui for d in city.devices}
    for sim in city.devices:
        route = unicast[sim.device.dev_eui]
        assert route.radio_class is radio_class(sim.device.asset_class)
        if route.radio_class is RadioClass.IP:
            assert route.gateways == ()
        else:
            assert sim.radio is not None and route.gateways[0] == sim.radio.gateway_id
    for (app, group), route in groups.items():
        members = [
            s for s in city.devices if (s.device.application_id, s.device.group) == (app, group)
        ]
        assert set(route.gateways) == {s.radio.gateway_id for s in members if s.radio is not None}

"""The multicast groups the gate keeps on the network server: one per class C group."""

from __future__ import annotations

import pytest

from bridges.airtime import RX2_FREQUENCY_HZ
from bridges.registry import RadioClass, class_name, radio_class
from citypost.config import CityConfig
from cluster.gate_runner import multicast_groups
from fleet.population import build_city

pytestmark = pytest.mark.unit


def test_one_group_per_class_c_group_with_exactly_its_members() -> None:
    registry = build_city(CityConfig(scale=0.01)).registry
    wanted = multicast_groups(registry, dr=3)
    class_c = {k: v for k, v in registry.groups().items() if radio_class(k[0]) is RadioClass.C}
    assert len(wanted) == len(class_c) > 0
    for (asset_class, group), members in class_c.items():
        spec = wanted[f"citypost/{class_name(asset_class)}/{group}"]
        assert spec.dev_euis == {d.dev_eui for d in members}
        assert (spec.dr, spec.frequency_hz) == (3, RX2_FREQUENCY_HZ)
        assert spec.application_id == members[0].application_id
    assert not any("water_meter" in name or "traffic_signal" in name for name in wanted)

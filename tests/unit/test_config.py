from pathlib import Path

import pytest

from citypost.config import Config, load_config, parse_override
from citypost.errors import ConfigError

pytestmark = pytest.mark.unit


def test_defaults_are_the_whole_city_with_a_local_stack() -> None:
    config = load_config()
    assert config == Config()
    assert config.city.name == "dijon" and config.city.scale == 1.0
    assert config.etcd.mode == "local" and config.mqtt.mode == "local"


def test_file_then_overrides(tmp_path: Path) -> None:
    path = tmp_path / "city.toml"
    path.write_text("[city]\nscale = 0.5\nseed = 3\n[sim]\nspeed = 120\n")
    config = load_config(path, [("city.scale", 0.01)])
    assert config.city.scale == 0.01  # the override wins over the file
    assert config.city.seed == 3
    assert config.sim.speed == 120


@pytest.mark.parametrize(
    ("overrides", "names"),
    [
        ({"city.scale": 0}, "city.scale"),
        ({"city.scale": 1.5}, "city.scale"),
        ({"etcd.members": 2}, "members must be odd"),
        ({"etcd.mode": "external"}, "endpoints must list every member"),
        ({"etcd.election_timeout_ms": 100, "etcd.heartbeat_interval_ms": 50}, "at least 5 x"),
        ({"failover.keepalive_interval_s": 1.0}, "lease_ttl_s / 3"),
        ({"failover.safety_margin_s": 2.0}, "must be < lease_ttl_s"),
        ({"observability.exporter": "otlp"}, "otlp_endpoint is required"),
        ({"mqtt.mode": "external"}, "port is required"),
        ({"city.nonsense": 1}, "city.nonsense"),
    ],
)
def test_bad_config_names_the_field_and_rule(overrides: dict[str, object], names: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(overrides=overrides)
    assert names in str(caught.value)


def test_missing_and_broken_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[city\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(broken)


def test_config_is_immutable() -> None:
    config = load_config()
    with pytest.raises(Exception, match="frozen"):
        config.city.scale = 0.5  # type: ignore[misc]


def test_parse_override_reads_toml_values() -> None:
    assert parse_override("city.scale=0.05") == ("city.scale", 0.05)
    assert parse_override("mqtt.persistence=true") == ("mqtt.persistence", True)
    assert parse_override("city.name=lyon") == ("city.name", "lyon")
    with pytest.raises(ConfigError):
        parse_override("no-equals-sign")

"""The apps file (credentials kept as hashes, shown once, seen by other readers at once)
and the rule that merges duplicate citizen reports."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from actors.decisions import OpenIncident
from api.citizen import RecentReports, reporter_of
from citypost.config import load_config
from citypost.errors import ConfigError, InvalidArgumentError, NotFoundError
from protos.citypost.v1 import operations_pb2
from security.apps import (
    DEMO_APP,
    AppBook,
    apps_path,
    ensure_demo_app,
    hash_secret,
    secrets_path,
)

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]

NOW = 1_800_000_000.0

# --- the apps file -------------------------------------------------------------------------


def test_an_app_is_kept_as_a_hash_and_checked(tmp_path: Path) -> None:
    path = tmp_path / "apps.json"
    book = AppBook(path)
    credential = book.add("citizen-app", now=NOW)
    assert credential.header == f"citizen-app:{credential.secret}"
    assert len(credential.secret) >= 43 and ":" not in credential.secret
    text = path.read_text()
    assert credential.secret not in text
    assert hash_secret(credential.secret) in text
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert book.refusal("citizen-app", credential.secret) is None
    assert book.refusal("citizen-app", "guess") == "wrong secret for app 'citizen-app'"
    assert book.refusal("nope", credential.secret) == "unknown app 'nope'"
    assert "secret" not in repr(book.get("citizen-app")).replace("secret_hash", "")


def test_changes_are_seen_by_another_reader_and_rotation_ends_the_old_secret(
    tmp_path: Path,
) -> None:
    writer, post = AppBook(tmp_path / "apps.json"), AppBook(tmp_path / "apps.json")
    assert post.refusal("citizen-app", "x") == "unknown app 'citizen-app'"
    first = writer.add("citizen-app", now=NOW)
    assert post.refusal("citizen-app", first.secret) is None  # no restart needed
    second = writer.rotate("citizen-app")
    assert post.refusal("citizen-app", first.secret) == "wrong secret for app 'citizen-app'"
    assert post.refusal("citizen-app", second.secret) is None
    writer.disable("citizen-app")
    assert post.refusal("citizen-app", second.secret) == "app 'citizen-app' is disabled"
    writer.enable("citizen-app")
    writer.remove("citizen-app")
    assert post.get("citizen-app") is None
    with pytest.raises(NotFoundError):
        writer.rotate("citizen-app")


def test_bad_names_and_files_are_refused(tmp_path: Path) -> None:
    book = AppBook(tmp_path / "apps.json")
    for bad in ("Citizen", "a", "app:1", "app 1", "-app"):
        with pytest.raises(InvalidArgumentError, match="app id"):
            book.add(bad, now=NOW)
    book.add("citizen-app", now=NOW)
    with pytest.raises(InvalidArgumentError, match="already exists"):
        book.add("citizen-app", now=NOW)
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"version": 1, "apps": [{"app": "x1", "secret_hash": "plain"}]}))
    with pytest.raises(ConfigError, match="cannot be read"):
        AppBook(broken).get("x1")


def test_the_demo_app_is_made_once_and_its_secret_kept_beside(tmp_path: Path) -> None:
    config = load_config(overrides={"run_dir": str(tmp_path)})
    path = apps_path(config)
    assert path == tmp_path / "apps.json"
    first = ensure_demo_app(path)
    assert first.app == DEMO_APP
    assert ensure_demo_app(path) == first
    assert stat.S_IMODE(secrets_path(path).stat().st_mode) == 0o600
    assert AppBook(path).refusal(DEMO_APP, first.secret) is None
    secrets_path(path).unlink()  # the kept secret lost: a new one, the old one ends
    second = ensure_demo_app(path)
    assert second.secret != first.secret
    assert AppBook(path).refusal(DEMO_APP, first.secret) is not None


# --- duplicates ----------------------------------------------------------------------------

DIJON = (47.3220, 5.0415)
M_PER_DEG_LAT = 111_195.0


def _report(
    kind: int = operations_pb2.INCIDENT_ACCIDENT,
    north_m: float = 0.0,
    commune: str = "Dijon",
) -> OpenIncident:
    return OpenIncident(
        kind=kind,  # type: ignore[arg-type]
        source=operations_pb2.CITIZEN,
        latitude=DIJON[0] + north_m / M_PER_DEG_LAT,
        longitude=DIJON[1],
        commune=commune,
        detail="two cars",
        priority=2,
        originator="r",
    )


MINUTE_MS = 60_000
T0 = 1_800_000_000_000


def test_same_kind_same_commune_near_and_recent_is_a_duplicate() -> None:
    recent = RecentReports(radius_m=150.0, window_ms=30 * MINUTE_MS)
    recent.remember(_report(), "inc-1", T0)
    found = recent.match(_report(north_m=100), T0 + 10 * MINUTE_MS)
    assert found is not None
    assert found.incident_id == "inc-1"
    assert found.distance_m == pytest.approx(100, abs=1)
    assert found.age_ms == 10 * MINUTE_MS


@pytest.mark.parametrize(
    ("report", "after_ms", "why"),
    [
        (_report(kind=operations_pb2.INCIDENT_FIRE), MINUTE_MS, "another kind"),
        (_report(north_m=200), MINUTE_MS, "too far"),
        (_report(commune="Talant"), MINUTE_MS, "another commune"),
        (_report(), 31 * MINUTE_MS, "too late"),
    ],
)
def test_not_a_duplicate(report: OpenIncident, after_ms: int, why: str) -> None:
    recent = RecentReports(radius_m=150.0, window_ms=30 * MINUTE_MS)
    recent.remember(_report(), "inc-1", T0)
    assert recent.match(report, T0 + after_ms) is None, why


def test_the_nearest_wins_the_window_does_not_chain_and_memory_is_bounded() -> None:
    recent = RecentReports(radius_m=150.0, window_ms=30 * MINUTE_MS, max_remembered=2)
    recent.remember(_report(north_m=0), "south", T0)
    recent.remember(_report(north_m=250), "north", T0)
    found = recent.match(_report(north_m=140), T0 + MINUTE_MS)
    assert found is not None and found.incident_id == "north"  # 110 m beats 140 m
    # Merged reports are not remembered as openers: 25 minutes on, still from T0.
    assert recent.match(_report(), T0 + 29 * MINUTE_MS) is not None
    assert recent.match(_report(), T0 + 31 * MINUTE_MS) is None
    assert len(recent) == 0  # expired ones are forgotten
    for n in range(3):
        recent.remember(_report(north_m=1000 * n), f"i{n}", T0)
    assert len(recent) == 2
    recent.forget("i2")
    assert recent.match(_report(north_m=2000), T0) is None


def test_reporters_are_namespaced_by_app() -> None:
    assert reporter_of("citizen-app", "alice") == "citizen-app/alice"
    assert reporter_of("", "alice") == "alice"

"""The web console's vendored JavaScript is what MANIFEST.json records: every listed file
is there with its sha256, nothing unlisted lies beside them, and the versions are the ones
package-lock.json pins. No Node needed: `make vendor` is the only step that runs npm."""

from __future__ import annotations

from pathlib import Path

import pytest

from citypost.errors import ConfigError
from console.web.vendor_sync import (
    PACKAGES,
    VENDOR_DIR,
    Manifest,
    PackageRecord,
    VendoredFile,
    check_vendor,
    digest_problems,
    file_digests,
    locked_versions,
    main,
    manifest_from_json,
    manifest_to_json,
    present_files,
    problems,
    read_manifest,
    spec_problems,
    unlisted_problems,
    version_problems,
)

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def manifest() -> Manifest:
    return read_manifest(VENDOR_DIR)


def test_every_listed_file_is_there_with_its_sha256(manifest: Manifest) -> None:
    listed = [file.path for package in manifest for file in package.files]
    assert listed, "MANIFEST.json lists no file"
    assert digest_problems(manifest, file_digests(VENDOR_DIR, listed)) == []


def test_every_vendored_file_is_listed(manifest: Manifest) -> None:
    assert unlisted_problems(manifest, present_files(VENDOR_DIR)) == []


def test_versions_are_the_ones_the_lock_pins(manifest: Manifest) -> None:
    assert version_problems(manifest, locked_versions(VENDOR_DIR)) == []
    assert {package.name for package in manifest} == {package.name for package in PACKAGES}


def test_the_manifest_lists_what_vendor_sync_copies_with_a_licence(manifest: Manifest) -> None:
    assert spec_problems(manifest, PACKAGES) == []
    for package in manifest:
        assert package.license, package.name
        assert any("LICEN" in Path(file.path).name for file in package.files), package.name


def test_the_whole_check_passes_and_so_does_the_command() -> None:
    assert check_vendor(VENDOR_DIR) == []
    assert main(["--check"]) == 0


# --- the check itself finds what it must ----------------------------------------------------


def _manifest() -> Manifest:
    return (
        PackageRecord(
            name="preact",
            version="11.2.0",
            license="MIT",
            files=(
                VendoredFile("preact/dist/preact.mjs", "aa", 3),
                VendoredFile("preact/LICENSE", "bb", 2),
            ),
        ),
    )


def test_a_changed_or_missing_file_is_named() -> None:
    found = digest_problems(_manifest(), {"preact/dist/preact.mjs": "cc", "preact/LICENSE": None})
    assert len(found) == 2
    assert found[0].startswith("preact/dist/preact.mjs: sha256 cc differs")
    assert found[1].startswith("preact/LICENSE: missing")


def test_an_unlisted_file_and_a_version_off_the_lock_are_named() -> None:
    present = ["preact/dist/preact.mjs", "preact/LICENSE", "preact/dist/preact.mjs.map"]
    assert unlisted_problems(_manifest(), present) == [
        "preact/dist/preact.mjs.map: not listed in MANIFEST.json"
    ]
    assert version_problems(_manifest(), {"preact": "11.1.0"}) == [
        "preact: MANIFEST.json has 11.2.0, package-lock.json pins 11.1.0"
    ]
    assert version_problems(_manifest(), {}) == [
        "preact: in MANIFEST.json (11.2.0) but not in package-lock.json"
    ]


def test_a_sound_directory_has_no_problem() -> None:
    digests = {"preact/dist/preact.mjs": "aa", "preact/LICENSE": "bb"}
    assert problems(_manifest(), digests, digests, {"preact": "11.2.0"}, packages=()) == [
        "preact: in MANIFEST.json but not vendored"
    ]


def test_the_manifest_round_trips_and_rejects_a_path_out_of_vendor() -> None:
    assert manifest_from_json(manifest_to_json(_manifest())) == _manifest()
    escaping = manifest_to_json(_manifest()).replace("preact/LICENSE", "../LICENSE")
    with pytest.raises(ConfigError, match=r"\.\./LICENSE"):
        manifest_from_json(escaping)


def test_a_tampered_copy_fails_the_check(tmp_path: Path) -> None:
    vendor = tmp_path / "vendor"
    vendor.mkdir()
    for name in ("package-lock.json", "MANIFEST.json"):
        (vendor / name).write_bytes((VENDOR_DIR / name).read_bytes())
    for path in present_files(VENDOR_DIR):
        (vendor / path).parent.mkdir(parents=True, exist_ok=True)
        (vendor / path).write_bytes((VENDOR_DIR / path).read_bytes())
    assert check_vendor(vendor) == []
    (vendor / "htm" / "dist" / "htm.module.js").write_text("export default 1;\n")
    (vendor / "htm" / "extra.js").write_text("")
    found = check_vendor(vendor)
    assert [problem.split(":")[0] for problem in found] == [
        "htm/dist/htm.module.js",
        "htm/extra.js",
    ]

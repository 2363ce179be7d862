"""Vendor the web console's third-party JavaScript (or, with --check, verify it).

Run from the project root: `python -m console.web.vendor_sync [--check]` (`make vendor`).

Without --check it runs `npm ci --ignore-scripts` in a temporary directory from the
committed `console/web/vendor/package.json` and `package-lock.json`, copies only the
runtime files the page loads (`PACKAGES`) and each package's licence to
`console/web/vendor/<package>/<path in the npm package>`, and writes
`console/web/vendor/MANIFEST.json`: each package's name, version and SPDX licence, each
file's path (relative to the vendor directory), sha256 and size. To move a pin, edit
package.json, refresh the lock (`npm install --package-lock-only --ignore-scripts` in a
copy), and run `make vendor`.

With --check it needs no Node: it recomputes the sha256 of the committed files and
compares them with MANIFEST.json, looks for files the manifest does not list, and compares
the manifest's versions with package-lock.json. It exits 1 naming each file that differs.

What the page does with them (one import map, no bundler):

    "maplibre-gl":  "/vendor/maplibre-gl/dist/maplibre-gl.mjs"
    "preact":       "/vendor/preact/dist/preact.mjs"
    "preact/hooks": "/vendor/preact/hooks/dist/hooks.mjs"   (imports the bare "preact")
    "htm":          "/vendor/htm/dist/htm.module.js"         (html = htm.bind(h))
    "uplot":        "/vendor/uplot/dist/uPlot.esm.js"        (default export uPlot)

plus `<link rel="stylesheet">` for maplibre-gl.css and uPlot.min.css. axe-core's
axe.min.js is a classic script (it sets `window.axe`) for the browser tests only.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from citypost.errors import CitypostError, ConfigError, InfrastructureError

VENDOR_DIR = Path(__file__).resolve().parent / "vendor"
MANIFEST_NAME = "MANIFEST.json"
# The inputs and the record of the vendoring itself: not vendored files.
NOT_VENDORED = frozenset({"package.json", "package-lock.json", MANIFEST_NAME})
NPM_CI = ("ci", "--ignore-scripts", "--include=dev", "--no-audit", "--no-fund")


@dataclass(frozen=True)
class VendoredPackage:
    """An npm package and the files of it the page needs, as paths inside the package."""

    name: str
    files: tuple[str, ...]


PACKAGES: tuple[VendoredPackage, ...] = (
    # maplibre-gl 6 ships ES modules only (no UMD build): the map in dist/maplibre-gl.mjs
    # and its web worker in dist/maplibre-gl-worker.mjs, each self-contained (no imports;
    # dist/maplibre-gl-shared.mjs is an empty file and is not needed). The map finds its
    # worker by itself: imported over http(s), it starts
    # `new Worker(new URL("./maplibre-gl-worker.mjs?v=<version>", import.meta.url),
    # {type: "module"})` (a classic worker where module workers are missing). So the page
    # must serve the two files side by side under their own names, from its own origin
    # (a cross-origin worker is wrapped in a blob: URL, which a CSP must then allow), and
    # needs no setWorkerUrl; its CSP must allow `worker-src 'self'`. Only if the worker is
    # served elsewhere, or the page is opened from file:// (then import.meta.url is not
    # http(s) and maplibre finds no worker), must it call
    # `maplibregl.setWorkerUrl(url)` before the first Map. The page also links
    # dist/maplibre-gl.css. Both .mjs end with a `sourceMappingURL` comment; the maps
    # (~9 MB) are not vendored, so the browser's developer tools report them missing.
    VendoredPackage(
        "maplibre-gl",
        ("dist/maplibre-gl.mjs", "dist/maplibre-gl-worker.mjs", "dist/maplibre-gl.css"),
    ),
    # Preact 11 names its ES modules .mjs (10's dist/preact.module.js is gone).
    VendoredPackage("preact", ("dist/preact.mjs", "hooks/dist/hooks.mjs")),
    # htm itself, bound to Preact by the page (`htm.bind(h)`): htm/preact/standalone
    # bundles its own copy of Preact 10, a second Preact the hooks of 11 would not serve.
    VendoredPackage("htm", ("dist/htm.module.js",)),
    VendoredPackage("uplot", ("dist/uPlot.esm.js", "dist/uPlot.min.css")),
    # For the browser tests only. The third-party notice covers code bundled in axe.min.js.
    VendoredPackage("axe-core", ("axe.min.js", "LICENSE-3RD-PARTY.txt")),
)
# Copied from every package besides its files: the first of these it ships.
LICENSE_NAMES = ("LICENSE", "LICENSE.txt", "LICENSE.md", "LICENCE")


@dataclass(frozen=True)
class VendoredFile:
    path: str  # relative to the vendor directory, "<package>/<path in the package>"
    sha256: str
    size: int


@dataclass(frozen=True)
class PackageRecord:
    name: str
    version: str
    license: str  # SPDX, from the package's package.json
    files: tuple[VendoredFile, ...]


Manifest = tuple[PackageRecord, ...]


# --- decisions --------------------------------------------------------------------------


def digest_problems(manifest: Manifest, digests: Mapping[str, str | None]) -> list[str]:
    """Each listed file that is missing (digest None or absent) or whose sha256 differs."""
    found: list[str] = []
    for package in manifest:
        for file in package.files:
            actual = digests.get(file.path)
            if actual is None:
                found.append(f"{file.path}: missing (MANIFEST.json lists it)")
            elif actual != file.sha256:
                found.append(
                    f"{file.path}: sha256 {actual} differs from MANIFEST.json's {file.sha256}"
                )
    return found


def unlisted_problems(manifest: Manifest, present: Iterable[str]) -> list[str]:
    """Each file under the vendor directory that the manifest does not list."""
    listed = {file.path for package in manifest for file in package.files}
    return [f"{path}: not listed in MANIFEST.json" for path in sorted(set(present) - listed)]


def version_problems(manifest: Manifest, locked: Mapping[str, str]) -> list[str]:
    """Each package whose manifest version is not the one package-lock.json pins."""
    found: list[str] = []
    recorded = {package.name: package.version for package in manifest}
    for name, version in recorded.items():
        if name not in locked:
            found.append(f"{name}: in MANIFEST.json ({version}) but not in package-lock.json")
        elif locked[name] != version:
            found.append(
                f"{name}: MANIFEST.json has {version}, package-lock.json pins {locked[name]}"
            )
    return found


def spec_problems(manifest: Manifest, packages: Sequence[VendoredPackage]) -> list[str]:
    """Where the manifest's packages and paths are not what `packages` copies (the list
    was edited without running `make vendor`). Licence files are not compared: their
    names differ between packages."""
    found: list[str] = []
    recorded = {package.name: {f.path for f in package.files} for package in manifest}
    for package in packages:
        if package.name not in recorded:
            found.append(f"{package.name}: vendored by vendor_sync but not in MANIFEST.json")
            continue
        for path in package.files:
            full = f"{package.name}/{path}"
            if full not in recorded[package.name]:
                found.append(f"{full}: vendored by vendor_sync but not in MANIFEST.json")
    names = {package.name for package in packages}
    found += [f"{name}: in MANIFEST.json but not vendored" for name in recorded.keys() - names]
    return found


def problems(
    manifest: Manifest,
    digests: Mapping[str, str | None],
    present: Iterable[str],
    locked: Mapping[str, str],
    packages: Sequence[VendoredPackage] = PACKAGES,
) -> list[str]:
    """Everything wrong with a vendor directory, from what was read of it; [] if nothing."""
    return (
        digest_problems(manifest, digests)
        + unlisted_problems(manifest, present)
        + version_problems(manifest, locked)
        + spec_problems(manifest, packages)
    )


# --- manifest (de)serialization ----------------------------------------------------------


def manifest_to_json(manifest: Manifest) -> str:
    data = {
        "packages": [
            {
                "name": package.name,
                "version": package.version,
                "license": package.license,
                "files": [
                    {"path": file.path, "sha256": file.sha256, "size": file.size}
                    for file in package.files
                ],
            }
            for package in manifest
        ]
    }
    return json.dumps(data, indent=2) + "\n"


def _object(data: object, where: str) -> dict[str, object]:
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be an object")
    return data


def _str(data: dict[str, object], key: str, where: str) -> str:
    value = data.get(key)
    if not isinstance(value, str):
        raise ConfigError(f"{where}: field {key!r} must be a string")
    return value


def _list(data: dict[str, object], key: str, where: str) -> list[object]:
    value = data.get(key)
    if not isinstance(value, list):
        raise ConfigError(f"{where}: field {key!r} must be a list")
    return value


def _vendor_path(path: str, where: str) -> str:
    pure = PurePosixPath(path)
    if pure.is_absolute() or ".." in pure.parts or str(pure) != path:
        raise ConfigError(f"{where}: path {path!r} must be relative, normalized, inside vendor/")
    return path


def manifest_from_json(text: str) -> Manifest:
    try:
        data = _object(json.loads(text), MANIFEST_NAME)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{MANIFEST_NAME} is not JSON: {exc}") from exc
    records: list[PackageRecord] = []
    for i, item in enumerate(_list(data, "packages", MANIFEST_NAME)):
        where = f"{MANIFEST_NAME} packages[{i}]"
        package = _object(item, where)
        files: list[VendoredFile] = []
        for j, entry_item in enumerate(_list(package, "files", where)):
            at = f"{where}.files[{j}]"
            entry = _object(entry_item, at)
            size = entry.get("size")
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise ConfigError(f"{at}: field 'size' must be a count of bytes")
            files.append(
                VendoredFile(
                    path=_vendor_path(_str(entry, "path", at), at),
                    sha256=_str(entry, "sha256", at),
                    size=size,
                )
            )
        records.append(
            PackageRecord(
                name=_str(package, "name", where),
                version=_str(package, "version", where),
                license=_str(package, "license", where),
                files=tuple(files),
            )
        )
    return tuple(records)


# --- reading a vendor directory ------------------------------------------------------------


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_manifest(vendor_dir: Path = VENDOR_DIR) -> Manifest:
    path = vendor_dir / MANIFEST_NAME
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError(f"{path} is missing: run `make vendor`") from exc
    return manifest_from_json(text)


def locked_versions(vendor_dir: Path = VENDOR_DIR) -> dict[str, str]:
    """Package name -> version, for the packages installed at the top of node_modules."""
    path = vendor_dir / "package-lock.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path} cannot be read: {exc}") from exc
    packages = _object(_object(data, str(path)).get("packages"), f"{path} 'packages'")
    prefix = "node_modules/"
    return {
        key[len(prefix) :]: str(entry["version"])
        for key, entry in packages.items()
        if key.startswith(prefix)
        and "/node_modules/" not in key
        and isinstance(entry, dict)
        and "version" in entry
    }


def present_files(vendor_dir: Path = VENDOR_DIR) -> list[str]:
    """Every file under the vendor directory but its inputs and manifest, as posix paths."""
    return sorted(
        path.relative_to(vendor_dir).as_posix()
        for path in vendor_dir.rglob("*")
        if path.is_file() and path.relative_to(vendor_dir).as_posix() not in NOT_VENDORED
    )


def file_digests(vendor_dir: Path, paths: Iterable[str]) -> dict[str, str | None]:
    return {
        path: sha256_of(vendor_dir / path) if (vendor_dir / path).is_file() else None
        for path in paths
    }


def check_vendor(vendor_dir: Path = VENDOR_DIR) -> list[str]:
    """The problems of the committed vendor directory ([] if none), without npm."""
    manifest = read_manifest(vendor_dir)
    listed = [file.path for package in manifest for file in package.files]
    return problems(
        manifest,
        file_digests(vendor_dir, listed),
        present_files(vendor_dir),
        locked_versions(vendor_dir),
    )


# --- syncing from npm ----------------------------------------------------------------------


def _npm_ci(workdir: Path) -> Path:
    npm = shutil.which("npm")
    if npm is None:
        raise InfrastructureError(
            "npm is not on PATH: vendoring needs Node.js and npm (the --check does not)"
        )
    result = subprocess.run(
        [npm, *NPM_CI], cwd=workdir, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-20:])
        raise InfrastructureError(f"`npm {' '.join(NPM_CI)}` failed ({result.returncode}):\n{tail}")
    return workdir / "node_modules"


def _license_file(package_dir: Path, name: str) -> str:
    for candidate in LICENSE_NAMES:
        if (package_dir / candidate).is_file():
            return candidate
    raise InfrastructureError(f"{name} ships none of {', '.join(LICENSE_NAMES)}")


def _stage(
    node_modules: Path, package: VendoredPackage, locked: Mapping[str, str], out: Path
) -> PackageRecord:
    package_dir = node_modules / package.name
    meta = json.loads((package_dir / "package.json").read_text(encoding="utf-8"))
    version, spdx = meta.get("version"), meta.get("license")
    if not isinstance(version, str) or version != locked.get(package.name):
        raise InfrastructureError(
            f"npm installed {package.name} {version}, package-lock.json pins "
            f"{locked.get(package.name)}"
        )
    if not isinstance(spdx, str):
        raise ConfigError(f"{package.name} {version}: package.json has no SPDX 'license'")
    files: list[VendoredFile] = []
    for path in (*package.files, _license_file(package_dir, package.name)):
        source = package_dir / path
        if not source.is_file():
            raise InfrastructureError(
                f"{package.name} {version} ships no {path}: update PACKAGES in "
                "console/web/vendor_sync.py"
            )
        target = out / package.name / path
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        files.append(
            VendoredFile(
                path=f"{package.name}/{path}", sha256=sha256_of(target), size=target.stat().st_size
            )
        )
    return PackageRecord(name=package.name, version=version, license=spdx, files=tuple(files))


def sync(vendor_dir: Path = VENDOR_DIR, packages: Iterable[VendoredPackage] = PACKAGES) -> Manifest:
    """Install the locked packages with npm and replace the vendored files with theirs."""
    locked = locked_versions(vendor_dir)
    with tempfile.TemporaryDirectory(prefix="citypost-vendor-") as tmp:
        work, out = Path(tmp) / "npm", Path(tmp) / "out"
        work.mkdir()
        for name in ("package.json", "package-lock.json"):
            shutil.copyfile(vendor_dir / name, work / name)
        node_modules = _npm_ci(work)
        manifest = tuple(_stage(node_modules, package, locked, out) for package in packages)
        # Everything is staged: only now replace what is committed.
        for child in vendor_dir.iterdir():
            if child.name in NOT_VENDORED:
                continue
            if child.is_dir():
                shutil.rmtree(child)
            else:
                child.unlink()
        for staged in out.iterdir():
            shutil.copytree(staged, vendor_dir / staged.name)
    (vendor_dir / MANIFEST_NAME).write_text(manifest_to_json(manifest), encoding="utf-8")
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--check",
        action="store_true",
        help="verify the committed files against MANIFEST.json and package-lock.json (no npm)",
    )
    args = parser.parse_args(argv)
    try:
        if args.check:
            found = check_vendor()
            if found:
                print(f"{VENDOR_DIR}: vendored files do not match MANIFEST.json:", file=sys.stderr)
                for problem in found:
                    print(f"  {problem}", file=sys.stderr)
                print("run `make vendor` (or restore the files)", file=sys.stderr)
                return 1
            manifest = read_manifest()
            count = sum(len(package.files) for package in manifest)
            print(f"vendor: {count} files of {len(manifest)} packages match MANIFEST.json")
            return 0
        manifest = sync()
    except CitypostError as exc:
        print(f"vendor: {exc.message}", file=sys.stderr)
        return 1
    total = 0
    for package in manifest:
        print(f"{package.name} {package.version} ({package.license})")
        for file in package.files:
            print(f"  {file.path:60} {file.size:>10,} B")
            total += file.size
    print(f"vendor: wrote {sum(len(p.files) for p in manifest)} files, {total:,} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())

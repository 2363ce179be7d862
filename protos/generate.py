"""Regenerate (or, with --check, verify) the committed protobuf code.

Run from the project root: `python -m protos.generate [--check]`. Protos are
compiled with the project root on the include path, so generated modules
import each other as `protos.citypost.v1.<name>_pb2`.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "protos" / "citypost" / "v1"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")


def _compile(out_dir: Path) -> None:
    from grpc_tools import protoc  # dev dependency, imported only here

    include = Path(protoc.__file__).parent / "_proto"
    sources = sorted(str(p.relative_to(ROOT)) for p in PROTO_DIR.glob("*.proto"))
    bin_dir = Path(sys.executable).parent  # the venv's plugins, whatever PATH says
    args = [
        "protoc",
        f"--plugin=protoc-gen-mypy={bin_dir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={bin_dir / 'protoc-gen-mypy_grpc'}",
        f"-I{ROOT}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--mypy_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--mypy_grpc_out={out_dir}",
        *sources,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")


def _generated(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(GENERATED_SUFFIXES))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if committed code is stale")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        _compile(out)
        fresh_dir = out / "protos" / "citypost" / "v1"
        fresh = _generated(fresh_dir)
        if args.check:
            committed = _generated(PROTO_DIR)
            stale = sorted(set(fresh) ^ set(committed)) + [
                name
                for name in fresh
                if name in committed
                and not filecmp.cmp(fresh_dir / name, PROTO_DIR / name, shallow=False)
            ]
            if stale:
                print("generated protobuf code is stale: run `make protos`", file=sys.stderr)
                for name in stale:
                    print(f"  {name}", file=sys.stderr)
                return 1
            print(f"protos: {len(fresh)} generated files up to date")
            return 0
        for name in _generated(PROTO_DIR):
            (PROTO_DIR / name).unlink()
        for name in fresh:
            shutil.copyfile(fresh_dir / name, PROTO_DIR / name)
        print(f"protos: wrote {len(fresh)} files")
    return 0


if __name__ == "__main__":
    sys.exit(main())

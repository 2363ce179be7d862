"""The top level is the architecture: the import rules between folders (DESIGN.md, Layout).

Every import of every module is read (also those inside functions), so a rule
cannot be dodged by importing late. A new top-level package must be placed in
`FOLDERS` before this test passes, which is the moment to decide what it may
import.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]

GROUND = {"protos", "citypost"}
# Security sits on the ground: every component may use it, it uses none of them.
SECURITY = {"security"}
LOWER = {"actors", "bridges", "failover", "fleet"}
APPLICATION = {"post", "api", "chaos", "console", "cluster"}
TOOLING = {"tests", "bench"}  # they exercise the application; nothing of it imports them
FOLDERS = GROUND | SECURITY | LOWER | APPLICATION | TOOLING

# folder -> folders it must never import
FORBIDDEN: Mapping[str, set[str]] = {
    "protos": FOLDERS - {"protos"},
    "citypost": FOLDERS - {"citypost", "protos"},
    "security": FOLDERS - {"security", "citypost", "protos"},
    **{folder: {"cluster", "post", "api"} | TOOLING for folder in LOWER},
    "post": {"api", "cluster"} | TOOLING,
    "api": {"cluster"} | TOOLING,
    "chaos": {"cluster"} | TOOLING,
    "console": {"cluster"} | TOOLING,
    "cluster": TOOLING,
    "bench": {"tests"},
}

Graph = dict[str, dict[str, list[str]]]  # folder -> imported folder -> where ("file:line")


def imported_modules(tree: ast.AST, package: str) -> Iterable[tuple[str, int]]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            # A relative import stays in its own folder; the project uses absolute ones.
            yield (node.module or "" if node.level == 0 else package), node.lineno


def folder_graph(root: Path, folders: Iterable[str]) -> Graph:
    known = set(folders)
    graph: Graph = {folder: defaultdict(list) for folder in known}
    for folder in known:
        for path in sorted((root / folder).rglob("*.py")):
            if path.name.endswith(("_pb2.py", "_pb2_grpc.py")):
                continue  # generated: imports only protos and grpc
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            for module, line in imported_modules(tree, folder):
                top = module.split(".")[0]
                if top in known and top != folder:
                    graph[folder][top].append(f"{path.relative_to(root)}:{line}")
    return graph


def folder_cycle(graph: Mapping[str, Mapping[str, list[str]]]) -> list[str] | None:
    """One cycle between folders as a path (first == last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, {})):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)) is not None:
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)) is not None:
            return found
    return None


def broken_rules(graph: Graph) -> list[str]:
    return [
        f"{folder}/ imports {target}/ at {', '.join(graph[folder][target])}"
        for folder, targets in sorted(FORBIDDEN.items())
        for target in sorted(targets & set(graph.get(folder, {})))
    ]


@pytest.fixture(scope="module")
def graph() -> Graph:
    return folder_graph(ROOT, FOLDERS)


def test_every_top_level_package_has_a_place_in_the_layout() -> None:
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")}
    assert packages == FOLDERS, (
        f"new: {sorted(packages - FOLDERS)}, gone: {sorted(FOLDERS - packages)}; "
        "place it in DESIGN.md's layout and in this test"
    )


def test_no_folder_imports_what_the_layout_forbids(graph: Graph) -> None:
    assert broken_rules(graph) == []


def test_no_import_cycle_between_folders(graph: Graph) -> None:
    assert folder_cycle(graph) is None


def test_only_the_tooling_imports_cluster(graph: Graph) -> None:
    importers = {folder for folder, targets in graph.items() if "cluster" in targets}
    assert importers <= TOOLING


# --- the checker itself finds what it must -------------------------------------------------


def _write(root: Path, files: Mapping[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def test_an_import_inside_a_function_is_seen(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "bridges/__init__.py": "",
            "bridges/edge.py": "def late():\n    from cluster.system import CitySystem\n",
            "cluster/__init__.py": "",
            "cluster/system.py": "import bridges.edge\n",
        },
    )
    graph = folder_graph(tmp_path, ["bridges", "cluster"])
    assert graph["bridges"]["cluster"] == ["bridges/edge.py:2"]
    assert broken_rules(graph) == ["bridges/ imports cluster/ at bridges/edge.py:2"]
    assert folder_cycle(graph) == ["bridges", "cluster", "bridges"]


def test_a_chain_of_three_folders_is_a_cycle(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "actors/__init__.py": "from fleet import dijon\n",
            "fleet/__init__.py": "",
            "fleet/dijon.py": "from console.render import TableData\n",
            "console/__init__.py": "",
            "console/render.py": "import actors\n",
        },
    )
    graph = folder_graph(tmp_path, ["actors", "fleet", "console"])
    assert folder_cycle(graph) == ["actors", "fleet", "console", "actors"]


def test_relative_and_generated_imports_stay_home(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "post/__init__.py": "",
            "post/ledger.py": "from . import audit\nfrom .audit import x\n",
            "protos/__init__.py": "",
            "protos/a_pb2_grpc.py": "from post import ledger\n",
        },
    )
    graph = folder_graph(tmp_path, ["post", "protos"])
    assert folder_cycle(graph) is None
    assert broken_rules(graph) == []

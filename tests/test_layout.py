"""The package's layout: every module imports, no import cycle, and stages depend one way.

Imports inside functions count too: a lazy import is still a dependency, and the one cycle
this test was written for (labeller -> server -> labeller) went through a lazy import.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

from tests.conftest import REPO

PACKAGE = REPO / "al_pipeline"
# Lower stages never import higher ones. Shared modules at the top level sit at 0.
STAGES = {
    "store": 1,
    "records": 1,
    "ingest": 2,
    "model": 3,
    "selection": 4,
    "labelling": 5,
    "loop": 6,
    "reporting": 7,
    "views": 8,  # the CLI's rendering: above every stage
}


def modules() -> list[str]:
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def imports_of(name: str) -> set[str]:
    """The al_pipeline modules ``name`` imports, anywhere in its file."""
    path = REPO / (name.replace(".", "/") + ".py")
    if not path.is_file():
        path = REPO / name.replace(".", "/") / "__init__.py"
    known = set(modules())
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            continue
        found |= {t for t in targets if t in known and t != name}
    return {t for t in found if t.startswith("al_pipeline.")}


def stage(name: str) -> int:
    parts = name.split(".")
    return STAGES.get(parts[1], 0) if len(parts) > 1 else 0


@pytest.mark.parametrize("name", modules())
def test_every_module_imports(name: str) -> None:
    importlib.import_module(name)


def test_no_import_cycle() -> None:
    graph = {name: imports_of(name) for name in modules()}
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> None:
        if name in path:
            cycle = [*path[path.index(name) :], name]
            raise AssertionError("import cycle: " + " -> ".join(cycle))
        if name in done:
            return
        for target in sorted(graph[name]):
            visit(target, [*path, name])
        done.add(name)

    for name in graph:
        visit(name, [])


def test_stages_depend_one_way() -> None:
    upward = {
        (name, target)
        for name in modules()
        for target in imports_of(name)
        if stage(target) > stage(name)
    }
    assert upward == set(), "a lower stage imports a higher one"


def test_nothing_prints_outside_the_cli_and_its_views() -> None:
    """Library code returns records; only cli.py and views.py write to the terminal."""
    printing = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "views.py":
            continue
        source = path.read_text(encoding="utf-8")
        for node in ast.walk(ast.parse(source)):
            name = getattr(node.func, "id", None) if isinstance(node, ast.Call) else None
            if name == "print" or (
                isinstance(node, ast.Import | ast.ImportFrom) and _terminal(node)
            ):
                printing.append(f"{path.relative_to(REPO)}:{getattr(node, 'lineno', '?')}")
    assert printing == []


def _terminal(node: ast.Import | ast.ImportFrom) -> bool:
    names = (
        [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
    )
    return any(n == "rich" or n.startswith("rich.") or n in ("typer", "click") for n in names)


def test_only_views_and_the_cli_import_views() -> None:
    users = [name for name in modules() if "al_pipeline.views" in imports_of(name)]
    assert users == []


def test_cli_commands_are_short() -> None:
    """Each command resolves the workspace, calls one library function and renders."""
    tree = ast.parse((REPO / "cli.py").read_text(encoding="utf-8"))
    long = {}
    for node in tree.body:
        decorated = any("command" in ast.unparse(d) for d in getattr(node, "decorator_list", []))
        if isinstance(node, ast.FunctionDef) and decorated:
            body = node.body[1:] if ast.get_docstring(node) else node.body
            lines = (node.end_lineno or 0) - body[0].lineno + 1
            if lines > 15:
                long[node.name] = lines
    assert long == {}


def test_package_folders_are_packages() -> None:
    folders = {p.parent for p in PACKAGE.rglob("*.py")}
    assert all((folder / "__init__.py").is_file() for folder in folders)
    assert Path(PACKAGE / "__init__.py").is_file()


def test_tests_mirror_the_package() -> None:
    """A module's tests sit in the folder of its stage (tests/model/ for al_pipeline/model/)."""
    for test_file in (REPO / "tests").rglob("test_*.py"):
        folder = test_file.parent.relative_to(REPO / "tests")
        assert (PACKAGE / folder).is_dir(), f"{test_file}: no al_pipeline/{folder}"
        assert (test_file.parent / "__init__.py").is_file(), f"{folder} lacks __init__.py"

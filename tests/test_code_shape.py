"""The shape the code keeps (issue 14), read from the source with `ast`: no import cycle between our
modules, and imports that only point the right way (messenger -> shared, worker -> shared; the
messenger reaches the worker only through its embedded entry); no function longer than a screen;
and the README's Development layout names files that exist, with the path of one request in at most six."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("shared", "worker", "messenger")
MAX_FUNCTION_LINES = 80  # about a screen: a longer function does two jobs
EMBEDDED_ENTRY = "messenger.runtime"  # the one messenger module that may start a worker (lazily)


def _modules() -> dict[str, ast.Module]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            found[name] = ast.parse(path.read_text(), filename=str(path))
    return found


MODULES = _modules()


def _imported(node: ast.AST) -> list[str]:
    if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        return [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    return []


def _top_level_imports(tree: ast.Module) -> set[str]:
    """What importing the module imports at once (not inside functions or `if TYPE_CHECKING:`)."""
    names: set[str] = set()
    for node in tree.body:
        names.update(_imported(node))
        if isinstance(node, ast.Try):
            for inner in node.body:
                names.update(_imported(inner))
    return {n for n in names if n in MODULES}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while (w := stack.pop()) != v:
                component.append(w)
            if component:
                found.append(sorted([v, *component]))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle_between_our_modules():
    graph = {name: _top_level_imports(tree) - {name} for name, tree in MODULES.items()}
    assert _cycles(graph) == []


def test_the_cycle_check_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [("shared", ("messenger", "worker")), ("worker", ("messenger",)), ("messenger", ("worker",))],
)
def test_imports_point_only_the_right_way(package, forbidden):
    wrong = [
        f"{name} imports {target}"
        for name, tree in MODULES.items()
        if name.split(".")[0] == package and name != EMBEDDED_ENTRY
        for node in ast.walk(tree)
        for target in _imported(node)
        if target.split(".")[0] in forbidden
    ]
    assert wrong == []


def test_the_embedded_entry_imports_the_worker_only_inside_a_function():
    tree = MODULES[EMBEDDED_ENTRY]
    at_import = [t for node in tree.body for t in _imported(node) if t.split(".")[0] == "worker"]
    anywhere = [t for node in ast.walk(tree) for t in _imported(node) if t.split(".")[0] == "worker"]
    assert at_import == [] and anywhere  # if the entry moves, move EMBEDDED_ENTRY with it


def _development_blocks() -> list[str]:
    section = (ROOT / "README.md").read_text().split("\n## Development\n", 1)[1].split("\n## ", 1)[0]
    return section.split("```\n")[1::2]


def test_the_readme_request_path_is_six_files_that_exist():
    path = [line.split()[0] for line in _development_blocks()[0].splitlines()]
    assert len(path) <= 6
    assert [p for p in path if not (ROOT / p).exists()] == []


def test_every_file_the_readme_layout_names_exists():
    missing = []
    folder = ""
    for line in _development_blocks()[1].splitlines():
        if not line.startswith(" "):
            folder = line.split()[0]
        for name in re.findall(r"\b[\w.]+\.py\b", line):
            if not (ROOT / folder / name).exists():
                missing.append(f"{folder}{name}")
    assert missing == []


def test_no_function_is_longer_than_a_screen():
    long = [
        f"{name}:{node.lineno} {node.name} ({lines} lines)"
        for name, tree in MODULES.items()
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and (lines := node.end_lineno - min([node.lineno, *(d.lineno for d in node.decorator_list)]) + 1)
        > MAX_FUNCTION_LINES
    ]
    assert long == []

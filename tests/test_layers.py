"""The package's import graph, read from the source with ``ast``: no cycles, and imports point down the layers.

Every ``import`` and ``from ... import`` counts wherever it stands: at module level, inside a function, or under
``if TYPE_CHECKING:`` (a type-only cycle still ties two modules together). ``from pkg import name`` is an edge to
``pkg.name`` when that is a module, else to ``pkg``. Importing ``a.b.c`` runs ``a`` and ``a.b`` first, but that
implicit import of a parent package is not an edge, so ``proxynas/__init__.py`` may re-export the whole API.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE_DIR = Path(__file__).resolve().parent.parent / "proxynas"

# Lowest first: a module may import from its own layer or a lower one.
LAYERS = ("root", "runtime", "core", "nas", "analysis", "cli")
ROOT_MODULES = {"proxynas", "proxynas.version", "proxynas.exceptions", "proxynas.__main__"}
TOP = {"proxynas", "proxynas.__main__"}  # the package root and ``python -m proxynas`` stand above everything


def module_files(package_dir: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` file under ``package_dir`` (a package is its ``__init__``)."""
    modules = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = (package_dir.name, *path.relative_to(package_dir).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def import_graph(package_dir: Path) -> dict[str, set[str]]:
    """Module -> the modules of the same package it imports (see the module docstring for what counts)."""
    modules = module_files(package_dir)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: drop one package per dot beyond the first
                    anchor = name.split(".") if is_package else name.split(".")[:-1]
                    anchor = anchor[: len(anchor) - (node.level - 1)]
                    base = ".".join([*anchor, *([base] if base else [])])
                for alias in node.names:
                    submodule = f"{base}.{alias.name}"
                    targets.add(submodule if submodule in modules else base)
        graph[name] = {target for target in targets if target in modules and target != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a path whose last module is its first, or None."""
    done: set[str] = set()
    for start in sorted(graph):
        if start in done:
            continue
        path = [start]
        on_path = {start}
        branches = [iter(sorted(graph[start]))]
        while branches:
            step = next(branches[-1], None)
            if step is None:  # every import of path[-1] explored: it lies on no cycle
                finished = path.pop()
                on_path.discard(finished)
                done.add(finished)
                branches.pop()
            elif step in on_path:
                return [*path[path.index(step) :], step]
            elif step not in done:
                path.append(step)
                on_path.add(step)
                branches.append(iter(sorted(graph[step])))
    return None


def layer(module: str) -> int:
    if module in ROOT_MODULES:
        return 0
    return LAYERS.index(module.split(".")[1])


def upward_edges(graph: dict[str, set[str]]) -> list[str]:
    return [
        f"{source} ({LAYERS[layer(source)]}) imports {target} ({LAYERS[layer(target)]})"
        for source in sorted(graph)
        if source not in TOP
        for target in sorted(graph[source])
        if layer(target) > layer(source)
    ]


def test_every_module_belongs_to_a_layer():
    strays = [m for m in module_files(PACKAGE_DIR) if m not in ROOT_MODULES and m.split(".")[1] not in LAYERS]
    assert not strays, f"modules outside every layer (add them to one, or a layer to LAYERS): {strays}"


def test_the_package_has_no_import_cycle():
    cycle = find_cycle(import_graph(PACKAGE_DIR))
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_imports_point_down_the_layers():
    edges = upward_edges(import_graph(PACKAGE_DIR))
    assert not edges, "imports from a higher layer (" + " < ".join(LAYERS) + "):\n" + "\n".join(edges)


def private_imports(package_dir: Path) -> list[str]:
    """Each ``from module import _name`` of a name private to another module (a package importing its own
    private submodules, as ``core/condense`` registers its methods, is its own business)."""
    modules = module_files(package_dir)
    found = []
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom) or not node.module or node.module.split(".")[0] != package_dir.name:
                continue
            for alias in node.names:
                private = alias.name.startswith("_") and not alias.name.startswith("__")
                if private and f"{node.module}.{alias.name}" not in modules:
                    found.append(f"{name} imports {node.module}.{alias.name}")
    return found


def test_no_module_imports_another_module_s_private_name():
    assert not private_imports(PACKAGE_DIR), "make these public, or keep them where they are used"


def test_every_type_ignore_says_why():
    bare = [
        f"{path.relative_to(PACKAGE_DIR.parent)}:{number}"
        for path in sorted(PACKAGE_DIR.rglob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if "# type: ignore" in line and "#" not in line.split("# type: ignore", 1)[1]
    ]
    assert not bare, f"a '# type: ignore' needs its reason on the line, after another '#': {bare}"


def _write(root: Path, files: dict[str, str]) -> Path:
    for relative, text in files.items():
        path = root / "pkg" / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "pkg"


def test_the_graph_counts_type_only_function_level_and_relative_imports(tmp_path):
    pkg = _write(
        tmp_path,
        {
            "__init__.py": "from pkg.low import helper\n",
            "low/__init__.py": "",
            "low/helper.py": (
                "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.high.view import View\n"
            ),
            "low/other.py": "def f():\n    from . import helper\n    import pkg.high.view\n",
            "high/__init__.py": "from .view import View\nfrom ..low import other as _other\n",
            "high/view.py": "import os\nfrom pkg.low.helper import thing\nclass View: ...\n",
        },
    )
    assert import_graph(pkg) == {
        "pkg": {"pkg.low.helper"},
        "pkg.low": set(),
        "pkg.low.helper": {"pkg.high.view"},
        "pkg.low.other": {"pkg.low.helper", "pkg.high.view"},
        "pkg.high": {"pkg.high.view", "pkg.low.other"},
        "pkg.high.view": {"pkg.low.helper"},
    }
    assert find_cycle(import_graph(pkg)) == ["pkg.low.helper", "pkg.high.view", "pkg.low.helper"]


@pytest.mark.parametrize(
    ("graph", "cycle"),
    [
        ({"a": {"b"}, "b": {"c"}, "c": set()}, None),
        ({"a": {"b", "c"}, "b": {"d"}, "c": {"d"}, "d": set()}, None),  # a diamond is no cycle
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, ["a", "b", "c", "a"]),
        ({"a": {"b"}, "b": {"c"}, "c": {"b"}}, ["b", "c", "b"]),
    ],
)
def test_find_cycle(graph, cycle):
    assert find_cycle(graph) == cycle


def test_an_upward_edge_is_named_and_the_top_is_exempt():
    graph = {
        "proxynas": {"proxynas.cli"},
        "proxynas.core.train": {"proxynas.runtime.seeding", "proxynas.nas.study"},
        "proxynas.runtime.seeding": {"proxynas.exceptions"},
        "proxynas.nas.study": set(),
        "proxynas.cli": set(),
        "proxynas.exceptions": set(),
    }
    assert upward_edges(graph) == ["proxynas.core.train (core) imports proxynas.nas.study (nas)"]

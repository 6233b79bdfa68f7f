"""The package's shape: one installed name (`dsbench`), and an import graph with no cycle.

import-linter (`lint-imports`, run by CI) checks the layer contracts in pyproject.toml; this test checks what
it does not: every import of `harness/` and `methods/`, function-level ones included, forms no cycle, and a
built wheel installs `dsbench` alone.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"dsbench": ROOT / "harness", "dsbench.methods": ROOT / "methods"}


def _modules() -> dict[str, Path]:
    """Installed module name → source file, through pyproject's package-dir mapping."""
    modules = {}
    for package, folder in FOLDERS.items():
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            if package == "dsbench" and parts[0] == "methods":  # a symlink some checkouts keep: not ours
                continue
            name = ".".join((package, *parts))
            modules[name.removesuffix(".__init__")] = path
    return modules


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project's modules ``name`` imports anywhere in its file (a package import counts when a name
    imported from it is not itself a module)."""
    found = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{alias.name}" for alias in node.names]
            if not all(t in modules for t in targets):
                targets.append(base)
        else:
            continue
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_import_graph_has_no_cycle():
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    assert "dsbench.core" in graph and "dsbench.methods.toca" in graph
    assert "dsbench.core" in graph["dsbench.engine"]  # the graph sees imports at all
    cycle = _cycle(graph)
    assert cycle is None, "import cycle: " + " → ".join(cycle)


def test_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_pyproject_lists_every_package():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert config["package-dir"] == {name: folder.name for name, folder in FOLDERS.items()}
    packages = {name for name, path in _modules().items() if path.name == "__init__.py"}
    assert sorted(config["packages"]) == sorted(packages)


def test_tests_import_the_installed_names_only():
    """`harness` and `methods` are folders, not importable names: a stray `import methods` would load a second
    copy of every module (two method registries)."""
    loaded = [name for name in sys.modules if name.split(".")[0] in ("harness", "methods")]
    assert loaded == []


def test_wheel_installs_dsbench_alone(tmp_path):
    """Built from a copy of the sources (a checkout's build/ folder may hold an older layout)."""
    source = tmp_path / "src"
    for name in ("harness", "methods"):
        shutil.copytree(ROOT / name, source / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(source),
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
        ],
        check=True,
        cwd=tmp_path,
    )
    (wheel,) = tmp_path.glob("dsbench-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert tops == {"dsbench"}
    assert "dsbench/methods/toca.py" in names and "dsbench/core.py" in names
    assert any(name.startswith("dsbench/models/embedded/weights/mnist-dit/") for name in names)

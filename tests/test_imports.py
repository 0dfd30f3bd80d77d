"""The import graph of pyg_transformer: no cycle, and every module imports on its own."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "pyg_transformer"


def package_modules() -> dict[str, Path]:
    """Module name -> file of every module of the package."""
    modules = {}
    for path in sorted((ROOT / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def parse(path: Path) -> ast.Module:
    with warnings.catch_warnings():  # invalid escapes in docstrings are not our test
        warnings.simplefilter("ignore")
        return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The longest package module ``name`` is or lies in."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> tuple[set[str], set[str]]:
    """``(package modules, top-level third-party packages)`` that ``module`` imports,
    anywhere in the file (function-level imports too)."""
    is_package = path.name == "__init__.py"
    own, external = set(), set()
    for node in ast.walk(parse(path)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[:len(base) - node.level + is_package]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            full = [f"{source}.{alias.name}" for alias in node.names]
            names = [n for n in full if n in modules]
            if len(names) < len(full):  # names defined in ``source`` itself
                names.append(source)
        else:
            continue
        for name in names:
            if name.split(".")[0] == PACKAGE:
                target = _resolve(name, modules)
                if target is not None and target != module:
                    own.add(target)
            elif name:
                external.add(name.split(".")[0])
    return own, external


def import_graph() -> dict[str, set[str]]:
    modules = package_modules()
    return {name: imports_of(name, path, modules)[0] for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as ``[a, b, ..., a]``, or ``None``."""
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def dependency_order(graph: dict[str, set[str]]) -> list[str]:
    """The modules, each after every module it imports (leaves first)."""
    order: list[str] = []
    done: set[str] = set()

    def visit(node: str) -> None:
        done.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in done:
                visit(nxt)
        order.append(node)

    for node in sorted(graph):
        if node not in done:
            visit(node)
    return order


def test_find_cycle_reports_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_import_graph_resolves_function_level_and_relative_imports(tmp_path):
    modules = {"pyg_transformer": tmp_path / "__init__.py", "pyg_transformer.a": tmp_path / "a.py",
               "pyg_transformer.b": tmp_path / "b.py"}
    modules["pyg_transformer.a"].write_text(
        "import torch\ndef f():\n    from . import b\n    from pyg_transformer.b import x\n")
    own, external = imports_of("pyg_transformer.a", modules["pyg_transformer.a"], modules)
    assert own == {"pyg_transformer.b"} and external == {"torch"}


def test_import_graph_has_no_cycle():
    graph = import_graph()
    assert len(graph) > 20 and "pyg_transformer.compat" in graph
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_sparse_gin_import_order():
    """options -> config -> layer -> model -> registration, no back-edge."""
    graph = import_graph()
    chain = ["pyg_transformer.options"] + [f"pyg_transformer.adapters.sparse_gin.{m}" for m in
                                           ("config", "layer", "model", "registration")]
    for i, module in enumerate(chain):
        later = set(chain[i + 1:])
        assert not graph[module] & later, f"{module} imports {sorted(graph[module] & later)}"


#: run in one fresh interpreter: load the third-party packages once, then import each
#: package module in a forked child that has imported no pyg_transformer module before
CHILD = textwrap.dedent("""
    import importlib, json, os, sys, traceback
    order, external = json.loads(sys.argv[1]), json.loads(sys.argv[2])
    for name in external:
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    assert not any(m.split(".")[0] == "pyg_transformer" for m in sys.modules)
    failures = {}
    for module in order:
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read)
            try:
                importlib.import_module(module)
                message = ""
            except BaseException:
                message = traceback.format_exc(limit=-3)
            os.write(write, message.encode())
            os._exit(0)
        os.close(write)
        with os.fdopen(read, "rb") as handle:
            message = handle.read().decode()
        _, status = os.waitpid(pid, 0)
        if message or status:
            failures[module] = message or f"exit status {status}"
    print(json.dumps(failures))
""")


def test_every_module_imports_on_its_own():
    """Each module, in dependency order, imports in a process where no other module of
    the package was imported before (a fork of one fresh interpreter that loaded only the
    third-party packages)."""
    modules = package_modules()
    graph = {name: imports_of(name, path, modules)[0] for name, path in modules.items()}
    external = sorted(set().union(*(imports_of(n, p, modules)[1] for n, p in modules.items()))
                      - set(sys.builtin_module_names))
    # ``__main__`` runs the command line when imported
    order = [m for m in dependency_order(graph) if not m.endswith(".__main__")]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               HF_HUB_OFFLINE="1")
    result = subprocess.run([sys.executable, "-c", CHILD, json.dumps(order), json.dumps(external)],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    failures = json.loads(result.stdout.strip().splitlines()[-1])
    assert not failures, "\n".join(f"{m}:\n{tb}" for m, tb in failures.items())

"""Imports point down the layers, and no two modules import each other around a cycle.

Layers, bottom to top; a module may import its own layer and the layers below it::

    shared  errors, labels, safe_yaml, validation, run_record, figures: types and rules every layer uses
    tasks   instance generators
    data    tokenizer, corpus, stream, held-out eval sets
    model   the model ladder
    eval    evaluator, emergence, run reports
    train   trainer, callbacks, plan, and config.RunConfig composing every layer's config section
    sweep   grids, runner, sweep reports
    toy     the linear-mixture toy and its theory (imports only the shared layer; only top imports it)
    top     cli, demo, task views

Every ``import`` counts for the layers, wherever it is written (a function-level import is still a
dependency); cycles are looked for among the imports that run when a module is imported.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import smalllm

ROOT = Path(smalllm.__file__).parent
LAYERS = ["shared", "tasks", "data", "model", "eval", "train", "sweep", "toy", "top"]
TOP_LEVEL = {
    "smalllm": "shared",
    "smalllm.errors": "shared",
    "smalllm.labels": "shared",
    "smalllm.safe_yaml": "shared",
    "smalllm.validation": "shared",
    "smalllm.run_record": "shared",
    "smalllm.checkpoints": "shared",
    "smalllm.figures": "shared",
    # The RunConfig that composes every section sits above the layers whose sections it imports;
    # the sections themselves live in their layers (smalllm.data.config, smalllm.train.config, …).
    "smalllm.config": "train",
    "smalllm.cli": "top",
    "smalllm.hub": "top",
    "smalllm.api": "top",
    "smalllm.demo": "top",
    "smalllm.task_display": "top",
}
"""Modules directly under ``smalllm/``; a subpackage ``smalllm.X`` is layer X."""

KNOWN_VIOLATIONS: set[tuple[str, str]] = set()
"""Upward edges (importer, imported) that other open changes remove; empty it after they land."""


def all_modules() -> dict[str, Path]:
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


MODULES = all_modules()


def layer_of(module: str) -> str:
    package = ".".join(module.split(".")[:2])
    if package.split(".")[-1] in LAYERS:
        return package.split(".")[-1]
    assert package in TOP_LEVEL, f"{module}: not in the layer map of {__file__}; add it to TOP_LEVEL"
    return TOP_LEVEL[package]


def _resolve(name: str) -> str | None:
    """The smalllm module an imported dotted name lives in (a name may be an attribute of one)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(module: str) -> list[tuple[str, int, bool]]:
    """(imported smalllm module, line, runs at import time) for every import statement of ``module``."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[tuple[str, int, bool]] = []

    def visit(node: ast.AST, at_import: bool) -> None:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            at_import = False
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            at_import = False
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            names = [f"{base}.{alias.name}" for alias in node.names]
        for name in names:
            target = _resolve(name) if name.split(".")[0] == "smalllm" else None
            if target is not None and target != module:
                found.append((target, node.lineno, at_import))
        for child in ast.iter_child_nodes(node):
            visit(child, at_import)

    visit(ast.parse(path.read_text(), str(path)), True)
    return found


def test_every_module_has_a_layer():
    for module in MODULES:
        assert layer_of(module) in LAYERS


def test_imports_point_down():
    upward = {}
    for module in MODULES:
        for target, line, _ in imports_of(module):
            if LAYERS.index(layer_of(target)) > LAYERS.index(layer_of(module)):
                upward[(module, target)] = (
                    f"{MODULES[module].relative_to(ROOT.parent)}:{line}: {module} ({layer_of(module)}) "
                    f"imports {target} ({layer_of(target)})"
                )
    new = [where for edge, where in sorted(upward.items()) if edge not in KNOWN_VIOLATIONS]
    assert not new, "imports from a lower layer to a higher one:\n" + "\n".join(new)
    fixed = KNOWN_VIOLATIONS - set(upward)
    assert not fixed, f"no longer violated, remove from KNOWN_VIOLATIONS: {sorted(fixed)}"


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (as a chain a -> … -> a) through each strongly connected group of modules."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[set[str]] = []

    def connect(v: str) -> None:  # Tarjan's algorithm; the package is small enough to recurse
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = set()
            while True:
                w = stack.pop()
                group.add(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(group)

    for v in sorted(graph):
        if v not in index:
            connect(v)
    cycles = []
    for group in groups:
        start = min(group)
        # Breadth-first inside the group gives the shortest way back to the start.
        paths = {start: [start]}
        frontier = [start]
        cycle = None
        while frontier and cycle is None:
            nxt = []
            for v in frontier:
                for w in sorted(graph[v] & group):
                    if w == start:
                        cycle = [*paths[v], start]
                        break
                    if w not in paths:
                        paths[w] = [*paths[v], w]
                        nxt.append(w)
                if cycle:
                    break
            frontier = nxt
        cycles.append(cycle)
    return cycles


def test_no_import_cycles():
    graph = {m: {t for t, _, at_import in imports_of(m) if at_import} for m in MODULES}
    cycles = import_cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_checker_sees_what_it_should():
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert import_cycles({"a": {"b"}, "b": set()}) == []
    # Function-level imports count for the layers but not for cycles.
    cli = imports_of("smalllm.cli")
    assert ("smalllm.errors", True) in {(t, at) for t, _, at in cli}
    assert ("smalllm.train.trainer", False) in {(t, at) for t, _, at in cli}
    # `from package import module` names the module, `from module import name` the module.
    assert {t for t, _, _ in imports_of("smalllm.tasks.lookup")} == {"smalllm.tasks", "smalllm.tasks.base"}
    assert layer_of("smalllm.eval.report") == "eval" and layer_of("smalllm.cli") == "top"


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the docstring constants of a module, its classes and functions (prose may name files)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def test_only_the_run_record_spells_run_directory_names() -> None:
    """Every file name inside a run directory is spelled once, in ``smalllm.run_record``."""
    from smalllm import run_record as rr

    names = [
        rr.CONFIG_FILE,
        rr.SUMMARY_FILE,
        rr.METRICS_FILE,
        rr.EVAL_SETS_FILE,
        rr.EMERGENCE_FILE,
        rr.EVAL_RESULTS_FILE,
        rr.PROBES_FILE,
        rr.CHECKPOINTS_DIR,
        rr.CHECKPOINT_MANIFEST,
        rr.CHECKPOINT_STATE,
        rr.LOCK_FILE,
        rr.FRONTIER_CSV_FILE,
        rr.FRONTIER_JSON_FILE,
    ]
    spelled = []
    for module, path in MODULES.items():
        if module == "smalllm.run_record":
            continue
        tree = ast.parse(path.read_text())
        docs = _docstrings(tree)
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Constant) and isinstance(node.value, str)) or id(node) in docs:
                continue
            text = node.value
            for name in names:
                # A file name as a whole path component; a directory name ("checkpoints") only beside
                # a slash, since prose may use the word.
                if (
                    text == name
                    or f"/{name}" in text
                    or f"{name}/" in text
                    or "." in name
                    and re.search(rf"(^|[/'\"\s]){re.escape(name)}($|[/'\"\s])", text)
                ):
                    spelled.append(f"{module}:{node.lineno}: {text!r}")
    assert not spelled, "run-directory names spelled outside smalllm.run_record:\n" + "\n".join(spelled)


def test_every_slow_test_name_is_a_test() -> None:
    """The slow tier is a list of names in conftest.py; each must still name a test function."""
    from conftest import SLOW_TESTS

    defined = set()
    for path in Path(__file__).parent.glob("test_*.py"):
        defined |= {
            node.name
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")
        }
    assert not set(SLOW_TESTS) - defined, f"stale names in SLOW_TESTS: {sorted(set(SLOW_TESTS) - defined)}"

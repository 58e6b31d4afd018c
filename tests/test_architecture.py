"""The package's import graph flows one way: each module imports only its own layer or the
layers below it (docs/architecture.md draws the same layers), no two modules import each
other even through others, and the benchmark harness (spadecam.bench) is reached from the
command line only. Every import counts: top-level, inside functions and under TYPE_CHECKING.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "spadecam"

#: The layers, lowest first; a module belongs to the first prefix it matches.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("foundation", ("spadecam._fs", "spadecam._json", "spadecam._moved", "spadecam._progress",
                    "spadecam._runtime", "spadecam._version", "spadecam.exceptions",
                    "spadecam.decision", "spadecam.recipes")),
    ("networks and data", ("spadecam.models", "spadecam.data", "spadecam.precision",
                           "spadecam.fusion", "spadecam.roi", "spadecam.preprocess")),
    ("method steps", ("spadecam.error", "spadecam.cam", "spadecam.knn",
                      "spadecam.feature_error", "spadecam.threshold", "spadecam.metrics",
                      "spadecam.distributed")),
    ("fitting", ("spadecam.inputs", "spadecam.train_config", "spadecam.training",
                 "spadecam.linear_head", "spadecam.defaults", "spadecam.model_schema")),
    ("scoring graph and files", ("spadecam.scoring", "spadecam.io")),
    ("detectors", ("spadecam.detectors",)),
    ("deployment and reports", ("spadecam.deploy", "spadecam.report")),
    ("workflows", ("spadecam.workflow",)),
    ("benchmark harness", ("spadecam.bench",)),
    ("entry points", ("spadecam._cli_parsers", "spadecam.cli", "spadecam.__main__",
                      "spadecam")),
]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
    base = SRC / name.replace(".", "/")
    return base.with_suffix(".py").exists() or (base / "__init__.py").exists()


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """Module -> the spadecam modules it imports (``from pkg import mod`` resolves to the
    module; a name that is not a module to the package that holds it)."""
    graph: dict[str, set[str]] = {}
    for path in sorted(root.rglob("*.py")):
        name = _module_name(path)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.split(".")[0] == "spadecam"}
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    mod = ".".join(base + ([node.module] if node.module else []))
                else:
                    mod = node.module or ""
                if mod.split(".")[0] != "spadecam":
                    continue
                for a in node.names:
                    sub = f"{mod}.{a.name}"
                    deps.add(sub if _is_module(sub) else mod)
        deps.discard(name)
        graph[name] = deps
    return graph


def layer_of(module: str) -> int:
    for i, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes if p != "spadecam"):
            return i
    if module == "spadecam":
        return len(LAYERS) - 1
    raise AssertionError(f"{module} is in no layer of tests/test_architecture.py: add it")


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Each import of a higher layer, as 'importer (layer) -> imported (layer)'."""
    out = []
    for mod, deps in sorted(graph.items()):
        for dep in sorted(deps):
            if layer_of(dep) > layer_of(mod):
                out.append(f"{mod} ({LAYERS[layer_of(mod)][0]}) -> {dep} "
                           f"({LAYERS[layer_of(dep)][0]})")
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_every_module_imports_only_its_layer_or_lower():
    assert upward_imports(import_graph()) == []


def test_no_two_modules_import_each_other():
    assert cycles(import_graph()) == []


def test_the_harness_is_reached_from_the_command_line_only():
    graph = import_graph()
    users = {m for m, deps in graph.items() if any(d.startswith("spadecam.bench") for d in deps)
             and not m.startswith("spadecam.bench")}
    assert users == {"spadecam.cli"}


ARCHITECTURE_MD = SRC.parent / "docs" / "architecture.md"
MODULE_LINES, FUNCTION_LINES = 500, 60


def _listed_modules(text: str) -> dict[str, str]:
    """docs/architecture.md's module list: path (relative to src/spadecam) -> the layer
    heading it is under."""
    listed: dict[str, str] = {}
    layer = ""
    section = text.split("## Layers and modules", 1)[1].split("\n## ", 1)[0]
    for line in section.splitlines():
        heading = re.match(r"### \d+\. (.+)", line)
        if heading:
            layer = heading.group(1).strip()
        elif line.startswith("- `"):
            for path in re.findall(r"`([\w/]+\.py)`", line.split(" — ")[0]):
                listed[path] = layer
    return listed


def test_architecture_md_lists_every_module_under_its_layer():
    listed = _listed_modules(ARCHITECTURE_MD.read_text())
    modules = {str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")}
    assert set(listed) == modules  # none missing, none that no longer exists
    for path, heading in listed.items():
        name = _module_name(PACKAGE / path)
        assert heading.lower() == LAYERS[layer_of(name)][0], path


def _code_lines(lines: list[str], node: ast.AST) -> int:
    """Lines of code of a function: its docstring, comments and blank lines aside."""
    body = getattr(node, "body", [])
    doc: set[int] = set()
    if body and isinstance(body[0], ast.Expr) and isinstance(
            getattr(body[0], "value", None), ast.Constant) and isinstance(body[0].value.value, str):
        doc = set(range(body[0].lineno, body[0].end_lineno + 1))
    return sum(1 for i in range(node.lineno, node.end_lineno + 1)
               if i not in doc and lines[i - 1].strip() and not lines[i - 1].strip().startswith("#"))


def oversized() -> set[str]:
    """Modules over MODULE_LINES lines and functions over FUNCTION_LINES lines of code, as
    'path' and 'path:function'."""
    out = set()
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        lines = text.splitlines()
        rel = str(path.relative_to(PACKAGE))
        if len(lines) > MODULE_LINES:
            out.add(rel)
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and _code_lines(
                    lines, node) > FUNCTION_LINES:
                out.add(f"{rel}:{node.name}")
    return out


def test_every_module_and_function_over_the_size_limits_is_an_exception_with_a_reason():
    text = ARCHITECTURE_MD.read_text()
    block = text.split("<!-- size exceptions: begin -->")[1].split("<!-- size exceptions: end -->")[0]
    exceptions = {}
    for line in block.strip().splitlines():
        m = re.match(r"- `([\w/.:]+)` — (.{20,})$", line)
        assert m, f"an exception needs the form '- `path[:function]` — reason': {line!r}"
        exceptions[m.group(1)] = m.group(2)
    assert oversized() == set(exceptions)  # each one listed, and none that no longer is


def test_the_checks_see_an_upward_import_and_a_cycle():
    graph = {"spadecam.roi": {"spadecam.detectors.spade"}, "spadecam.detectors.spade": set(),
             "spadecam.cam": {"spadecam.error"}, "spadecam.error": {"spadecam.cam"}}
    assert upward_imports(graph) == [
        "spadecam.roi (networks and data) -> spadecam.detectors.spade (detectors)"]
    assert cycles(graph) == [["spadecam.cam", "spadecam.error"]]
    with pytest.raises(AssertionError, match="no layer"):
        layer_of("spadecam.somewhere_new")


def test_lazy_and_type_checking_imports_count(tmp_path):
    pkg = tmp_path / "spadecam"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "roi.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from spadecam import cli\n"
        "def f():\n    from .detectors import spade\n")
    global SRC
    old, SRC = SRC, tmp_path
    try:
        (pkg / "cli.py").write_text("")
        (pkg / "detectors").mkdir()
        (pkg / "detectors" / "__init__.py").write_text("")
        (pkg / "detectors" / "spade.py").write_text("")
        graph = import_graph(pkg)
    finally:
        SRC = old
    assert graph["spadecam.roi"] == {"spadecam.cli", "spadecam.detectors.spade"}


def test_the_moved_module_paths_of_0_1_forward_with_a_warning():
    """spadecam.reproduce / evaluation / figures (0.1) forward to spadecam.bench for one
    release, each name to where it went, with a DeprecationWarning; no code of their own."""
    import importlib
    import sys
    import warnings

    from spadecam._moved import MOVED_MODULES
    from spadecam.bench import configs, protocols, reproduce, tables
    from spadecam.metrics import auroc

    for old in MOVED_MODULES:
        sys.modules.pop(old, None)
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            module = importlib.import_module(old)
        assert any(issubclass(w.category, DeprecationWarning) and old in str(w.message)
                   for w in seen), old
        assert not (PACKAGE / f"{old.split('.')[-1]}.py").exists()  # no file of its own
    old_reproduce = sys.modules["spadecam.reproduce"]
    assert old_reproduce.run_noisy_mnist is reproduce.run_noisy_mnist
    assert old_reproduce.get_recipe is configs.noisy_mnist_benchmark
    assert old_reproduce.TEST_SEED == protocols.TEST_SEED
    assert sys.modules["spadecam.evaluation"].auroc is auroc
    assert sys.modules["spadecam.evaluation"].format_table is tables.format_table
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        _ = module.nothing

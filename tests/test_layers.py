"""The import layers of :mod:`lipbound._layers`: no upward import, no cycle, no probing for modules that ship.

Every ``import`` / ``from ... import`` statement of every module is read with ``ast``: at module level and inside
functions, methods, ``if`` and ``try`` blocks alike. An edge goes to the module named (``from a.b import c`` goes to
``a.b.c`` when that is a module, else to ``a.b``). The implicit import of parent packages is not an edge (as in
import-linter); instead a package ``__init__`` may import, in its body, only modules at or below the package's
lowest layer (except the few listed, with their reason, in ``EAGER_PACKAGE_INITS``).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

import lipbound
from lipbound._layers import COMPAT_ALIASES, EAGER_PACKAGE_INITS, LAYERS, layer_of, rank

ROOT = Path(lipbound.__file__).parent


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    line: int
    module_level: bool  # a statement of the module body (not inside a function or class)


def module_files(root: Path = ROOT) -> dict[str, Path]:
    """``{dotted name: path}`` of every module of the package under ``root``."""
    out = {}
    for p in sorted(root.rglob("*.py")):
        parts = list(p.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def import_edges(sources: dict[str, tuple[str, bool]]) -> list[Edge]:
    """Edges between the modules of ``sources`` (``{name: (source text, is_package)}``), one per imported name."""
    edges = []
    for name, (text, is_pkg) in sources.items():
        tree = ast.parse(text)
        top = {id(s) for s in tree.body}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name.split(".") if is_pkg else name.split(".")[:-1]
                    base = base[: len(base) - node.level + 1]
                    prefix = ".".join(base + ([node.module] if node.module else []))
                else:
                    prefix = node.module or ""
                targets = [f"{prefix}.{a.name}" if f"{prefix}.{a.name}" in sources else prefix for a in node.names]
            else:
                continue
            for t in targets:
                while t and t not in sources:  # an attribute of a module, or a module outside the package
                    t = t.rpartition(".")[0]
                if t and t != name:
                    edges.append(Edge(name, t, node.lineno, id(node) in top))
    return edges


def upward_imports(edges: list[Edge]) -> list[str]:
    """One message per import of a higher layer (or of an unassigned module, or of a compatibility alias)."""
    bad = []
    for e in edges:
        src, dst = layer_of(e.source), layer_of(e.target)
        if e.target in COMPAT_ALIASES:
            bad.append(
                f"{e.source}:{e.line} imports the compatibility alias {e.target}; use {COMPAT_ALIASES[e.target]}"
            )
        elif e.source in COMPAT_ALIASES or src is None or dst is None:
            continue  # aliases may point up; unassigned modules are reported by test_every_module_has_a_layer
        elif rank(dst) > rank(src):
            bad.append(f"{e.source}:{e.line} (layer {src}) imports {e.target} (layer {dst}): an upward import")
    return bad


def cycles(edges: list[Edge]) -> list[list[Edge]]:
    """Every strongly connected component with more than one module, as one cycle of edges through it."""
    graph: dict[str, list[Edge]] = {}
    for e in edges:
        graph.setdefault(e.source, []).append(e)
        graph.setdefault(e.target, [])
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    comps: list[set[str]] = []

    def visit(v: str) -> None:  # Tarjan, iterative enough for this graph's depth
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for e in graph[v]:
            w = e.target
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(comp)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    out = []
    for comp in comps:  # a shortest cycle through the component's smallest module, by breadth-first search
        start = min(comp)
        prev: dict[str, Edge] = {}
        frontier, found = [start], None
        while frontier and found is None:
            nxt = []
            for v in frontier:
                for e in graph[v]:
                    if e.target == start:
                        found = e
                        break
                    if e.target in comp and e.target not in prev:
                        prev[e.target] = e
                        nxt.append(e.target)
                if found:
                    break
            frontier = nxt
        path = [found]
        while path[0].source != start:
            path.insert(0, prev[path[0].source])
        out.append(path)
    return out


def eager_package_imports(edges: list[Edge], names: set[str], packages: set[str]) -> list[str]:
    """Package ``__init__`` bodies that import above the package's lowest layer (Python runs them first)."""
    bad = []
    for pkg in sorted(packages - set(EAGER_PACKAGE_INITS)):
        inside = [m for m in names if m.startswith(pkg + ".") and m not in COMPAT_ALIASES]
        if not inside or layer_of(pkg) is None:
            continue
        floor = min(rank(layer_of(m)) for m in inside if layer_of(m) is not None)
        for e in edges:
            if e.source == pkg and e.module_level and layer_of(e.target) and rank(layer_of(e.target)) > floor:
                bad.append(
                    f"{pkg}/__init__.py:{e.line} imports {e.target} (layer {layer_of(e.target)}) in its body, above "
                    f"its lowest submodule layer {LAYERS[floor][0]}: importing any {pkg}.* would run it"
                )
    return bad


def probes(sources: dict[str, tuple[str, bool]]) -> list[str]:
    """``find_spec("lipbound...")`` calls and ``try: import lipbound... except ImportError`` blocks."""
    bad = []
    for name, (text, _) in sources.items():
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == "find_spec":
                arg = node.args[0] if node.args else None
                if isinstance(arg, ast.Constant) and str(arg.value).startswith("lipbound"):
                    bad.append(f"{name}:{node.lineno} probes for {arg.value!r}, which ships with the package")
            if isinstance(node, ast.Try):
                caught = {ast.unparse(h.type) for h in node.handlers if h.type is not None}
                if not any("ImportError" in c or "ModuleNotFoundError" in c for c in caught):
                    continue
                for sub in node.body:
                    for imp in ast.walk(sub):
                        mods = (
                            [a.name for a in imp.names]
                            if isinstance(imp, ast.Import)
                            else [imp.module or ""]
                            if isinstance(imp, ast.ImportFrom)
                            else []
                        )
                        if any(
                            m.startswith("lipbound") or (isinstance(imp, ast.ImportFrom) and imp.level) for m in mods
                        ):
                            bad.append(f"{name}:{imp.lineno} guards an import of a lipbound module with ImportError")
    return bad


@pytest.fixture(scope="module")
def package() -> tuple[dict[str, Path], dict[str, tuple[str, bool]], list[Edge]]:
    files = module_files()
    sources = {m: (p.read_text(), _is_package(p)) for m, p in files.items()}
    return files, sources, import_edges(sources)


def test_every_module_has_a_layer(package) -> None:
    files, _, _ = package
    assert len(files) > 100
    missing = [m for m in files if layer_of(m) is None]
    assert not missing, f"modules without a layer (add them to lipbound/_layers.py LAYERS): {missing}"
    assert layer_of("lipbound") == "facade" and layer_of("lipbound.errors") == "errors"
    assert layer_of("lipbound.graph.ir") == "ir" and layer_of("lipbound.graph.trace") == "frontends"
    assert set(COMPAT_ALIASES) <= set(files) and set(COMPAT_ALIASES.values()) <= set(files)


def test_no_upward_import(package) -> None:
    _, _, edges = package
    # the walker sees function-level imports too (this one is inside local_lipschitz_bab)
    assert any(e.source == "lipbound.local" and e.target == "lipbound.bab" and not e.module_level for e in edges)
    bad = upward_imports(edges)
    assert not bad, "imports against the layer order of lipbound/_layers.py:\n" + "\n".join(bad)


def test_no_import_cycle(package) -> None:
    _, _, edges = package
    found = cycles(edges)
    text = "\n".join(
        " -> ".join([c[0].source] + [f"{e.target} (line {e.line} of {e.source})" for e in c]) for c in found
    )
    assert not found, f"import cycles:\n{text}"


def test_package_inits_stay_below_their_submodules(package) -> None:
    files, _, edges = package
    packages = {m for m, p in files.items() if _is_package(p)}
    bad = eager_package_imports(edges, set(files), packages)
    assert not bad, "\n".join(bad)


def test_no_probing_for_modules_that_ship(package) -> None:
    _, sources, _ = package
    bad = probes(sources)
    assert not bad, "\n".join(bad)


def test_the_checks_catch_planted_violations() -> None:
    """The same checks on a synthetic package: an upward import, a cycle, an alias import, probing, a heavy init."""
    sources = {
        "lipbound": ("", True),
        "lipbound.errors": ("def f():\n    from lipbound.engine import crown\n", False),
        "lipbound.engine": ("", True),
        "lipbound.engine.crown": ("from lipbound.engine import forward\n", False),
        "lipbound.engine.forward": ("from . import crown\n", False),
        "lipbound.ops": ("from lipbound.ops import catalog\n", True),
        "lipbound.ops.base": ("", False),
        "lipbound.ops.catalog": (
            "import importlib.util\nimportlib.util.find_spec('lipbound.graph.load')\n"
            "try:\n    from lipbound.nn import householder\nexcept ImportError:\n    pass\n",
            False,
        ),
        "lipbound.nn": ("", True),
        "lipbound.nn.householder": ("import lipbound.smoothing.cli\n", False),
        "lipbound.smoothing": ("", True),
        "lipbound.smoothing.cli": ("from lipbound.cli import smooth\n", False),
        "lipbound.cli": ("", True),
        "lipbound.cli.smooth": ("", False),
    }
    edges = import_edges(sources)
    up = upward_imports(edges)
    assert any("lipbound.errors:2 (layer errors) imports lipbound.engine.crown (layer engine)" in m for m in up), up
    assert any("imports the compatibility alias lipbound.smoothing.cli" in m for m in up), up
    assert not any(m.startswith("lipbound.smoothing.cli:") for m in up)  # the alias itself may point up
    (cycle,) = cycles(edges)
    assert {e.source for e in cycle} == {"lipbound.engine.crown", "lipbound.engine.forward"}
    packages = {m for m, (_, is_pkg) in sources.items() if is_pkg}
    heavy = eager_package_imports(edges, set(sources), packages)
    assert any("lipbound.ops/__init__.py:1 imports lipbound.ops.catalog" in m for m in heavy), heavy
    found = probes(sources)
    assert any("probes for 'lipbound.graph.load'" in m for m in found) and any("ImportError" in m for m in found)


def test_former_import_paths_keep_working() -> None:
    """Names that moved down a layer (or into the CLI package) stay importable from where they were."""
    import lipbound.global_bounds.norms as old_norms
    import lipbound.linalg as linalg
    from lipbound.cli.global_ import global_command
    from lipbound.cli.smooth import app as smooth_app
    from lipbound.global_bounds import norms
    from lipbound.global_bounds.cli import global_command as old_global_command
    from lipbound.global_bounds.norms import conv_operator_norm_upper, matrix_norm_upper
    from lipbound.graph.ir import BATCH, BatchDim
    from lipbound.graph.trace import BATCH as OLD_BATCH
    from lipbound.graph.trace import BatchDim as OldBatchDim
    from lipbound.graph.trace import check_against
    from lipbound.runner import RunSpecError
    from lipbound.runner.errors import RunDataError, RunShapeError
    from lipbound.runner.spec import RunDataError as OldRunDataError
    from lipbound.runner.spec import RunShapeError as OldRunShapeError
    from lipbound.runner.spec import RunSpecError as OldRunSpecError
    from lipbound.smoothing.cli import app as old_smooth_app

    assert old_norms is linalg and norms is linalg
    assert conv_operator_norm_upper is linalg.conv_operator_norm_upper and matrix_norm_upper is linalg.matrix_norm_upper
    assert OLD_BATCH is BATCH and OldBatchDim is BatchDim and callable(check_against)
    assert (OldRunSpecError, OldRunDataError, OldRunShapeError) == (RunSpecError, RunDataError, RunShapeError)
    assert old_global_command is global_command and old_smooth_app is smooth_app
    assert callable(lipbound.Bounded) and callable(lipbound.exact_lipschitz)

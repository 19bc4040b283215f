"""The package's dependency direction, read from the ``ast`` of every module (nothing is imported).

Every ``import``/``from ... import`` counts, wherever it sits: at module level, inside a function
(a lazy import is still a dependency), under ``if TYPE_CHECKING``. A string constant that names an
adaclip_rl module (``importlib.import_module`` tables such as the command dispatch in
``adaclip_rl/cli.py``) counts too, unless it follows ``"-m"`` in a command line (a worker process
started with ``python -m``, such as the Math-Verify worker, is not an import). An edge goes to the most specific module named:
``from adaclip_rl.sandbox import runner`` -> ``adaclip_rl.sandbox.runner``;
``from adaclip_rl.sandbox import run_python`` -> ``adaclip_rl.sandbox`` (its ``__init__``).

Units: a subpackage (``losses``, ``sandbox``, ...), a top-level module (``checks``, ``console``,
``plot``, ``demo``), ``root`` (``adaclip_rl/__init__.py``), and ``entry``: the command-line modules,
which sit on top and may import anything. :data:`ALLOWED` is the direction table; it is itself
acyclic, every unit's imports must be within its row, and neither the unit graph nor the module
graph may contain a cycle.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Command-line modules: the top layer (they only parse arguments and call the library).
ENTRY_POINTS = frozenset({
    "adaclip_rl.cli",
    "adaclip_rl.demo",
    "adaclip_rl.eval.cli",
    "adaclip_rl.study.cli",
    "adaclip_rl.trainers.cli",
})

# unit -> the units it may import (besides itself). Read bottom-up: leaves first.
ALLOWED: dict[str, frozenset[str]] = {
    # leaves: no other adaclip_rl unit
    "checks": frozenset(),
    "console": frozenset(),
    "data": frozenset(),
    "sandbox": frozenset(),  # also: standard library only (test below)
    "_trl_compat": frozenset(),  # the one module naming TRL's and transformers' private members
    # the core math: pure torch, only the shared argument checks
    "losses": frozenset({"checks"}),
    "gradclip": frozenset({"checks"}),
    "optim": frozenset({"checks", "gradclip"}),
    "rollout": frozenset({"checks", "_trl_compat"}),  # async_versions subclasses TRL's rollout worker
    # verifiers -> benchmarks -> synthetic tasks
    "rewards": frozenset({"sandbox"}),
    "eval": frozenset({"data", "rewards", "sandbox"}),
    "tasks": frozenset({"eval", "rewards"}),
    # the TRL trainers compose everything below them
    "trainers": frozenset({"_trl_compat", "checks", "console", "data", "eval", "gradclip", "losses", "optim",
                           "rewards", "rollout", "tasks"}),
    "study": frozenset({"console", "data", "rollout", "tasks", "trainers"}),
    "plot": frozenset({"console", "study"}),
    # adaclip_rl/__init__.py: lazy access to the trainers
    "root": frozenset({"trainers"}),
    "entry": frozenset({"_trl_compat", "checks", "console", "data", "sandbox", "losses", "gradclip", "optim",
                        "rollout", "rewards", "eval", "tasks", "trainers", "study", "plot", "root"}),
}
# The core leaves the issue names: they import nothing above them.
LEAVES = {"losses": {"checks"}, "gradclip": {"checks"}, "optim": {"checks", "gradclip"}, "sandbox": set()}


def module_files(root: Path = ROOT) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` under ``root/adaclip_rl``."""
    out = {}
    for path in sorted((root / "adaclip_rl").rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _deepest(name: str, modules: dict[str, Path]) -> str | None:
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The adaclip_rl modules ``module`` imports (module level, in functions, by name in a string)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_pkg = path.name == "__init__.py"
    named: set[str] = set()
    # ``[python, "-m", "adaclip_rl.x"]`` starts a new interpreter: a process, not an import
    launched = {id(b) for node in ast.walk(tree) if isinstance(node, ast.List | ast.Tuple)
                for a, b in zip(node.elts, node.elts[1:], strict=False)
                if isinstance(a, ast.Constant) and a.value == "-m"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            named.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_pkg else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                pkg = ".".join(base + ([node.module] if node.module else []))
            else:
                pkg = node.module or ""
            for a in node.names:  # a submodule, else a name defined in the package (its __init__)
                named.add(f"{pkg}.{a.name}" if f"{pkg}.{a.name}" in modules else pkg)
        elif (isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in modules
              and id(node) not in launched):
            named.add(node.value)
    out = {_deepest(n, modules) for n in named if n == "adaclip_rl" or n.startswith("adaclip_rl.")}
    out.discard(None)
    out.discard(module)
    return out  # type: ignore[return-value]


def module_graph(root: Path = ROOT) -> dict[str, set[str]]:
    modules = module_files(root)
    return {m: imports_of(m, p, modules) for m, p in modules.items()}


def unit(module: str) -> str:
    if module in ENTRY_POINTS:
        return "entry"
    parts = module.split(".")
    return "root" if len(parts) == 1 else parts[1]


def unit_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for m, targets in graph.items():
        out.setdefault(unit(m), set()).update(unit(t) for t in targets if unit(t) != unit(m))
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10_000))
    try:
        for v in sorted(graph):
            if v not in index:
                visit(v)
    finally:
        sys.setrecursionlimit(limit)
    return found


def violations(graph: dict[str, set[str]]) -> list[str]:
    """``module -> target`` lines for every import outside the direction table."""
    bad = []
    for m, targets in sorted(graph.items()):
        row = ALLOWED.get(unit(m))
        for t in sorted(targets):
            if unit(t) != unit(m) and (row is None or unit(t) not in row):
                bad.append(f"{m} ({unit(m)}) -> {t} ({unit(t)})")
    return bad


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return module_graph()


def test_the_direction_table_is_acyclic_and_covers_every_unit(graph):
    assert cycles({u: set(row) for u, row in ALLOWED.items()}) == []
    assert set(unit_graph(graph)) <= set(ALLOWED), sorted(set(unit_graph(graph)) - set(ALLOWED))
    for leaf, allowed in LEAVES.items():
        assert ALLOWED[leaf] == allowed, leaf


def test_every_import_follows_the_direction_table(graph):
    assert violations(graph) == []


def test_no_cycle_between_units_or_between_modules(graph):
    assert cycles(unit_graph(graph)) == []
    assert cycles(graph) == []


def test_the_sandbox_imports_only_the_standard_library_and_itself():
    modules = module_files()
    bad = []
    for m, path in modules.items():
        if unit(m) != "sandbox":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            for name in names:
                top = name.partition(".")[0]
                if top not in sys.stdlib_module_names and not name.startswith("adaclip_rl.sandbox"):
                    bad.append(f"{m}: {name}")
    assert bad == []


def test_the_reader_sees_lazy_relative_and_string_imports(tmp_path):
    """The checks above are only as good as the reader: a lazy import in a function, a relative
    import and a module named in a string are edges; a cycle through them is found."""
    pkg = tmp_path / "adaclip_rl"
    (pkg / "losses").mkdir(parents=True)
    (pkg / "trainers").mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "losses" / "__init__.py").write_text("def f():\n    from ..trainers import grpo\n")
    (pkg / "trainers" / "__init__.py").write_text("")
    (pkg / "trainers" / "grpo.py").write_text("TABLE = {'x': 'adaclip_rl.losses'}\n"
                                              "CMD = ['python', '-m', 'adaclip_rl.trainers']\n")
    g = module_graph(tmp_path)
    assert g["adaclip_rl.losses"] == {"adaclip_rl.trainers.grpo"}
    assert g["adaclip_rl.trainers.grpo"] == {"adaclip_rl.losses"}
    assert cycles(g) == [["adaclip_rl.losses", "adaclip_rl.trainers.grpo"]]
    assert violations(g) == ["adaclip_rl.losses (losses) -> adaclip_rl.trainers.grpo (trainers)"]

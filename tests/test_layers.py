"""The package's imports form layers: no import cycle, and no module imports one above its own layer.

Every import counts, also the ones inside functions (a lazy import is still a dependency). The layers,
lowest first, are the table below; a new module must be placed in it (the test says so otherwise).
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

#: Package folders and the dotted names they install as.
PACKAGES = {"robustbench_ext": "robustbench_ext", "attacks": "robustbench_ext.attacks",
            "defenses": "robustbench_ext.defenses"}

LAYERS: list[tuple[str, ...]] = [
    # 0: leaves: no rbx imports but each other
    ("_version", "errors", "paths", "stats", "progress", "losses", "devutils", "_compat", "provenance", "curves"),
    # 1: threat models and their per-norm math; registries and the spec grammar
    ("threat", "geometry", "registry", "specs"),
    # 2: engine switches that know nothing of attacks
    ("acceleration", "distributed"),
    # 3: the attack contract; the one cascade; the shared first-order loop; the gradient-masking checks
    ("attack_context",), ("attack",), ("cascade", "loop", "min_norm"), ("draws",), ("checks",),
    # 4: plugins: attacks (they import layers <= 3 and the registry)
    ("attacks", "attacks.*"),
    # 5: data, architectures, the common-corruption image sets, models (with their inference wrappers)
    ("data", "architectures"), ("imagenet_data", "corruption_data"), ("models",), ("model_sources", "boundary"),
    # 6: records (the schema, the union rule, the one record builder) and what reads them; the corruption
    #    evaluation (records, data, models; never the runner)
    ("accuracies",), ("records",), ("record_io",), ("corruptions", "regress", "plots", "robustbench_export", "report"),
    # 7: suites (and the benchmark plan), then the stage plan compiled from them
    ("suites",), ("plan",), ("curve_run",),
    # 8: the runner: evaluation state, the runner, streaming
    ("eval_state",), ("walk",), ("runner",), ("streaming",),
    # 9: defenses and the training engine, then the defense plugins
    ("defense",), ("training",), ("defenses", "defenses.*"),
    # 10: what users call: leaderboards, the CLI, the package facade
    ("leaderboard",), ("cli_common",), ("cli_results", "cli_model"), ("cli",), ("__init__",),
]


def _modules() -> dict[str, Path]:
    out = {}
    for folder, dotted in PACKAGES.items():
        for f in sorted((REPO / folder).glob("*.py")):
            out[dotted if f.stem == "__init__" else f"{dotted}.{f.stem}"] = f
    return out


def _short(mod: str) -> str:
    """Table name of a module: robustbench_ext.x -> x, robustbench_ext.attacks.pgd -> attacks.pgd."""
    if mod == "robustbench_ext":
        return "__init__"
    return mod[len("robustbench_ext."):]


def _layer(mod: str) -> int:
    short = _short(mod)
    for i, names in enumerate(LAYERS):
        for n in names:
            if n == short or (n.endswith(".*") and short.startswith(n[:-1])):
                return i
    raise AssertionError(f"module {mod} is not placed in tests/test_layers.py LAYERS: put it in its layer")


def _imports(mod: str, path: Path, known: dict[str, Path]) -> set[str]:
    is_pkg = path.name == "__init__.py"
    deps = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = mod.split(".")
                base = parts[: len(parts) - node.level + (1 if is_pkg else 0)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            target = {"attacks": "robustbench_ext.attacks", "defenses": "robustbench_ext.defenses"}.get(
                target.split(".")[0], target.split(".")[0]) + target[len(target.split(".")[0]):]
            subs = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in known]
            # `from . import x` depends on the submodule x, not on the package facade
            targets = subs if subs and len(subs) == len(node.names) else [target, *subs]
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != mod:
                deps.add(t)
    return deps


def _graph() -> dict[str, set[str]]:
    known = _modules()
    return {m: _imports(m, p, known) for m, p in known.items()}


def test_every_module_has_a_layer():
    for mod in _modules():
        _layer(mod)


def test_no_module_imports_one_above_its_layer():
    bad = [f"{_short(m)} (layer {_layer(m)}) imports {_short(d)} (layer {_layer(d)})"
           for m, deps in _graph().items() for d in sorted(deps) if _layer(d) > _layer(m)]
    assert not bad, "upward imports:\n" + "\n".join(bad)


def test_no_import_cycles():
    graph = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                cycles.append(stack[stack.index(d):] + [d])
            elif d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(_short(x) for x in c) for c in cycles)


def test_the_checker_sees_lazy_imports(tmp_path):
    """The graph includes imports inside functions (else it would miss the cycles it is here to catch)."""
    graph = _graph()
    assert "robustbench_ext.records" in graph["robustbench_ext.runner"]
    code = "def f():\n    from .runner import evaluate\n"
    known = {"robustbench_ext.x": tmp_path / "x.py", "robustbench_ext.runner": tmp_path / "runner.py"}
    (tmp_path / "x.py").write_text(code)
    assert _imports("robustbench_ext.x", tmp_path / "x.py", known) == {"robustbench_ext.runner"}

"""The package's imports form layers: no import cycle, and no module imports one above its own layer.

Every import counts, also the ones inside functions (a lazy import is still a dependency). The layers,
lowest first, are the table below: the spine (top-level modules), then the sub-packages. A module's layer
is its sub-package's, so a new module inside a package needs no edit here; a new top-level module or
sub-package must be placed (the test says so otherwise). Inside a layer any import is allowed, as long as
there is no cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

#: Package folders and the dotted names they install as.
PACKAGES = {"robustbench_ext": "robustbench_ext", "attacks": "robustbench_ext.attacks",
            "defenses": "robustbench_ext.defenses"}

LAYERS: list[tuple[str, ...]] = [
    # the spine: leaf helpers every layer may import (errors, registry, specs, paths, progress, runtime)
    ("_version", "errors", "paths", "progress", "runtime", "specs", "registry", "_compat", "_legacy"),
    # threat models, geometry, losses, the attack contract, the loop, the cascade; then the attack plugins
    ("attack",), ("attacks",),
    # evaluation data; models (sources, architectures, the adapter)
    ("data",), ("models",),
    # the record schema and what reads records (tables, boards, plots, the regression gate, exports)
    ("records",), ("reporting",),
    # suites -> request -> plan -> executor -> record
    ("evaluation",),
    # the defense contract and training engine; then the defense plugins
    ("training",), ("defenses",),
    # what users call: the CLI, the package facade
    ("cli",), ("__init__",),
]


def _modules() -> dict[str, Path]:
    out = {}
    for folder, dotted in PACKAGES.items():
        for f in sorted((REPO / folder).rglob("*.py")):
            parts = list(f.relative_to(REPO / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            if folder == "robustbench_ext" and parts and parts[0] in ("attacks", "defenses"):
                continue  # (a wheel-installed tree; the repository's own attacks/ and defenses/ are read instead)
            out[".".join([dotted, *parts])] = f
    return out


def _short(mod: str) -> str:
    """Short name of a module: robustbench_ext.x.y -> x.y, robustbench_ext.attacks.pgd -> attacks.pgd."""
    if mod == "robustbench_ext":
        return "__init__"
    return mod[len("robustbench_ext."):]


def _layer(mod: str) -> int:
    """A module's layer: its sub-package's (``evaluation.runner`` -> ``evaluation``), or a spine module's own."""
    head = _short(mod).split(".")[0]
    for i, names in enumerate(LAYERS):
        if head in names:
            return i
    raise AssertionError(f"module {mod} is not placed in tests/test_layers.py LAYERS: put its package (or, for a "
                         "new top-level module, the module) in its layer")


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
    assert "robustbench_ext.records.schema" in graph["robustbench_ext.evaluation.runner"]
    code = "def f():\n    from ..evaluation.runner import evaluate\n"
    known = {"robustbench_ext.cli.x": tmp_path / "x.py", "robustbench_ext.evaluation.runner": tmp_path / "runner.py"}
    (tmp_path / "x.py").write_text(code)
    assert _imports("robustbench_ext.cli.x", tmp_path / "x.py", known) == {"robustbench_ext.evaluation.runner"}


def test_a_new_module_in_a_package_needs_no_table_edit():
    assert _layer("robustbench_ext.evaluation.anything_new") == _layer("robustbench_ext.evaluation.runner")
    assert _layer("robustbench_ext.attacks.new_attack") == _layer("robustbench_ext.attacks.pgd")


def test_every_package_has_a_public_face():
    """Each sub-package's ``__init__`` says what the package is (a docstring) and what users touch (``__all__``)."""
    for pkg in sorted(p for p in (REPO / "robustbench_ext").iterdir() if (p / "__init__.py").is_file()):
        tree = ast.parse((pkg / "__init__.py").read_text())
        assert ast.get_docstring(tree), f"robustbench_ext/{pkg.name}/__init__.py needs a docstring saying what the package is"
        names = {t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
        assert "__all__" in names, f"robustbench_ext/{pkg.name}/__init__.py needs __all__ (its public face)"

#!/usr/bin/env python
"""The engine's shape from its imports: modules per package, floors and import arrows (docs, "Architecture").

    python benchmarks/structure.py [REPO]          # this checkout, or another one (an older commit's worktree)

Reads every module of ``robustbench_ext`` (and the ``attacks``/``defenses`` plugin folders) with ``ast``, counts
the rbx-internal imports (every import, also those inside functions), and prints: modules per package (the
spine is the top-level modules), import arrows between modules and between packages, and the floors: the
longest chain of packages each importing the one below (for a flat layout, of modules), and the hops: how many
engine modules hand the threat model, the seed and the model on (have a function taking it as a parameter).
"""

from __future__ import annotations

import ast
import sys
from collections import Counter
from functools import lru_cache
from pathlib import Path

FOLDERS = {"robustbench_ext": "robustbench_ext", "attacks": "robustbench_ext.attacks", "defenses": "robustbench_ext.defenses"}


def modules(repo: Path) -> dict[str, Path]:
    out = {}
    for folder, dotted in FOLDERS.items():
        for f in sorted((repo / folder).rglob("*.py")):
            parts = list(f.relative_to(repo / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([dotted, *parts])] = f
    return out


def imports(mod: str, path: Path, known: dict[str, Path]) -> set[str]:
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
            subs = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in known]
            targets = subs if subs and len(subs) == len(node.names) else [target, *subs]
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != mod:
                deps.add(t)
    return deps


def package(mod: str, known: dict[str, Path]) -> str:
    """``robustbench_ext.evaluation.runner`` -> ``evaluation``; a top-level module -> ``spine``."""
    parts = mod.split(".")
    if len(parts) == 1:
        return "facade"
    if len(parts) == 2 and known[mod].name != "__init__.py":
        return "spine"
    return parts[1]


#: The values the issue followed through the engine, by the parameter names that carry them.
CARRIERS = {"threat": {"threat", "threats", "threat_spec", "threat_specs", "th"},
            "seed": {"seed", "seeds", "draw_seed"},
            "model": {"model", "model_spec", "loaded", "net", "module"}}


def hops(known: dict[str, Path]) -> dict[str, int]:
    """Per value (:data:`CARRIERS`): how many engine modules (plugins left out) have a function that takes it as a
    parameter, i.e. how many modules it is handed through on its way from the caller to the attack."""
    out = {k: set() for k in CARRIERS}
    for mod, path in known.items():
        if mod.split(".")[1:2] in (["attacks"], ["defenses"]):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                names = {a.arg for a in [*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs]}
                for k, carriers in CARRIERS.items():
                    if names & carriers:
                        out[k].add(mod)
    return {k: len(v) for k, v in out.items()}


def main(argv: list[str]) -> int:
    repo = Path(argv[0] if argv else Path(__file__).resolve().parents[1])
    known = modules(repo)
    graph = {m: imports(m, p, known) for m, p in known.items()}
    pk = {m: package(m, known) for m in known}
    faces = {m for m, p in known.items() if p.name == "__init__.py"}
    counts = Counter(pk[m] for m in known if m not in faces)
    engine = [m for m in known if m not in faces and pk[m] not in ("attacks", "defenses")]
    arrows = sum(len(d) for d in graph.values())
    engine_arrows = sum(1 for m in engine for d in graph[m] if d in engine)
    face_arrows = sum(len(graph[m]) for m in faces)
    pkg_arrows = {(pk[m], pk[d]) for m, ds in graph.items() for d in ds if pk[m] != pk[d]}

    @lru_cache(maxsize=None)
    def floor(m: str) -> int:  # modules
        return 1 + max((floor(d) for d in graph[m] if d in graph), default=0)

    pkgs = set(pk.values())
    pgraph = {p: {b for a, b in pkg_arrows if a == p} for p in pkgs}

    @lru_cache(maxsize=None)
    def pfloor(p: str) -> int:
        return 1 + max((pfloor(q) for q in pgraph[p] if q not in ("spine", p)), default=0)

    flat = counts.get("spine", 0) > 20
    print(f"repository: {repo}")
    print(f"engine modules (robustbench_ext, without plugins): {len(engine)}; plugin modules: "
          f"{counts['attacks'] + counts['defenses']}")
    print("modules per package: " + ", ".join(f"{p} {n}" for p, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))))
    print(f"import arrows between modules: {arrows} in all; {engine_arrows} between engine modules (no plugins, no "
          f"package faces); {face_arrows} from package faces (__init__); between packages: {len(pkg_arrows)}")
    if flat:
        print(f"floors (longest import chain of modules): {max(floor(m) for m in graph)}")
    else:
        print(f"floors (longest chain of packages above the spine): {max(pfloor(p) for p in pgraph)}; "
              f"longest chain of modules: {max(floor(m) for m in graph)}")
    h = hops(known)
    print("modules a value is handed through (a function parameter carries it): "
          + ", ".join(f"{k} {v}" for k, v in h.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

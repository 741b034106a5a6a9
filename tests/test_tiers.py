"""The test tiers (issue 28): ``make test`` (pytest's default options) leaves out the tests marked ``slow`` and
``gpu``; CI (``.ci/run`` -> ``make test-all``) runs the slow ones too; neither can pass without running a test
(pytest's exit code 5, "no tests collected", fails the make target and so the CI script)."""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

from _pytest.mark.expression import Expression

REPO = Path(__file__).resolve().parents[1]


def _marker_expression(args: list[str]) -> str:
    """The last ``-m EXPR`` of a pytest argument list (the last one wins, as in pytest)."""
    exprs = [args[i + 1] for i, a in enumerate(args[:-1]) if a == "-m"]
    assert exprs, f"no -m in {args}"
    return exprs[-1]


def _selects(expr: str, *markers: str) -> bool:
    return Expression.compile(expr).evaluate(lambda name: name in markers)


def _recipe(target: str) -> list[str]:
    """The pytest arguments of a Makefile target's recipe (one ``python -m pytest`` line)."""
    text = (REPO / "Makefile").read_text()
    block = re.search(rf"^{re.escape(target)}:[^\n]*\n((?:\t[^\n]*\n)+)", text, re.M)
    assert block, f"Makefile has no target {target}"
    (line,) = [ln for ln in block.group(1).splitlines() if "-m pytest" in ln]
    return shlex.split(line.split("-m pytest", 1)[1])


def test_make_test_is_the_fast_tier():
    addopts = shlex.split(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]["addopts"])
    expr = _marker_expression(addopts + _recipe("test"))
    assert _selects(expr) and not _selects(expr, "slow") and not _selects(expr, "gpu")


def test_ci_runs_the_slow_tests_too_and_fails_on_any_non_zero_exit():
    ci = (REPO / ".ci" / "run").read_text()
    assert "set -euo pipefail" in ci
    commands = [ln.strip() for ln in ci.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    # the suite runs, and under `set -e` a failing suite (5 = nothing collected included) ends the script with its
    # status: nothing after it may hide it, and no command anywhere swallows an exit status
    assert "make test-all" in commands
    assert not any(re.search(r"\|\|\s*(true|:)\b|;\s*true\b", c) for c in commands), commands
    addopts = shlex.split(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]["addopts"])
    args = _recipe("test-all")
    assert "||" not in args and ";" not in "".join(args)  # nothing swallows pytest's exit status
    expr = _marker_expression(addopts + args)
    assert _selects(expr) and _selects(expr, "slow") and not _selects(expr, "gpu")


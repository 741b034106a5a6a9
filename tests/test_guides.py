"""The guides' code runs as written: docs/guide/your-model.md's model script and its rbx commands (in-process,
in an empty folder). The CI recipe of docs/guide/ci.md is run by tests/test_self_regression.py."""

from __future__ import annotations

import re
import runpy
import shlex
import sys
import warnings
from pathlib import Path

from click.testing import CliRunner

from robustbench_ext.cli import cli
from robustbench_ext.records.store import read_record

GUIDES = Path(__file__).resolve().parents[1] / "docs" / "guide"


def block(guide: str, name: str, lang: str) -> str:
    """The code block marked ``<!-- guide-test:NAME -->`` in a guide."""
    text = (GUIDES / guide).read_text()
    found = re.search(rf"<!-- guide-test:{name} -->\s*```{lang}\n(.*?)```", text, re.S)
    assert found, f"{guide} has no {name} block"
    return found.group(1)


def test_your_model_guide_runs_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "make_model.py").write_text(block("your-model.md", "make-model", "python"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.trace's deprecation warning is the user's script's own
        runpy.run_path("make_model.py", run_name="__main__")
    assert {p.name for p in tmp_path.iterdir()} >= {"net.pt", "net.safetensors", "net_script.pt"}
    commands = [shlex.split(line) for line in block("your-model.md", "cli", "bash").splitlines() if line.strip()]
    assert len(commands) == 3
    try:
        for args in commands:
            assert args[0] == "rbx"
            res = CliRunner().invoke(cli, args[1:] + ["--quiet"])
            assert res.exit_code == 0, (args, res.output)
            assert "union" in res.stdout and "record: " in res.stdout
    finally:
        sys.modules.pop("make_model", None)
    records = [read_record(p) for p in sorted((tmp_path / "results" / "records").glob("*.json"))]
    assert len(records) == 3
    by_model = {r.model["name"]: r for r in records}
    assert by_model["file:net.pt"].model["architecture"] == "make_model.py:Net(width=16)"
    assert by_model["file:net.safetensors"].model["architecture"] == "make_model:Net(width=16)"
    assert by_model["file:net_script.pt"].model["format"] == "torchscript"
    # one model saved three ways: the same verdicts
    flags = {r.model["name"]: r.clean.accuracy for r in records}
    assert len(set(flags.values())) == 1, flags

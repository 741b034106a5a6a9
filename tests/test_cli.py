"""The rbx CLI through click's CliRunner, the bad-input matrix, and the installed `rbx` once end to end."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from robustbench_ext.cli import cli
from robustbench_ext.records.store import read_record

SMALL = ["--model", "cifar10-smallcnn-linf-at", "--dataset", "cifar10-1k", "--n-examples", "20", "--batch-size", "10", "--no-progress"]


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.mark.parametrize("kind", ["attacks", "defenses", "models", "datasets", "suites", "architectures"])
def test_list(kind):
    res = invoke("list", kind)
    assert res.exit_code == 0
    expected = {"attacks": "pgd", "defenses": "ramp", "models": "cifar10-smallcnn-linf-at",
                "datasets": "npz:PATH", "suites": "cifar10-union", "architectures": "smallcnn"}[kind]
    assert expected in res.output


def test_run_writes_record_and_prints_table(in_tmp):
    res = invoke("run", *SMALL, "--threat", "Linf:8/255", "--threat", "L2:0.5", "--attack", "pgd:steps=3", "--results-dir", in_tmp / "res")
    assert res.exit_code == 0, res.output
    for word in ("clean", "Linf:8/255", "L2:0.5", "union", "record:"):
        assert word in res.stdout
    records = list((in_tmp / "res" / "records").glob("*.json"))
    assert len(records) == 1 and len(list((in_tmp / "res" / "records").glob("*.npz"))) == 1
    rec = read_record(records[0])
    assert rec.suite is None and rec.suite_label == "custom: Linf:8/255 + L2:0.5"
    assert rec.threats[0].attacks[0].params["steps"] == 3


def test_run_suite_json_and_leaderboard(in_tmp):
    res = invoke("run", *SMALL, "--suite", "cifar10-union", "--attack", "pgd:steps=2", "--json", "--results-dir", in_tmp)
    assert res.exit_code == 0
    d = json.loads(res.stdout)
    assert [t["threat"] for t in d["threats"]] == ["Linf:8/255", "L2:0.5", "L1:12"]
    assert d["n"] == 20 and d["schema"] == "rbx.record/1"
    lb = invoke("leaderboard", "--results-dir", in_tmp)
    assert lb.exit_code == 0
    text = (in_tmp / "leaderboard.md").read_text()
    assert "cifar10-smallcnn-linf-at" in text and "Linf:8/255" in text and "union" in text


BAD_INPUTS = [
    (["--attack", "pgdd"], "unknown attack 'pgdd'; known: aa-apgd-ce"),
    (["--model", "resnet9000"], "unknown model 'resnet9000'; known:"),
    (["--dataset", "svhn"], "unknown dataset 'svhn'; known:"),
    (["--suite", "imagenet-l0"], "unknown suite 'imagenet-l0'; known:"),
    (["--threat", "Linf:0"], "eps must be > 0"),
    (["--threat", "L2:-1"], "eps must be > 0"),
    (["--threat", "L2:nan"], "eps must be finite"),
    (["--threat", "L1:inf"], "eps must be finite"),
    (["--threat", "L3:1"], "unknown norm 'L3'"),
    (["--threat", "Linf"], "cannot parse threat model"),
    (["--n-examples", "0"], "--n-examples must be a positive integer"),
    (["--n-examples", "1001"], "more than the 1000 images"),
    (["--n-examples", "abc"], "'abc' is not a valid integer"),
    (["--batch-size", "0"], "--batch-size must be a positive integer"),
    (["--attack", "pgd:steps=0"], "steps must be a positive integer"),
    (["--attack", "pgd:stepz=3"], "bad parameters"),
    (["--device", "cuda"], "CUDA is not available"),
    (["--device", "tpu"], "unknown device"),
]


@pytest.mark.parametrize("args, message", BAD_INPUTS, ids=[" ".join(a) for a, _ in BAD_INPUTS])
def test_bad_input_is_one_line_exit_2_nothing_written(in_tmp, args, message):
    if "cuda" in args and __import__("torch").cuda.is_available():
        pytest.skip("CUDA is available here")
    base = [a for a in SMALL if a not in ("--n-examples", "20")] if "--n-examples" in args else SMALL
    res = CliRunner().invoke(cli, ["run", *base, *args, "--results-dir", str(in_tmp / "res")])
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rbx: error:"), res.stderr
    assert message in lines[0]
    assert not (in_tmp / "res").exists() or not any((in_tmp / "res").rglob("*"))


def test_unwritable_results_dir(in_tmp):
    blocker = in_tmp / "file"
    blocker.write_text("a file where a directory should be")
    res = CliRunner().invoke(cli, ["run", *SMALL, "--threat", "Linf:8/255", "--results-dir", str(blocker / "res")])
    assert res.exit_code == 2
    assert res.stderr.startswith("rbx: error: cannot write to results directory") and len(res.stderr.strip().splitlines()) == 1


def test_leaderboard_without_results(in_tmp):
    res = CliRunner().invoke(cli, ["leaderboard", "--results-dir", str(in_tmp / "none")])
    assert res.exit_code == 2 and "run `rbx run` first" in res.stderr


def test_installed_rbx_end_to_end(in_tmp):
    exe = shutil.which("rbx") or str(Path(sys.executable).parent / "rbx")
    assert Path(exe).exists(), "the rbx console script is not installed"
    proc = subprocess.run([exe, "run", *SMALL, "--threat", "L1:12", "--attack", "pgd:steps=2", "--json",
                           "--results-dir", str(in_tmp / "r")], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert proc.returncode == 0, proc.stderr
    d = json.loads(proc.stdout)
    assert d["threats"][0]["threat"] == "L1:12" and 0 <= d["union"]["accuracy"] <= d["clean"]["accuracy"]
    bad = subprocess.run([exe, "run", "--attack", "nope"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.strip().startswith("rbx: error: unknown attack 'nope'")


REPRODUCE = [
    (["--threat", "L2:0.5"], dict(threats="L2:0.5")),  # the default cascade for the norm, a custom run
    (["--threat", "Linf:8/255", "--threat", "L1:12", "--attack", "pgd:steps=3"],
     dict(threats=["Linf:8/255", "L1:12"], attacks=["pgd:steps=3"])),
    (["--suite", "cifar10-union-pgd"], dict(suite="cifar10-union-pgd")),  # a suite unchanged keeps its name
    (["--attack", "pgd:steps=2", "--union-attack", "union-worst:attack=pgd:steps=2"],
     dict(attacks=["pgd:steps=2"], union_attacks=["union-worst:attack=pgd:steps=2"])),
]


@pytest.mark.parametrize("cli_args, kwargs", REPRODUCE)
def test_evaluate_reproduces_rbx_run(cli_args, kwargs, in_tmp):
    """evaluate() is what `rbx run` calls: the same arguments give the same record and flags."""
    from robustbench_ext.records.store import read_flags
    from robustbench_ext import evaluate

    res = invoke("run", "--model", "cifar10-smallcnn-linf-at", "--dataset", "cifar10-1k", "--n-examples", "12",
                 "--batch-size", "6", "--quiet", *cli_args, "--results-dir", in_tmp / "cli")
    assert res.exit_code == 0, res.output
    (path,) = (in_tmp / "cli" / "records").glob("*.json")
    cli_rec, cli_flags = read_record(path), read_flags(path)
    ev = evaluate("cifar10-smallcnn-linf-at", "cifar10-1k", n_examples=12, batch_size=6, progress=False, **kwargs)
    api = ev.record
    assert api.suite == cli_rec.suite and api.suite_label == cli_rec.suite_label
    assert {k: v for k, v in api.config.items() if k != "device"} == {k: v for k, v in cli_rec.config.items() if k != "device"}
    assert [(t.threat, [(a.attack, a.params, a.n_broken) for a in t.attacks]) for t in api.threats] == \
           [(t.threat, [(a.attack, a.params, a.n_broken) for a in t.attacks]) for t in cli_rec.threats]
    assert [(a.attack, a.n_broken) for a in api.union_attacks] == [(a.attack, a.n_broken) for a in cli_rec.union_attacks]
    for field in ("clean_correct", "robust", "broken_by", "union"):
        assert np.array_equal(getattr(ev.flags, field), getattr(cli_flags, field)), field


def test_evaluate_takes_a_plain_module_and_tensors(small_cnn, cifar200):
    """The Python API takes what researchers have: an nn.Module, a tensor pair, threat strings."""
    from robustbench_ext import evaluate

    x, y = cifar200.x[:8], cifar200.y[:8].to(torch.int32)  # labels of another integer dtype are cast at the boundary
    ev = evaluate(small_cnn.module, (x, y), ["Linf:8/255"], attacks=["pgd:steps=3"], progress=False)
    rec = ev.record
    assert rec.model["name"] == "Sequential" and rec.model["source"] == "python object" and len(rec.model["sha256"]) == 64
    assert rec.dataset["source"] == "tensors given to evaluate()" and rec.n == 8
    assert rec.threats[0].threat == "Linf:8/255" and rec.threats[0].attacks[0].params["steps"] == 3
    ref = evaluate(small_cnn, cifar200.first(8), ["Linf:8/255"], attacks=["pgd:steps=3"], progress=False)
    assert np.array_equal(ev.flags.robust, ref.flags.robust)

"""Scale: torch.distributed (gloo, 2 processes) and streaming over shards give the single-process flags;
streams resume per shard; the engine's search switches never report an unverified success."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from robustbench_ext.attack.search import SearchOptions
from robustbench_ext.records.store import iter_records, read_flags, read_record
from robustbench_ext.registry import DATASETS
from robustbench_ext.evaluation.state import StageTotals
from robustbench_ext import evaluate
from robustbench_ext.data.shards import list_shards, pack_shards
from robustbench_ext.evaluation.suites import AttackSpec, ThreatSpec
from robustbench_ext.attack.threat import ThreatModel

BIN = Path(sys.executable).parent
ATTACK_ARGS = ["--model", "cifar10-smallcnn-linf-at", "--batch-size", "4", "--seed", "5", "--no-progress",
               "--threat", "Linf:8/255", "--threat", "L1:12", "--attack", "pgd:steps=4",
               "--attack", "apgd-t:steps=4,n_targets=2", "--union-attack", "msd:steps=3"]
ENV = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}


def _rbx(args, results: Path, world: int = 1, timeout: int = 600) -> subprocess.CompletedProcess:
    if world == 1:
        cmd = [str(BIN / "rbx"), *args, "--results-dir", str(results)]
    else:
        torchrun = shutil.which("torchrun", path=str(BIN)) or str(BIN / "torchrun")
        cmd = [torchrun, "--standalone", f"--nproc-per-node={world}", "-m", "robustbench_ext.cli", *args,
               "--results-dir", str(results)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=ENV)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def _only_record(results: Path):
    found = list(iter_records(results))
    assert len(found) == 1, [str(p) for p, _ in found]
    path, rec = found[0]
    return rec, read_flags(path, rec)


def _same_run(a, b) -> None:
    (ra, fa), (rb, fb) = a, b
    for name in ("index", "y", "clean_correct", "robust", "broken_by"):
        np.testing.assert_array_equal(getattr(fa, name), getattr(fb, name), err_msg=name)
    assert ra.clean == rb.clean and ra.union == rb.union
    for ta, tb in zip(ra.threats, rb.threats):
        assert ta.robust == tb.robust
        for sa, sb in zip(ta.attacks, tb.attacks):
            assert (sa.n_attacked, sa.n_broken, sa.n_forward, sa.n_backward) == (sb.n_attacked, sb.n_broken, sb.n_forward, sb.n_backward)
    for sa, sb in zip(ra.union_attacks, rb.union_attacks):
        assert (sa.n_attacked, sa.n_broken, sa.n_backward) == (sb.n_attacked, sb.n_broken, sb.n_backward)


@pytest.mark.slow
def test_two_gloo_ranks_give_the_single_process_record(tmp_path):
    args = ["run", *ATTACK_ARGS, "--dataset", "cifar10-1k", "--n-examples", "30"]
    _rbx(args, tmp_path / "one")
    out = _rbx(args, tmp_path / "two", world=2)
    single, double = _only_record(tmp_path / "one"), _only_record(tmp_path / "two")
    _same_run(single, double)
    assert double[0].config["distributed"] == {"world_size": 2, "backend": "gloo"}
    assert "distributed" not in single[0].config
    assert single[0].threats[0].attacks[0].n_broken > 0  # the attacks did break points: the check is not vacuous
    assert out.stdout.count("record:") == 1  # rank 0 alone reports and writes


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("shards")
    pack_shards(DATASETS.create("cifar10-1k", n_examples=25), d, 10)
    return d


def test_pack_shards_roundtrip(shard_dir):
    paths = list_shards(shard_dir)
    assert [p.name for p in paths] == ["shard-00000.npz", "shard-00001.npz", "shard-00002.npz"]
    full = DATASETS.create("cifar10-1k", n_examples=25)
    back = [DATASETS.create(f"npz:{p}") for p in paths]
    assert [b.n for b in back] == [10, 10, 5]
    assert torch.equal(torch.cat([b.y for b in back]), full.y)
    # uint8 storage: within half a grey level of the float images
    assert (torch.cat([b.x for b in back]) - full.x).abs().max() <= 0.5 / 255 + 1e-6
    with np.load(paths[2]) as z:
        np.testing.assert_array_equal(z["index"], np.arange(20, 25))


@pytest.mark.slow
def test_stream_merges_resumes_and_matches_two_ranks(shard_dir, tmp_path):
    args = ["run", *ATTACK_ARGS, "--shards", str(shard_dir)]
    res = tmp_path / "one"
    _rbx(args, res)
    rec, flags = _only_record(res)  # the shard parts are not listed as runs
    assert rec.n == 25 and rec.config["stream"]["shards"] == 3
    np.testing.assert_array_equal(flags.index, np.arange(25))
    parts = sorted((res / "stream").rglob("records/shard-*.json"))
    assert len(parts) == 3
    # the merged accuracies are the parts' flags put together
    part_flags = [read_flags(p) for p in parts]
    assert rec.union.count == sum(int(f.union.sum()) for f in part_flags)
    assert rec.threats[0].attacks[0].n_attacked == sum(read_record(p).threats[0].attacks[0].n_attacked for p in parts)

    # resume: only the missing shard is evaluated again, and the merged flags are unchanged
    mtimes = {p: p.stat().st_mtime_ns for p in parts}
    parts[1].unlink()
    (parts[1].with_suffix(".npz")).unlink()
    for p in (res / "records").glob("*"):
        p.unlink()
    out = _rbx(["-v", *args], res)
    assert "shard 0" in out.stderr and "already evaluated" in out.stderr
    assert parts[1].is_file()
    assert parts[0].stat().st_mtime_ns == mtimes[parts[0]] and parts[2].stat().st_mtime_ns == mtimes[parts[2]]
    _same_run((rec, flags), _only_record(res))

    # two ranks split the shards (0, 2 | 1) and rank 0 merges the same record
    _rbx(args, tmp_path / "two", world=2)
    _same_run((rec, flags), _only_record(tmp_path / "two"))


def test_bad_shard_path_is_one_line_error(tmp_path):
    out = subprocess.run([str(BIN / "rbx"), "run", "--shards", str(tmp_path / "nothing"), "--results-dir", str(tmp_path)],
                         capture_output=True, text=True, env=ENV)
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert "no .npz shards" in out.stderr
    assert not (tmp_path / "records").exists()


class _Liar(nn.Module):
    """A 'search model' that claims every input is class (y + 1): every attack 'succeeds' on it."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x):
        logits = self.net(x)
        return logits - 100 * torch.nn.functional.one_hot(logits.argmax(1), logits.shape[1])


def test_search_switches_are_reverified_in_float32(small_cnn, monkeypatch):
    data = DATASETS.create("cifar10-1k", n_examples=20)
    threats = [ThreatSpec(ThreatModel.parse("Linf:2/255"), (AttackSpec.parse("pgd:steps=2"),))]
    honest = evaluate(small_cnn, data, threats, seed=1, batch_size=10, device="cpu", progress=False)
    import robustbench_ext.evaluation.runner as runner

    monkeypatch.setattr(runner, "search_model", lambda net, opts, dev: _Liar(net))
    lied = evaluate(small_cnn, data, threats, seed=1, batch_size=10, device="cpu", progress=False,
                    search=SearchOptions(precision="bf16"))
    assert lied.record.config["search"]["precision"] == "bf16"
    # Every clean-correct point "fell" at its random start on the liar; trusting it would give 0 robust.
    # The float32 verdict keeps every point the real model still classifies right (a random start in
    # Linf 2/255 is weaker than PGD, so at least as many as the honest run's).
    assert lied.record.threats[0].attacks[0].n_broken < lied.record.threats[0].attacks[0].n_attacked
    assert lied.record.threats[0].robust.count >= honest.record.threats[0].robust.count > 0


def test_bf16_search_runs_and_is_recorded(small_cnn):
    data = DATASETS.create("cifar10-1k", n_examples=20)
    threats = [ThreatSpec(ThreatModel.parse("Linf:8/255"), (AttackSpec.parse("pgd:steps=3"),))]
    ev = evaluate(small_cnn, data, threats, seed=1, batch_size=10, device="cpu", progress=False,
                  search=SearchOptions(precision="bf16", channels_last=True))
    assert ev.record.config["search"] == {"precision": "bf16", "channels_last": True, "compile": False}
    assert ev.record.threats[0].robust.count <= ev.record.clean.count
    assert ev.record.threats[0].attacks[0].n_broken > 0


def test_merge_stage_totals_adds_counts_and_sorts_hits():
    a = dict(seconds=2.0, n_forward=10, n_backward=8, curve_sum=[1.0, 2.0], curve_n=[4, 4])
    b = dict(seconds=3.0, n_forward=5, n_backward=4, curve_sum=[1.0], curve_n=[2])
    m = StageTotals.merge([StageTotals(**a, broken=[[7, 3]]), StageTotals(**b, broken=[[5]])])
    assert m.to_dict() == {"seconds": 3.0, "n_forward": 15, "n_backward": 12, "n_nonfinite": 0, "curve_sum": [2.0, 2.0],
                           "curve_n": [6, 4], "broken": [[3, 5, 7]], "population": None}
    # an audit stage: every rank drew from the same robust points, and the merged stage keeps how many
    audit = StageTotals.merge([StageTotals(**a, broken=[[7]], population=40), StageTotals(**b, broken=[[]], population=40)])
    assert audit.population == 40 and audit.broken == [[7]]
    u = StageTotals.merge([StageTotals(**a, broken=[[1], []]), StageTotals(**b, broken=[[0], [2]])])  # a union stage
    assert u.broken == [[0, 1], [2]]

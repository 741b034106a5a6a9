"""The validation zoo (benchmarks/zoo.py), the tuning / held-out split (benchmarks/splits.py) and the AutoAttack
flag cache keys (benchmarks/aa_flags.py): each pathological wrapper does what its name says, the split guards
refuse the wrong slice, and a wrapper's cache key differs from its base's although they share weights."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from robustbench_ext.data.datasets import EvalData
from robustbench_ext.errors import RbxError

from conftest import needs_shared

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import aa_flags  # noqa: E402
import splits  # noqa: E402
import zoo  # noqa: E402


class Recorder(nn.Module):
    """Identity feature extractor + fixed linear head; keeps the last input it saw."""

    def __init__(self, d: int = 3 * 32 * 32) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.head = nn.Linear(d, 10)
        self.seen = None

    def forward(self, x):
        self.seen = x.detach()
        return self.head(x.flatten(1))


def _x(n=4, seed=0):
    return torch.rand((n, 3, 32, 32), generator=torch.Generator().manual_seed(seed))


def test_quantization_has_eight_levels_and_no_gradient():
    rec = Recorder()
    net = zoo.InputQuantization(rec, levels=8)
    x = _x().requires_grad_(True)
    net(x).sum().backward()
    levels = torch.unique(rec.seen)
    assert len(levels) <= 8 and torch.allclose(levels * 7, torch.round(levels * 7), atol=1e-6)
    assert torch.equal(rec.seen, torch.round(x.detach() * 7) / 7)
    assert x.grad is not None and float(x.grad.abs().max()) == 0.0


def test_logit_scale_multiplies_logits():
    rec = Recorder()
    x = _x()
    assert torch.allclose(zoo.LogitScale(rec, 1e4)(x), rec(x) * 1e4)


def test_batch_statistics_depend_on_the_batch_even_in_eval_mode():
    net = zoo.BatchStatistics(Recorder(), mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3)).eval()
    x = _x(8)
    alone = net(x[:4])
    together = net(x)[:4]
    assert not torch.allclose(alone, together, atol=1e-4), "the first 4 outputs must change with the batch"
    normed = net.model.seen  # the batch's own statistics, mapped to the fixed mean and std
    assert torch.allclose(normed.mean((0, 2, 3)), torch.tensor([0.5, 0.4, 0.3]), atol=1e-5)
    assert torch.allclose(normed.std((0, 2, 3), unbiased=False), torch.tensor([0.2, 0.25, 0.3]), atol=1e-3)


def test_nondiff_jpeg_changes_the_input_and_has_zero_gradient():
    rec = Recorder()
    net = zoo.JpegInput(rec, quality=75)
    x = _x().requires_grad_(True)
    out = net(x)
    out.sum().backward()
    assert out.shape == (4, 10)
    diff = (rec.seen - x.detach()).abs()
    assert float(diff.max()) > 1 / 255, "JPEG must actually change the pixels"
    assert torch.allclose(rec.seen * 255, torch.round(rec.seen * 255), atol=1e-4)  # decoded uint8 pixels
    assert float(x.grad.abs().max()) == 0.0


def test_randomized_entry_is_random_and_reproducible_under_a_seed():
    net, dataset, meta = zoo.load("randomized")
    assert meta["randomized"] and dataset == "cifar10"
    x = _x(2)
    with torch.no_grad():
        a, b = net(x), net(x)
        torch.manual_seed(3)
        c = net(x)
        torch.manual_seed(3)
        d = net(x)
    assert not torch.allclose(a, b) and torch.equal(c, d)


def test_every_entry_says_what_it_is_and_how_it_was_made():
    assert sorted(zoo.QUEUE_ORDER) == sorted(zoo.ENTRIES)
    ordinary = [e for e in zoo.ENTRIES.values() if e.kind in ("rbx-train", "engine", "existing")]
    assert len(ordinary) >= 8
    for e in zoo.ENTRIES.values():
        assert e.what and e.dataset in aa_flags.RADII
        if e.kind != "existing" or (e.path / "config.json").is_file():
            assert e.command
    with pytest.raises(RbxError, match="unknown zoo entry"):
        zoo.entry("nope")


def test_split_guards_refuse_the_wrong_slice():
    splits.assert_held_out(1000, 500)
    splits.assert_held_out(20, 100)
    splits.assert_held_out(1000, 200, "mnist5k")
    splits.assert_tuning("test", 9000, 1000)
    splits.assert_tuning("train", 0, 50_000)
    splits.assert_tuning_model("cifar10-resnet18-linf-at")
    for start, n in [(9000, 10), (8995, 10), (9999, 1)]:
        with pytest.raises(splits.SplitError, match="not held out"):
            splits.assert_held_out(start, n)
    with pytest.raises(splits.SplitError, match="not held out"):
        splits.assert_held_out(1990, 20, "mnist5k")
    for split, start, n in [("test", 8999, 2), ("test", 0, 100), ("mnist5k", 3000, 10)]:
        with pytest.raises(splits.SplitError, match="not tuning"):
            splits.assert_tuning(split, start, n)
    with pytest.raises(splits.SplitError, match="outside"):
        splits.assert_tuning("test", 9990, 20)
    with pytest.raises(splits.SplitError, match="held out"):
        splits.assert_tuning_model("quantized")


def test_cache_key_differs_between_a_wrapper_and_its_base():
    _, _, wrapped = zoo.load("quantized")
    base = aa_flags.resolve_model(zoo.BASE)[2]
    assert wrapped["sha256"] == base["sha256"], "a wrapper shares its base's weights"
    data = EvalData("cifar10[1000:1002]", _x(2), torch.tensor([0, 1]), "test", "memory")
    from robustbench_ext.attack.threat import ThreatModel

    t = ThreatModel("Linf", 8 / 255)
    cpu = torch.device("cpu")
    k_wrapped = aa_flags.key_fields("quantized", wrapped, data, "test", 1000, t, 0, 500, cpu)
    k_base = aa_flags.key_fields(zoo.BASE, base, data, "test", 1000, t, 0, 500, cpu)
    k_moved = aa_flags.key_fields(zoo.BASE, base, data, "test", 2000, t, 0, 500, cpu)
    keys = {aa_flags.aa_cache.cache_key(k) for k in (k_wrapped, k_base, k_moved,
                                                     aa_flags.majority_fields(k_base, 0))}
    assert len(keys) == 4
    assert k_wrapped["wrapper"] == {"kind": "input-quantization", "levels": 8} and k_base["wrapper"] is None


@needs_shared("cifar10-full")
def test_images_are_a_named_contiguous_slice():
    d = splits.images("test", 1000, 20)
    assert d.name == "cifar10[1000:1020]" and d.y.tolist() == [k % 10 for k in range(20)]
    first = splits.images("test", 0, 1020)
    assert torch.equal(first.x[1000:], d.x)
    with pytest.raises(splits.SplitError):
        splits.images("test", 9995, 10)


def test_aa_flags_cli_refuses_bad_input(capsys):
    assert aa_flags.main(["--model", "nope", "--start", "0", "--n", "5"]) == 2
    assert "zoo entry" in capsys.readouterr().err
    assert aa_flags.main(["--model", "quantized", "--start", "9995", "--n", "10"]) == 2
    assert "outside" in capsys.readouterr().err
    assert aa_flags.main(["--model", "quantized", "--start", "0", "--n", "5", "--norms", "L3"]) == 2
    assert "unknown norm" in capsys.readouterr().err


def test_load_flags_joins_chunks_of_one_seed_and_the_table_compares_seeds(tmp_path, monkeypatch):
    """AutoAttack's flags of another seed never mix into the comparisons' (seed 0) flags; the trust table's
    'AutoAttack against itself' rows count what each seed breaks that the other does not."""
    import json

    import trust

    def entry(name, start, robust, seed):
        key = {"harness": "aa_flags", "model": "m", "split": "test", "start": start, "norm": "L1", "eps": 12.0,
               "seed": seed, "threads": 1, "dataset": "cifar10"}
        (tmp_path / f"{name}.json").write_text(json.dumps({"key": key, "n": len(robust), "robust": robust}))
    entry("a", 1000, [True, False], 0)
    entry("b", 1002, [True, True], 0)
    entry("c", 1000, [False, False, True, True], 1)
    assert aa_flags.load_flags("m", "test", 1000, 4, "L1", cache_dir=tmp_path).tolist() == [True, False, True, True]
    assert aa_flags.load_flags("m", "test", 1000, 4, "L1", cache_dir=tmp_path, seed=1).tolist() == [False, False, True, True]
    assert aa_flags.load_flags("m", "test", 1000, 4, "L1", cache_dir=tmp_path, seed=2) is None
    monkeypatch.setattr(aa_flags, "CACHE_DIR", tmp_path)
    monkeypatch.setattr(aa_flags, "entries", lambda cache_dir=tmp_path: [
        {**json.loads(f.read_text()), "file": f.name} for f in sorted(tmp_path.glob("*.json"))])
    load = aa_flags.load_flags
    monkeypatch.setattr(aa_flags, "load_flags", lambda *a, **k: load(*a, **{**k, "cache_dir": tmp_path}))
    rows = trust._aa_against_itself([{"model": "m", "split": "test", "start": 1000, "n": 4,
                                      "run": {"threats": {"L1:12": {"aa_breaks_rbx_not": [1001]}}}}])
    # seed 0 robust at 1000, 1002, 1003 (3); seed 1 at 1002, 1003 (2): seed 1 breaks 1000 that seed 0 does not;
    # rbx's AA-only point 1001 is broken by seed 1 too.
    assert rows == ["| m | test[1000:1004] | L1 | 3 | 2 | 0 | 1 | 0 of 1 (1001) |"]


def test_cascade_prefix_read_off_one_run_equals_running_the_prefix(small_cnn, cifar200):
    """trust.py compare judges every prefix of a candidate's cascade from one run (``prefix_misses``): the claim
    is that stage k's outcome does not depend on later stages. Checked against a separate run of the prefix, with
    flags standing in for AutoAttack's that break every clean-correct point (so 'AA only' = the prefix's robust)."""
    import trust
    from robustbench_ext import evaluate

    data = cifar200.first(40)
    long = evaluate(small_cnn.module, data, "Linf:8/255", attacks=["fgsm", "pgd:steps=10"], progress=False, seed=0)
    short = evaluate(small_cnn.module, data, "Linf:8/255", attacks=["fgsm"], progress=False, seed=0)
    f = long.flags
    aa_robust = np.zeros(data.n, dtype=bool)
    rows = trust.prefix_misses(f.broken_by[:, 0], aa_robust, f.clean_correct, long.record.threats[0].attacks)
    assert [r["stages"] for r in rows] == [1, 2] and [r["last"] for r in rows] == ["fgsm", "pgd"]
    assert rows[0]["robust"] == int(short.flags.robust[:, 0].sum()) == rows[0]["aa_only"]
    assert rows[1]["robust"] == int(f.robust[:, 0].sum())
    assert rows[0]["robust"] > rows[1]["robust"]  # the second stage broke something: the two rows differ
    assert rows[1]["seconds"] >= rows[0]["seconds"]


def test_candidate_runs_accumulate_and_a_changed_default_keeps_its_old_run():
    """A candidate measured again replaces its older run; a suite whose cascade changed since keeps the old run
    (dated), so the evidence a past choice was made on is not overwritten by the next comparison."""
    import trust

    def run(suite, spec, date):
        return {"suite": suite, "spec": {"L1:12": spec}, "cascades": {"L1:12": [s.split(":")[0] for s in spec]},
                "date": date}

    old = [run("cifar10-union[L1]", ["pma:steps=40"], "2026-12-05T04:48:00"),
           run("cand-a", ["apgd-ce:steps=50"], "2026-12-05T04:48:00"), run("cand-b", ["fab"], "2026-12-04T23:00:00")]
    new = [run("cifar10-union[L1]", ["pma:steps=40", "apgd-ce:steps=50"], "2026-12-05T09:00:00"),
           run("cand-a", ["apgd-ce:steps=50"], "2026-12-05T09:00:00")]
    got = trust.accumulate(old, new)
    assert [r["suite"] for r in got] == ["cifar10-union[L1] (as of 2026-12-05T04:48)", "cand-b",
                                         "cifar10-union[L1]", "cand-a"]
    assert got[-1]["date"].startswith("2026-12-05T09")  # the re-measured candidate is the new run, once
    # runs from before the spec field: judged by their attack names
    legacy = [{k: v for k, v in old[0].items() if k != "spec"}]
    assert [r["suite"] for r in trust.accumulate(legacy, new[:1])][0].endswith("(as of 2026-12-05T04:48)")
    same = [{k: v for k, v in new[0].items() if k != "spec"}]
    assert len(trust.accumulate(same, new[:1])) == 1

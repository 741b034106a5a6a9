"""The public API: what ``robustbench_ext.__all__`` promises is there, and rbx 0.1's import paths and keywords
still work for one minor version, each with a DeprecationWarning that names the new place."""

from __future__ import annotations

import importlib
import sys
import warnings

import pytest

import robustbench_ext
from robustbench_ext import RunRequest
from robustbench_ext._legacy import MOVED_MODULES, MOVED_NAMES
from robustbench_ext.errors import RbxError


def test_every_public_name_is_there():
    for name in robustbench_ext.__all__:
        assert getattr(robustbench_ext, name) is not None, name


@pytest.mark.parametrize("old", sorted(MOVED_MODULES))
def test_old_module_paths_warn_and_resolve(old):
    """Every 0.1 module path imports, warns where it went, and hands out the same objects as the new one."""
    new = importlib.import_module(f"robustbench_ext.{MOVED_MODULES[old]}")
    public = [n for n in vars(new) if not n.startswith("_") and not isinstance(getattr(new, n), type(sys))][:3]
    sys.modules.pop(f"robustbench_ext.{old}", None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mod = importlib.import_module(f"robustbench_ext.{old}")
        for name in public:
            assert getattr(mod, name) is getattr(new, name)
    moved = [w for w in caught if issubclass(w.category, DeprecationWarning)]
    if mod is not new:  # (a package that kept its 0.1 name, e.g. robustbench_ext.data, imports without a warning)
        assert moved and "the old path goes in rbx 0.3" in str(moved[0].message)
        assert f"robustbench_ext.{MOVED_MODULES[old]}" in str(moved[0].message)


@pytest.mark.parametrize("old_module,old_name", sorted(MOVED_NAMES))
def test_moved_and_renamed_names_warn_and_resolve(old_module, old_name):
    new_module, new_name = MOVED_NAMES[(old_module, old_name)]
    target = getattr(importlib.import_module(f"robustbench_ext.{new_module}"), new_name)
    with pytest.warns(DeprecationWarning, match=f"robustbench_ext.{new_module}.{new_name}"):
        got = getattr(importlib.import_module(f"robustbench_ext.{old_module}"), old_name)
    assert got is target


def test_a_0_1_user_script_still_runs():
    """The script that broke between releases: derive_seed from the runner, evaluate(checkpoint_dir=)."""
    with pytest.warns(DeprecationWarning, match="robustbench_ext.runtime.derive_seed"):
        from robustbench_ext.runner import derive_seed  # noqa: F401
    assert derive_seed(0, 1) == robustbench_ext.runtime.derive_seed(0, 1)


def test_evaluate_checkpoint_dir_is_state_dir(tmp_path, small_cnn, cifar200):
    with pytest.warns(DeprecationWarning, match="state_dir"):
        ev = robustbench_ext.evaluate(small_cnn, cifar200.first(8), "Linf:8/255", attacks=["fgsm"],
                                      checkpoint_dir=tmp_path / "state", progress=False)
    assert ev.record.n == 8
    with pytest.raises(RbxError, match="not both"), pytest.warns(DeprecationWarning):
        robustbench_ext.evaluate(small_cnn, cifar200.first(8), "Linf:8/255", attacks=["fgsm"], state_dir=tmp_path / "a",
                                 checkpoint_dir=tmp_path / "b")


def test_request_is_validated_once_at_construction():
    for bad, match in ((dict(batch_size=0), "batch-size"), (dict(seed=2**32), "seed"), (dict(seed=-1), "seed"),
                       (dict(n_examples=0), "n-examples"), (dict(draws=0), "draws"), (dict(eps_sweep=(0.5, -1)), "eps-sweep"),
                       (dict(model="no-such-model"), "unknown model"), (dict(data="no-such-data"), "unknown dataset"),
                       (dict(shards="x", n_examples=5), "--shards replaces"), (dict(union_only=True, eps_sweep=(2,)), "union-only"),
                       (dict(suite="cifar10-corruptions", attacks=("pgd",)), "do not apply to the corruption suite")):
        with pytest.raises(RbxError, match=match):
            RunRequest(**bad)


def test_request_plans_once_and_keeps_its_plan_across_execution_changes():
    r = RunRequest(model="cifar10-smallcnn-linf-at", data="cifar10-1k", threats=("Linf:8/255",), attacks=("pgd:steps=3",))
    planned = r.planned
    assert r.planned is planned  # cached
    assert r.with_(device="cpu", progress=False).planned is planned  # where/how it runs: same plan
    assert r.with_(seed=1).planned is not planned  # what it evaluates: planned again
    assert [s.label for s in planned.plan.stages] == ["pgd"]
    with pytest.raises(RbxError, match="unknown attack"):
        RunRequest(threats=("Linf:8/255",), attacks=("pgdd",)).planned


def test_evaluate_takes_a_request_and_prints_its_table(small_cnn, cifar200):
    request = RunRequest(model=small_cnn, data=cifar200.first(8), threats=("Linf:8/255",), attacks=("fgsm",), progress=False)
    ev = robustbench_ext.evaluate(request)
    assert str(ev) == ev.table() and "Linf:8/255" in str(ev) and "union" in str(ev)
    again = robustbench_ext.run(request)
    assert (again.flags.robust == ev.flags.robust).all()


def test_seeds_are_checked_where_they_enter():
    from robustbench_ext.runtime import SEED_STREAMS, check_seed, stream_seed

    assert check_seed(2**32 - 1) == 2**32 - 1
    for bad in (2**32, -1, 1.5, True):
        with pytest.raises(RbxError, match="seed"):
            check_seed(bad)
    keys = [v for v in SEED_STREAMS.values() if v]
    assert len(set(keys)) == len(keys), "two seed streams share a key"
    assert stream_seed(0, "union", 0) != stream_seed(0, "shard", 0)
    with pytest.raises(RbxError, match="unknown seed stream"):
        stream_seed(0, "nope")

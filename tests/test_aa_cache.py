"""The AutoAttack result cache of the comparison harnesses (benchmarks/aa_cache.py): a stored result is
returned only for exactly the same key, says when it was measured, and --refresh-aa measures again."""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("aa_cache", REPO / "benchmarks" / "aa_cache.py")
aa_cache = importlib.util.module_from_spec(spec)
sys.modules["aa_cache"] = aa_cache  # dataclasses look their module up there
spec.loader.exec_module(aa_cache)

KEY = {"model_sha256": "m" * 64, "data_sha256": "d" * 64, "n": 3, "norm": "Linf", "eps": 8 / 255, "threads": 2}


def _runner(calls, flags=(True, False, True), seconds=12.5):
    def run():
        calls.append(1)
        return np.array(flags), seconds, seconds * 2, ["apgd-ce", "square"]
    return run


def test_miss_then_hit_with_its_date(tmp_path):
    calls = []
    first = aa_cache.cached_run(tmp_path, KEY, _runner(calls))
    assert first.cached_at is None and calls == [1]
    assert first.robust.tolist() == [True, False, True] and first.seconds == 12.5
    second = aa_cache.cached_run(tmp_path, KEY, _runner(calls, flags=(False, False, False), seconds=1.0))
    assert calls == [1], "a hit must not run AutoAttack again"
    assert second.robust.tolist() == [True, False, True] and second.seconds == 12.5 and second.cpu_seconds == 25.0
    assert second.cached_at and second.cached_at.startswith("20")
    (path,) = tmp_path.glob("*.json")
    assert json.loads(path.read_text())["key"] == KEY


def test_any_key_change_misses(tmp_path):
    calls = []
    aa_cache.cached_run(tmp_path, KEY, _runner(calls))
    for field, value in [("threads", 1), ("eps", 0.5), ("data_sha256", "e" * 64), ("norm", "L2")]:
        res = aa_cache.cached_run(tmp_path, {**KEY, field: value}, _runner(calls, flags=(False, False, False)))
        assert res.cached_at is None and res.robust.tolist() == [False, False, False], field
    assert len(calls) == 5 and len(list(tmp_path.glob("*.json"))) == 5


def test_refresh_measures_again_and_replaces(tmp_path):
    calls = []
    aa_cache.cached_run(tmp_path, KEY, _runner(calls))
    fresh = aa_cache.cached_run(tmp_path, KEY, _runner(calls, flags=(False, True, False), seconds=3.0), refresh=True)
    assert calls == [1, 1] and fresh.cached_at is None and fresh.robust.tolist() == [False, True, False]
    again = aa_cache.cached_run(tmp_path, KEY, _runner(calls))
    assert again.robust.tolist() == [False, True, False] and again.seconds == 3.0 and calls == [1, 1]


def test_no_cache_dir_always_runs(tmp_path):
    calls = []
    aa_cache.cached_run(None, KEY, _runner(calls))
    aa_cache.cached_run(None, KEY, _runner(calls))
    assert calls == [1, 1]


def test_committed_entries_are_well_formed():
    """Every committed AutoAttack result names its key, date and per-sample flags (n of them)."""
    files = sorted((REPO / "results" / "aa_cache").glob("*.json"))
    assert files, "results/aa_cache/ holds the AutoAttack side of the committed comparisons"
    for f in files:
        entry = json.loads(f.read_text())
        assert f.stem == aa_cache.cache_key(entry["key"]), f.name
        assert len(entry["robust"]) == entry["n"] == entry["key"]["n"], f.name
        assert entry["seconds"] > 0 and entry["measured_at"].startswith("2026"), f.name

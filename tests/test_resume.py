"""Crash and resume: a run killed with SIGKILL finishes with identical accuracies and per-sample flags."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from robustbench_ext.records.store import read_flags, read_record

ARGS = ["run", "--model", "cifar10-smallcnn-linf-at", "--dataset", "cifar10-1k", "--n-examples", "100", "--batch-size", "8", "--seed", "3",
        "--threat", "Linf:8/255", "--threat", "L2:0.5", "--attack", "pgd:steps=150", "--no-progress"]


def _rbx() -> str:
    exe = shutil.which("rbx") or str(Path(sys.executable).parent / "rbx")
    assert Path(exe).exists()
    return exe


def _progress(results: Path):
    ckpts = list((results / ".rbx-partial").glob("*.npz"))
    if not ckpts:
        return None
    try:
        with np.load(ckpts[0], allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
        return meta["stage"], meta["batch"]  # the stage of the run plan, the next batch
    except Exception:  # being replaced right now
        return None


def _kill_when(results: Path, ready, timeout: float = 240.0) -> None:
    proc = subprocess.Popen([_rbx(), *ARGS, "--results-dir", str(results)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    t0 = time.time()
    try:
        while time.time() - t0 < timeout:
            pos = _progress(results)
            if pos is not None and ready(pos):
                break
            if proc.poll() is not None:
                pytest.fail("the run finished before it could be killed")
            time.sleep(0.02)
        else:
            pytest.fail("no checkpoint progress within the timeout")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


@pytest.mark.slow
def test_killed_run_resumes_to_the_identical_record(tmp_path):
    ref, run = tmp_path / "ref", tmp_path / "run"
    done = subprocess.run([_rbx(), *ARGS, "--results-dir", str(ref)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr

    # Kill during the first threat model, then re-run the same command (it resumes by itself) and kill it
    # again during the second one; finish with --resume.
    _kill_when(run, lambda pos: pos[0] == 0 and pos[1] >= 2)
    assert not list(run.glob("records/*.json"))  # nothing but the checkpoint
    _kill_when(run, lambda pos: pos[0] == 1 and pos[1] >= 1)
    assert not list(run.glob("records/*.json"))
    fin = subprocess.run([_rbx(), *ARGS, "--resume", "--results-dir", str(run)], capture_output=True, text=True,
                         timeout=600)
    assert fin.returncode == 0, fin.stderr
    assert "resuming from" in fin.stderr
    assert not list((run / ".rbx-partial").glob("*.npz"))  # the checkpoint is gone once the record exists

    (ref_json,), (run_json,) = list(ref.glob("records/*.json")), list(run.glob("records/*.json"))
    a, b = read_record(ref_json), read_record(run_json)
    assert a.clean == b.clean and a.union == b.union
    assert [t.robust for t in a.threats] == [t.robust for t in b.threats]
    assert [[(s.n_attacked, s.n_broken) for s in t.attacks] for t in a.threats] == \
           [[(s.n_attacked, s.n_broken) for s in t.attacks] for t in b.threats]
    fa, fb = read_flags(ref_json), read_flags(run_json)
    for field in ("clean_correct", "robust", "broken_by", "union", "index"):
        assert np.array_equal(getattr(fa, field), getattr(fb, field)), field

"""rbx gates itself: the small reference CNN on a fixed slice (200 images, CPU, seed 0, the default suite)
must not change significantly against the baseline record committed in results/baselines/.

If an intended change moves these numbers (a stronger attack, say), regenerate the baseline with the
command in results/baselines/README.md and say why in the commit message.
"""

import shutil
import subprocess
import sys
from pathlib import Path

from robustbench_ext.records.store import read_record

REPO = Path(__file__).resolve().parents[1]
ARGS = ["run", "--model", "cifar10-smallcnn-linf-at", "--dataset", "cifar10-1k", "--n-examples", "200", "--seed", "0", "--device", "cpu",
        "--no-progress"]


def test_rbx_has_not_regressed_against_its_baseline(tmp_path):
    (baseline,) = sorted((REPO / "results" / "baselines" / "records").glob("*cifar10-smallcnn-linf-at_cifar10-union_n200.json"))
    assert read_record(baseline).n == 200
    rbx = shutil.which("rbx") or str(Path(sys.executable).parent / "rbx")
    run = subprocess.run([rbx, *ARGS, "--results-dir", str(tmp_path)], capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr
    (candidate,) = list((tmp_path / "records").glob("*.json"))
    gate = subprocess.run([rbx, "regress", "--baseline", str(baseline), "--candidate", str(candidate)],
                          capture_output=True, text=True, timeout=120)
    print(gate.stdout)
    assert gate.returncode == 0, gate.stdout + gate.stderr
    assert "PASS" in gate.stdout

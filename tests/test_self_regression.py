"""rbx gates itself with the CI recipe of docs/guide/ci.md: the small reference CNN on a fixed slice (200 images,
CPU, seed 0, the default suite) must not change significantly against the baseline record committed in
results/baselines/.

The commands are read from the guide (between its ``ci-recipe`` markers) and run as written, offline, in an empty
folder holding only a copy of ``results/baselines/`` (no ``../shared``, no ``RBX_*`` variables, the Hugging Face
Hub offline), so the guide cannot drift from what works. If an intended change moves these numbers (a stronger
attack, say), regenerate the baseline with the command in results/baselines/README.md and say why in the commit.
"""

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from robustbench_ext.records.store import read_record

REPO = Path(__file__).resolve().parents[1]
GUIDE = REPO / "docs" / "guide" / "ci.md"


def recipe() -> list[list[str]]:
    """The guide's CI commands, one argument list per line of its marked bash block."""
    text = GUIDE.read_text()
    block = re.search(r"<!-- ci-recipe:start -->\s*```bash\n(.*?)```\s*<!-- ci-recipe:end -->", text, re.S)
    assert block, f"{GUIDE} has no ci-recipe block"
    return [shlex.split(line) for line in block.group(1).splitlines() if line.strip() and not line.startswith("#")]


def test_the_ci_recipe_is_rbx_run_then_rbx_regress_on_the_baselines_settings():
    run, gate = recipe()
    assert run[:2] == ["rbx", "run"] and gate[:2] == ["rbx", "regress"]
    (baseline,) = sorted((REPO / "results" / "baselines" / "records").glob("*cifar10-smallcnn-linf-at_cifar10-union_n200.json"))
    rec = read_record(baseline)
    opts = dict(zip(run[2::2], run[3::2]))
    assert opts["--model"] == rec.model["name"] and opts["--dataset"] == rec.dataset["name"] == "cifar10-1k"
    assert int(opts["--n-examples"]) == rec.n == 200 and int(opts["--seed"]) == rec.config["seed"]


@pytest.mark.slow
def test_rbx_has_not_regressed_against_its_baseline(tmp_path):
    shutil.copytree(REPO / "results" / "baselines", tmp_path / "results" / "baselines")
    rbx = shutil.which("rbx", path=str(Path(sys.executable).parent)) or shutil.which("rbx")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RBX_")}
    env.update(HF_HUB_OFFLINE="1", HOME=str(tmp_path / "home"))
    outputs = []
    for args in recipe():
        proc = subprocess.run([rbx, *args[1:]], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1800)
        outputs.append(proc)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    run, gate = outputs
    # a CI log is not a terminal: stage lines, but no progress bar redraws
    assert "rbx: Linf:8/255 pma: broke" in run.stderr and "\r" not in run.stderr
    (candidate,) = list((tmp_path / "ci-results" / "records").glob("*.json"))
    rec = read_record(candidate)
    assert rec.n == 200 and rec.dataset["name"] == "cifar10-1k"
    print(gate.stdout)
    assert "PASS" in gate.stdout

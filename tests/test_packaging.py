"""What `pip install` puts on the path: rbx's plugins live under the package's own name, never top-level."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_wheel_installs_plugins_under_the_package_name(tmp_path):
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(tmp_path), str(REPO)], capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = tmp_path.glob("robustbench_ext-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert "attacks" not in tops and "defenses" not in tops, sorted(tops)
    for must in ("robustbench_ext/attacks/pgd.py", "robustbench_ext/defenses/ramp.py",
                 "robustbench_ext/assets/cifar10_smallcnn_linf_at.pt", "robustbench_ext/assets/cifar10_test_1k.npz",
                 "robustbench_ext/assets/README.md", "robustbench_ext/reporting/templates/leaderboard.html.j2"):
        assert must in names, must


def test_a_users_attacks_py_does_not_shadow_the_builtins(tmp_path):
    """Tried as a new user would: an attacks.py (and defenses.py) beside the script, imported first."""
    (tmp_path / "attacks.py").write_text("WHO = 'the user'\n")
    (tmp_path / "defenses.py").write_text("WHO = 'the user'\n")
    script = ("import attacks, defenses\n"
              "from robustbench_ext.registry import ATTACKS, DEFENSES\n"
              "assert attacks.WHO == 'the user'\n"
              "print(sorted(ATTACKS.names()), sorted(DEFENSES.names()))\n")
    run = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "'pgd'" in run.stdout and "'apgd-t'" in run.stdout and "'ramp'" in run.stdout

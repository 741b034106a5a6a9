"""A fresh clone with nothing beside it runs the README's first command offline.

The clone is the working tree as git sees it (tracked files plus untracked ones git does not ignore),
copied into an empty temporary folder: no ../shared beside it, no ``RBX_*`` variables, a temporary
HOME. To save the several minutes of a torch install it gets a virtualenv of its own that sees this
checkout's installed packages (but not this checkout's rbx); ``make demo`` then installs the clone's
rbx into it itself, exactly as written in the README. A Python audit hook records every file the
demo's processes open, so the test can check that nothing outside the clone (no ../shared, no file
of this checkout) was read.
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

AUDIT = textwrap.dedent('''
    import os, sys
    _log = os.environ.get("RBX_TEST_AUDIT_LOG")
    if _log:
        def _hook(event, args, _log=_log):
            if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
                try:
                    path = os.fsdecode(args[0])
                    if not path.startswith(("/proc/", "/dev/")):
                        with open(_log, "a") as f:  # nested open: the hook ignores events while it writes
                            f.write(os.path.abspath(path) + "\\n")
                except Exception:
                    pass
        _busy = [False]
        def _guarded(event, args):
            if _busy[0]:
                return
            _busy[0] = True
            try:
                _hook(event, args)
            finally:
                _busy[0] = False
        sys.addaudithook(_guarded)
''')


def _working_tree_copy(dest: Path) -> None:
    """What a clone of this working tree would hold (tracked and untracked-but-not-ignored files), as a git repo."""
    files = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                           capture_output=True, check=True).stdout.decode().split("\0")
    for rel in filter(None, files):
        src = REPO / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "clone"]):
        subprocess.run(["git", "-C", str(dest), *cmd], check=True, capture_output=True, env=env)


def _venv_seeing_installed_packages(clone: Path, audit_dir: Path) -> None:
    """``clone/.venv`` whose site-packages also sees this environment's packages (torch & co.), not its rbx."""
    subprocess.run([sys.executable, "-m", "venv", str(clone / ".venv")], check=True, capture_output=True)
    purelib = Path(subprocess.run([str(clone / ".venv" / "bin" / "python"), "-c",
                                   "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                  capture_output=True, text=True, check=True).stdout.strip())
    ours = [p for p in {sysconfig.get_paths()["purelib"], *site.getsitepackages()} if Path(p).is_dir()]
    # A virtualenv that itself sees another one's packages through a .pth path line (a git worktree's .venv
    # pointing at the main checkout's): those directories too, else the clone would install torch & co. again.
    for d in list(ours):
        for pth in sorted(Path(d).glob("*.pth")):
            for line in pth.read_text().splitlines():
                line = line.strip()
                if line and not line.startswith(("#", "import")) and Path(line).is_dir() \
                        and not Path(line).resolve().is_relative_to(REPO) and line not in ours:
                    ours.append(line)
    # Plain path lines: the directories join sys.path, but their own .pth files (this checkout's editable
    # rbx) are not processed, so `import robustbench_ext` can only find the clone's.
    (purelib / "zz_shared_packages.pth").write_text("\n".join(ours) + "\n")
    (audit_dir / "sitecustomize.py").write_text(AUDIT)


@pytest.mark.slow
def test_fresh_clone_runs_make_demo_offline(tmp_path):
    if shutil.which("make") is None or shutil.which("git") is None:
        pytest.skip("needs make and git")
    clone, home, audit = tmp_path / "clone", tmp_path / "home", tmp_path / "audit"
    for d in (clone, home, audit):
        d.mkdir()
    _working_tree_copy(clone)
    assert not (clone.parent / "shared").exists()
    _venv_seeing_installed_packages(clone, audit)
    log = tmp_path / "opened.txt"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RBX_", "PYTHON", "VIRTUAL_ENV"))}
    env.update(HOME=str(home), PYTHONPATH=str(audit), RBX_TEST_AUDIT_LOG=str(log), PYTHONNOUSERSITE="1",
               PATH=os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if str(REPO) not in p))
    first = next(line for line in (clone / "README.md").read_text().splitlines() if line.startswith("make "))
    command = first.split("#")[0].split()
    assert command == ["make", "demo"]
    run = subprocess.run(command, cwd=clone, env=env, capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    print(run.stdout, run.stderr[-2000:], sep="\n")

    # The printed union table, from the embedded model on the embedded slice.
    out = run.stdout
    assert "model    cifar10-smallcnn-linf-at (smallcnn)" in out
    assert "embedded 1,000-image class-balanced slice" in out
    for row in ("clean", "Linf:8/255", "L2:0.5", "L1:12", "union"):
        assert any(line.startswith(row) for line in out.splitlines()), row
    # It said what it was doing, on stderr, with no terminal attached.
    assert "rbx: Linf:8/255 pma: broke" in run.stderr and "ETA" in run.stderr
    # The record and its provenance: the package's own model and data, inside the clone.
    (record,) = (clone / "results-demo" / "records").glob("*.json")
    rec = json.loads(record.read_text())
    assert rec["model"]["source"].startswith(str(clone)) and rec["model"]["source"].endswith("assets/cifar10_smallcnn_linf_at.pt")
    assert rec["dataset"]["name"] == "cifar10-1k" and rec["dataset"]["location"].startswith(str(clone))
    assert (clone / "results-demo" / "leaderboard.md").is_file()
    # make demo ends by saying where the results are and how to get rbx on PATH (issue 28)
    assert "rbx: done. The record is in results-demo/records/" in out
    assert "put it on PATH:  source .venv/bin/activate" in out
    # The demo leaves the clone's git status clean (results-demo/ and .venv/ are ignored).
    status = subprocess.run(["git", "-C", str(clone), "status", "--porcelain"], capture_output=True, text=True).stdout
    assert status == "", status
    # Nothing outside the clone was read: no ../shared, no file of this checkout (its installed packages aside).
    opened = {Path(p) for p in log.read_text().splitlines()} if log.is_file() else set()
    assert any(str(p).startswith(str(clone)) for p in opened), "the audit hook recorded nothing"
    venv = REPO / ".venv"
    leaked = sorted(str(p) for p in opened
                    if (p.is_relative_to(REPO) and not p.is_relative_to(venv)) or p.is_relative_to(REPO.parent / "shared"))
    assert not leaked, leaked[:10]

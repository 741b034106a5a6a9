"""Where rbx looks for local files: one search-path rule for data, models and suites."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

#: The folder holding the ``robustbench_ext`` package: the repository root in a checkout or editable install.
REPO_ROOT = Path(__file__).resolve().parents[1]
#: Package data installed with rbx: the embedded reference model and CIFAR-10 slice (see ``assets/README.md``).
ASSETS = Path(__file__).resolve().parent / "assets"


def search_path(env_var: str, folder: str, *, shared: bool = True, extra: tuple[Path, ...] = ()) -> list[Path]:
    """Folders to search, in order, without duplicates.

    ``$env_var`` (``os.pathsep``-separated), ``./<folder>``, ``<repo>/<folder>``, then, with ``shared``,
    ``../shared/<folder>`` beside the working directory and beside the repository, then ``extra``.
    """
    candidates = [Path(p) for p in os.environ.get(env_var, "").split(os.pathsep) if p]
    candidates += [Path(folder), REPO_ROOT / folder]
    if shared:
        candidates += [Path("..") / "shared" / folder, REPO_ROOT.parent / "shared" / folder]
    candidates += list(extra)
    seen: set[str] = set()
    out = []
    for p in candidates:
        key = str(p.resolve())
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


def describe_search(env_var: str, dirs: list[Path]) -> str:
    """The folders of a search path as one readable phrase for error messages (``$RBX_MODELS`` unset, ./models, ...)."""
    shown = [str(d) for d in dirs]
    if not os.environ.get(env_var):
        shown.insert(0, f"${env_var} (unset)")
    return ", ".join(shown)


@contextlib.contextmanager
def download_guard(root: Path):
    """On failure, remove what a download created under ``root`` (and ``root`` itself if it created it).

    A failed download (offline, say) must not leave an empty ``./data`` or a partial archive behind.
    """
    root = Path(root)
    existed = root.exists()
    before = set(root.iterdir()) if existed and root.is_dir() else set()
    try:
        yield
    except BaseException:
        if not existed:
            shutil.rmtree(root, ignore_errors=True)
        elif root.is_dir():
            for p in set(root.iterdir()) - before:
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        raise

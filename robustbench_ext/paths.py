"""Local files: one search-path rule for data, models and suites, and the one way rbx writes a file
(atomically, after checking the folder is writable, so no reader ever sees half a result)."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

from .errors import ResultsError

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


def ensure_writable(results_dir: Path) -> Path:
    """Prove ``results_dir`` is writable before any work is done, and leave nothing behind.

    Folders that did not exist are created for the test and removed again, so a run that fails later
    (a missing model, say) leaves no empty results directory; writers create them when they write.
    """
    results_dir = Path(results_dir)
    missing = []
    p = results_dir.absolute()
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    try:
        results_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=results_dir, prefix=".rbx-write-test-", delete=True):
            pass
    except OSError as exc:
        raise ResultsError(f"cannot write to results directory {results_dir} ({exc.strerror or exc}); pass a writable --results-dir") from None
    finally:
        for d in missing:  # innermost first
            try:
                d.rmdir()
            except OSError:
                break
    return results_dir


def remove_if_empty(folder: Path) -> None:
    """Remove ``folder`` if it exists and is empty (an evaluation-state folder after its run finished)."""
    try:
        Path(folder).rmdir()
    except OSError:
        pass


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one, never a part."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; results are meant to be shared
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))

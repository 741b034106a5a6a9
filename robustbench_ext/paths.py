"""Where rbx looks for local files: one search-path rule for data, models and suites."""

from __future__ import annotations

import os
from pathlib import Path

#: The folder holding the ``robustbench_ext`` package: the repository root in a checkout or editable install.
REPO_ROOT = Path(__file__).resolve().parents[1]


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

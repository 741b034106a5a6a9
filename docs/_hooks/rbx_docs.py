"""MkDocs hooks for rbx's docs: what the site generates instead of having it typed by hand.

- ``on_files``: the measurement write-ups committed under ``results/`` (``*.md``, and every local file they
  link to: plots, records) become pages of the site under ``results/``, so the docs link to them and the
  links are checked like any other (``mkdocs build --strict`` fails on a broken one);
- ``on_page_markdown`` expands these markers (an HTML comment alone on its line):

  ``<!-- rbx:public-api -->``       one mkdocstrings block per name of ``robustbench_ext.__all__``
  ``<!-- rbx:packages -->``         one mkdocstrings block per sub-package's public face (its ``__init__``)
  ``<!-- rbx:registry KIND -->``    the table ``rbx list KIND`` prints (attacks, defenses, models, ...)
  ``<!-- rbx:structure -->``        the output of ``python benchmarks/structure.py`` for this tree

- ``on_page_content`` turns the Sphinx roles of rbx's docstrings (``:class:`~a.b.C```) into code spans.

The CLI reference is mkdocs-click's (``docs/reference/cli.md``).
"""

from __future__ import annotations

import html
import inspect
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "results"
#: Folders of results/ that hold run artifacts, not write-ups.
_SKIP = {"train", "records"}
_LINK = re.compile(r"\]\(\s*<?([^)\s>#]+)>?(?:#[^)]*)?\)")
_MARKER = re.compile(r"^<!-- rbx:([a-z-]+)(?: ([\w-]+))? -->$", re.M)
_ROLE = re.compile(r":(?:mod|class|func|meth|data|attr|exc|obj):<code>(~?)([^<]+)</code>")


# ---- results/ pages ------------------------------------------------------------------------------
def _add(files, rel: str, config) -> None:
    if files.get_file_from_path(rel) is None:
        files.append(File(rel, str(ROOT), config["site_dir"], config["use_directory_urls"]))


def on_files(files, config):
    """Add the write-ups under results/ and the local files they link to."""
    for md in sorted(RESULTS.rglob("*.md")):
        rel = md.relative_to(ROOT)
        if _SKIP & set(rel.parts[1:-1]):
            continue
        _add(files, rel.as_posix(), config)
        for target in _LINK.findall(md.read_text(encoding="utf-8")):
            if "://" in target or target.startswith(("mailto:", "/")):
                continue
            path = (md.parent / target).resolve()
            if path.is_file() and path.is_relative_to(ROOT) and path.suffix != ".md":
                _add(files, path.relative_to(ROOT).as_posix(), config)
    return files


# ---- generated sections --------------------------------------------------------------------------
def _public_api() -> str:
    """``::: dotted.path`` for every public name, at the module that defines it (the registries: their class)."""
    import robustbench_ext as rbx
    from robustbench_ext.registry import Registry

    blocks, registries = [], []
    for name in rbx.__all__:
        obj = getattr(rbx, name)
        if isinstance(obj, Registry):
            registries.append(name)
        elif inspect.isclass(obj) or inspect.isfunction(obj):
            blocks.append(f"::: {obj.__module__}.{obj.__qualname__}\n")
    if registries:
        blocks.append(f"### The registries\n\n{', '.join(f'`{n}`' for n in registries)} (all in "
                      "`robustbench_ext.registry`) are instances of one class:\n\n"
                      "::: robustbench_ext.registry.Registry\n    options:\n      heading_level: 4\n")
    return "\n".join(blocks)


def _packages() -> str:
    """One block per sub-package of the engine and per plugin package, found by walking the package."""
    import robustbench_ext as rbx

    names = [m.name for m in pkgutil.iter_modules(rbx.__path__) if m.ispkg and not m.name.startswith("_")]
    out = []
    for name in names:
        out.append(f"## `robustbench_ext.{name}`\n\n::: robustbench_ext.{name}\n    options:\n"
                   "      show_root_heading: false\n      heading_level: 3\n")
    return "\n".join(out)


def _registry(kind: str) -> str:
    from robustbench_ext.registry import REGISTRIES

    if kind not in REGISTRIES:
        raise ValueError(f"rbx:registry: unknown kind {kind!r}; known: {', '.join(REGISTRIES)}")
    rows = ["| name | what it is |", "| --- | --- |"]
    for e in REGISTRIES[kind].entries():
        rows.append(f"| `{e.display.replace('|', '&#124;')}` | {html.escape(e.summary).replace('|', '&#124;')} |")
    return "\n".join(rows)


def _structure() -> str:
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "structure.py"), str(ROOT)], capture_output=True,
                         text=True, check=True, cwd=ROOT).stdout
    out = out.replace(str(ROOT), "<this checkout>")
    return f"```text\n$ python benchmarks/structure.py\n{out.rstrip()}\n```"


def on_page_markdown(markdown, page, config, files):
    def expand(m: re.Match) -> str:
        what, arg = m.group(1), m.group(2)
        if what == "public-api":
            return _public_api()
        if what == "packages":
            return _packages()
        if what == "registry":
            return _registry(arg or "")
        if what == "structure":
            return _structure()
        raise ValueError(f"{page.file.src_uri}: unknown marker rbx:{what}")

    return _MARKER.sub(expand, markdown)


def on_page_content(html_text, page, config, files):
    """Sphinx roles in docstrings (``:class:`~robustbench_ext.x.Y```) as plain code spans."""
    out = _ROLE.sub(lambda m: f"<code>{m.group(2).rsplit('.', 1)[-1] if m.group(1) else m.group(2)}</code>", html_text)
    return out.replace("::</p>", ":</p>")

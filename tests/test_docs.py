"""The documentation is tested like code.

- ``mkdocs build --strict`` passes (skipped, with a message, where the ``docs`` extra is not installed): no
  broken link, no missing page, and the generated parts (CLI reference, API reference, registered plugins,
  package map) are there;
- every Python block of the docs marked ``<!-- tested -->`` runs, page by page, in a fresh interpreter; a
  page that registers a plugin (the "adding an attack / defense / dataset / model source" guides) must
  then show it in ``rbx list`` and pass that registry's contract tests;
- the README's Python blocks run (with a tiny ``n_examples``) and every ``rbx ...`` line of the README parses
  with the real command's options; the cheap ones (the embedded model and data) run through ``CliRunner``;
  every ``rbx ...`` command line in the docs parses too.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from robustbench_ext.cli import cli

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
README = REPO / "README.md"
TESTED = re.compile(r"^<!-- tested -->\n```python\n(.*?)^```", re.S | re.M)
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.S | re.M)
#: Synopsis notation, not a command line: placeholders, alternatives, optional parts.
SYNOPSIS = re.compile(r"\.\.\.|\||[()\[\]]|\b(NAME|OPTIONS)\b")


def _pages() -> list[Path]:
    return sorted(p for p in DOCS.rglob("*.md") if "_" not in p.relative_to(DOCS).parts[0][:1])


def _tested_pages() -> list[Path]:
    return [p for p in _pages() if TESTED.search(p.read_text())]


# ---- the site -------------------------------------------------------------------------------------
def _missing_docs_tools() -> list[str]:
    return [m for m in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python", "mkdocs_click")
            if importlib.util.find_spec(m.split(".")[0]) is None
            or (m == "mkdocstrings_handlers.python" and importlib.util.find_spec(m) is None)]


def test_mkdocs_build_strict(tmp_path):
    missing = _missing_docs_tools()
    if missing:
        pytest.skip(f"the docs tools are not installed ({', '.join(missing)}): pip install -e '.[docs]'")
    site = tmp_path / "site"
    run = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(site)], cwd=REPO,
                         capture_output=True, text=True, timeout=1200, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    assert not re.search(r"^WARNING\b", run.stderr, re.M), run.stderr[-4000:]

    # The generated parts are there, and complete.
    cli_page = (site / "reference" / "cli" / "index.html").read_text()
    for name in cli.commands:
        assert f"rbx {name} [OPTIONS]" in cli_page, name
    from robustbench_ext.registry import REGISTRIES

    plugins = (site / "reference" / "plugins" / "index.html").read_text()
    for kind, registry in REGISTRIES.items():
        for entry in registry.entries():
            assert entry.name in plugins, (kind, entry.name)
    api = (site / "reference" / "api" / "index.html").read_text()
    for qualified in ("robustbench_ext.evaluation.api.evaluate", "robustbench_ext.evaluation.request.RunRequest",
                      "robustbench_ext.records.schema.RunRecord", "robustbench_ext.registry.Registry",
                      "robustbench_ext.attack", "robustbench_ext.training"):
        assert f'id="{qualified}"' in api, qualified
    assert ":class:" not in api and ":mod:" not in api  # the docstrings' Sphinx roles were turned into code
    architecture = (site / "architecture" / "index.html").read_text()
    assert "modules per package:" in architecture and "floors" in architecture
    assert (site / "results" / "defenses" / "index.html").is_file()  # the write-ups the measurement pages link to


# ---- tested code blocks ---------------------------------------------------------------------------
PROLOGUE = """
import torch
torch.set_num_threads(2)
from robustbench_ext.registry import REGISTRIES
_BEFORE = {k: set(r.names()) for k, r in REGISTRIES.items()}
"""

#: After a page's code: what every newly registered plugin must satisfy (the page's text is in _PAGE).
EPILOGUE = """
import re, sys
from pathlib import Path
from click.testing import CliRunner
from robustbench_ext.cli import cli

_NEW = {k: sorted(set(r.names()) - _BEFORE[k]) for k, r in REGISTRIES.items()}
for kind, names in _NEW.items():
    if not names:
        continue
    listing = CliRunner().invoke(cli, ["list", kind])
    assert listing.exit_code == 0, listing.output
    for name in names:
        assert re.search(rf"^{re.escape(name)}[: ]", listing.output, re.M), f"rbx list {kind} does not show {name}"
    print(f"rbx list {kind} shows", names)


def _spec(kind, name):
    entry = next(e for e in REGISTRIES[kind].entries() if e.name == name)
    if not entry.takes_arg:
        return name
    found = re.findall(rf'[^f]"({re.escape(name)}:[^"{{}}]+)"', _PAGE)   # a literal spec, not an f-string
    assert found, f"the page registers {kind[:-1]} {name}:ARG but never uses it with an argument"
    return found[0]


def _pytest(test_file, names):
    import pytest
    rc = pytest.main([str(_REPO / "tests" / test_file), "-q", "-p", "no:cacheprovider", "--rootdir", str(_REPO),
                      "-c", str(_REPO / "pyproject.toml"), "-k", " or ".join(names)])
    assert rc == 0, f"{test_file} failed for {names} (exit {rc})"


def _run(args):
    res = CliRunner().invoke(cli, ["run", *args, "--n-examples", "8", "--threat", "Linf:8/255", "--attack", "fgsm",
                                   "--results-dir", "docs-check", "--no-progress", "--quiet", "--json"])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout[res.stdout.index("{"):])


import json
if _NEW["attacks"]:
    _pytest("test_attack_contract.py", _NEW["attacks"])
if _NEW["defenses"]:
    _pytest("test_defenses.py", _NEW["defenses"])
for name in _NEW["datasets"]:
    from robustbench_ext.data import EvalData
    spec = _spec("datasets", name)
    data = REGISTRIES["datasets"].create(spec, n_examples=8)
    assert isinstance(data, EvalData) and data.n == 8 and data.x.dtype == torch.float32 and data.y.dtype == torch.int64
    assert data.x.ndim == 4 and 0 <= float(data.x.min()) and float(data.x.max()) <= 1
    assert torch.equal(REGISTRIES["datasets"].create(spec, n_examples=8).x, data.x)  # the first N, always the same
    record = _run(["--model", "cifar10-smallcnn-linf-at", "--dataset", spec])
    assert record["dataset"]["name"] == spec and record["n"] == 8
for name in _NEW["models"]:
    from robustbench_ext.models import LoadedModel, load_model
    spec = _spec("models", name)
    loaded = load_model(spec)
    assert isinstance(loaded, LoadedModel) and not loaded.module.training
    with torch.no_grad():
        out = loaded.module(torch.rand(2, 3, 32, 32))
    assert out.shape[0] == 2 and out.ndim == 2
    record = _run(["--model", spec, "--dataset", "cifar10-1k"])
    assert record["model"]["name"] == loaded.name
print("DOCS-CHECK-DONE")
"""


def _script(blocks: list[str], page: Path | None) -> str:
    body = "\n\n".join(textwrap.dedent(b) for b in blocks)
    if page is None:
        return PROLOGUE + body
    return (PROLOGUE + f"_REPO = __import__('pathlib').Path({str(REPO)!r})\n_PAGE = {page.read_text()!r}\n"
            + body + "\n" + EPILOGUE)


def _python(script: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RBX_")}
    return subprocess.run([sys.executable, "-c", script], cwd=cwd, capture_output=True, text=True, timeout=1200,
                          env={**env, "OMP_NUM_THREADS": "2"})


@pytest.mark.parametrize("page", _tested_pages(), ids=lambda p: str(p.relative_to(DOCS)))
def test_tested_code_runs(page, tmp_path):
    blocks = TESTED.findall(page.read_text())
    run = _python(_script(blocks, page), tmp_path)
    assert run.returncode == 0, f"{page.relative_to(REPO)}:\n{run.stdout[-3000:]}\n{run.stderr[-5000:]}"
    assert "DOCS-CHECK-DONE" in run.stdout


def test_the_guides_are_tested():
    """Each "adding ..." guide has tested code, and registers something (so the epilogue's checks apply)."""
    guides = sorted((DOCS / "extending").glob("*.md"))
    assert {g.stem for g in guides} >= {"attack", "defense", "dataset", "model-source"}
    for guide in guides:
        text = guide.read_text()
        assert TESTED.search(text), guide.name
        assert re.search(r"@(ATTACKS|DEFENSES|DATASETS|MODELS)\.register", "\n".join(TESTED.findall(text))), guide.name


# ---- the README -----------------------------------------------------------------------------------
def _blocks(text: str, *langs: str) -> list[str]:
    return [body for lang, body in FENCE.findall(text) if lang in langs]


def _command_lines(text: str) -> list[str]:
    """Every ``rbx ...`` line of the shell blocks (continuation lines joined, ``$ `` prompts dropped)."""
    lines = []
    for block in _blocks(text, "bash", "sh", "console", ""):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.strip().removeprefix("$ ")
            if line.startswith("rbx ") or line == "rbx":
                lines.append(line)
    return lines


def _parse(line: str) -> list[str]:
    """Parse ``line`` with the real command's options (nothing runs); return its arguments."""
    args = shlex.split(line, comments=True)[1:]
    if args[:1] in (["--version"], ["--help"]):
        return args
    cmd = cli.get_command(click.Context(cli), args[0])
    assert cmd is not None, f"{line}: no command {args[0]!r}"
    try:
        cmd.make_context(args[0], list(args[1:]), parent=click.Context(cli, info_name="rbx"))
    except click.BadParameter as exc:
        if "does not exist" not in str(exc):  # the option is right; only its file is not here
            raise AssertionError(f"{line}: {exc.format_message()}") from None
    except click.UsageError as exc:
        raise AssertionError(f"{line}: {exc.format_message()}") from None
    return args


def test_readme_commands_parse_and_the_cheap_ones_run(tmp_path, monkeypatch):
    lines = _command_lines(README.read_text())
    assert len(lines) >= 5
    for line in lines:
        assert not SYNOPSIS.search(line.split("#")[0]), f"README: {line!r} is a synopsis, not a command line"
        _parse(line)
    monkeypatch.chdir(tmp_path)
    ran = 0
    for line in lines:
        args = shlex.split(line, comments=True)[1:]
        cheap = (args[:1] == ["list"] or args[:1] == ["--version"]
                 or (args[:1] == ["run"] and "cifar10-smallcnn-linf-at" in args and "cifar10-1k" in args))
        if args[:1] == ["run"] and cheap:
            args = [a for i, a in enumerate(args) if a != "--n-examples" and (i == 0 or args[i - 1] != "--n-examples")]
            args += ["--n-examples", "4", "--no-progress", "--quiet"]
            if "--threat" not in args:
                args += ["--threat", "Linf:8/255", "--attack", "fgsm"]
        if cheap or (args[:1] == ["leaderboard"] and ran):
            res = CliRunner().invoke(cli, args)
            assert res.exit_code == 0, f"README: {line}\n{res.output}"
            ran += 1
    assert ran >= 3, "the README should show commands a reader can run offline"


def test_readme_python_runs(tmp_path):
    blocks = _blocks(README.read_text(), "python")
    assert blocks, "the README shows evaluate() from Python"
    small = [re.sub(r"n_examples=\d+", "n_examples=8", b) for b in blocks]
    run = _python(_script(small, None) + "\nprint('README-DONE')\n", tmp_path)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    assert "README-DONE" in run.stdout and "union" in run.stdout  # print(ev) printed the table


def test_every_command_line_in_the_docs_parses():
    checked = 0
    for page in _pages():
        for line in _command_lines(page.read_text()):
            if SYNOPSIS.search(line.split(" #")[0]):
                continue
            _parse(line)
            checked += 1
    assert checked >= 30, checked


def test_readme_links_resolve():
    """Every relative link of the README points at a file of this tree (and an anchor at a heading there)."""
    text = README.read_text()
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    assert links
    for link in links:
        if "://" in link:
            continue
        path, _, anchor = link.partition("#")
        target = REPO / path
        assert target.exists(), f"README links to {link}, which is not in the tree"
        if anchor:
            slugs = {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
                     for h in re.findall(r"^#+ (.*)$", target.read_text(), re.M)}
            assert anchor in slugs, f"README links to {link}: no heading with that anchor"


def test_architecture_package_map_names_every_package_and_plugin_module():
    """The package map is prose; it must still name every sub-package and every attack/defense plugin module
    (it fell behind once: issues 26-31 added packages' modules and attacks it did not mention)."""
    root = Path(__file__).resolve().parents[1]
    text = (root / "docs" / "architecture.md").read_text()
    start = text.index("## The package map")
    block = text[start:text.index("## ", start + 5)]
    for pkg in sorted(p.name for p in (root / "robustbench_ext").iterdir() if (p / "__init__.py").exists()):
        assert f"  {pkg}/" in block, pkg
    plugins = {"fab", "square", "sparse", "pgd", "apgd", "pma", "fmn", "cw", "deepfool", "fgsm", "ltd", "mtard",
               "ramp", "sovr"}
    for name in plugins:
        assert name in block, name

"""Leaderboards, plots, reports and RobustBench export, all derived from real records."""

import html as html_lib
import json
import shutil
import subprocess

import pandas as pd
import pytest
from click.testing import CliRunner

from robustbench_ext._compat import import_robustbench
from robustbench_ext.cli import cli
from robustbench_ext.reporting.boards import embed_in_readme, write_all
from robustbench_ext.records.store import read_record
from robustbench_ext.reporting.export import KEYS, entries, export
from robustbench_ext import evaluate
from robustbench_ext.evaluation.suites import AttackSpec, ThreatSpec
from robustbench_ext.attack.threat import ThreatModel

FAST = ("pma:steps=6",)


def _specs(*threats, attacks=FAST):
    return [ThreatSpec(ThreatModel.parse(t), tuple(AttackSpec.parse(a) for a in attacks)) for t in threats]


@pytest.fixture(scope="module")
def results(tmp_path_factory, small_cnn, cifar200):
    """A results directory with two models' records (one with an eps sweep) and an AutoAttack record."""
    out = tmp_path_factory.mktemp("results")
    data = type(cifar200)(cifar200.name, cifar200.x[:40], cifar200.y[:40], cifar200.source, cifar200.location,
                          cifar200.split, cifar200.classes)
    threats = _specs("Linf:8/255", "L2:0.5", "L1:12")
    evaluate(small_cnn, data, threats, suite="mini-union", progress=False, eps_sweep=(0.5, 2.0)).write(out)
    from robustbench_ext.models.loading import load_model
    import torch
    other = load_model("cifar10-smallcnn-linf-at")
    with torch.no_grad():
        for p in other.module.parameters():
            p.mul_(0.9)
    other.name = "smallcnn-shrunk"
    evaluate(other, data, threats, suite="mini-union", progress=False).write(out)
    aa = evaluate(small_cnn, data, _specs("Linf:8/255", "L2:0.5", attacks=("autoattack:budget=0.05",)),
                  suite="aa-mini", progress=False).write(out)
    return out, data, aa


def test_leaderboard_files_are_derived_and_ranked(results):
    out, data, _ = results
    paths = write_all(out)
    names = {p.name for p in paths}
    assert {"leaderboard.md", "leaderboard.csv", "leaderboard.html"} <= names
    df = pd.read_csv(out / "leaderboard.csv")
    board = df[df["suite"] == "mini-union"]
    assert list(board["rank"]) == [1, 2] and board["union"].is_monotonic_decreasing
    for col in ("clean", "Linf:8/255", "L2:0.5", "L1:12", "union", "union_lo", "union_hi", "n", "device", "date"):
        assert col in df.columns
    md = (out / "leaderboard.md").read_text()
    assert "## mini-union" in md and "## aa-mini" in md
    links = [line.split("](")[1].split(")")[0] for line in md.splitlines() if line.startswith("- [")]
    assert [t for t in links if t.startswith("#")], "no table of contents"
    for target in [t for t in links if not t.startswith("#")]:
        assert (out / target).is_file(), target  # every linked plot exists
    assert (out / "plots" / "mini-union_eps_Linf.png").is_file()  # the sweep record gives the eps plot
    html = (out / "leaderboard.html").read_text()
    assert "<table" in html and "smallcnn-shrunk" in html and "<script src" not in html and "<link" not in html
    # board-level plots inside the page (the eps sweep), per-record plots as files beside it, linked
    assert html.count("data:image/png;base64,") == 3
    linked = [t for t in html.split('href="')[1:] if t.startswith("plots/")]
    assert len(linked) >= 6 and all((out / t.split('"')[0]).is_file() for t in linked)
    # AutoAttack's union beside rbx's: the aa-mini record was evaluated with AutoAttack itself
    assert "AutoAttack union" in html and "autoattack_union" in df.columns
    aa_row = df[df["suite"] == "aa-mini"].iloc[0]
    assert aa_row["autoattack_union"] == aa_row["union"] and aa_row["autoattack_source"] == "record"


#: Appended to a copy of the page in the render test: measures the layout at the window's width and tries the
#: search box, writing what it found into the DOM that --dump-dom prints.
PROBE = """<script>
window.addEventListener("load", function () {
  var out = {viewport: document.documentElement.clientWidth, page: document.documentElement.scrollWidth, tables: []};
  document.querySelectorAll("table.board").forEach(function (t) {
    var r = t.getBoundingClientRect();
    out.tables.push({board: t.dataset.board, right: Math.ceil(r.right), scroll: t.scrollWidth, width: Math.ceil(r.width)});
  });
  var input = document.getElementById("filter");
  input.value = "shrunk";
  input.dispatchEvent(new Event("input"));
  out.visible = Array.prototype.filter.call(document.querySelectorAll("tbody tr"), function (tr) {
    return tr.offsetParent !== null; }).map(function (tr) { return tr.cells[1].textContent.trim(); });
  document.body.dataset.probe = JSON.stringify(out);
});
</script>"""


def _chromium():
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if chromium is None:
        pytest.skip("Chromium is not installed (apt-get install chromium); the HTML render check needs it")
    return chromium


def _dump_dom(chromium: str, page, profile, width: int = 1400) -> str:
    proc = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                           "--disable-component-update", "--disable-sync", "--no-first-run", f"--window-size={width},1000",
                           f"--user-data-dir={profile}", "--dump-dom", page.resolve().as_uri()],
                          capture_output=True, text=True, timeout=120)
    return proc.stdout


def test_html_renders_in_headless_chromium_and_fits_1400_px(results, tmp_path):
    chromium = _chromium()
    out, _, _ = results
    write_all(out)
    dom = _dump_dom(chromium, out / "leaderboard.html", tmp_path / "profile")
    assert 'data-sortable="ready"' in dom and 'data-searchable="ready"' in dom  # the scripts ran
    assert dom.count("<table") == 2 and dom.count("<tr>") >= 5
    assert 'src="data:image/png;base64,' in dom
    assert 'nav class="toc"' in dom and dom.index("mini-union") < dom.index("aa-mini")  # contents, main board first
    probe_page = out / "probe.html"
    probe_page.write_text((out / "leaderboard.html").read_text().replace("</body>", PROBE + "</body>"))
    try:
        dom = _dump_dom(chromium, probe_page, tmp_path / "profile")
    finally:
        probe_page.unlink()
    probe = json.loads(html_lib.unescape(dom.split('data-probe="', 1)[1].split('"', 1)[0]))
    assert probe["page"] <= probe["viewport"] <= 1400, probe  # no horizontal scroll bar at 1400 px
    for t in probe["tables"]:
        assert t["right"] <= probe["viewport"] and t["scroll"] <= t["width"], t
    assert probe["visible"] and all("shrunk" in v for v in probe["visible"]), probe["visible"]


def test_a_wide_corruption_board_fits_too(tmp_path):
    """Fifteen corruption columns: the widest board rbx makes."""
    chromium = _chromium()
    from robustbench_ext.reporting.boards import Board, render_html

    rows = pd.DataFrame([{
        "rank": 1, "model": "a-model-with-a-rather-long-name-of-the-kind-training-scripts-produce-e1", "architecture": "wrn-28-10",
        "clean": 0.9, "clean_ci": (0.88, 0.92), "mean": 0.7, "mean_ci": (0.68, 0.72), "n": 10000, "attacks": "CIFAR-10-C",
        "dataset": "CIFAR-10-C", "device": "NVIDIA H200", "date": "2026-12-04", "seconds": 1.0, "record": "records/x.json",
        **{c: 0.7 for c in CORRUPTIONS}, **{f"{c} ci": (0.69, 0.71) for c in CORRUPTIONS}}])
    page = tmp_path / "wide.html"
    board = Board("cifar10-corruptions", list(CORRUPTIONS), rows, dataset="CIFAR-10-C", n=10000, images="f" * 64, kind="corruptions")
    page.write_text(render_html([board], 1).replace("</body>", PROBE + "</body>"))
    dom = _dump_dom(chromium, page, tmp_path / "profile")
    probe = json.loads(html_lib.unescape(dom.split('data-probe="', 1)[1].split('"', 1)[0]))
    assert probe["page"] <= probe["viewport"] and probe["tables"][0]["right"] <= probe["viewport"], probe


CORRUPTIONS = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
               "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate", "jpeg_compression")


def test_report_command(results, tmp_path):
    out, _, _ = results
    rec = sorted((out / "records").glob("*mini-union*.json"))[0]
    res = CliRunner().invoke(cli, ["report", str(rec), "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    text = next(tmp_path.glob("*_report.md")).read_text()
    assert "union" in text and text.count("![") >= 3
    assert all((tmp_path / line.split("](")[1].rstrip(")")).is_file() for line in text.splitlines() if line.startswith("!["))


def test_robustbench_export_is_read_by_robustbench(results, tmp_path, monkeypatch):
    out, _, aa_path = results
    rec = read_record(sorted((out / "records").glob("*cifar10-smallcnn*mini-union*.json"))[0])
    meta = {"link": "https://example.org/paper", "name": "A paper", "authors": "A. Author", "venue": "arXiv, Nov 2026",
            "reported": "51.06"}  # RobustBench's "reported" is the paper's number: only the metadata gives it
    paths = export(rec, tmp_path / "model_info", "Author2026Union_smallcnn", meta, read_record(aa_path))
    assert sorted(p.parent.name for p in paths) == ["L2", "Linf"]  # no L1 board in RobustBench
    for p in paths:
        d = json.loads(p.read_text())
        assert set(KEYS) <= set(d) and set(d) <= set(KEYS) | {"external", "footnote", "unreliable"}
        for k in ("clean_acc", "autoattack_acc", "reported"):
            assert isinstance(d[k], str) and len(d[k].split(".")[1]) == 2
        assert d["dataset"] == "cifar10" and d["eps"] in ("8/255", "0.5")
    # robustbench's own readers: the LaTeX leaderboard and the HTML leaderboard's loader and ranking.
    monkeypatch.chdir(tmp_path)
    utils = import_robustbench("utils")
    latex = utils.get_leaderboard_latex("cifar10", "Linf")
    assert "Author2026Union" in latex and json.loads(paths[0].read_text() if "Linf" in str(paths[0]) else paths[1].read_text())["clean_acc"] in latex
    template = import_robustbench("leaderboard.template")
    from jinja2 import DictLoader, Environment
    monkeypatch.setattr(template, "Environment", lambda **kw: Environment(loader=DictLoader(
        {"leaderboard.html.j2": "{% for m in models %}{{ m.name }}|{{ m[acc_field] }}|{{ m.clean_acc }};{% endfor %}"})))
    html = template.generate_leaderboard("cifar10", "L2", models_folder=str(tmp_path / "model_info"))
    assert "A paper|" in html


def test_export_without_autoattack_says_so(results):
    out, _, _ = results
    rec = read_record(sorted((out / "records").glob("*cifar10-smallcnn*mini-union*.json"))[0])
    e = entries(rec)
    assert "not AutoAttack's" in e["Linf"]["footnote"] and "JPEG copy" in e["Linf"]["footnote"]


def test_eps_sweep_is_recorded_apart_from_the_union(results):
    out, _, _ = results
    rec = read_record(sorted((out / "records").glob("*cifar10-smallcnn*mini-union*.json"))[0])
    assert [t.threat for t in rec.threats] == ["Linf:8/255", "L2:0.5", "L1:12"]
    sweep = {s["threat"]: s for s in rec.sweeps}
    assert [p["factor"] for p in sweep["Linf:8/255"]["points"]] == [0.5, 1.0, 2.0]
    main = next(p for p in sweep["L2:0.5"]["points"] if p["factor"] == 1.0)
    assert main["robust"]["accuracy"] == rec.threat("L2:0.5").robust.accuracy


def test_readme_embedding(results, tmp_path):
    out, _, _ = results
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- leaderboard:mini-union:start -->\nold\n<!-- leaderboard:mini-union:end -->\nend\n")
    embed_in_readme(readme, out, "mini-union")
    text = readme.read_text()
    assert "old" not in text and "smallcnn-shrunk" in text and text.startswith("intro") and text.endswith("end\n")

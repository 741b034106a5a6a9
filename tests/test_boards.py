"""Boards people read (issue 28): one board per (suite, image set) whatever the dataset's label, the main board first
with a table of contents, corruption boards last, the model card's links, and AutoAttack's union beside rbx's
where the results directory holds AutoAttack's flags for that model and those images."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from robustbench_ext import evaluate
from robustbench_ext.records.store import read_flags, read_record
from robustbench_ext.reporting.boards import build_boards, leaderboard_markdown, render_html, write_all

FAST = dict(batch_size=32, progress=False)


def _specs(*threats, attack="fgsm"):
    """Threat models with their cascade given in full, so any suite name labels the record."""
    from robustbench_ext.attack.threat import ThreatModel
    from robustbench_ext.evaluation.suites import AttackSpec, ThreatSpec

    return [ThreatSpec(ThreatModel.parse(t), (AttackSpec.parse(attack),)) for t in threats]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, small_cnn, cifar200):
    """Records of the small CNN: the same 24 images under two dataset labels, 16 other images, another suite, and
    AutoAttack on the 24 images."""
    out = tmp_path_factory.mktemp("boards")
    first = cifar200.first(24)
    relabelled = dataclasses.replace(first, name="my-cifar-copy", source="CIFAR-10, my own copy")
    threats = _specs("Linf:8/255", "L2:0.5")
    paths = {
        "a": evaluate(small_cnn, first, threats, suite="cifar10-union", **FAST).write(out),
        "relabelled": evaluate(_renamed(small_cnn, "smallcnn-again"), relabelled, threats, suite="cifar10-union", **FAST).write(out),
        "fewer": evaluate(small_cnn, cifar200.first(16), threats, suite="cifar10-union", **FAST).write(out),
        "other-suite": evaluate(small_cnn, cifar200.first(40), threats, suite="my-suite", **FAST).write(out),
        "aa": evaluate(small_cnn, first, _specs("Linf:8/255", "L2:0.5", attack="autoattack:budget=0.05"), suite="aa-check",
                       **FAST).write(out),
    }
    return out, paths


def _renamed(loaded, name):
    return dataclasses.replace(loaded, name=name)


def test_the_same_images_under_two_dataset_labels_share_one_board(runs):
    out, paths = runs
    boards = build_boards(out, main_suite="cifar10-union")
    union = [b for b in boards if b.suite == "cifar10-union"]
    assert sorted(b.n for b in union) == [16, 24]  # other images: another board
    (board24,) = [b for b in union if b.n == 24]
    assert set(board24.rows["model"]) == {"cifar10-smallcnn-linf-at", "smallcnn-again"}
    assert sorted(board24.labels) == sorted({read_record(paths["a"]).dataset["source"], "CIFAR-10, my own copy"})
    md = leaderboard_markdown(out, main_suite="cifar10-union")
    assert "Same images under 2 dataset labels" in md


def test_main_board_first_then_the_rest_with_a_table_of_contents(runs):
    out, _ = runs
    boards = build_boards(out, main_suite="cifar10-union")
    assert boards[0].main and boards[0].suite == "cifar10-union" and boards[0].n == 24  # not my-suite's 40 images
    assert sum(b.main for b in boards) == 1
    md = leaderboard_markdown(out, main_suite="cifar10-union")
    toc = [line for line in md.splitlines() if line.startswith("- [")]
    assert len(toc) == len(boards) and "(main board)" in toc[0]
    for b in boards:
        assert f'<a id="{b.anchor}"></a>' in md and f"(#{b.anchor})" in md
    # without a main suite named, the attack board with the most images leads
    assert build_boards(out)[0].suite == "my-suite"


def test_corruption_boards_come_last(tmp_path, small_cnn, cifar200):
    pytest.importorskip("imagecorruptions")
    from robustbench_ext.evaluation.corruptions import evaluate_corruptions

    evaluate_corruptions(small_cnn, "cifar10-c:base=cifar10-1k,source=generated", corruptions=["fog"], severities=[1],
                         n_examples=8, suite="c-suite", progress=False).write(tmp_path)
    evaluate(small_cnn, cifar200.first(4), _specs("Linf:8/255"), suite="zzz-suite", **FAST).write(tmp_path)
    kinds = [b.kind for b in build_boards(tmp_path)]
    assert kinds == ["threats", "corruptions"]


def test_autoattack_union_from_the_record_and_from_cached_flags(runs):
    out, paths = runs
    aa = read_record(paths["aa"])
    aa_flags = read_flags(paths["aa"], aa)
    # AutoAttack's per-sample verdicts, as benchmarks/aa_cache.py stores them (one file per threat model)
    rec = read_record(paths["a"])
    cache = out / "aa_cache"
    cache.mkdir()
    for i, t in enumerate(aa.threats):
        key = {"model_sha256": rec.model["sha256"], "data_sha256": rec.dataset["sha256"], "n": rec.n, "norm": t.norm,
               "eps": t.eps, "aa_version": "standard"}
        verdict = (aa_flags.robust[:, i] & aa_flags.clean_correct).tolist()
        (cache / f"{i}.json").write_text(json.dumps({"key": key, "robust": verdict, "seconds": 1.0, "components": []}))
    try:
        boards = build_boards(out, main_suite="cifar10-union")
        row = next(r for b in boards for _, r in b.rows.iterrows() if r["record"] == str(paths["a"]))
        view = row["aa"]
        assert view.source == "aa_cache" and not view.missing
        assert view.per_threat == {t.threat: t.robust.accuracy for t in aa.threats}
        assert view.union == pytest.approx(aa.union.accuracy)
        # a record evaluated with AutoAttack itself is its own AutoAttack number
        aa_row = next(r for b in boards for _, r in b.rows.iterrows() if r["record"] == str(paths["aa"]))
        assert aa_row["aa"].source == "record" and aa_row["aa"].union == aa.union.accuracy
        # a model behind input noise has the same sha256 but is another model: no AutoAttack number for it
        noisy = dataclasses.replace(rec, model={**rec.model, "randomized": {"kind": "gaussian-input-noise", "sigma": 0.1}})
        from robustbench_ext.reporting.autoattack import AAIndex

        assert AAIndex.scan(out).view(paths["a"], noisy, read_flags(paths["a"], rec)) is None
        write_all(out, main_suite="cifar10-union")
        csv = pd.read_csv(out / "leaderboard.csv")
        mine = csv[csv["record"] == str(paths["a"])].iloc[0]
        assert mine["autoattack_source"] == "aa_cache"
        assert mine["autoattack_union"] == pytest.approx(100 * aa.union.accuracy, abs=0.005)
        assert "AutoAttack union" in (out / "leaderboard.md").read_text()
    finally:
        for f in cache.glob("*.json"):
            f.unlink()
        cache.rmdir()


def test_model_card_links_reach_the_boards_and_only_web_links(runs, small_cnn, cifar200, tmp_path):
    card = dataclasses.replace(small_cnn, name="carded", extra={**small_cnn.extra, "card": {
        "model": "https://huggingface.co/org/carded", "paper": "javascript:alert(1)"}})
    evaluate(card, cifar200.first(8), _specs("Linf:8/255"), suite="s", **FAST).write(tmp_path)
    (board,) = build_boards(tmp_path)
    row = board.rows.iloc[0]
    assert row["model_link"] == "https://huggingface.co/org/carded" and row["paper_link"] is None
    html = render_html([board], 1)
    assert 'href="https://huggingface.co/org/carded"' in html and "javascript:" not in html
    md = leaderboard_markdown(tmp_path)
    assert "[carded](https://huggingface.co/org/carded)" in md
    # the reference models' card comes with the record (and from the registry for records made before it did)
    ref = read_record(next(Path(runs[0]).glob("records/*cifar10-smallcnn-linf-at*cifar10-union_n24.json")))
    assert ref.model["card"]["paper"] == "https://arxiv.org/abs/1706.06083"
    (old,) = [r for _, r in build_boards(runs[0], main_suite="cifar10-union")[0].rows.iterrows()
              if r["model"] == "cifar10-smallcnn-linf-at"]
    assert old["paper_link"] == "https://arxiv.org/abs/1706.06083"


def test_a_board_page_is_small_and_self_contained(runs):
    out, _ = runs
    write_all(out, main_suite="cifar10-union")
    html = (out / "leaderboard.html").read_text()
    assert len(html.encode()) < 200_000
    assert "http://" not in html.split("<body>")[0] and "<script src" not in html and "stylesheet" not in html
    assert np.all([(out / f.split('"')[0]).is_file() for f in html.split('href="')[1:] if f.startswith(("plots/", "records/"))])


def test_a_union_run_with_an_l0_threat_model_reaches_the_board_through_rbx_leaderboard(tmp_path, small_cnn, cifar200):
    """A record of a union run that includes L0 (pixels) shows on the board, Markdown, CSV and HTML, written by the
    `rbx leaderboard` command itself: its L0 column, the union beside it, each equal to the record's figures."""
    import warnings

    from click.testing import CliRunner

    from robustbench_ext.cli import cli
    from robustbench_ext.records.stats import percent

    # L0 by its black box alone: its panel of the loss plot has no curve (that plot once warned of an empty legend)
    threats = [*_specs("Linf:8/255"), *_specs("L0:10", attack="sparse-rs:queries=100")]
    path = evaluate(small_cnn, cifar200.first(16), threats, suite="cifar10-union-l0", **FAST).write(tmp_path)
    rec, flags = read_record(path), read_flags(path)
    assert [t.threat for t in rec.threats] == ["Linf:8/255", "L0:10"]
    # the union read from the per-sample flags: correct and robust under both, L0 included
    assert rec.union.count == int((flags.clean_correct & flags.robust.all(1)).sum())
    assert rec.union.accuracy <= min(t.robust.accuracy for t in rec.threats)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # e.g. an empty legend on the L0 panel of the loss plot
        res = CliRunner().invoke(cli, ["leaderboard", "--results-dir", str(tmp_path)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    acc = {t.threat: t.robust.accuracy for t in rec.threats} | {"clean": rec.clean.accuracy, "union": rec.union.accuracy}

    md = (tmp_path / "leaderboard.md").read_text()
    assert "## cifar10-union-l0" in md
    header = next(line for line in md.splitlines() if line.startswith("| rank"))
    cols = [c.strip() for c in header.strip("|").split("|")]
    assert cols.index("Linf:8/255") < cols.index("L0:10") < cols.index("union")
    row = next(line for line in md.splitlines() if line.startswith("|") and small_cnn.name in line)
    cells = [c.strip() for c in row.strip("|").split("|")]
    for name, value in acc.items():
        assert cells[cols.index(name)].split(" ")[0] == percent(value), name

    csv = pd.read_csv(tmp_path / "leaderboard.csv")
    (line,) = csv[csv["suite"] == "cifar10-union-l0"].to_dict("records")
    for name, value in acc.items():
        assert line[name] == pytest.approx(float(percent(value, 2))), name
    lo, hi = next(t.robust.ci95 for t in rec.threats if t.threat == "L0:10")
    assert line["L0:10_lo"] == pytest.approx(float(percent(lo, 2))) and line["L0:10_hi"] == pytest.approx(float(percent(hi, 2)))
    assert "L0:10: sparse-rs" in line["attacks"]

    html = (tmp_path / "leaderboard.html").read_text()
    assert ">L0:10<" in html

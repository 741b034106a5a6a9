"""Leaderboards are derived from records: one board per suite, newest record per model, ranked by union."""

import dataclasses
import re

import torch

from robustbench_ext.reporting.boards import leaderboard_markdown, records_table, write_leaderboard
from robustbench_ext.models.loading import load_model
from robustbench_ext import evaluate
from robustbench_ext.evaluation.suites import load_suite


def _run(model, data, suite, started, tmp_path):
    ev = evaluate(model, data, suite.threats, suite=suite.name, seed=0, batch_size=32, progress=False)
    ev.record = dataclasses.replace(ev.record, provenance={**ev.record.provenance, "started": started})
    return ev.write(tmp_path)


def test_boards_rank_by_union_and_keep_newest(tmp_path, small_cnn, cifar200):
    data = dataclasses.replace(cifar200, x=cifar200.x[:40], y=cifar200.y[:40])
    suite = load_suite("cifar10-union")
    suite = dataclasses.replace(suite, threats=tuple(
        dataclasses.replace(t, attacks=(dataclasses.replace(t.attacks[0], params={"steps": 3}),)) for t in suite.threats))
    # A second, weaker model: the small CNN with noisy weights.
    noisy = load_model("cifar10-smallcnn-linf-at")
    with torch.no_grad():
        g = torch.Generator().manual_seed(0)
        for p in noisy.module.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    noisy.name = "smallcnn-noisy"
    _run(small_cnn, data, suite, "2026-01-01T00:00:00+00:00", tmp_path)
    _run(noisy, data, suite, "2026-01-02T00:00:00+00:00", tmp_path)
    newest = _run(small_cnn, data, suite, "2026-01-03T00:00:00+00:00", tmp_path)

    df = records_table(tmp_path)
    assert len(df) == 3 and set(df["model"]) == {"cifar10-smallcnn-linf-at", "smallcnn-noisy"}
    text = leaderboard_markdown(tmp_path, link_base=tmp_path)
    assert text.count("## cifar10-union") == 1
    rows = [line for line in text.splitlines() if line.startswith("|") and ("smallcnn" in line)]
    assert len(rows) == 2  # newest record per model only
    assert newest.name in text
    unions = {m: u for m, u in zip(df["model"], df["union"])}
    first = rows[0]
    best = max(unions, key=unions.get)
    assert best in first
    for col in ("clean", "Linf:8/255", "L2:0.5", "L1:12", "union", "device", "date"):
        assert col in text
    out = write_leaderboard(tmp_path).read_text()
    assert all(line in out.splitlines() for line in text.splitlines())  # the same boards, plus plot links
    assert "per-class accuracy](plots/" in out


def test_empty_board(tmp_path):
    assert "No records yet" in leaderboard_markdown(tmp_path)


def test_runs_on_other_images_get_their_own_board_and_never_replace_a_row(tmp_path, small_cnn, cifar200):
    """`make demo DEMO_N=20` after an n=40 run must not put its row in place of the n=40 one."""
    suite = load_suite("cifar10-union")
    suite = dataclasses.replace(suite, threats=tuple(
        dataclasses.replace(t, attacks=(dataclasses.replace(t.attacks[0], params={"steps": 2}),)) for t in suite.threats))
    big = dataclasses.replace(cifar200, x=cifar200.x[:40], y=cifar200.y[:40])
    small = dataclasses.replace(cifar200, x=cifar200.x[:20], y=cifar200.y[:20])
    first = _run(small_cnn, big, suite, "2026-01-01T00:00:00+00:00", tmp_path)
    second = _run(small_cnn, small, suite, "2026-01-02T00:00:00+00:00", tmp_path)  # newer, fewer images
    text = leaderboard_markdown(tmp_path, link_base=tmp_path)
    assert first.name in text and second.name in text  # both kept
    heads = [line for line in text.splitlines() if line.startswith("## cifar10-union")]
    assert len(heads) == 2 and "n = 40" in heads[0] and "n = 20" in heads[1]  # larger n first, n shown
    for head, n in zip(heads, (40, 20)):
        body = text.split(head, 1)[1].split("\n## ", 1)[0]
        rows = [line for line in body.splitlines() if line.startswith("|") and "smallcnn" in line]
        assert len(rows) == 1 and re.search(rf"\|\s*{n}\s*\|", rows[0])


def test_two_runs_in_one_second_keep_both_records(tmp_path, small_cnn, cifar200):
    """Record stems are time-based to the second: a second run started in the same second must not overwrite
    the first's record (it gets the next free stem, and its run_id names it)."""
    data = dataclasses.replace(cifar200, x=cifar200.x[:8], y=cifar200.y[:8])
    suite = load_suite("cifar10-union")
    threats = tuple(dataclasses.replace(t, attacks=(dataclasses.replace(t.attacks[0], params={"steps": 2}),))
                    for t in suite.threats[:1])
    first = evaluate(small_cnn, data, threats, suite=suite.name, seed=0, batch_size=8, progress=False)
    second = dataclasses.replace(first)
    p1, p2 = first.write(tmp_path), second.write(tmp_path)
    assert p1 != p2 and p1.is_file() and p2.is_file()
    assert p2.stem == f"{p1.stem}-2" and second.record.run_id == p2.stem
    assert len(records_table(tmp_path)) == 2

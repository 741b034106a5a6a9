"""Leaderboards are derived from records: one board per suite, newest record per model, ranked by union."""

import dataclasses

import torch

from robustbench_ext.leaderboard import leaderboard_markdown, records_table, write_leaderboard
from robustbench_ext.models import load_model
from robustbench_ext.runner import evaluate
from robustbench_ext.suites import load_suite


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

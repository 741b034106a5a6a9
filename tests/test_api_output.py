"""The Python API shows what the CLI shows (issue 28): ``print(ev)`` / ``ev.table()`` are the run's table, and
progress bars follow the terminal rule everywhere (``progress=None``: a bar only when stderr is a terminal) --
never drawn into a log file, also not by the libraries rbx calls for downloads."""

from __future__ import annotations

import io
import sys

import pytest
from click.testing import CliRunner
from tqdm import tqdm

from robustbench_ext import evaluate
from robustbench_ext.cli import cli
from robustbench_ext.progress import show_bars, third_party_bars

ARGS = dict(data="cifar10-1k", threats=["Linf:8/255", "L2:0.5"], attacks=["pgd:steps=2"], n_examples=12, batch_size=6)


def _rows(table: str) -> dict[str, list[str]]:
    """The table's result rows (clean, each threat model, union): label -> accuracy and interval columns."""
    out = {}
    for line in table.splitlines():
        parts = line.split()
        if parts and parts[0] in ("clean", "Linf:8/255", "L2:0.5", "union"):
            out[parts[0]] = parts[1:4]
    return out


def test_print_ev_is_the_table_rbx_run_prints(capsys, tmp_path):
    ev = evaluate("cifar10-smallcnn-linf-at", progress=False, **ARGS)
    print(ev)
    printed = capsys.readouterr().out
    assert printed == ev.table() + "\n" and str(ev) == ev.table()
    rows = _rows(printed)
    assert list(rows) == ["clean", "Linf:8/255", "L2:0.5", "union"]
    rec = ev.record
    assert float(rows["clean"][0]) == pytest.approx(100 * rec.clean.accuracy, abs=0.005)
    assert float(rows["union"][0]) == pytest.approx(100 * rec.union.accuracy, abs=0.005)
    assert "model    cifar10-smallcnn-linf-at (smallcnn)" in printed
    # the same request from the command line prints the same rows (seconds and device lines aside)
    res = CliRunner().invoke(cli, ["run", "--model", "cifar10-smallcnn-linf-at", "--dataset", "cifar10-1k", "--threat", "Linf:8/255",
                                   "--threat", "L2:0.5", "--attack", "pgd:steps=2", "--n-examples", "12", "--batch-size", "6",
                                   "--quiet", "--results-dir", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert _rows(res.stdout) == rows
    assert repr(ev).startswith("<Evaluation cifar10-smallcnn-linf-at on cifar10-1k (n=12): clean ")


def test_a_corruption_evaluation_prints_its_table(capsys):
    pytest.importorskip("imagecorruptions")
    from robustbench_ext.evaluation.corruptions import evaluate_corruptions

    from robustbench_ext.errors import DataError

    with pytest.raises(DataError, match="is not a set of common corruptions; use one of cifar10-c, cifar100-c"):
        evaluate_corruptions("cifar10-smallcnn-linf-at", "cifar10-1k")
    ev = evaluate_corruptions("cifar10-smallcnn-linf-at", "cifar10-c:base=cifar10-1k,source=generated",
                              corruptions=["gaussian_noise"], severities=[1], n_examples=8, progress=False)
    print(ev)
    out = capsys.readouterr().out
    assert out == ev.table() + "\n" and "gaussian_noise" in out and "clean" in out


def test_evaluate_draws_no_bar_into_a_stderr_that_is_not_a_terminal(capsys):
    """pytest's captured stderr is not a terminal: the default (progress=None) draws nothing; progress=True does,
    so the check below can fail."""
    assert not sys.stderr.isatty()
    evaluate("cifar10-smallcnn-linf-at", progress=None, **ARGS)
    quiet = capsys.readouterr().err
    assert "\r" not in quiet and " pt [" not in quiet
    evaluate("cifar10-smallcnn-linf-at", progress=True, **ARGS)
    assert "\r" in capsys.readouterr().err


class _Stream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self._tty = tty

    def isatty(self) -> bool:
        return self._tty


@pytest.mark.parametrize("tty", [False, True])
def test_third_party_download_bars_follow_the_terminal_rule(tty, monkeypatch):
    """A library's own tqdm bar (a torchvision or Hub download) inside third_party_bars: dropped from a log file,
    drawn on a terminal; the library's other messages pass either way."""
    err = _Stream(tty)
    monkeypatch.setattr(sys, "stderr", err)
    assert show_bars(None) is tty and show_bars(True) and not show_bars(False)
    with third_party_bars():
        for _ in tqdm(range(20), desc="Downloading", mininterval=0):
            pass
        print("Files already downloaded and verified", file=sys.stderr)
    assert sys.stderr is err
    text = err.getvalue()
    assert "Files already downloaded and verified\n" in text
    assert ("\r" in text) is tty and ("Downloading" in text) is tty


def test_training_follows_the_terminal_rule_too(monkeypatch):
    from robustbench_ext.training.engine import TrainConfig, Trainer

    cfg = TrainConfig(defense="standard", arch="smallcnn", dataset="cifar10-1k", n_train=8, epochs=1, out="unused")
    monkeypatch.setattr(sys, "stderr", _Stream(False))
    assert Trainer(cfg).progress is False
    monkeypatch.setattr(sys, "stderr", _Stream(True))
    assert Trainer(cfg).progress is True

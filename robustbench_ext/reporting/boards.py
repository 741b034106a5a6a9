"""Leaderboards derived from result records (never typed by hand): Markdown, CSV, HTML and plots.

:func:`records_table` flattens every record under a results directory into one pandas DataFrame
(a row per record, accuracies in percent). :func:`build_boards` keeps the newest record per
(suite, model, image set) and makes one board per suite and image set (the dataset and exactly which
images, by the hash of the evaluated slice), ranked by union accuracy: runs on different images or a
different n are never ranked together, and a run never replaces one made on other images. Common-corruption
runs (records with a ``corruptions`` block) get boards of their own: clean, each corruption's mean over its
severities and the overall mean, ranked by that mean (RobustBench's corruptions accuracy). :func:`write_all`
writes ``leaderboard.md``, ``leaderboard.csv``, a self-contained ``leaderboard.html`` (sortable
columns, plots embedded; rendered from ``templates/leaderboard.html.j2``) and the PNG plots under
``plots/`` (linked from the Markdown).
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from . import plots
from ..errors import RbxError
from ..records.provenance import utc_now
from ..records.schema import NOT_MEASURED, RunRecord
from ..paths import atomic_write_bytes, atomic_write_text
from ..records.store import iter_records, read_flags
from ..records.stats import interval, percent


def _pct(x: float) -> float:
    """Rows keep the fraction itself: every table rounds it once, through :func:`robustbench_ext.records.stats.percent`."""
    return float(x)


def record_row(path: Path, r: RunRecord) -> dict:
    """One flat row for a record: identity, accuracies (%) with 95% intervals, cost and provenance.

    A corruption run's row has, instead of threat models, a column per corruption (mean over its severities),
    ``mean`` (over every corruption and severity) and its source under ``attacks``.
    """
    if r.corruptions is not None:
        return _corruption_row(path, r)
    union_only = bool(r.config.get("union_only"))
    row = {
        # A union-only run has its own board: it must never replace a full run's per-norm numbers.
        "suite": r.suite_label + (" (union-only)" if union_only else ""),
        "model": r.model.get("name"),
        "architecture": r.model.get("architecture"),
        "dataset": r.dataset.get("source"),
        "dataset_sha256": r.dataset.get("sha256"),
        "n": r.n,
        "clean": _pct(r.clean.accuracy),
        "clean_ci": tuple(_pct(v) for v in r.clean.ci95),
    }
    for t in r.threats:
        # Not measured (union-only): None, shown as NOT_MEASURED ("n/m") everywhere, never as a number.
        row[t.threat] = _pct(t.robust.accuracy) if t.measured else None
        row[f"{t.threat} ci"] = tuple(_pct(v) for v in t.robust.ci95) if t.measured else None
    row.update({
        "union": _pct(r.union.accuracy),
        "union_ci": tuple(_pct(v) for v in r.union.ci95),
        "threats": [t.threat for t in r.threats],
        "attacks": "; ".join(f"{t.threat}: " + " > ".join(a.attack for a in t.attacks) for t in r.threats),
        # the per-run audit (rbx run --audit K): the largest 95% upper bound on the share of robust points the
        # cascade missed, over the audited threat models (a fraction, as every rate in a row); None when not audited
        "audit_miss_upper95": (_pct(max(a["miss_rate_upper95"] for a in r.audit)) if r.audit else None),
        "audit": "; ".join(f"{a['threat']}: AA broke {a['broken']}/{a['sampled']}" for a in r.audit) or None,
        # masking signs the run escalated on (or, with --no-escalate, that make its numbers upper bounds)
        "escalation": (", ".join(x["sign"] for x in r.escalation.get("reasons", []))
                       + ("" if r.escalation.get("enabled", True) else " (not escalated: upper bounds)")) or None
        if r.escalation else None,
        "seconds": r.provenance.get("wall_seconds"),
        "device": r.provenance.get("device_name"),
        "date": str(r.provenance.get("started", ""))[:10],
        "started": r.provenance.get("started", ""),
        "record": str(path),
        "kind": "threats",
    })
    return row


def _corruption_row(path: Path, r: RunRecord) -> dict:
    c = r.corruptions
    assert c is not None
    row: dict[str, Any] = {
        "suite": r.suite_label, "model": r.model.get("name"), "architecture": r.model.get("architecture"),
        "dataset": r.dataset.get("source"), "dataset_sha256": r.dataset.get("sha256"), "n": r.n,
        "clean": _pct(r.clean.accuracy), "clean_ci": tuple(_pct(v) for v in r.clean.ci95),
    }
    for name, m in c.per_corruption.items():
        row[name] = _pct(m.accuracy)
        row[f"{name} ci"] = tuple(_pct(v) for v in m.ci95)
    row.update({
        "mean": _pct(c.mean.accuracy), "mean_ci": tuple(_pct(v) for v in c.mean.ci95),
        "union": _pct(r.union.accuracy), "union_ci": tuple(_pct(v) for v in r.union.ci95),
        "threats": list(c.corruptions), "attacks": str(c.source.get("description", "")),
        "severities": ",".join(str(s) for s in c.severities), "complete": c.complete,
        "seconds": r.provenance.get("wall_seconds"), "device": r.provenance.get("device_name"),
        "date": str(r.provenance.get("started", ""))[:10], "started": r.provenance.get("started", ""),
        "record": str(path), "kind": "corruptions",
    })
    return row


def records_table(results_dir: Path) -> pd.DataFrame:
    """Every record under ``results_dir`` as a DataFrame, oldest first; records marked meaningless (a threat
    model whose ball covers the whole [0, 1] box, e.g. ``Linf:8`` for 8/255) are left out of every board."""
    return pd.DataFrame([record_row(p, r) for p, r in iter_records(results_dir) if not r.config.get("meaningless")])


def meaningless_records(results_dir: Path) -> list[str]:
    """Records left out of the boards because a threat model covers the whole box (their run ids)."""
    return [r.run_id for _, r in iter_records(results_dir) if r.config.get("meaningless")]


#: What makes runs comparable on one board: the suite and exactly the same images.
BOARD_KEY = ["suite", "dataset", "dataset_sha256"]


def latest_per_board(df: pd.DataFrame) -> pd.DataFrame:
    """The newest record per (suite, image set, model): a run only ever replaces a run on the same images."""
    if df.empty:
        return df
    return df.sort_values("started").groupby([*BOARD_KEY, "model"], sort=False, dropna=False).tail(1)


@dataclass
class Board:
    """One board: a suite on one image set (dataset and slice), its threat models and rows, ranked by union accuracy.

    A corruption board (``kind == "corruptions"``): ``threats`` are its corruptions, ranked by the ``mean``.
    """

    suite: str
    threats: list[str]
    rows: pd.DataFrame
    plots: list[dict[str, Any]] = field(default_factory=list)
    dataset: str = ""
    n: int = 0
    images: str = ""  # sha256 of the evaluated slice
    only_one: bool = True  # the suite's only board: its anchor (and plot names) need no n or image hash
    kind: str = "threats"

    @property
    def rank_column(self) -> str:
        """The column the board ranks by: ``union`` (threat models) or ``mean`` (corruptions)."""
        return "mean" if self.kind == "corruptions" else "union"

    @property
    def title(self) -> str:
        return f"{self.suite} · {self.dataset} · n = {self.n} (images {self.images[:8]})"

    @property
    def anchor(self) -> str:
        name = self.suite if self.only_one else f"{self.suite} n{self.n} {self.images[:8]}"
        return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def build_boards(results_dir: Path) -> list[Board]:
    """One board per (suite, image set) from the newest record per model; largest n first within a suite."""
    df = latest_per_board(records_table(results_dir))
    boards = []
    if df.empty:
        return boards
    for (suite, dataset, sha), rows in df.groupby(BOARD_KEY, sort=False, dropna=False):
        kind = str(rows["kind"].iloc[0])
        rank_by = "mean" if kind == "corruptions" else "union"
        rows = rows.sort_values([rank_by, "clean"], ascending=False).reset_index(drop=True)
        rows.insert(0, "rank", range(1, len(rows) + 1))
        boards.append(Board(str(suite), list(rows["threats"].iloc[0]), rows, dataset=str(dataset),
                            n=int(rows["n"].iloc[0]), images=str(sha), kind=kind))
    boards.sort(key=lambda b: (b.suite, b.dataset, -b.n, b.images))
    for b in boards:
        b.only_one = sum(o.suite == b.suite for o in boards) == 1
    return boards


def _missing(acc: Any) -> bool:
    """A cell with no measured accuracy (a union-only run's later threat models): None or NaN."""
    return acc is None or (isinstance(acc, float) and acc != acc)


def _fmt(acc: float | None, ci: tuple[float, float] | None) -> str:
    if _missing(acc):
        return NOT_MEASURED
    return f"{percent(acc)} ({interval(ci)})"


def _num(x: float | None) -> float | str:
    """A fraction as the CSV's percentage with two decimals (the same rounding as every table); "n/m" if not measured."""
    return NOT_MEASURED if _missing(x) else float(percent(x, 2))


def board_markdown(board: Board, link_base: Path | None = None, plot_links: dict[str, list[tuple[str, str]]] | None = None) -> str:
    """One board as a Markdown table (plus links to its plots)."""
    rows = board.rows
    if board.kind == "corruptions":
        out = pd.DataFrame({
            "rank": rows["rank"].values,
            "model": rows["model"].values,
            "architecture": rows["architecture"].values,
            "clean": [_fmt(a, c) for a, c in zip(rows["clean"], rows["clean_ci"])],
            **{t: [percent(a) for a in rows[t]] for t in board.threats},
            "mean": [_fmt(a, c) for a, c in zip(rows["mean"], rows["mean_ci"])],
            "severities": rows["severities"].values,
            "n": rows["n"].values,
            "corruption suite": [board.suite] * len(rows),
            "device": rows["device"].values,
            "date": rows["date"].values,
            "record": [_link(p, link_base) for p in rows["record"]],
        })
        lines = [out.to_markdown(index=False, disable_numparse=True)]  # keep "25.0" as written
        for caption, target in (plot_links or {}).get(board.anchor, []):
            lines.append(f"- [{caption}]({target})")
        return "\n".join(lines) + "\n"
    out = pd.DataFrame({
        "rank": rows["rank"].values,
        "model": rows["model"].values,
        "architecture": rows["architecture"].values,
        "clean": [_fmt(a, c) for a, c in zip(rows["clean"], rows["clean_ci"])],
        **{t: [_fmt(a, c) for a, c in zip(rows[t], rows[f"{t} ci"])] for t in board.threats},
        "union": [_fmt(a, c) for a, c in zip(rows["union"], rows["union_ci"])],
        "n": rows["n"].values,
        "attack suite": [board.suite] * len(rows),
        "dataset": rows["dataset"].values,
        "device": rows["device"].values,
        "date": rows["date"].values,
        "record": [_link(p, link_base) for p in rows["record"]],
    })
    lines = [out.to_markdown(index=False, disable_numparse=True)]
    for caption, target in (plot_links or {}).get(board.anchor, []):
        lines.append(f"- [{caption}]({target})")
    return "\n".join(lines) + "\n"


def leaderboard_markdown(results_dir: Path, *, link_base: Path | None = None,
                         plot_links: dict[str, list[tuple[str, str]]] | None = None) -> str:
    """A Markdown page with one board per suite: a row per model, ranked by union accuracy."""
    boards = build_boards(results_dir)
    lines = ["# rbx leaderboard", "",
             "Generated by `rbx leaderboard` from the records in this directory; do not edit by hand.",
             "Accuracies in %, with 95% Wilson intervals; union = correct and robust under every threat model.", ""]
    if any(b.kind == "corruptions" for b in boards):
        lines[-1:] = ["Corruption boards (common corruptions, not adversarial): accuracy under each corruption, averaged over "
                      "its severities, and the mean over every corruption and severity, which ranks (with 95% intervals "
                      "over the images); with all 15 corruptions x 5 severities it is RobustBench's corruptions accuracy.", ""]
    if not boards:
        lines += ["_No records yet: run `rbx run` first._", ""]
    for board in boards:
        lines += [f"## {board.title}", "", board_markdown(board, link_base, plot_links)]
    left = meaningless_records(results_dir)
    if left:
        lines += [f"_Left out: {len(left)} record(s) whose threat model covers the whole [0, 1] box, so their robust "
                  f"accuracy means nothing ({', '.join(left[:5])}{', ...' if len(left) > 5 else ''})._", ""]
    return "\n".join(lines)


def leaderboard_csv(boards: list[Board]) -> str:
    """All boards in one CSV: a row per (suite, model), accuracies and interval bounds in separate columns."""
    frames = []
    for b in boards:
        r = b.rows
        if b.kind == "corruptions":
            frames.append(_corruption_csv(b))
            continue
        cols: dict[str, Any] = {"suite": b.suite, "board": b.anchor, "rank": r["rank"], "model": r["model"], "architecture": r["architecture"],
                                **_csv_acc("clean", r["clean"], r["clean_ci"])}
        for t in b.threats:
            cols.update(_csv_acc(t, r[t], r[f"{t} ci"]))
        cols.update({**_csv_acc("union", r["union"], r["union_ci"]),
                     "n": r["n"], "attacks": r["attacks"], "dataset": r["dataset"], "dataset_sha256": r["dataset_sha256"],
                     "device": r["device"], "date": r["date"], "seconds": r["seconds"], "record": r["record"]})
        frames.append(pd.DataFrame(cols))
    return pd.concat(frames, ignore_index=True).to_csv(index=False) if frames else "suite,rank,model\n"


def _csv_acc(name: str, acc, ci) -> dict[str, list[float]]:
    """CSV columns ``name``, ``name_lo``, ``name_hi`` in percent (rounded once, as in every table)."""
    return {name: [_num(a) for a in acc], f"{name}_lo": [_num(None if _missing(a) else c[0]) for a, c in zip(acc, ci)],
            f"{name}_hi": [_num(None if _missing(a) else c[1]) for a, c in zip(acc, ci)]}


def _corruption_csv(b: Board) -> pd.DataFrame:
    r = b.rows
    cols: dict[str, Any] = {"suite": b.suite, "board": b.anchor, "rank": r["rank"], "model": r["model"], "architecture": r["architecture"],
                            **_csv_acc("clean", r["clean"], r["clean_ci"])}
    for t in b.threats:
        cols.update(_csv_acc(t, r[t], r[f"{t} ci"]))
    cols.update({**_csv_acc("mean", r["mean"], r["mean_ci"]),
                 "severities": r["severities"], "complete": r["complete"], "n": r["n"], "source": r["attacks"],
                 "dataset": r["dataset"], "dataset_sha256": r["dataset_sha256"], "device": r["device"], "date": r["date"],
                 "seconds": r["seconds"], "record": r["record"]})
    return pd.DataFrame(cols)


def _link(path: str, base: Path | None) -> str:
    p = Path(path)
    if base is not None:
        try:
            p = p.resolve().relative_to(Path(base).resolve())
        except ValueError:
            pass
    return f"[{p.name}]({p.as_posix()})"


def _stem(record_path: str) -> str:
    return Path(record_path).stem


def write_all(results_dir: Path) -> list[Path]:
    """Write leaderboard.md/.csv/.html and plots/*.png under ``results_dir``; return the paths written."""
    results_dir = Path(results_dir)
    boards = build_boards(results_dir)
    records = {str(p): r for p, r in iter_records(results_dir)}
    plot_dir = results_dir / "plots"
    written: list[Path] = []
    plot_links: dict[str, list[tuple[str, str]]] = {}

    def save(name: str, png: bytes | None, caption: str, bucket: list[dict[str, Any]], board_key: str) -> None:
        if png is None:
            return
        plot_dir.mkdir(parents=True, exist_ok=True)
        path = plot_dir / name
        atomic_write_bytes(path, png)
        written.append(path)
        bucket.append({"caption": caption, "b64": base64.b64encode(png).decode("ascii"), "file": f"plots/{name}"})
        plot_links.setdefault(board_key, []).append((caption, f"plots/{name}"))

    for board in boards:
        latest = [records[p] for p in board.rows["record"]]
        for norm in sorted({t.norm for r in latest for t in r.threats}):
            save(f"{board.anchor}_eps_{norm}.png", plots.eps_sweep(latest, norm),
                 f"{board.suite}: robust accuracy vs eps ({norm})", board.plots, board.anchor)
        row_plots = []
        for rec_path, model in zip(board.rows["record"], board.rows["model"]):
            rec = records[rec_path]
            mine: list[dict[str, Any]] = []
            stem = _stem(rec_path)
            if board.kind == "corruptions":
                save(f"{stem}_corruptions.png", plots.corruption_grid(rec), f"{model}: accuracy per corruption and severity",
                     mine, board.anchor)
                row_plots.append(mine)
                continue
            flags = read_flags(Path(rec_path), rec)
            save(f"{stem}_per_class.png", plots.per_class(rec, flags), f"{model}: per-class accuracy", mine, board.anchor)
            save(f"{stem}_attribution.png", plots.attribution(rec, flags), f"{model}: which attack broke how many points",
                 mine, board.anchor)
            save(f"{stem}_loss.png", plots.loss_curves(rec), f"{model}: attack loss curves", mine, board.anchor)
            save(f"{stem}_curve.png", plots.min_norm_curves(rec), f"{model}: robust accuracy vs eps from one minimum-norm run",
                 mine, board.anchor)
            row_plots.append(mine)
        board.rows = board.rows.assign(plots=row_plots)

    # Plots of records no longer on a board are stale: derived files go when their source goes.
    keep = {p.name for p in written}
    for pattern in ("*_per_class.png", "*_attribution.png", "*_loss.png", "*_eps_*.png", "*_corruptions.png", "*_curve.png"):
        for stale in plot_dir.glob(pattern) if plot_dir.is_dir() else []:
            if stale.name not in keep:
                stale.unlink()
    md = results_dir / "leaderboard.md"
    atomic_write_text(md, leaderboard_markdown(results_dir, link_base=results_dir, plot_links=plot_links))
    csv = results_dir / "leaderboard.csv"
    atomic_write_text(csv, leaderboard_csv(boards))
    html = results_dir / "leaderboard.html"
    atomic_write_text(html, render_html(boards, len(records)))
    return [md, csv, html, *written]


def render_html(boards: list[Board], n_records: int) -> str:
    """The self-contained HTML page (CSS, sorting script and plots inline) from the package template."""
    from jinja2 import Environment, PackageLoader, select_autoescape

    env = Environment(loader=PackageLoader("robustbench_ext.reporting", "templates"), autoescape=select_autoescape(["html", "j2"]))
    view = []
    for b in boards:
        rows = []
        rank = b.rank_column
        for _, r in b.rows.iterrows():
            rows.append({
                "rank": int(r["rank"]), "model": r["model"], "architecture": r["architecture"],
                "clean": r["clean"], "clean_s": percent(r["clean"]), "clean_ci": interval(r["clean_ci"]),
                "acc": {t: "" if _missing(r[t]) else r[t] for t in b.threats},
                "acc_s": {t: NOT_MEASURED if _missing(r[t]) else percent(r[t]) for t in b.threats},
                "ci": {t: "not measured" if _missing(r[t]) else interval(r[f"{t} ci"]) for t in b.threats},
                "union": r[rank], "union_s": percent(r[rank]), "union_ci": interval(r[f"{rank}_ci"]),
                "n": int(r["n"]), "attacks": r["attacks"],
                "dataset": r["dataset"], "device": r["device"], "date": r["date"], "record": Path(r["record"]).name,
                "plots": r.get("plots", []) or [],
            })
        view.append({"suite": b.suite, "title": b.title, "anchor": b.anchor, "threats": b.threats, "rows": rows, "plots": b.plots,
                     "rank_label": "mean" if b.kind == "corruptions" else "union",
                     "attacks_label": "corruption source" if b.kind == "corruptions" else "attack suite"})
    return env.get_template("leaderboard.html.j2").render(boards=view, n_records=n_records, generated=utc_now())


def write_leaderboard(results_dir: Path) -> Path:
    """Write every leaderboard file; return the Markdown path (kept for callers of the first version)."""
    return write_all(results_dir)[0]


def embed_in_readme(readme: Path, results_dir: Path, suite: str) -> None:
    """Replace the text between ``<!-- leaderboard:SUITE:start -->`` and ``...:end -->`` with that suite's boards."""
    text = Path(readme).read_text()
    start, end = f"<!-- leaderboard:{suite}:start -->", f"<!-- leaderboard:{suite}:end -->"
    if start not in text or end not in text:
        raise RbxError(f"{readme} has no {start} ... {end} markers to fill")
    boards = [b for b in build_boards(results_dir) if b.suite == suite]
    if not boards:
        raise RbxError(f"no records of suite '{suite}' in {results_dir}")
    # record links relative to the README; one board per image set, largest n first
    body = "\n".join(f"**{b.title}**\n\n{board_markdown(b, link_base=Path(readme).parent)}" for b in boards)
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    atomic_write_text(Path(readme), f"{head}{start}\n{body}{end}{tail}")

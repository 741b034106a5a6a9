"""Leaderboards derived from result records (never typed by hand): Markdown, CSV, HTML and plots.

:func:`records_table` flattens every record under a results directory into one pandas DataFrame
(a row per record, accuracies as fractions). :func:`build_boards` keeps the newest record per
(suite, image set, model) and makes **one board per suite and image set** -- the image set being exactly which
images were evaluated, by the sha256 of the evaluated slice's pixels and labels, so records of the same images
under different dataset labels land on one board, and runs on other images are never ranked together nor
replace each other. Boards rank by union accuracy. Common-corruption runs (records with a ``corruptions``
block) get boards of their own: clean, each corruption's mean over its severities and the overall mean,
ranked by that mean (RobustBench's corruptions accuracy).

Order: the **main board** first (the main suite's -- ``rbx leaderboard`` passes the default suite -- on its
largest image set), then the other attack boards (by suite, largest image set first), corruption boards last.
Rows carry the model card's links where the record has them (``model.card``: the model's page, its paper;
the reference models' cards from the registry) and AutoAttack's union accuracy where the results directory
holds AutoAttack's flags or a comparison for that model and those images (:mod:`.autoattack`).

:func:`write_all` writes ``leaderboard.md`` (a table of contents, then the boards), ``leaderboard.csv``, one
self-contained ``leaderboard.html`` (CSS and a small script inline, no CDN: a table of contents, sortable
columns, a search box that filters every board, tables that fit a 1400 px window; board-level plots embedded;
rendered from ``templates/leaderboard.html.j2``) and the PNG plots under ``plots/`` (per-record plots are
linked from the Markdown and the HTML, not embedded, which keeps the page small).
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import pandas as pd

from . import plots
from .autoattack import AAIndex, AAView
from ..errors import RbxError
from ..registry import MODELS
from ..records.provenance import utc_now
from ..records.multirobust import block_line, parse_seen, reference_block
from ..records.schema import NOT_MEASURED, RunRecord
from ..paths import atomic_write_bytes, atomic_write_text
from ..records.store import iter_records, read_flags, read_record
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
        "images": images_key(r),
        "n": r.n,
        **card_links(r),
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
        # MultiRobustBench's metrics (the record's ``multirobust`` block, reference: none): percentages as the paper
        # gives them; None where the record has no strength curve
        "cr_ind_avg": r.multirobust["cr_ind_avg"] if r.multirobust else None,
        "cr_ind_worst": r.multirobust["cr_ind_worst"] if r.multirobust else None,
        "stability_constant": r.multirobust["stability_constant"] if r.multirobust else None,
        "stability_note": r.multirobust["stability_note"] if r.multirobust else None,  # why SC is n/a
        "multirobust_note": block_line(r.multirobust) if r.multirobust else None,
        "attacks": "; ".join(f"{t.threat}: " + " > ".join(a.attack for a in t.attacks) for t in r.threats),
        # the per-run audit (rbx run --audit K): the largest 95% upper bound on the share of robust points the
        # cascade missed, over the audited threat models (a fraction, as every rate in a row); None when not audited
        "audit_miss_upper95": (_pct(max(a["miss_rate_upper95"] for a in r.audit)) if r.audit else None),
        "audit": "; ".join(f"{a['threat']}: {'AA' if a.get('attack', 'autoattack') == 'autoattack' else a['attack']} "
                           f"broke {a['broken']}/{a['sampled']}" for a in r.audit) or None,
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
        "dataset": r.dataset.get("source"), "dataset_sha256": r.dataset.get("sha256"), "images": images_key(r), "n": r.n,
        **card_links(r),
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


def images_key(r: RunRecord) -> str:
    """Which images a record evaluated: the sha256 of the evaluated slice (pixels and labels), else its dataset and n."""
    return str(r.dataset.get("sha256") or f"{r.dataset.get('source')}|n={r.n}")


def card_links(r: RunRecord) -> dict[str, str | None]:
    """The model card's links of a record: ``model_link`` (the model's page) and ``paper_link``, from the record's
    ``model.card`` block, else from the model registry's entry of that name (rbx's reference models); None where
    neither says."""
    card = r.model.get("card") if isinstance(r.model.get("card"), dict) else {}
    name = str(r.model.get("name") or "")
    tags = MODELS.get(name).tags if name and ":" not in name and name in MODELS.names() else {}
    registered = tags.get("card") or {}
    def web(url: Any) -> str | None:  # only web links reach a page (never javascript: or file: URLs from a record)
        return url if isinstance(url, str) and url.startswith(("https://", "http://")) else None

    return {"model_link": web(card.get("model") or registered.get("model")),
            "paper_link": web(card.get("paper") or registered.get("paper"))}


def records_table(results_dir: Path, records: "list[tuple[Path, RunRecord]] | None" = None) -> pd.DataFrame:
    """Every record under ``results_dir`` (or the ``records`` already read from it) as a DataFrame, oldest first;
    records marked meaningless (a threat model whose ball covers the whole [0, 1] box, e.g. ``Linf:8`` for 8/255)
    are left out of every board."""
    found = iter_records(results_dir) if records is None else records
    return pd.DataFrame([record_row(p, r) for p, r in found if not r.config.get("meaningless")])


def meaningless_records(results_dir: Path) -> list[str]:
    """Records left out of the boards because a threat model covers the whole box (their run ids)."""
    return [r.run_id for _, r in iter_records(results_dir) if r.config.get("meaningless")]


#: What makes runs comparable on one board: the suite and exactly the same images (:func:`images_key`) -- not the
#: dataset's label, which two records of the same images may spell differently.
BOARD_KEY = ["suite", "images"]


def latest_per_board(df: pd.DataFrame) -> pd.DataFrame:
    """The newest record per (suite, image set, model): a run only ever replaces a run on the same images."""
    if df.empty:
        return df
    return df.sort_values("started").groupby([*BOARD_KEY, "model"], sort=False, dropna=False).tail(1)


@dataclass
class Board:
    """One board: a suite on one image set, its threat models and rows, ranked by union accuracy.

    A corruption board (``kind == "corruptions"``): ``threats`` are its corruptions, ranked by the ``mean``.
    ``labels``: the dataset labels its records give these images (usually one); ``main``: the page's main board.
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
    labels: list[str] = field(default_factory=list)
    main: bool = False
    mrb_reference: str = ""  # the reference models of MultiRobustBench's columns (:class:`MultiRobustReference`)

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

    @property
    def attacks(self) -> list[str]:
        """The attack cascades (or corruption sources) its rows were evaluated with, each once."""
        return list(dict.fromkeys(str(a) for a in self.rows["attacks"]))

    @property
    def has_autoattack(self) -> bool:
        return "aa" in self.rows and any(v is not None for v in self.rows["aa"])

    @property
    def has_multirobust(self) -> bool:
        """Whether a row has MultiRobustBench's metrics (a record with a strength curve): then the board shows them."""
        return "cr_ind_avg" in self.rows and any(not _missing(v) for v in self.rows["cr_ind_avg"])

    @property
    def has_links(self) -> bool:
        return any(not _missing(v) and bool(v) for col in ("model_link", "paper_link") if col in self.rows for v in self.rows[col])


@dataclass(frozen=True)
class MultiRobustReference:
    """What MultiRobustBench's board columns are computed against: a record of the individually trained reference
    models (their curves merged in one record, as ``rbx report --multirobust --reference`` takes) and the training
    threat models given per model (``--seen MODEL=THREAT``, raw: a model's name may itself hold ``=``, so they are
    matched against the boards' model names by :meth:`resolve`)."""

    path: Path
    record: RunRecord
    seen_texts: tuple[str, ...] = ()

    @classmethod
    def read(cls, path: Path, seen_texts: Iterable[str] = ()) -> "MultiRobustReference":
        """Read the reference record; an error that says what is wrong when it is missing or not a record."""
        path = Path(path)
        if not path.is_file():
            raise RbxError(f"--reference: no such record {path}")
        return cls(path, read_record(path), tuple(seen_texts))

    @property
    def label(self) -> str:
        """The reference in words, for footnotes and CSV cells: model name, file, n and clean accuracy."""
        return (f"{self.record.model.get('name', 'reference')} ({self.path.name}, n = {self.record.n}, "
                f"clean {percent(self.record.clean.accuracy)}%)")

    def resolve(self, models: Iterable[str]) -> dict[str, dict[str, float]]:
        """``--seen`` as model name -> training threat models (type -> strength; ``{}``: clean only), each text
        split at the ``=`` that leaves a model name on the boards; an unknown model is an error listing them."""
        known = sorted({str(m) for m in models})
        out: dict[str, dict[str, float]] = {}
        for text in self.seen_texts:
            cuts = [i for i, ch in enumerate(text) if ch == "="]
            if not cuts:
                raise RbxError(f"--seen needs MODEL=THREAT (e.g. cifar10-smallcnn-linf-at=Linf:8/255), got '{text}'")
            cut = next((i for i in cuts if text[:i] in known), None)
            if cut is None:
                raise RbxError(f"--seen '{text}': no model '{text[:cuts[0]]}' on the boards; models: "
                               f"{', '.join(known) or 'none'}")
            mine = out.setdefault(text[:cut], {})
            for norm, eps in parse_seen([text[cut + 1:]]).items():
                mine[norm] = max(mine.get(norm, eps), eps)
        return out


def against_reference(df: pd.DataFrame, records: Mapping[str, RunRecord], ref: MultiRobustReference) -> pd.DataFrame:
    """The rows' MultiRobustBench columns recomputed against ``ref`` (the CRs as ratios to its accuracies, SC where
    the model's training threat models are known); rows without a strength curve are left as they are. Errors
    (a ``--seen`` model not on the boards, a reference lacking a strength some row has) say which."""
    threats = df["kind"] == "threats" if "kind" in df else pd.Series(False, index=df.index)
    seen = ref.resolve(df.loc[threats, "model"].astype(str))
    out = df.copy()
    for col in ("cr_ind_avg", "cr_ind_worst", "stability_constant", "stability_note", "multirobust_note"):
        out[col] = out[col].astype(object) if col in out else None
    for i in out.index[threats]:
        if _missing(out.at[i, "cr_ind_avg"]):
            continue
        model, path = str(out.at[i, "model"]), str(out.at[i, "record"])
        try:
            block = reference_block(records[path], ref.record, seen.get(model))
        except ValueError as exc:
            raise RbxError(f"--reference {ref.path}: {exc}, which {model} has ({Path(path).name})") from None
        for col in ("cr_ind_avg", "cr_ind_worst", "stability_constant", "stability_note"):
            out.at[i, col] = block[col]
        out.at[i, "multirobust_note"] = block_line(block)
    return out


def build_boards(results_dir: Path, main_suite: str | None = None,
                 multirobust: MultiRobustReference | None = None) -> list[Board]:
    """One board per (suite, image set) from the newest record per model; the main board first (see the module
    docstring: ``main_suite``'s board on its largest image set, else the attack board with the most images), then
    the other attack boards by suite and largest image set, corruption boards last. ``multirobust``: MultiRobustBench's
    columns against those reference models (:func:`against_reference`) instead of a perfect reference (SC n/a)."""
    results_dir = Path(results_dir)
    found = list(iter_records(results_dir))
    df = latest_per_board(records_table(results_dir, found))
    boards: list[Board] = []
    by_path = {str(p): r for p, r in found}
    if multirobust is not None:
        if df.empty:
            multirobust.resolve(())  # a --seen model with no board is still an error
        else:
            df = against_reference(df, by_path, multirobust)
    if df.empty:
        return boards
    index = AAIndex.scan(results_dir)
    for (suite, images), rows in df.groupby(BOARD_KEY, sort=False, dropna=False):
        kind = str(rows["kind"].iloc[0])
        rank_by = "mean" if kind == "corruptions" else "union"
        rows = rows.sort_values([rank_by, "clean"], ascending=False).reset_index(drop=True)
        rows.insert(0, "rank", range(1, len(rows) + 1))
        if kind != "corruptions":
            rows = rows.assign(aa=[_autoattack(index, Path(p), by_path[p]) for p in rows["record"]])
        labels = list(rows["dataset"].value_counts(sort=True).index.astype(str))
        boards.append(Board(str(suite), list(rows["threats"].iloc[0]), rows, dataset=labels[0], n=int(rows["n"].iloc[0]),
                            images=str(rows["dataset_sha256"].iloc[0] or images), kind=kind, labels=labels,
                            mrb_reference=multirobust.label if multirobust is not None else ""))
    attack_boards = [b for b in boards if b.kind != "corruptions"]
    candidates = [b for b in attack_boards if b.suite == main_suite] or attack_boards
    main = max(candidates, key=lambda b: (b.n, len(b.rows))) if candidates else None
    boards.sort(key=lambda b: (b is not main, b.kind == "corruptions", b.suite, -b.n, b.images))
    for b in boards:
        b.only_one = sum(o.suite == b.suite for o in boards) == 1
        b.main = b is main
    return boards


def _autoattack(index: AAIndex, path: Path, record: RunRecord) -> AAView | None:
    try:
        flags = read_flags(path, record)
    except Exception:  # noqa: BLE001 -- a record whose flags file is missing still shows, without AutoAttack's numbers
        flags = None
    return index.view(path, record, flags)


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
        "model": [_md_model(m, link) for m, link in zip(rows["model"], rows["model_link"])],
        "architecture": rows["architecture"].values,
        "clean": [_fmt(a, c) for a, c in zip(rows["clean"], rows["clean_ci"])],
        **{t: [_fmt(a, c) for a, c in zip(rows[t], rows[f"{t} ci"])] for t in board.threats},
        "union": [_fmt(a, c) for a, c in zip(rows["union"], rows["union_ci"])],
        **({"AutoAttack union": [_aa_cell(v) for v in rows["aa"]]} if board.has_autoattack else {}),
        **(_multirobust_cells(rows) if board.has_multirobust else {}),
        **({"paper": [f"[paper]({u})" if _text(u) else "" for u in rows["paper_link"]]} if board.has_links else {}),
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


def _multirobust_cells(rows: pd.DataFrame) -> dict[str, list[str]]:
    """A board's MultiRobustBench columns: CR_ind-avg, CR_ind-worst and SC, "" where a record has no strength curve
    and "n/a (why)" where SC is undefined (no reference models, training threat models unknown, everything seen)."""
    def num(v: Any, digits: str = ".1f") -> str:
        return "" if _missing(v) else format(float(v), digits)
    has = [not _missing(v) for v in rows["cr_ind_avg"]]
    notes = rows["stability_note"] if "stability_note" in rows else [None] * len(rows)
    return {"CR_ind-avg": [num(v) for v in rows["cr_ind_avg"]], "CR_ind-worst": [num(v) for v in rows["cr_ind_worst"]],
            "SC": [num(v, ".3g") if not _missing(v) else (_sc_na(why) if h else "")
                   for v, h, why in zip(rows["stability_constant"], has, notes)]}


def _sc_na(why: Any) -> str:
    """An undefined SC's cell: "n/a" and the reason."""
    return f"n/a ({_text(why)})" if _text(why) else "n/a"


def _text(value: Any) -> str:
    """A string cell of a board row, "" where the row has none (None, or the NaN pandas puts in its place)."""
    return "" if _missing(value) else str(value)


def _md_model(name: str, link: str | None) -> str:
    return f"[{name}]({link})" if _text(link) else str(name)


def _aa_cell(view: AAView | None) -> str:
    """AutoAttack's union accuracy (%) where known; its per-threat numbers where only some threat models were run."""
    if view is None:
        return ""
    if view.union is not None:
        return percent(view.union)
    return "partial: " + ", ".join(f"{t} {percent(a)}" for t, a in view.per_threat.items())


def leaderboard_markdown(results_dir: Path, *, link_base: Path | None = None,
                         plot_links: dict[str, list[tuple[str, str]]] | None = None, main_suite: str | None = None,
                         boards: list[Board] | None = None) -> str:
    """A Markdown page: a table of contents, then one board per suite and image set (the main board first), a row
    per model ranked by union accuracy."""
    boards = build_boards(results_dir, main_suite) if boards is None else boards
    lines = ["# rbx leaderboard", "",
             "Generated by `rbx leaderboard` from the records in this directory; do not edit by hand.",
             "Accuracies in %, with 95% Wilson intervals; union = correct and robust under every threat model.", ""]
    if any(b.kind == "corruptions" for b in boards):
        lines[-1:] = ["Corruption boards (common corruptions, not adversarial): accuracy under each corruption, averaged over "
                      "its severities, and the mean over every corruption and severity, which ranks (with 95% intervals "
                      "over the images); with all 15 corruptions x 5 severities it is RobustBench's corruptions accuracy.", ""]
    if any(b.has_multirobust for b in boards):
        lines += [multirobust_footnote(next((b.mrb_reference for b in boards if b.mrb_reference), "")), ""]
    if not boards:
        lines += ["_No records yet: run `rbx run` first._", ""]
    elif len(boards) > 1:
        lines += ["**Boards**", ""] + [f"- [{b.title}](#{b.anchor}){' (main board)' if b.main else ''}: {len(b.rows)} "
                                       f"model{'s' if len(b.rows) != 1 else ''}" for b in boards] + [""]
    for board in boards:
        lines += [f'<a id="{board.anchor}"></a>', "", f"## {board.title}", ""]
        if len(board.labels) > 1:
            lines += [f"_Same images under {len(board.labels)} dataset labels: {'; '.join(board.labels)}._", ""]
        lines += [board_markdown(board, link_base, plot_links)]
    left = meaningless_records(results_dir)
    if left:
        lines += [f"_Left out: {len(left)} record(s) whose threat model covers the whole [0, 1] box, so their robust "
                  f"accuracy means nothing ({', '.join(left[:5])}{', ...' if len(left) > 5 else ''})._", ""]
    return "\n".join(lines)


def multirobust_footnote(reference: str) -> str:
    """The boards' note on MultiRobustBench's columns, naming the reference models they are computed against."""
    head = ("CR_ind-avg, CR_ind-worst, SC: MultiRobustBench's metrics (Dai et al. 2023), for runs with robust accuracy "
            "at several strengths of a threat type")
    if not reference:
        return (f"{head}; without reference models (individually trained ones) the CRs are the mean and the smallest "
                "accuracy (%) over clean and every strength, and SC is n/a (`rbx leaderboard --reference RECORD`).")
    return (f"{head}, against the reference models of {reference}: the CRs are 100 x the mean and the smallest ratio "
            "of a model's accuracy to theirs over clean and every strength; SC's seen points are clean and the model's "
            "training threat models (`--seen MODEL=THREAT`, else what the record of a model `rbx train` made from "
            "scratch says); where SC is n/a, the cell says why.")


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
                     "autoattack_union": [_num(v.union) if v is not None and v.union is not None else "" for v in r["aa"]],
                     "autoattack_source": [v.source if v is not None else "" for v in r["aa"]],
                     **({"cr_ind_avg": [_mrb(v) for v in r["cr_ind_avg"]], "cr_ind_worst": [_mrb(v) for v in r["cr_ind_worst"]],
                         "stability_constant": [_mrb(v) for v in r["stability_constant"]],
                         "stability_note": [_text(v) if _missing(s) and not _missing(a) else ""
                                            for v, s, a in zip(r["stability_note"], r["stability_constant"], r["cr_ind_avg"])],
                         "multirobust_reference": [b.mrb_reference or "none" if not _missing(a) else "" for a in r["cr_ind_avg"]]}
                        if b.has_multirobust else {}),
                     "n": r["n"], "attacks": r["attacks"], "dataset": r["dataset"], "dataset_sha256": r["dataset_sha256"],
                     "device": r["device"], "date": r["date"], "seconds": r["seconds"],
                     "model_link": [_text(v) for v in r["model_link"]], "paper_link": [_text(v) for v in r["paper_link"]],
                     "record": r["record"]})
        frames.append(pd.DataFrame(cols))
    return pd.concat(frames, ignore_index=True).to_csv(index=False) if frames else "suite,rank,model\n"


def _mrb(v: Any) -> float | str:
    """A MultiRobustBench number for the CSV: rounded to 4 decimals, "" where there is none (or SC is undefined)."""
    return "" if _missing(v) else round(float(v), 4)


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


def write_all(results_dir: Path, main_suite: str | None = None, multirobust: MultiRobustReference | None = None) -> list[Path]:
    """Write leaderboard.md/.csv/.html and plots/*.png under ``results_dir``; return the paths written.

    ``main_suite``: the suite whose board (on its largest image set) comes first (``rbx leaderboard``: the default
    suite). Board-level plots (robust accuracy vs eps, a corruption run's grid) are embedded in the HTML; the
    per-record plots are files under ``plots/``, linked from the Markdown and the HTML. ``multirobust``: the
    reference models of MultiRobustBench's columns (:func:`build_boards`)."""
    results_dir = Path(results_dir)
    boards = build_boards(results_dir, main_suite, multirobust)
    records = {str(p): r for p, r in iter_records(results_dir)}
    plot_dir = results_dir / "plots"
    written: list[Path] = []
    plot_links: dict[str, list[tuple[str, str]]] = {}

    def save(name: str, png: bytes | None, caption: str, bucket: list[dict[str, Any]], board_key: str,
             embed: bool = False) -> None:
        if png is None:
            return
        plot_dir.mkdir(parents=True, exist_ok=True)
        path = plot_dir / name
        atomic_write_bytes(path, png)
        written.append(path)
        short = {"class": "per-class"}.get(name.rsplit("_", 1)[-1][:-4], name.rsplit("_", 1)[-1][:-4])
        bucket.append({"caption": caption, "file": f"plots/{name}", "short": short,
                       **({"b64": base64.b64encode(png).decode("ascii")} if embed else {})})
        plot_links.setdefault(board_key, []).append((caption, f"plots/{name}"))

    for board in boards:
        latest = [records[p] for p in board.rows["record"]]
        for norm in sorted({t.norm for r in latest for t in r.threats}):
            save(f"{board.anchor}_eps_{norm}.png", plots.eps_sweep(latest, norm),
                 f"{board.suite}: robust accuracy vs eps ({norm})", board.plots, board.anchor, embed=True)
        row_plots = []
        for rec_path, model in zip(board.rows["record"], board.rows["model"]):
            rec = records[rec_path]
            mine: list[dict[str, Any]] = []
            stem = _stem(rec_path)
            if board.kind == "corruptions":  # the grid is the board's content: embedded, after the table
                save(f"{stem}_corruptions.png", plots.corruption_grid(rec), f"{model}: accuracy per corruption and severity",
                     board.plots, board.anchor, embed=True)
                row_plots.append(mine)
                continue
            flags = read_flags(Path(rec_path), rec)
            save(f"{stem}_per_class.png", plots.per_class(rec, flags), f"{model}: per-class accuracy", mine, board.anchor)
            save(f"{stem}_attribution.png", plots.attribution(rec, flags), f"{model}: which attack broke how many points",
                 mine, board.anchor)
            save(f"{stem}_loss.png", plots.loss_curves(rec), f"{model}: attack loss curves", mine, board.anchor)
            save(f"{stem}_curve.png", plots.min_norm_curves(rec), f"{model}: robust accuracy vs eps from one minimum-norm run",
                 mine, board.anchor)
            if rec.multirobust:
                save(f"{stem}_strength.png", plots.strength_curves([rec]),
                     f"{model}: robust accuracy vs strength per threat type (MultiRobustBench)", mine, board.anchor)
            row_plots.append(mine)
        board.rows = board.rows.assign(plots=row_plots)

    # Plots of records no longer on a board are stale: derived files go when their source goes.
    keep = {p.name for p in written}
    for pattern in ("*_per_class.png", "*_attribution.png", "*_loss.png", "*_eps_*.png", "*_corruptions.png", "*_curve.png",
                    "*_strength.png"):
        for stale in plot_dir.glob(pattern) if plot_dir.is_dir() else []:
            if stale.name not in keep:
                stale.unlink()
    md = results_dir / "leaderboard.md"
    atomic_write_text(md, leaderboard_markdown(results_dir, link_base=results_dir, plot_links=plot_links, boards=boards))
    csv = results_dir / "leaderboard.csv"
    atomic_write_text(csv, leaderboard_csv(boards))
    html = results_dir / "leaderboard.html"
    atomic_write_text(html, render_html(boards, len(records), link_base=results_dir))
    return [md, csv, html, *written]


def _relative(path: str, base: Path | None) -> str:
    p = Path(path)
    if base is not None:
        try:
            return p.resolve().relative_to(Path(base).resolve()).as_posix()
        except ValueError:
            pass
    return p.as_posix()


def render_html(boards: list[Board], n_records: int, link_base: Path | None = None) -> str:
    """The self-contained HTML page (CSS, sorting and search script, board-level plots inline) from the package
    template; record and per-record plot links are relative to ``link_base`` (where the page is written)."""
    from jinja2 import Environment, PackageLoader, select_autoescape

    env = Environment(loader=PackageLoader("robustbench_ext.reporting", "templates"), autoescape=select_autoescape(["html", "j2"]))
    view = []
    for b in boards:
        rows = []
        rank = b.rank_column
        for _, r in b.rows.iterrows():
            aa = r.get("aa")
            rows.append({
                "rank": int(r["rank"]), "model": r["model"], "architecture": r["architecture"],
                "model_link": _text(r.get("model_link")), "paper_link": _text(r.get("paper_link")),
                "clean": r["clean"], "clean_s": percent(r["clean"]), "clean_ci": interval(r["clean_ci"]),
                "acc": {t: "" if _missing(r[t]) else r[t] for t in b.threats},
                "acc_s": {t: NOT_MEASURED if _missing(r[t]) else percent(r[t]) for t in b.threats},
                "ci": {t: "not measured" if _missing(r[t]) else interval(r[f"{t} ci"]) for t in b.threats},
                "union": r[rank], "union_s": percent(r[rank]), "union_ci": interval(r[f"{rank}_ci"]),
                "aa": "" if aa is None or aa.union is None else aa.union,
                "aa_s": "" if aa is None else (percent(aa.union) if aa.union is not None else "partial"),
                "aa_title": "" if aa is None else aa.describe(),
                **_multirobust_view(r),
                "n": int(r["n"]), "attacks": r["attacks"], "dataset": r["dataset"], "device": r["device"] or "",
                "date": r["date"], "seconds": r["seconds"],
                "record": _relative(r["record"], link_base), "record_name": Path(r["record"]).name,
                "plots": r.get("plots", []) or [],
            })
        view.append({"suite": b.suite, "title": b.title, "anchor": b.anchor, "threats": b.threats, "rows": rows,
                     "plots": b.plots, "main": b.main, "kind": b.kind, "n": b.n, "images": b.images[:8],
                     "labels": b.labels, "attacks": b.attacks, "has_aa": b.has_autoattack, "has_links": b.has_links,
                     "has_mrb": b.has_multirobust, "mrb_reference": b.mrb_reference,
                     "rank_label": "mean" if b.kind == "corruptions" else "union",
                     "attacks_label": "corruption source" if b.kind == "corruptions" else "attack suite"})
    mrb_note = multirobust_footnote(next((b.mrb_reference for b in boards if b.mrb_reference), ""))
    return env.get_template("leaderboard.html.j2").render(boards=view, n_records=n_records, generated=utc_now(),
                                                          mrb_note=mrb_note.replace("`", ""))


def _multirobust_view(r: pd.Series) -> dict[str, Any]:
    """A row's MultiRobustBench cells for the HTML: sort values and texts (the note line as their title)."""
    avg, worst, sc = r.get("cr_ind_avg"), r.get("cr_ind_worst"), r.get("stability_constant")
    has = not _missing(avg)
    return {"cr_avg": float(avg) if has else "", "cr_avg_s": f"{float(avg):.1f}" if has else "",
            "cr_worst": float(worst) if has else "", "cr_worst_s": f"{float(worst):.1f}" if has else "",
            "sc": float(sc) if has and not _missing(sc) else "",
            "sc_s": (f"{float(sc):.3g}" if not _missing(sc) else "n/a") if has else "",
            "sc_note": _text(r.get("stability_note")) if has and _missing(sc) else "",
            "mrb_title": _text(r.get("multirobust_note"))}


def write_leaderboard(results_dir: Path, main_suite: str | None = None) -> Path:
    """Write every leaderboard file; return the Markdown path (kept for callers of the first version)."""
    return write_all(results_dir, main_suite)[0]


def embed_in_readme(readme: Path, results_dir: Path, suite: str, multirobust: MultiRobustReference | None = None) -> None:
    """Replace the text between ``<!-- leaderboard:SUITE:start -->`` and ``...:end -->`` with that suite's boards
    (MultiRobustBench's columns against ``multirobust``'s reference models, as :func:`build_boards`)."""
    text = Path(readme).read_text()
    start, end = f"<!-- leaderboard:{suite}:start -->", f"<!-- leaderboard:{suite}:end -->"
    if start not in text or end not in text:
        raise RbxError(f"{readme} has no {start} ... {end} markers to fill")
    boards = [b for b in build_boards(results_dir, multirobust=multirobust) if b.suite == suite]
    if not boards:
        raise RbxError(f"no records of suite '{suite}' in {results_dir}")
    # record links relative to the README; one board per image set, largest n first
    body = "\n".join(f"**{b.title}**\n\n{board_markdown(b, link_base=Path(readme).parent)}" for b in boards)
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    atomic_write_text(Path(readme), f"{head}{start}\n{body}{end}{tail}")

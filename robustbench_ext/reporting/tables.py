"""One run's report: its text table, and a Markdown page with its plots in the report's own folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from . import plots
from ..records.stats import percent
from ..records.multirobust import block_line
from ..records.schema import NOT_MEASURED, RunRecord
from ..paths import atomic_write_bytes, atomic_write_text
from ..records.store import read_flags, read_record


#: How a table marks the row of a threat model whose ball covers the box (the record's ``config.meaningless``).
MEANINGLESS = "meaningless: the ball covers the [0, 1] box"


def format_table(record: RunRecord) -> str:
    """The run as a small text table: clean, each threat model, union, with intervals and seconds; a threat model whose
    ball covers the whole box (and the union that includes it) is marked meaningless on its row."""
    def row(label: str, acc, seconds: str = "", note: str = "") -> str:
        if acc is None:  # not measured (union-only run): never shown as a number
            return f"{label:<14} {NOT_MEASURED:>6}   {'':^14}   {seconds:>8}  {note}".rstrip()
        lo, hi = acc.ci95
        return f"{label:<14} {percent(acc.accuracy, 2):>6}   [{percent(lo):>5}, {percent(hi):>5}]   {seconds:>8}  {note}".rstrip()

    prov = record.provenance
    if record.corruptions is not None:
        return _corruption_table(record)
    lines = [
        *_header(record),
        "",
        f"{'':<14} {'acc %':>6}   {'95% CI':^14}   {'seconds':>8}  attacks (points broken)",
        row("clean", record.clean),
    ]
    meaningless = list(record.config.get("meaningless") or [])
    for t in record.threats:
        note = ", ".join(f"{a.attack} ({a.n_broken})" for a in t.attacks)
        if not t.measured:
            note += "; not measured: attacked only points robust under the threat models before it"
        if t.threat in meaningless:
            note = f"{MEANINGLESS}; {note}"
        lines.append(row(t.threat, t.robust, f"{t.seconds:.1f}", note))
    for a in record.union_attacks:
        lines.append(f"{'+ ' + a.attack:<14} {'':>6}   {'':^14}   {a.seconds:>8.1f}  union stage: broke {a.n_broken} "
                     f"of {a.n_attacked} union-robust points")
    lines += escalation_lines(record)
    order = (record.config.get("union_only") or {}).get("order")
    union_note = f"union-only run, order {' > '.join(order)}" if order else "all threat models"
    if meaningless:
        union_note = f"meaningless: it includes {', '.join(meaningless)}; {union_note}"
    lines.append(row("union", record.union, f"{prov['wall_seconds']:.1f}", union_note))
    for sw in record.sweeps:
        pts = ", ".join(f"{p['label'].split(':', 1)[1]}: {percent(p['robust']['accuracy'])}" for p in sw["points"])
        lines.append(f"eps sweep {sw['threat']}: {pts}")
    lines += curve_lines(record.curves)
    lines += multirobust_lines(record)
    lines += audit_lines(record.audit)
    return "\n".join(lines)


def multirobust_lines(record: RunRecord) -> list[str]:
    """One line of MultiRobustBench's metrics (the record's ``multirobust`` block), where the record has a strength
    curve (an eps sweep, a ``--curve``, several threat models of one type); none otherwise."""
    return [block_line(record.multirobust)] if record.multirobust else []


def escalation_lines(record: RunRecord) -> list[str]:
    """What the run added because of masking signs, or that it did not (then its numbers are upper bounds)."""
    esc = record.escalation
    if not esc:
        return []
    signs = ", ".join(r["sign"] for r in esc.get("reasons", []))
    if not esc.get("enabled", True):
        return [f"MASKING: pre-checks flagged {signs}; escalation was off (--no-escalate): every robust accuracy above "
                "is an upper bound that stronger attacks may break"]
    return [f"escalated ({r['sign']}): {r['action']}" for r in esc.get("reasons", [])]


def audit_lines(audit) -> list[str]:
    """One line per audited threat model: AutoAttack (Sparse-RS under L0) on a random sample of the points the run
    left robust."""
    out = []
    for a in audit:
        who = "AutoAttack standard" if a.get("attack", "autoattack") == "autoattack" else a["attack"]
        out.append(f"audit {a['threat']}: {who} broke {a['broken']} of {a['sampled']} sampled robust points "
                   f"(of {a['population']}); cascade miss rate <= {percent(a['miss_rate_upper95'])}% (95%), robust "
                   f"accuracy >= {percent(a['robust_lower95'])}% (95%)")
    return out


def _corruption_table(record: RunRecord) -> str:
    """A corruption run: clean, per corruption the mean over severities (and each severity), the overall mean."""
    c = record.corruptions
    assert c is not None
    prov = record.provenance

    def row(label: str, acc: float, ci: tuple[float, float], seconds: str = "", note: str = "") -> str:
        return f"{label:<17} {percent(acc, 2):>6}   [{percent(ci[0]):>5}, {percent(ci[1]):>5}]   {seconds:>8}  {note}".rstrip()

    source = c.source.get("description", "")
    lines = [
        *_header(record),
        "",
        f"{'':<17} {'acc %':>6}   {'95% CI':^14}   {'seconds':>8}  per severity (acc %)",
        row("clean", record.clean.accuracy, record.clean.ci95),
    ]
    for name, mean in c.per_corruption.items():
        cells = [r for r in c.results if r.corruption == name]
        per = ", ".join(f"s{r.severity} {percent(r.accuracy.accuracy)}" for r in cells)
        lines.append(row(name, mean.accuracy, mean.ci95, f"{sum(r.seconds for r in cells):.1f}", per))
    what = "all 15 x 5: RobustBench's corruptions accuracy, by its definition" if c.complete else f"{len(c.results)} of the 75 corruption/severity pairs"
    lines.append(row("mean", c.mean.accuracy, c.mean.ci95, f"{prov['wall_seconds']:.1f}", what))
    if not c.source.get("comparable_to_published", True):
        lines.append(f"note: {c.source.get('note', source)}")
    return "\n".join(lines)


def write_report(record_path: Path, out: Path | None = None) -> tuple[str, Path]:
    """Write ``<out>/<run>_report.md`` and its PNGs (default ``out``: ``<records>/../reports/<run>``); return
    the run's table and the report's path. The plots go with the report, never beside the records."""
    record_path = Path(record_path)
    rec = read_record(record_path)
    flags = read_flags(record_path, rec)
    out = Path(out) if out is not None else record_path.parent.parent / "reports" / record_path.stem
    out.mkdir(parents=True, exist_ok=True)
    table = format_table(rec)
    lines = [f"# rbx report: {rec.model['name']} on {rec.dataset['source']}", "", "```", table, "```", ""]
    if rec.corruptions is not None:  # no attacks: one heatmap of the accuracies
        figures = [("corruptions", plots.corruption_grid(rec), "Accuracy per corruption and severity")]
    else:
        figures = [("per_class", plots.per_class(rec, flags), "Per-class accuracy"),
                   ("attribution", plots.attribution(rec, flags), "Which attack broke how many points"),
                   ("loss", plots.loss_curves(rec), "Attack loss curves")]
    figures += [(f"eps_{n}", plots.eps_sweep([rec], n), f"Robust accuracy vs eps ({n})") for n in sorted({t.norm for t in rec.threats})]
    for key, png, caption in figures:
        if png is None:
            continue
        name = f"{record_path.stem}_{key}.png"
        atomic_write_bytes(out / name, png)
        lines += [f"## {caption}", "", f"![{caption}]({name})", ""]
    path = out / f"{record_path.stem}_report.md"
    atomic_write_text(path, "\n".join(lines))
    return table, path


def curve_lines(curves: Sequence[dict[str, Any]]) -> list[str]:
    """Table lines: per curve and threat model, the curve's and the cascade's robust accuracy."""
    lines = []
    for cv in curves:
        lines.append(f"curve {cv['norm']} ({cv['attack']}, {len(cv['eps'])} eps from one run): median minimal norm "
                     f"{cv['median_min_norm']:.4g}, never broken {cv['never_broken']} of {cv['n']}")
        for ch in cv["checks"]:
            flag = (f"  FLAG: curve above, {ch['missed_by_curve']} points the cascade broke were missed"
                    if ch["curve_above"] else "")
            lines.append(f"  at {ch['threat']}: curve {percent(ch['curve'])}% vs fixed-eps {percent(ch['cascade'])}% "
                         f"({ch['reference']}){flag}")
    return lines


def _header(record: RunRecord) -> list[str]:
    """The lines every table starts with: model, dataset, suite, device and seed, the draws rule if any."""
    prov = record.provenance
    return [f"model    {record.model['name']} ({record.model['architecture']})",
            f"dataset  {record.dataset['source']}, first {record.n}",
            f"suite    {record.suite_label}",
            f"device   {prov['device_name']}, seed {prov['seed']}",
            *([f"judged   {rule}: a point counts as broken (clean: misclassified) only if most draws misclassify it"]
              if (rule := describe_rule(record.config.get("draws"))) else [])]


def describe_rule(d: dict[str, Any] | None) -> str | None:
    """One line for tables: ``majority of R draws (seed S, detected)``, or None for a plain run."""
    if not d:
        return None
    return f"majority of {d['r']} draws (seed {d['seed']}, {d.get('source', 'declared')})"


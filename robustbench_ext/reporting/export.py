"""Export records as RobustBench leaderboard entries (``model_info/<dataset>/<threat>/<Name>.json``).

The keys are RobustBench's own (``robustbench/model_info/*``): link, name, authors, additional_data,
number_forward_passes, dataset, venue, architecture, eps, clean_acc, reported, autoattack_acc, and the
optional external, footnote, unreliable. Accuracies are strings in percent with two decimals.
RobustBench has Linf and L2 boards only, so only those threat models are exported.

``autoattack_acc`` is AutoAttack's number. It comes from the record itself when that threat model was
evaluated with ``--attack autoattack``, or from ``autoattack_record`` (a record of the same model and
images evaluated with AutoAttack). Without either, the entry carries rbx's number in
``autoattack_acc`` and says so in ``footnote``. When rbx's own attacks found a lower robust accuracy
than AutoAttack, that number goes to ``external`` (RobustBench ranks by ``external`` when present).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from ..errors import RbxError
from ..records.schema import RunRecord
from ..paths import atomic_write_text
from ..records.stats import percent
from ..attack.threat import format_eps

BOARDS = ("Linf", "L2")
KEYS = ("link", "name", "authors", "additional_data", "number_forward_passes", "dataset", "venue", "architecture",
        "eps", "clean_acc", "reported", "autoattack_acc")


def _pct(x: float) -> str:
    return percent(x, 2)


def _is_autoattack(threat_result) -> bool:
    return bool(threat_result.attacks) and all(a.attack.startswith("autoattack/") for a in threat_result.attacks)


def entries(record: RunRecord, meta: dict[str, Any] | None = None,
            autoattack_record: RunRecord | None = None) -> dict[str, dict[str, Any]]:
    """RobustBench entries per board (``Linf``, ``L2``) for the threat models of ``record``."""
    meta = dict(meta or {})
    unknown = set(meta) - set(KEYS) - {"external", "footnote", "unreliable"}
    if unknown:
        raise RbxError(f"unknown RobustBench keys in the metadata: {sorted(unknown)}; known: {', '.join(KEYS)}")
    if autoattack_record is not None and autoattack_record.dataset.get("sha256") != record.dataset.get("sha256"):
        raise RbxError("the AutoAttack record evaluated different images than the record to export")
    dataset = str(record.dataset.get("name", "cifar10")).split("-")[0]
    out: dict[str, dict[str, Any]] = {}
    for t in record.threats:
        if t.norm not in BOARDS:
            continue
        if not t.measured:
            raise RbxError(f"{t.threat} was not measured in this union-only run ({record.run_id}): a RobustBench entry "
                           "needs its robust accuracy; export a full run (rbx run without --union-only)")
        aa = t if _is_autoattack(t) else None
        if aa is None and autoattack_record is not None:
            aa = next((x for x in autoattack_record.threats if x.threat == t.threat and _is_autoattack(x)), None)
        entry: dict[str, Any] = {
            "link": meta.get("link", ""),
            "name": meta.get("name", record.model.get("name", "")),
            "authors": meta.get("authors", ""),
            "additional_data": bool(meta.get("additional_data", False)),
            "number_forward_passes": int(meta.get("number_forward_passes", 1)),
            "dataset": dataset,
            "venue": meta.get("venue", ""),
            "architecture": meta.get("architecture", record.model.get("architecture", "")),
            "eps": format_eps(t.eps),
            "clean_acc": _pct(record.clean.accuracy),
            # RobustBench's "reported" is the paper's number: only the metadata can say it (null otherwise)
            "reported": str(meta["reported"]) if meta.get("reported") is not None else None,
            "autoattack_acc": _pct((aa or t).robust.accuracy),
        }
        notes = [meta["footnote"]] if meta.get("footnote") else []
        if aa is None:
            attacks = " > ".join(a.attack for a in t.attacks)
            notes.append(f"autoattack_acc is rbx's robust accuracy ({attacks}), not AutoAttack's, "
                         f"on the first {record.n} images of {record.dataset.get('source')}.")
        elif aa is not t and t.robust.accuracy < aa.robust.accuracy:
            entry["external"] = _pct(t.robust.accuracy)
            notes.append(f"external: rbx ({' > '.join(a.attack for a in t.attacks)}) found a lower robust accuracy.")
        audit = next((a for a in record.audit if a["threat"] == t.threat), None)
        if audit is not None:
            notes.append(f"Audit: AutoAttack standard broke {audit['broken']} of {audit['sampled']} points rbx left robust "
                         f"(95% upper bound on the share missed: {100 * audit['miss_rate_upper95']:.1f}%).")
        if record.escalation.get("reasons"):
            signs = ", ".join(x["sign"] for x in record.escalation["reasons"])
            notes.append(f"Masking signs ({signs}): " + ("rbx escalated (black box / EOT / one image at a time)."
                                                         if record.escalation.get("enabled", True) else
                                                         "not escalated, the number is an upper bound."))
        if "(JPEG copy)" in str(record.dataset.get("source", "")):
            notes.append("Evaluated on the JPEG copy of CIFAR-10, not the official test set.")
        if notes:
            entry["footnote"] = " ".join(notes)
        entry["unreliable"] = bool(meta.get("unreliable", False))
        out[t.norm] = entry
    if not out:
        raise RbxError(f"the record has no {' or '.join(BOARDS)} threat model: RobustBench has boards for those only")
    return out


def left_out(record: RunRecord, meta: dict[str, Any] | None = None) -> list[str]:
    """What an export to RobustBench drops: threat models without a RobustBench board (L1), the union, and
    ``reported`` when the metadata does not give the paper's number."""
    out = [t.threat for t in record.threats if t.norm not in BOARDS]
    if len(record.threats) > 1:
        out.append(f"union ({percent(record.union.accuracy)}%)")
    if not (meta or {}).get("reported"):
        out.append("'reported' (the paper's number: give it in --meta)")
    return out


def export(record: RunRecord, out_dir: Path, model_id: str, meta: dict[str, Any] | None = None,
           autoattack_record: RunRecord | None = None) -> list[Path]:
    """Write ``out_dir/<dataset>/<threat>/<model_id>.json`` per board; return the paths."""
    if not re.fullmatch(r"[A-Za-z0-9_.+-]+", model_id):
        raise RbxError(f"model id '{model_id}' must use letters, digits and _ . + - only (it becomes a file name)")
    paths = []
    for board, entry in entries(record, meta, autoattack_record).items():
        path = Path(out_dir) / entry["dataset"] / board / f"{model_id}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(entry, indent=2) + "\n")
        paths.append(path)
    return paths

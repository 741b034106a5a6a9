"""The regression gate: did robust accuracy change significantly between two runs on the same images?

Two records are paired per sample (they must have evaluated exactly the same images: same dataset
hash, indices and labels). For each threat model and for the union, the discordant pairs are
``drops`` (robust in the baseline, broken in the candidate) and ``rises`` (the reverse). The exact
McNemar test is the two-sided binomial test of ``drops`` against ``drops + rises`` trials at p = 1/2.
The comparisons of one gate are corrected together with Holm's step-down method, so the whole gate
keeps its false-alarm rate at ``alpha``.

A significant drop fails the gate (robustness regressed), and so does a significant rise: with the
same model, a rise in robust accuracy usually means the attack got weaker.

Union-only records (``rbx run --union-only``) gate the union (their union flags equal a full run's, so
either side may be union-only) and the threat models measured in both runs; a gate that names a threat
model one of the runs did not measure (``only``) is refused with a message saying so.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import comb
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import RbxError
from ..records.schema import RunRecord, SampleFlags
from ..records.store import iter_records, read_flags, read_record
from ..records.stats import percent


class UnusableInput(RbxError):
    """The two runs cannot be compared (exit code 2)."""


def mcnemar_exact(drops: int, rises: int) -> float:
    """Two-sided exact McNemar p-value: ``P(X <= min) * 2`` for X ~ Binomial(drops + rises, 1/2), capped at 1."""
    n = drops + rises
    if n == 0:
        return 1.0
    k = min(drops, rises)
    tail = sum(comb(n, i) for i in range(k + 1))
    return min(1.0, 2 * tail / 2**n)


def holm_adjust(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values of one family of m tests, in the input order.

    With the raw p sorted ascending, p_(1) <= ... <= p_(m): adjusted p_(i) = max over j <= i of
    min(1, (m - j + 1) p_(j)) (Holm 1979, "A simple sequentially rejective multiple test procedure").
    A test is rejected at family-wise level alpha iff its adjusted p <= alpha, which is exactly Holm's
    step-down rule; the adjusted p is what results pages report beside the raw p.
    """
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    out = [1.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * float(pvalues[i])))
        out[i] = running
    return out


def holm(pvalues: Sequence[float], alpha: float) -> list[bool]:
    """Holm-Bonferroni: which hypotheses are rejected at family-wise level ``alpha`` (adjusted p <= alpha)."""
    return [q <= alpha for q in holm_adjust(pvalues)]


@dataclass(frozen=True)
class Comparison:
    """One threat model (or the union) of a gate."""

    name: str
    baseline: float
    candidate: float
    drops: int
    rises: int
    p_value: float
    significant: bool = False
    p_holm: float = float("nan")  # Holm-adjusted within the gate's comparisons (significant iff p_holm <= alpha)

    @property
    def verdict(self) -> str:
        if not self.significant:
            return "ok"
        return "DROP" if self.candidate < self.baseline else "RISE"


@dataclass(frozen=True)
class GateResult:
    baseline: str
    candidate: str
    n: int
    alpha: float
    comparisons: tuple[Comparison, ...]
    notes: tuple[str, ...] = ()

    @property
    def failed(self) -> bool:
        return any(c.significant for c in self.comparisons)

    def report(self) -> str:
        lines = [f"baseline  {self.baseline}", f"candidate {self.candidate}",
                 f"{self.n} paired samples; exact McNemar tests, Holm-corrected at alpha = {self.alpha}", ""]
        for c in self.comparisons:
            lines.append(f"{c.name:<14} {percent(c.baseline, 2):>6}% -> {percent(c.candidate, 2):>6}%  "
                         f"({'+' if c.candidate >= c.baseline else ''}{percent(c.candidate - c.baseline, 2)})  flips: {c.drops} down, {c.rises} up  "
                         f"p = {c.p_value:.3g} (Holm {c.p_holm:.3g})  {c.verdict}")
        lines += list(self.notes)
        lines.append("")
        if self.failed:
            bad = ", ".join(f"{c.name} ({c.verdict.lower()})" for c in self.comparisons if c.significant)
            lines.append(f"FAIL: robust accuracy changed significantly: {bad}. A rise with an unchanged model "
                         "usually means the attack got weaker.")
        else:
            lines.append("PASS: no significant change in robust accuracy.")
        return "\n".join(lines)


def _check_same_images(b: RunRecord, c: RunRecord, fb: SampleFlags, fc: SampleFlags) -> None:
    if b.dataset.get("sha256") != c.dataset.get("sha256") or b.n != c.n:
        raise UnusableInput(f"the runs evaluated different images (dataset sha256 {str(b.dataset.get('sha256'))[:12]}, "
                            f"n={b.n} vs {str(c.dataset.get('sha256'))[:12]}, n={c.n}); evaluate both on the same slice")
    if not (np.array_equal(fb.index, fc.index) and np.array_equal(fb.y, fc.y)):
        raise UnusableInput("the runs' per-sample indices or labels differ; evaluate both on the same slice")


def evaluation_setup(r: RunRecord) -> dict[str, object]:
    """What produced a record's numbers besides the model: per threat model its attacks and their parameters,
    the union-stage attacks, and the seed."""
    return {"attacks": {t.threat: [(a.attack, a.params) for a in t.attacks if not a.skipped] for t in r.threats},
            "union": [(a.attack, a.params) for a in r.union_attacks], "seed": r.config.get("seed")}


def _same_stages(a: list, b: list) -> bool:
    """Same attacks in the same order, with equal values for every parameter both records name (a parameter
    one rbx version added, with its default, does not make two otherwise identical runs differ)."""
    return len(a) == len(b) and all(na == nb and all(pa[k] == pb[k] for k in set(pa) & set(pb))
                                    for (na, pa), (nb, pb) in zip(a, b))


def _show(stages: list) -> str:
    return " > ".join(f"{n}({', '.join(f'{k}={v}' for k, v in sorted(p.items()))})" for n, p in stages)


def _setup_differences(b: RunRecord, c: RunRecord) -> list[str]:
    sb, sc = evaluation_setup(b), evaluation_setup(c)
    out = [f"{t}: {_show(sb['attacks'][t])} vs {_show(sc['attacks'][t])}"  # type: ignore[index]
           for t in sorted(set(sb["attacks"]) & set(sc["attacks"]))  # type: ignore[arg-type]
           if not _same_stages(sb["attacks"][t], sc["attacks"][t])]  # type: ignore[index]
    if not _same_stages(sb["union"], sc["union"]):  # type: ignore[arg-type]
        out.append("the union-stage attacks differ")
    if sb["seed"] != sc["seed"]:
        out.append(f"seed {sb['seed']} vs {sc['seed']}")
    return out


def compare(baseline: Path, candidate: Path, alpha: float = 0.05, allow_different_attacks: bool = False,
            only: Sequence[str] = ()) -> GateResult:
    """Gate one candidate record against one baseline record.

    The two runs must have evaluated the same images with the same attacks, parameters and seed: else a
    change in robust accuracy says nothing about the model. ``allow_different_attacks`` compares anyway,
    with a warning in the report. ``only`` (threat labels and/or ``union``) restricts the gate to those
    comparisons; a named threat model that either run did not measure (union-only) is refused.
    """
    if not 0 < alpha < 1:
        raise UnusableInput(f"--alpha must be in (0, 1), got {alpha}")
    b, c = read_record(baseline), read_record(candidate)
    fb, fc = read_flags(baseline, b), read_flags(candidate, c)
    _check_same_images(b, c, fb, fc)
    differ = _setup_differences(b, c)
    if differ and not allow_different_attacks:
        raise UnusableInput(f"the runs were not produced by the same attacks and seed ({'; '.join(differ)}): a change "
                            "would not be the model's; evaluate both the same way, or pass --allow-different-attacks")
    common = [t for t in fb.threats if t in fc.threats]
    if not common:
        raise UnusableInput(f"the runs share no threat model (baseline: {', '.join(fb.threats)}; "
                            f"candidate: {', '.join(fc.threats)})")
    notes = [f"WARNING: different evaluations ({'; '.join(differ)}): a significant change may be the attacks', "
             "not the model's"] if differ else []
    skipped = sorted(set(fb.threats) ^ set(fc.threats))
    if skipped:
        notes.append(f"not compared (in one run only): {', '.join(skipped)}")
    unmeasured = [t for t in common if not (fb.is_measured(t) and fc.is_measured(t))]
    _check_only(only, common, unmeasured, set(fb.threats) == set(fc.threats), b, c)
    if unmeasured and not only:
        notes.append(f"not compared (not measured in a union-only run): {', '.join(unmeasured)}")
    if bool(b.config.get("union_only")) != bool(c.config.get("union_only")):
        notes.append("one run is union-only: its union flags are those of the full run (same attacks and seed)")
    series = [(t, fb.robust[:, fb.threats.index(t)], fc.robust[:, fc.threats.index(t)]) for t in common
              if t not in unmeasured and (not only or t in only)]
    if set(fb.threats) == set(fc.threats):
        if not only or "union" in only:
            series.append(("union", fb.union, fc.union))
    else:
        notes.append("union not compared: the runs evaluated different threat models")
    raw = []
    for name, xb, xc in series:
        drops, rises = int((xb & ~xc).sum()), int((~xb & xc).sum())
        raw.append(Comparison(name, float(xb.mean()), float(xc.mean()), drops, rises, mcnemar_exact(drops, rises)))
    adjusted = holm_adjust([r.p_value for r in raw])
    comps = tuple(Comparison(r.name, r.baseline, r.candidate, r.drops, r.rises, r.p_value, q <= alpha, q)
                  for r, q in zip(raw, adjusted))
    clean_flips = int((fb.clean_correct != fc.clean_correct).sum())
    if clean_flips:
        notes.append(f"clean accuracy {percent(fb.clean_correct.mean(), 2)}% -> {percent(fc.clean_correct.mean(), 2)}% "
                     f"({clean_flips} samples changed): is this the same model?")
    return GateResult(str(baseline), str(candidate), b.n, alpha, comps, tuple(notes))


def _check_only(only: Sequence[str], common: Sequence[str], unmeasured: Sequence[str], same_threats: bool,
                b: RunRecord, c: RunRecord) -> None:
    """Refuse a gate on a comparison the runs cannot give: an unknown name, a threat model not measured, no union."""
    for name in only:
        if name == "union":
            if not same_threats:
                raise UnusableInput("--only union: the runs evaluated different threat models, so their unions differ")
        elif name not in common:
            raise UnusableInput(f"--only {name}: not a threat model of both runs (common: {', '.join(common)}, union)")
        elif name in unmeasured:
            which = [r.run_id for r in (b, c) if r.config.get("union_only") and name not in r.config["union_only"].get("exact", ())]
            raise UnusableInput(f"--only {name}: its robust accuracy was not measured in the union-only run "
                                f"{' and '.join(which)} (only the union and {', '.join(sorted(set(common) - set(unmeasured))) or 'no threat model'} are); "
                                "gate the union (--only union) or evaluate without --union-only")


def paired_mcnemar(fa: SampleFlags, fb: SampleFlags) -> dict[str, dict]:
    """Two models on the same images, per metric (clean, each threat model both measured, union): the accuracies of
    a and b in %, the discordant pairs (a only, b only), the exact two-sided McNemar p-value (``p_value``, raw)
    and Holm's adjusted p with this comparison's metrics as the family (``p_holm``). For reproductions that
    compare different training arms; a page that reports several comparisons declares a larger family and
    adjusts within it (``benchmarks/paired.py``: the rule every results page follows). :func:`compare` is the gate."""
    if not (np.array_equal(fa.index, fb.index) and np.array_equal(fa.y, fb.y)):
        raise UnusableInput("the two evaluations did not see the same images; evaluate both on the same slice")
    series = {"clean": (fa.clean_correct, fb.clean_correct)}
    for t in (t for t in fa.threats if t in fb.threats and fa.is_measured(t) and fb.is_measured(t)):
        series[t] = (fa.robust[:, fa.threats.index(t)], fb.robust[:, fb.threats.index(t)])
    if set(fa.threats) == set(fb.threats):
        series["union"] = (fa.union, fb.union)
    out = {}
    for name, (a, b) in series.items():
        a_only, b_only = int((a & ~b).sum()), int((~a & b).sum())
        out[name] = {"a": percent(a.mean(), 2), "b": percent(b.mean(), 2), "a_only": a_only, "b_only": b_only,
                     "p_value": mcnemar_exact(a_only, b_only)}
    for v, q in zip(out.values(), holm_adjust([v["p_value"] for v in out.values()])):
        v["p_holm"] = q
    return out


def _describe(found: dict[tuple, Path]) -> str:
    """A few (model, suite) pairs of a results directory, for messages."""
    shown = [f"{m} / {s}" for m, s, _ in list(found)[:3]]
    return ", ".join(shown) + (f" and {len(found) - 3} more" if len(found) > 3 else "")


def resolve_pairs(baseline: Path, candidate: Path) -> list[tuple[Path, Path]]:
    """Record files to compare: two files, or the newest record per (model, suite, dataset) in two directories."""
    baseline, candidate = Path(baseline), Path(candidate)
    for p in (baseline, candidate):
        if not p.exists():
            raise UnusableInput(f"no such record or directory: {p}")
    if baseline.is_file() and candidate.is_file():
        return [(baseline, candidate)]
    if baseline.is_dir() and candidate.is_dir():
        def newest(d: Path) -> dict[tuple, Path]:
            out: dict[tuple, Path] = {}
            for path, r in iter_records(d):  # oldest first: later ones win
                out[(r.model.get("name"), r.suite_label, r.dataset.get("sha256"))] = path
            return out

        nb, nc = newest(baseline), newest(candidate)
        for d, found in ((baseline, nb), (candidate, nc)):
            if not found:  # say what is missing, not that nothing matches
                raise UnusableInput(f"no records in {d} (no rbx record .json under it): give the results directory "
                                    "a run wrote (rbx run --results-dir DIR), or a record file")
        pairs = [(nb[k], nc[k]) for k in sorted(nb, key=str) if k in nc]
        if not pairs:
            raise UnusableInput(f"no (model, suite, images) in common between {baseline} and {candidate}: baseline has "
                                f"{_describe(nb)}; candidate has {_describe(nc)}")
        return pairs
    raise UnusableInput("give two record files or two results directories")

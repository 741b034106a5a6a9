#!/usr/bin/env python
"""Paired comparisons of rbx records on the same images, under ONE rule for p-values (issue 29).

The rule, for every results page:

1. Each comparison of two arms on one metric (clean, a threat model, the union) is an exact two-sided
   McNemar test per test image on the discordant pairs (only the candidate right, only the baseline right;
   :func:`robustbench_ext.reporting.regress.mcnemar_exact`).
2. Tests are grouped into a declared FAMILY (which comparisons, how many tests): the raw p and Holm's
   adjusted p within the family (:func:`robustbench_ext.reporting.regress.holm_adjust`) are both reported.
3. A direction is "shown" only when its Holm-adjusted p < ALPHA (0.05).
4. A comparison in which neither arm learned anything to compare is "nothing shown", whatever its p:
   both arms' union robust accuracy at most MIN_ROBUST (1 %) is "no robustness learned: nothing shown"; both
   arms' clean accuracy at most chance + CHANCE_MARGIN (1/K + 2 points) is "at chance: nothing shown". The
   union is the measure because one threat model's accuracy is not a sign of learned robustness: an
   undefended model keeps some (the standard small CNN: 8.5 % at L2 0.5, 0 % union; results/mixer.md).
5. The budget that would be needed to show a direction not shown: from the observed discordant pairs
   (b only-candidate-right, c only-baseline-right, of n images), pi = b / (b + c) is the share of discordant
   pairs in the candidate's favour and r = (b + c) / n the discordance rate. :func:`discordant_needed` is the
   smallest number D of discordant pairs for which the exact McNemar test at level alpha' = ALPHA / m (m the
   family's size: Holm's first, strictest step, so the test is rejected by Holm whatever the other p-values)
   rejects with probability >= POWER (80 %) when the true share is pi; :func:`budget` turns it into test
   images, ceil(D / r). It is the test budget at THIS training budget: a larger training budget changes the
   effect itself (the GPU-sized runs are owed separately).

Usage:

    python benchmarks/paired.py --against BASE.json CAND.json [CAND2.json ...] [--names base,cand,...]
        one family: every candidate against the baseline, on every common metric
    python benchmarks/paired.py --spec results/families/defenses.toml [--write | --check]
        the families and claims a results page declares (see ``results/families/README.md``): prints the
        generated Markdown blocks; ``--write`` puts them between the page's ``<!-- paired:ID -->`` and
        ``<!-- /paired:ID -->`` markers; ``--check`` exits 1 when the page differs from what the records give.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from robustbench_ext.errors import RbxError
from robustbench_ext.records.schema import SampleFlags
from robustbench_ext.records.stats import percent
from robustbench_ext.records.store import read_flags, read_record
from robustbench_ext.reporting.regress import holm_adjust, mcnemar_exact

ALPHA = 0.05
POWER = 0.8
MIN_ROBUST = 0.01
CHANCE_MARGIN = 0.02
REPO = Path(__file__).resolve().parent.parent


class SpecError(ValueError):
    """A family spec or a page that does not fit it (one line, said what to do)."""


# ---- the exact McNemar test's power and the budget it implies --------------------------------------------
def _log_binom_pmf(d: int, p: float) -> np.ndarray:
    """``[d + 1]``: log P(X = k) for X ~ Binomial(d, p), k = 0..d (p in (0, 1))."""
    k = np.arange(d + 1, dtype=np.float64)
    log_comb = np.concatenate([[0.0], np.cumsum(np.log(d - k[1:] + 1) - np.log(k[1:]))])
    return log_comb + k * math.log(p) + (d - k) * math.log1p(-p)


def rejection_cut(d: int, alpha: float) -> int:
    """The largest k with exact McNemar p(k, d - k) <= ``alpha`` (the test rejects iff min(b, c) <= k); -1: never.

    The two-sided exact p of (b, c) with b + c = d is min(1, 2 P(X <= min(b, c))), X ~ Binomial(d, 1/2).
    """
    if d <= 0:
        return -1
    cdf = np.cumsum(np.exp(_log_binom_pmf(d, 0.5)))
    ok = np.flatnonzero(2 * cdf[: d // 2 + 1] <= alpha * (1 + 1e-12))
    return int(ok[-1]) if ok.size else -1


def mcnemar_power(d: int, pi: float, alpha: float) -> float:
    """Probability that the exact two-sided McNemar test at level ``alpha`` rejects with ``d`` discordant pairs,
    each in the candidate's favour with probability ``pi``: P(X <= k*) + P(X >= d - k*), X ~ Binomial(d, pi)."""
    cut = rejection_cut(d, alpha)
    if cut < 0:
        return 0.0
    if pi <= 0.0 or pi >= 1.0:
        return 1.0
    pmf = np.exp(_log_binom_pmf(d, pi))
    low = float(pmf[: cut + 1].sum())
    high = float(pmf[d - cut:].sum()) if d - cut > cut else 0.0
    return min(1.0, low + high)


def discordant_needed(pi: float, alpha: float, power: float = POWER, limit: int = 1_000_000) -> int | None:
    """The smallest number of discordant pairs D with :func:`mcnemar_power` (D, ``pi``, ``alpha``) >= ``power``.

    None when there is no effect (``pi`` = 1/2) or D would exceed ``limit``. The exact test's power is not
    monotone in D (a saw-tooth), so the scan starts below the normal approximation
    ((z_{1 - alpha/2} / 2 + z_power sqrt(pi (1 - pi))) / |pi - 1/2|)^2 and returns the first D that reaches it.
    """
    if not 0 <= pi <= 1 or not 0 < alpha < 1 or not 0 < power < 1:
        raise ValueError(f"need 0 <= pi <= 1, 0 < alpha < 1, 0 < power < 1; got {pi}, {alpha}, {power}")
    if abs(pi - 0.5) < 1e-12:
        return None
    from statistics import NormalDist

    z = NormalDist().inv_cdf
    approx = ((z(1 - alpha / 2) / 2 + z(power) * math.sqrt(pi * (1 - pi))) / abs(pi - 0.5)) ** 2
    if approx > limit:
        return None
    if approx < 2000:  # exact scan from the start
        lo = 1
    else:  # large D: the approximation is close; step coarsely from below it, then scan the last step exactly
        step = max(1, int(approx) // 500)
        lo = int(0.9 * approx)
        while lo > 1 and mcnemar_power(lo, pi, alpha) >= power:
            lo = max(1, lo - 50 * step)
        while lo <= limit and mcnemar_power(lo + step, pi, alpha) < power:
            lo += step
    for d in range(lo, limit + 1):
        if mcnemar_power(d, pi, alpha) >= power:
            return d
    return None


def budget(cand_only: int, base_only: int, n: int, alpha: float, power: float = POWER,
           direction: str = "any") -> dict[str, Any] | None:
    """What it would take to show the observed direction: D discordant pairs and ceil(D / r) test images.

    ``direction`` "higher" / "lower" (the candidate's, as a claim states it) or "any" (the observed one).
    None when no discordant pair was observed, the observed effect is nil or points the other way.
    """
    d_obs = cand_only + base_only
    if d_obs == 0 or cand_only == base_only:
        return None
    if (direction == "higher" and cand_only < base_only) or (direction == "lower" and cand_only > base_only):
        return None
    pi = cand_only / d_obs
    pairs = discordant_needed(pi, alpha, power)
    if pairs is None:
        return None
    return {"pairs": pairs, "images": math.ceil(pairs * n / d_obs), "pi": pi, "rate": d_obs / n, "alpha": alpha,
            "power": power}


# ---- tests, families, the rule ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Test:
    """One paired test: the candidate against the baseline on one metric, on the same n images.

    ``cand`` / ``base``: accuracies in [0, 1]; ``cand_only`` / ``base_only``: the discordant pairs;
    ``p_holm`` / ``m``: Holm-adjusted p within the family of ``m`` tests (set by :func:`in_family`);
    ``nothing``: why nothing can be shown by this comparison (rule 4), else None.
    """

    comparison: str
    metric: str
    cand: float
    base: float
    cand_only: int
    base_only: int
    n: int
    p_raw: float
    p_holm: float = float("nan")
    m: int = 0
    nothing: str | None = None

    @property
    def shown(self) -> bool:
        return self.nothing is None and self.p_holm < ALPHA

    @property
    def verdict(self) -> str:
        if self.nothing:
            return f"{self.nothing}: nothing shown"
        if self.shown:
            return "shown: candidate " + ("higher" if self.cand_only > self.base_only else "lower")
        return "not shown"

    def budget(self, direction: str = "any") -> dict[str, Any] | None:
        return budget(self.cand_only, self.base_only, self.n, ALPHA / max(self.m, 1), POWER, direction)


def _robust_summary(f: SampleFlags) -> float:
    """The union robust accuracy (the AND of every threat model's flags with clean), in [0, 1]."""
    return float(f.union.mean())


def nothing_learned(fa: SampleFlags, fb: SampleFlags, num_classes: int) -> str | None:
    """Rule 4: "at chance" when both arms' clean accuracy is at most 1/K + CHANCE_MARGIN; "no robustness learned"
    when both arms' union robust accuracy is at most MIN_ROBUST (runs without threat models: never)."""
    if max(fa.clean_correct.mean(), fb.clean_correct.mean()) <= 1 / num_classes + CHANCE_MARGIN:
        return "at chance"
    if fa.threats and fb.threats and max(_robust_summary(fa), _robust_summary(fb)) <= MIN_ROBUST:
        return "no robustness learned"
    return None


def pair_tests(name: str, fa: SampleFlags, fb: SampleFlags, metrics: Sequence[str] | None = None,
               num_classes: int | None = None) -> list[Test]:
    """Raw tests of candidate ``fa`` against baseline ``fb`` (same images, checked), per metric: clean, each
    threat model both measured, the union (``metrics`` selects and orders them; an unknown one is an error)."""
    if not (np.array_equal(fa.index, fb.index) and np.array_equal(fa.y, fb.y)):
        raise SpecError(f"{name}: the two evaluations did not see the same images; compare records of the same slice")
    series = {"clean": (fa.clean_correct, fb.clean_correct)}
    for t in (t for t in fa.threats if t in fb.threats and fa.is_measured(t) and fb.is_measured(t)):
        series[t] = (fa.robust[:, fa.threats.index(t)], fb.robust[:, fb.threats.index(t)])
    if fa.threats and set(fa.threats) == set(fb.threats):
        series["union"] = (fa.union, fb.union)
    chosen = list(series) if metrics is None else list(metrics)
    missing = [m for m in chosen if m not in series]
    if missing:
        raise SpecError(f"{name}: metric(s) {', '.join(missing)} not in both evaluations (have: {', '.join(series)})")
    k = num_classes or max(int(np.unique(np.concatenate([fa.y, fb.y])).size), 2)
    why = nothing_learned(fa, fb, k)
    out = []
    for metric in chosen:
        a, b = (np.asarray(v, dtype=bool) for v in series[metric])
        a_only, b_only = int((a & ~b).sum()), int((~a & b).sum())
        out.append(Test(name, metric, float(a.mean()), float(b.mean()), a_only, b_only, int(a.size),
                        mcnemar_exact(a_only, b_only), nothing=why))
    return out


def in_family(tests: Sequence[Test]) -> list[Test]:
    """The tests with their Holm-adjusted p within the family they form (all of ``tests``, m = len(tests))."""
    adjusted = holm_adjust([t.p_raw for t in tests])
    return [replace(t, p_holm=q, m=len(tests)) for t, q in zip(tests, adjusted)]


# ---- Markdown ----------------------------------------------------------------------------------------------
def _p(v: float) -> str:
    return f"{v:.2g}" if v < 0.001 else f"{v:.3g}"


#: CIFAR-10 test images rbx may report on (0-8999; 9000-9999 are for tuning): a budget above it cannot be met by
#: a larger evaluation of the same models.
HELD_OUT_IMAGES = 9000


def budget_text(t: Test, direction: str = "any", available: int | None = HELD_OUT_IMAGES) -> str:
    """The budget cell: what showing this direction would take at this training budget (``available``: the test
    images there are to evaluate; a budget above it is said to be out of reach of a larger evaluation)."""
    if t.nothing:
        return ("students that learn robustness first (a larger training budget); no test budget follows from "
                "this run" if t.nothing.startswith("no robustness") else
                "students that learn at all first (a larger training budget); no test budget follows from this run")
    if t.shown and (direction == "any" or (direction == "higher") == (t.cand_only > t.base_only)):
        return "shown at this budget"
    b = t.budget(direction)
    if b is None:
        if t.cand_only == t.base_only:
            return f"no effect observed ({t.cand_only} / {t.base_only}): no finite budget from this run"
        return (f"observed the other way ({t.cand_only} / {t.base_only}): this run gives no budget for the claimed "
                "direction")
    share = max(b["pi"], 1 - b["pi"])
    beyond = (f": more than the {available:,} held-out test images, so not within reach of a larger evaluation at "
              "this training budget" if available is not None and b["images"] > available else "")
    return (f"{b['pairs']:,} discordant pairs, about {b['images']:,} test images ({share:.2f} of the discordant "
            f"pairs in the observed direction, {percent(b['rate'])} % of the images discordant; 80 % power at "
            f"{ALPHA}/{t.m}){beyond}")


def family_table(family_id: str, what: str, tests: Sequence[Test]) -> str:
    """The Markdown block of one family: its declaration, then one row per test."""
    comparisons = list(dict.fromkeys(t.comparison for t in tests))
    shown = sum(t.shown for t in tests)
    lines = [f"Family `{family_id}`: {what} {len(tests)} tests ({len(comparisons)} comparison"
             f"{'s' if len(comparisons) != 1 else ''} x their metrics); exact McNemar per image, Holm within the "
             f"family; a direction is shown iff Holm p < {ALPHA}. Shown: {shown} of {len(tests)}.", "",
             "| comparison | metric | candidate % | baseline % | only candidate right | only baseline right | raw p | "
             "Holm p | verdict |", "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for t in tests:
        lines.append(f"| {t.comparison} | {t.metric} | {percent(t.cand)} | {percent(t.base)} | {t.cand_only} | "
                     f"{t.base_only} | {_p(t.p_raw)} | {_p(t.p_holm)} | {t.verdict} |")
    return "\n".join(lines)


def shows_text(t: Test, context: Sequence[Test] = (), direction: str = "any") -> str:
    """The middle summary cell: the primary test's difference, counts, raw and Holm p, verdict (and whether a shown
    direction is the opposite of the claimed ``direction``); then the context tests, each with its verdict when shown."""
    def one(x: Test) -> str:
        diff = 100 * (x.cand - x.base)
        return (f"{x.metric} {'+' if diff >= 0 else ''}{diff:.1f} points ({x.cand_only} / {x.base_only}, raw p "
                f"{_p(x.p_raw)}, Holm p {_p(x.p_holm)})")
    against = t.shown and direction != "any" and (direction == "higher") != (t.cand_only > t.base_only)
    text = f"{one(t)}: **{t.verdict}{' (the opposite of the claim)' if against else ''}**"
    if context:  # a context test names its verdict when it is shown, so no shown cell hides behind the primary's
        text += "; " + "; ".join(one(c) + (f": {c.verdict}" if c.shown else "") for c in context)
    return text


def summary_table(rows: Sequence[tuple[str, Test, Sequence[Test], str]]) -> str:
    """The page's three-column summary: (claim, primary test, context tests, claimed direction) per row."""
    lines = ["| claim of the paper | what rbx's reduced run shows (Holm-adjusted p) | budget that would be needed to "
             "show it |", "| --- | --- | --- |"]
    for claim, t, context, direction in rows:
        lines.append(f"| {claim} | {t.comparison}: {shows_text(t, context, direction)} | {budget_text(t, direction)} |")
    return "\n".join(lines)


# ---- specs: the families and claims a page declares -------------------------------------------------------
def _flags_source(entry: Any, where: str) -> tuple[str, SampleFlags, int]:
    """(label, flags, K) of a spec's ``[records]`` entry: a record path, or a table with ``path`` (an rbx record
    with its flags npz, or a JSON file with ``key``, a dotted path to an object of per-sample arrays ``y``,
    ``clean_correct`` and ``robust`` {threat: [bool]}; ``key`` may be a list of keys) and an optional ``label``."""
    if isinstance(entry, str):
        entry = {"path": entry}
    if not isinstance(entry, dict) or "path" not in entry:
        raise SpecError(f"{where}: give a record path or a table with path (and label, key)")
    path = REPO / entry["path"]
    if not path.is_file():
        raise SpecError(f"{where}: no such file {entry['path']}")
    label = entry.get("label", where.split(".")[-1])
    if "key" not in entry:
        record = read_record(path)
        return label, read_flags(path, record), int(record.dataset.get("num_classes") or 10)
    obj: Any = json.loads(path.read_text())
    key = entry["key"]
    for part in (key if isinstance(key, list) else str(key).split(".")):
        if not isinstance(obj, dict) or part not in obj:
            raise SpecError(f"{where}: {entry['path']} has no {part!r} along key {key!r}")
        obj = obj[part]
    threats = tuple(obj["robust"])
    robust = np.stack([np.asarray(obj["robust"][t], dtype=bool) for t in threats], 1)
    y = np.asarray(obj["y"], dtype=np.int64)
    flags = SampleFlags(np.arange(y.size), y, np.asarray(obj["clean_correct"], dtype=bool), robust,
                        np.full(robust.shape, -1, np.int16), threats)
    return label, flags, int(obj.get("num_classes", 10))


@dataclass(frozen=True)
class Family:
    id: str
    what: str
    tests: tuple[Test, ...]


def load_spec(path: Path) -> tuple[dict[str, Any], list[Family], list[tuple[str, Test, list[Test], str]]]:
    """Read a spec: its settings, its families (tests with Holm p) and its summary rows."""
    try:
        spec = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise SpecError(f"cannot read spec {path}: {exc}") from None
    sources = {name: _flags_source(e, f"{path.name}: records.{name}") for name, e in spec.get("records", {}).items()}
    families: list[Family] = []
    for fam in spec.get("family", []):
        tests: list[Test] = []
        for pair in fam["comparisons"]:
            if not 2 <= len(pair) <= 3:
                raise SpecError(f"{path.name}: family {fam['id']}: a comparison is [candidate, baseline] or "
                                "[candidate, baseline, [metrics]]")
            for name in pair[:2]:
                if name not in sources:
                    raise SpecError(f"{path.name}: family {fam['id']}: unknown record {name!r} (declare it under [records])")
            (la, fa, k), (lb, fb, _) = sources[pair[0]], sources[pair[1]]
            tests += pair_tests(f"{la} vs {lb}", fa, fb, pair[2] if len(pair) == 3 else fam.get("metrics"), k)
        families.append(Family(fam["id"], fam.get("what", ""), tuple(in_family(tests))))
    by_id = {f.id: f for f in families}
    rows = []
    for c in spec.get("claim", []):
        fam = by_id.get(c["family"])
        if fam is None:
            raise SpecError(f"{path.name}: claim {c['claim'][:40]!r}: unknown family {c['family']!r}")
        comparison = f"{sources[c['candidate']][0]} vs {sources[c['baseline']][0]}"

        def find(metric: str) -> Test:
            for t in fam.tests:
                if t.comparison == comparison and t.metric == metric:
                    return t
            raise SpecError(f"{path.name}: claim {c['claim'][:40]!r}: no test {comparison} / {metric} in family {fam.id}")
        rows.append((c["claim"], find(c["metric"]), [find(m) for m in c.get("context", [])], c.get("direction", "any")))
    return spec, families, rows


def blocks(families: Sequence[Family], rows) -> dict[str, str]:
    """The generated Markdown per marker id: ``summary`` and each family's id."""
    out = {"summary": summary_table(rows)} if rows else {}
    for f in families:
        out[f.id] = family_table(f.id, f.what, f.tests)
    return out


def replace_blocks(text: str, generated: dict[str, str], page: str = "page", prefix: str = "paired") -> str:
    """``text`` with each ``<!-- PREFIX:ID -->`` ... ``<!-- /PREFIX:ID -->`` block's body replaced by ``generated[ID]``."""
    for key, body in generated.items():
        start, end = f"<!-- {prefix}:{key} -->", f"<!-- /{prefix}:{key} -->"
        i, j = text.find(start), text.find(end)
        if i < 0 or j < i:
            raise SpecError(f"{page}: no block {start} ... {end}; add the two markers where the table goes")
        text = text[: i + len(start)] + "\n" + body + "\n" + text[j:]
    return text


# ---- the command line ----------------------------------------------------------------------------------
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--against", type=Path, help="the baseline record (with candidates: one family)")
    ap.add_argument("candidates", nargs="*", type=Path)
    ap.add_argument("--names", default=None, help="comma-separated labels: baseline first, then each candidate")
    ap.add_argument("--spec", type=Path, help="a page's families and claims (results/families/*.toml)")
    ap.add_argument("--write", action="store_true", help="with --spec: update the page's blocks")
    ap.add_argument("--check", action="store_true", help="with --spec: exit 1 if the page's blocks are not current")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    try:
        if args.spec:
            return _spec_mode(args)
        if args.against is None or not args.candidates:
            ap.error("give --against BASE CAND [CAND ...] or --spec FILE")
        names = args.names.split(",") if args.names else [p.stem for p in [args.against, *args.candidates]]
        if len(names) != len(args.candidates) + 1:
            raise SpecError(f"--names: {len(names)} labels for {len(args.candidates) + 1} records")
        base_rec = read_record(args.against)
        base = read_flags(args.against, base_rec)
        k = int(base_rec.dataset.get("num_classes") or 10)
        tests: list[Test] = []
        for name, c in zip(names[1:], args.candidates):
            tests += pair_tests(f"{name} vs {names[0]}", read_flags(c), base, None, k)
        tests = in_family(tests)
    except (SpecError, RbxError, OSError, KeyError) as exc:
        print(f"paired: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps([t.__dict__ | {"verdict": t.verdict, "budget": t.budget()} for t in tests], indent=2))
        return 0
    print(family_table("cli", "every candidate against the baseline:", tests))
    return 0


def _spec_mode(args) -> int:
    try:
        return _spec_run(args)
    except (SpecError, RbxError, OSError, KeyError) as exc:
        print(f"paired: error: {exc}", file=sys.stderr)
        return 2


def _spec_run(args) -> int:
    spec, families, rows = load_spec(args.spec)
    generated = blocks(families, rows)
    if not (args.write or args.check):
        for key, body in generated.items():
            print(f"<!-- paired:{key} -->\n{body}\n<!-- /paired:{key} -->\n")
        return 0
    page = REPO / spec["page"]
    text = page.read_text()
    new = replace_blocks(text, generated, spec["page"])
    if args.check:
        if new != text:
            print(f"paired: {spec['page']} is not what its records give; run python benchmarks/paired.py --spec "
                  f"{args.spec} --write", file=sys.stderr)
            return 1
        return 0
    page.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())

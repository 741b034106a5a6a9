"""Plots derived from records (matplotlib, PNG): robust accuracy vs eps, per-class robust accuracy,
which attack broke how many points, attack loss curves, and accuracy per corruption and severity. Every
function takes records/flags and returns PNG bytes; nothing here is typed by hand.
"""

from __future__ import annotations

import io
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # files only, no display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..records.schema import MISCLASSIFIED, RunRecord, SampleFlags  # noqa: E402


def png_bytes(fig) -> bytes:
    """The figure as PNG bytes (tight layout, 110 dpi); closes it."""
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def eps_sweep(records: Sequence[RunRecord], norm: str) -> bytes | None:
    """Robust accuracy vs eps under ``norm``, one line per record that swept it; None if none did."""
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    drawn = 0
    for r in records:
        for sw in r.sweeps:
            if sw["norm"] != norm:
                continue
            eps = [p["eps"] for p in sw["points"]]
            acc = [100 * p["robust"]["accuracy"] for p in sw["points"]]
            lo = [100 * p["robust"]["ci95"][0] for p in sw["points"]]
            hi = [100 * p["robust"]["ci95"][1] for p in sw["points"]]
            line, = ax.plot(eps, acc, marker="o", label=f"{r.model['name']} (n={r.n})")
            ax.fill_between(eps, lo, hi, color=line.get_color(), alpha=0.15)
            ax.axvline(next(p["eps"] for p in sw["points"] if p["label"] == sw["threat"]), color="grey", lw=0.6, ls=":")
            drawn += 1
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xlabel(f"eps ({norm})")
    ax.set_ylabel("robust accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"Robust accuracy vs eps, {norm} (95% Wilson bands)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return png_bytes(fig)


def min_norm_curves(record: RunRecord) -> bytes | None:
    """A ``--curve`` record's robust accuracy vs eps (one panel per norm), with the fixed-eps cascade's result
    at each checked eps as a marker (red where the curve lies above it); None if the record has no curve."""
    if not record.curves:
        return None
    fig, axes = plt.subplots(1, len(record.curves), figsize=(4.6 * len(record.curves), 3.4), squeeze=False)
    for ax, cv in zip(axes[0], record.curves):
        ax.step(cv["eps"], [100 * a for a in cv["robust_accuracy"]], where="post", label=f"{cv['attack']} (one run)")
        for ch in cv["checks"]:
            ax.plot([ch["eps"]], [100 * ch["cascade"]], marker="x", ms=8, color="red" if ch["curve_above"] else "black",
                    ls="none", label=f"fixed-eps cascade at {ch['threat']}")
        ax.set_xlabel(f"eps ({cv['norm']})")
        ax.set_ylabel("robust accuracy (%)")
        ax.set_ylim(0, 100)
        ax.set_title(f"{record.model['name']} (n={cv['n']})", fontsize=9)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    return png_bytes(fig)


def per_class(record: RunRecord, flags: SampleFlags) -> bytes:
    """Per-class clean, per-threat and union accuracy (grouped bars)."""
    classes = record.dataset.get("classes")
    if not classes and str(record.dataset.get("name", "")).startswith("cifar10"):
        from ..data.datasets import CIFAR10_CLASSES  # records written before the dataset block named its classes

        classes = list(CIFAR10_CLASSES)
    classes = classes or [str(c) for c in sorted(np.unique(flags.y))]
    k = len(classes)
    series = [("clean", flags.clean_correct)] + [(t, flags.robust[:, i]) for i, t in enumerate(flags.threats)
                                                 if flags.is_measured(t)]  # union-only: not-measured columns left out
    series.append(("union", flags.union))
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.7 * k + 2), 3.6))
    for j, (label, f) in enumerate(series):
        acc = [100 * f[flags.y == c].mean() if (flags.y == c).any() else np.nan for c in range(k)]
        ax.bar(np.arange(k) + (j - (len(series) - 1) / 2) * width, acc, width, label=label)
    ax.set_xticks(np.arange(k), classes, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"Per-class accuracy: {record.model['name']} (n={record.n})")
    ax.legend(fontsize=7, ncol=min(len(series), 5))
    ax.grid(axis="y", alpha=0.3)
    return png_bytes(fig)


def attribution(record: RunRecord, flags: SampleFlags) -> bytes:
    """Per threat model: points misclassified clean, broken by each stage of the cascade, and still robust."""
    fig, ax = plt.subplots(figsize=(8.5, 0.7 * len(flags.threats) + 1.6))
    stage_names: list[str] = []
    for t in record.threats:
        for s in t.attacks:
            if s.attack not in stage_names:
                stage_names.append(s.attack)
    union_names = [a.attack for a in record.union_attacks]
    cmap = plt.get_cmap("tab10")
    for i, t in enumerate(record.threats):
        bb = flags.broken_by[:, i]
        left = 0
        segments = [("misclassified (clean)", int((bb == MISCLASSIFIED).sum()), "#bbbbbb")]
        names = [s.attack for s in t.attacks] + [f"union: {u}" for u in union_names]
        for j, name in enumerate(names):
            color = cmap((stage_names.index(name) if name in stage_names else len(stage_names) + j) % 10)
            segments.append((name, int((bb == j).sum()), color))
        if t.measured:
            segments.append(("robust", int((bb == -1).sum()), "#2ca02c"))
        else:  # union-only: broken earlier (never attacked here) or survived; not measured
            segments.append(("not measured (union-only)", int((bb == -1).sum()), "#dddddd"))
        for label, count, color in segments:
            ax.barh(i, count, left=left, color=color, label=label if i == 0 or label not in ax.get_legend_handles_labels()[1] else None)
            if count:
                ax.text(left + count / 2, i, str(count), ha="center", va="center", fontsize=7)
            left += count
    ax.set_yticks(range(len(record.threats)), [t.threat for t in record.threats])
    ax.invert_yaxis()
    ax.set_xlabel(f"points (of {record.n})")
    ax.set_title(f"Which attack broke how many points: {record.model['name']}")
    handles, labels = ax.get_legend_handles_labels()
    uniq = dict(zip(labels, handles))
    ax.legend(uniq.values(), uniq.keys(), fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return png_bytes(fig)


def loss_curves(record: RunRecord) -> bytes | None:
    """Each stage's mean loss per step over the points still being attacked; None if no stage logged one."""
    curves = [(t.threat, s.attack, s.loss_curve) for t in record.threats for s in t.attacks if s.loss_curve]
    if not curves:
        return None
    fig, axes = plt.subplots(1, len(record.threats), figsize=(4.0 * len(record.threats), 3.0), squeeze=False)
    for ax, t in zip(axes[0], record.threats):
        mine = [(attack, curve) for threat, attack, curve in curves if threat == t.threat]
        for attack, curve in mine:
            ax.plot(np.arange(len(curve)), curve, label=attack, lw=1)
        ax.set_title(t.threat, fontsize=9)
        ax.set_xlabel("step (passes one after another)", fontsize=8)
        if mine:
            ax.legend(fontsize=7)
        else:  # black-box / decision-based cascades (Sparse-RS under L0, Square, RayS) log no loss
            ax.text(0.5, 0.5, "no attack logged a loss", ha="center", va="center", fontsize=8, transform=ax.transAxes)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("mean loss")
    return png_bytes(fig)


def corruption_grid(record: RunRecord) -> bytes | None:
    """A corruption run's accuracy per corruption (rows) and severity (columns) as an annotated heatmap."""
    c = record.corruptions
    if c is None or not c.results:
        return None
    names, levels = list(c.corruptions), list(c.severities)
    grid = np.full((len(names), len(levels)), np.nan)
    for r in c.results:
        grid[names.index(r.corruption), levels.index(r.severity)] = 100 * r.accuracy.accuracy
    fig, ax = plt.subplots(figsize=(max(5.5, 0.8 * len(levels) + 3.2), 0.32 * len(names) + 1.6))
    im = ax.imshow(grid, vmin=0, vmax=100, cmap="viridis", aspect="auto")
    for i in range(len(names)):
        for j in range(len(levels)):
            ax.text(j, i, f"{grid[i, j]:.0f}", ha="center", va="center", fontsize=7,
                    color="white" if grid[i, j] < 60 else "black")
    ax.set_xticks(range(len(levels)), [f"s{s}" for s in levels], fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set_title(f"Accuracy (%) under corruption: {record.model['name']}\n(n={record.n}; clean "
                 f"{100 * record.clean.accuracy:.1f}, mean {100 * c.mean.accuracy:.1f})", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.05)
    return png_bytes(fig)


def strength_curves(records: Sequence[RunRecord]) -> bytes | None:
    """MultiRobustBench-style robust accuracy vs strength, one panel per threat-model type (strengths normalized
    by each type's largest), one line per record; None if no record has a measured threat model."""
    from ..records.multirobust import strength_curves as curves_of

    per = [(r, curves_of(r)) for r in records]
    norms = list(dict.fromkeys(n for _, c in per for n in c))
    if not norms:
        return None
    fig, axes = plt.subplots(1, len(norms), figsize=(2.6 * len(norms), 2.8), squeeze=False, sharey=True)
    for ax, norm in zip(axes[0], norms):
        for r, c in per:
            if norm in c:
                cv = c[norm]
                ax.plot((0.0, *cv.eps), (100 * float(r.clean.accuracy), *(100 * a for a in cv.accuracy)), marker="o",
                        ms=3, label=f"{r.model.get('name', '?')} (n={r.n})")
        ax.set_title(norm, fontsize=9)
        ax.set_xlabel("strength", fontsize=8)
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("robust accuracy (%)")
    axes[0][0].legend(fontsize=6)
    fig.tight_layout()
    return png_bytes(fig)

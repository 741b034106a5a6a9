"""Compare rbx's own FAB, Square, Sparse-RS, RayS, HopSkipJump and sparse-PGD with reference implementations, per sample.

References (never part of rbx; each section is skipped, with a message, when its reference is not importable):

- ``fab``, ``square``: pyautoattack (``FABAttack_PT``, ``SquareAttack``), installed with rbx's tests;
- ``hsj``: foolbox 3 (``HopSkipJumpAttack``) from a scratch environment outside the repository, e.g.
  ``python3 -m venv /tmp/fbvenv && /tmp/fbvenv/bin/pip install foolbox`` and
  ``--foolbox-path /tmp/fbvenv/lib/python3.11/site-packages`` (appended to the path: torch stays rbx's); L2, the
  same per-image query budget on both sides (``--hsj-queries``), each result read by the same query-counting wrapper;
- ``sparse-rs``, ``rays``: the authors' code (fra31/sparse-rs ``rs_attacks.py``, uclaml/RayS ``RayS.py``), a copy
  outside the repository given with ``--sparse-rs-dir`` / ``--rays-dir``; the RayS code calls ``.cuda()``, which
  this script turns into a no-op for the reference only, so it runs on CPU;
- ``spgd``: the authors' sparse-PGD (CityU-MLO/sPGD ``autoattack/spgd.py``), one or more copies outside the
  repository given with ``--spgd-dir`` (each a folder holding that ``spgd.py``, labelled by the folder's name, e.g.
  one per commit of the authors' repository); it imports scikit-image's ``random_noise`` and never calls it, so
  when scikit-image is not importable this script stands in a module whose ``random_noise`` raises. Both sides
  run the same settings: L0 ``--l0-k`` pixels, ``--spgd-steps`` iterations, the authors' defaults (``epsilon`` 1,
  ``alpha`` 0.25, ``beta`` 0.25, ``patience`` 3), unprojected and projected mask gradients, one row each.

Images: CIFAR-10 test images ``--start`` .. ``--start + --n - 1`` (held out; tuning uses 9000-9999), model
``--model`` (default the embedded small CNN). Every figure: per-sample success sets (both / only rbx / only the
reference), the exact McNemar p-value of the paired difference, Holm-adjusted over the family of all
comparisons run (one per attack x norm x setting), and process-CPU seconds of each side (one thread). Writes
``reference_compare.json`` and ``reference_compare.md`` into ``--out``.

    python benchmarks/reference_compare.py --n 100 --out results/reference_compare \\
        --sparse-rs-dir /work/scratch/ref/sparse-rs --rays-dir /work/scratch/ref/RayS --foolbox-path /work/scratch/site \\
        --spgd-dir /tmp/spgd_ref/head
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import importlib.util
import json
import math
import platform
import sys
import time
import types
from pathlib import Path

import torch


def mcnemar(only_a: int, only_b: int) -> float:
    """Exact two-sided McNemar p-value: the discordant pairs under Binomial(only_a + only_b, 1/2)."""
    n = only_a + only_b
    if n == 0:
        return 1.0
    k = min(only_a, only_b)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def holm(ps: list[float]) -> list[float]:
    order = sorted(range(len(ps)), key=lambda i: ps[i])
    out, running = [0.0] * len(ps), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(ps) - rank) * ps[i]))
        out[i] = running
    return out


def timed(fn):
    t = time.process_time()
    out = fn()
    return out, time.process_time() - t


def row(name, ours: torch.Tensor, ref: torch.Tensor, t_ours: float, t_ref: float, **extra) -> dict:
    ours, ref = ours.bool().cpu(), ref.bool().cpu()
    return {"comparison": name, "n": int(ours.numel()), "rbx": int(ours.sum()), "reference": int(ref.sum()),
            "both": int((ours & ref).sum()), "only_rbx": int((ours & ~ref).sum()), "only_reference": int((~ours & ref).sum()),
            "p_raw": mcnemar(int((ours & ~ref).sum()), int((~ours & ref).sum())), "cpu_s_rbx": round(t_ours, 2),
            "cpu_s_reference": round(t_ref, 2), **extra}


def fooled(model, x, y) -> torch.Tensor:
    with torch.no_grad():
        return model(x).argmax(1) != y


# ---- sections ---------------------------------------------------------------------------------------------
def compare_fab(model, x, y, args, out):
    from pyautoattack.fab_pt import FABAttack_PT

    from robustbench_ext.attack.threat import ThreatModel
    from robustbench_ext.registry import ATTACKS

    for norm, eps in (("Linf", 8 / 255), ("L2", 0.5), ("L1", 12.0)):
        geom = ThreatModel(norm, eps).geometry
        ref = FABAttack_PT(model, norm=norm, n_iter=args.fab_steps, n_restarts=1, eps=eps, device="cpu")
        x_ref, t_ref = timed(lambda: ref.attack_single_run(x, y, use_rand_start=False, is_targeted=False))
        ok = fooled(model, x_ref, y)
        ref_norm = torch.where(ok, geom.norm_of((x_ref - x).double()), torch.tensor(math.inf, dtype=torch.float64))
        res, t_ours = timed(lambda: ATTACKS.create("fab", steps=args.fab_steps)(model, x, y, ThreatModel(norm, eps), seed=0))
        clean = ~fooled(model, x, y)
        ref_norm[~clean] = 0.0
        both = torch.isfinite(ref_norm) & torch.isfinite(res.min_norm) & (ref_norm > 0)
        rel = ((res.min_norm[both] - ref_norm[both]).abs() / ref_norm[both]) if both.any() else torch.zeros(1)
        out.append(row(f"fab {norm} (min norm found, {args.fab_steps} steps)", torch.isfinite(res.min_norm) & clean,
                       torch.isfinite(ref_norm) & clean, t_ours, t_ref, max_rel_norm_diff=float(rel.max()),
                       median_rel_norm_diff=float(rel.median())))
        out.append(row(f"fab {norm} at eps {ThreatModel(norm, eps).label}", (res.min_norm <= eps) & clean,
                       (ref_norm <= eps) & clean, t_ours, t_ref))
        print(out[-2], out[-1], sep="\n", flush=True)
    # FAB-T as AutoAttack runs it (9 targets, at eps, a point stops at its first success at eps): rbx searches every target
    norm, eps = "Linf", 8 / 255
    ref = FABAttack_PT(model, norm=norm, n_iter=args.fab_steps, n_restarts=1, eps=eps, targeted=True, device="cpu",
                       n_target_classes=9)
    x_ref, t_ref = timed(lambda: ref.perturb(x, y))
    res, t_ours = timed(lambda: ATTACKS.create("fab-t", steps=args.fab_steps)(model, x, y, ThreatModel(norm, eps), seed=0))
    clean = ~fooled(model, x, y)
    ref_ok = fooled(model, x_ref, y) & clean & (ThreatModel(norm, eps).geometry.norm_of(x_ref - x) <= eps * (1 + 1e-5))
    out.append(row(f"fab-t Linf 8/255, 9 targets (rbx: every target, min norm; reference: AutoAttack's at-eps cascade)",
                   res.success & clean, ref_ok, t_ours, t_ref))
    print(out[-1], flush=True)


def compare_square(model, x, y, args, out):
    from pyautoattack.square import SquareAttack

    from robustbench_ext.attack.threat import ThreatModel
    from robustbench_ext.registry import ATTACKS

    for norm, eps in (("Linf", 8 / 255), ("L2", 0.5)):
        for seed in range(args.seeds):
            ref = SquareAttack(model, norm=norm, eps=eps, n_queries=args.square_queries, seed=seed, resc_schedule=False)
            x_ref, t_ref = timed(lambda: ref.perturb(x, y))
            ok_ref = fooled(model, x_ref, y)
            for draws in ("batch", "sample"):
                att = ATTACKS.create("square", queries=args.square_queries, draws=draws)
                res, t_ours = timed(lambda: att(model, x, y, ThreatModel(norm, eps), seed=seed))
                out.append(row(f"square {norm} draws={draws} seed={seed} ({args.square_queries} queries)", res.success, ok_ref,
                               t_ours, t_ref, passes_rbx=res.n_forward))
                print(out[-1], flush=True)


def compare_sparse_rs(model, x, y, args, out):
    if not args.sparse_rs_dir:
        print("sparse-rs: skipped (no --sparse-rs-dir: a copy of fra31/sparse-rs outside the repository)")
        return
    sys.path.insert(0, str(args.sparse_rs_dir))
    rs = importlib.import_module("rs_attacks")
    from robustbench_ext.attack.threat import ThreatModel
    from robustbench_ext.registry import ATTACKS

    k = args.l0_k
    for seed in range(args.seeds):
        ref = rs.RSAttack(model, norm="L0", eps=k, n_queries=args.rs_queries, p_init=0.3, seed=seed, device="cpu", verbose=False,
                          resc_schedule=True, loss="margin")
        torch.manual_seed(seed)
        (_, x_ref), t_ref = timed(lambda: ref.perturb(x, y))  # (queries, adversarial points)
        px = ((x_ref - x).abs() > 0).any(1).flatten(1).sum(1)
        ok_ref = fooled(model, x_ref, y) & (px <= k)
        res, t_ours = timed(lambda: ATTACKS.create("sparse-rs", queries=args.rs_queries)(model, x, y, ThreatModel("L0", k), seed=seed))
        out.append(row(f"sparse-rs L0:{k} seed={seed} ({args.rs_queries} queries)", res.success, ok_ref, t_ours, t_ref))
        print(out[-1], flush=True)


def compare_rays(model, x, y, args, out):
    if not args.rays_dir:
        print("rays: skipped (no --rays-dir: a copy of uclaml/RayS outside the repository)")
        return
    sys.modules.setdefault("pgbar", types.SimpleNamespace(progress_bar=lambda *a, **k: None))
    sys.path.insert(0, str(args.rays_dir))
    rays_mod = importlib.import_module("RayS")
    from robustbench_ext.attack.threat import ThreatModel
    from robustbench_ext.registry import ATTACKS

    class Labels(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def predict_label(self, z):
            with torch.no_grad():
                return self.m(z).argmax(1)

    eps = 8 / 255
    cuda = torch.Tensor.cuda
    torch.Tensor.cuda = lambda self, *a, **k: self  # the reference calls .cuda(): a no-op here, for it only
    try:
        ref = rays_mod.RayS(Labels(model), epsilon=eps)
        (x_ref, queries, dist, succ), t_ref = timed(lambda: ref(x, y, query_limit=args.rays_queries))
    finally:
        torch.Tensor.cuda = cuda
    clean = ~fooled(model, x, y)
    ok_ref = succ.bool() & clean
    res, t_ours = timed(lambda: ATTACKS.create("rays", queries=args.rays_queries)(model, x, y, ThreatModel("Linf", eps), seed=0))
    out.append(row(f"rays Linf 8/255 ({args.rays_queries} queries; rbx stops a point at eps)", res.success & clean, ok_ref,
                   t_ours, t_ref, passes_rbx=res.n_forward, queries_reference=int(queries.sum())))
    print(out[-1], flush=True)


class _BudgetSpent(Exception):
    """Raised by :class:`_QueryBudget` when an image's query budget is spent (ends either side's run there)."""


class _QueryBudget(torch.nn.Module):
    """The model as both HopSkipJumps see it, for one image ``x0`` ``[1, C, H, W]`` with label ``y0``: counts every
    image passed forward (a query) and keeps the closest misclassified point (L2) among the attack's own iterates
    queried within the first ``budget`` queries (its start search, step-size search and binary searches; the
    Monte-Carlo probes of a gradient estimate count as queries but are not iterates: ``probing`` is set while the
    estimate runs). The query that would exceed the budget raises :class:`_BudgetSpent`, on both sides alike."""

    def __init__(self, model, x0, y0, budget: int):
        super().__init__()
        self.model, self.x0, self.y0, self.budget = model, x0, y0, budget
        self.queries, self.probing, self.best = 0, 0, math.inf

    def forward(self, z):
        room = self.budget - self.queries
        if room <= 0:
            raise _BudgetSpent
        out = self.model(z)
        take = min(room, z.shape[0])
        self.queries += take
        if not self.probing:
            with torch.no_grad():
                wrong = out[:take].argmax(1) != self.y0
                if bool(wrong.any()):
                    d = (z[:take][wrong] - self.x0).flatten(1).double().norm(dim=1)
                    self.best = min(self.best, float(d.min()))
        if take < z.shape[0]:
            raise _BudgetSpent
        return out

    def probe(self, fn):
        """``fn`` with :attr:`probing` set while it runs (nesting allowed)."""
        def wrapped(*a, **k):
            self.probing += 1
            try:
                return fn(*a, **k)
            finally:
                self.probing -= 1
        return wrapped


def compare_hsj(model, x, y, args, out):
    """rbx's ``hsj`` vs foolbox 3's ``HopSkipJumpAttack``, L2, the same per-image query budget on both sides.

    Each side attacks each clean-correct image alone (batch 1) through the same :class:`_QueryBudget`, which ends
    the run at ``--hsj-queries`` queries and reads each side's result the same way: the closest misclassified
    iterate it queried within the budget. A point counts as broken at eps when that distance is at most eps.
    rbx runs with a radius too small to reach (1e-6) so that, like foolbox's, its search never stops at eps.
    """
    if args.foolbox_path:
        sys.path.append(str(args.foolbox_path))  # after rbx's own packages: torch and numpy stay the environment's
    try:
        fb = importlib.import_module("foolbox")
    except ImportError as exc:
        print(f"hsj: skipped (foolbox 3 not importable: {exc}; give --foolbox-path)")
        return
    from robustbench_ext.attack.threat import ThreatModel
    from robustbench_ext.registry import ATTACKS

    n, eps = min(args.hsj_n, x.shape[0]), args.hsj_eps
    xs, ys = x[:n], y[:n]
    clean = ~fooled(model, xs, ys)

    def run_side(attack_one, budget):
        best, used, cpu = torch.full((n,), math.inf, dtype=torch.float64), torch.zeros(n, dtype=torch.long), 0.0
        best[~clean] = 0.0
        for i in clean.nonzero().squeeze(1).tolist():
            wrapper = _QueryBudget(model, xs[i:i + 1], ys[i:i + 1], budget).eval()
            t = time.process_time()
            try:
                attack_one(wrapper, i, budget)
            except _BudgetSpent:
                pass
            cpu += time.process_time() - t
            best[i], used[i] = wrapper.best, wrapper.queries
        return best, used, cpu

    def rbx_one(wrapper, i, budget):
        att = ATTACKS.create("hsj", steps=args.hsj_steps, queries=budget)
        att._gradient = wrapper.probe(att._gradient)  # its Monte-Carlo probes: queries, not iterates
        att(wrapper, xs[i:i + 1], ys[i:i + 1], ThreatModel("L2", 1e-6), seed=i)

    def foolbox_one(wrapper, i, budget):
        attack = fb.attacks.HopSkipJumpAttack(steps=args.hsj_steps, initial_gradient_eval_steps=100,
                                              max_gradient_eval_steps=10000, gamma=1.0, constraint="l2")
        attack.approximate_gradients = wrapper.probe(attack.approximate_gradients)
        torch.manual_seed(i)  # foolbox draws from torch's global generator
        attack.run(fb.PyTorchModel(wrapper, bounds=(0, 1)), xs[i:i + 1], ys[i:i + 1])

    def med(v):
        return float(v.median()) if v.numel() else math.nan

    for budget in args.hsj_queries:
        ours, used_ours, t_ours = run_side(rbx_one, budget)
        ref, used_ref, t_ref = run_side(foolbox_one, budget)
        att_clean = clean.nonzero().squeeze(1)
        found_o, found_r = torch.isfinite(ours) & clean, torch.isfinite(ref) & clean
        both = found_o & found_r
        norms = {"median_l2_rbx": med(ours[found_o]), "median_l2_reference": med(ref[found_r]),
                 "median_l2_rbx_both_found": med(ours[both]), "median_l2_reference_both_found": med(ref[both]),
                 "median_ratio_rbx_over_reference": med(ours[both] / ref[both]),
                 "rbx_closer": int((ours[both] < ref[both]).sum()), "reference_closer": int((ref[both] < ours[both]).sum()),
                 "queries_rbx_mean": float(used_ours[att_clean].double().mean()),
                 "queries_reference_mean": float(used_ref[att_clean].double().mean()),
                 "per_sample_l2_rbx": [round(float(v), 6) for v in ours], "per_sample_l2_reference": [round(float(v), 6) for v in ref]}
        label = f"hsj L2 ({budget} queries per image, closest iterate"
        out.append(row(f"{label}) at eps {ThreatModel('L2', eps).label}", (ours <= eps) & clean, (ref <= eps) & clean,
                       t_ours, t_ref, **norms))
        print(out[-1], flush=True)
        out.append(row(f"{label}) found at any radius", found_o, found_r, t_ours, t_ref))
        print(out[-1], flush=True)


def compare_spgd(model, x, y, args, out):
    """rbx's ``sparse-pgd`` vs the authors' ``SparsePGD`` (one row per reference copy x gradient variant x seed).

    Each side attacks the whole batch once with the same settings; a point counts as broken when it was
    classified correctly, the returned point is misclassified by the model, lies in the [0, 1] box and changes at
    most K pixels (a pixel: all channels together, as both sides count them). The reference draws from torch's
    global generator (seeded with the row's seed before its call), rbx from its per-sample generators.
    """
    if not args.spgd_dir:
        print("spgd: skipped (no --spgd-dir: a copy of CityU-MLO/sPGD autoattack/spgd.py outside the repository)")
        return
    try:
        importlib.import_module("skimage.util")
    except ImportError:  # spgd.py imports random_noise and never calls it
        def random_noise(*a, **k):
            raise RuntimeError("reference_compare: scikit-image's random_noise is not available")
        sys.modules.setdefault("skimage", types.ModuleType("skimage"))
        sys.modules.setdefault("skimage.util", types.SimpleNamespace(random_noise=random_noise))
    from robustbench_ext.attack.threat import ThreatModel
    from robustbench_ext.registry import ATTACKS

    refs = []
    for d in args.spgd_dir:
        spec = importlib.util.spec_from_file_location(f"spgd_reference_{len(refs)}", Path(d) / "spgd.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        refs.append((Path(d).name, mod))
    k, steps = args.l0_k, args.spgd_steps
    clean = ~fooled(model, x, y)

    def ok(x_adv):
        px = ((x_adv - x).abs() > 0).any(1).flatten(1).sum(1)
        in_box = (x_adv >= 0).flatten(1).all(1) & (x_adv <= 1).flatten(1).all(1)
        return fooled(model, x_adv, y) & clean & (px <= k) & in_box

    def images(mask):
        return [args.start + i for i in mask.nonzero().squeeze(1).tolist()]

    for unprojected in (True, False):
        variant = "unprojected" if unprojected else "projected"
        for seed in range(args.seeds):
            att = ATTACKS.create("sparse-pgd", steps=steps, unprojected=unprojected)
            res, t_ours = timed(lambda: att(model, x, y, ThreatModel("L0", k), seed=seed))
            ours = ok(res.x_adv)
            for label, mod in refs:
                ref = mod.SparsePGD(model, epsilon=1.0, k=k, t=steps, unprojected_gradient=unprojected)
                torch.manual_seed(seed)
                (x_ref, _, _), t_ref = timed(lambda: ref(x, y))
                theirs = ok(x_ref.detach())
                out.append(row(f"sparse-pgd L0:{k} {variant} seed={seed} ({steps} steps; reference {label})", ours, theirs,
                               t_ours, t_ref, only_rbx_images=images(ours & ~theirs), only_reference_images=images(~ours & theirs),
                               rbx_images=images(ours), reference_images=images(theirs)))
                print(out[-1], flush=True)


SECTIONS = {"fab": compare_fab, "square": compare_square, "sparse-rs": compare_sparse_rs, "rays": compare_rays, "hsj": compare_hsj, "spgd": compare_spgd}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", default=list(SECTIONS), choices=list(SECTIONS))
    ap.add_argument("--model", default="cifar10-smallcnn-linf-at")
    ap.add_argument("--start", type=int, default=1000)
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--fab-steps", type=int, default=100)
    ap.add_argument("--square-queries", type=int, default=1000)
    ap.add_argument("--rs-queries", type=int, default=1000)
    ap.add_argument("--l0-k", type=int, default=20)
    ap.add_argument("--rays-queries", type=int, default=1000)
    ap.add_argument("--hsj-steps", type=int, default=1000, help="HopSkipJump's steps at most (the query budget binds)")
    ap.add_argument("--hsj-queries", type=int, nargs="+", default=[1000], help="queries per image, both sides (one budget per pair of rows)")
    ap.add_argument("--hsj-eps", type=float, default=0.5, help="L2 radius of the hsj rows' at-eps verdict")
    ap.add_argument("--hsj-n", type=int, default=20)
    ap.add_argument("--sparse-rs-dir", type=Path)
    ap.add_argument("--rays-dir", type=Path)
    ap.add_argument("--foolbox-path", type=Path)
    ap.add_argument("--spgd-dir", type=Path, nargs="+", help="folders each holding a copy of the authors' autoattack/spgd.py")
    ap.add_argument("--spgd-steps", type=int, default=300, help="sparse-PGD iterations, both sides (sAA's evaluate.py default: 300)")
    ap.add_argument("--out", type=Path, default=Path("results/reference_compare"))
    ap.add_argument("--merge", type=Path, nargs="*", metavar="DIR",
                    help="Instead of running: merge the reference_compare.json of earlier runs (e.g. sections run in "
                         "parallel) into --out, Holm-adjusting over all their comparisons as one family.")
    args = ap.parse_args()
    if args.merge:
        runs = [json.loads((d / "reference_compare.json").read_text()) for d in args.merge]
        rows = [r for run in runs for r in run["rows"]]
        meta = {**runs[0], "command": " ; ".join(run["command"] for run in runs),
                "date": " ; ".join(run["date"] for run in runs),
                "images": " ; ".join(dict.fromkeys(run["images"] for run in runs)), "rows": rows}
        write(args.out, meta, rows)
        return
    torch.set_num_threads(1)
    from robustbench_ext.models.loading import load_model
    from robustbench_ext.registry import DATASETS

    model = load_model(args.model).module.eval()
    data = DATASETS.create("cifar10")
    x, y = data.x[args.start:args.start + args.n].contiguous(), data.y[args.start:args.start + args.n]
    rows: list[dict] = []
    for name in args.only:
        try:
            SECTIONS[name](model, x, y, args, rows)
        except ImportError as exc:
            print(f"{name}: skipped ({exc})")
    meta = {"command": " ".join(sys.argv), "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "device": f"CPU ({platform.processor() or platform.machine()}), 1 thread, shared machine (wall and CPU times inflated)",
            "model": args.model, "images": f"CIFAR-10 test {args.start}..{args.start + args.n - 1} (held out)", "rows": rows}
    write(args.out, meta, rows)


def write(out: Path, meta: dict, rows: list[dict]) -> None:
    """Holm-adjust over ``rows`` (one family) and write ``reference_compare.json`` / ``.md`` into ``out``."""
    for r, p in zip(rows, holm([r["p_raw"] for r in rows])):
        r["p_holm"] = p
    out.mkdir(parents=True, exist_ok=True)
    (out / "reference_compare.json").write_text(json.dumps(meta, indent=2))
    cols = ["comparison", "n", "rbx", "reference", "both", "only_rbx", "only_reference", "p_raw", "p_holm", "cpu_s_rbx", "cpu_s_reference"]
    lines = [f"Command: `{meta['command']}`  ", f"Date: {meta['date']}; device: {meta['device']}; model {meta['model']}; "
             f"images: {meta['images']}.", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(f"{r[c]:.3g}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |")
    (out / "reference_compare.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

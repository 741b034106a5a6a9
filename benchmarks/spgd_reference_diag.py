"""Why rbx's sparse-PGD and the authors' break different points (the spgd rows of reference_compare.py).

For a few images, how many of ``--seeds`` seeds break each one when it is attacked alone (L0:20, 300 steps), by
rbx's ``sparse-pgd`` and by each copy of the authors' ``spgd.py`` given with ``--spgd-dir`` (outside the
repository, never committed). With ``--patch-counter DIR`` (a copy of the authors' first commit a356d0c), a
patched copy is made in a temporary folder whose re-draw counter counts *consecutive* unchanged masks per point
(as rbx does; the authors' code resets every point's count only at a step where no point's mask was unchanged).
Also: image 1055 inside batches of different sizes (rbx, projected, seeds 0-5), and the reference's CPU seconds
on 100 images with the model's weights requiring gradients (as it runs) and frozen (its ``backward()`` then
skips the weights' gradients, which rbx's input-only ``autograd.grad`` never computes). Writes ``--out``.

    python benchmarks/spgd_reference_diag.py --spgd-dir /tmp/spgd_ref/head /tmp/spgd_ref/a356d0c \\
        --patch-counter /tmp/spgd_ref/a356d0c --out results/attacks30/reference_compare_spgd/diag.json
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import sys
import tempfile
import time
import types
from pathlib import Path

import torch

# (image, unprojected): the points that differ between the sides in reference_compare_spgd
CASES = ((1001, True), (1016, True), (1097, True), (1055, False))
OLD_COUNTER = """                if ind_unchange.numel() > 0:
                    if ind_fail.numel() == 1:
                        reinitial_count[ind_fail] += 1
                    else:
                        reinitial_count[ind_fail[ind_unchange]] += 1
                else:
                    reinitial_count[ind_fail] = 0
"""
NEW_COUNTER = """                f = ind_fail.reshape(-1)  # patched: per-point consecutive count, as rbx
                reinitial_count[f] = torch.where(delta_mask_norm.reshape(-1) <= 0, reinitial_count[f] + 1,
                                                 torch.zeros_like(reinitial_count[f]))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spgd-dir", type=Path, nargs="+", required=True)
    ap.add_argument("--patch-counter", type=Path)
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)
    sys.modules.setdefault("skimage", types.ModuleType("skimage"))  # spgd.py imports random_noise, never calls it
    sys.modules.setdefault("skimage.util", types.SimpleNamespace(random_noise=None))
    from robustbench_ext.attack.threat import ThreatModel
    from robustbench_ext.models.loading import load_model
    from robustbench_ext.registry import ATTACKS, DATASETS

    dirs = [(d.name, d) for d in args.spgd_dir]
    if args.patch_counter:
        src = (args.patch_counter / "spgd.py").read_text()
        assert src.count(OLD_COUNTER) == 1, "not the a356d0c counter code"
        tmp = Path(tempfile.mkdtemp()) / f"{args.patch_counter.name}-consecutive"
        tmp.mkdir()
        (tmp / "spgd.py").write_text(src.replace(OLD_COUNTER, NEW_COUNTER))
        dirs.append((tmp.name, tmp))
    refs = {}
    for name, d in dirs:
        spec = importlib.util.spec_from_file_location(f"spgd_ref_{len(refs)}", d / "spgd.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        refs[name] = mod
    model = load_model("cifar10-smallcnn-linf-at").module.eval()
    data = DATASETS.create("cifar10")
    threat = ThreatModel("L0", 20)

    def ref_broken(mod, x, y, unprojected, seed):
        torch.manual_seed(seed)
        xa = mod.SparsePGD(model, epsilon=1.0, k=20, t=300, unprojected_gradient=unprojected)(x, y)[0].detach()
        with torch.no_grad():
            return bool((model(xa).argmax(1) != y).all()) and int(((xa - x).abs() > 0).any(1).sum()) <= 20

    out = {"command": " ".join(sys.argv), "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "single_image_breaks": [], "image_1055_in_batches": [], "reference_cpu_s": {}}
    for img, unprojected in CASES:
        x, y = data.x[img:img + 1].contiguous(), data.y[img:img + 1]
        att = ATTACKS.create("sparse-pgd", steps=300, unprojected=unprojected)
        rec = {"image": img, "variant": "unprojected" if unprojected else "projected", "seeds": args.seeds,
               "rbx": sum(bool(att(model, x, y, threat, seed=s).success) for s in range(args.seeds))}
        for name, mod in refs.items():
            rec[name] = sum(ref_broken(mod, x, y, unprojected, s) for s in range(args.seeds))
        out["single_image_breaks"].append(rec)
        print(rec, flush=True)
    for lo, hi in ((1000, 1100), (1050, 1060), (1055, 1056)):
        x, y = data.x[lo:hi].contiguous(), data.y[lo:hi]
        att = ATTACKS.create("sparse-pgd", steps=300, unprojected=False)
        hits = [int(att(model, x, y, threat, seed=s).success[1055 - lo]) for s in range(6)]
        out["image_1055_in_batches"].append({"batch": f"{lo}..{hi - 1}", "rbx_projected_seeds_0_5": hits})
        print(out["image_1055_in_batches"][-1], flush=True)
    x, y = data.x[1000:1100].contiguous(), data.y[1000:1100]
    name = args.spgd_dir[-1].name
    for frozen in (False, True):
        for p in model.parameters():
            p.requires_grad_(not frozen)
        torch.manual_seed(0)
        t = time.process_time()
        refs[name].SparsePGD(model, epsilon=1.0, k=20, t=300, unprojected_gradient=True)(x, y)
        key = f"{name} unprojected seed 0, 100 images, weights {'frozen' if frozen else 'requiring grad (as run)'}"
        out["reference_cpu_s"][key] = round(time.process_time() - t, 2)
        print(key, out["reference_cpu_s"][key], flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()

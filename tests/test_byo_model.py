"""Bring your own model: any class count, torchvision and timm models, zoo entries on their own dataset,
and model/data mismatches refused before anything runs (issue 15, model side)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from robustbench_ext.cli import cli
from robustbench_ext.errors import RbxError
from robustbench_ext.models.loading import load_model
from robustbench_ext.records.store import read_flags, read_record
from robustbench_ext.registry import ARCHITECTURES
from robustbench_ext import evaluate

FAST = ["--threat", "Linf:8/255", "--attack", "pgd:steps=2", "--batch-size", "8", "--quiet"]


def _files(d: Path) -> list[Path]:
    return sorted(p for p in d.rglob("*") if p.is_file()) if d.exists() else []


def _npz(tmp: Path, name: str, n: int, k: int, shape=(32, 32, 3)) -> str:
    rng = np.random.default_rng(0)
    np.savez(tmp / name, x=rng.integers(0, 256, (n, *shape), dtype=np.uint8), y=np.arange(n) % k,
             classes=np.array([f"c{i}" for i in range(k)]))
    return f"npz:{tmp / name}"


@pytest.mark.parametrize("k", [2, 5, 100])
def test_checkpoints_of_any_class_count_run_from_the_cli_and_evaluate(k, tmp_path):
    torch.manual_seed(k)
    net = ARCHITECTURES.create("smallcnn", num_classes=k)
    ckpt = tmp_path / f"smallcnn{k}.pt"
    torch.save(net.state_dict(), ckpt)
    data = _npz(tmp_path, f"data{k}.npz", 12, k)
    res = CliRunner().invoke(cli, ["run", "--model", f"file:{ckpt}", "--arch", "smallcnn", "--dataset", data,
                                   *FAST, "--results-dir", str(tmp_path / "res")])
    assert res.exit_code == 0, res.output
    (path,) = (tmp_path / "res" / "records").glob("*.json")
    rec = read_record(path)
    assert rec.model["num_classes"] == k and rec.n == 12
    loaded = load_model(f"file:{ckpt}", arch="smallcnn")
    assert loaded.num_classes == k
    ev = evaluate(loaded.module, data, "Linf:8/255", attacks=["pgd:steps=2"], batch_size=8, progress=False)
    assert ev.record.model["num_classes"] == k
    assert np.array_equal(ev.flags.clean_correct, read_flags(path).clean_correct)  # the same model, the same verdicts


def test_num_classes_override_that_disagrees_with_the_checkpoint_is_one_line(tmp_path):
    torch.save(ARCHITECTURES.create("smallcnn", num_classes=5).state_dict(), tmp_path / "m.pt")
    res = CliRunner().invoke(cli, ["run", "--model", f"file:{tmp_path / 'm.pt'}", "--arch", "smallcnn", "--num-classes", "7",
                                   "--dataset", _npz(tmp_path, "d.npz", 8, 5), *FAST, "--results-dir", str(tmp_path / "res")])
    assert res.exit_code == 2 and res.stderr.strip() == res.stderr.strip().splitlines()[0]
    assert "has 5 classes (its last layer), not --num-classes 7" in res.stderr and not _files(tmp_path / "res")


def test_torchvision_resnet50_random_weights_on_imagenet_shaped_data(tmp_path):
    """torchvision:resnet50 (random weights, no download), n = 2 at 224x224, from the CLI and from evaluate()."""
    data = _npz(tmp_path, "imnet.npz", 2, 1000, shape=(224, 224, 3))
    res = CliRunner().invoke(cli, ["run", "--model", "torchvision:resnet50,weights=none", "--dataset", data,
                                   "--threat", "Linf:4/255", "--attack", "pgd:steps=1", "--batch-size", "2", "--quiet",
                                   "--results-dir", str(tmp_path / "res")])
    assert res.exit_code == 0, res.output
    (path,) = (tmp_path / "res" / "records").glob("*.json")
    rec = read_record(path)
    assert rec.model["architecture"] == "resnet50" and rec.model["num_classes"] == 1000
    assert rec.model["normalization"]["mean"] == pytest.approx([0.485, 0.456, 0.406])  # ImageNet normalization wrapped in
    import torchvision

    torch.manual_seed(0)
    ev = evaluate(torchvision.models.resnet50(), data, "Linf:4/255", attacks=["pgd:steps=1"], normalize="imagenet",
                  batch_size=2, progress=False)
    assert ev.record.n == 2 and ev.record.model["name"] == "ResNet"


def test_timm_model_built_without_downloads(tmp_path):
    data = _npz(tmp_path, "d.npz", 4, 10)
    res = CliRunner().invoke(cli, ["run", "--model", "timm:resnet10t,weights=none", "--num-classes", "10", "--dataset", data,
                                   *FAST, "--results-dir", str(tmp_path / "res")])
    assert res.exit_code == 0, res.output
    rec = read_record(next((tmp_path / "res" / "records").glob("*.json")))
    assert rec.model["source"] == "timm:resnet10t (random weights)" and rec.model["num_classes"] == 10
    import timm

    ev = evaluate(timm.create_model("resnet10t", pretrained=False, num_classes=10), data, "L2:0.5", attacks=["pgd:steps=2"],
                  progress=False)
    assert ev.record.threats[0].threat == "L2:0.5"


def test_offline_torchvision_weights_are_one_line_saying_where_to_put_them(tmp_path, monkeypatch):
    import torchvision.models as tvm

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def offline(*a, **k):
        raise ConnectionError("Failed to establish a new connection")

    monkeypatch.setattr(tvm._api, "get_model", lambda name, weights=None, **k: offline() if weights is not None else nn.Linear(1, 1))
    monkeypatch.setattr(tvm, "get_model", tvm._api.get_model)
    with pytest.raises(RbxError) as info:
        load_model("torchvision:resnet18")
    msg = str(info.value)
    assert "\n" not in msg and "could not be downloaded" in msg and "weights=PATH" in msg and "hub" in msg


@pytest.mark.parametrize("case, expected", [
    ("channels", "expects 3-channel inputs, the data has 1 channels ([1, 28, 28])"),
    ("size", "failed on inputs of shape [2, 3, 224, 224]"),
    ("normalize", "has 2 channels (mean [0.5, 0.5]), the data has 3"),
    ("classes", "has 10 outputs but the data"),
])
def test_model_data_mismatch_is_one_line_exit_2_and_nothing_written(case, expected, tmp_path):
    args = {"channels": ["--dataset", _npz(tmp_path, "g.npz", 8, 10, shape=(28, 28))],
            "size": ["--dataset", _npz(tmp_path, "big.npz", 4, 10, shape=(224, 224, 3))],
            "normalize": ["--normalize", "0.5,0.5/0.2,0.2", "--dataset", "cifar10-1k", "--n-examples", "8"],
            "classes": ["--dataset", _npz(tmp_path, "c100.npz", 8, 100)]}[case]
    res = CliRunner().invoke(cli, ["run", "--model", "cifar10-smallcnn-linf-at", *args, *FAST,
                                   "--results-dir", str(tmp_path / "res")])
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rbx: error: ") and expected in lines[0], res.stderr
    assert "cifar10-smallcnn-linf-at" in lines[0] or case == "normalize"
    assert not _files(tmp_path / "res")


def test_class_subset_is_allowed_only_when_asked(tmp_path):
    """A 10-class model on 5-class data (labels 0..4 are model classes) runs with --allow-class-subset."""
    data = _npz(tmp_path, "five.npz", 10, 5)
    base = ["run", "--model", "cifar10-smallcnn-linf-at", "--dataset", data, *FAST]
    refused = CliRunner().invoke(cli, [*base, "--results-dir", str(tmp_path / "a")])
    assert refused.exit_code == 2 and "--allow-class-subset" in refused.stderr
    ok = CliRunner().invoke(cli, [*base, "--allow-class-subset", "--results-dir", str(tmp_path / "b")])
    assert ok.exit_code == 0, ok.output


def test_cifar100_zoo_model_runs_on_cifar100_or_is_refused_never_on_cifar10(tmp_path, monkeypatch):
    """robustbench:cifar100/Linf/ID without --dataset is evaluated on CIFAR-100; on CIFAR-10 it is refused."""
    from robustbench_ext.models.sources import dataset_hint

    assert dataset_hint("robustbench:cifar100/Linf/Addepalli2022Efficient_RN18") == "cifar100"
    assert dataset_hint("robustbench:cifar10/Linf/Addepalli2021Towards_RN18") == "cifar10"
    # A zoo entry's checkpoint we make (random weights, its architecture), in robustbench's layout.
    zoo = tmp_path / "zoo"
    from robustbench_ext._compat import import_robustbench

    enums = import_robustbench("model_zoo.enums")
    dicts = import_robustbench("model_zoo").model_dicts
    entry = dicts[enums.BenchmarkDataset("cifar100")][enums.ThreatModel("Linf")]["Addepalli2022Efficient_RN18"]["model"]()
    (zoo / "cifar100" / "Linf").mkdir(parents=True)
    torch.save(entry.state_dict(), zoo / "cifar100" / "Linf" / "Addepalli2022Efficient_RN18.pt")
    monkeypatch.setenv("RBX_ROBUSTBENCH_DIR", str(zoo))
    loaded = load_model("robustbench:cifar100/Linf/Addepalli2022Efficient_RN18")
    assert loaded.dataset == "cifar100"
    res = CliRunner().invoke(cli, ["run", "--model", "robustbench:cifar100/Linf/Addepalli2022Efficient_RN18",
                                   "--dataset", "cifar10-1k", "--n-examples", "4", *FAST, "--results-dir", str(tmp_path / "res")])
    assert res.exit_code == 2 and "has 100 outputs but the data" in res.stderr and not _files(tmp_path / "res")
    # Without --dataset the run goes to the model's own dataset: here CIFAR-100 is not on this machine, so it
    # says so (it never falls back to CIFAR-10).
    monkeypatch.setenv("RBX_DATA", str(tmp_path / "nodata"))
    import robustbench_ext.data.datasets as data_mod

    monkeypatch.setattr(data_mod, "data_dirs", lambda: [tmp_path / "nodata"])
    import torchvision.datasets as tvd

    monkeypatch.setattr(tvd, "CIFAR100", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("no network")))
    own = CliRunner().invoke(cli, ["run", "--model", "robustbench:cifar100/Linf/Addepalli2022Efficient_RN18",
                                   "--n-examples", "4", *FAST, "--results-dir", str(tmp_path / "res2")])
    assert own.exit_code == 2 and "CIFAR-100" in own.stderr and "CIFAR-10 " not in own.stderr.replace("CIFAR-100", "")


def test_a_run_without_a_suite_takes_its_datasets_own_suite():
    from robustbench_ext.evaluation.suites import DEFAULT_SUITE, default_suite

    assert default_suite("cifar100") == "cifar100-union"
    assert default_suite("imagenet:/some/where,preprocessing=Res224") == "imagenet-union"
    assert default_suite("cifar10-1k") == default_suite("cifar10") == default_suite(None) == DEFAULT_SUITE
    assert default_suite("mnist") == "mnist-union"  # MNIST has its own suite (Tramer & Boneh radii; issue 26)

    from robustbench_ext.data.datasets import EvalData

    torch.manual_seed(0)
    net = ARCHITECTURES.create("smallcnn", num_classes=100).eval()
    x, y = torch.rand(2, 3, 32, 32), torch.tensor([3, 77])
    data = EvalData("cifar100", x, y, "random CIFAR-100-shaped images", "memory", classes=tuple(f"c{i}" for i in range(100)))
    ev = evaluate(net, data, batch_size=2)
    assert ev.record.suite == "cifar100-union"  # the data's suite, not cifar10-union's label on CIFAR-100

"""CIFAR-100, MNIST and the ImageNet validation set: search rule, downloads, offline errors, preprocessing, subset."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import robustbench_ext.data.datasets as data_mod
from robustbench_ext._compat import robustbench_helper_file
import robustbench_ext._compat as compat_mod
from robustbench_ext.data.datasets import as_eval_data
from robustbench_ext.data.imagenet import IMAGENET_CLASS_MAP_FILE, IMAGENET_SUBSET_FILE
from robustbench_ext.errors import DataError
from robustbench_ext.registry import DATASETS

#: Four real ImageNet-1k wnids: standard indices 0, 1, 2 (tench, goldfish, great white shark) and 980 (volcano).
WNIDS = ("n01440764", "n01443537", "n01484850", "n09472597")


class _FakeTorchvision:
    """Stands in for a torchvision dataset class; records how it was called."""

    calls: list = []

    def __init__(self, root, train, download):
        type(self).calls.append((str(root), train, download))
        self.data = np.random.default_rng(0).integers(0, 256, (30, 32, 32, 3), dtype=np.uint8)
        self.targets = [k % 100 for k in range(30)]
        self.classes = [f"class{k}" for k in range(100)]


def test_cifar100_download_branch(in_tmp, monkeypatch):
    import torchvision.datasets as tvd

    _FakeTorchvision.calls = []
    monkeypatch.setattr(data_mod, "data_dirs", lambda: [in_tmp / "nowhere"])
    monkeypatch.setattr(tvd, "CIFAR100", _FakeTorchvision)
    d = DATASETS.create("cifar100", n_examples=12)
    assert d.x.shape == (12, 3, 32, 32) and d.y.tolist() == list(range(12))
    assert d.source == "CIFAR-100 test (official, torchvision)" and d.num_classes == 100 and d.name == "cifar100"
    assert _FakeTorchvision.calls == [("data", False, True)]  # not found locally: downloaded into ./data
    assert DATASETS.create("cifar100-train", n_examples=3).split == "train" and _FakeTorchvision.calls[-1][1] is True


def test_cifar100_local_folder_is_used_without_download(tmp_path, monkeypatch):
    import torchvision.datasets as tvd

    (tmp_path / "cifar-100-python").mkdir()
    _FakeTorchvision.calls = []
    monkeypatch.setenv("RBX_DATA", str(tmp_path))
    monkeypatch.setattr(tvd, "CIFAR100", _FakeTorchvision)
    assert DATASETS.create("cifar100", n_examples=4).location == str(tmp_path)
    assert _FakeTorchvision.calls == [(str(tmp_path), False, False)]


def test_cifar100_packed_npz_copy(tmp_path, monkeypatch):
    import io

    rng = np.random.default_rng(3)
    imgs = rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    blobs = []
    for im in imgs:
        buf = io.BytesIO()
        Image.fromarray(im).save(buf, format="JPEG", quality=95)
        blobs.append(np.frombuffer(buf.getvalue(), dtype=np.uint8))
    (tmp_path / "cifar100").mkdir()
    np.savez(tmp_path / "cifar100" / "test_jpeg.npz", jpeg=np.concatenate(blobs),
             offsets=np.concatenate([[0], np.cumsum([len(b) for b in blobs])]), y=np.array([5, 99, 0, 42, 7, 7]))
    monkeypatch.setenv("RBX_DATA", str(tmp_path))
    d = DATASETS.create("cifar100", n_examples=4)
    assert d.source == "CIFAR-100 test (JPEG copy)" and d.y.tolist() == [5, 99, 0, 42] and d.x.shape == (4, 3, 32, 32)


class _FakeMNIST:
    def __init__(self, root, train, download):
        self.data = torch.arange(10 * 28 * 28, dtype=torch.int64).remainder(256).to(torch.uint8).reshape(10, 28, 28)
        self.targets = torch.arange(10)
        self.classes = [f"{k} - digit" for k in range(10)]


def test_mnist_is_one_channel_28x28(in_tmp, monkeypatch):
    import torchvision.datasets as tvd

    monkeypatch.setattr(data_mod, "data_dirs", lambda: [in_tmp / "nowhere"])
    monkeypatch.setattr(tvd, "MNIST", _FakeMNIST)
    d = DATASETS.create("mnist", n_examples=7)
    assert d.x.shape == (7, 1, 28, 28) and d.x.dtype == torch.float32 and d.y.tolist() == list(range(7))
    assert float(d.x[0, 0, 0, 5]) == pytest.approx(5 / 255) and d.num_classes == 10


@pytest.mark.parametrize("name,tv_class,folder", [
    ("cifar100", "CIFAR100", "cifar-100-python/ or cifar100/test_jpeg.npz"),
    ("cifar100-train", "CIFAR100", "cifar-100-python/ or cifar100/train_jpeg.npz"),
    ("mnist", "MNIST", "MNIST/raw/"),
    ("mnist-train", "MNIST", "MNIST/raw/"),
])
def test_offline_error_is_one_line_and_leaves_no_data(name, tv_class, folder, in_tmp, monkeypatch):
    import torchvision.datasets as tvd

    def offline(root, train, download):
        Path(root).mkdir(parents=True, exist_ok=True)  # torchvision makes the folder, then the download fails
        (Path(root) / "partial.tar.gz").write_bytes(b"partial")
        raise RuntimeError("Error downloading x:\nTried https://..., got:\n<urlopen error [Errno -3]>")

    monkeypatch.setattr(data_mod, "data_dirs", lambda: [in_tmp / "nowhere"])
    monkeypatch.setattr(tvd, tv_class, offline)
    with pytest.raises(DataError) as info:
        DATASETS.create(name, n_examples=5)
    msg = str(info.value)
    assert "\n" not in msg and f"put {folder} in ./data or set RBX_DATA=DIR" in msg and "nowhere" in msg
    assert "download failed (RuntimeError: Error downloading x:)" in msg
    assert not (in_tmp / "data").exists()


# ---- ImageNet ----------------------------------------------------------------------------------------
def _jpeg(path: Path, w: int, h: int, seed: int, gradient: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if gradient:  # value of column j is j mod 256: shows where the center crop starts
        arr = np.repeat(np.repeat(np.arange(w, dtype=np.uint8)[None, :, None], h, 0), 3, 2)
        Image.fromarray(arr).save(path.with_suffix(".png"))
        path.with_suffix(".png").rename(path)  # a PNG under a .JPEG name: lossless, and PIL reads by content
        return
    arr = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path, format="JPEG")


@pytest.fixture
def imagenet_val(tmp_path):
    """A tiny ImageNet-layout folder: val/<wnid>/ILSVRC2012_val_*.JPEG at odd sizes, and an id list."""
    val = tmp_path / "imagenet" / "val"
    files = [("n01484850", 1, 333, 517), ("n01440764", 7, 300, 256), ("n01443537", 3, 517, 301),
             ("n09472597", 2, 260, 401), ("n01440764", 5, 401, 287)]
    for k, (wnid, idx, w, h) in enumerate(files):
        _jpeg(val / wnid / f"ILSVRC2012_val_{idx:08d}.JPEG", w, h, seed=k, gradient=(w, h) == (300, 256))
    ids = tmp_path / "ids.txt"
    ids.write_text("n01443537/ILSVRC2012_val_00000003.JPEG\nn01440764/ILSVRC2012_val_00000007.JPEG\n"
                   "n09472597/ILSVRC2012_val_00000002.JPEG\nn01484850/ILSVRC2012_val_00000001.JPEG\n")
    return val, ids


def _standard_index(wnid: str) -> int:
    mapping = robustbench_helper_file(IMAGENET_CLASS_MAP_FILE)
    return json.loads(mapping.read_text())[wnid] if mapping else sorted(WNIDS).index(wnid)


def test_imagenet_preprocessing_and_class_order(imagenet_val):
    val, ids = imagenet_val
    d = DATASETS.create(f"imagenet:{val},ids={ids}")
    assert d.x.shape == (4, 3, 224, 224) and d.x.dtype == torch.float32 and 0 <= d.x.min() and d.x.max() <= 1
    assert d.y.tolist() == [_standard_index(w) for w in ("n01443537", "n01440764", "n09472597", "n01484850")]
    if robustbench_helper_file(IMAGENET_CLASS_MAP_FILE):
        assert d.y.tolist() == [1, 0, 980, 2] and d.num_classes == 1000 and d.classes[:2] == ("n01440764", "n01443537")
    # Res256Crop224 on a 300x256 image: no resize (short side 256), then columns 38..261 (the center 224).
    cols = d.x[1, 0, 0] * 255
    assert torch.allclose(cols, torch.arange(38, 262).remainder(256).float(), atol=0.5)  # uint8 columns wrap at 256
    desc = d.describe()
    assert desc["preprocessing"] == "Res256Crop224" and desc["split"] == "val" and "ids.txt" in desc["selection"]
    assert desc["subset_sha256"] and "Res256Crop224" in desc["source"]
    crop = DATASETS.create(f"imagenet:{val},ids={ids},preprocessing=Res224", n_examples=2)
    assert crop.x.shape == (2, 3, 224, 224) and crop.describe()["preprocessing"] == "Res224"
    with pytest.raises(DataError, match="unknown ImageNet preprocessing 'Crop999'; known: Res256Crop224"):
        DATASETS.create(f"imagenet:{val},preprocessing=Crop999,ids={ids}")
    with pytest.raises(DataError, match="differ in size"):
        DATASETS.create(f"imagenet:{val},preprocessing=none,ids={ids}")
    with pytest.raises(DataError, match="unknown parameter 'crop'"):
        DATASETS.create(f"imagenet:{val},crop=1")


def test_imagenet_reads_only_the_images_asked_for(imagenet_val, monkeypatch):
    val, ids = imagenet_val
    opened = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda fp, *a, **k: opened.append(str(fp)) or real_open(fp, *a, **k))
    d = DATASETS.create(f"imagenet:{val},ids={ids}", n_examples=2)
    assert d.n == 2 and [Path(p).parent.name for p in opened] == ["n01443537", "n01440764"]


def test_imagenet_uses_robustbenchs_subset_in_its_order(imagenet_val, monkeypatch):
    val, ids = imagenet_val
    real = compat_mod.robustbench_helper_file
    monkeypatch.setattr(compat_mod, "robustbench_helper_file", lambda name: ids if name == IMAGENET_SUBSET_FILE else real(name))
    monkeypatch.setattr(data_mod, "data_dirs", lambda: [val.parent.parent])  # found as imagenet/val, no argument
    d = DATASETS.create("imagenet", n_examples=3)
    assert d.location == str(val) and d.y.tolist() == [_standard_index(w) for w in ("n01443537", "n01440764", "n09472597")]
    assert d.describe()["selection"].startswith("first 3 of RobustBench's 5,000-image ImageNet evaluation subset")
    with pytest.raises(DataError, match="more than the 4 images"):
        DATASETS.create("imagenet", n_examples=5)


def test_imagenet_without_the_list_takes_the_first_by_file_name(imagenet_val, monkeypatch):
    val, _ = imagenet_val
    real = compat_mod.robustbench_helper_file
    monkeypatch.setattr(compat_mod, "robustbench_helper_file", lambda name: None if name == IMAGENET_SUBSET_FILE else real(name))
    d = DATASETS.create(f"imagenet:{val.parent}", n_examples=3)  # PATH may be the folder holding val/
    # val_00000001 (n01484850), _02 (n09472597), _03 (n01443537): the official validation order, classes mixed
    assert d.y.tolist() == [_standard_index(w) for w in ("n01484850", "n09472597", "n01443537")]
    assert "list was not found" in d.describe()["selection"] and d.describe()["subset_file"] is None


def test_installed_robustbench_ships_the_5000_ids():
    ids = robustbench_helper_file(IMAGENET_SUBSET_FILE)
    if ids is None:
        pytest.skip("robustbench's helper_files are not installed")
    lines = [line for line in ids.read_text().splitlines() if line.strip()]
    assert len(lines) == 5000 and len(set(lines)) == 5000 and all(line.startswith("n") and "/ILSVRC2012_val_" in line for line in lines)


def test_imagenet_errors(imagenet_val, in_tmp, monkeypatch):
    val, ids = imagenet_val
    monkeypatch.setattr(data_mod, "data_dirs", lambda: [in_tmp / "nowhere"])
    with pytest.raises(DataError) as info:
        DATASETS.create("imagenet", n_examples=2)
    msg = str(info.value)
    assert "\n" not in msg and "cannot be downloaded" in msg and "imagenet/val/<wnid>/*.JPEG" in msg and "imagenet:PATH" in msg
    assert not (in_tmp / "data").exists()
    (val / "n01440764" / "ILSVRC2012_val_00000007.JPEG").unlink()
    with pytest.raises(DataError, match="n01440764/ILSVRC2012_val_00000007.JPEG is missing"):
        DATASETS.create(f"imagenet:{val},ids={ids}")
    with pytest.raises(DataError, match="no such folder"):
        DATASETS.create(f"imagenet:{in_tmp / 'nope'}")
    with pytest.raises(DataError, match="no such id list"):
        DATASETS.create(f"imagenet:{val},ids={in_tmp / 'nope.txt'}")


def test_corruption_sets_are_not_plain_image_sets():
    with pytest.raises(DataError, match="is a set of common corruptions, not one image set") as info:
        as_eval_data("cifar10-c:base=cifar10-1k", 5)
    assert "\n" not in str(info.value)

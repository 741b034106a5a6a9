"""Data loading: the offline CIFAR-10 copy, npz files, image folders, and their errors."""

import numpy as np
import pytest
import torch
from PIL import Image

import robustbench_ext.data.datasets as data_mod
from robustbench_ext.data.datasets import EMBEDDED_FILE, cifar10
from robustbench_ext.errors import DataError
from robustbench_ext.registry import DATASETS

from conftest import needs_shared


def test_embedded_slice_ships_with_the_package():
    d = DATASETS.create("cifar10-1k")
    assert d.n == 1000 and d.x.shape == (1000, 3, 32, 32) and d.name == "cifar10-1k"
    assert np.bincount(d.y.numpy()).tolist() == [100] * 10  # class-balanced: image k has label k % 10
    assert d.y.tolist()[:20] == [k % 10 for k in range(20)]
    assert d.classes[0] == "airplane" and "embedded" in d.source and d.location == str(EMBEDDED_FILE)
    card = (EMBEDDED_FILE.parent / "README.md").read_text()
    assert d.sha256() in card and "Krizhevsky" in card  # the data card names the content it describes and cites CIFAR-10
    assert DATASETS.create("cifar10-1k", n_examples=30).sha256() != d.sha256()


@needs_shared("cifar10-full")
def test_embedded_slice_is_the_jpeg_copys_first_1000(in_tmp):
    assert cifar10(1000).sha256() == DATASETS.create("cifar10-1k").sha256()


def test_offline_cifar10_is_one_line_naming_the_slice_and_leaves_nothing(in_tmp, monkeypatch):
    import torchvision.datasets as tvd

    def offline(root, train, download):
        from pathlib import Path

        Path(root).mkdir(parents=True, exist_ok=True)  # torchvision creates the folder, then the download fails
        (Path(root) / "cifar-10-python.tar.gz").write_bytes(b"partial")
        raise RuntimeError("Failed to download (no network)")

    monkeypatch.setattr(data_mod, "data_dirs", lambda: [in_tmp / "nowhere"])
    monkeypatch.setattr(tvd, "CIFAR10", offline)
    with pytest.raises(DataError) as info:
        cifar10(5)
    msg = str(info.value)
    assert "\n" not in msg and "--dataset cifar10-1k" in msg and "RBX_DATA" in msg and "nowhere" in msg
    assert not (in_tmp / "data").exists()  # no empty ./data (or a partial archive) left behind


@needs_shared("cifar10-full")
def test_cifar10_found_without_flags(in_tmp):
    d = cifar10(30)
    assert d.source == "CIFAR-10 test (JPEG copy)"
    assert d.x.shape == (30, 3, 32, 32) and d.x.dtype == torch.float32
    assert 0 <= d.x.min() and d.x.max() <= 1
    assert d.y.tolist() == [k % 10 for k in range(30)]  # the copy is class-interleaved
    assert d.classes[0] == "airplane" and d.num_classes == 10
    assert d.describe()["sha256"] == cifar10(30).sha256()
    assert d.sha256() != cifar10(31).sha256()


@pytest.mark.parametrize("n", [0, -3, 1_001])
def test_n_examples_out_of_range(n):
    with pytest.raises(DataError, match="n-examples"):
        DATASETS.create("cifar10-1k", n_examples=n)


def test_npz_decoded_and_packed(tmp_path):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (12, 32, 32, 3), dtype=np.uint8)
    y = np.arange(12) % 3
    np.savez(tmp_path / "hwc.npz", x=imgs, y=y)
    d = DATASETS.create(f"npz:{tmp_path / 'hwc.npz'}", n_examples=5)
    assert d.x.shape == (5, 3, 32, 32)
    assert torch.allclose(d.x[1, :, 2, 3] * 255, torch.tensor(imgs[1, 2, 3], dtype=torch.float32))
    np.savez(tmp_path / "chw.npz", x=imgs.transpose(0, 3, 1, 2).astype(np.float32) / 255, y=y)
    assert torch.allclose(DATASETS.create(f"npz:{tmp_path / 'chw.npz'}").x, DATASETS.create(f"npz:{tmp_path / 'hwc.npz'}").x)
    # Packed JPEG, as in ../shared/data.
    import io
    blobs = []
    for im in imgs:
        buf = io.BytesIO()
        Image.fromarray(im).save(buf, format="JPEG", quality=100, subsampling=0)
        blobs.append(np.frombuffer(buf.getvalue(), dtype=np.uint8))
    offsets = np.concatenate([[0], np.cumsum([len(b) for b in blobs])])
    np.savez(tmp_path / "packed.npz", jpeg=np.concatenate(blobs), offsets=offsets, y=y)
    p = DATASETS.create(f"npz:{tmp_path / 'packed.npz'}")
    assert p.x.shape == (12, 3, 32, 32) and (p.x - DATASETS.create(f"npz:{tmp_path / 'hwc.npz'}").x).abs().mean() < 0.03


def test_npz_errors(tmp_path):
    np.savez(tmp_path / "wide.npz", x=np.full((4, 3, 8, 8), 200.0, dtype=np.float32), y=np.zeros(4, dtype=np.int64))
    with pytest.raises(DataError, match="0..255"):
        DATASETS.create(f"npz:{tmp_path / 'wide.npz'}")
    np.savez(tmp_path / "keys.npz", images=np.zeros((2, 3, 8, 8)))
    with pytest.raises(DataError, match="expected arrays"):
        DATASETS.create(f"npz:{tmp_path / 'keys.npz'}")
    np.savez(tmp_path / "neg.npz", x=np.zeros((2, 8, 8, 3), dtype=np.uint8), y=np.array([0, -1]))
    with pytest.raises(DataError, match="labels"):
        DATASETS.create(f"npz:{tmp_path / 'neg.npz'}")
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(DataError, match="cannot read"):
        DATASETS.create(f"npz:{tmp_path / 'junk.npz'}")
    with pytest.raises(DataError, match="no such file"):
        DATASETS.create(f"npz:{tmp_path / 'missing.npz'}")


def test_imagefolder(tmp_path):
    rng = np.random.default_rng(1)
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for k in range(3):
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(tmp_path / cls / f"{k}.png")
    d = DATASETS.create(f"imagefolder:{tmp_path}", n_examples=4)
    assert d.x.shape == (4, 3, 16, 16) and d.y.tolist() == [0, 0, 0, 1] and d.classes == ("cat", "dog")
    with pytest.raises(DataError, match="no such folder"):
        DATASETS.create(f"imagefolder:{tmp_path / 'nope'}")


class _FakeCIFAR10:
    """Stands in for torchvision's CIFAR10 so the download branch is tested without a network."""

    def __init__(self, root, train, download):
        assert download is True
        self.data = np.zeros((20, 32, 32, 3), dtype=np.uint8)
        self.targets = list(range(10)) * 2


def test_download_fallback_and_its_error(in_tmp, monkeypatch):
    import torchvision.datasets as tvd

    monkeypatch.setattr(data_mod, "data_dirs", lambda: [in_tmp / "nowhere"])
    monkeypatch.setattr(tvd, "CIFAR10", _FakeCIFAR10)
    d = cifar10(5)
    assert d.source == "CIFAR-10 test (official, torchvision)" and d.n == 5

    def offline(root, train, download):
        raise RuntimeError("Failed to download (no network)")

    monkeypatch.setattr(tvd, "CIFAR10", offline)
    with pytest.raises(DataError, match="download failed") as info:
        cifar10(5)
    assert "\n" not in str(info.value)

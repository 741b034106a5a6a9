"""Model sources: reference models, file:PATH, robustbench:ID offline, normalization, and load errors."""

import hashlib

import pytest
import torch

from robustbench_ext._compat import import_robustbench
from robustbench_ext.errors import ModelLoadError, RbxError, UnknownNameError
from robustbench_ext.models.loading import file_sha256, find_checkpoint, load_model
from robustbench_ext.paths import ASSETS

from conftest import needs_shared

SHA = {  # ../shared/models/README.md
    "cifar10_resnet18_linf_at.pt": "d53aa442dc9a18fe791a927590fc8b57fa0027993fc3085897dcc8775f58ee62",
    "cifar10_smallcnn_linf_at.pt": "bb49e24d47cea00dc28c66b1250967996359cf93cb73d6d4f096109996b5c5d2",
}


def test_reference_models_found_and_identified(small_cnn):
    assert small_cnn.architecture == "smallcnn"
    assert small_cnn.sha256 == SHA["cifar10_smallcnn_linf_at.pt"]
    assert not small_cnn.module.training
    desc = small_cnn.describe()
    assert desc["parameters"] > 1_000_000 and desc["source"].endswith("cifar10_smallcnn_linf_at.pt")


def test_embedded_model_ships_with_the_package(monkeypatch, tmp_path):
    """With no $RBX_MODELS, ./models or ../shared (a user's fresh install), the small CNN comes from package data."""
    import robustbench_ext.models.loading as m

    monkeypatch.setattr(m, "model_dirs", lambda: [tmp_path / "nowhere", ASSETS])
    loaded = load_model("cifar10-smallcnn-linf-at")
    assert loaded.source == str(ASSETS / "cifar10_smallcnn_linf_at.pt")
    assert loaded.sha256 == SHA["cifar10_smallcnn_linf_at.pt"] == file_sha256(ASSETS / "cifar10_smallcnn_linf_at.pt")
    card = (ASSETS / "README.md").read_text()
    assert SHA["cifar10_smallcnn_linf_at.pt"] in card  # the model card names the file it describes
    with pytest.raises(ModelLoadError) as info:
        load_model("cifar10-resnet18-linf-at")
    msg = str(info.value)
    assert "\n" not in msg and "nowhere" in msg and "RBX_MODELS" in msg and "--model cifar10-smallcnn-linf-at" in msg


@needs_shared("resnet18")
def test_resnet18_reference_loads_every_key(cifar200):
    m = load_model("cifar10-resnet18-linf-at")
    assert m.sha256 == SHA["cifar10_resnet18_linf_at.pt"]
    with torch.no_grad():
        acc = (m.module(cifar200.x[:50]).argmax(1) == cifar200.y[:50]).float().mean().item()
    assert acc > 0.5  # README: 73.2% clean on the JPEG copy


def test_models_search_path_env(tmp_path, monkeypatch):
    (tmp_path / "cifar10_smallcnn_linf_at.pt").write_bytes(find_checkpoint("cifar10_smallcnn_linf_at.pt").read_bytes())
    monkeypatch.setenv("RBX_MODELS", str(tmp_path))
    assert find_checkpoint("cifar10_smallcnn_linf_at.pt") == tmp_path / "cifar10_smallcnn_linf_at.pt"


def test_file_model_with_arch_matches_reference(small_cnn, tmp_path, cifar200):
    path = tmp_path / "mine.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in small_cnn.module.state_dict().items()}}, path)
    m = load_model(f"file:{path}", arch="smallcnn")
    with torch.no_grad():
        assert torch.equal(m.module(cifar200.x[:8]), small_cnn.module(cifar200.x[:8]))
    assert m.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_file_model_errors(small_cnn, tmp_path):
    path = tmp_path / "mine.pt"
    torch.save(small_cnn.module.state_dict(), path)
    with pytest.raises(RbxError, match="needs --arch"):
        load_model(f"file:{path}")
    with pytest.raises(ModelLoadError, match="does not fit architecture 'resnet18'"):
        load_model(f"file:{path}", arch="resnet18")
    with pytest.raises(UnknownNameError, match="unknown architecture"):
        load_model(f"file:{path}", arch="resnet19")
    with pytest.raises(ModelLoadError, match="not found"):
        load_model(f"file:{tmp_path / 'missing.pt'}", arch="smallcnn")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ModelLoadError, match="is truncated or corrupt .*: delete it and download it again") as info:
        load_model(f"file:{truncated}", arch="smallcnn")
    assert "\n" not in str(info.value)
    with pytest.raises(RbxError, match="drop --arch"):
        load_model("cifar10-smallcnn-linf-at", arch="resnet18")


def test_normalization_wrapper(small_cnn, cifar200):
    x = cifar200.x[:4]
    ident = load_model("cifar10-smallcnn-linf-at", normalize="0,0,0/1,1,1")
    with torch.no_grad():
        assert torch.allclose(ident.module(x), small_cnn.module(x), atol=1e-6)
        wrapped = load_model("cifar10-smallcnn-linf-at", normalize="cifar10")
        assert not torch.allclose(wrapped.module(x), small_cnn.module(x))
    assert wrapped.normalization["mean"][0] == pytest.approx(0.4914)
    with pytest.raises(RbxError, match="cannot parse normalization"):
        load_model("cifar10-smallcnn-linf-at", normalize="0.5/0")


def test_robustbench_loads_offline_from_its_model_dir(tmp_path, monkeypatch, cifar200):
    # A checkpoint we make, in robustbench's layout <dir>/<dataset>/<threat>/<ModelId>.pt: the reference
    # ResNet-18 has exactly the key layout of robustbench's ResNet-18, the architecture of this zoo entry.
    from robustbench_ext.registry import ARCHITECTURES

    torch.manual_seed(0)  # random weights in the zoo entry's architecture: nothing here needs ../shared
    ref = ARCHITECTURES.create("resnet18").eval()
    target = tmp_path / "cifar10" / "Linf" / "Addepalli2021Towards_RN18.pt"
    target.parent.mkdir(parents=True)
    torch.save({k: v.clone() for k, v in ref.state_dict().items()}, target)
    monkeypatch.setenv("RBX_ROBUSTBENCH_DIR", str(tmp_path))
    m = load_model("robustbench:Addepalli2021Towards_RN18")
    assert m.source == "robustbench:cifar10/Linf/Addepalli2021Towards_RN18"
    assert m.sha256 == file_sha256(target)
    with torch.no_grad():
        assert torch.allclose(m.module(cifar200.x[:8]), ref(cifar200.x[:8]), atol=1e-5)


def test_robustbench_offline_without_checkpoint_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("RBX_ROBUSTBENCH_DIR", str(tmp_path / "zoo"))
    utils = import_robustbench("utils")

    def no_network(gdrive_id, fname_save):
        raise ConnectionError("Failed to establish a new connection: [Errno -3] Temporary failure in name resolution")

    # robustbench builds name their downloader download_gdrive_new (newer) or download_gdrive (older)
    for name in ("download_gdrive_new", "download_gdrive"):
        if hasattr(utils, name):
            monkeypatch.setattr(utils, name, no_network)
    with pytest.raises(ModelLoadError, match="could not be downloaded") as info:
        load_model("robustbench:Addepalli2021Towards_RN18")
    assert "put its checkpoint at" in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "zoo").exists()  # robustbench's empty <dir>/<dataset>/<threat> folders are removed again


def test_robustbench_unknown_id_suggests_close_names():
    with pytest.raises(UnknownNameError, match="did you mean Addepalli2021Towards_RN18"):
        load_model("robustbench:Addepali2021Towards_RN18")
    with pytest.raises(RbxError, match="no cifar10/L7 board"):
        load_model("robustbench:L7/Standard")


def test_own_resnet18_matches_robustbench_without_robustbench(monkeypatch, cifar200):
    """Where robustbench cannot be imported (a bare GPU image), resnet18 falls back to rbx's own definition:
    same state-dict keys (strict load of one checkpoint into both) and the same logits."""
    import robustbench_ext.models.architectures as arch

    torch.manual_seed(0)
    rb_net = arch.resnet18()
    assert not isinstance(rb_net, arch.CifarResNet18)  # robustbench is installed here

    def no_robustbench(*a, **k):
        raise RbxError("cannot import robustbench (simulated)")

    monkeypatch.setattr(arch, "import_robustbench", no_robustbench)
    own = arch.resnet18()
    assert isinstance(own, arch.CifarResNet18)
    # random weights and non-trivial BatchNorm statistics (a trained checkpoint's kind of state)
    sd = {k: (v + 0.1 * torch.rand_like(v) if k.endswith(("running_mean", "running_var")) else v)
          for k, v in rb_net.state_dict().items()}
    rb_net.load_state_dict(sd, strict=True)
    own.load_state_dict(sd, strict=True)
    x = cifar200.x[:16]
    with torch.no_grad():
        a, b = rb_net.eval()(x), own.eval()(x)
    assert torch.allclose(a, b, atol=1e-5) and (a.argmax(1) == b.argmax(1)).all()

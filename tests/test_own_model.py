"""A researcher's own model from the command line (issue 28): TorchScript files, whole pickled models only with an
explicit opt-in, architectures from the user's code (``--arch pkg.module:Class`` / ``file.py:Class`` with
``--arch-kwargs``), safetensors, and the Hugging Face Hub from a local cache, offline. Every file that is not
what a loader wants is one line saying what the file IS."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from robustbench_ext.cli import cli
from robustbench_ext.errors import ModelLoadError, RbxError
from robustbench_ext.models.formats import sniff
from robustbench_ext.models.loading import load_model
from robustbench_ext.records.store import read_record
from robustbench_ext.registry import ARCHITECTURES

FAST = ["--dataset", "cifar10-1k", "--n-examples", "8", "--threat", "Linf:8/255", "--attack", "pgd:steps=1",
        "--batch-size", "8", "--quiet"]

#: The user's own architecture, as a file in their project (a class with keyword arguments and num_classes).
NET_PY = textwrap.dedent('''
    import torch
    from torch import nn


    class TinyNet(nn.Module):
        """A researcher's model: conv -> pool -> linear, its width a keyword argument."""

        def __init__(self, width=8, num_classes=10):
            super().__init__()
            self.conv = nn.Conv2d(3, width, 3, padding=1)
            self.head = nn.Linear(width, num_classes)

        def forward(self, x):
            return self.head(torch.relu(self.conv(x)).mean((2, 3)))


    def make_tiny(width=8):
        return TinyNet(width=width)


    class Broken(nn.Module):
        def __init__(self):
            raise ValueError("no such layer")


    NOT_A_CLASS = 3
''')


def _one_line(res) -> str:
    msg = res.stderr.strip()
    assert res.exit_code == 2, (res.exit_code, res.output)
    assert "\n" not in msg and msg.startswith("rbx: error: "), msg
    assert "Traceback" not in res.output and "Warning" not in res.output, res.output
    return msg


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The files a researcher has: their code, its state dict (torch and safetensors), a TorchScript archive, a whole
    pickled model, one pickled from a script's __main__, a checkpoint with Python objects, and broken downloads."""
    d = tmp_path_factory.mktemp("own")
    (d / "tinynets.py").write_text(NET_PY)
    sys.path.insert(0, str(d))
    try:
        import tinynets
        torch.manual_seed(0)
        net = tinynets.TinyNet(width=4).eval()
        torch.save(net.state_dict(), d / "tiny_sd.pt")
        from safetensors.torch import save_file
        save_file(net.state_dict(), str(d / "tiny.safetensors"))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.jit.script(net).save(str(d / "tiny_script.pt"))
            torch.jit.trace(net, torch.rand(1, 3, 32, 32)).save(str(d / "tiny_trace.pt"))
        torch.save(net, d / "tiny_whole.pt")
        import argparse
        torch.save({"state_dict": net.state_dict(), "args": argparse.Namespace(lr=0.1)}, d / "tiny_ckpt_args.pt")
    finally:
        sys.path.remove(str(d))
        sys.modules.pop("tinynets", None)  # the loaders must import it themselves
    # a model pickled from the training script itself: its class lives in __main__ (put there for the save only)
    import __main__

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(2, 2)

    Net.__module__, Net.__qualname__ = "__main__", "Net"
    __main__.Net = Net
    try:
        torch.save(Net(), d / "main_whole.pt")
    finally:
        del __main__.Net
    (d / "empty.pt").write_bytes(b"")
    (d / "page.pt").write_text("<!DOCTYPE html><html><body>Sign in</body></html>")
    (d / "meta.pt").write_text('{"epoch": 3}')
    good = (d / "tiny_sd.pt").read_bytes()
    (d / "truncated.pt").write_bytes(good[: len(good) // 2])
    import numpy as np
    np.savez(d / "images.npz", x=np.zeros((2, 3)))
    (d / "model.onnx").write_bytes(b"\x08\x07\x12\x07pytorch\x1a\x032.0")
    (d / "keras.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\x00" * 64)
    return d


# ---- what a file is: told without unpickling ----------------------------------------------------------
def test_sniff_tells_every_kind_of_file(files):
    kinds = {name: sniff(files / name).kind for name in (
        "tiny_sd.pt", "tiny.safetensors", "tiny_script.pt", "tiny_trace.pt", "tiny_whole.pt", "main_whole.pt",
        "tiny_ckpt_args.pt", "empty.pt", "page.pt", "meta.pt", "truncated.pt", "images.npz", "model.onnx", "keras.h5")}
    assert kinds == {"tiny_sd.pt": "state_dict", "tiny.safetensors": "safetensors", "tiny_script.pt": "torchscript",
                     "tiny_trace.pt": "torchscript", "tiny_whole.pt": "module", "main_whole.pt": "module",
                     "tiny_ckpt_args.pt": "pickle", "empty.pt": "empty", "page.pt": "html", "meta.pt": "text",
                     "truncated.pt": "unknown", "images.npz": "npz", "model.onnx": "onnx", "keras.h5": "hdf5"}
    assert sniff(files / "tiny_whole.pt").root_class == "tinynets.TinyNet"
    assert sniff(files / "main_whole.pt").root_class == "__main__.Net"
    assert "argparse.Namespace" in sniff(files / "tiny_ckpt_args.pt").what
    assert "tinynets" not in sys.modules  # sniffing imported (and ran) nothing from the files


def test_a_legacy_torch_save_file_is_told_too(tmp_path):
    net = ARCHITECTURES.create("smallcnn")
    torch.save(net.state_dict(), tmp_path / "sd.pt", _use_new_zipfile_serialization=False)
    torch.save(nn.Sequential(nn.Linear(2, 2)), tmp_path / "whole.pt", _use_new_zipfile_serialization=False)
    assert sniff(tmp_path / "sd.pt").kind == "state_dict"
    assert sniff(tmp_path / "whole.pt").kind == "module"
    assert load_model(f"file:{tmp_path / 'sd.pt'}", arch="smallcnn").num_classes == 10


# (file, extra CLI arguments, what the one-line message must say)
FILE_CASES = {
    "torchscript with --arch": ("tiny_script.pt", ["--arch", "smallcnn"], "is a TorchScript archive"),
    "whole pickled model": ("tiny_whole.pt", ["--arch", "smallcnn"], "is a whole pickled nn.Module (class tinynets.TinyNet"),
    "whole pickled model, no --arch": ("tiny_whole.pt", [], "--trust-pickle"),
    "checkpoint with Python objects": ("tiny_ckpt_args.pt", ["--arch", "smallcnn"], "holds Python objects besides tensors (argparse.Namespace)"),
    "state dict without --arch": ("tiny_sd.pt", [], "needs --arch"),
    "empty file": ("empty.pt", ["--arch", "smallcnn"], "is an empty file: delete it and download it again"),
    "HTML page": ("page.pt", ["--arch", "smallcnn"], "is an HTML page"),
    "JSON file": ("meta.pt", ["--arch", "smallcnn"], "is a JSON/text file"),
    "truncated file": ("truncated.pt", ["--arch", "smallcnn"], "is truncated or corrupt"),
    "npz": ("images.npz", ["--arch", "smallcnn"], "is a NumPy .npz archive"),
    "onnx": ("model.onnx", ["--arch", "smallcnn"], "is an ONNX model"),
    "hdf5": ("keras.h5", ["--arch", "smallcnn"], "is an HDF5 file"),
}


@pytest.mark.parametrize("case", sorted(FILE_CASES))
def test_each_file_that_is_not_a_loadable_model_is_one_line_saying_what_it_is(case, files, tmp_path):
    name, extra, expected = FILE_CASES[case]
    res = CliRunner().invoke(cli, ["run", "--model", f"file:{files / name}", *extra, *FAST, "--results-dir", str(tmp_path)])
    msg = _one_line(res)
    assert expected in msg, msg
    assert "weights_only" not in msg and "WeightsUnpickler" not in msg
    assert not list(tmp_path.rglob("*.json"))


def test_other_state_dict_readers_say_what_the_file_is_too(files):
    """torchvision:/timm: weights files and trained: folders read state dicts through the same reader."""
    with pytest.raises(ModelLoadError, match="is a TorchScript archive .*torchscript:"):
        load_model(f"torchvision:resnet18,weights={files / 'tiny_script.pt'}")
    with pytest.raises(ModelLoadError, match="whole pickled nn.Module .*--trust-pickle"):
        load_model(f"timm:resnet10t,weights={files / 'tiny_whole.pt'}")


# ---- TorchScript ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("spec", ["file:{d}/tiny_script.pt", "torchscript:{d}/tiny_trace.pt"])
def test_torchscript_runs_from_the_cli_without_a_warning(spec, files, tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = CliRunner().invoke(cli, ["run", "--model", spec.format(d=files), *FAST, "--allow-class-subset",
                                       "--results-dir", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert not [w for w in caught if "jit" in str(w.message) or "TorchScript" in str(w.message)], [str(w.message) for w in caught]
    assert "warn" not in res.stderr.lower(), res.stderr
    (path,) = (tmp_path / "records").glob("*.json")
    rec = read_record(path)
    assert rec.model["architecture"] == "TorchScript TinyNet" and rec.model["format"] == "torchscript"
    assert rec.model["sha256"] == hashlib.sha256(Path(spec.format(d=files).split(":", 1)[1]).read_bytes()).hexdigest()


def test_the_same_weights_give_the_same_verdicts_as_torchscript_and_as_a_state_dict(files, tmp_path):
    from robustbench_ext import evaluate

    kw = dict(data="cifar10-1k", threats="Linf:8/255", attacks=["pgd:steps=2"], n_examples=16, progress=False,
              allow_class_subset=True)
    script = evaluate(load_model(f"torchscript:{files / 'tiny_script.pt'}"), **kw)
    own = evaluate(load_model(f"file:{files / 'tiny.safetensors'}", arch=f"{files / 'tinynets.py'}:TinyNet",
                              arch_kwargs={"width": 4}), **kw)
    assert (script.flags.clean_correct == own.flags.clean_correct).all()
    assert script.record.threats[0].robust.accuracy == own.record.threats[0].robust.accuracy


def test_torchscript_source_refuses_a_file_that_is_not_one(files):
    with pytest.raises(ModelLoadError, match="is a PyTorch state dict .*not a TorchScript archive"):
        load_model(f"torchscript:{files / 'tiny_sd.pt'}")


# ---- whole pickled models: only with the opt-in that names the risk -----------------------------------------
def test_pickled_model_needs_trust_pickle_and_then_runs(files, tmp_path, monkeypatch):
    monkeypatch.chdir(files)  # the model's class is importable from the project folder rbx runs in
    refused = CliRunner().invoke(cli, ["run", "--model", f"pickle:{files / 'tiny_whole.pt'}", *FAST, "--results-dir", str(tmp_path)])
    msg = _one_line(refused)
    assert "runs code" in msg and "--trust-pickle" in msg and "tinynets.TinyNet" in msg
    assert "tinynets" not in sys.modules  # refused before anything was unpickled
    res = CliRunner().invoke(cli, ["run", "--model", f"pickle:{files / 'tiny_whole.pt'}", "--trust-pickle", *FAST,
                                   "--allow-class-subset", "--results-dir", str(tmp_path)])
    try:
        assert res.exit_code == 0, res.output
        (path,) = (tmp_path / "records").glob("*.json")
        rec = read_record(path)
        assert rec.model["architecture"] == "tinynets.TinyNet" and "--trust-pickle" in rec.model["trusted"]
    finally:
        sys.modules.pop("tinynets", None)


def test_trust_pickle_and_arch_kwargs_only_where_they_mean_something(files, tmp_path):
    res = CliRunner().invoke(cli, ["run", "--model", f"file:{files / 'tiny_sd.pt'}", "--arch", "smallcnn", "--trust-pickle",
                                   *FAST, "--results-dir", str(tmp_path)])
    assert "--trust-pickle is for pickle:PATH models only" in _one_line(res)
    res = CliRunner().invoke(cli, ["run", "--model", "cifar10-smallcnn-linf-at", "--arch-kwargs", "width=4", *FAST,
                                   "--results-dir", str(tmp_path)])
    assert "--arch-kwargs gives the keyword arguments of --arch" in _one_line(res)
    res = CliRunner().invoke(cli, ["run", "--model", f"file:{files / 'tiny_sd.pt'}", "--arch", "smallcnn",
                                   "--arch-kwargs", "width", *FAST, "--results-dir", str(tmp_path)])
    assert "--arch-kwargs takes KEY=VALUE,KEY=VALUE" in _one_line(res)


def test_a_model_pickled_from_main_says_how_to_save_it_instead(files):
    with pytest.raises(ModelLoadError, match=r"class __main__\.Net, defined in the script that saved it.*"
                                             r"--arch path/to/that_script\.py:Net"):
        load_model(f"pickle:{files / 'main_whole.pt'}", trust_pickle=True)


# ---- architectures from the user's code --------------------------------------------------------------------
@pytest.mark.parametrize("form", ["file", "module"])
def test_arch_from_the_users_code_with_kwargs(form, files, tmp_path, monkeypatch):
    monkeypatch.chdir(files)
    arch = f"{files / 'tinynets.py'}:TinyNet" if form == "file" else "tinynets:TinyNet"
    try:
        res = CliRunner().invoke(cli, ["run", "--model", f"file:{files / 'tiny.safetensors'}", "--arch", arch,
                                       "--arch-kwargs", "width=4", *FAST, "--allow-class-subset", "--results-dir", str(tmp_path)])
        assert res.exit_code == 0, res.output
    finally:
        sys.modules.pop("tinynets", None)
    (path,) = (tmp_path / "records").glob("*.json")
    rec = read_record(path)
    assert rec.model["architecture"] == f"{arch}(width=4)"
    code = rec.model["architecture_code"]
    assert code["kwargs"] == {"width": 4}
    if form == "file":  # the record pins the code it ran
        assert code["file_sha256"] == hashlib.sha256((files / "tinynets.py").read_bytes()).hexdigest()


@pytest.mark.parametrize("arch, kwargs, expected", [
    ("{d}/missing.py:TinyNet", None, "file {d}/missing.py not found"),
    ("{d}/tinynets.py:TinyNett", None, "has no 'TinyNett'; its nn.Module classes: Broken, TinyNet"),
    ("{d}/tinynets.py:TinyNet", {"depth": 4}, "its parameters: width, num_classes"),
    ("{d}/tinynets.py:Broken", None, "raised ValueError: no such layer"),
    ("{d}/tinynets.py:NOT_A_CLASS", None, "'NOT_A_CLASS' is a int, not a class or function"),
    ("no_such_package_xyz.nets:Net", None, "cannot import no_such_package_xyz.nets (ModuleNotFoundError"),
    ("{d}/tinynets.py:TinyNet", None, "does not fit architecture"),  # width 8 by default: the shapes name the mismatch
])
def test_arch_from_code_errors_are_one_line(arch, kwargs, expected, files):
    with pytest.raises(RbxError) as info:
        load_model(f"file:{files / 'tiny_sd.pt'}", arch=arch.format(d=files), arch_kwargs=kwargs)
    assert expected.format(d=files) in str(info.value) and "\n" not in str(info.value)


def test_a_factory_function_and_the_class_count_from_the_checkpoint(files):
    loaded = load_model(f"file:{files / 'tiny_sd.pt'}", arch=f"{files / 'tinynets.py'}:make_tiny", arch_kwargs={"width": 4})
    assert loaded.num_classes == 10 and isinstance(loaded.module, nn.Module)


def test_registered_architectures_take_kwargs_too(tmp_path):
    import torchvision

    net = torchvision.models.resnet18(num_classes=7, zero_init_residual=True)
    torch.save(net.state_dict(), tmp_path / "rn.pt")
    loaded = load_model(f"file:{tmp_path / 'rn.pt'}", arch="torchvision:resnet18", arch_kwargs={"zero_init_residual": True})
    assert loaded.num_classes == 7 and loaded.architecture == "torchvision:resnet18(zero_init_residual=True)"


# ---- the Hugging Face Hub, offline, from a cache laid out as huggingface_hub lays it out -------------------------
def _hub_repo(home: Path, repo: str, files: dict[str, bytes], commit: str) -> None:
    """``$HF_HOME/hub/models--ORG--NAME``: blobs by hash, snapshots/COMMIT/FILE -> ../../blobs/HASH, refs/main."""
    root = home / "hub" / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(commit)
    snap = root / "snapshots" / commit
    snap.mkdir(parents=True, exist_ok=True)
    (root / "blobs").mkdir(exist_ok=True)
    for name, data in files.items():
        blob = root / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snap / name).symlink_to(os.path.relpath(blob, snap))


@pytest.fixture(scope="module")
def hub_home(tmp_path_factory, files):
    pytest.importorskip("huggingface_hub")
    home = tmp_path_factory.mktemp("hf_home")
    from safetensors.torch import save_file

    net = ARCHITECTURES.create("smallcnn", num_classes=10)
    save_file(net.state_dict(), str(home / "w.safetensors"))
    _hub_repo(home, "rbx-test/smallcnn-at", {
        "model.safetensors": (home / "w.safetensors").read_bytes(),
        "config.json": json.dumps({"architecture": "smallcnn", "num_classes": 10, "dataset": "cifar10"}).encode(),
        "README.md": b"---\nlicense: mit\ntags:\n- adversarial-robustness\n- arxiv:1706.06083\n---\n# A small CNN\n",
    }, "1" * 40)
    _hub_repo(home, "rbx-test/tiny-script", {"model.pt": (files / "tiny_script.pt").read_bytes()}, "2" * 40)
    _hub_repo(home, "rbx-test/pickled", {"pytorch_model.bin": (files / "tiny_whole.pt").read_bytes()}, "3" * 40)
    timm = pytest.importorskip("timm")
    tnet = timm.create_model("test_efficientnet", pretrained=False, num_classes=10)
    save_file(tnet.state_dict(), str(home / "t.safetensors"))
    _hub_repo(home, "timm/test_efficientnet.rbx", {
        "model.safetensors": (home / "t.safetensors").read_bytes(),
        "config.json": json.dumps({"architecture": "test_efficientnet", "num_classes": 10, "num_features": 256,
                                   "pretrained_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25],
                                                      "input_size": [3, 32, 32], "paper_ids": "arXiv:1905.11946"}}).encode(),
    }, "4" * 40)
    return home


def _rbx(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    """The installed ``rbx`` command, as a user runs it."""
    exe = Path(sys.executable).with_name("rbx")
    return subprocess.run([str(exe) if exe.exists() else sys.executable, *([] if exe.exists() else ["-m", "robustbench_ext.cli"]),
                           *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_hf_models_run_offline_from_the_local_cache(hub_home, tmp_path):
    env = {**os.environ, "HF_HOME": str(hub_home), "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
    env.pop("HF_HUB_CACHE", None)
    out = tmp_path / "res"
    run = _rbx(["run", "--model", "hf:rbx-test/smallcnn-at", *FAST, "--results-dir", str(out)], env, tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    (path,) = (out / "records").glob("*.json")
    rec = read_record(path)
    assert rec.model["source"] == f"hf:rbx-test/smallcnn-at@{'1' * 40}/model.safetensors"
    assert rec.model["architecture"] == "smallcnn" and rec.model["hub"]["revision"] == "1" * 40
    assert rec.model["card"] == {"model": "https://huggingface.co/rbx-test/smallcnn-at", "paper": "https://arxiv.org/abs/1706.06083"}
    assert rec.model["sha256"] == hashlib.sha256((hub_home / "w.safetensors").read_bytes()).hexdigest()
    # not in the cache while offline: one line that says so and where the cache is
    missing = _rbx(["run", "--model", "hf:rbx-test/not-cached", *FAST, "--results-dir", str(out)], env, tmp_path)
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1, missing.stderr
    assert "not in the local Hugging Face cache" in missing.stderr and str(hub_home / "hub") in missing.stderr
    assert "HF_HUB_OFFLINE=1" in missing.stderr


@pytest.fixture()
def offline_hub(hub_home, monkeypatch):
    """The in-process equivalent of HF_HOME=<cache> HF_HUB_OFFLINE=1 (huggingface_hub reads both at import)."""
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub_home / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return hub_home


def test_hf_timm_repository_is_built_by_timm(offline_hub):
    loaded = load_model("hf:timm/test_efficientnet.rbx")
    assert loaded.architecture == "timm:test_efficientnet" and loaded.num_classes == 10
    assert loaded.normalization == {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
    assert loaded.extra["card"]["paper"] == "https://arxiv.org/abs/1905.11946"
    with torch.no_grad():
        assert loaded.module(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_hf_files_by_what_they_are(offline_hub, files):
    script = load_model("hf:rbx-test/tiny-script")  # model.pt found among the weight files; TorchScript runs as it is
    assert script.extra["format"] == "torchscript" and script.source.endswith("/model.pt")
    with pytest.raises(ModelLoadError, match="whole pickled nn.Module .*--trust-pickle"):
        load_model("hf:rbx-test/pickled")
    with pytest.raises(ModelLoadError, match="not in the local Hugging Face cache"):
        load_model("hf:rbx-test/smallcnn-at,file=other.safetensors")
    with pytest.raises(RbxError, match="write hf:ORG/NAME"):
        load_model("hf:just-a-name")
    with pytest.raises(RbxError, match="unknown options"):
        load_model("hf:rbx-test/smallcnn-at,revision=main")
    same = load_model("hf:rbx-test/smallcnn-at,file=model.safetensors", arch="smallcnn")
    assert same.num_classes == 10

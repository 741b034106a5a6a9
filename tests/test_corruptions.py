"""Common corruptions: the imagecorruptions shim, the seeded generator, published CIFAR-10-C files, the evaluation,
the record, the suite format, the CLI and the corruption board."""

import hashlib
import json
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import robustbench_ext.data.datasets as data_mod
from robustbench_ext._compat import CORRUPTIONS_EXTRA, import_imagecorruptions
from robustbench_ext.cli import cli
from robustbench_ext.data.corrupted import (CORRUPTIONS, EXTRA_CORRUPTIONS, check_selection, generate, image_seed,
                                             official_rows)
from robustbench_ext.evaluation.corruptions import evaluate_corruptions
from robustbench_ext.errors import DataError, RbxError
from robustbench_ext.reporting.boards import build_boards, leaderboard_markdown
from robustbench_ext.records.schema import RunRecord
from robustbench_ext.records.store import read_flags, read_record
from robustbench_ext.registry import DATASETS
from robustbench_ext.evaluation.suites import load_suite, plan_benchmark, read_suite
from robustbench_ext.evaluation.plan import compile_plan

TINY_SUITE = """
name = "tiny-corruptions"
kind = "corruptions"
dataset = "cifar10-c"
corruptions = ["gaussian_noise", "fog"]
severities = [2, 5]
"""


def _images(n=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


# ---- the shim and the generator ---------------------------------------------------------------------
@pytest.mark.parametrize("name", CORRUPTIONS + EXTRA_CORRUPTIONS)
def test_every_corruption_runs_on_a_32x32_image(name):
    """imagecorruptions 1.1.2 fails on glass_blur (skimage's multichannel) and fog (np.float_) without the shim."""
    ic = import_imagecorruptions()
    img = _images(1)[0]
    out = ic.corrupt(img, severity=3, corruption_name=name)
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    assert not np.array_equal(out, img)  # every corruption changes the image


def test_the_shim_patches_only_imagecorruptions():
    import_imagecorruptions()
    if int(np.__version__.split(".")[0]) >= 2:
        assert not hasattr(np, "float_")  # numpy itself is untouched
    from skimage.filters import gaussian

    with pytest.raises(TypeError):
        gaussian(np.zeros((8, 8, 3)), sigma=1, multichannel=True)  # scikit-image itself is untouched


def test_generator_is_seeded_per_image_and_restores_numpys_rng():
    images = _images(3)
    np.random.seed(123)
    expected_next = np.random.random()
    np.random.seed(123)
    for name in CORRUPTIONS:
        first = generate(images, name, 2, seed=0)
        again = generate(images, name, 2, seed=0)
        assert first.tobytes() == again.tobytes(), name  # same bytes twice
        assert first.shape == images.shape and first.dtype == np.uint8
        assert generate(images[:2], name, 2, seed=0).tobytes() == first[:2].tobytes(), name  # independent of N
    assert np.random.random() == expected_next  # the global RNG state is restored after generating
    noisy = [n for n in CORRUPTIONS if n.endswith("noise")]
    assert all(not np.array_equal(generate(images, n, 2, seed=0), generate(images, n, 2, seed=1)) for n in noisy)
    assert image_seed(0, "fog", 3, 7) != image_seed(0, "fog", 3, 8) != image_seed(0, "frost", 3, 8)


def test_selection_is_checked():
    assert check_selection() == (CORRUPTIONS, (1, 2, 3, 4, 5))
    assert check_selection(["fog"], [3]) == (("fog",), (3,))
    with pytest.raises(DataError, match="unknown corruption 'rain'; known: gaussian_noise"):
        check_selection(["rain"])
    with pytest.raises(DataError, match="severities are integers 1 to 5"):
        check_selection(["fog"], [6])


def test_missing_imagecorruptions_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "imagecorruptions", None)  # import fails as if not installed
    with pytest.raises(RbxError) as info:
        DATASETS.create("cifar10-c", base="cifar10-1k", source="generated", n_examples=4)
    assert CORRUPTIONS_EXTRA in str(info.value) and "\n" not in str(info.value)


# ---- published CIFAR-10-C files ---------------------------------------------------------------------
M = 12  # images per severity in the fake published files
OFFICIAL_Y = np.array([3, 0, 1, 2, 0, 4, 5, 6, 7, 8, 9, 1])  # the fake "official" test labels (2 of class 0, 2 of 1)


@pytest.fixture
def fake_c10c(tmp_path):
    """A tiny CIFAR-10-C folder: gaussian_noise.npy and fog.npy [5 M, 32, 32, 3] uint8 and labels.npy [5 M]."""
    folder = tmp_path / "CIFAR-10-C"
    folder.mkdir()
    rng = np.random.default_rng(7)
    arrays = {}
    for name in ("gaussian_noise", "fog"):
        arrays[name] = rng.integers(0, 256, (5 * M, 32, 32, 3), dtype=np.uint8)
        np.save(folder / f"{name}.npy", arrays[name])
    np.save(folder / "labels.npy", np.tile(OFFICIAL_Y, 5))
    return folder, arrays


def test_published_files_rows_matched_by_class_and_rank(fake_c10c, monkeypatch):
    folder, arrays = fake_c10c
    monkeypatch.setenv("RBX_DATA", str(folder.parent))  # found as CIFAR-10-C/ in a data folder
    cs = DATASETS.create("cifar10-c", base="cifar10-1k", n_examples=12)
    assert cs.kind == "published" and cs.folder == str(folder)
    # cifar10-1k image k has label k % 10 and is the (k // 10)-th of its class: the official row with that class and rank
    expected = [int(np.flatnonzero(OFFICIAL_Y == k % 10)[k // 10]) for k in range(12)]
    assert cs.rows.tolist() == expected
    x = cs.images("fog", 3)
    assert x.shape == (12, 3, 32, 32)
    assert torch.equal(x, torch.from_numpy(arrays["fog"][2 * M + np.array(expected)]).permute(0, 3, 1, 2).float() / 255)
    src = cs.source(["fog"])
    assert src["kind"] == "published" and src["comparable_to_published"] is True and src["folder"] == str(folder)
    assert src["files"]["fog.npy"] == hashlib.sha256((folder / "fog.npy").read_bytes()).hexdigest()
    assert "labels.npy" in src["files"] and "published files" in cs.description()
    assert cs.first(5).images("gaussian_noise", 1).shape == (5, 3, 32, 32)


def test_official_rows_is_the_identity_on_the_official_order():
    y = np.random.default_rng(0).integers(0, 10, 100)
    assert official_rows(y[:40], y).tolist() == list(range(40))
    assert official_rows(np.array([0, 0, 0]), np.array([0, 1, 0])) is None  # more of a class than there are


def test_published_file_errors(fake_c10c, tmp_path):
    folder, _ = fake_c10c
    with pytest.raises(DataError, match="base must be one of cifar10, cifar10-1k"):
        DATASETS.create("cifar10-c", path=str(folder), base=f"npz:{_npz(tmp_path)}")
    np.save(folder / "fog.npy", np.zeros((5 * M, 32, 32, 3), dtype=np.float32))
    cs = DATASETS.create("cifar10-c", path=str(folder), base="cifar10-1k", n_examples=4)
    with pytest.raises(DataError, match=r"expected uint8 \[60, 32, 32, 3\]"):
        cs.images("fog", 1)
    with pytest.raises(DataError, match="not a CIFAR-10-C folder"):
        DATASETS.create("cifar10-c", path=str(tmp_path))


def test_published_requested_but_absent_is_one_line(in_tmp, monkeypatch):
    monkeypatch.setattr(data_mod, "data_dirs", lambda: [in_tmp / "nowhere"])
    with pytest.raises(DataError) as info:
        DATASETS.create("cifar10-c", source="published", base="cifar10-1k")
    msg = str(info.value)
    assert "\n" not in msg and "CIFAR-10-C not found" in msg and "source=generated" in msg
    assert not (in_tmp / "data").exists()


def test_offline_corruption_sets(in_tmp, monkeypatch):
    """cifar10-c falls back to the embedded slice; cifar100-c has none and says what is missing; no ./data left."""
    import torchvision.datasets as tvd

    def offline(root, train, download):
        raise RuntimeError("Failed to download (no network)")

    monkeypatch.setattr(data_mod, "data_dirs", lambda: [in_tmp / "nowhere"])
    monkeypatch.setattr(tvd, "CIFAR10", offline)
    monkeypatch.setattr(tvd, "CIFAR100", offline)
    cs = DATASETS.create("cifar10-c", n_examples=5)
    assert cs.kind == "generated" and cs.clean.name == "cifar10-1k"
    with pytest.raises(DataError) as info:
        DATASETS.create("cifar100-c", n_examples=5)
    assert "\n" not in str(info.value) and str(info.value).startswith("CIFAR-100-C needs the clean test images: CIFAR-100 test not found")
    assert not (in_tmp / "data").exists()


def _npz(tmp_path):
    path = tmp_path / "imgs.npz"
    np.savez(path, x=_images(4), y=np.arange(4))
    return path


# ---- the evaluation, the record, the board ------------------------------------------------------------
def test_evaluate_corruptions_counts_real_predictions(small_cnn, cifar200):
    data = "cifar10-c:base=cifar10-1k"
    ev = evaluate_corruptions(small_cnn, data, corruptions=["gaussian_noise", "contrast"], severities=[1, 4], n_examples=20,
                              batch_size=8, device="cpu", progress=False)
    rec, flags = ev.record, ev.flags
    assert rec.n == 20 and rec.threats == () and rec.union == rec.clean
    assert flags.corruption_keys == ("gaussian_noise/1", "gaussian_noise/4", "contrast/1", "contrast/4")
    # Independent recomputation: generate the images here and run the model on them.
    u8 = (cifar200.x[:20] * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    with torch.no_grad():
        for k, key in enumerate(flags.corruption_keys):
            name, sev = key.split("/")
            x = torch.from_numpy(generate(u8, name, int(sev), seed=0)).permute(0, 3, 1, 2).float() / 255
            pred = small_cnn.module(x).argmax(1)
            assert np.array_equal(flags.corruption_correct[:, k], (pred == cifar200.y[:20]).numpy()), key
            assert rec.corruptions.accuracy(name, int(sev)).count == int((pred == cifar200.y[:20]).sum())
    c = rec.corruptions
    assert c.mean.accuracy == pytest.approx(flags.corruption_correct.mean())
    assert c.per_corruption["contrast"].accuracy == pytest.approx(flags.corruption_correct[:, 2:].mean())
    assert c.complete is False and c.source["kind"] == "generated" and c.source["seed"] == 0
    assert "not comparable" in c.source["note"] and c.source["generator"].startswith("imagecorruptions 1.")
    lo, hi = c.mean.ci95
    assert lo <= c.mean.accuracy <= hi
    # The record round-trips through JSON; a record without the block (every older one) still reads.
    again = RunRecord.from_dict(json.loads(rec.to_json()))
    assert again.corruptions == rec.corruptions
    plain = json.loads(rec.to_json())
    del plain["corruptions"]
    assert RunRecord.from_dict(plain).corruptions is None
    # A different generation seed gives other images (and its own image-set hash).
    other = evaluate_corruptions(small_cnn, data, corruptions=["gaussian_noise"], severities=[4], n_examples=20, seed=1,
                                 device="cpu", progress=False)
    assert other.record.dataset["sha256"] != rec.dataset["sha256"]
    assert other.record.dataset["clean_sha256"] == rec.dataset["clean_sha256"]


def test_a_plain_record_has_no_corruptions_key(small_cnn, cifar200):
    from robustbench_ext import evaluate

    ev = evaluate(small_cnn, (cifar200.x[:10], cifar200.y[:10]), ["Linf:8/255"], attacks=["pgd:steps=2"], progress=False)
    assert "corruptions" not in json.loads(ev.record.to_json())
    assert "corruption_correct" not in ev.flags.to_arrays()


def test_corruption_suite_format(tmp_path):
    suite = load_suite("cifar10-corruptions")
    assert suite.kind == "corruptions" and suite.dataset == "cifar10-c" and suite.threats == ()
    assert suite.corruptions == () and suite.severities == ()  # all 15 x 5
    assert load_suite("cifar10-corruptions-s3").severities == (3,)
    p = tmp_path / "s.toml"
    p.write_text(TINY_SUITE)
    assert read_suite(p).corruptions == ("gaussian_noise", "fog") and read_suite(p).severities == (2, 5)
    p.write_text(TINY_SUITE.replace('"fog"', '"rain"'))
    with pytest.raises(RbxError, match="s.toml: unknown corruption 'rain'"):
        read_suite(p)
    p.write_text(TINY_SUITE + '\n[[threats]]\nthreat = "Linf:8/255"\n')
    with pytest.raises(RbxError, match="has no \\[\\[threats\\]\\]"):
        read_suite(p)
    with pytest.raises(RbxError, match="evaluates common corruptions, not threat models"):
        plan_benchmark("cifar10-corruptions")


@pytest.mark.parametrize("name", ["cifar100-union", "imagenet-linf", "imagenet-union"])
def test_new_threat_suites_plan(name):
    suite = load_suite(name)
    bench = plan_benchmark(name)
    compile_plan(bench.threats, bench.union)  # every attack builds, every norm is supported
    assert bench.suite == name and suite.description
    expected = {"cifar100-union": ("cifar100", ["Linf:8/255", "L2:0.5", "L1:12"]),
                "imagenet-linf": ("imagenet", ["Linf:4/255"]),
                "imagenet-union": ("imagenet", ["Linf:4/255", "L2:2", "L1:255"])}[name]
    assert (bench.dataset, [t.threat.label for t in bench.threats]) == expected


def test_rbx_run_corruption_suite_end_to_end(in_tmp):
    (in_tmp / "tiny.toml").write_text(TINY_SUITE)
    runner = CliRunner()
    args = ["run", "--suite", "tiny.toml", "--model", "cifar10-smallcnn-linf-at", "--dataset", "cifar10-1k",
            "--n-examples", "20", "--batch-size", "10", "--no-progress", "--results-dir", "res"]
    res = runner.invoke(cli, args)
    assert res.exit_code == 0, res.output
    assert "corruption gaussian_noise: accuracy s2" in res.stderr and "corruption fog: accuracy s2" in res.stderr
    assert "gaussian_noise" in res.stdout and "mean" in res.stdout and "not comparable" in res.stdout
    records = sorted((in_tmp / "res" / "records").glob("*.json"))
    assert len(records) == 1 and len(list((in_tmp / "res" / "records").glob("*.npz"))) == 1
    rec = read_record(records[0])
    flags = read_flags(records[0], rec)  # sha256 checked
    assert rec.suite == "tiny-corruptions" and rec.n == 20 and flags.corruption_correct.shape == (20, 4)
    assert rec.dataset["name"] == "cifar10-c" and "from CIFAR-10 test (JPEG copy), embedded" in rec.dataset["source"]
    assert rec.config["corruptions"]["severities"] == [2, 5]
    # The same run through Python gives the same flags.
    ev = evaluate_corruptions("cifar10-smallcnn-linf-at", "cifar10-c:base=cifar10-1k", corruptions=["gaussian_noise", "fog"],
                              severities=[2, 5], n_examples=20, device="cpu", progress=False)
    assert np.array_equal(ev.flags.corruption_correct, flags.corruption_correct)
    assert ev.record.dataset["sha256"] == rec.dataset["sha256"]

    res = runner.invoke(cli, ["leaderboard", "--results-dir", "res"])
    assert res.exit_code == 0, res.output
    boards = build_boards(in_tmp / "res")
    assert len(boards) == 1 and boards[0].kind == "corruptions" and boards[0].threats == ["gaussian_noise", "fog"]
    md = (in_tmp / "res" / "leaderboard.md").read_text()
    assert "## tiny-corruptions · CIFAR-10-C generated with imagecorruptions" in md
    head = next(line for line in md.splitlines() if line.startswith("|") and "rank" in line)
    assert [h.strip() for h in head.strip("|").split("|")][:7] == ["rank", "model", "architecture", "clean", "gaussian_noise",
                                                                   "fog", "mean"]
    row = next(line for line in md.splitlines() if "cifar10-smallcnn-linf-at" in line and line.startswith("|"))
    assert f"{100 * rec.corruptions.mean.accuracy:.1f} (" in row
    assert f"{100 * rec.corruptions.per_corruption['fog'].accuracy:.1f}" in row
    csv = (in_tmp / "res" / "leaderboard.csv").read_text().splitlines()
    assert {"gaussian_noise", "fog", "mean", "mean_lo", "severities", "source"} <= set(csv[0].split(","))
    html = (in_tmp / "res" / "leaderboard.html").read_text()
    assert ">mean</th>" in html and "corruption source: CIFAR-10-C generated" in html
    assert list((in_tmp / "res" / "plots").glob("*_corruptions.png"))
    res = runner.invoke(cli, ["report", str(records[0])])
    assert res.exit_code == 0 and "gaussian_noise" in res.output


def test_boards_rank_corruption_runs_by_their_mean(tmp_path, small_cnn, cifar200):
    import dataclasses

    good = evaluate_corruptions(small_cnn, cifar200.first(20), corruptions=["brightness"], severities=[1], suite="s",
                                device="cpu", progress=False)
    from robustbench_ext.models.loading import load_model

    weak = load_model("cifar10-smallcnn-linf-at")  # a weaker model: the small CNN with noisy weights
    with torch.no_grad():
        g = torch.Generator().manual_seed(0)
        for p in weak.module.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))
    weak.name = "smallcnn-noisy"
    bad = evaluate_corruptions(weak, cifar200.first(20), corruptions=["brightness"], severities=[1], suite="s",
                               device="cpu", progress=False)
    assert good.record.dataset["sha256"] == bad.record.dataset["sha256"]  # the same images: one board
    for i, ev in enumerate((bad, good)):
        ev.record = dataclasses.replace(ev.record, provenance={**ev.record.provenance, "started": f"2026-01-0{i + 1}T00:00:00+00:00"})
        ev.write(tmp_path)
    text = leaderboard_markdown(tmp_path, link_base=tmp_path)
    rows = [line for line in text.splitlines() if line.startswith("|") and "smallcnn" in line]
    means = {"cifar10-smallcnn-linf-at": good.record.corruptions.mean.accuracy, "smallcnn-noisy": bad.record.corruptions.mean.accuracy}
    assert len(rows) == 2 and max(means, key=means.get) in rows[0]


def test_rbx_list_datasets_shows_the_new_ones():
    res = CliRunner().invoke(cli, ["list", "datasets"])
    assert res.exit_code == 0
    names = {line.split()[0] for line in res.output.splitlines() if line.strip()}
    assert {"cifar100", "cifar100-train", "mnist", "mnist-train", "cifar10-c", "cifar100-c"} <= names
    assert any(n.startswith("imagenet:") for n in names)


@pytest.mark.parametrize("extra,message", [
    (["--threat", "Linf:8/255"], "--threat do not apply to the corruption suite 'cifar10-corruptions-s3'"),
    (["--precision", "bf16"], "--precision do not apply"),
    (["--dataset", "cifar10-c:source=published"], "CIFAR-10-C not found"),
])
def test_corruption_suite_bad_input_is_one_line(extra, message, in_tmp, monkeypatch):
    monkeypatch.setattr(data_mod, "data_dirs", lambda: [in_tmp / "nowhere"])
    res = CliRunner().invoke(cli, ["run", "--suite", "cifar10-corruptions-s3", "--model", "cifar10-smallcnn-linf-at",
                                   "--n-examples", "5", "--results-dir", "res", *extra])
    assert res.exit_code == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], res.stderr
    assert not (in_tmp / "res").exists() and not (in_tmp / "data").exists()

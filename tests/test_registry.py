
import pytest

from robustbench_ext import registry as reg
from robustbench_ext.errors import UnknownNameError
from robustbench_ext.registry import ATTACKS, DATASETS, MODELS, REGISTRIES, SUITES, Registry


def test_builtins_are_registered():
    assert "pgd" in ATTACKS.names()
    assert {"cifar10-resnet18-linf-at", "cifar10-smallcnn-linf-at", "file", "robustbench"} <= set(MODELS.names())
    assert {"cifar10", "cifar10-train", "npz", "imagefolder"} <= set(DATASETS.names())
    assert "cifar10-union" in SUITES.names()
    assert set(REGISTRIES) == {"attacks", "defenses", "models", "datasets", "suites", "architectures"}


def test_unknown_name_lists_known_ones():
    with pytest.raises(UnknownNameError) as info:
        ATTACKS.create("pgdd")
    msg = str(info.value)
    assert "unknown attack 'pgdd'" in msg and "pgd" in msg and "\n" not in msg


def test_arg_specs():
    entry, arg = DATASETS.split("npz:/some/file.npz")
    assert entry.name == "npz" and arg == "/some/file.npz"
    with pytest.raises(UnknownNameError, match="needs an argument"):
        DATASETS.split("npz")
    with pytest.raises(UnknownNameError):
        DATASETS.split("cifar10:extra")  # cifar10 takes no argument
    assert "npz:PATH" in DATASETS.names(display=True)


def test_register_create_list_and_glob():
    r = Registry("widget", "rbx.test-widgets")

    @r.register("alpha")
    def alpha(scale: int = 1):
        """An alpha widget."""
        return ("alpha", scale)

    @r.register("beta", takes_arg=True)
    def beta(arg):
        return ("beta", arg)

    assert r.create("alpha", scale=3) == ("alpha", 3)
    assert r.create("beta:x") == ("beta", "x")
    assert r.names("a*") == ["alpha"]
    assert r.get("alpha").summary == "An alpha widget."
    with pytest.raises(ValueError, match="already registered"):
        r.register("alpha")(lambda: None)


def test_third_party_plugins_arrive_through_entry_points(monkeypatch):
    r = Registry("widget", "rbx.test-widgets")

    def factory():
        """A plugin widget."""
        return "from a plugin"

    class FakeEP:
        name, value = "plugged", "some_pkg:factory"

        def load(self):
            return factory

    class BrokenEP:
        name, value = "broken", "missing_pkg:thing"

        def load(self):
            raise ImportError("no module named missing_pkg")

    def fake_entry_points(group):
        assert group == "rbx.test-widgets"
        return [FakeEP(), BrokenEP()]

    monkeypatch.setattr(reg, "_entry_points", fake_entry_points)
    assert r.create("plugged") == "from a plugin"  # the broken plugin is skipped with a warning
    assert r.names() == ["plugged"]


def test_entry_point_groups_are_documented():
    doc = reg.__doc__
    for r in REGISTRIES.values():
        assert r.group in doc


def test_optional_argument_specs():
    """``imagenet`` takes an optional argument: bare (found in the data folders) or ``imagenet:PATH[,k=v]``."""
    entry, arg = DATASETS.split("imagenet")
    assert entry.name == "imagenet" and arg is None
    assert DATASETS.split("imagenet:/data/val,preprocessing=Crop288")[1] == "/data/val,preprocessing=Crop288"
    assert "imagenet:[PATH][,preprocessing=P][,ids=FILE]" in DATASETS.names(display=True)
    with pytest.raises(UnknownNameError, match="needs an argument"):
        DATASETS.split("npz")  # a required argument stays required

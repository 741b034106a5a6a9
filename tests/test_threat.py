import math

import pytest

from robustbench_ext.errors import ThreatModelError
from robustbench_ext.attack.threat import ThreatModel, format_eps, parse_eps


@pytest.mark.parametrize(
    "text, norm, eps",
    [
        ("Linf:8/255", "Linf", 8 / 255),
        ("linf:0.03", "Linf", 0.03),
        ("inf=4/255", "Linf", 4 / 255),
        ("L2:0.5", "L2", 0.5),
        ("l2:.5", "L2", 0.5),
        ("L1:12", "L1", 12.0),
        (" L1 : 1e1 ", "L1", 10.0),
        ("L0:10", "L0", 10.0),
        ("l0=24", "L0", 24.0),
        ("L0c:30", "L0c", 30.0),
    ],
)
def test_parse_valid(text, norm, eps):
    tm = ThreatModel.parse(text)
    assert tm.norm == norm
    assert tm.eps == pytest.approx(eps, rel=1e-12)


@pytest.mark.parametrize(
    "text",
    ["", "Linf", "Linf:", ":8/255", "L3:0.5", "Linf:abc", "Linf:8/0", "Linf:0", "L2:-0.5", "L1:nan", "L2:inf",
     "Linf:8/255/2", "L2:0.5:1", "L0:2.5", "L0:0", "L0c:1/3", "L0:-4"],
)
def test_parse_invalid(text):
    with pytest.raises(ThreatModelError) as info:
        ThreatModel.parse(text)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("eps", [0.0, -1.0, math.nan, math.inf, -math.inf])
def test_constructor_rejects_bad_eps(eps):
    with pytest.raises(ThreatModelError):
        ThreatModel("L2", eps)


def test_label_round_trip_and_formatting():
    assert ThreatModel.parse("Linf:8/255").label == "Linf:8/255"
    assert ThreatModel.parse("L2:0.5").label == "L2:0.5"
    assert ThreatModel.parse("L1:12").label == "L1:12"
    for text in ["Linf:8/255", "L2:0.5", "L1:12", "Linf:1/255", "L2:0.25"]:
        tm = ThreatModel.parse(text)
        assert ThreatModel.parse(tm.label) == tm
    assert format_eps(2 / 255) == "2/255"
    assert parse_eps("8/255") == pytest.approx(0.0313725490196)


def test_covers_box():
    d = 3 * 32 * 32
    assert ThreatModel("Linf", 1.0).covers_box(d)
    assert not ThreatModel("Linf", 8 / 255).covers_box(d)
    assert ThreatModel("L2", math.sqrt(d)).covers_box(d)
    assert not ThreatModel("L1", 12).covers_box(d)
    assert ThreatModel("L1", d).covers_box(d)


def test_l0_labels_and_box():
    assert ThreatModel.parse("L0:10").label == "L0:10"
    assert ThreatModel.parse("L0c:30").label == "L0c:30"
    assert ThreatModel.parse(ThreatModel.parse("L0:10").label) == ThreatModel("L0", 10)
    # L0 counts pixels: a 32x32 image has 1024 of them, whatever its channels; L0c counts its 3072 coordinates.
    assert ThreatModel("L0", 1024).covers_box((3, 32, 32)) and not ThreatModel("L0", 1023).covers_box((3, 32, 32))
    assert not ThreatModel("L0c", 1024).covers_box((3, 32, 32)) and ThreatModel("L0c", 3072).covers_box((3, 32, 32))
    assert not ThreatModel("L0", 1024).covers_box(3072)  # a bare feature count: no channel grouping assumed
    with pytest.raises(ThreatModelError, match="whole number"):
        ThreatModel("L0", 2.5)

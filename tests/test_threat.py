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
    ],
)
def test_parse_valid(text, norm, eps):
    tm = ThreatModel.parse(text)
    assert tm.norm == norm
    assert tm.eps == pytest.approx(eps, rel=1e-12)


@pytest.mark.parametrize(
    "text",
    ["", "Linf", "Linf:", ":8/255", "L3:0.5", "Linf:abc", "Linf:8/0", "Linf:0", "L2:-0.5", "L1:nan", "L2:inf",
     "Linf:8/255/2", "L2:0.5:1"],
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

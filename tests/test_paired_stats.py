"""One rule for p-values (issue 29): Holm's adjusted p, the exact McNemar test's power and the budget it
implies, benchmarks/paired.py on synthetic flags (families, the "nothing learned" rule, specs and pages),
and the committed results pages against their records. Expected numbers are worked out by hand below."""

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from robustbench_ext.records.schema import SampleFlags
from robustbench_ext.reporting.regress import holm, holm_adjust, mcnemar_exact

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))  # the benchmark scripts import paired.py as a sibling
import paired  # noqa: E402


def test_holm_adjusted_p_by_hand():
    # m = 4, sorted: 0.005 (x4 = 0.02), 0.01 (x3 = 0.03), 0.03 (x2 = 0.06), 0.04 (x1 = 0.04 -> running max 0.06)
    assert holm_adjust([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.01, 0.04, 0.03, 0.005], 0.05) == [True, False, False, True]
    # capped at 1, and the running maximum keeps the adjusted p in the order of the raw p
    assert holm_adjust([0.5, 0.4, 0.001]) == pytest.approx([0.8, 0.8, 0.003])
    assert holm_adjust([]) == [] and holm_adjust([0.2]) == [0.2]
    # the exact McNemar p the page tables use: (7, 0): 2 / 2^7 = 0.015625; (15, 5): 2 (1 + 20 + 190 + 1140 + 4845
    # + 15504) / 2^20 = 43400 / 1048576
    assert mcnemar_exact(7, 0) == pytest.approx(0.015625) and mcnemar_exact(15, 5) == pytest.approx(43400 / 1048576)


def test_power_of_the_exact_mcnemar_test_by_hand():
    # d = 12 at alpha 0.05: p(2, 10) = 2 (1 + 12 + 66) / 4096 = 0.0386 rejects, p(3, 9) = 2 (1 + 12 + 66 + 220) / 4096 = 0.146
    # does not: the test rejects iff min(b, c) <= 2.
    assert paired.rejection_cut(12, 0.05) == 2
    assert paired.rejection_cut(5, 0.05) == -1  # p(0, 5) = 2 / 32 = 0.0625: five pairs can never reject
    # d = 9, pi = 0.9: p(8, 1) = 2 * 10 / 512 = 0.039 rejects, p(7, 2) = 2 * 46 / 512 = 0.18 does not, so
    # power = P(X >= 8) + P(X <= 1) = 0.9^9 + 9 * 0.9^8 * 0.1 + (0.1^9 + 9 * 0.1^8 * 0.9) = 0.7748410 + 8.2e-8
    assert paired.mcnemar_power(9, 0.9, 0.05) == pytest.approx(0.3874205 + 0.3874205 + 8.2e-8, abs=1e-6)
    # d = 10: p(9, 1) = 2 * 11 / 1024 = 0.021, p(8, 2) = 2 * 56 / 1024 = 0.11: power = 0.9^10 + 10 * 0.9^9 * 0.1 = 0.7361
    assert paired.mcnemar_power(10, 0.9, 0.05) == pytest.approx(0.3486784 + 0.3874205, abs=1e-6)
    # d = 12 (cut 2): power = 0.9^12 + 12 * 0.9^11 * 0.1 + 66 * 0.9^10 * 0.01 = 0.2824 + 0.3766 + 0.2301 = 0.8891
    assert paired.mcnemar_power(12, 0.9, 0.05) == pytest.approx(0.2824295 + 0.3765727 + 0.2301278, abs=1e-6)
    # d = 11 (cut 1: p(9, 2) = 2 * 67 / 2048 = 0.065): 0.9^11 + 11 * 0.9^10 * 0.1 = 0.6974 < 0.8, so 12 is the first
    assert paired.discordant_needed(0.9, 0.05) == 12
    # every discordant pair one way: p = 2 / 2^d, so d = 6 at 0.05 (2 / 64 = 0.031; 2 / 32 = 0.0625 is not enough),
    # d = 10 at 0.05 / 20 = 0.0025 (2 / 1024 = 0.00195; 2 / 512 = 0.0039 is not), d = 8 at 0.05 / 6 (2 / 256 = 0.0078)
    assert paired.discordant_needed(1.0, 0.05) == 6 and paired.discordant_needed(0.0, 0.05) == 6
    assert paired.discordant_needed(1.0, 0.05 / 20) == 10 and paired.discordant_needed(1.0, 0.05 / 6) == 8
    assert paired.discordant_needed(0.5, 0.05) is None  # no effect: no budget
    # a large budget: the first d reaching 80 % (the power before it is below), close to the normal approximation
    d = paired.discordant_needed(0.55, 0.0025)
    assert paired.mcnemar_power(d, 0.55, 0.0025) >= 0.8 > paired.mcnemar_power(d - 1, 0.55, 0.0025)
    assert abs(d - 1490) < 30  # ((z_0.99875 / 2 + z_0.8 sqrt(0.2475)) / 0.05)^2 = ((1.5116 + 0.4187) / 0.05)^2 = 1490
    with pytest.raises(ValueError):
        paired.discordant_needed(1.5, 0.05)


def test_budget_in_test_images_by_hand():
    # EOT at sigma 0.3: 0 / 7 discordant of 200 images, family of 6: d = 8 (above), images = ceil(8 * 200 / 7) = 229
    b = paired.budget(0, 7, 200, 0.05 / 6)
    assert (b["pairs"], b["images"], b["pi"], b["rate"]) == (8, 229, 0.0, 0.035)
    assert paired.budget(0, 7, 200, 0.05 / 6, direction="lower")["images"] == 229
    assert paired.budget(0, 7, 200, 0.05 / 6, direction="higher") is None  # observed the other way
    assert paired.budget(3, 3, 200, 0.05) is None and paired.budget(0, 0, 200, 0.05) is None


def _flags(clean, robust, y=None):
    """SampleFlags from bool lists: clean [N], robust {threat: [N]}."""
    clean = np.asarray(clean, bool)
    threats = tuple(robust)
    r = np.stack([np.asarray(robust[t], bool) for t in threats], 1)
    y = np.arange(clean.size) % 10 if y is None else np.asarray(y)
    return SampleFlags(np.arange(clean.size), y, clean, r, np.full(r.shape, -1, np.int16), threats)


def _pair(n, both, a_only, b_only):
    """Two [n] bool arrays with ``both`` common Trues, ``a_only`` Trues only in a, ``b_only`` only in b."""
    a, b = np.zeros(n, bool), np.zeros(n, bool)
    a[:both] = b[:both] = True
    a[both:both + a_only] = True
    b[both + a_only:both + a_only + b_only] = True
    return a, b


def test_paired_tests_and_family_on_synthetic_flags():
    n = 100
    ca, cb = _pair(n, 40, 15, 5)  # clean: 55 % vs 45 %, discordant 15 / 5
    ra, rb = _pair(n, 20, 7, 0)  # Linf (within the clean-correct points of both: indices < 40)
    fa, fb = _flags(ca, {"Linf:8/255": ra}), _flags(cb, {"Linf:8/255": rb})
    tests = paired.in_family(paired.pair_tests("A vs B", fa, fb, None, 10))
    assert [t.metric for t in tests] == ["clean", "Linf:8/255", "union"]
    clean, linf, union = tests
    assert (clean.cand_only, clean.base_only, clean.cand, clean.base) == (15, 5, 0.55, 0.45)
    assert (linf.cand_only, linf.base_only) == (7, 0) and (union.cand_only, union.base_only) == (7, 0)
    # raw: clean 43400 / 2^20 = 0.04139, Linf and union 2 / 128 = 0.015625; Holm, m = 3: sorted 0.015625 (x3 = 0.046875),
    # 0.015625 (x2 = 0.03125 -> running max 0.046875), 0.04139 (x1 -> 0.046875)
    assert clean.p_raw == pytest.approx(0.0413895) and linf.p_raw == pytest.approx(0.015625)
    assert [t.p_holm for t in tests] == pytest.approx([0.046875] * 3) and all(t.m == 3 for t in tests)
    assert all(t.shown for t in tests) and linf.verdict == "shown: candidate higher"
    # a bigger family: the same tests with three more that are null (p = 1): m = 6, sorted 0.015625 (x6 = 0.09375),
    # 0.015625 (x5 = 0.078 -> running max 0.09375), 0.04139 (x4 = 0.16556), then the three 1s: nothing shown
    null = paired.pair_tests("C vs D", _flags(ca, {"Linf:8/255": ra}), _flags(ca, {"Linf:8/255": ra}), None, 10)
    six = paired.in_family(paired.pair_tests("A vs B", fa, fb, None, 10) + null)
    assert [t.p_holm for t in six[:3]] == pytest.approx([4 * 0.0413895, 0.09375, 0.09375], abs=1e-6)
    assert not any(t.shown for t in six) and six[1].verdict == "not shown"
    # the budget at m = 6 for the Linf direction: d = 8 (2 / 256 <= 0.05 / 6), images ceil(8 * 100 / 7) = 115
    assert six[1].budget()["images"] == 115 and "115 test images" in paired.budget_text(six[1])
    with pytest.raises(paired.SpecError, match="not in both"):
        paired.pair_tests("A vs B", fa, fb, ["L2:0.5"], 10)
    with pytest.raises(paired.SpecError, match="same images"):
        paired.pair_tests("A vs B", fa, _flags(cb[:50], {"Linf:8/255": rb[:50]}), None, 10)


def test_summary_cell_names_a_shown_context_test():
    """A claim's primary test not shown while a context test of the same comparison is: the cell says so for both."""
    n = 100
    ca, cb = _pair(n, 40, 3, 3)  # clean: 3 / 3 discordant, raw p 1
    ra, rb = _pair(n, 30, 12, 0)  # Linf: 12 / 0, raw p 2 / 4096 = 0.000488 (printed 0.00049: 2 digits below 0.001); Holm (m = 3): x3 = 0.00146
    clean, linf, union = paired.in_family(paired.pair_tests("A vs B", _flags(ca, {"Linf:8/255": ra}),
                                                            _flags(cb, {"Linf:8/255": rb}), None, 10))
    assert linf.p_holm == pytest.approx(3 * 2 / 4096) and linf.shown and not clean.shown
    cell = paired.shows_text(clean, [linf], "higher")
    assert cell.startswith("clean +0.0 points (3 / 3, raw p 1, Holm p 1): **not shown**")
    assert "Linf:8/255 +12.0 points (12 / 0, raw p 0.00049, Holm p 0.00146): shown: candidate higher" in cell
    # a context test that is not shown carries no verdict of its own
    assert paired.shows_text(linf, [clean]).endswith("clean +0.0 points (3 / 3, raw p 1, Holm p 1)")


def test_nothing_learned_rule():
    n = 300
    # both students with 0 % robust accuracy (the warm-start MTARD case): a strong clean difference shows nothing
    ca, cb = _pair(n, 150, 40, 5)
    zero = np.zeros(n, bool)
    tests = paired.in_family(paired.pair_tests("M vs R", _flags(ca, {"Linf:8/255": zero}), _flags(cb, {"Linf:8/255": zero}),
                                               None, 10))
    assert tests[0].p_holm < 1e-5 and not tests[0].shown
    assert tests[0].verdict == "no robustness learned: nothing shown"
    assert "learn robustness first" in paired.budget_text(tests[0])
    # one arm learned some robustness (3 of 300 points, > 1 %): the comparison stands
    some = zero.copy()
    some[:4] = True
    t = paired.in_family(paired.pair_tests("M vs P", _flags(ca, {"Linf:8/255": zero}), _flags(cb, {"Linf:8/255": some}),
                                           None, 10))
    assert t[0].nothing is None and t[0].shown
    # both at chance (constant predictors: 10 % clean on 10 classes, robust too): at chance, nothing shown
    const = np.arange(n) % 10 == 0
    other = np.arange(n) % 10 == 1
    t = paired.pair_tests("M vs P", _flags(const, {"Linf:8/255": const}), _flags(other, {"Linf:8/255": other}), None, 10)
    assert all(x.verdict == "at chance: nothing shown" for x in t)


def test_cli_and_spec_on_synthetic_records(tmp_path, capsys):
    n = 60
    ca, cb = _pair(n, 20, 9, 0)
    ra, rb = _pair(n, 10, 6, 0)
    data = {"runs": {"0.1": {"a": {"y": (np.arange(n) % 10).tolist(), "clean_correct": ca.tolist(),
                                   "robust": {"Linf:8/255": ra.tolist()}},
                             "b": {"y": (np.arange(n) % 10).tolist(), "clean_correct": cb.tolist(),
                                   "robust": {"Linf:8/255": rb.tolist()}}}}}
    (tmp_path / "flags.json").write_text(json.dumps(data))
    page = tmp_path / "page.md"
    page.write_text("# page\n\n<!-- paired:summary -->\nold\n<!-- /paired:summary -->\n\ntext\n\n"
                    "<!-- paired:fam -->\n<!-- /paired:fam -->\n")
    spec = tmp_path / "page.toml"
    spec.write_text(f'''page = "{page}"
[records.a]
path = "{tmp_path / 'flags.json'}"
key = ["runs", "0.1", "a"]
label = "A"
[records.b]
path = "{tmp_path / 'flags.json'}"
key = ["runs", "0.1", "b"]
label = "B"
[[family]]
id = "fam"
what = "A against B:"
comparisons = [["a", "b"]]
[[claim]]
claim = "A beats B"
family = "fam"
candidate = "a"
baseline = "b"
metric = "Linf:8/255"
direction = "higher"
context = ["clean"]
''')
    assert paired.main(["--spec", str(spec), "--check"]) == 1  # the page's blocks are not what the flags give
    assert paired.main(["--spec", str(spec), "--write"]) == 0
    text = page.read_text()
    # clean 9 / 0: 2 / 512 = 0.0039; Linf 6 / 0: 2 / 64 = 0.03125, union the same; Holm, m = 3: 0.0117, 0.0625, 0.0625
    assert "| A vs B | clean | 48.3 | 33.3 | 9 | 0 | 0.00391 | 0.0117 | shown: candidate higher |" in text
    assert "| A vs B | Linf:8/255 | 26.7 | 16.7 | 6 | 0 | 0.0312 | 0.0625 | not shown |" in text
    assert "| A beats B | A vs B: Linf:8/255 +10.0 points (6 / 0, raw p 0.0312, Holm p 0.0625): **not shown**" in text
    assert "text" in text and "old" not in text
    assert paired.main(["--spec", str(spec), "--check"]) == 0
    # errors are one line, exit 2
    spec.write_text(spec.read_text().replace('comparisons = [["a", "b"]]', 'comparisons = [["a", "nope"]]'))
    assert paired.main(["--spec", str(spec)]) == 2
    assert "unknown record 'nope'" in capsys.readouterr().err


def test_cli_against_records_prints_one_family(capsys):
    rec = REPO / "results" / "records"
    base = rec / "20261126T113042_cifar10-smallcnn-linf-at_cifar10-union_n500.json"
    cand = rec / "20261126T113455_repro-ramp-e-at-cifar10-smallcnn-linf-at-e1_cifar10-union_n500.json"
    assert paired.main(["--against", str(base), str(cand), "--names", "start,E-AT"]) == 0
    out = capsys.readouterr().out
    assert "5 tests (1 comparison x their metrics)" in out
    # L1: 34 / 6 discordant, raw p 8.4e-06, Holm within these 5 tests: x5 = 4.2e-05
    assert "| E-AT vs start | L1:12 | 26.4 | 20.8 | 34 | 6 | 8.4e-06 | 4.2e-05 | shown: candidate higher |" in out


@pytest.mark.parametrize("spec", sorted((REPO / "results" / "families").glob("*.toml")), ids=lambda p: p.stem)
def test_results_pages_are_what_their_records_give(spec):
    """Every p-value table on the results pages is regenerated from the committed per-sample flags and compared."""
    assert paired.main(["--spec", str(spec), "--check"]) == 0


def test_mtard_pages_are_what_their_records_give():
    import mtard_repro
    pages = sorted((REPO / "results").glob("mtard_*.json"))
    assert pages
    for path in pages:
        summary = json.loads(path.read_text())
        summary.setdefault("tag", path.stem.removeprefix("mtard_"))
        assert mtard_repro.report(summary) == path.with_suffix(".md").read_text(), f"{path.name}: re-render the page"


def test_randomized_page_eot_sections_are_what_their_json_gives(tmp_path):
    """The per-sigma EOT sections of results/randomized.md (raw p from the per-image flags in the JSON; their Holm p
    are in the family table above) are regenerated by eot_randomized.py's renderer and compared."""
    import eot_randomized
    page = REPO / "results" / "randomized.md"
    copy = tmp_path / "randomized.md"
    copy.write_text(page.read_text())
    runs = json.loads((REPO / "results" / "randomized_cpu_smallcnn.json").read_text())["runs"]
    eot_randomized.write_page(copy, runs)
    assert copy.read_text() == page.read_text(), "re-render: python benchmarks/eot_randomized.py --render-only"
    assert "exact McNemar raw p = 0.0156 (the Holm-adjusted p" in page.read_text()


def test_measurement_pages_quote_no_bare_raw_p():
    """The docs' measurement pages follow the results pages' rule: no p-value quoted as a finding without its
    Holm-adjusted value (issue 29: these pages still said "p = 0.024" for a comparison that shows nothing)."""
    pages = sorted((REPO / "docs" / "measurements").glob("*.md"))
    assert pages
    for page in pages:
        for para in page.read_text().split("\n\n"):
            assert not re.search(r"\bp\s*=\s*[0-9]", para), (page.name, para[:120])
            if "raw p" in para:
                assert "Holm" in para, (page.name, para[:120])

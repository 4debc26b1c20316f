"""The agreement measures: properties, and the published worked examples (Cohen's kappa, Fleiss' kappa,
Krippendorff's alpha) they must reproduce."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from sklearn.metrics import cohen_kappa_score

from annotation.agreement import (
    _alpha_weighted,
    _counts,
    _fleiss_weighted,
    agreement_report,
    cohen_kappa,
    fleiss,
    fleiss_kappa,
    krippendorff_alpha,
)

labels = st.sampled_from(["a", "b", "c", "d"])
items = st.lists(st.lists(labels, min_size=2, max_size=5), min_size=1, max_size=40)


@given(items)
def test_observed_agreement_is_a_share_and_kappa_at_most_one(data):
    result = fleiss(data)
    assert 0.0 <= result.observed <= 1.0
    assert result.kappa is None or -1.0 <= result.kappa <= 1.0 + 1e-12


@given(st.lists(st.lists(labels, min_size=1, max_size=1).map(lambda x: x * 3), min_size=2, max_size=30))
def test_unanimous_items_agree_fully(data):
    result = fleiss(data)
    assert result.observed == 1.0
    assert result.kappa is None or abs(result.kappa - 1.0) < 1e-12


def test_a_known_example():
    # Two raters, four items: agree on 2 of 4, categories balanced -> observed 0.5, chance 0.5, kappa 0.
    result = fleiss([["a", "a"], ["b", "b"], ["a", "b"], ["b", "a"]])
    assert (result.items, result.observed, result.kappa) == (4, 0.5, 0.0)


def test_items_with_one_rating_are_ignored():
    assert fleiss([["a"], ["b"]]) is None
    assert fleiss([["a"], ["b", "b"], ["a", "a"]]).items == 2


# --- Worked examples: Cohen's kappa, Fleiss' kappa, Krippendorff's alpha, and the bootstrap ---------------------------


def test_cohens_kappa_of_the_textbook_two_by_two_table():
    # 50 proposals, two readers: both yes 20, A yes / B no 5, A no / B yes 10, both no 15.
    # p_o = 35/50 = 0.70; p_e = 0.5 * 0.6 + 0.5 * 0.4 = 0.50; kappa = (0.70 - 0.50) / 0.50 = 0.40.
    a = ["yes"] * 20 + ["yes"] * 5 + ["no"] * 10 + ["no"] * 15
    b = ["yes"] * 20 + ["no"] * 5 + ["yes"] * 10 + ["no"] * 15
    assert cohen_kappa(a, b) == pytest.approx(0.40)


@pytest.mark.filterwarnings("ignore::UserWarning")
@given(st.lists(st.tuples(labels, labels), min_size=2, max_size=60))
def test_cohens_kappa_matches_scikit_learn(pairs):
    a, b = [x for x, _ in pairs], [y for _, y in pairs]
    ours = cohen_kappa(a, b)
    theirs = cohen_kappa_score(a, b)
    assert (ours is None and (math.isnan(theirs) or len(set(a) | set(b)) == 1)) or ours == pytest.approx(theirs)


def test_fleiss_kappa_of_fleiss_1971_style_worked_example():
    # The 10 subjects x 14 raters x 5 categories table of Wikipedia's "Fleiss' kappa" article:
    # P-bar = 0.378, P-e-bar = 0.213, kappa = 0.210.
    table = [[0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
             [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7]]
    items = [[c for c, n in enumerate(row) for _ in range(n)] for row in table]
    assert fleiss_kappa(items) == pytest.approx(0.210, abs=5e-4)
    assert fleiss(items).observed == pytest.approx(0.378, abs=5e-4)


# Krippendorff (1980; 2011, "Computing Krippendorff's alpha-reliability", example C): 4 observers, 12 units,
# values 1-5, missing entries as None. Nominal alpha = 0.743.
RELIABILITY_DATA = [
    [1, 2, 3, 3, 2, 1, 4, 1, 2, None, None, None],
    [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, None, 3],
    [None, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, None],
    [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, None],
]


def test_krippendorffs_alpha_of_the_1980_reliability_data():
    units = [[row[u] for row in RELIABILITY_DATA if row[u] is not None] for u in range(12)]
    assert krippendorff_alpha(units) == pytest.approx(0.743, abs=5e-4)
    # The closed form the bootstrap resamples gives the same value.
    counts = _counts(units)
    assert _alpha_weighted(counts, np.ones((1, len(counts))))[0] == pytest.approx(0.743, abs=5e-4)


@given(items)
def test_the_resampled_closed_forms_agree_with_the_point_values(data):
    counts = _counts(data)
    ones = np.ones((1, len(counts)))
    alpha = krippendorff_alpha(data)
    closed = _alpha_weighted(counts, ones)[0]
    assert (alpha is None and math.isnan(closed)) or alpha == pytest.approx(closed, abs=1e-9)
    kappa = fleiss(data).kappa
    closed = _fleiss_weighted(counts, ones)[0]
    assert (kappa is None and math.isnan(closed)) or kappa == pytest.approx(closed, abs=1e-9)


def _answers(n, rng, *, flip):
    """n items, three annotators: 'x' and 'y' copy the truth, 'z' answers at random a share `flip` of the time."""
    truth = rng.choice(["a", "b", "c"], size=n)
    out = []
    for t in truth:
        z = rng.choice(["a", "b", "c"]) if rng.random() < flip else t
        out.append({"x": (t,), "y": (t,), "z": (z,)})
    return out, [(t,) for t in truth]


def test_the_report_measures_pairs_labels_and_each_annotator_against_the_final_label():
    rng = np.random.default_rng(3)
    answers, truth = _answers(300, rng, flip=0.6)
    report = agreement_report(answers, label_keys=["a", "b", "c", "unused"], targets=truth,
                              adjudicated=[False] * 300)
    pairs = {(p.a, p.b): p for p in report.pairs}
    assert pairs[("x", "y")].kappa.value == pytest.approx(1.0)
    assert pairs[("x", "z")].kappa.value < 0.7
    # The interval holds the point value and is narrower than the whole range.
    xz = pairs[("x", "z")].kappa
    assert xz.low <= xz.value <= xz.high and 0 < xz.high - xz.low < 0.3
    assert [row.key for row in report.per_label] == ["a", "b", "c"]  # "unused" was never given
    by_rater = {row.rater: row for row in report.annotators}
    assert by_rater["x"].observed == 1.0 and by_rater["z"].observed < 0.75
    assert report.alpha.low <= report.alpha.value <= report.alpha.high
    # Noisier z -> lower agreement everywhere.
    calm = agreement_report(_answers(300, np.random.default_rng(3), flip=0.1)[0], label_keys=["a", "b", "c"])
    assert calm.alpha.value > report.alpha.value and calm.fleiss.value > report.fleiss.value


def test_the_report_leaves_out_items_with_one_annotator():
    assert agreement_report([{"x": ("a",)}], label_keys=["a"]) is None
    report = agreement_report([{"x": ("a",)}, {"x": ("a",), "y": ("a",)}, {"x": ("b",), "y": ("a",)}],
                              label_keys=["a", "b"])
    assert report.items == 2 and report.ratings == 4

"""Property tests of the agreement measure shown on the dashboard."""
from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from annotation.agreement import fleiss

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

"""The mislabel finder (learning.mislabels) and its benchmark against cleanlab."""

from __future__ import annotations

import csv
import importlib.util
import json
import zlib
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from learning import bayes, mislabels

ROOT = Path(__file__).resolve().parent.parent


def blobs(n: int, k: int, *, separation: float, d: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((k, d))
    centers *= separation / np.linalg.norm(centers, axis=1, keepdims=True)
    y = rng.integers(0, k, n)
    return centers[y] + rng.standard_normal((n, d)), y


def flip(y: np.ndarray, k: int, rate: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    flipped = np.zeros(len(y), dtype=bool)
    flipped[rng.choice(len(y), int(rate * len(y)), replace=False)] = True
    noisy = y.copy()
    noisy[flipped] = (y[flipped] + rng.integers(1, k, flipped.sum())) % k
    return noisy, flipped


def precision_at_k(X: np.ndarray, noisy: np.ndarray, flipped: np.ndarray, k: int) -> float:
    found = mislabels.find_mislabels_in(X, noisy, n_classes=k, seed=3)
    top = [m.index for m in found[: int(flipped.sum())]]
    return float(flipped[top].sum() / flipped.sum())


def test_it_finds_known_flips_and_explains_each() -> None:
    X, y = blobs(600, 3, separation=4.0)
    noisy, flipped = flip(y, 3, 0.1, seed=1)
    posterior = bayes.fit(X, noisy, n_classes=3)
    found = mislabels.find_mislabels_in(X, noisy, n_classes=3, posterior=posterior, label_names=["a", "b", "c"])
    assert found, "well separated classes with 10% flips: something must be flagged"
    assert [m.score for m in found] == sorted((m.score for m in found), reverse=True)
    hits = sum(flipped[m.index] for m in found)
    assert hits / len(found) >= 0.85
    assert hits / flipped.sum() >= 0.6
    for m in found:
        assert m.given == noisy[m.index] and m.predicted != m.given and m.label is None
        # The model's label cleared its class's threshold, or is the most probable class of three.
        assert 0.0 < m.threshold <= 1.0 and m.probability >= min(m.threshold, 1 / 3) - 1e-9
        assert "labelled " + "abc"[m.given] in m.reason and "abc"[m.predicted] in m.reason
    # The flagged items' model label is mostly the true one.
    assert np.mean([m.predicted == y[m.index] for m in found]) >= 0.85


@settings(max_examples=3, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_precision_rises_with_the_separability_of_the_classes(seed: int) -> None:
    precisions = []
    for separation in (0.5, 1.5, 5.0):
        X, y = blobs(300, 3, separation=separation, seed=seed)
        noisy, flipped = flip(y, 3, 0.15, seed=seed + 1)
        precisions.append(precision_at_k(X, noisy, flipped, 3))
    assert precisions[0] < precisions[2]
    assert precisions[1] <= precisions[2] + 0.05
    assert precisions[2] >= 0.8


def test_a_hard_class_does_not_flood_the_list() -> None:
    # Class 0 is hard: the model is never sure of it (p ~ 0.45), yet its labels are right.
    # Classes 1 and 2 are easy, with a few flips between them. A fixed cut on the given label's
    # probability ("the model gives it under one half") flags most of class 0; per-class
    # thresholds flag the flips and leave class 0 alone.
    rng = np.random.default_rng(0)
    n = 300
    y = np.repeat([0, 1, 2], n)
    proba = np.zeros((3 * n, 3))
    proba[:n] = rng.dirichlet([45, 30, 25], n)
    proba[n:2 * n] = rng.dirichlet([2, 95, 3], n)
    proba[2 * n:] = rng.dirichlet([2, 3, 95], n)
    noisy = y.copy()
    wrong = np.concatenate([rng.choice(np.arange(n, 2 * n), 15, replace=False),
                            rng.choice(np.arange(2 * n, 3 * n), 15, replace=False)])
    noisy[wrong] = 3 - y[wrong]  # 1 <-> 2
    found = mislabels.find_mislabels(proba, noisy)
    flagged = {m.index for m in found}
    assert sum(1 for i in flagged if y[i] == 0) <= 3
    assert len(flagged & set(wrong.tolist())) >= 27
    thresholds = mislabels.per_class_thresholds(proba, noisy)
    assert thresholds[0] < 0.6 < thresholds[1]
    fixed_cut = proba[np.arange(3 * n), noisy] < 0.5
    assert fixed_cut[:n].sum() > 200


def test_multi_label_is_judged_per_label() -> None:
    rng = np.random.default_rng(2)
    n, labels = 400, 3
    truth = (rng.random((n, labels)) < 0.3).astype(np.int64)
    proba = np.clip(np.where(truth == 1, rng.beta(14, 2, truth.shape), rng.beta(2, 14, truth.shape)), 0.01, 0.99)
    given_ = truth.copy()
    dropped = rng.choice(np.flatnonzero(truth[:, 1] == 1), 8, replace=False)  # label 1 missing
    added = rng.choice(np.flatnonzero(truth[:, 2] == 0), 8, replace=False)  # label 2 spurious
    given_[dropped, 1] = 0
    given_[added, 2] = 1
    wrong = {(int(i), 1) for i in dropped} | {(int(i), 2) for i in added}
    # Every (item, label) pair is ranked; the 16 most suspicious are nearly all the 16 wrong ones.
    analyses = mislabels.label_issue_scores(proba, given_, multi_label=True)
    ranked = sorted(((a.scores[i], i, j) for j, a in enumerate(analyses) for i in range(n)), reverse=True)
    assert len({(i, j) for _, i, j in ranked[:16]} & wrong) >= 14
    # Confident learning flags conservatively (an item is counted when the other value clears the
    # average confidence of the items given it), but what it flags is right and spread over labels.
    found = mislabels.find_mislabels(proba, given_, multi_label=True, label_names=["x", "y", "z"])
    pairs = {(m.index, m.label) for m in found}
    assert len(pairs & wrong) >= 6 and len(pairs & wrong) >= 0.8 * len(pairs)
    assert {j for _, j in pairs & wrong} == {1, 2}
    for m in found:
        assert m.label is not None and m.given == given_[m.index, m.label] and m.predicted == 1 - m.given
    missing = next(m for m in found if m.index in set(dropped.tolist()) and m.label == 1)
    assert "y given as absent" in missing.reason and "present" in missing.reason


def test_multi_label_from_embeddings_runs_the_second_pass() -> None:
    X, y = blobs(300, 3, separation=4.0, seed=5)
    Y = np.eye(3, dtype=np.int64)[y]
    Y[:6] = 1 - Y[:6]  # every label of the first six items flipped
    found = mislabels.find_mislabels_in(X, Y, n_classes=3, multi_label=True)
    assert len({m.index for m in found} & set(range(6))) >= 5


def test_the_finder_judges_with_its_own_bias_column() -> None:
    """The loop's model (bias column ``bayes.BIAS_FEATURE``) is refitted once with the finder's before the folds;
    a posterior that has the finder's column already is used as it is."""
    X, y = blobs(300, 3, separation=2.0, seed=4)
    noisy, _ = flip(y, 3, 0.1, seed=4)
    loop = bayes.fit(X, noisy, n_classes=3)
    assert loop.bias_feature == bayes.BIAS_FEATURE != mislabels.FINDER_BIAS_FEATURE
    finder = mislabels.finder_posterior(X, noisy, n_classes=3, posterior=loop)
    assert finder is not None and finder.bias_feature == mislabels.FINDER_BIAS_FEATURE
    assert mislabels.finder_posterior(X, noisy, n_classes=3, posterior=finder) is finder
    from_loop = mislabels.out_of_fold_proba(X, noisy, n_classes=3, posterior=loop, seed=1)
    from_finder = mislabels.out_of_fold_proba(X, noisy, n_classes=3, posterior=finder, seed=1)
    assert from_loop is not None and np.allclose(from_loop, from_finder)


def test_skewed_classes_keep_their_frequency_in_the_finder() -> None:
    """A minority class of 10 %: the out-of-fold probabilities average to the labelled frequency, not towards
    uniform (the finder's bias prior is weak), so the majority's correct items are not judged doubtful."""
    rng = np.random.default_rng(8)
    X = rng.normal(size=(500, 24))
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    y = (rng.random(500) < 0.1).astype(np.int64)
    proba = mislabels.out_of_fold_proba(X, y, n_classes=2, posterior=bayes.fit(X, y, n_classes=2), seed=2)
    assert proba is not None
    assert abs(proba[:, 1].mean() - y.mean()) < 0.03


def test_the_second_pass_leaves_out_the_most_suspicious_half_of_the_flags() -> None:
    flagged = np.array([True, False, True, True, False, True, True])
    scores = np.array([0.9, 0.99, 0.2, 0.5, 0.8, 0.7, 0.1])
    out = mislabels.second_pass_exclusions(flagged, scores)
    # Five flags, ceil(2.5) = 3 left out: the three highest-scoring flagged rows (not the unflagged 0.99 or 0.8).
    assert out.tolist() == [True, False, False, True, False, True, False]
    assert not mislabels.second_pass_exclusions(np.zeros(4, dtype=bool), np.ones(4)).any()


def test_bad_input_says_what_is_wrong() -> None:
    with pytest.raises(ValueError, match="class indices"):
        mislabels.find_mislabels(np.full((3, 2), 0.5), np.array([0, 1]))
    with pytest.raises(ValueError, match=r"lie in \[0, 2\)"):
        mislabels.find_mislabels(np.full((2, 2), 0.5), np.array([0, 2]))
    with pytest.raises(ValueError, match="0/1 matrix"):
        mislabels.find_mislabels(np.full((2, 2), 0.5), np.array([0, 1]), multi_label=True)
    with pytest.raises(ValueError, match="NaN"):
        mislabels.find_mislabels(np.array([[np.nan, 1.0]]), np.array([0]))


# ---- the benchmark script ---------------------------------------------------------------------
def load_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("mislabel_bench", ROOT / "benchmarks" / "mislabel_bench.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_set(path: Path, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        for i in range(n):
            label = ["sport", "tech", "food"][int(rng.integers(0, 3))]
            writer.writerow([f"{label} item {seed}-{i}", label])


def fake_embed(texts: list[str]) -> np.ndarray:
    """Class centre (from the text's first word) plus noise seeded by the text: no encoder needed."""
    out = np.empty((len(texts), 16), dtype=np.float32)
    for row, text in enumerate(texts):
        centre = np.random.default_rng(zlib.crc32(text.split()[0].encode())).standard_normal(16)
        out[row] = 1.2 * centre + np.random.default_rng(zlib.crc32(text.encode())).standard_normal(16)
    return out


def test_the_benchmark_writes_every_method_and_setting(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bench = load_bench()
    write_set(tmp_path / "train.csv", 400, seed=1)
    write_set(tmp_path / "test.csv", 150, seed=2)
    out = tmp_path / "result.json"
    bench.main(["--train", str(tmp_path / "train.csv"), "--test", str(tmp_path / "test.csv"), "--labels", "240",
                "--noise", "0.1", "0.2", "--noise-kind", "uniform", "confusable", "--repeats", "1",
                "--out", str(out)], embed=fake_embed)
    rows = json.loads(out.read_text())["results"]
    assert len(rows) == 3 * 2 * 2
    assert {r["method"] for r in rows} == {"labelhub", "cleanlab_same_probs", "cleanlab_default"}
    assert {(r["noise"], r["kind"], r["repeat"]) for r in rows} == {
        (rate, kind, rep) for rate in (0.1, 0.2) for kind in ("uniform", "confusable") for rep in (0,)}
    for r in rows:
        assert r["k"] == round(240 * r["noise"])
        for key in ("precision_at_k", "recall", "auprc", "macro_f1_after_fix", "macro_f1_after_random_fix"):
            assert 0.0 <= r[key] <= 1.0
    # Separable classes: every method finds most flips, and fixing them beats fixing random items on average.
    for method in ("labelhub", "cleanlab_same_probs"):
        mine = [r for r in rows if r["method"] == method]
        assert np.mean([r["precision_at_k"] for r in mine]) >= 0.7
    ours = [r for r in rows if r["method"] == "labelhub"]
    assert np.mean([r["macro_f1_after_fix"] for r in ours]) >= np.mean([r["macro_f1_after_random_fix"] for r in ours])
    printed = capsys.readouterr().out
    assert "| labelhub |" in printed and "cleanlab_default" in printed


def test_the_benchmark_refuses_bad_input(tmp_path: Path) -> None:
    bench = load_bench()
    bad = tmp_path / "bad.csv"
    bad.write_text("sentence,category\nhello,a\n")
    with pytest.raises(SystemExit, match="'text' and 'label'"):
        bench.main(["--train", str(bad), "--test", str(bad), "--labels", "100", "--noise", "0.1",
                    "--out", str(tmp_path / "r.json")], embed=fake_embed)
    write_set(tmp_path / "ok.csv", 50, seed=3)
    with pytest.raises(SystemExit, match="noise-kind"):
        bench.main(["--train", str(tmp_path / "ok.csv"), "--test", str(tmp_path / "ok.csv"), "--labels", "40",
                    "--noise", "0.1", "--noise-kind", "adversarial", "--out", str(tmp_path / "r.json")],
                   embed=fake_embed)
    assert not (tmp_path / "r.json").exists()

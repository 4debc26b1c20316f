"""The evaluation harness on synthetic embeddings (no database, no encoder)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from learning import bayes, quality, simulation


def blobs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((4, 12)) * 1.5
    y = rng.integers(0, 4, n)
    return (centers[y] + rng.standard_normal((n, 12))).astype(np.float32), y


def test_it_returns_the_harness_shape_and_a_plot(tmp_path: Path) -> None:
    X, y = blobs(600, 0)
    Xt, yt = blobs(200, 1)
    result = simulation.simulate(
        X_train=X,
        y_train=y,
        X_test=Xt,
        y_test=yt,
        n_classes=4,
        strategies=["random", "bald_diversity", "margin"],
        seed_size=20,
        batch_size=20,
        budget=80,
        repeats=2,
    )
    assert set(result) == {"strategies", "config"}
    for entry in result["strategies"].values():
        assert [run["seed"] for run in entry["runs"]] == [0, 1]
        points = entry["runs"][0]["points"]
        assert [p["n_labels"] for p in points] == [20, 40, 60, 80]
        assert {"n_labels", "accuracy", "macro_f1", "ece", "update_seconds", "report_seconds"} <= set(points[0])
        assert all(p["update_seconds"] > 0 and p["report_seconds"] > 0 for p in points)
        assert {"auc_macro_f1", "labels_to_reach_random_final", "ratio_to_random"} <= set(entry["summary"])
    assert 0 < result["strategies"]["random"]["summary"]["ratio_to_random"] <= 1.0
    simulation.plot_curves(result, str(tmp_path / "curve.png"))
    assert (tmp_path / "curve.png").stat().st_size > 1000


def test_it_simulates_multilabel() -> None:
    rng = np.random.default_rng(2)
    X = rng.standard_normal((300, 6)).astype(np.float32)
    Y = np.stack([X[:, 0] > 0, X[:, 1] > 0], axis=1).astype(int)
    result = simulation.simulate(
        X_train=X[:200],
        y_train=Y[:200],
        X_test=X[200:],
        y_test=Y[200:],
        n_classes=2,
        multi_label=True,
        strategies=["random", "bald"],
        seed_size=10,
        batch_size=10,
        budget=30,
        repeats=1,
    )
    assert result["strategies"]["bald"]["runs"][0]["points"][-1]["macro_f1"] > 0.6


@pytest.mark.filterwarnings("ignore::DeprecationWarning:small_text")
def test_it_runs_small_text_on_the_same_grid_as_ours() -> None:
    # Benchmark-only dependency (benchmarks/requirements.txt): skip where it is not installed.
    pytest.importorskip("small_text")
    spec = importlib.util.spec_from_file_location(
        "smalltext_compare", Path(__file__).resolve().parent.parent / "benchmarks" / "smalltext_compare.py"
    )
    assert spec is not None and spec.loader is not None
    compare = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(compare)
    X, y = blobs(600, 3)  # one draw split in two: blobs() picks new centres per seed
    kwargs = dict(
        X_train=X[:400],
        y_train=y[:400],
        X_test=X[400:],
        y_test=y[400:],
        n_classes=4,
        seed_size=20,
        batch_size=20,
        budget=80,
        repeats=1,
    )
    ours = simulation.simulate(strategies=["random"], **kwargs)
    target = ours["strategies"]["random"]["summary"]["target_macro_f1"]
    ours_points = ours["strategies"]["random"]["runs"][0]["points"]
    theirs = compare.simulate(strategies=compare.STRATEGIES, reference_target=target, **kwargs)
    assert set(theirs["strategies"]) == set(compare.STRATEGIES)
    for entry in theirs["strategies"].values():
        points = entry["runs"][0]["points"]
        assert [p["n_labels"] for p in points] == [p["n_labels"] for p in ours_points]
        assert {"macro_f1", "ece", "update_seconds"} <= set(points[-1])
        assert entry["summary"]["reference_macro_f1"] == target
        assert points[-1]["macro_f1"] > 0.5  # four well-separated blobs


def test_it_updates_the_model_as_the_app_does(monkeypatch: pytest.MonkeyPatch) -> None:
    # learning.actions.fit: fit warm-started from the previous model, then calibrate
    # from quality.evaluate's report. A replay that fits another way draws curves no project sees.
    # A search the update left due runs in the report (learning.actions._search_prior) and the next update takes it.
    warm: list[bool] = []
    searched_in_update: list[bool] = []
    searches: list[int] = []
    reported: list[bool] = []
    fit, calibrate = bayes.fit, quality.calibrate

    def spy_fit(X: np.ndarray, y: np.ndarray, **kwargs: Any) -> bayes.Posterior:
        if kwargs.get("init_prior_precision") is not None:  # bayes.search_prior
            searches.append(len(y))
        elif kwargs.get("prior_precision") is None:  # cross-validation folds fix it; the update does not
            warm.append(kwargs.get("warm_start") is not None)
            assert kwargs.get("defer_search") is True
            post = fit(X, y, **kwargs)
            searched_in_update.append(post.info["evidence_iterations"] > 1)
            return post
        return fit(X, y, **kwargs)

    def spy_calibrate(posterior: bayes.Posterior, X: np.ndarray, y: np.ndarray, **kwargs: Any) -> bayes.Posterior:
        reported.append(kwargs.get("report") is not None)
        return calibrate(posterior, X, y, **kwargs)

    monkeypatch.setattr(bayes, "fit", spy_fit)
    monkeypatch.setattr(quality, "calibrate", spy_calibrate)
    X, y = blobs(300, 5)
    points = simulation.run_strategy(
        "margin", X_train=X[:200], y_train=y[:200], X_test=X[200:], y_test=y[200:], n_classes=4,
        seed_size=20, batch_size=20, budget=80, seed=0,
    )  # fmt: skip
    assert [p["n_labels"] for p in points] == [20, 40, 60, 80]
    assert warm == [False, True, True, True]
    assert searched_in_update == [True, False, False, False]  # only the first, cold fit searches itself
    assert searches == [40, 60]  # 20 -> 40 and 40 -> 60 labels grew by half: the reports searched
    assert reported == [True, True, True, True]


def test_it_runs_with_one_blas_thread_like_a_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    from threadpoolctl import threadpool_info

    threads: list[int] = []
    fit = bayes.fit

    def spy_fit(X: np.ndarray, y: np.ndarray, **kwargs: Any) -> bayes.Posterior:
        threads.extend(pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas")
        return fit(X, y, **kwargs)

    monkeypatch.setattr(bayes, "fit", spy_fit)
    X, y = blobs(200, 6)
    simulation.simulate(X_train=X[:150], y_train=y[:150], X_test=X[150:], y_test=y[150:], n_classes=4,
                        strategies=["margin"], seed_size=20, batch_size=20, budget=40, repeats=1)
    assert threads and set(threads) == {1}

"""Offline evaluation harness: replay a labelled set with a simulated annotator.

Plain module (no Django): it runs the same bayes / quality / acquisition / metrics code as
the app, in the same order (see ``_update`` and ``_report``), so a learning curve here is what
a project would have seen. Like a worker's jobs, a replay runs with one BLAS thread. The management command
``simulate`` and benchmarks/label_efficiency.py are thin wrappers around ``simulate``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from learning import acquisition, bayes, metrics, quality, spans

ProgressCallback = Callable[[str, int, int, dict[str, float]], None]
# New features for (train, test) after a fine-tune on the labelled rows: (rows, seed) -> (X_train, X_test, seconds).
Refeaturize = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray, float]]


@dataclass(frozen=True)
class HeldoutRule:
    """How the app decides whether a fine-tuned encoder replaces the current one (``learning.finetuning``): its
    functions, handed in by the Django side (the ``simulate`` command) so that this module stays Django-free and
    the replay runs the app's comparison itself, not a copy of it.

    ``split(y, n_classes, seed) -> (train rows, held-out rows)``; ``fit_and_predict(X_train, y_train, X_held,
    n_classes) -> probabilities``; ``compare(y_held, current_proba, candidate_proba, n_classes, seed) -> the
    comparison`` (with ``candidate_wins`` and each side's ``macro_f1``)."""

    split: Callable[[np.ndarray, int, int], tuple[np.ndarray, np.ndarray]]
    fit_and_predict: Callable[[np.ndarray, np.ndarray, np.ndarray, int], np.ndarray]
    compare: Callable[[np.ndarray, np.ndarray, np.ndarray, int, int], dict[str, Any]]


def _update(
    X: np.ndarray, y: np.ndarray, *, n_classes: int, multi_label: bool, previous: bayes.Posterior | None
) -> bayes.Posterior:
    """The model update of ``learning.actions.fit_and_score``, minus the database.

    Same calls in the same order: a fit warm-started from the previous model (which keeps its
    prior precision until the labels have grown enough for a new search, and then leaves the search
    to the report: ``_search``, whose refit replaces this one and so carries its lambda to the next
    update) that takes the previous model's calibration until its own report comes (``_report``).
    A replay that fitted or calibrated any other way would draw a curve no project sees.
    """
    if multi_label:
        posterior = bayes.fit_multilabel(X, y, warm_start=previous, defer_search=True)
    else:
        posterior = bayes.fit(X, y, n_classes=n_classes, warm_start=previous, defer_search=True)
    return quality.carry_calibration(posterior, previous)


def _search(
    posterior: bayes.Posterior, X: np.ndarray, y: np.ndarray, *, n_classes: int, multi_label: bool,
) -> bayes.Posterior | None:
    """The report job's first step (``learning.actions._search_prior``): the refit with the prior-precision search
    the update left due, if it did; it replaces the deferred refit, and its lambda goes to the next updates."""
    if not bayes.search_due(posterior):
        return None
    try:
        return quality.carry_calibration(
            bayes.search_prior(X, y, n_classes=n_classes, multi_label=multi_label, warm_start=posterior), posterior)
    except bayes.ModelFitError:
        return None


def _report(
    posterior: bayes.Posterior, X: np.ndarray, y: np.ndarray, *, n_classes: int, multi_label: bool, seed: int,
    unseen: np.ndarray | None = None,
) -> bayes.Posterior:
    """The quality report job (``learning.actions.report_version``), minus the database: one
    cross-validation at the model's prior precision whose out-of-fold logits give the calibration
    (after a fine-tune, on the labels its encoder was not trained on: ``unseen``, as the app does)."""
    names = [str(k) for k in range(n_classes)]
    report = quality.evaluate(
        X, y, n_classes=n_classes, label_names=names, multi_label=multi_label, seed=seed, posterior=posterior,
        unseen=unseen,
    )
    return quality.calibrate(posterior, X, y, seed=seed, report=report)


def _evaluate(
    posterior: bayes.Posterior | None,
    X_test: np.ndarray,
    y_test: np.ndarray,
    n_classes: int,
    multi_label: bool,
    fallback: np.ndarray,
) -> dict[str, float]:
    if posterior is None:
        # Before two classes are labelled there is no model; score the majority guess.
        proba = np.tile(fallback, (len(X_test), 1))
    else:
        proba = posterior.predict_proba(X_test)
    if multi_label:
        scores = metrics.multilabel_scores(y_test, proba >= 0.5)
        return {
            "accuracy": scores["subset_accuracy"],
            "macro_f1": scores["macro_f1"],
            "micro_f1": scores["micro_f1"],
            "ece": metrics.multilabel_calibration_error(proba, y_test),
        }
    pred = proba.argmax(axis=1)
    return {
        "accuracy": metrics.accuracy(y_test, pred),
        "macro_f1": metrics.macro_f1(y_test, pred, n_classes),
        "ece": metrics.expected_calibration_error(proba, y_test),
    }


def run_strategy(
    strategy: str,
    *,
    X_train: np.ndarray,
    y_train: np.ndarray,
    X_test: np.ndarray,
    y_test: np.ndarray,
    n_classes: int,
    seed_size: int,
    batch_size: int,
    budget: int,
    seed: int,
    multi_label: bool = False,
    n_samples: int | None = None,
    progress: ProgressCallback | None = None,
    report_every: int = 1,
    trace: list[dict[str, Any]] | None = None,
    finetune_at: Sequence[int] = (),
    refeaturize: Refeaturize | None = None,
    heldout_rule: HeldoutRule | None = None,
    finetune_log: list[dict[str, Any]] | None = None,
) -> list[dict[str, float]]:
    """One learning curve: seed batch, then fit -> score pool -> select batch -> label, to ``budget``.

    ``finetune_at`` (with ``refeaturize``): at the first update with at least that many labels, the encoder is
    fine-tuned on the labels so far and the curve goes on with the new features of train and test (the app's slow
    loop, learning.finetuning, re-embeds the pool likewise); the Bayesian layer then fits cold on them, as the
    candidate of a fine-tune does. Points then carry ``finetunes`` (how many so far) and ``finetune_seconds``.

    With ``heldout_rule`` it goes as in the app: a share of the labels is held out (``split``), the encoder is
    fine-tuned on the rest only, the current features' model and the candidate's (both fitted on the rest) are
    compared on the held-out labels (``compare``), and the replay switches to the new features only if the
    candidate wins; else it goes on as if nothing had happened. ``finetune_log`` receives one record per fine-tune:
    {labels, current_macro_f1, candidate_macro_f1, promoted, seconds (the fine-tune's), heldout, total_seconds
    (with re-embedding and the comparison)}; without the rule every fine-tune is promoted and the figures are None.

    Each point's ``update_seconds`` is what a project waits for between labels and new
    suggestions (refit, rescore, next batch); ``report_seconds`` is the quality report's time
    (cross-validation and calibration), which the app runs after, off that path. The test
    figures are those of the model once its report has calibrated it, and that calibration
    carries over to the next model, as in the app when the report lands between two updates.

    ``report_every`` > 1 runs the report only at every ``report_every``-th update and the last
    (the app, too, skips reports when updates come faster than they do: one report waits per
    project, on the newest version); the models in between keep the last calibration. It
    changes no pick of random, and the others only through the calibration the pool is scored
    with. ``trace``, if given, receives one dict per update (labels, the model's prior precision,
    temperature and variance scale, and the pool rows picked), for the benchmarks' ablations;
    the curve points do not change.
    """
    if finetune_at and refeaturize is None:
        raise ValueError("finetune_at needs a refeaturize function (new features after each fine-tune)")
    pending = sorted(int(n) for n in finetune_at)
    finetunes = 0
    rng = np.random.default_rng(seed)
    n = X_train.shape[0]
    budget = min(budget, n)
    spec = acquisition.get_strategy(strategy)
    if strategy == "random":
        labelled = rng.choice(n, size=min(seed_size, budget), replace=False)
    else:
        labelled = acquisition.select_seed(X_train, min(seed_size, budget), rng)
    is_labelled = np.zeros(n, dtype=bool)
    is_labelled[labelled] = True
    # As the app does (learning.store.density_of): the density of every example among all of
    # them, computed once, each pool scored with its own rows' values.
    density = (acquisition.information_density(X_train, rng=np.random.default_rng(seed))
               if spec.density else None)
    order = list(labelled)
    points: list[dict[str, float]] = []
    previous: bayes.Posterior | None = None
    seen: np.ndarray | None = None  # the train rows the features' encoder was fine-tuned on, once one was
    updates = 0
    if trace is not None:
        trace.append({"n_labels": len(order), "chosen": [int(i) for i in labelled], "seed_batch": True})
    while True:
        idx = np.array(order)
        finetune_seconds = 0.0
        if pending and len(order) >= pending[0]:
            assert refeaturize is not None
            while pending and len(order) >= pending[0]:
                pending.pop(0)
            tuned_at = time.perf_counter()
            record = _finetune_step(refeaturize, heldout_rule, X_train, y_train, idx, n_classes, seed)
            finetunes += 1
            finetune_seconds = float(record["seconds"])
            trained_rows = record.pop("trained_rows", None)
            if record["promoted"]:
                X_train, X_test = record.pop("X_train"), record.pop("X_test")
                seen = trained_rows  # this fine-tune started from the configured encoder: only its rows
                previous = None  # other features: the layer fits cold, as a fine-tune's candidate does
                density = (acquisition.information_density(X_train, rng=np.random.default_rng(seed))
                           if spec.density else None)
            record.pop("X_train", None)
            record.pop("X_test", None)
            record["total_seconds"] = float(time.perf_counter() - tuned_at)
            if finetune_log is not None:
                finetune_log.append(record)
        started = time.perf_counter()
        posterior: bayes.Posterior | None
        report_seed = int(rng.integers(2**31))
        try:
            posterior = _update(X_train[idx], y_train[idx], n_classes=n_classes, multi_label=multi_label,
                                previous=previous)
        except bayes.ModelFitError:
            posterior = None
        remaining = budget - len(order)
        chosen: np.ndarray = np.empty(0, dtype=np.int64)
        if remaining > 0:
            pool = np.flatnonzero(~is_labelled)
            k = min(batch_size, remaining)
            if posterior is None or strategy == "random":
                chosen = pool[rng.choice(len(pool), size=k, replace=False)]
            else:
                # The app scores with score_pool's own default sample count; only an explicit
                # n_samples departs from it.
                pool_density = None if density is None else density[pool]
                if n_samples is None:
                    scored = acquisition.score_pool(posterior, X_train[pool], strategy=strategy, rng=rng,
                                                    density=pool_density)
                else:
                    scored = acquisition.score_pool(
                        posterior, X_train[pool], strategy=strategy, n_samples=n_samples, rng=rng,
                        density=pool_density,
                    )
                picked = acquisition.select_batch(
                    strategy,
                    scores=scored.scores,
                    embeddings=X_train[pool],
                    batch_size=k,
                    diversity=spec.diversity,
                    rng=rng,
                )
                chosen = pool[picked]
        update_seconds = time.perf_counter() - started
        report_started = time.perf_counter()
        if posterior is not None:
            # The report job's first step, after every update that left a search due, whatever ``report_every``:
            # in the app it runs as soon as the update is done, before the cross-validation that may give way.
            posterior = _search(posterior, X_train[idx], y_train[idx], n_classes=n_classes,
                                multi_label=multi_label) or posterior
            if updates % max(1, report_every) == 0 or remaining <= 0:
                posterior = _report(posterior, X_train[idx], y_train[idx], n_classes=n_classes,
                                    multi_label=multi_label, seed=report_seed,
                                    unseen=None if seen is None else ~np.isin(idx, seen))
            previous = posterior
        updates += 1
        report_seconds = time.perf_counter() - report_started
        if multi_label:
            fallback = (y_train[idx].sum(axis=0) + 1.0) / (len(idx) + 2.0)
        else:
            fallback = (np.bincount(y_train[idx], minlength=n_classes) + 1.0) / (len(idx) + n_classes)
        point = {"n_labels": int(len(order)), **_evaluate(posterior, X_test, y_test, n_classes, multi_label, fallback)}
        point["update_seconds"] = float(update_seconds)
        point["report_seconds"] = float(report_seconds)
        if finetune_at:
            point["finetunes"] = finetunes
            point["finetune_seconds"] = float(finetune_seconds)
        points.append(point)
        if progress is not None:
            progress(strategy, seed, len(order), point)
        if trace is not None:
            step: dict[str, Any] = {"n_labels": len(order), "chosen": [int(i) for i in chosen]}
            if posterior is not None:
                step.update(prior_precision=float(posterior.prior_precision),
                            temperature=float(posterior.temperature), variance_scale=float(posterior.variance_scale))
            trace.append(step)
        if remaining <= 0:
            break
        is_labelled[chosen] = True  # the simulated annotator answers with the gold label
        order.extend(int(i) for i in chosen)
    return points


def _finetune_step(refeaturize: Refeaturize, rule: HeldoutRule | None, X_train: np.ndarray, y_train: np.ndarray,
                   idx: np.ndarray, n_classes: int, seed: int) -> dict[str, Any]:
    """One fine-tune of a replay: the record of ``run_strategy``'s ``finetune_log``, with the new features under
    ``X_train``/``X_test`` (absent when there are none)."""
    record: dict[str, Any] = {"labels": int(len(idx)), "current_macro_f1": None, "candidate_macro_f1": None,
                              "promoted": True, "seconds": 0.0, "heldout": 0}
    if rule is None:
        record["X_train"], record["X_test"], record["seconds"] = refeaturize(idx, seed)
        record["trained_rows"] = idx
        return record
    y = np.asarray(y_train)[idx]
    train, held = rule.split(y, n_classes, seed)
    if len(held) == 0 or len(np.unique(y[train])) < 2:
        # The app fails such a run ("too few labelled examples to hold some out"): nothing changes.
        record.update(promoted=False, error="too few labels to hold some out")
        return record
    current = rule.fit_and_predict(X_train[idx[train]], y[train], X_train[idx[held]], n_classes)
    X_new, X_test_new, seconds = refeaturize(idx[train], seed)  # fine-tuned on the rest only, as in the app
    candidate = rule.fit_and_predict(X_new[idx[train]], y[train], X_new[idx[held]], n_classes)
    comparison = rule.compare(y[held], current, candidate, n_classes, seed)
    record.update(current_macro_f1=float(comparison["current"]["macro_f1"]["value"]),
                  candidate_macro_f1=float(comparison["candidate"]["macro_f1"]["value"]),
                  promoted=bool(comparison["candidate_wins"]), seconds=float(seconds), heldout=int(len(held)),
                  X_train=X_new, X_test=X_test_new, trained_rows=idx[train])
    return record


def _mean_curve(runs: list[dict[str, Any]], key: str = "macro_f1") -> tuple[np.ndarray, np.ndarray]:
    n_labels = np.array([p["n_labels"] for p in runs[0]["points"]])
    values = np.array([[p[key] for p in run["points"]] for run in runs])
    return n_labels, values.mean(axis=0)


def _auc(n_labels: np.ndarray, values: np.ndarray) -> float:
    if len(n_labels) < 2:
        return float(values[0]) if len(values) else float("nan")
    area = np.sum((values[1:] + values[:-1]) / 2 * np.diff(n_labels))
    return float(area / (n_labels[-1] - n_labels[0]))


def summarise(result: dict[str, Any]) -> None:
    """Fill each strategy's summary: AUC and labels needed to reach random's final macro-F1."""
    strategies = result["strategies"]
    target = None
    random_budget = None
    if "random" in strategies:
        n_labels, curve = _mean_curve(strategies["random"]["runs"])
        target = float(curve[-1])
        random_budget = int(n_labels[-1])
    for entry in strategies.values():
        n_labels, curve = _mean_curve(entry["runs"])
        reached: int | None = None
        if target is not None:
            hits = np.flatnonzero(curve >= target - 1e-12)
            reached = int(n_labels[hits[0]]) if hits.size else None
        entry["summary"] = {
            "auc_macro_f1": _auc(n_labels, curve),
            "final_macro_f1": float(curve[-1]),
            "target_macro_f1": target,
            "labels_to_reach_random_final": reached,
            "ratio_to_random": (reached / random_budget) if reached is not None and random_budget else None,
        }


def simulate(
    *,
    X_train: np.ndarray,
    y_train: np.ndarray,
    X_test: np.ndarray,
    y_test: np.ndarray,
    n_classes: int,
    strategies: Sequence[str] = ("random", acquisition.DEFAULT_STRATEGY),
    seed_size: int = 50,
    batch_size: int = 20,
    budget: int = 1000,
    repeats: int = 3,
    multi_label: bool = False,
    label_names: Sequence[str] | None = None,
    progress: ProgressCallback | None = None,
    report_every: int = 1,
    traces: dict[tuple[str, int], list[dict[str, Any]]] | None = None,
    finetune_at: Sequence[int] = (),
    refeaturize: Refeaturize | None = None,
    heldout_rule: HeldoutRule | None = None,
) -> dict[str, Any]:
    """Learning curves for each strategy and repeat, in the harness's JSON shape.

    Repeat r uses seed r for every strategy, so strategies are compared on the same seeds.
    ``report_every`` and ``traces`` (filled with each (strategy, seed)'s trace) are
    ``run_strategy``'s; the JSON is the same shape with or without them. With ``finetune_at``, each run also
    has ``finetunes``: ``run_strategy``'s fine-tune records ({labels, current_macro_f1, candidate_macro_f1,
    promoted, seconds, …}, compared by ``heldout_rule`` when given).
    """
    for name in strategies:
        acquisition.get_strategy(name)  # fail before hours of work, not after
    y_train = np.asarray(y_train)
    y_test = np.asarray(y_test)
    result: dict[str, Any] = {
        "strategies": {},
        "config": {
            "strategies": list(strategies),
            "seed_size": seed_size,
            "batch_size": batch_size,
            "budget": int(min(budget, len(y_train))),
            "requested_budget": budget,
            "repeats": repeats,
            "multi_label": multi_label,
            "n_classes": n_classes,
            "label_names": list(label_names) if label_names is not None else None,
            "n_train": int(len(y_train)),
            "n_test": int(len(y_test)),
            "dim": int(X_train.shape[1]),
        },
    }
    if finetune_at:
        result["config"]["finetune_at"] = sorted(int(n) for n in finetune_at)
        # Whether a fine-tune had to beat the current model on held-out labels to be used (the app's rule).
        result["config"]["finetune_compared"] = heldout_rule is not None
    # One BLAS thread, as the worker's jobs run (learning.actions): on a few shared cores a
    # multi-threaded BLAS is several times slower, and the timings must be the worker's.
    logs: dict[tuple[str, int], list[dict[str, Any]]] = {}
    with threadpool_limits(limits=1, user_api="blas"):
        run_repeats(result, strategies, repeats, lambda name, seed: run_strategy(
            name, X_train=X_train, y_train=y_train, X_test=X_test, y_test=y_test, n_classes=n_classes,
            seed_size=seed_size, batch_size=batch_size, budget=budget, seed=seed, multi_label=multi_label,
            progress=progress, report_every=report_every,
            trace=None if traces is None else traces.setdefault((name, seed), []),
            finetune_at=finetune_at, refeaturize=refeaturize, heldout_rule=heldout_rule,
            finetune_log=logs.setdefault((name, seed), []),
        ))
    if finetune_at:
        for name, entry in result["strategies"].items():
            for run in entry["runs"]:
                run["finetunes"] = logs.get((name, run["seed"]), [])
    summarise(result)
    return result


def finetune_refeaturizer(train_texts: Sequence[str], test_texts: Sequence[str], y_train: np.ndarray, *,
                          n_classes: int, model_path: str | Path, config: Any, workdir: str | Path,
                          threads: int | None = 1) -> Refeaturize:
    """``refeaturize`` for ``simulate(finetune_at=…)``: fine-tune the encoder at ``model_path`` on the labelled
    rows (`learning.finetune`, ``config`` a FinetuneConfig, its seed the repeat's) and embed train and test with
    it. Each fine-tune starts from ``model_path`` on every label so far; its folder is removed afterwards."""
    from dataclasses import replace

    from learning.encoder import Encoder
    from learning.finetune import finetune

    def refeaturize(rows: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray, float]:
        import shutil
        import tempfile

        folder = Path(tempfile.mkdtemp(prefix="simulate-finetune-", dir=str(workdir)))
        try:
            done = finetune(model_path, [train_texts[i] for i in rows], np.asarray(y_train)[rows],
                            n_classes=n_classes, out=folder / "encoder", config=replace(config, seed=seed))
            # Not the process-wide cache of get_encoder: each fine-tune's weights are used once.
            encoder = Encoder(folder / "encoder", backend="torch", device=config.device, threads=threads)
            return encoder.encode(list(train_texts)), encoder.encode(list(test_texts)), float(done.seconds)
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    return refeaturize


def run_repeats(result: dict[str, Any], strategies: Sequence[str], repeats: int,
                run: Callable[[str, int], list[dict[str, Any]]]) -> None:
    """Fill result["strategies"] with `repeats` seeded runs of each strategy (the JSON contract's shape)."""
    for name in strategies:
        result["strategies"][name] = {"runs": [{"seed": seed, "points": run(name, seed)} for seed in range(repeats)]}


def plot_curves(result: dict[str, Any], path: str, *, title: str | None = None, key: str = "macro_f1") -> None:
    """PNG of the mean ``key`` curve (macro-F1; entity_f1 for span tagging) per strategy with a min-max
    band over repeats."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, entry in result["strategies"].items():
        runs = entry["runs"]
        n_labels = np.array([p["n_labels"] for p in runs[0]["points"]])
        values = np.array([[p[key] for p in run["points"]] for run in runs])
        (line,) = ax.plot(n_labels, values.mean(axis=0), label=name, linewidth=1.8)
        ax.fill_between(n_labels, values.min(axis=0), values.max(axis=0), color=line.get_color(), alpha=0.15)
    target = next(iter(result["strategies"].values()))["summary"].get(f"target_{key}")
    if target is not None:
        ax.axhline(target, color="grey", linestyle=":", linewidth=1, label="random @ budget")
    ax.set_xlabel("labels")
    ax.set_ylabel(f"{key.replace('_', ' ')} (test)")
    ax.set_title(title or "Learning curves (mean, min-max over repeats)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---- span tagging (NER) ------------------------------------------------------------------------
def _span_evaluate(model: spans.SpanModel | None, test_vectors: Sequence[np.ndarray], test_tags: Sequence[np.ndarray],
                   tagset: spans.TagSet) -> dict[str, float]:
    """Test figures of a span model: strict entity F1 (micro, seqeval's), its macro over labels, precision,
    recall, token accuracy and the token tag ECE. Without a model every token is O."""
    gold = [spans.entities_from_ids(t, tagset) for t in test_tags]
    if model is None:
        predicted_ids = [np.zeros(len(t), dtype=np.int64) for t in test_tags]
        marginals = [np.eye(tagset.size, dtype=np.float32)[np.zeros(len(t), dtype=np.int64)] for t in test_tags]
    else:
        predictions = model.predict(test_vectors)
        predicted_ids = [p.tags for p in predictions]
        marginals = [p.marginals for p in predictions]
    pred = [spans.entities_from_ids(t, tagset) for t in predicted_ids]
    report = spans.entity_report(gold, pred, tagset.keys, n_boot=0)
    y = np.concatenate([np.asarray(t, dtype=np.int64) for t in test_tags])
    proba = np.concatenate(marginals)
    return {
        "accuracy": spans.token_accuracy(test_tags, predicted_ids),
        "macro_f1": report["macro_f1"]["value"],
        "entity_f1": report["f1"]["value"],
        "entity_precision": report["precision"]["value"],
        "entity_recall": report["recall"]["value"],
        "ece": metrics.expected_calibration_error(proba, y),
    }


def run_span_strategy(
    strategy: str,
    *,
    train_vectors: Sequence[np.ndarray],
    train_tags: Sequence[np.ndarray],
    test_vectors: Sequence[np.ndarray],
    test_tags: Sequence[np.ndarray],
    tagset: spans.TagSet,
    seed_size: int,
    batch_size: int,
    budget: int,
    seed: int,
    aggregation: str = spans.DEFAULT_AGGREGATION,
    progress: ProgressCallback | None = None,
    report_every: int = 1,
    trace: list[dict[str, Any]] | None = None,
) -> list[dict[str, float]]:
    """One span-tagging learning curve, counted in examples (sentences), as ``run_strategy``.

    The app's order: a diverse seed (k-means on example vectors; random for ``random``), then per
    update a warm refit (``SpanModel.fit`` with the previous model, which carries its calibration,
    and leaves a due prior-precision search to the report),
    per-token scores of ``strategy`` aggregated per example by ``aggregation``, weighted by the
    examples' information density and picked as a diverse batch (for the strategies that do so,
    on the examples' mean token vectors), then the report's calibration (folds by example). Each
    point also has ``n_tokens``, the tokens labelled so far (the annotators' cost).
    """
    rng = np.random.default_rng(seed)
    spec = acquisition.get_strategy(strategy)
    n = len(train_vectors)
    budget = min(budget, n)
    flat, bounds = spans.pack(train_vectors, np.float16)
    lengths = np.diff(bounds)
    example_vectors = spans.sentence_vectors(flat, bounds)
    if strategy == "random":
        labelled = rng.choice(n, size=min(seed_size, budget), replace=False)
    else:
        labelled = spans.select_seed(example_vectors, min(seed_size, budget), rng)
    is_labelled = np.zeros(n, dtype=bool)
    is_labelled[labelled] = True
    density = (acquisition.information_density(example_vectors, rng=np.random.default_rng(seed))
               if spec.density else None)
    order = [int(i) for i in labelled]
    points: list[dict[str, float]] = []
    previous: spans.SpanModel | None = None
    updates = 0
    if trace is not None:
        trace.append({"n_labels": len(order), "chosen": list(order), "seed_batch": True})
    while True:
        started = time.perf_counter()
        cpu_started = time.process_time()
        report_seed = int(rng.integers(2**31))
        vectors = [train_vectors[i] for i in order]
        targets = [train_tags[i] for i in order]
        model: spans.SpanModel | None
        try:
            model = spans.SpanModel.fit(vectors, targets, tagset, warm=previous, defer_search=True)
        except bayes.ModelFitError:
            model = None
        remaining = budget - len(order)
        chosen: np.ndarray = np.empty(0, dtype=np.int64)
        if remaining > 0:
            pool = np.flatnonzero(~is_labelled)
            k = min(batch_size, remaining)
            if model is None or strategy == "random":
                chosen = pool[rng.choice(len(pool), size=k, replace=False)]
            else:
                # Only the pool's token rows are scored, as the app scores its unlabelled examples.
                rows = np.repeat(bounds[pool], lengths[pool]) + (
                    np.arange(int(lengths[pool].sum())) - np.repeat(np.cumsum(lengths[pool]) - lengths[pool],
                                                                    lengths[pool]))
                pool_bounds = np.concatenate([[0], np.cumsum(lengths[pool])])
                _, scores = model.example_scores(
                    flat[rows], pool_bounds, strategy=strategy, aggregation=aggregation,
                    density=None if density is None else density[pool], rng=rng)
                picked = acquisition.select_batch(strategy, scores=scores, embeddings=example_vectors[pool],
                                                  batch_size=k, diversity=spec.diversity, rng=rng)
                chosen = pool[picked]
        update_seconds = time.perf_counter() - started
        update_cpu = time.process_time() - cpu_started
        report_started = time.perf_counter()
        if model is not None:
            if bayes.search_due(model.posterior):  # the report job's first step, whatever report_every (above)
                try:
                    model = model.search_prior(vectors, targets)
                except bayes.ModelFitError:
                    pass
            if updates % max(1, report_every) == 0 or remaining <= 0:
                model.calibrate(vectors, targets, rng=np.random.default_rng(report_seed))
            previous = model
        updates += 1
        report_seconds = time.perf_counter() - report_started
        point: dict[str, float] = {"n_labels": int(len(order)), "n_tokens": int(lengths[order].sum()),
                                   **_span_evaluate(model, test_vectors, test_tags, tagset)}
        point["update_seconds"] = float(update_seconds)
        point["update_cpu_seconds"] = float(update_cpu)
        point["report_seconds"] = float(report_seconds)
        points.append(point)
        if progress is not None:
            progress(strategy, seed, len(order), point)
        if trace is not None:
            trace.append({"n_labels": len(order), "chosen": [int(i) for i in chosen]})
        if remaining <= 0:
            break
        is_labelled[chosen] = True  # the simulated annotator answers with the gold tags
        order.extend(int(i) for i in chosen)
    return points


def summarise_spans(result: dict[str, Any]) -> None:
    """Each strategy's summary for span tagging: the classification keys (on macro-F1 over entity
    labels) plus the entity-F1 ones; ``labels_to_reach_random_final`` / ``ratio_to_random`` are on
    entity F1 here (the headline NER figure), with the tokens labelled at that point beside them."""
    summarise(result)
    strategies = result["strategies"]
    target = random_budget = random_tokens = None
    if "random" in strategies:
        n_labels, curve = _mean_curve(strategies["random"]["runs"], "entity_f1")
        target, random_budget = float(curve[-1]), int(n_labels[-1])
        random_tokens = float(_mean_curve(strategies["random"]["runs"], "n_tokens")[1][-1])
    for entry in strategies.values():
        n_labels, curve = _mean_curve(entry["runs"], "entity_f1")
        tokens = _mean_curve(entry["runs"], "n_tokens")[1]
        reached = reached_tokens = None
        if target is not None:
            hits = np.flatnonzero(curve >= target - 1e-12)
            if hits.size:
                reached, reached_tokens = int(n_labels[hits[0]]), float(tokens[hits[0]])
        entry["summary"].update({
            "auc_entity_f1": _auc(n_labels, curve),
            "final_entity_f1": float(curve[-1]),
            "target_entity_f1": target,
            "labels_to_reach_random_final": reached,
            "ratio_to_random": (reached / random_budget) if reached is not None and random_budget else None,
            "tokens_to_reach_random_final": reached_tokens,
            "random_tokens_at_budget": random_tokens,
            "token_ratio_to_random": (reached_tokens / random_tokens)
            if reached_tokens is not None and random_tokens else None,
            "final_tokens": float(tokens[-1]),
        })


def simulate_spans(
    *,
    train_vectors: Sequence[np.ndarray],
    train_tags: Sequence[np.ndarray],
    test_vectors: Sequence[np.ndarray],
    test_tags: Sequence[np.ndarray],
    label_names: Sequence[str],
    strategies: Sequence[str] = ("random", acquisition.DEFAULT_STRATEGY),
    seed_size: int = 50,
    batch_size: int = 20,
    budget: int = 1000,
    repeats: int = 3,
    aggregation: str = spans.DEFAULT_AGGREGATION,
    progress: ProgressCallback | None = None,
    report_every: int = 1,
    traces: dict[tuple[str, int], list[dict[str, Any]]] | None = None,
) -> dict[str, Any]:
    """Span-tagging learning curves in the harness's JSON shape (``simulate``'s), budget and batches in
    examples. Tags are ids of ``spans.TagSet(label_names)``. Each point carries ``entity_f1`` (strict,
    micro) beside ``macro_f1`` (entity F1 averaged over labels), ``accuracy`` (token), ``ece`` (token
    tags) and ``n_tokens`` (tokens labelled)."""
    for name in strategies:
        acquisition.get_strategy(name)
    if aggregation not in spans.AGGREGATIONS:
        raise ValueError(f"unknown aggregation {aggregation!r}; use one of {', '.join(spans.AGGREGATIONS)}")
    tagset = spans.TagSet(label_names)
    dim = next((int(v.shape[1]) for v in train_vectors if len(v)), 0)
    result: dict[str, Any] = {
        "strategies": {},
        "config": {
            "task": "ner",
            "strategies": list(strategies),
            "seed_size": seed_size,
            "batch_size": batch_size,
            "budget": int(min(budget, len(train_tags))),
            "requested_budget": budget,
            "repeats": repeats,
            "multi_label": False,
            "n_classes": tagset.size,
            "label_names": list(label_names),
            "tags": tagset.names,
            "aggregation": aggregation,
            "n_train": len(train_tags),
            "n_test": len(test_tags),
            "n_train_tokens": int(sum(len(t) for t in train_tags)),
            "n_test_tokens": int(sum(len(t) for t in test_tags)),
            "dim": dim,
        },
    }
    with threadpool_limits(limits=1, user_api="blas"):
        run_repeats(result, strategies, repeats, lambda name, seed: run_span_strategy(
            name, train_vectors=train_vectors, train_tags=train_tags, test_vectors=test_vectors, test_tags=test_tags,
            tagset=tagset, seed_size=seed_size, batch_size=batch_size, budget=budget, seed=seed,
            aggregation=aggregation, progress=progress, report_every=report_every,
            trace=None if traces is None else traces.setdefault((name, seed), []),
        ))
    summarise_spans(result)
    return result


def cached_token_vectors(encoder: Any, texts: Sequence[str], offsets: Sequence[Sequence[Sequence[int]]],
                         cache_dir: str | Path, *, key: str, pooling: str | None = None,
                         progress: Callable[[int, int], None] | None = None) -> list[np.ndarray]:
    """Token vectors of a file's texts, cached on disk per (encoder and pooling, ``key``) as float16.

    ``key`` names the file's content (e.g. its sha1), so an edited file is encoded again. The
    vectors come back float16, as the app's pool store keeps them.
    """
    if pooling is None:
        from learning.encoder import DEFAULT_TOKEN_POOLING

        pooling = DEFAULT_TOKEN_POOLING
    name = encoder.token_name(pooling)
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    path = Path(cache_dir) / safe / f"{key}.npz"
    if path.exists():
        with np.load(path, allow_pickle=False) as data:
            if int(data["bounds"][-1]) == sum(len(o) for o in offsets) and len(data["bounds"]) == len(texts) + 1:
                return spans.unpack(data["flat"], data["bounds"])
    vectors = encoder.encode_tokens(texts, offsets, pooling=pooling, progress=progress)
    flat, bounds = spans.pack(vectors, np.float16)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, flat=flat, bounds=bounds)
    tmp.replace(path)
    return spans.unpack(flat, bounds)

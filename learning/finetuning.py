"""The slow loop: fine-tune a project's encoder on its labels in the background, and let the fine-tuned encoder
replace the fast model's only when it is better on labels it never saw.

`request_finetune` (the Versions page's button, or `finetune_when_labels_grew` after a model update) queues
`learning.jobs.finetune_project` on the `gpu` queue; `run_finetune` then

1. holds out a stratified share of the labelled items (LABELHUB_FINETUNE_HELDOUT, at least one per label that has
   two or more examples);
2. fits the Bayesian layer on the current encoder's vectors of the rest and scores the held-out items: the current
   model's figures, fitted without them;
3. fine-tunes the encoder on the rest (`learning.finetune`) and saves it as FINETUNE_DIR/project-<id>/finetuned-v<n>/;
4. re-embeds the pool with it (EmbeddingChunk rows under its own name: nothing of the current encoder's changes);
5. fits the same Bayesian layer on the new vectors of the same rest and scores the same held-out items;
6. records the candidate model version, fitted on every label as a model update is (`learning.actions.fit`).
   If its held-out macro-F1 is higher, it scores the queue, its encoder becomes the project's
   (`learning.models.ProjectEncoder`, which the fast loop embeds, fits and scores with from then on) and it is
   announced like any new version (serving promotes it unless a manager pinned one); else it is kept with its
   figures and serves nothing. Managers can promote either on the Versions page; a promotion of any version makes
   its encoder the project's (`version_promoted`).

Nothing the fast loop or serving reads changes before step 6, which is one transaction: cancelling between steps, or
a worker killed at any point, leaves the serving model as it was. A killed worker stops writing the run's heartbeat;
the next look at the project (`recover_stale`: the Versions page, the API, a new request) marks the run failed.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable
from dataclasses import asdict
from datetime import timedelta
from pathlib import Path
from typing import IO, Any

import numpy as np
from django.conf import settings
from django.core.cache import cache
from django.db import IntegrityError, connection, transaction
from django.db.models import Max
from django.utils import timezone
from threadpoolctl import threadpool_limits

from annotation.models import Annotation
from labelhub.errors import ActionError, ConflictError
from labelhub.jobs import enqueue, job_waiting, uses_rq
from learning import actions, bayes, events, exports, finetune_spans, metrics, span_loop, store
from learning import spans as spanml
from learning.finetune import METHODS, FinetuneCancelled, FinetuneConfig, FinetuneResult, finetune, heldout_split
from learning.loop_base import TrainingError, finetuned_encoder
from learning.models import (
    FINETUNE_ACTIVE,
    EmbeddingChunk,
    FinetuneRun,
    FinetuneStatus,
    ModelVersion,
    ProjectEncoder,
    TrainingRun,
)
from projects.models import Example, Project

logger = logging.getLogger(__name__)

QUEUE = "gpu"
# Bootstrap resamples of the held-out items for the intervals (paired: both models on the same resamples).
N_BOOTSTRAP = 1000
# How often the worker writes progress and looks for a cancel request, at most.
PROGRESS_SECONDS = 1.0


def job_id(run_pk: int) -> str:
    return f"labelhub-finetune-{run_pk}"


def relative_folder(project_id: int, number: int) -> str:
    return f"project-{project_id}/finetuned-v{number}"


# --- Asking for one, cancelling it, noticing a lost one -----------------------------------------------------------


def check_can_finetune(project: Project) -> actions.TrainingSet | span_loop.SpanTrainingSet:
    """The project's labels if a fine-tune can learn from them; ActionError (400) saying why not otherwise."""
    if project.is_span:
        return _check_spans(project)
    if project.is_multi_label:
        raise ActionError("Fine-tuning covers single-label projects; multi-label projects keep the frozen encoder.")
    if settings.FINETUNE_METHOD not in METHODS:
        raise ActionError(f"LABELHUB_FINETUNE_METHOD is {settings.FINETUNE_METHOD!r}; set it to one of "
                          f"{', '.join(METHODS)}.", status=503)
    data = actions.training_set(project)
    n = len(data.example_ids)
    if n < settings.FINETUNE_MIN_LABELS:
        raise ActionError(
            f"Fine-tuning needs at least {settings.FINETUNE_MIN_LABELS:,} labelled examples "
            f"(LABELHUB_FINETUNE_MIN_LABELS); this project has {n:,}. Label more first: with fewer, the comparison "
            "on held-out labels cannot tell a better encoder from chance.")
    counts = np.bincount(np.asarray(data.targets, dtype=np.int64), minlength=len(data.label_keys))
    if int((counts >= 2).sum()) < 2:
        raise ActionError("Fine-tuning needs at least two labels with two or more examples each, so that both the "
                          "fine-tune and the held-out comparison see more than one label.")
    return data


def _check_spans(project: Project) -> span_loop.SpanTrainingSet:
    """A span project's labelled sentences if a token-classification fine-tune can learn from them."""
    data = span_loop.span_training_set(project)
    n = len(data.example_ids)
    if n < settings.FINETUNE_MIN_LABELS:
        raise ActionError(
            f"Fine-tuning needs at least {settings.FINETUNE_MIN_LABELS:,} labelled examples "
            f"(LABELHUB_FINETUNE_MIN_LABELS); this project has {n:,} usable ones. Label more first: with fewer, the "
            "comparison on held-out labels cannot tell a better encoder from chance.")
    with_entities = sum(1 for spans in data.spans if spans)
    if with_entities < 2:
        raise ActionError("Fine-tuning needs at least two labelled examples with a tagged entity, so that both the "
                          "fine-tune and the held-out comparison see entities; tag the entities of a few more.")
    return data


def request_finetune(project: Project, *, user: Any, reason: str) -> FinetuneRun:
    """Queue a fine-tune of the project's encoder on the `gpu` queue; one queued or running per project."""
    recover_stale(project)
    data = check_can_finetune(project)
    by = user if getattr(user, "is_authenticated", False) else None
    try:
        with transaction.atomic():
            number = (FinetuneRun.objects.filter(project=project).aggregate(n=Max("number"))["n"] or 0) + 1
            run = FinetuneRun.objects.create(project=project, number=number, reason=reason[:200], requested_by=by,
                                             method=finetune_spans.METHOD if project.is_span
                                             else settings.FINETUNE_METHOD, n_labels=len(data.example_ids))
    except IntegrityError:
        raise ConflictError("A fine-tune of this project is already queued or running: wait for it to finish, "
                            "or cancel it first.") from None
    enqueue("learning.jobs.finetune_project", run.pk, queue=QUEUE, job_id=job_id(run.pk),
            on_failure=lambda: _fail_unqueued(run.pk))
    return run


def _fail_unqueued(run_pk: int) -> None:
    FinetuneRun.objects.filter(pk=run_pk, status=FinetuneStatus.QUEUED).update(
        status=FinetuneStatus.FAILED, finished_at=timezone.now(),
        error="Could not be queued (the job queue was unreachable). Nothing changed; ask again later.")


def cancel_finetune(project: Project, *, user: Any) -> FinetuneRun:
    """Cancel the project's queued or running fine-tune: a queued one at once, a running one at its next step."""
    run = FinetuneRun.objects.filter(project=project, status__in=FINETUNE_ACTIVE).first()
    if run is None:
        raise ConflictError("No fine-tune of this project is queued or running.")
    now = timezone.now()
    who = getattr(user, "username", "") or "someone"
    if not FinetuneRun.objects.filter(pk=run.pk, status=FinetuneStatus.QUEUED).update(
            status=FinetuneStatus.CANCELLED, finished_at=now, cancel_requested_at=now,
            error=f"Cancelled by {who} before it started."):
        FinetuneRun.objects.filter(pk=run.pk, status=FinetuneStatus.RUNNING).update(
            cancel_requested_at=now, error=f"Cancelled by {who}.")
    run.refresh_from_db()
    return run


def recover_stale(project: Project) -> int:
    """Mark failed the project's fine-tune whose worker died (running, no heartbeat for FINETUNE_STALE_SECONDS) or
    whose job was lost before a worker took it; remove what it left. Returns how many."""
    now = timezone.now()
    cutoff = now - timedelta(seconds=settings.FINETUNE_STALE_SECONDS)
    found = 0
    for run in FinetuneRun.objects.filter(project=project, status__in=FINETUNE_ACTIVE):
        if run.status == FinetuneStatus.RUNNING:
            seen = run.heartbeat_at or run.started_at or run.requested_at
            if seen >= cutoff:
                continue
            error = (f"Interrupted: the worker stopped (no sign of life since {seen:%Y-%m-%d %H:%M:%S} UTC, "
                     f"during {run.phase or 'the start'}). The serving model is unchanged; fine-tune again.")
        else:
            if run.requested_at >= cutoff or not uses_rq() or job_waiting(job_id(run.pk), QUEUE):
                continue  # still waiting for a worker on the gpu queue (or no way to tell: the in-process runner)
            error = "Lost before a worker took it (the job queue lost it). Nothing changed; fine-tune again."
        if FinetuneRun.objects.filter(pk=run.pk, status=run.status).update(
                status=FinetuneStatus.FAILED, finished_at=now, error=error):
            logger.warning("fine-tune %s of project %s: %s", run.number, project.pk, error)
            discard(run)
            found += 1
    return found


def discard(run: FinetuneRun) -> None:
    """Remove a failed or cancelled run's encoder folder and pool vectors (nothing refers to them)."""
    if run.encoder and not ModelVersion.objects.filter(project_id=run.project_id, encoder=run.encoder).exists():
        EmbeddingChunk.objects.filter(project_id=run.project_id, encoder=run.encoder).delete()
        span_loop.drop_tokens(run.project_id, run.encoder)  # a span project's token vectors (none otherwise)
    folder = Path(settings.FINETUNE_DIR) / relative_folder(run.project_id, run.number)
    for path in (folder, *folder.parent.glob(f".{folder.name}.tmp-*")):
        shutil.rmtree(path, ignore_errors=True)


def finetune_when_labels_grew(version: ModelVersion) -> FinetuneRun | None:
    """After a model update: queue a fine-tune when the labels have grown by FINETUNE_GROWTH since the last one (and
    number at least FINETUNE_MIN_LABELS), if LABELHUB_FINETUNE_AUTO is on. Never raises."""
    project = version.project
    if not settings.FINETUNE_AUTO or project.is_multi_label:
        return None
    n = int(version.n_labels)
    if n < settings.FINETUNE_MIN_LABELS:
        return None
    try:
        if FinetuneRun.objects.filter(project=project, status__in=FINETUNE_ACTIVE).exists():
            recover_stale(project)
            return None
        last = FinetuneRun.objects.filter(project=project).order_by("-number").first()
        if last is not None and n < last.n_labels * (1 + settings.FINETUNE_GROWTH):
            return None
        if getattr(actions.project_encoder(project.pk), "model_path", None) is None:
            return None  # an encoder without weights on disk (a test's stand-in) cannot be fine-tuned
        reason = (f"Automatic: {n:,} labels, {n / last.n_labels - 1:.0%} more than fine-tune {last.number}"
                  if last is not None and last.n_labels else f"Automatic: {n:,} labels")
        return request_finetune(project, user=None, reason=reason)
    except ActionError:
        return None
    except Exception:  # noqa: BLE001 - the model update this follows has succeeded already
        logger.exception("project %s: could not queue an automatic fine-tune", project.pk)
        return None


def version_promoted(version: ModelVersion) -> None:
    """A version now serves (a manager's promotion, a rollback, an automatic one): the fast loop follows its encoder,
    so later updates, the queue's scores and serving use the same vectors."""
    run = (FinetuneRun.objects.filter(project_id=version.project_id, encoder=version.encoder)
           .exclude(encoder_path="").order_by("-number").first())
    choice = ProjectEncoder.objects.filter(project_id=version.project_id).first()
    current = choice.finetune_run_id if choice else None
    if (run.pk if run else None) == current:
        return
    ProjectEncoder.objects.update_or_create(project_id=version.project_id,
                                            defaults={"finetune_run": run, "updated_at": timezone.now()})
    if run is not None and not run.is_promoted:
        FinetuneRun.objects.filter(pk=run.pk).update(is_promoted=True, promoted_at=timezone.now())
    cache.delete(actions.model_status_key(version.project_id))
    # Items imported since that encoder last embedded the pool need its vectors (then a model update follows).
    enqueue("learning.jobs.embed_project", version.project_id)


# --- The job ------------------------------------------------------------------------------------------------------


class _Tracker:
    """The worker's side of the run's row: progress (at most every PROGRESS_SECONDS), the cancel request, and a
    heartbeat thread that says the worker is alive even while one step takes long (loading, exporting, fitting)."""

    def __init__(self, run: FinetuneRun) -> None:
        self.pk = run.pk
        self._written = 0.0
        self._checked = 0.0
        self._cancelled = False
        self._started = time.monotonic()
        self._stop = threading.Event()
        interval = max(0.5, min(10.0, settings.FINETUNE_STALE_SECONDS / 4))
        self._thread = threading.Thread(target=self._beat, args=(interval,), daemon=True,
                                         name=f"finetune-heartbeat-{run.pk}")

    def __enter__(self) -> _Tracker:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _beat(self, interval: float) -> None:
        try:
            while not self._stop.wait(interval):
                FinetuneRun.objects.filter(pk=self.pk, status=FinetuneStatus.RUNNING).update(
                    heartbeat_at=timezone.now())
        except Exception:  # noqa: BLE001 - a lost heartbeat only makes the run look stale sooner
            logger.exception("fine-tune heartbeat of run %s stopped", self.pk)
        finally:
            connection.close()

    def update(self, **fields: Any) -> None:
        FinetuneRun.objects.filter(pk=self.pk).update(heartbeat_at=timezone.now(), **fields)

    def phase(self, name: str, **fields: Any) -> None:
        self.check()
        self._started = time.monotonic()
        self.update(phase=name, seconds_left=None, **fields)

    def left(self, done: int, total: int) -> float | None:
        elapsed = time.monotonic() - self._started
        return elapsed / done * (total - done) if done else None

    def steps(self, step: int, total: int, per_epoch: int) -> None:
        now = time.monotonic()
        if step < total and now - self._written < PROGRESS_SECONDS:
            return
        self._written = now
        per = max(per_epoch, 1)
        epochs = max(1, -(-total // per))
        self.update(step=step, total_steps=total, epoch=min(epochs, max(1, -(-step // per))), epochs=epochs,
                    seconds_left=self.left(step, total))

    def embedded(self, done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and now - self._written < PROGRESS_SECONDS:
            return
        self._written = now
        self.update(embedded=done, to_embed=total, seconds_left=self.left(done, total))
        self.check()

    def cancelled(self) -> bool:
        now = time.monotonic()
        if not self._cancelled and now - self._checked >= PROGRESS_SECONDS:
            self._checked = now
            row = FinetuneRun.objects.filter(pk=self.pk).values_list("status", "cancel_requested_at").first()
            self._cancelled = row is None or row[0] != FinetuneStatus.RUNNING or row[1] is not None
        return self._cancelled

    def check(self) -> None:
        if self.cancelled():
            raise FinetuneCancelled("fine-tuning was cancelled")


def _claim(run_pk: int) -> FinetuneRun | None:
    now = timezone.now()
    try:
        claimed = FinetuneRun.objects.filter(pk=run_pk, status=FinetuneStatus.QUEUED).update(
            status=FinetuneStatus.RUNNING, started_at=now, heartbeat_at=now, phase="starting")
    except IntegrityError:
        return None
    if not claimed:
        return None  # cancelled while it waited, or another worker took it
    return FinetuneRun.objects.select_related("project").get(pk=run_pk)


def run_finetune(run_pk: int) -> FinetuneRun | None:
    """The job: claim the queued run, fine-tune, re-embed, compare, promote or keep. Safe to call twice."""
    run = _claim(run_pk)
    if run is None:
        return None
    with _Tracker(run) as tracker:
        try:
            _finetune(run, tracker)
        except FinetuneCancelled:
            FinetuneRun.objects.filter(pk=run.pk, status=FinetuneStatus.RUNNING).update(
                status=FinetuneStatus.CANCELLED, finished_at=timezone.now(), seconds_left=None)
            # The run's row is gone when its project was deleted meanwhile (the tracker then reads it as a
            # cancel): its files go all the same, with what this worker knows of it.
            discard(FinetuneRun.objects.filter(pk=run.pk).first() or run)
        except (TrainingError, bayes.ModelFitError, ActionError, ValueError) as exc:
            _failed(run, f"{exc} The serving model is unchanged.")
        except Exception as exc:  # noqa: BLE001 - a failed run must be recorded, never crash-loop the worker
            logger.exception("fine-tune run %s failed", run.pk)
            _failed(run, f"Unexpected error: {exc!r}. The serving model is unchanged.")
    return FinetuneRun.objects.filter(pk=run.pk).first()


def _failed(run: FinetuneRun, error: str) -> None:
    FinetuneRun.objects.filter(pk=run.pk, status=FinetuneStatus.RUNNING).update(
        status=FinetuneStatus.FAILED, finished_at=timezone.now(), error=error, seconds_left=None)
    discard(FinetuneRun.objects.get(pk=run.pk))


def finetune_config(device: str | None = None) -> FinetuneConfig:
    """`FinetuneConfig.for_device` with the LABELHUB_FINETUNE_* overrides."""
    if device is None:
        device = settings.FINETUNE_DEVICE
        if device == "auto":
            from learning.encoder import cuda_available

            device = "cuda" if cuda_available() else "cpu"
    overrides: dict[str, Any] = {"method": settings.FINETUNE_METHOD}
    for name in ("epochs", "min_steps", "batch_size", "max_length"):
        value = getattr(settings, f"FINETUNE_{name.upper()}")
        if value > 0:
            overrides[name] = value
    return FinetuneConfig.for_device(device, **overrides)


def _fit_and_predict(X_train: np.ndarray, y_train: np.ndarray, X_held: np.ndarray, n_classes: int) -> np.ndarray:
    """The fast loop's fit (cold, on these rows only) and its probabilities on the held-out rows."""
    with threadpool_limits(limits=1, user_api="blas"):
        posterior = bayes.fit(X_train, y_train, n_classes=n_classes)
        return posterior.predict_proba(X_held)


def compare(y: np.ndarray, current: np.ndarray, candidate: np.ndarray, n_classes: int, seed: int) -> dict[str, Any]:
    """Both models' held-out figures with 95 % bootstrap intervals over the same resamples of the held-out items,
    and the interval of the macro-F1 difference (candidate − current)."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(y), (N_BOOTSTRAP, len(y)))

    def figures(proba: np.ndarray) -> tuple[dict[str, Any], np.ndarray]:
        pred = proba.argmax(axis=1)
        cells = n_classes * n_classes
        flat = np.arange(N_BOOTSTRAP)[:, None] * cells + y[idx] * n_classes + pred[idx]
        cms = np.bincount(flat.ravel(), minlength=N_BOOTSTRAP * cells).reshape(N_BOOTSTRAP, n_classes, n_classes)
        _, _, f1 = metrics._prf_from_confusion(cms)
        present = (cms.sum(axis=1) + cms.sum(axis=2)) > 0
        boot_f1 = (f1 * present).sum(axis=1) / np.maximum(present.sum(axis=1), 1)
        boot_acc = np.trace(cms, axis1=1, axis2=2) / len(y)
        f1_low, f1_high = np.quantile(boot_f1, [0.025, 0.975])
        acc_low, acc_high = np.quantile(boot_acc, [0.025, 0.975])
        return {
            "macro_f1": {"value": metrics.macro_f1(y, pred, n_classes), "low": float(f1_low), "high": float(f1_high)},
            "accuracy": {"value": metrics.accuracy(y, pred), "low": float(acc_low), "high": float(acc_high)},
            "ece": metrics.expected_calibration_error(proba, y),
        }, boot_f1

    current_figures, current_boot = figures(current)
    candidate_figures, candidate_boot = figures(candidate)
    diff = candidate_boot - current_boot
    low, high = np.quantile(diff, [0.025, 0.975])
    gain = candidate_figures["macro_f1"]["value"] - current_figures["macro_f1"]["value"]
    return {
        "n_heldout": int(len(y)), "current": current_figures, "candidate": candidate_figures,
        "difference": {"value": float(gain), "low": float(low), "high": float(high)},
        "share_of_resamples_better": float((diff > 0).mean()),
        # The rule: the candidate replaces the current model only if its held-out macro-F1 is higher.
        "candidate_wins": bool(gain > 0),
    }


def _texts(ids: np.ndarray) -> list[str]:
    rows = dict(Example.objects.filter(id__in=ids.tolist()).values_list("id", "text"))
    return [rows[int(i)] for i in ids]


def _finetune(run: FinetuneRun, tracker: _Tracker) -> None:
    project = run.project
    if project.is_span:
        _finetune_spans(run, tracker)
        return
    data = check_can_finetune(project)
    assert isinstance(data, actions.TrainingSet)
    base = actions.project_encoder(project.pk)
    base_path = getattr(base, "model_path", None)
    if base_path is None:
        raise TrainingError(f"The encoder in use ({base.name}) has no weights on disk to fine-tune.")
    n_classes = len(data.label_keys)
    # Only labelled items with the current encoder's vectors: both sides are compared on the same items.
    _, ids, X_current, y = actions.embedded_labels(project, base.name, data)
    y = np.asarray(y, dtype=np.int64)
    train_rows, held_rows = heldout_split(y, n_classes, settings.FINETUNE_HELDOUT, seed=run.pk)
    if len(held_rows) == 0 or len(np.unique(y[train_rows])) < 2:
        raise TrainingError("Too few labelled examples with vectors to hold some out; label more, or wait for the "
                            "embedding job to finish.")
    train_ids, held_ids = ids[train_rows], ids[held_rows]
    _started(run, tracker, base, ids, train_rows, held_ids)

    # 2. The current encoder's model, fitted without the held-out items.
    tracker.phase("comparing")
    current_proba = _fit_and_predict(X_current[train_rows], y[train_rows], X_current[held_rows], n_classes)

    # 3. Fine-tune on the rest, into a temporary folder renamed when complete.
    texts = _texts(train_ids)

    def train(folder: Path, config: FinetuneConfig) -> FinetuneResult:
        per_epoch = -(-len(texts) // config.batch_size) if config.method == "classifier" else 0
        return finetune(base_path, texts, y[train_rows], n_classes=n_classes, out=folder, config=config,
                        progress=lambda step, total, _loss: tracker.steps(step, total, per_epoch or total),
                        should_stop=tracker.cancelled)

    encoder, final = _fine_tuned(run, tracker, base, train)

    # 4. Re-embed the pool with it.
    _reembed(project, encoder, tracker)

    # 5. The candidate's model on the new vectors of the same rest, scored on the same held-out items.
    tracker.phase("comparing")
    emb = store.load(project.pk, encoder.name)
    if not emb.has(ids).all():
        raise TrainingError("Labelled examples were deleted while the fine-tune ran, so the comparison has lost "
                            "its items; fine-tune again.")
    X_new = emb.vectors[emb.rows_of(ids)]
    candidate_proba = _fit_and_predict(X_new[train_rows], y[train_rows], X_new[held_rows], n_classes)
    comparison = compare(y[held_rows], current_proba, candidate_proba, n_classes, seed=run.pk)

    # 6. The candidate version, on every label (the fast loop's own fit), and the decision.
    def prepare(update: TrainingRun, timings: dict[str, float], wins: bool) -> Callable[[], ModelVersion]:
        fitted = actions.fit(update, timings, encoder_name=encoder.name)
        scored = (actions.score(update, fitted, timings) if wins else
                  actions.Scored(project.acquisition_strategy, [], np.empty(0, dtype=np.int64)))
        return lambda: actions.record(update, fitted, scored, timings)

    _decide(run, tracker, encoder, final, comparison, prepare)


def _finetune_spans(run: FinetuneRun, tracker: _Tracker) -> None:
    """The job for a span project: the same steps as `_finetune`, on labelled sentences and token vectors.

    Sentences (not tokens) are held out, stratified by whether they have an entity; both sides fit
    `learning.spans.SpanModel` (the fast loop's span model) on the token vectors of the same rest, and the
    candidate wins on a higher held-out entity F1 (`compare_spans`). The encoder is fine-tuned by token
    classification through the word vectors the span model reads (`learning.finetune_spans`)."""
    project = run.project
    data = check_can_finetune(project)
    assert isinstance(data, span_loop.SpanTrainingSet)
    base = actions.project_encoder(project.pk)
    base_path = getattr(base, "model_path", None)
    if base_path is None:
        raise TrainingError(f"The encoder in use ({base.name}) has no weights on disk to fine-tune.")
    ids = data.example_ids
    tagset = spanml.TagSet(data.label_keys)
    targets = span_loop.tag_targets(data, tagset)
    has_entity = np.array([int(len(spans) > 0) for spans in data.spans], dtype=np.int64)
    train_rows, held_rows = heldout_split(has_entity, 2, settings.FINETUNE_HELDOUT, seed=run.pk)
    if len(held_rows) == 0 or not has_entity[train_rows].any():
        raise TrainingError("Too few labelled examples with entities to hold some out; label more.")
    _started(run, tracker, base, ids, train_rows, ids[held_rows])

    # 2. The current encoder's span model, fitted without the held-out sentences.
    tracker.phase("comparing")
    current = _span_vectors(project, base, ids, targets)
    current_pred = _fit_and_predict_spans(current, targets, train_rows, held_rows, tagset)

    # 3. Fine-tune on the rest (token classification), into a temporary folder renamed when complete.
    def train(folder: Path, config: FinetuneConfig) -> FinetuneResult:
        per_epoch = -(-len(train_rows) // config.batch_size)
        return finetune_spans.finetune_tokens(
            base_path, [data.texts[i] for i in train_rows], [data.offsets[i] for i in train_rows],
            [targets[i] for i in train_rows], n_tags=len(tagset), out=folder, config=config,
            progress=lambda step, total, _loss: tracker.steps(step, total, per_epoch),
            should_stop=tracker.cancelled)

    encoder, final = _fine_tuned(run, tracker, base, train)

    # 4. Re-embed the pool with it: token vectors to its own token store, sentence vectors beside the current ones.
    _reembed(project, encoder, tracker)

    # 5. The candidate's span model on the new token vectors of the same rest, scored on the same held-out sentences.
    tracker.phase("comparing")
    if Example.objects.filter(id__in=ids.tolist()).count() < len(ids):
        raise TrainingError("Labelled examples were deleted while the fine-tune ran, so the comparison has lost "
                            "its items; fine-tune again.")
    candidate = _span_vectors(project, encoder, ids, targets)
    candidate_pred = _fit_and_predict_spans(candidate, targets, train_rows, held_rows, tagset)
    comparison = compare_spans([targets[i] for i in held_rows], current_pred, candidate_pred, tagset, seed=run.pk)

    # 6. The candidate version, on every label (the span loop's own fit), and the decision.
    def prepare(update: TrainingRun, timings: dict[str, float], wins: bool) -> Callable[[], ModelVersion]:
        fitted = span_loop.fit(update, timings, encoder=encoder)
        rows, labelled_ids, strategy = (span_loop.score(update, fitted, timings) if wins else
                                        ([], np.empty(0, dtype=np.int64), project.acquisition_strategy))
        return lambda: span_loop.record(update, fitted, rows, labelled_ids, strategy, timings)

    _decide(run, tracker, encoder, final, comparison, prepare)


def _started(run: FinetuneRun, tracker: _Tracker, base: Any, ids: np.ndarray, train_rows: np.ndarray,
             held_ids: np.ndarray) -> None:
    current_version = (ModelVersion.objects.filter(project=run.project, encoder=base.name)
                       .order_by("-number").first())
    tracker.update(n_labels=len(ids), n_train=len(train_rows), n_heldout=len(held_ids), base_encoder=base.name,
                   heldout_ids=[int(i) for i in held_ids], trained_ids=[int(i) for i in ids[train_rows]],
                   current_version=current_version,
                   to_embed=Example.objects.filter(project=run.project).count())


def _fine_tuned(run: FinetuneRun, tracker: _Tracker, base: Any,
                train: Callable[[Path, FinetuneConfig], FinetuneResult]) -> tuple[Any, Path]:
    """Step 3: ``train(folder, config)`` writes the fine-tuned encoder into a temporary folder, renamed into place
    when complete; returns the encoder loaded from there and its folder."""
    config = finetune_config()
    folder_name = relative_folder(run.project_id, run.number)
    final = Path(settings.FINETUNE_DIR) / folder_name
    scratch = final.parent / f".{final.name}.tmp-{os.getpid()}"
    shutil.rmtree(scratch, ignore_errors=True)
    final.parent.mkdir(parents=True, exist_ok=True)
    tracker.update(method=finetune_spans.METHOD if run.project.is_span else config.method, config=asdict(config))
    tracker.phase("fine-tuning", step=0, epoch=0)
    if config.device == "cpu":
        import torch

        torch.set_num_threads(max(1, settings.ENCODER_THREADS or 1))
    result = train(scratch, config)
    _mark_folder(scratch, run, base)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(scratch, final)
    tracker.phase("loading the fine-tuned encoder")  # with ONNX Runtime: its graph is exported once, here
    encoder = finetuned_encoder(folder_name)
    tracker.update(encoder=encoder.name, encoder_path=folder_name, finetune_seconds=result.seconds,
                   step=result.steps, total_steps=max(result.steps, 1), config=result.config)
    return encoder, final


def _reembed(project: Project, encoder: Any, tracker: _Tracker) -> None:
    """Step 4: the whole pool's vectors of the new encoder, under its own name (nothing of the current changes)."""
    all_ids = np.fromiter(Example.objects.filter(project=project).order_by("id").values_list("id", flat=True),
                          dtype=np.int64)
    tracker.phase("re-embedding", embedded=0, to_embed=len(all_ids))
    _embed(project, encoder, all_ids, tracker)


def _decide(run: FinetuneRun, tracker: _Tracker, encoder: Any, final: Path, comparison: dict[str, Any],
            prepare: Callable[[TrainingRun, dict[str, float], bool], Callable[[], ModelVersion]]) -> None:
    """Step 6: ``prepare(update, timings, wins)`` fits the candidate version on every label (and scores the queue
    if it wins) and returns what records it; recorded in one transaction with the run's outcome and, if it won,
    the project's new encoder."""
    project = run.project
    tracker.phase("recording")
    wins = comparison["candidate_wins"]
    update = TrainingRun(project=project, reason=f"fine-tune {run.number}")
    timings: dict[str, float] = {}
    with threadpool_limits(limits=1, user_api="blas"):
        record = prepare(update, timings, wins)
    with transaction.atomic():
        row = FinetuneRun.objects.select_for_update().get(pk=run.pk)
        if row.status != FinetuneStatus.RUNNING or row.cancel_requested_at is not None:
            raise FinetuneCancelled("fine-tuning was cancelled")
        version = record()
        row.candidate_version = version
        row.comparison = comparison
        row.status = FinetuneStatus.SUCCEEDED
        row.finished_at = timezone.now()
        row.phase, row.seconds_left = "", None
        if wins:
            ProjectEncoder.objects.update_or_create(project=project,
                                                    defaults={"finetune_run": row, "updated_at": timezone.now()})
            row.is_promoted, row.promoted_at = True, timezone.now()
        row.save()
    _write_card(final, row, version)
    if wins:
        cache.delete(actions.model_status_key(project.pk))
        # The serving layer promotes it (unless a manager pinned a version) and keeps its drift reference.
        events.model_version_recorded.send(sender=ModelVersion, version=version)
        actions.request_report(project.pk)
        if Example.objects.filter(project=project).count() > len(store.load(project.pk, encoder.name).example_ids):
            enqueue("learning.jobs.embed_project", project.pk)  # imported while it ran


def _span_vectors(project: Project, encoder: Any, ids: np.ndarray, targets: list[np.ndarray]) -> list[np.ndarray]:
    """The labelled sentences' token vectors of ``encoder`` (encoded now where this machine lacks them)."""
    vectors = span_loop.ensure_tokens(project, encoder, ids).get(ids)
    for v, t, pk in zip(vectors, targets, ids.tolist(), strict=True):
        if len(v) != len(t):
            raise TrainingError(f"Example {pk}: {len(t)} tokens but {len(v)} token vectors (its tokens changed "
                                "since it was encoded). Re-import it.")
    return vectors


def _fit_and_predict_spans(vectors: list[np.ndarray], targets: list[np.ndarray], train_rows: np.ndarray,
                           held_rows: np.ndarray, tagset: spanml.TagSet) -> list[spanml.SpanPrediction]:
    """The span loop's model (cold, on the training sentences only) and its decoded predictions on the held-out."""
    with threadpool_limits(limits=1, user_api="blas"):
        model = spanml.SpanModel.fit([vectors[i] for i in train_rows], [targets[i] for i in train_rows], tagset)
        return model.predict([vectors[i] for i in held_rows])


def compare_spans(gold: list[np.ndarray], current: list[spanml.SpanPrediction],
                  candidate: list[spanml.SpanPrediction], tagset: spanml.TagSet, seed: int) -> dict[str, Any]:
    """`compare` for span models: both models' held-out entity figures with 95 % bootstrap intervals over the same
    resamples of the held-out sentences, and the interval of the entity-F1 difference (candidate − current).

    The figures carry the classification names as a span report does (learning.span_quality): ``macro_f1`` is
    the entity F1 averaged over labels with gold entities, ``accuracy`` the share of sentences whose entities are
    all exactly right, ``ece`` the span calibration error; ``entity_f1`` (strict, micro, as seqeval) decides."""
    rng = np.random.default_rng(seed)
    n = len(gold)
    keys = list(tagset.keys)
    gold_entities = [spanml.entities_from_ids(t, tagset) for t in gold]
    weights = rng.multinomial(n, np.full(n, 1.0 / n), size=N_BOOTSTRAP).astype(np.float64)  # (B, n)
    present = np.zeros(len(keys), dtype=bool)
    for entities in gold_entities:
        for label, *_ in entities:
            present[keys.index(label)] = True

    def band(values: np.ndarray) -> tuple[float, float]:
        low, high = np.quantile(values, [0.025, 0.975])
        return float(low), float(high)

    def figures(predictions: list[spanml.SpanPrediction]) -> tuple[dict[str, Any], np.ndarray]:
        predicted = [spanml.entities_from_ids(p.tags, tagset) for p in predictions]
        counts = spanml.entity_counts(gold_entities, predicted, keys).astype(np.float64)  # (n, L, 3)
        totals = counts.sum(axis=0)
        micro = totals.sum(axis=0)
        _, _, f1 = spanml._prf(micro[0], micro[1], micro[2])
        _, _, per_label = spanml._prf(totals[:, 0], totals[:, 1], totals[:, 2])
        boot = np.einsum("bs,slc->blc", weights, counts)  # (B, L, 3)
        boot_micro = boot.sum(axis=1)
        _, _, boot_f1 = spanml._prf(boot_micro[:, 0], boot_micro[:, 1], boot_micro[:, 2])
        _, _, boot_label = spanml._prf(boot[..., 0], boot[..., 1], boot[..., 2])
        boot_macro = boot_label[:, present].mean(axis=1) if present.any() else np.zeros(N_BOOTSTRAP)
        exact = np.array([g == p for g, p in zip(gold_entities, predicted, strict=True)], dtype=np.float64)
        boot_exact = weights @ exact / n
        confidences = [(float(s["confidence"]), float((s["label"], s["start"], s["end"]) in gold_entities[i]))
                       for i, p in enumerate(predictions) for s in p.spans]
        ece = (spanml.span_calibration_error(np.array([c for c, _ in confidences]),
                                             np.array([ok for _, ok in confidences])) if confidences else None)
        return {
            "entity_f1": {"value": float(f1), **dict(zip(("low", "high"), band(boot_f1), strict=True))},
            "macro_f1": {"value": float(per_label[present].mean()) if present.any() else 0.0,
                         **dict(zip(("low", "high"), band(boot_macro), strict=True))},
            "accuracy": {"value": float(exact.mean()), **dict(zip(("low", "high"), band(boot_exact), strict=True))},
            "ece": ece,
            "n_predicted_entities": int(totals[:, 1].sum()),
        }, boot_f1

    current_figures, current_boot = figures(current)
    candidate_figures, candidate_boot = figures(candidate)
    diff = candidate_boot - current_boot
    low, high = band(diff)
    gain = candidate_figures["entity_f1"]["value"] - current_figures["entity_f1"]["value"]
    return {
        "metric": "entity_f1", "metric_name": "entity F1",
        "n_heldout": int(n), "n_gold_entities": int(sum(len(g) for g in gold_entities)),
        "current": current_figures, "candidate": candidate_figures,
        "difference": {"value": float(gain), "low": low, "high": high},
        "share_of_resamples_better": float((diff > 0).mean()),
        # The rule: the candidate replaces the current model only if its held-out entity F1 is higher.
        "candidate_wins": bool(gain > 0),
    }


def _mark_folder(folder: Path, run: FinetuneRun, base: Any) -> None:
    """Stamp config.json with the run, so each fine-tuned encoder's fingerprint (its vectors' name, its ONNX cache
    folder) is its own even when two have the same shape and size."""
    config_file = folder / "config.json"
    config = json.loads(config_file.read_text())
    config["labelhub"] = {"project": run.project_id, "finetune": run.number, "run": run.pk,
                          "base_encoder": base.name, "created_at": timezone.now().isoformat()}
    config_file.write_text(json.dumps(config, indent=2))


def _embed(project: Project, encoder: Any, ids: np.ndarray, tracker: _Tracker) -> None:
    total = len(ids)
    for start in range(0, total, settings.EMBED_BATCH):
        chunk = ids[start:start + settings.EMBED_BATCH]
        rows = dict(Example.objects.filter(id__in=chunk.tolist()).values_list("id", "text"))
        chunk = np.array([i for i in chunk.tolist() if i in rows], dtype=np.int64)  # deleted meanwhile
        if len(chunk) == 0:
            continue
        if project.is_span:
            # Token vectors to the new encoder's token store; the sentence vectors (their means) below, as the embed
            # job stores them (learning.actions._embed_missing).
            def step(done: int, _at: int = start) -> None:
                tracker.embedded(_at + done, total)

            vectors = span_loop.encode_chunk(project, encoder, chunk, progress=step)
        else:
            vectors = encoder.encode([rows[i] for i in chunk.tolist()],
                                     progress=lambda done, _n, _at=start: tracker.embedded(_at + done, total))
        EmbeddingChunk.objects.create(project=project, encoder=encoder.name, dim=vectors.shape[1], count=len(chunk),
                                      example_ids=chunk.tobytes(), vectors=vectors.astype(np.float16).tobytes())
        tracker.embedded(min(start + settings.EMBED_BATCH, total), total)


# --- The model card and the download ------------------------------------------------------------------------------


def model_card(run: FinetuneRun, version: ModelVersion | None) -> str:
    """README.md of a fine-tuned encoder's folder: what it is, what it learnt from, how it compared."""
    project = run.project
    labels = list(project.current_taxonomy().labels.filter(key__in=version.label_keys).values_list("key", "name")) \
        if version is not None else []
    names = dict(labels)
    comparison = run.comparison or {}
    lines = [
        "---",
        "library_name: sentence-transformers",
        "pipeline_tag: sentence-similarity",
        "tags: [sentence-transformers, feature-extraction, labelhub, fine-tuned]",
        "---",
        "",
        f"# {project.name}: fine-tuned encoder v{run.number}",
        "",
        (f"A transformer encoder fine-tuned by LabelHub by token classification on the entity spans of project "
         f"*{project.name}*: LabelHub reads one vector per word (the mean of the word's sub-words' last hidden "
         "states). Load it with `transformers.AutoModel` or `sentence_transformers.SentenceTransformer(folder)`. The "
         "tagging head used while fine-tuning is not kept: LabelHub fits a Bayesian last layer over the BIO tags on "
         "these word vectors (`labelhub_head/` holds the one of the candidate model version)."
         if project.is_span else
         f"A sentence encoder (mean pooling, normalised vectors) fine-tuned by LabelHub on the labels of project "
         f"*{project.name}*. Load it with `sentence_transformers.SentenceTransformer(folder)` or "
         "`transformers.AutoModel`. The classification head used while fine-tuning is not kept: LabelHub fits a "
         "Bayesian last layer on these vectors (`labelhub_head/` holds the one of the candidate model version)."),
        "",
        f"- Base model: `{run.base_encoder}`",
        f"- Method: {run.method} ({', '.join(f'{k}={v}' for k, v in sorted((run.config or {}).items()))})",
        f"- Data: {run.n_train:,} labelled examples fine-tuned on; {run.n_heldout:,} more held out for the comparison "
        f"({run.n_labels:,} in all)",
        f"- Date: {(run.finished_at or run.requested_at):%Y-%m-%d %H:%M} UTC",
        f"- Fine-tuning time: {run.finetune_seconds or 0:.0f} s",
    ]
    if version is not None:
        lines.append(f"- Labels ({len(version.label_keys)}): "
                     + ", ".join(f"{names.get(k, k)} (`{k}`)" for k in version.label_keys))
        lines.append(f"- LabelHub model version: v{version.number}")
    if comparison and comparison.get("metric") == "entity_f1":
        cur, cand, diff = comparison["current"], comparison["candidate"], comparison["difference"]

        def ranged(figure: dict[str, Any]) -> str:
            return f"{figure['value']:.3f} ({figure['low']:.3f}–{figure['high']:.3f})"

        def ece(value: float | None) -> str:
            return "–" if value is None else f"{value:.3f}"

        lines += [
            "",
            f"## Held-out comparison ({comparison['n_heldout']:,} labelled examples neither model was fitted on, "
            f"{comparison.get('n_gold_entities', 0):,} entities)",
            "",
            "| | entity F1 (95 % interval) | macro entity F1 | examples exactly right | span ECE |",
            "|---|---|---|---|---|",
            f"| current encoder | {ranged(cur['entity_f1'])} | {cur['macro_f1']['value']:.3f} | "
            f"{cur['accuracy']['value']:.3f} | {ece(cur['ece'])} |",
            f"| this encoder | {ranged(cand['entity_f1'])} | {cand['macro_f1']['value']:.3f} | "
            f"{cand['accuracy']['value']:.3f} | {ece(cand['ece'])} |",
            "",
            f"Difference {diff['value']:+.3f} entity F1 (95 % interval {diff['low']:+.3f} to {diff['high']:+.3f}): "
            + ("promoted, it replaced the current encoder." if comparison["candidate_wins"]
               else "not better, kept as a version that does not serve."),
        ]
    elif comparison:
        cur, cand, diff = comparison["current"], comparison["candidate"], comparison["difference"]
        lines += [
            "",
            f"## Held-out comparison ({comparison['n_heldout']:,} labelled examples neither model was fitted on)",
            "",
            "| | macro-F1 (95 % interval) | accuracy | ECE |",
            "|---|---|---|---|",
            f"| current encoder | {cur['macro_f1']['value']:.3f} ({cur['macro_f1']['low']:.3f}–"
            f"{cur['macro_f1']['high']:.3f}) | {cur['accuracy']['value']:.3f} | {cur['ece']:.3f} |",
            f"| this encoder | {cand['macro_f1']['value']:.3f} ({cand['macro_f1']['low']:.3f}–"
            f"{cand['macro_f1']['high']:.3f}) | {cand['accuracy']['value']:.3f} | {cand['ece']:.3f} |",
            "",
            f"Difference {diff['value']:+.3f} (95 % interval {diff['low']:+.3f} to {diff['high']:+.3f}): "
            + ("promoted, it replaced the current encoder." if comparison["candidate_wins"]
               else "not better, kept as a version that does not serve."),
        ]
    return "\n".join(lines) + "\n"


def _write_card(folder: Path, run: FinetuneRun, version: ModelVersion | None) -> None:
    try:
        (folder / "README.md").write_text(model_card(run, version), encoding="utf-8")
    except OSError:
        logger.warning("could not write the model card of %s", folder, exc_info=True)


def encoder_archive(run: FinetuneRun) -> IO[bytes]:
    """A zip of the fine-tuned encoder's folder (Hugging Face layout) with its model card and the candidate version's
    Bayesian head, in a temporary file (the weights are tens of MB)."""
    folder = Path(settings.FINETUNE_DIR) / run.encoder_path if run.encoder_path else None
    if run.status != FinetuneStatus.SUCCEEDED or folder is None or not (folder / "config.json").exists():
        raise ActionError("This fine-tune has no encoder to download (it did not finish, or its folder is gone).",
                          status=404)
    version = run.candidate_version
    top = f"finetuned-{run.project_id}-v{run.number}"
    handle = tempfile.TemporaryFile()
    with zipfile.ZipFile(handle, "w") as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file() and path.name != "README.md":
                # Weights do not compress; the small text files do.
                kind = zipfile.ZIP_STORED if path.suffix in {".safetensors", ".bin"} else zipfile.ZIP_DEFLATED
                archive.write(path, f"{top}/{path.relative_to(folder)}", compress_type=kind)
        archive.writestr(f"{top}/README.md", model_card(run, version), compress_type=zipfile.ZIP_DEFLATED)
        if version is not None:
            archive.writestr(f"{top}/labelhub_head/posterior.npz", bytes(version.artifact))
            archive.writestr(f"{top}/labelhub_head/model.json",
                             json.dumps(exports.model_manifest(version), indent=2, ensure_ascii=False))
    handle.seek(0)
    return handle


# --- What the Versions page and the API show ----------------------------------------------------------------------


def describe(run: FinetuneRun) -> dict[str, Any]:
    """One run as the API returns it."""

    def version(v: ModelVersion | None) -> dict[str, Any] | None:
        if v is None:
            return None
        return {"number": v.number, "n_labels": v.n_labels, "encoder": v.encoder, "created_at": v.created_at}

    return {
        "number": run.number, "status": run.status, "reason": run.reason, "error": run.error,
        "requested_at": run.requested_at, "started_at": run.started_at, "finished_at": run.finished_at,
        "cancel_requested": run.cancel_requested_at is not None, "method": run.method, "n_labels": run.n_labels,
        "n_train": run.n_train, "n_heldout": run.n_heldout, "progress": run.progress(),
        "base_encoder": run.base_encoder, "encoder": run.encoder, "finetune_seconds": run.finetune_seconds,
        "current_version": version(run.current_version), "candidate_version": version(run.candidate_version),
        "comparison": run.comparison or None, "is_promoted": run.is_promoted, "promoted_at": run.promoted_at,
    }


def project_runs(project: Project, *, limit: int = 20) -> list[FinetuneRun]:
    recover_stale(project)
    return list(FinetuneRun.objects.filter(project=project).select_related("candidate_version", "current_version")
                .order_by("-number")[:limit])


def active_encoder_run(project: Project) -> FinetuneRun | None:
    choice = ProjectEncoder.objects.filter(project=project).select_related("finetune_run").first()
    return choice.finetune_run if choice else None


def labelled_count(project: Project) -> int:
    """Labelled examples, as the page says it (one count query; a fine-tune itself counts its training targets)."""
    return Annotation.objects.in_project(project).labelled_count()


"""The learning loop: embed examples, fit the Bayesian model, score the pool, record versions."""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
from django.conf import settings
from django.core.cache import cache
from django.db import IntegrityError, transaction
from django.db.models import Sum
from django.utils import timezone
from threadpoolctl import threadpool_limits

from annotation.adjudication import training_targets
from annotation.models import Annotation, ExampleScore
from labelhub.jobs import enqueue
from learning import acquisition, bayes, decisions, events, loop_base, quality, store
from learning.loop_base import TrainingError, current_encoder, finetuned_encoder, upsert_scores
from learning.models import EmbeddingChunk, ModelVersion, ProjectEncoder, RunStatus, TrainingRun, unseen_mask
from projects.models import Example, Label, Project, TaskType

logger = logging.getLogger(__name__)


def project_encoder(project_id: int) -> Any:
    """The encoder the project's fast loop embeds, fits and scores with: the fine-tuned one a manager or a won
    comparison promoted (learning.finetuning), else the configured one."""
    choice = (ProjectEncoder.objects.filter(project_id=project_id, finetune_run__isnull=False)
              .values_list("finetune_run__encoder_path", "finetune_run__number").first())
    if choice is None or not choice[0]:
        return current_encoder()
    try:
        return finetuned_encoder(choice[0])
    except OSError as exc:
        # Never fall back silently: vectors of another encoder would mix with the fine-tuned ones' model.
        raise TrainingError(f"The project's fine-tuned encoder (fine-tune {choice[1]}) cannot be loaded from "
                            f"{choice[0]} under LABELHUB_FINETUNE_DIR ({exc}). Make that folder readable here, "
                            "or promote a version of another encoder on the Versions page.") from exc


# --- Embeddings -------------------------------------------------------------------------------------------------


def model_status_key(project_id: int) -> str:
    """The cache key of the labelling header's model line (learning.views.model_status)."""
    return f"labelhub:model-status:{project_id}"


def embed_progress_key(project_id: int) -> str:
    return f"labelhub:embed-progress:{project_id}"


# A progress entry outlives its last update by this long: a worker killed mid-embedding stops
# showing progress after it, instead of a bar frozen for an hour.
EMBED_PROGRESS_SECONDS = 300


def embedding_progress(project: Project) -> dict[str, int] | None:
    """{'done', 'total'} from the moment a project's new examples wait for embeddings until they have them."""
    return cache.get(embed_progress_key(project.pk))


# How long "every example has embeddings" is believed before the database is asked again, and how
# often a lost embedding job is queued again.
EMBED_CHECK_SECONDS = 30
EMBED_REQUEUE_SECONDS = 600


def embedding_state(project: Project, *, examples: int | None = None) -> dict[str, Any] | None:
    """What the project page and the dashboard say about embeddings: the job's progress while it runs;
    else, when examples still lack embeddings (the job is lost, or its worker died: its progress
    expires after EMBED_PROGRESS_SECONDS), {'done', 'total', 'stalled': True} read from the database,
    and the job is queued again (at most every EMBED_REQUEUE_SECONDS); None when nothing waits.
    `examples` is the project's example count when the caller has it."""
    progress = embedding_progress(project)
    if progress is not None:
        return progress
    checked = f"labelhub:embed-checked:{project.pk}"
    if cache.get(checked):
        return None
    total = Example.objects.filter(project=project).count() if examples is None else examples
    # Chunks of one encoder at a time; a project re-embedded by a new encoder counts the one furthest on.
    per_encoder = (EmbeddingChunk.objects.filter(project=project).values("encoder")
                   .annotate(n=Sum("count")).values_list("n", flat=True))
    done = max(per_encoder, default=0)
    if done >= total:
        cache.set(checked, 1, EMBED_CHECK_SECONDS)
        return None
    if cache.add(f"labelhub:embed-requeued:{project.pk}", 1, timeout=EMBED_REQUEUE_SECONDS):
        logger.warning("project %s: %d examples lack embeddings and no job reports progress; queued again",
                       project.pk, total - done)
        enqueue("learning.jobs.embed_project", project.pk, after_commit=False)
    return {"done": done, "total": total, "stalled": True}


def embedding_requested(project_id: int, *, count: int) -> None:
    """Show "Embedding 0 / count" at once, while the job waits in the queue (the job corrects the count);
    a count of 0 takes it away (the job could not be queued)."""
    if count:
        cache.set(embed_progress_key(project_id), {"done": 0, "total": count}, timeout=3600)
    else:
        cache.delete(embed_progress_key(project_id))


def embed_project(project_id: int, *, progress: Callable[[int, int], None] | None = None) -> int:
    """Encode every example of the project that has no embedding yet; returns how many were encoded.

    One embedding job per project at a time (a cache lock): two imports finishing
    together would otherwise encode the same examples twice. The job holding the
    lock loops until nothing is left, so examples that arrive meanwhile are not missed.
    """
    lock = f"labelhub:embed-lock:{project_id}"
    total = 0
    while True:
        if not cache.add(lock, 1, timeout=6 * 3600):
            return total  # another job is embedding this project and will pick these up
        try:
            done = _embed_missing(project_id, progress)
        finally:
            cache.delete(lock)
        total += done
        if done == 0:
            break
    project = Project.objects.filter(pk=project_id).first()
    if project is None:
        return total  # deleted meanwhile: nothing to train or seed
    if Annotation.objects.in_project(project).exists():
        request_training(project, reason="new examples embedded")
    elif total:
        seed_queue(project)
    return total


def _embed_missing(project_id: int, progress: Callable[[int, int], None] | None) -> int:
    encoder = project_encoder(project_id)
    is_span = Project.objects.filter(pk=project_id, task_type=TaskType.SPAN).exists()
    have = store.load(project_id, encoder.name).example_ids
    all_ids = np.fromiter(Example.objects.filter(project_id=project_id).values_list("id", flat=True), dtype=np.int64)
    todo = np.setdiff1d(all_ids, have, assume_unique=True)
    total = len(todo)
    key = embed_progress_key(project_id)

    def report(done: int) -> None:
        cache.set(key, {"done": done, "total": total}, timeout=EMBED_PROGRESS_SECONDS)
        if progress:
            progress(done, total)

    try:
        if total:
            report(0)
        for start in range(0, total, settings.EMBED_BATCH):
            ids = todo[start:start + settings.EMBED_BATCH]
            rows = dict(Example.objects.filter(id__in=ids.tolist()).values_list("id", "text"))
            ids = np.array([i for i in ids.tolist() if i in rows], dtype=np.int64)  # deleted meanwhile
            if len(ids) == 0:
                continue
            texts = [rows[i] for i in ids.tolist()]
            if is_span:
                # Token vectors to the token store; the sentence vectors (their means) below, as for classification.
                from learning import span_loop

                def step(done: int, _at: int = start) -> None:
                    report(_at + done)

                vectors = span_loop.encode_chunk(Project.objects.get(pk=project_id), encoder, ids, progress=step)
            elif getattr(encoder, "reports_progress", False):
                # Every encoder batch (64 texts, about a second) moves the bar, not only every chunk.
                vectors = encoder.encode(texts, progress=lambda done, _n, _at=start: report(_at + done))
            else:
                vectors = encoder.encode(texts)
            EmbeddingChunk.objects.create(
                project_id=project_id, encoder=encoder.name, dim=vectors.shape[1], count=len(ids),
                example_ids=ids.tobytes(), vectors=vectors.astype(np.float16).tobytes(),
            )
            report(min(start + settings.EMBED_BATCH, total))
    except (IntegrityError, Project.DoesNotExist):
        # The chunk's foreign key, or a span project's row, when the project was deleted meanwhile: nothing left
        # to embed for. Any other cause is an error.
        if Project.objects.filter(pk=project_id).exists():
            raise
        logger.info("project %s was deleted while it was being embedded: the job stops", project_id)
        return 0
    finally:
        cache.delete(key)
    return total


def embedded_with(project_id: int, encoder: Any, ids: np.ndarray) -> store.ProjectEmbeddings:
    """The project's vectors from ``encoder``, after encoding (and storing under its name) those of ``ids`` it
    lacks: the mislabel finder judges every labelled item with the configured encoder once a fine-tuned one
    serves (`learning.review_candidates`), and items imported since then have only the fine-tuned vectors."""
    have = store.load(project_id, encoder.name)
    todo = np.asarray(ids, dtype=np.int64)[~have.has(np.asarray(ids, dtype=np.int64))]
    for start in range(0, len(todo), settings.EMBED_BATCH):
        part = todo[start:start + settings.EMBED_BATCH]
        rows = dict(Example.objects.filter(id__in=part.tolist()).values_list("id", "text"))
        part = np.array([i for i in part.tolist() if i in rows], dtype=np.int64)
        if len(part):
            vectors = encoder.encode([rows[i] for i in part.tolist()])
            EmbeddingChunk.objects.create(project_id=project_id, encoder=encoder.name, dim=vectors.shape[1],
                                          count=len(part), example_ids=part.tobytes(),
                                          vectors=vectors.astype(np.float16).tobytes())
    return store.load(project_id, encoder.name) if len(todo) else have


def seed_queue(project: Project) -> int:
    """Before any model: rank a diverse, representative seed batch first in the queue."""
    emb = store.load(project.pk, project_encoder(project.pk).name)
    labelled = Annotation.objects.in_project(project).labelled_ids()
    pool = np.setdiff1d(emb.example_ids, labelled, assume_unique=True)
    if len(pool) == 0:
        return 0
    rows = emb.rows_of(pool)
    chosen = acquisition.select_seed(emb.vectors[rows], settings.SEED_SIZE, np.random.default_rng(project.pk))
    now = timezone.now()
    scores = [
        ExampleScore(example_id=int(pool[i]), project=project, score=0.0, priority=float(len(chosen) - rank),
                     is_seed=True, updated_at=now)
        for rank, i in enumerate(chosen.tolist())
    ]
    with transaction.atomic():
        ExampleScore.objects.filter(project=project, model_version_number__isnull=True).delete()
        upsert_scores(scores)
    return len(scores)


# --- Training runs ----------------------------------------------------------------------------------------------


def request_training(project: Project, *, reason: str) -> TrainingRun | None:
    """Ask for a model update; a burst of requests shares the one queued run."""
    if TrainingRun.objects.filter(project=project, status=RunStatus.QUEUED).exists():
        # The common case during labelling: one cheap read, no failed insert.
        if cache.add(f"labelhub:stale-check:{project.pk}", 1, timeout=60):
            recover_stale_runs(project)
        return None
    try:
        with transaction.atomic():
            run = TrainingRun.objects.create(project=project, reason=reason)
    except IntegrityError:
        # A queued run exists and will see these labels too, unless its job was lost.
        recover_stale_runs(project)
        return None
    # Debounce: labels arriving in the next seconds join this run instead of starting another.
    enqueue("learning.jobs.train_project", project.pk, queue="default", delay=settings.TRAIN_DEBOUNCE_SECONDS,
            on_failure=lambda: _drop_unqueued_run(run.pk))
    return run


def _drop_unqueued_run(run_pk: int) -> None:
    # The job queue was unreachable (Redis down): a queued run without a job would hold
    # back every later request until it went stale. Fail it, so the next label asks again.
    TrainingRun.objects.filter(pk=run_pk, status=RunStatus.QUEUED).update(
        status=RunStatus.FAILED, finished_at=timezone.now(),
        error="Could not be queued (the job queue was unreachable); the next label asks again.")


def recover_stale_runs(project: Project) -> int:
    """Unstick a project whose update job was lost (worker killed, embedded runner restarted).

    A run still queued or running long after it should have finished would
    otherwise block every later update (one queued and one running per project).
    A running one is marked failed; then the job is queued again. Returns how many
    runs were stale.
    """
    cutoff = timezone.now() - timedelta(seconds=settings.TRAIN_STALE_SECONDS)
    interrupted = TrainingRun.objects.filter(project=project, status=RunStatus.RUNNING, started_at__lt=cutoff).update(
        status=RunStatus.FAILED, finished_at=timezone.now(),
        error="Interrupted: the worker stopped before this update finished. It was queued again.")
    lost = TrainingRun.objects.filter(project=project, status=RunStatus.QUEUED, requested_at__lt=cutoff).exists()
    if interrupted or lost:
        logger.warning("project %s: re-queueing a lost model update", project.pk)
        enqueue("learning.jobs.train_project", project.pk, queue="default")
    return interrupted + int(lost)


def _claim(project_id: int) -> TrainingRun | None:
    queued = TrainingRun.objects.filter(project_id=project_id, status=RunStatus.QUEUED).first()
    if queued is None:
        return None
    # Early (a run re-queued right after another finished): come back when the debounce
    # is over, rather than holding a worker in sleep.
    wait = (queued.requested_at.timestamp() + settings.TRAIN_DEBOUNCE_SECONDS) - time.time()
    if wait > 0.05:
        enqueue("learning.jobs.train_project", project_id, queue="default", delay=wait)
        return None
    try:
        with transaction.atomic():
            claimed = TrainingRun.objects.filter(pk=queued.pk, status=RunStatus.QUEUED).update(
                status=RunStatus.RUNNING, started_at=timezone.now())
    except IntegrityError:
        return None  # another update is running; it re-queues this one when it ends
    if not claimed:
        return None
    queued.refresh_from_db()
    return queued


def run_training(project_id: int) -> TrainingRun | None:
    """Claim the project's queued run, fit and score, and record the outcome. Safe to call twice."""
    run = _claim(project_id)
    if run is None:
        return None
    try:
        version = fit_and_score(run)
    except (TrainingError, bayes.ModelFitError) as exc:
        run.mark_failed(str(exc))
    except Exception as exc:  # noqa: BLE001 - a failed run must be recorded, never crash-loop the worker
        logger.exception("training run %s failed", run.pk)
        run.mark_failed(f"Unexpected error: {exc!r}. The previous model keeps serving.")
    else:
        run.mark_succeeded(version)
        # The labelling header must not say "No model yet" beside the new model's suggestions.
        cache.delete(model_status_key(project_id))
        # The serving layer promotes it (unless pinned) and keeps a drift reference.
        events.model_version_recorded.send(sender=ModelVersion, version=version)
    if TrainingRun.objects.filter(project_id=project_id, status=RunStatus.QUEUED).exists():
        enqueue("learning.jobs.train_project", project_id, queue="default")
    # Also after a failure: the newest version may still lack the report an update interrupted.
    request_report(project_id)
    return run


@dataclass
class TrainingSet:
    label_keys: list[str]
    label_names: list[str]
    example_ids: np.ndarray
    targets: np.ndarray  # (N,) class indices, or (N, K) 0/1 for multi-label
    skipped_deprecated: int


def training_set(project: Project) -> TrainingSet:
    """Each example's training target (adjudicated, else unanimous, else majority; ties left out: see
    annotation.adjudication), mapped onto the current taxonomy's active labels."""
    taxonomy = project.current_taxonomy()
    labels: list[Label] = list(taxonomy.active_labels().order_by("position", "id"))
    index = {label.key: i for i, label in enumerate(labels)}
    latest = training_targets(project).keys
    ids: list[int] = []
    # A 0/1 row per example for multi-label, else the class index.
    targets: list[np.ndarray | int] = []
    skipped = 0
    for example_id, keys in latest.items():
        mapped = [index[k] for k in keys if k in index]
        if project.is_multi_label:
            if len(mapped) < len(keys):
                skipped += 1
                continue
            row = np.zeros(len(labels), dtype=np.int8)
            row[mapped] = 1
            targets.append(row)
        else:
            if len(mapped) != 1:
                skipped += 1
                continue
            targets.append(mapped[0])
        ids.append(example_id)
    order = np.argsort(np.array(ids, dtype=np.int64))
    id_array = np.array(ids, dtype=np.int64)[order]
    target_array: np.ndarray
    if project.is_multi_label:
        target_array = np.array(targets, dtype=np.int8).reshape(-1, len(labels))[order]
    else:
        target_array = np.array(targets, dtype=np.int64)[order]
    return TrainingSet([label.key for label in labels], [label.name for label in labels], id_array,
                       target_array, skipped)


def embedded_labels(project: Project, encoder_name: str, data: TrainingSet
                    ) -> tuple[store.ProjectEmbeddings, np.ndarray, np.ndarray, np.ndarray]:
    """The labelled examples that have embeddings: (embeddings, their ids, their vectors, their targets)."""
    emb = store.load(project.pk, encoder_name)
    present = emb.has(data.example_ids)
    ids = data.example_ids[present]
    return emb, ids, emb.vectors[emb.rows_of(ids)], data.targets[present]


@dataclass
class Fitted:
    """A fitted model and what it was fitted on, before the pool is scored."""

    data: TrainingSet
    encoder_name: str
    embeddings: store.ProjectEmbeddings
    n_labels: int
    posterior: bayes.Posterior
    # The previous version's figures (same labels), carried until this version's report is in.
    carried_metrics: dict[str, Any]


@dataclass
class Scored:
    """The pool's new queue rows and the labelled ids whose rows leave the queue."""

    strategy: str
    rows: list[ExampleScore]
    labelled_ids: np.ndarray


def fit_and_score(run: TrainingRun) -> ModelVersion:
    """Refit the model on every current label, rescore the pool, store a new version (its report follows)."""
    if run.project.is_span:
        from learning import span_loop

        return span_loop.fit_and_score(run, project_encoder(run.project_id))
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    # One BLAS thread per job: on the 2 shared cores of a small deployment a multi-threaded
    # OpenBLAS was 5-25x slower (benchmarks/README.md, "Update latency"); more throughput
    # comes from more workers, not more threads per job.
    with threadpool_limits(limits=1, user_api="blas"):
        fitted = fit(run, timings)
        scored = score(run, fitted, timings)
    version = record(run, fitted, scored, timings)
    timings["total_s"] = time.perf_counter() - t0
    run.timings = {k: round(v, 4) for k, v in timings.items()}
    return version


def fit(run: TrainingRun, timings: dict[str, float], *, encoder_name: str | None = None) -> Fitted:
    """Fit the posterior on every current label, warm-started from the previous version of the same encoder, whose
    calibration it keeps until its own report (``report_project``). ``encoder_name``: the vectors to fit on (a
    fine-tune's candidate encoder), else the project's encoder's."""
    project = run.project
    t0 = time.perf_counter()
    data = training_set(project)
    if len(data.label_keys) < (1 if project.is_multi_label else 2):
        raise TrainingError("The taxonomy needs at least two active labels before a model can learn.")
    name = encoder_name or project_encoder(project.pk).name
    emb, ids, X, targets = embedded_labels(project, name, data)
    run.n_labels = int(len(ids))
    if len(ids) < 2:
        raise TrainingError(
            f"{len(data.example_ids)} labelled example(s), {len(ids)} with embeddings: a model needs at least two. "
            "Label more, or wait for the embedding job to finish."
        )
    # The previous model of the same outputs warm-starts the fit (same posterior, a fraction of
    # the time: see bayes.fit); a changed taxonomy or encoder, or an unreadable artifact, means a
    # cold fit.
    # (A fine-tune's candidate of another encoder may be the newest version: it is no warm start for this one.)
    previous = (ModelVersion.objects.filter(project=project, encoder=name).order_by("-number")
                .only("artifact", "encoder", "label_keys", "metrics", "number").first())
    warm: bayes.Posterior | None = None
    carried: dict[str, Any] = {}
    if previous is not None and previous.label_keys == data.label_keys:
        try:
            warm = bayes.Posterior.from_bytes(bytes(previous.artifact))
        except (ValueError, KeyError, OSError):
            logger.warning("model version %s: unreadable artifact, fitting from scratch", previous.pk)
        if previous.metrics:
            # Serving reads the accuracy-vs-coverage curve from here: until this version's report is
            # in, the previous one (same labels, same calibration) is the best estimate there is.
            carried = {**loop_base.without_prior_search(previous.metrics),
                       "report_version": previous.report.report_version or previous.number}
    timings["load_s"] = time.perf_counter() - t0

    t1 = time.perf_counter()
    # No update waits for a prior-precision search: when one is due the report job runs it, and a later update
    # takes its result (bayes.fit's defer_search and searched).
    searched = loop_base.searched_prior(project.pk, name, data.label_keys) if warm is not None else None
    if project.is_multi_label:
        posterior = bayes.fit_multilabel(X, targets, warm_start=warm, defer_search=True, searched=searched)
    else:
        posterior = bayes.fit(X, targets, n_classes=len(data.label_keys), warm_start=warm, defer_search=True,
                              searched=searched)
    quality.carry_calibration(posterior, warm)
    timings["fit_s"] = time.perf_counter() - t1
    timings["search_due"] = float(bayes.search_due(posterior))
    timings["warm_start"] = float(posterior.info.get("warm_start", 0))
    timings["evidence_iterations"] = float(posterior.info.get("evidence_iterations", 0))
    return Fitted(data, name, emb, len(ids), posterior, carried)


def score(run: TrainingRun, fitted: Fitted, timings: dict[str, float]) -> Scored:
    """Score every unlabelled example with the new posterior: predictions, acquisition scores, queue order."""
    project = run.project
    emb = fitted.embeddings
    t3 = time.perf_counter()
    labelled_ids = Annotation.objects.in_project(project).labelled_ids()
    pool_ids = np.setdiff1d(emb.example_ids, labelled_ids)
    strategy = project.acquisition_strategy
    rows: list[ExampleScore] = []
    if len(pool_ids):
        spec = acquisition.get_strategy(strategy)
        X_pool = emb.vectors[emb.rows_of(pool_ids)]
        rng = np.random.default_rng(run.pk)
        density = store.density_of(project.pk, fitted.encoder_name, pool_ids) if spec.density else None
        pooled = acquisition.score_pool(fitted.posterior, X_pool, strategy=strategy, rng=rng, density=density)
        priority = pooled.scores.astype(np.float64).copy()
        if spec.diversity:
            # The next batch is spread over the embedding space and goes first.
            batch = acquisition.select_batch(strategy, scores=pooled.scores, embeddings=X_pool,
                                             batch_size=settings.SEED_SIZE, rng=rng)
            top = float(priority.max()) if len(priority) else 0.0
            priority[batch] = top + 1.0 + (len(batch) - np.arange(len(batch)))
        timings["score_s"] = time.perf_counter() - t3
        t_rows = time.perf_counter()
        predicted = decisions.predicted_keys(pooled.proba, fitted.data.label_keys, project.is_multi_label)
        confidence = decisions.confidence(pooled.proba, project.is_multi_label)
        now = timezone.now()
        rows = [
            ExampleScore(example_id=int(pool_ids[i]), project=project, predicted_keys=predicted[i],
                         confidence=float(confidence[i]), score=float(pooled.scores[i]), priority=float(priority[i]),
                         updated_at=now)
            for i in range(len(pool_ids))
        ]
        timings["rows_s"] = time.perf_counter() - t_rows
    else:
        timings["score_s"] = time.perf_counter() - t3
    return Scored(strategy, rows, labelled_ids)


def record(run: TrainingRun, fitted: Fitted, scored: Scored, timings: dict[str, float]) -> ModelVersion:
    """Store the new version and replace the queue's rows with its scores, in one transaction."""
    project = run.project
    t4 = time.perf_counter()
    with transaction.atomic():
        # The project's row lock numbers versions one at a time: a fine-tune's candidate may be recorded
        # while a model update records its own.
        Project.objects.select_for_update().filter(pk=project.pk).first()
        number = (ModelVersion.objects.filter(project=project).order_by("-number")
                  .values_list("number", flat=True).first() or 0) + 1
        version = ModelVersion.objects.create(
            project=project, number=number, taxonomy_version=project.current_taxonomy(),
            label_keys=fitted.data.label_keys, encoder=fitted.encoder_name, strategy=scored.strategy,
            n_labels=fitted.n_labels, artifact=fitted.posterior.to_bytes(), metrics=fitted.carried_metrics,
        )
        for row in scored.rows:
            row.model_version_number = version.number
        # Only labelled items leave the queue: an input routed to a person after this
        # update read the pool keeps its row (and its routed flag).
        ExampleScore.objects.filter(project=project, example_id__in=scored.labelled_ids.tolist()).delete()
        upsert_scores(scored.rows)
    timings["write_s"] = time.perf_counter() - t4
    return version


# --- Quality reports --------------------------------------------------------------------------------------------


def _report_queued_key(project_id: int) -> str:
    return f"labelhub:report-queued:{project_id}"


def request_report(project_id: int) -> None:
    """Queue the quality report of the project's newest model version; one waiting job per project.

    On its own queue, which workers take after training (settings.RQ_QUEUES, `make worker`):
    labels -> new suggestions never waits behind a report.
    """
    if cache.add(_report_queued_key(project_id), 1, timeout=settings.TRAIN_STALE_SECONDS):
        enqueue("learning.jobs.report_project", project_id, queue="reports",
                on_failure=lambda: _forget_queued_report(project_id))


def _forget_queued_report(project_id: int) -> None:
    # The queue was unreachable: let the next update ask again.
    cache.delete(_report_queued_key(project_id))


def _update_waiting(project_id: int) -> bool:
    """A model update of the project is due now (queued, its debounce over): the report gives way."""
    due = timezone.now() - timedelta(seconds=settings.TRAIN_DEBOUNCE_SECONDS)
    return TrainingRun.objects.filter(project_id=project_id, status=RunStatus.QUEUED, requested_at__lte=due).exists()


def report_project(project_id: int) -> ModelVersion | None:
    """Cross-validate and calibrate the project's newest model version, if its report is not in yet.

    Coalesced: whichever version is newest when the job runs is the one measured, so a burst of
    updates costs one report. Between folds it gives way to a due model update (that update
    queues the report of its own version). Writes the figures, the calibrated artifact and
    ``report_at`` only if no other job did meanwhile. Returns the version it reported on.
    """
    cache.delete(_report_queued_key(project_id))
    lock = f"labelhub:report-lock:{project_id}"
    if not cache.add(lock, 1, timeout=settings.TRAIN_STALE_SECONDS):
        return None  # another report job is measuring this project; it looks again when it ends
    version = ModelVersion.objects.filter(project_id=project_id).order_by("-number").first()
    try:
        if version is None or version.report_at is not None:
            return None
        return _measure(version)
    finally:
        cache.delete(lock)
        # A version recorded while this job measured an older one found the lock taken: measure
        # it now, unless an update is due (that update queues the report of its own version).
        newer = ModelVersion.objects.filter(project_id=project_id, report_at__isnull=True,
                                            number__gt=version.number if version else 0)
        if newer.exists() and not _update_waiting(project_id):
            request_report(project_id)


def _search_prior(version: ModelVersion, posterior: bayes.Posterior, X: np.ndarray, targets: np.ndarray
                  ) -> tuple[bayes.Posterior, dict[str, Any]]:
    """Run the prior-precision search ``version``'s update left due, if it did: (the model the report measures and
    serves, what the report's metrics keep of the search; ``loop_base.keep_prior_search``). On the version's own
    labels the searched refit replaces the deferred one: it is the refit the update would have made."""
    if not bayes.search_due(posterior):
        return posterior, {}
    try:
        searched = quality.carry_calibration(bayes.search_prior(
            X, targets, n_classes=posterior.n_classes, multi_label=posterior.multi_label, warm_start=posterior),
            posterior)
    except bayes.ModelFitError as exc:
        logger.warning("model version %s: prior precision not searched (%s)", version.pk, exc)
        return posterior, {}
    same_labels = searched.n_train == version.n_labels
    record = loop_base.keep_prior_search(version, bayes.searched_of(searched),
                                         searched.to_bytes() if same_labels else None)
    return (searched if same_labels else posterior), record


def _measure(version: ModelVersion) -> ModelVersion | None:
    """The report of ``version`` on the project's current labels, written to it; None if interrupted."""
    project = version.project
    if project.is_span:
        from learning import span_loop

        measured = span_loop.measure(version, should_stop=lambda: _update_waiting(project.pk))
        if measured is not None:
            # Span projects' likely mislabels come from this report's model too (learning.receivers).
            events.model_version_reported.send(sender=ModelVersion, version=measured)
        return measured
    data = training_set(project)
    if data.label_keys != version.label_keys:
        return None  # the taxonomy changed: the update it started records a version to measure
    _, ids, X, targets = embedded_labels(project, version.encoder, data)
    posterior = bayes.Posterior.from_bytes(bytes(version.artifact))
    started = time.perf_counter()
    # A fine-tuned encoder's model is measured on the labels that encoder was not trained on (quality.evaluate).
    unseen = unseen_mask(project.pk, version.encoder, ids)
    with threadpool_limits(limits=1, user_api="blas"):
        posterior, search = _search_prior(version, posterior, X, targets)
        try:
            report = quality.evaluate(X, targets, n_classes=len(data.label_keys), label_names=data.label_names,
                                      multi_label=project.is_multi_label, seed=version.pk, posterior=posterior,
                                      should_stop=lambda: _update_waiting(project.pk), unseen=unseen)
        except quality.ReportInterrupted:
            return None
        except bayes.ModelFitError as exc:
            logger.warning("model version %s: no quality report (%s)", version.pk, exc)
            return None
        posterior = quality.calibrate(posterior, X, targets, seed=version.pk, report=report)
    metrics = {**report.as_dict(), **search, "report_version": version.number,
               "report_seconds": round(time.perf_counter() - started, 4)}
    updated = ModelVersion.objects.filter(pk=version.pk, report_at__isnull=True).update(
        metrics=metrics, artifact=posterior.to_bytes(), report_at=timezone.now())
    if not updated:
        return None
    version.refresh_from_db()
    # The review queue's candidates come from this report's model (learning.receivers).
    events.model_version_reported.send(sender=ModelVersion, version=version)
    return version



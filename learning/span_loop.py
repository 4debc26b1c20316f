"""The learning loop of span (NER) projects: token vectors, BIO training target, refit + rescore, quality report.

The classification loop (learning.actions) calls in here for span projects at four points: the embed job
(``encode_chunk``), the model update (``fit_and_score``), the quality report (``measure``) and serving
(``load_span_model``). What it shares with classification is kept: the coalesced training runs, the
sentence vectors in ``EmbeddingChunk`` (here the mean of the sentence's token vectors: the seed, the
information density and the diversity batch work on them unchanged), the queue rows and the model versions.

Token vectors live in ``learning.token_store`` (float16 files under ``DATA_DIR/token-vectors``), not in the
database: a 100k-sentence pool is 1.1 GB of them. A worker that lacks some (another machine, a wiped disk)
encodes them again from the examples' text and tokens before fitting or scoring.
"""
from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from django.conf import settings
from django.db import transaction
from django.utils import timezone
from threadpoolctl import threadpool_limits

from annotation.models import Annotation, ExampleScore
from learning import acquisition, bayes, loop_base, span_quality, store, token_store
from learning import spans as spanml
from learning.models import ModelVersion, TrainingRun, unseen_mask
from projects.models import Example, Label, Project

logger = logging.getLogger(__name__)

# Pool examples scored per step of a rescore: bounds the memory a rescore holds (tokens x dim floats).
SCORE_TOKENS_PER_CHUNK = 32768
# Pool examples encoded per step when a worker lacks token vectors.
ENCODE_BATCH = 512


def token_root() -> Path:
    return Path(settings.DATA_DIR) / "token-vectors"


def open_tokens(project_id: int, encoder: Any) -> token_store.TokenStore:
    """The project's token vectors of ``encoder`` (named by its token pooling: another pooling is another store)."""
    return token_store.open_store(token_root(), project_id, token_vectors_name(encoder))


def token_vectors_name(encoder: Any) -> str:
    token_name = getattr(encoder, "token_name", None)
    return token_name() if callable(token_name) else f"{encoder.name}-tokens"


def offsets_of(text: str, tokens: Any, language: str) -> list[tuple[int, int]]:
    """The example's token offsets: stored at import; computed here for an example imported without them."""
    if tokens is not None:
        return [(int(s), int(e)) for s, e in tokens]
    from projects.spanformats import tokenize

    return list(tokenize(text, language))


# --- Embedding -------------------------------------------------------------------------------------------------


def encode_chunk(project: Project, encoder: Any, ids: np.ndarray,
                 progress: Callable[[int], None] | None = None) -> np.ndarray:
    """Encode a chunk of the project's examples token by token, store the token vectors, and return one
    sentence vector per example (the unit-length mean of its token vectors; zeros for an empty example)."""
    rows = {pk: (text, tokens) for pk, text, tokens in
            Example.objects.filter(id__in=ids.tolist()).values_list("id", "text", "tokens")}
    ids = np.array([i for i in ids.tolist() if i in rows], dtype=np.int64)
    vectors = _encode(project, encoder, ids, rows, progress)
    open_tokens(project.pk, encoder).append(ids, vectors, dim=_dim(encoder, vectors))
    flat, bounds = spanml.pack(vectors, np.float32)
    return spanml.sentence_vectors(flat.reshape(-1, _dim(encoder, vectors)), bounds)


def _dim(encoder: Any, vectors: Sequence[np.ndarray]) -> int:
    for v in vectors:
        if len(v):
            return int(v.shape[1])
    return int(getattr(encoder, "dim", 0) or 0)


def _encode(project: Project, encoder: Any, ids: np.ndarray, rows: dict[int, tuple[str, Any]],
            progress: Callable[[int], None] | None = None) -> list[np.ndarray]:
    offsets = [offsets_of(rows[i][0], rows[i][1], project.language) for i in ids.tolist()]
    texts = [rows[i][0] for i in ids.tolist()]
    keep = [k for k, o in enumerate(offsets) if o]
    dim = int(getattr(encoder, "dim", 0) or 0)
    out: list[np.ndarray] = [np.empty((0, dim), dtype=np.float32) for _ in offsets]
    step = 256
    for lo in range(0, len(keep), step):
        part = keep[lo:lo + step]
        encoded = encoder.encode_tokens([texts[k] for k in part], [offsets[k] for k in part])
        for k, v in zip(part, encoded, strict=True):
            out[k] = np.asarray(v, dtype=np.float32)
        if progress:
            progress(min(lo + step, len(keep)))
    if dim == 0 and keep:
        dim = out[keep[0]].shape[1]
        out = [v if len(v) else np.empty((0, dim), dtype=np.float32) for v in out]
    return out


def ensure_tokens(project: Project, encoder: Any, ids: np.ndarray) -> token_store.TokenStore:
    """The token store, with vectors for every one of ``ids`` (those this machine lacks are encoded now)."""
    tokens = open_tokens(project.pk, encoder)
    missing = tokens.missing(ids)
    for lo in range(0, len(missing), ENCODE_BATCH):
        part = missing[lo:lo + ENCODE_BATCH]
        rows = {pk: (text, toks) for pk, text, toks in
                Example.objects.filter(id__in=part.tolist()).values_list("id", "text", "tokens")}
        part = np.array([i for i in part.tolist() if i in rows], dtype=np.int64)
        vectors = _encode(project, encoder, part, rows)
        tokens.append(part, vectors, dim=_dim(encoder, vectors))
    if len(missing):
        logger.info("project %s: encoded token vectors of %d examples this worker lacked", project.pk, len(missing))
    return tokens


def drop_tokens(project_id: int, encoder_name: str) -> None:
    """Remove the project's token vectors of the encoder whose vectors are called ``encoder_name`` (a failed or
    cancelled fine-tune's: nothing refers to them), under each name its token vectors may carry."""
    from learning.encoder import TOKEN_POOLINGS

    for name in (f"{encoder_name}-tokens", *(f"{encoder_name}-tokens-{p}" for p in TOKEN_POOLINGS)):
        shutil.rmtree(token_store.TokenStore(token_root(), project_id, name).folder, ignore_errors=True)
    token_store.forget(project_id)


# --- Training target ---------------------------------------------------------------------------------------------


@dataclass
class SpanTrainingSet:
    label_keys: list[str]
    label_names: list[str]
    example_ids: np.ndarray  # sorted
    spans: list[list[dict[str, Any]]]  # the latest annotation's spans, per example
    offsets: list[list[tuple[int, int]]]
    texts: list[str]
    skipped_deprecated: int = 0
    skipped_empty: int = 0
    skipped_invalid: int = 0

    @property
    def n_entities(self) -> int:
        return sum(len(s) for s in self.spans)

    @property
    def n_tokens(self) -> int:
        return sum(len(o) for o in self.offsets)


def span_training_set(project: Project) -> SpanTrainingSet:
    """The latest annotation of each example (no spans: every token O), on the current taxonomy's active labels.

    An example whose latest answer tags a label that is deprecated now is left out (its tokens are not O);
    an example without tokens (an empty text) teaches nothing and is left out too.
    """
    labels: list[Label] = list(project.current_taxonomy().active_labels().order_by("position", "id"))
    active = {label.key for label in labels}
    latest: dict[int, list[dict[str, Any]]] = {}
    rows = (Annotation.objects.in_project(project).order_by("example_id", "-created_at", "-id")
            .values_list("example_id", "spans"))
    for example_id, spans in rows.iterator(chunk_size=5000):
        if example_id not in latest:
            latest[example_id] = list(spans or [])
    ids = sorted(latest)
    examples = {pk: (text, tokens) for pk, text, tokens in
                Example.objects.filter(id__in=ids).values_list("id", "text", "tokens")}
    data = SpanTrainingSet([label.key for label in labels], [label.name for label in labels],
                           np.empty(0, dtype=np.int64), [], [], [])
    kept: list[int] = []
    for pk in ids:
        if pk not in examples:
            continue
        spans = latest[pk]
        if any(s.get("label") not in active for s in spans):
            data.skipped_deprecated += 1
            continue
        text, tokens = examples[pk]
        offsets = offsets_of(text, tokens, project.language)
        if not offsets:
            data.skipped_empty += 1
            continue
        if any(not any(s < span["end"] and e > span["start"] for s, e in offsets) for span in spans):
            data.skipped_invalid += 1  # a span on no token (the text was edited since?): not a usable target
            continue
        kept.append(pk)
        data.spans.append(sorted(spans, key=lambda s: (s["start"], s["end"])))
        data.offsets.append(offsets)
        data.texts.append(text)
    data.example_ids = np.array(kept, dtype=np.int64)
    return data


def tag_targets(data: SpanTrainingSet, tagset: spanml.TagSet) -> list[np.ndarray]:
    """BIO tag ids per example (every span's label is in the tag set: ``span_training_set`` saw to it)."""
    return [spanml.tag_ids(o, s, tagset) for o, s in zip(data.offsets, data.spans, strict=True)]


# --- Model versions ----------------------------------------------------------------------------------------------

_models: dict[tuple[int, str], spanml.SpanModel] = {}
_models_lock = threading.Lock()


def load_span_model(version: ModelVersion) -> spanml.SpanModel:
    """The ``learning.spans.SpanModel`` of a span project's model version, cached per process.

    For serving: ``load_span_model(version).predict(vectors, offsets)`` on ``encoder.encode_tokens(texts, offsets)``
    vectors of the version's encoder (``version.encoder``; ``learning.loop_base.encoder_named`` finds it). The
    version's ``label_keys`` are the tag set's entity keys, in order. The cache is keyed by the version and its
    ``report_at``: the quality report replaces the artifact with its calibrated model, which a serving process then
    loads anew. Raises ValueError for a classification version or an unreadable artifact.
    """
    if not version.project.is_span:
        raise ValueError(f"model version {version.pk} is a classification model")
    key = (version.pk, version.report_at.isoformat() if version.report_at else "")
    with _models_lock:
        cached = _models.get(key)
    if cached is not None:
        return cached
    model = spanml.SpanModel.from_npz(bytes(version.artifact))
    with _models_lock:
        if len(_models) > 16:
            _models.clear()
        _models[key] = model
    return model


# --- Refit + rescore ---------------------------------------------------------------------------------------------


@dataclass
class SpanFitted:
    data: SpanTrainingSet
    encoder: Any
    tagset: Any
    model: Any
    vectors: list[np.ndarray]
    targets: list[np.ndarray]
    carried_metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def n_labels(self) -> int:
        return len(self.data.example_ids)


def fit_and_score(run: TrainingRun, encoder: Any) -> ModelVersion:
    """Refit the span model on every current answer, rescore the pool, store a new version (report follows).
    ``encoder``: the project's (learning.actions.project_encoder: the fine-tuned one a promotion chose, else the
    configured one); the caller passes it, so this module does not import learning.actions, which imports it."""
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    with threadpool_limits(limits=1, user_api="blas"):
        fitted = fit(run, timings, encoder=encoder)
        rows, labelled_ids, strategy = score(run, fitted, timings)
    version = record(run, fitted, rows, labelled_ids, strategy, timings)
    timings["total_s"] = time.perf_counter() - t0
    run.timings = {k: round(v, 4) for k, v in timings.items()}
    return version


def fit(run: TrainingRun, timings: dict[str, float], *, encoder: Any) -> SpanFitted:
    """Fit the span model on every current answer, warm-started from the newest version of the same encoder.
    ``encoder``: whose token vectors to fit on (the project's, or a fine-tune's candidate encoder)."""
    project = run.project
    t0 = time.perf_counter()
    data = span_training_set(project)
    run.n_labels = len(data.example_ids)
    if not data.label_keys:
        raise loop_base.TrainingError("The taxonomy has no active entity label: add one before a model can learn.")
    notes = []
    if data.skipped_deprecated:
        notes.append(f"{data.skipped_deprecated} left out for tagging a deprecated label")
    if data.skipped_empty:
        notes.append(f"{data.skipped_empty} left out for having no tokens (empty text)")
    if data.skipped_invalid:
        notes.append(f"{data.skipped_invalid} left out for a span that covers no token")
    left_out = f" ({'; '.join(notes)})" if notes else ""
    if len(data.example_ids) < 2:
        raise loop_base.TrainingError(
            f"{len(data.example_ids)} usable labelled example(s){left_out}: a model needs at least two. Label more.")
    if data.n_entities == 0:
        raise loop_base.TrainingError(
            f"None of the {len(data.example_ids)} labelled examples has an entity tagged (all were answered "
            f"'no entity'){left_out}: the model needs tagged entities to learn from. Tag the entities of a few "
            "examples that have some. The previous model keeps serving.")
    tagset = spanml.TagSet(data.label_keys)
    targets = tag_targets(data, tagset)
    tokens = ensure_tokens(project, encoder, data.example_ids)
    vectors = tokens.get(data.example_ids)
    for v, t, pk in zip(vectors, targets, data.example_ids.tolist(), strict=True):
        if len(v) != len(t):
            raise loop_base.TrainingError(
                f"Example {pk}: {len(t)} tokens but {len(v)} token vectors (its tokens changed since it was "
                "encoded). Re-import it.")
    # The newest version of this encoder: a fine-tune's candidate of another encoder may be the newest of all.
    previous = (ModelVersion.objects.filter(project=project, encoder=encoder.name).order_by("-number")
                .only("artifact", "encoder", "label_keys", "metrics", "number", "report_at").first())
    warm = None
    carried: dict[str, Any] = {}
    if previous is not None and previous.label_keys == data.label_keys:
        try:
            warm = spanml.SpanModel.from_npz(bytes(previous.artifact))
        except (ValueError, KeyError, OSError):
            logger.warning("model version %s: unreadable span artifact, fitting from scratch", previous.pk)
        if previous.metrics:
            carried = {**loop_base.without_prior_search(previous.metrics),
                       "report_version": previous.report.report_version or previous.number}
    timings["load_s"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    # No update waits for a prior-precision search: the report job runs a due one (measure) for later updates.
    searched = loop_base.searched_prior(project.pk, encoder.name, data.label_keys) if warm is not None else None
    try:
        model = spanml.SpanModel.fit(vectors, targets, tagset, warm=warm, defer_search=True, searched=searched)
    except (ValueError, FloatingPointError, np.linalg.LinAlgError) as exc:
        raise loop_base.TrainingError(f"The span model could not be fitted: {exc}. The previous model keeps serving."
                                    ) from exc
    timings["fit_s"] = time.perf_counter() - t1
    timings["warm_start"] = float(warm is not None)
    timings["search_due"] = float(bayes.search_due(model.posterior))
    timings["n_tokens"] = float(data.n_tokens)
    return SpanFitted(data, encoder, tagset, model, vectors, targets, carried)


def score(run: TrainingRun, fitted: SpanFitted, timings: dict[str, float]
          ) -> tuple[list[ExampleScore], np.ndarray, str]:
    """Suggested spans and an acquisition score for every unlabelled example, chunk by chunk; queue order."""
    project = run.project
    t0 = time.perf_counter()
    emb = store.load(project.pk, fitted.encoder.name)
    labelled_ids = Annotation.objects.in_project(project).labelled_ids()
    pool_ids = np.setdiff1d(emb.example_ids, labelled_ids)
    strategy = project.acquisition_strategy
    spec = acquisition.get_strategy(strategy)
    rng = np.random.default_rng(run.pk)
    if not len(pool_ids):
        timings["score_s"] = time.perf_counter() - t0
        return [], labelled_ids, strategy
    tokens = ensure_tokens(project, fitted.encoder, pool_ids)

    def chunks() -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, list[list[tuple[int, int]]]]]:
        # The pool's token offsets are read a chunk at a time too: 100k sentences of them are ~200 MB as Python lists.
        for part, flat, bounds in tokens.iter_chunks(pool_ids, tokens_per_chunk=SCORE_TOKENS_PER_CHUNK):
            rows = {pk: offsets_of(text, toks, project.language) for pk, text, toks in
                    Example.objects.filter(id__in=part.tolist()).values_list("id", "text", "tokens")}
            yield part, flat, bounds, [rows.get(int(pk), []) for pk in part.tolist()]

    density = store.density_of(project.pk, fitted.encoder.name, pool_ids) if spec.density else None
    pooled = span_quality.score_pool(
        fitted.model, chunks(), len(pool_ids), strategy=strategy, rng=rng, density=density,
        example_vectors=lambda: emb.vectors[emb.rows_of(pool_ids)], batch_size=settings.SEED_SIZE)
    scores, priority, confidence, suggested = pooled.scores, pooled.priority, pooled.confidence, pooled.spans
    n = len(pool_ids)
    timings["score_s"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    now = timezone.now()
    rows = [
        ExampleScore(example_id=int(pool_ids[i]), project=project,
                     predicted_keys=sorted({s["label"] for s in suggested[i]}), confidence=float(confidence[i]),
                     score=float(scores[i]), priority=float(priority[i]), suggested_spans=suggested[i],
                     updated_at=now)
        for i in range(n)
    ]
    timings["rows_s"] = time.perf_counter() - t1
    timings["pool"] = float(n)
    timings["suggested_spans"] = float(sum(len(s) for s in suggested))
    return rows, labelled_ids, strategy


def record(run: TrainingRun, fitted: SpanFitted, rows: list[ExampleScore], labelled_ids: np.ndarray,
           strategy: str, timings: dict[str, float]) -> ModelVersion:
    """Store the new version and replace the queue's rows with its scores and suggestions, in one transaction."""
    project = run.project
    t0 = time.perf_counter()
    with transaction.atomic():
        # The project's row lock numbers versions one at a time: a fine-tune's candidate may be recorded while a
        # model update records its own (as learning.actions.record).
        Project.objects.select_for_update().filter(pk=project.pk).first()
        number = (ModelVersion.objects.filter(project=project).order_by("-number")
                  .values_list("number", flat=True).first() or 0) + 1
        version = ModelVersion.objects.create(
            project=project, number=number, taxonomy_version=project.current_taxonomy(),
            label_keys=fitted.data.label_keys, encoder=fitted.encoder.name, strategy=strategy,
            n_labels=fitted.n_labels, artifact=fitted.model.to_npz(), metrics=fitted.carried_metrics,
        )
        for row in rows:
            row.model_version_number = version.number
        ExampleScore.objects.filter(project=project, example_id__in=labelled_ids.tolist()).delete()
        loop_base.upsert_scores(rows)
    with _models_lock:
        _models[(version.pk, "")] = fitted.model
    timings["write_s"] = time.perf_counter() - t0
    return version


# --- Quality report ----------------------------------------------------------------------------------------------


def _search_prior(version: ModelVersion, model: spanml.SpanModel, vectors: list[np.ndarray],
                  targets: list[np.ndarray]) -> tuple[spanml.SpanModel, dict[str, Any]]:
    """Run the prior-precision search ``version``'s update left due, if it did: (the model the report measures and
    serves, what the report's metrics keep of the search), as ``learning.actions._search_prior``."""
    if not bayes.search_due(model.posterior):
        return model, {}
    try:
        searched = model.search_prior(vectors, targets)
    except bayes.ModelFitError as exc:  # SpanModelError included
        logger.warning("model version %s: prior precision not searched (%s)", version.pk, exc)
        return model, {}
    same_labels = searched.posterior.n_train == model.posterior.n_train and len(vectors) == version.n_labels
    record = loop_base.keep_prior_search(version, bayes.searched_of(searched.posterior),
                                         searched.to_npz() if same_labels else None)
    return (searched if same_labels else model), record


def measure(version: ModelVersion, *, should_stop: Callable[[], bool]) -> ModelVersion | None:
    """Cross-validated entity-level quality of a span model version, written to its metrics; None if interrupted
    or if the labels no longer fit it."""
    project = version.project
    data = span_training_set(project)
    if data.label_keys != version.label_keys:
        return None  # the taxonomy changed: the update it started records a version to measure
    if len(data.example_ids) < 2 or data.n_entities == 0:
        return None
    encoder = loop_base.encoder_named(version.encoder) or loop_base.current_encoder()
    if encoder.name != version.encoder:
        return None
    tagset = spanml.TagSet(data.label_keys)
    targets = tag_targets(data, tagset)
    vectors = ensure_tokens(project, encoder, data.example_ids).get(data.example_ids)
    model = spanml.SpanModel.from_npz(bytes(version.artifact))  # a copy: calibrate() changes it
    # A fine-tuned encoder's model is measured on the sentences that encoder was not trained on.
    unseen = unseen_mask(project.pk, version.encoder, data.example_ids)
    started = time.perf_counter()
    with threadpool_limits(limits=1, user_api="blas"):
        model, search = _search_prior(version, model, vectors, targets)
        try:
            report = span_quality.evaluate(vectors, targets, tagset, label_names=data.label_names, seed=version.pk,
                                           model=model, should_stop=should_stop, unseen=unseen)
        except span_quality.ReportInterrupted:
            return None
        # Its own temperature and variance scale (folds by sentence) replace those carried from the previous version.
        model.calibrate(vectors, targets, rng=np.random.default_rng(version.pk))
    metrics = {**report, **search, "n_tokens": data.n_tokens, "report_version": version.number,
               "report_seconds": round(time.perf_counter() - started, 4)}
    updated = ModelVersion.objects.filter(pk=version.pk, report_at__isnull=True).update(
        metrics=metrics, artifact=model.to_npz(), report_at=timezone.now())
    if not updated:
        return None
    version.refresh_from_db()
    return version

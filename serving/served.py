"""Which model version serves a project, at which threshold; promotion and rollback.

A web process keeps the posterior of each project's serving version in memory. Every
prediction request runs one indexed query (`serving_state`) that says which version
serves now; the posterior is only reloaded when that id changes. So a promotion or a
rollback made anywhere (another web machine, a worker after training) takes effect on
the next request of every process, without a restart and without loading the model per
request.
"""
from __future__ import annotations

import functools
import logging
import threading
from dataclasses import dataclass
from datetime import datetime
from types import SimpleNamespace
from typing import Any, TypedDict

import numpy as np
from django.db import transaction
from django.db.models import OuterRef, QuerySet, Subquery
from django.utils import timezone

from annotation.models import Annotation
from labelhub.errors import ActionError
from learning import bayes, span_loop, store
from learning import events as learning_events
from learning.models import Metrics, ModelVersion
from projects.models import Label, Project, TaxonomyVersion
from serving import monitoring, webhooks
from serving.models import (
    DriftReference,
    ModelPromotion,
    PromotionKind,
    ServingConfig,
    ThresholdMode,
)
from serving.prepared import Prepared

logger = logging.getLogger(__name__)

DRIFT_SAMPLE = 2000


class NoModelError(Exception):
    """The project has no model version to serve yet."""


@dataclass(frozen=True)
class ServingState:
    version_id: int | None
    taxonomy_id: int | None
    threshold_mode: str
    confidence_threshold: float
    target_accuracy: float | None
    auto_promote: bool
    pinned: bool
    # When the serving version's quality report (figures and calibration) landed; None before it.
    report_at: datetime | None = None


_FIELDS = ("newest_id", "newest_report_at", "taxonomy_now", "serving__promoted_version_id",
           "serving__promoted_version__report_at", "serving__threshold_mode", "serving__confidence_threshold",
           "serving__target_accuracy", "serving__auto_promote")


def _state_query(project_id: int) -> QuerySet[Project]:
    versions = ModelVersion.objects.filter(project=OuterRef("pk")).order_by("-number")
    newest = versions.values("id")[:1]
    newest_report = versions.values("report_at")[:1]
    taxonomy = TaxonomyVersion.objects.filter(project=OuterRef("pk")).order_by("-number").values("id")[:1]
    return (Project.objects.filter(pk=project_id)
            .annotate(newest_id=Subquery(newest), newest_report_at=Subquery(newest_report),
                      taxonomy_now=Subquery(taxonomy))
            .values_list(*_FIELDS))


# Asked on every prediction: compiled to SQL once per process (the compiling cost more CPU than the query).
_STATE = Prepared(_state_query)


@functools.cache
def _defaults() -> ServingConfig:
    return ServingConfig()


def serving_state(project_id: int) -> ServingState:
    """One query: the version that serves (promoted, else the newest), the current taxonomy and the threshold."""
    found = _STATE.first(int(project_id))
    if found is None:
        raise Project.DoesNotExist(project_id)
    row = dict(zip(_FIELDS, found, strict=True))
    promoted = row["serving__promoted_version_id"]
    defaults = _defaults()
    auto = row["serving__auto_promote"]
    return ServingState(
        version_id=promoted or row["newest_id"],
        taxonomy_id=row["taxonomy_now"],
        threshold_mode=row["serving__threshold_mode"] or defaults.threshold_mode,
        confidence_threshold=(row["serving__confidence_threshold"]
                              if row["serving__confidence_threshold"] is not None else defaults.confidence_threshold),
        target_accuracy=row["serving__target_accuracy"],
        auto_promote=defaults.auto_promote if auto is None else auto,
        pinned=promoted is not None and promoted != row["newest_id"],
        report_at=row["serving__promoted_version__report_at"] if promoted else row["newest_report_at"],
    )


def serving_config(project: Project) -> ServingConfig:
    config, _ = ServingConfig.objects.get_or_create(project=project)
    return config


# --- Thresholds ---------------------------------------------------------------------------------------------------


@dataclass
class Threshold:
    value: float
    mode: str
    expected_coverage: float | None  # share of inputs answered automatically (the automation rate)
    expected_accuracy: float | None  # accuracy of those automated answers
    note: str = ""


class CurvePoint(TypedDict):
    threshold: float
    coverage: float
    accuracy: float | None  # stored NaN (no item kept) comes back as null


def is_span_report(metrics: Metrics | None) -> bool:
    """A span model's report (learning.span_quality): its routing curve is per predicted span."""
    return metrics is not None and metrics.raw.get("task") == "span"


def curve_of(metrics: Metrics | None) -> list[CurvePoint]:
    """The version's accuracy-vs-coverage points (cross-validated), [] for versions trained before it existed.

    Span models: the span-level precision-vs-coverage curve of the report's cross-validated predictions
    (`span_precision_coverage`: at each confidence threshold, the share of predicted spans at or above it and
    the share of those that are exactly right, start, end and label). "accuracy" is then that precision, and
    the threshold a target accuracy picks is the lowest whose kept spans reach it.
    """
    if is_span_report(metrics):
        assert metrics is not None
        points = list(metrics.raw.get("span_precision_coverage") or [])
    else:
        points = metrics.accuracy_coverage if metrics is not None else []
    clean: list[CurvePoint] = []
    for p in points:
        try:
            clean.append({"threshold": float(p["threshold"]), "coverage": float(p["coverage"]),
                          "accuracy": None if p.get("accuracy") is None else float(p["accuracy"])})
        except (KeyError, TypeError, ValueError):
            continue
    return sorted(clean, key=lambda p: p["threshold"])


def point_at(curve: list[CurvePoint], threshold: float) -> CurvePoint | None:
    """The curve point that a confidence threshold falls on (the highest curve threshold at or below it)."""
    below = [p for p in curve if p["threshold"] <= threshold + 1e-12]
    return below[-1] if below else (curve[0] if curve else None)


def threshold_for(state: ServingState | ServingConfig, metrics: Metrics | None) -> Threshold:
    """The confidence threshold in force: the manager's, or the lowest one whose automated answers reach
    the target accuracy on cross-validated predictions (the most automation that meets the target)."""
    curve = curve_of(metrics)
    mode = state.threshold_mode
    if mode == ThresholdMode.TARGET and state.target_accuracy is not None:
        what = "span precision" if is_span_report(metrics) else "accuracy"
        if not curve:
            return Threshold(state.confidence_threshold, ThresholdMode.CONFIDENCE, None, None,
                             f"This model version has no {what}-vs-coverage curve: retrain to get the curve. "
                             "Until then the confidence threshold applies.")
        meeting = [p for p in curve if p["accuracy"] is not None and p["coverage"] > 0
                   and p["accuracy"] >= state.target_accuracy]
        if not meeting:
            return Threshold(1.0 + 1e-9, mode, 0.0, None,
                             f"No threshold reaches {state.target_accuracy:.0%} {what} yet: every input goes "
                             "to a person until the model improves.")
        best = meeting[0]
        return Threshold(best["threshold"], mode, best["coverage"], best["accuracy"], SPAN_NOTE
                         if is_span_report(metrics) else "")
    point = point_at(curve, state.confidence_threshold) if curve else None
    return Threshold(state.confidence_threshold, ThresholdMode.CONFIDENCE,
                     point["coverage"] if point else None, point["accuracy"] if point else None,
                     (SPAN_NOTE if is_span_report(metrics) else "") if curve
                     else "Retrain to get the accuracy-vs-coverage curve of this version.")


SPAN_NOTE = ("Span model: the figures are per predicted span (cross-validated): the share of spans at or above the "
             "threshold and their precision. An input goes to a person when any of its spans, or its least sure "
             "token, is below the threshold, so fewer inputs than spans are automated.")


# --- The loaded model, cached per process -------------------------------------------------------------------------


@dataclass
class ServedModel:
    version_id: int
    number: int
    label_keys: list[str]
    encoder: str
    posterior: bayes.Posterior
    metrics: Metrics
    taxonomy_id: int | None
    names: dict[str, str]  # label key -> name in the current taxonomy (else the model's own)
    threshold: Threshold
    # The version's report when loaded: the report job rewrites the calibration and the curve of a
    # version that already serves, so a new report_at means loading it again.
    report_at: datetime | None = None
    # The serving settings `threshold` was derived from (mode, confidence threshold, target accuracy):
    # it is derived again only when they change, not on every request.
    threshold_inputs: tuple[str, float, float | None] | None = None
    # Span projects: the learning.spans.SpanModel (its `posterior` is the one above); None for classification.
    span_model: Any | None = None
    language: str = "en"  # span projects: the tokenizer's language

    @property
    def is_span(self) -> bool:
        return self.span_model is not None


_models: dict[int, ServedModel] = {}
_lock = threading.Lock()


def _label_names(version: ModelVersion, taxonomy_id: int | None) -> dict[str, str]:
    names = dict(Label.objects.filter(version_id=version.taxonomy_version_id).values_list("key", "name"))
    if taxonomy_id is not None:
        names.update(Label.objects.filter(version_id=taxonomy_id).values_list("key", "name"))
    return names


def served_model(project_id: int) -> ServedModel:
    """The project's serving model, loaded once per process per version; NoModelError before the first."""
    state = serving_state(project_id)
    if state.version_id is None:
        raise NoModelError("This project has no model yet: label examples of at least two labels and it trains "
                           "within seconds.")
    with _lock:
        cached = _models.get(project_id)
    inputs = (state.threshold_mode, state.confidence_threshold, state.target_accuracy)
    if (cached is not None and cached.version_id == state.version_id and cached.taxonomy_id == state.taxonomy_id
            and cached.report_at == state.report_at):
        if inputs != cached.threshold_inputs:
            cached = ServedModel(**{**cached.__dict__, "threshold": threshold_for(state, cached.metrics),
                                    "threshold_inputs": inputs})
            with _lock:
                _models[project_id] = cached
        return cached
    if cached is not None and cached.version_id == state.version_id and cached.report_at == state.report_at:
        # Only the taxonomy changed (a rename): keep the posterior, refresh the names.
        version = ModelVersion.objects.only("taxonomy_version_id").get(pk=state.version_id)
        model = ServedModel(**{**cached.__dict__, "taxonomy_id": state.taxonomy_id,
                               "names": _label_names(version, state.taxonomy_id),
                               "threshold": threshold_for(state, cached.metrics), "threshold_inputs": inputs})
    else:
        version = ModelVersion.objects.select_related("project").get(pk=state.version_id)
        span_model = None
        try:
            if version.project.is_span:
                span_model = span_loop.load_span_model(version)
                posterior = span_model.posterior
            else:
                posterior = bayes.Posterior.from_bytes(bytes(version.artifact))
        except (ValueError, KeyError, OSError) as exc:  # a damaged or foreign artifact: say so, never a 500
            logger.exception("model version %s could not be loaded", version.pk)
            raise NoModelError(f"Model v{version.number} could not be loaded ({exc.__class__.__name__}); promote "
                               "another version or retrain.") from exc
        model = ServedModel(
            version_id=version.pk, number=version.number, label_keys=list(version.label_keys),
            encoder=version.encoder, posterior=posterior,
            metrics=version.report, taxonomy_id=state.taxonomy_id,
            names=_label_names(version, state.taxonomy_id), threshold=threshold_for(state, version.report),
            report_at=version.report_at, threshold_inputs=inputs, span_model=span_model,
            language=version.project.language or "en",
        )
    with _lock:
        _models[project_id] = model
    return model


def forget(project_id: int | None = None) -> None:
    with _lock:
        if project_id is None:
            _models.clear()
        else:
            _models.pop(project_id, None)


# --- Promotion ----------------------------------------------------------------------------------------------------


@transaction.atomic
def promote_version(project: Project, *, version: ModelVersion, user: Any,
                    kind: str = PromotionKind.PROMOTE) -> ModelPromotion | None:
    """Serve `version` from the next request on. Promoting an older version pins it (new versions
    stop being promoted automatically until a manager promotes the newest again)."""
    if version.project_id != project.pk:
        raise ActionError("That model version belongs to another project.")
    config = ServingConfig.objects.select_for_update().get_or_create(project=project)[0]
    # The fast loop follows the serving version's encoder (a fine-tuned one, or back to the configured one).
    learning_events.model_version_promoted.send(sender=ModelVersion, version=version)
    versions = ModelVersion.objects.filter(project=project).order_by("-number").values_list("id", flat=True)
    newest = versions.first()
    # Before any promotion the newest version serves; a version trained just now did not serve yet.
    previous_id = config.promoted_version_id or (
        versions.exclude(pk=version.pk).first() if kind == PromotionKind.AUTO else newest)
    if kind != PromotionKind.AUTO:
        config.auto_promote = version.pk == newest
    if previous_id == version.pk:
        config.promoted_version = version
        config.save(update_fields=["promoted_version", "auto_promote"])
        return None
    config.promoted_version = version
    config.updated_at = timezone.now()
    config.save(update_fields=["promoted_version", "auto_promote", "updated_at"])
    promotion = ModelPromotion.objects.create(project=project, version=version, previous_id=previous_id,
                                              kind=kind, by=user if getattr(user, "is_authenticated", False) else None)
    webhooks.emit(project.pk, "model.promoted", {
        "model_version": version.number, "previous_version": (
            ModelVersion.objects.filter(pk=previous_id).values_list("number", flat=True).first()
            if previous_id else None),
        "kind": kind, "metrics": version.report.headline(),
    })
    return promotion


def rollback(project: Project, *, user: Any) -> ModelPromotion:
    """Serve the version that served before the current one (and pin it)."""
    current = serving_state(project.pk).version_id
    last = ModelPromotion.objects.filter(project=project, version_id=current, previous__isnull=False).first()
    target = last.previous if last else (
        ModelVersion.objects.filter(project=project, number__lt=ModelVersion.objects.get(pk=current).number)
        .order_by("-number").first() if current else None)
    if target is None:
        raise ActionError("There is no earlier model version to roll back to.", status=409)
    promotion = promote_version(project, version=target, user=user, kind=PromotionKind.ROLLBACK)
    assert promotion is not None
    return promotion


@transaction.atomic
def set_auto_promote(project: Project, *, enabled: bool, user: Any) -> ServingConfig:
    """Turn automatic promotion on (the newest version serves at once) or off (the serving one is pinned)."""
    newest = ModelVersion.objects.filter(project=project).order_by("-number").first()
    if enabled and newest is not None:
        promote_version(project, version=newest, user=user)
    config = ServingConfig.objects.select_for_update().get_or_create(project=project)[0]
    config.auto_promote = enabled
    config.save(update_fields=["auto_promote"])
    forget(project.pk)
    return config


@transaction.atomic
def set_threshold(project: Project, *, mode: str, confidence_threshold: float | None = None,
                  target_accuracy: float | None = None) -> ServingConfig:
    """Set where the human fallback starts: a confidence threshold, or a target accuracy to derive it from."""
    config = ServingConfig.objects.select_for_update().get_or_create(project=project)[0]
    if mode == ThresholdMode.TARGET:
        if target_accuracy is None or not 0 < target_accuracy <= 1:
            raise ActionError("The target accuracy must be between 0 and 100 %.")
        config.target_accuracy = target_accuracy
    elif mode == ThresholdMode.CONFIDENCE:
        if confidence_threshold is None or not 0 <= confidence_threshold <= 1:
            raise ActionError("The confidence threshold must be between 0 and 1.")
        config.confidence_threshold = confidence_threshold
    else:
        raise ActionError(f"Unknown threshold mode {mode!r}.")
    config.threshold_mode = mode
    config.updated_at = timezone.now()
    config.save()
    return config


def version_recorded(version_id: int) -> None:
    """After training (in the worker): promote the new version unless a manager pinned one, and keep a
    sample of its training embeddings for the drift signal. Never raises: training already succeeded."""
    try:
        version = ModelVersion.objects.select_related("project").get(pk=version_id)
        state = serving_state(version.project_id)
        if state.auto_promote:
            promote_version(version.project, version=version, user=None, kind=PromotionKind.AUTO)
        build_drift_reference(version)
    except Exception:  # noqa: BLE001 - a serving hiccup must not fail a finished training run
        logger.exception("after-training serving step failed for model version %s", version_id)


def build_drift_reference(version: ModelVersion) -> DriftReference | None:
    """Store a sample of the training embeddings and their typical nearest-neighbour distance."""
    # The vectors the version was trained on (a fine-tuned encoder's, maybe), not the configured encoder's.
    encoder = SimpleNamespace(name=version.encoder)
    emb = store.load(version.project_id, encoder.name)
    labelled = Annotation.objects.in_project(version.project).labelled_ids()
    ids = labelled[emb.has(labelled)] if len(labelled) else labelled
    if len(ids) < 5:
        return None
    rng = np.random.default_rng(version.pk)
    if len(ids) > DRIFT_SAMPLE:
        ids = np.sort(rng.choice(ids, DRIFT_SAMPLE, replace=False))
    X = emb.vectors[emb.rows_of(ids)].astype(np.float32)
    radius = monitoring.nearest_neighbour_radius(X)
    reference, _ = DriftReference.objects.update_or_create(model_version=version, defaults={
        "encoder": encoder.name, "dim": X.shape[1], "count": X.shape[0],
        "vectors": X.astype(np.float16).tobytes(), "radius": radius,
    })
    return reference


def serving_summary(project: Project) -> dict[str, Any]:
    """What the serving page and `GET …/serving/` show: version, threshold, expected automation, the curve."""
    state = serving_state(project.pk)
    version = ModelVersion.objects.filter(pk=state.version_id).first() if state.version_id else None
    threshold = threshold_for(state, version.report) if version else None
    return {
        "version": version,
        "model_version": version.number if version else None,
        "auto_promote": state.auto_promote,
        "threshold_mode": state.threshold_mode,
        "confidence_threshold": state.confidence_threshold,
        "target_accuracy": state.target_accuracy,
        "threshold": min(threshold.value, 1.0) if threshold else None,
        "expected_automation_rate": threshold.expected_coverage if threshold else None,
        "expected_accuracy": threshold.expected_accuracy if threshold else None,
        "note": threshold.note if threshold else "No model yet.",
        "accuracy_coverage": curve_of(version.report) if version else [],
    }


def version_rows(project: Project, *, limit: int = 100) -> list[dict[str, Any]]:
    """The newest model versions with their headline figures and whether each serves (newest first)."""
    serving_id = serving_state(project.pk).version_id
    rows = []
    for v in ModelVersion.objects.filter(project=project).order_by("-number").values(
            "id", "number", "created_at", "n_labels", "encoder", "strategy", "metrics")[:limit]:
        metrics = Metrics(v["metrics"] or {})
        rows.append({
            "id": v["id"], "number": v["number"], "created_at": v["created_at"], "n_labels": v["n_labels"],
            "encoder": v["encoder"], "strategy": v["strategy"], "metrics": metrics.raw,
            "accuracy": metrics.value("accuracy"), "macro_f1": metrics.value("macro_f1"), "ece": metrics.ece,
            "is_serving": v["id"] == serving_id, "has_accuracy_coverage": bool(metrics.accuracy_coverage),
            # A fine-tuned encoder's model: its report measured only the labels that encoder never saw.
            "unseen_only": bool(metrics.raw.get("unseen_only")), "n_eval": metrics.n_eval,
        })
    return rows

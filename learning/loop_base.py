"""What the classification loop (learning.actions) and the span loop (learning.span_loop) share:
the encoder in use, the error a run fails with, the queue's upsert, and the prior precision the
report job searched off the update's path (``bayes.search_prior``).

Its own module so that the span loop needs nothing from `learning.actions`, which dispatches to it:
the two would otherwise import each other.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from django.conf import settings

from annotation.models import ExampleScore
from learning.models import ModelVersion

UPSERT_BATCH = 5000
# Key of a version's metrics under which the report job keeps the prior precision it searched for
# the next model updates (a refit that found the search due marked it: ``bayes.search_due``).
PRIOR_SEARCH = "prior_search"


class TrainingError(Exception):
    """Why a model could not be fitted, in words a project manager can act on."""


def current_encoder() -> Any:
    # Imported on first use, not with this module: it loads transformers and a model, which a
    # web process that never predicts (and every management command) should not pay for.
    from learning.encoder import get_encoder

    return get_encoder(settings.ENCODER or None, backend=settings.ENCODER_BACKEND,
                       threads=settings.ENCODER_THREADS or None, onnx_dir=settings.ONNX_DIR)


def encoder_named(name: str) -> Any | None:
    """The configured model on the backend whose vectors are called ``name``, or None.

    A model trained before the backend changed (say PyTorch to int8 ONNX) keeps serving with
    the backend it was trained on until a retrain replaces it.
    """
    from learning.encoder import cuda_available, encoder_name, get_encoder

    with _finetuned_lock:
        known = name in _finetuned
    if known:
        # A fine-tuned version serving: found on every prediction, so without hashing the base model's files.
        return finetuned_named(name)
    model = settings.ENCODER or None
    for backend in ("onnx-int8", "torch" if cuda_available() else "onnx"):
        if encoder_name(model, backend=backend) == name:
            return get_encoder(model, backend=backend, threads=settings.ENCODER_THREADS or None,
                               onnx_dir=settings.ONNX_DIR)
    return finetuned_named(name)


# Fine-tuned encoders' folders by vector name, as found: a name is a fingerprint of the weights, so it never moves.
_finetuned: dict[str, str] = {}
_finetuned_lock = threading.Lock()


def finetuned_encoder(path: str) -> Any:
    """The fine-tuned encoder in folder ``path`` (relative to FINETUNE_DIR), loaded once per process."""
    from learning.encoder import get_encoder

    return get_encoder(Path(settings.FINETUNE_DIR) / path, backend=settings.ENCODER_BACKEND,
                       threads=settings.ENCODER_THREADS or None, onnx_dir=settings.ONNX_DIR)


def finetuned_named(name: str) -> Any | None:
    """The fine-tuned encoder (learning.finetuning) whose vectors are called ``name``, or None."""
    from learning.models import FinetuneRun

    with _finetuned_lock:
        path = _finetuned.get(name)
    if path is None:
        path = (FinetuneRun.objects.filter(encoder=name).exclude(encoder_path="")
                .values_list("encoder_path", flat=True).first())
        if not path:
            return None
    try:
        encoder = finetuned_encoder(path)
    except OSError:
        return None  # the folder is gone (or not mounted here): the caller says the encoder is missing
    if encoder.name != name:
        return None
    with _finetuned_lock:
        _finetuned[name] = path
    return encoder


def upsert_scores(scores: list[ExampleScore]) -> None:
    """Write the queue's rows for a new model version (insert or replace, in batches)."""
    for start in range(0, len(scores), UPSERT_BATCH):
        ExampleScore.objects.bulk_create(
            scores[start:start + UPSERT_BATCH], update_conflicts=True, unique_fields=["example"],
            update_fields=["model_version_number", "predicted_keys", "confidence", "score", "priority", "is_seed",
                           "suggested_spans", "updated_at"],
        )


def searched_prior(project_id: int, encoder_name: str, label_keys: list[str]) -> tuple[float, int] | None:
    """The newest ``(prior precision, label count)`` the report job searched for this project's model of
    ``encoder_name`` over ``label_keys``; None if none was (``bayes.fit``'s ``searched``).

    Read from whichever version the report measured, not only the newest: updates go on while it runs."""
    record = (ModelVersion.objects.filter(project_id=project_id, encoder=encoder_name, label_keys=label_keys,
                                          metrics__has_key=PRIOR_SEARCH)
              .order_by("-number").values_list(f"metrics__{PRIOR_SEARCH}", flat=True).first())
    if not isinstance(record, dict):
        return None
    try:
        return float(record["prior_precision"]), int(record["n"])
    except (KeyError, TypeError, ValueError):
        return None


def keep_prior_search(version: ModelVersion, searched: tuple[float, int], artifact: bytes | None
                      ) -> dict[str, Any]:
    """Write a search the report job ran for ``version`` to its metrics at once (the next update takes it even if
    the cross-validation that follows gives way), and ``artifact``, the searched refit, in place of the deferred
    one when it was made on the version's own labels; what the report's metrics keep of it."""
    record = {PRIOR_SEARCH: {"prior_precision": float(searched[0]), "n": int(searched[1])}}
    changes: dict[str, Any] = {"metrics": {**version.metrics, **record}}
    if artifact is not None:
        changes["artifact"] = artifact
    ModelVersion.objects.filter(pk=version.pk, report_at__isnull=True).update(**changes)
    return record


def without_prior_search(metrics: dict[str, Any]) -> dict[str, Any]:
    """A version's metrics as carried to the next version: a search belongs to the version it was made for, so
    that ``searched_prior`` finds the newest search, not an older one copied forward."""
    return {k: v for k, v in metrics.items() if k != PRIOR_SEARCH}

"""The prediction API's work: predict, route uncertain inputs to people, and hear their labels back.

Routing an input (confidence below the project's threshold) makes it an example of
the project (metadata source "api"), stores its embedding (already computed to
predict) so training can use it once labelled, and marks its queue entry `is_routed`,
which the annotation queue serves before anything else. When a person labels it,
the annotation layer announces `labels_given` and `serving.receivers` calls
`human_labels_given`, which stamps the prediction and sends the `prediction.labelled` webhook.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np
from django.db import transaction
from django.utils import timezone

from annotation.models import Annotation, ExampleScore
from learning import actions as learning_actions
from learning import decisions, loop_base
from learning import spans as spanml
from learning.models import EmbeddingChunk
from projects.importing import content_hash
from projects.models import Example, Label, Project
from projects.spanformats import SpanFormatError, tokenize
from serving import served as serving
from serving import webhooks
from serving.models import ApiKey, Prediction
from serving.prepared import insert_rows


class EncoderMismatchError(serving.NoModelError):
    """The serving model was trained on another encoder's vectors than this process computes."""


@dataclass
class PredictOutcome:
    model: serving.ServedModel
    predictions: list[Prediction]


def predict(project: Project, *, texts: list[str], api_key: ApiKey | None = None,
            route: bool = True) -> PredictOutcome:
    """Predict labels for texts with the serving model; inputs below the threshold go to people."""
    model = serving.served_model(project.pk)
    # Looked up on the module at each call, so a process-wide override (the tests' fake) applies here too.
    encoder = learning_actions.current_encoder()
    if encoder.name != model.encoder:
        # Trained before the encoder backend changed: served with the backend it was trained on.
        encoder = loop_base.encoder_named(model.encoder) or encoder
    if encoder.name != model.encoder:
        raise EncoderMismatchError(
            f"Model v{model.number} was trained on {model.encoder} embeddings but this server encodes with "
            f"{encoder.name}; set LABELHUB_ENCODER to the model's encoder or retrain.")
    if model.is_span:
        return _predict_spans(project, model, encoder, texts, api_key=api_key, route=route)
    X = encoder.encode(texts)
    proba = model.posterior.predict_proba(X)
    multi = model.posterior.multi_label
    predicted = decisions.predicted_keys(proba, model.label_keys, multi)
    confidence = decisions.confidence(proba, multi)
    threshold = float(model.threshold.value)
    now = timezone.now()
    vectors16 = X.astype(np.float16)
    rows = [
        Prediction(
            id=uuid.uuid4(), project=project, model_version_id=model.version_id, model_version_number=model.number,
            api_key=api_key, content_hash=content_hash(text), predicted_keys=predicted[i],
            probabilities={k: round(float(p), 6) for k, p in zip(model.label_keys, proba[i].tolist(), strict=True)},
            confidence=round(float(confidence[i]), 6), threshold=threshold,
            is_uncertain=bool(confidence[i] < threshold), embedding=vectors16[i].tobytes(), created_at=now,
        )
        for i, text in enumerate(texts)
    ]
    uncertain = [i for i, row in enumerate(rows) if row.is_uncertain]
    if not (route and uncertain):
        # Nothing to route (the usual case): the log rows are one INSERT, atomic on its own, with
        # no transaction around it. Written before the answer, so GET …/predictions/{id} finds them.
        insert_rows(rows)
        return PredictOutcome(model=model, predictions=rows)
    with transaction.atomic():
        _route(project, model, texts, rows, uncertain, vectors16, encoder.name)
        insert_rows(rows)
        routed = [row for row in rows if row.is_routed]
        if routed:
            webhooks.emit(project.pk, "prediction.routed", {
                "predictions": [describe(row, model.names) for row in routed]})
    return PredictOutcome(model=model, predictions=rows)


# --- Span projects ---------------------------------------------------------------------------------------------------


class UntokenizableError(serving.NoModelError):
    """The project's language has no tokenizer here (a project setting to change, not the client's input)."""


def _predict_spans(project: Project, model: serving.ServedModel, encoder: Any, texts: list[str], *,
                   api_key: ApiKey | None, route: bool) -> PredictOutcome:
    """Spans for each text: tokens from the project's tokenizer, token vectors from the encoder, the span
    model's constrained decoding; routed to people when any span's confidence, or the least sure token's
    (a possibly missed entity), is below the threshold."""
    try:
        offsets = [list(tokenize(text, model.language)) for text in texts]
    except SpanFormatError as exc:
        raise UntokenizableError(f"This project's texts cannot be tokenized: {exc}.") from exc
    assert model.span_model is not None
    span_model = model.span_model
    with_tokens = [i for i, o in enumerate(offsets) if o]
    encoded = encoder.encode_tokens([texts[i] for i in with_tokens], [offsets[i] for i in with_tokens]) \
        if with_tokens else []
    vectors = [np.asarray(v, dtype=np.float32) for v in encoded]
    decoded = span_model.predict(vectors, [offsets[i] for i in with_tokens]) if with_tokens else []
    threshold = float(model.threshold.value)
    now = timezone.now()
    dim = int(vectors[0].shape[1]) if vectors else int(getattr(encoder, "dim", 0) or 0)
    sentence = np.zeros((len(texts), dim), dtype=np.float32)
    if with_tokens:  # the unit-length mean of the token vectors, the span loop's sentence vector
        flat, bounds = spanml.pack(vectors, np.float32)
        sentence[with_tokens] = spanml.sentence_vectors(flat.reshape(-1, dim), bounds)
    vectors16 = sentence.astype(np.float16)
    results: dict[int, Any] = dict(zip(with_tokens, decoded, strict=True))
    rows = []
    for i, text in enumerate(texts):
        result = results.get(i)
        spans: list[dict[str, Any]] = [
            {"start": int(sp["start"]), "end": int(sp["end"]), "text": text[int(sp["start"]):int(sp["end"])],
             "label": str(sp["label"]), "confidence": round(float(sp["confidence"]), 6)}
            for sp in (result.spans if result is not None else [])]
        # The least sure token's probability of its most probable tag (as the quality report's curve).
        token_confidence = round(float(result.marginals.max(axis=1).min()), 6) \
            if result is not None and len(result.marginals) else 1.0
        confidence = min([token_confidence, *(float(sp["confidence"]) for sp in spans)])
        rows.append(Prediction(
            id=uuid.uuid4(), project=project, model_version_id=model.version_id, model_version_number=model.number,
            api_key=api_key, content_hash=content_hash(text), predicted_keys=sorted({sp["label"] for sp in spans}),
            probabilities={}, confidence=confidence, threshold=threshold, is_uncertain=bool(confidence < threshold),
            embedding=vectors16[i].tobytes(), created_at=now, spans=spans, token_confidence=token_confidence))
    uncertain = [i for i, row in enumerate(rows) if row.is_uncertain]
    if not (route and uncertain):
        insert_rows(rows)
        return PredictOutcome(model=model, predictions=rows)
    with transaction.atomic():
        _route(project, model, texts, rows, uncertain, vectors16, encoder.name, offsets=offsets)
        insert_rows(rows)
        routed = [row for row in rows if row.is_routed]
        if routed:
            webhooks.emit(project.pk, "prediction.routed", {
                "predictions": [describe(row, model.names) for row in routed]})
    return PredictOutcome(model=model, predictions=rows)


def _route(project: Project, model: serving.ServedModel, texts: list[str], rows: list[Prediction],
           uncertain: list[int], vectors16: np.ndarray, encoder_name: str,
           offsets: list[list[tuple[int, int]]] | None = None) -> None:
    """Make each uncertain input an example at the head of the annotation queue (unless already labelled).

    Span projects (`offsets` given): the example keeps the tokens it was predicted on, and its queue entry
    the predicted spans, which the labelling page shows as suggestions to accept or correct."""
    first: dict[str, int] = {}
    for i in uncertain:
        first.setdefault(rows[i].content_hash, i)
    existing = dict(Example.objects.filter(project=project, content_hash__in=list(first))
                    .values_list("content_hash", "id"))
    marker = str(uuid.uuid4())
    Example.objects.bulk_create(
        [Example(project=project, text=texts[i], content_hash=h,
                 tokens=[list(t) for t in offsets[i]] if offsets is not None else None,
                 metadata={"source": "api", "prediction_id": str(rows[i].id), "route": marker})
         for h, i in first.items() if h not in existing],
        ignore_conflicts=True,  # the same text routed by a concurrent request: theirs wins, we reuse it
    )
    examples = {h: (pk, meta) for h, pk, meta in Example.objects.filter(project=project, content_hash__in=list(first))
                .values_list("content_hash", "id", "metadata")}
    created = [h for h in first if h not in existing and examples[h][1].get("route") == marker]
    if created:
        ids = np.array([examples[h][0] for h in created], dtype=np.int64)
        block = vectors16[[first[h] for h in created]]
        EmbeddingChunk.objects.create(project=project, encoder=encoder_name, dim=block.shape[1], count=len(ids),
                                      example_ids=ids.tobytes(), vectors=block.tobytes())
    ids_by_hash = {h: pk for h, (pk, _) in examples.items()}
    labelled = set(Annotation.objects.filter(example_id__in=list(ids_by_hash.values()))
                   .values_list("example_id", flat=True).distinct())
    now = timezone.now()
    scores = []
    for h, i in first.items():
        example_id = ids_by_hash[h]
        if example_id in labelled:
            continue  # a person already answered it: the prediction shows that label, nobody is asked again
        suggested = [{k: sp[k] for k in ("start", "end", "label", "confidence")} for sp in rows[i].spans or []]
        scores.append(ExampleScore(example_id=example_id, project=project, model_version_number=model.number,
                                   predicted_keys=rows[i].predicted_keys, confidence=rows[i].confidence,
                                   score=1.0 - rows[i].confidence, priority=0.0, is_routed=True, updated_at=now,
                                   suggested_spans=suggested))
    if scores:
        # Only is_routed changes on an existing queue entry: its scores are the training job's.
        ExampleScore.objects.bulk_create(scores, update_conflicts=True, unique_fields=["example"],
                                         update_fields=["is_routed", "updated_at"])
    for i in uncertain:
        example_id = ids_by_hash[rows[i].content_hash]
        rows[i].example_id = example_id
        rows[i].is_routed = example_id not in labelled


def label_names(project: Project | int) -> dict[str, str]:
    """Every label key the project ever had, with its newest name (one query)."""
    rows = (Label.objects.filter(version__project=project).order_by("version__number")
            .values_list("key", "name"))
    return dict(rows)


def _named_spans(spans: list[dict[str, Any]], names: dict[str, str]) -> list[dict[str, Any]]:
    return [{**{k: v for k, v in sp.items() if k != "label"}, "label": names.get(sp["label"], sp["label"]),
             "label_key": sp["label"]} for sp in spans]


def describe(prediction: Prediction, names: dict[str, str]) -> dict[str, Any]:
    """A prediction as the API returns it: labels by name, the probability of every label (classification) or
    the spans with their confidence (span projects: `label` null, `probabilities` empty)."""
    labels = [names.get(k, k) for k in prediction.predicted_keys]
    if prediction.spans is not None:
        return {
            "prediction_id": str(prediction.id),
            "spans": _named_spans(prediction.spans, names),
            "label": None,
            "labels": labels,
            "label_keys": list(prediction.predicted_keys),
            "probabilities": {},
            "confidence": prediction.confidence,
            "token_confidence": prediction.token_confidence,
            "threshold": prediction.threshold,
            "is_uncertain": prediction.is_uncertain,
            "is_routed": prediction.is_routed,
            "example_id": prediction.example_id,
            "model_version": prediction.model_version_number,
            "created_at": prediction.created_at.isoformat(),
        }
    return {
        "prediction_id": str(prediction.id),
        "label": labels[0] if len(labels) == 1 else None,
        "labels": labels,
        "label_keys": list(prediction.predicted_keys),
        "probabilities": {names.get(k, k): p for k, p in prediction.probabilities.items()},
        "confidence": prediction.confidence,
        "threshold": prediction.threshold,
        "is_uncertain": prediction.is_uncertain,
        "is_routed": prediction.is_routed,
        "example_id": prediction.example_id,
        "model_version": prediction.model_version_number,
        "created_at": prediction.created_at.isoformat(),
    }


def human_label(prediction: Prediction, names: dict[str, str]) -> dict[str, Any] | None:
    """The latest annotation of the prediction's example, or None while nobody has labelled it."""
    if prediction.example_id is None:
        return None
    annotation = (Annotation.objects.filter(example_id=prediction.example_id).order_by("-created_at", "-id")
                  .values("label_keys", "spans", "created_at", "example__text").first())
    if annotation is None:
        return None
    labels = [names.get(k, k) for k in annotation["label_keys"]]
    answer = {"label": labels[0] if len(labels) == 1 else None, "labels": labels,
              "label_keys": list(annotation["label_keys"]), "labelled_at": annotation["created_at"].isoformat()}
    if prediction.spans is not None:  # a span project: the person's spans ([] is "no entity here")
        text = annotation["example__text"]
        answer["label"] = None
        answer["spans"] = _named_spans([{"start": int(sp["start"]), "end": int(sp["end"]),
                                         "text": text[int(sp["start"]):int(sp["end"])], "label": sp["label"]}
                                        for sp in annotation["spans"] or []], names)
    return answer


def human_labels_given(project_id: int, example_ids: list[int]) -> None:
    """Called on commit after people label examples: stamp routed predictions and tell the webhooks.

    One indexed query when none of the examples came from a prediction (the usual case).
    """
    if not example_ids:
        return
    pending = list(Prediction.objects.filter(example_id__in=list(example_ids), is_routed=True, project_id=project_id,
                                             human_labelled_at__isnull=True))
    if not pending:
        return
    with transaction.atomic():
        now = timezone.now()
        Prediction.objects.filter(pk__in=[p.pk for p in pending], human_labelled_at__isnull=True).update(
            human_labelled_at=now)
        names = label_names(project_id)
        payload = []
        for prediction in pending:
            prediction.human_labelled_at = now
            payload.append({**describe(prediction, names), "human": human_label(prediction, names)})
        webhooks.emit(project_id, "prediction.labelled", {"predictions": payload})

"""Data out: a project's examples and labels (six classification formats, four span formats), its taxonomy
history, a model version.

One reader (`iter_items`) walks the project's examples in id order with one query read a chunk at a
time (a server-side cursor on PostgreSQL), fetches each chunk's annotations and the model's current
suggestions, and yields one `Item` per example; the writers turn items into bytes as they come.
Memory stays flat in the number of examples for every format but spaCy's (a `DocBin` is one
msgpack blob, built in memory).

Which formats a project offers follows its task type (`Format.tasks`): classification projects export
labels per example, span projects export character spans (JSONL), IOB2 tags per token (CoNLL, and the
Hugging Face `tokens`/`ner_tags` layout) or `doc.ents` (spaCy). A format of the other task type is a
400 with the formats that fit, not a file of the wrong shape.

It lives in the learning layer because an export can carry the model's predictions and the export
page offers each model version as a download; everything else it reads is from the layers below.
"""
from __future__ import annotations

import csv
import io
import json
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import cached_property
from itertools import islice
from typing import IO, Any, cast

import yaml
from django.db import connection, reset_queries
from django.db.models import Exists, OuterRef

from annotation.models import Annotation, ExampleScore
from labelhub.errors import ActionError
from learning.models import ModelVersion
from projects.models import Example, Project, TaxonomyVersion
from projects.taxonomy import taxonomy_diff

CHUNK = 2000
MAX_NUMBER = 2**31 - 1  # version numbers are PostgreSQL integers
# A spaCy DocBin is built in memory, about 10 KB per doc (benchmarks/README.md): past this many
# examples the export is refused rather than let a web worker run out of memory.
SPACY_MAX_DOCS = 200_000
FLUSH_BYTES = 256 * 1024


CLASSIFICATION_TASKS = frozenset({"single_label", "multi_label"})
SPAN_TASKS = frozenset({"span"})


@dataclass(frozen=True)
class Format:
    name: str
    title: str
    content_type: str
    extension: str
    description: str
    tasks: frozenset[str] = CLASSIFICATION_TASKS


FORMATS: dict[str, Format] = {f.name: f for f in (
    Format("csv", "CSV", "text/csv; charset=utf-8", "csv",
           "One row per example: id, text, label (several joined by |), then the chosen metadata columns."),
    Format("jsonl", "JSON Lines", "application/x-ndjson; charset=utf-8", "jsonl",
           "One JSON object per line: id, text, label (a list in multi-label projects: labels), metadata keys."),
    Format("hf-jsonl", "Hugging Face datasets (JSON Lines, zip)", "application/zip", "zip",
           "A zip of train.jsonl (label as a class index), dataset_info.json (the features, with the "
           "ClassLabel names) and a dataset card README.md."),
    Format("hf-parquet", "Hugging Face datasets (Parquet)", "application/vnd.apache.parquet", "parquet",
           "One Parquet file whose schema carries the datasets features (ClassLabel names): "
           "load_dataset('parquet', data_files=...) gives the label names back."),
    Format("spacy", "spaCy DocBin (text classification)", "application/octet-stream", "spacy",
           "A .spacy file of docs with doc.cats (1.0 for the given labels, 0.0 for the others), for spacy train."),
    Format("label-studio", "Label Studio JSON", "application/json", "json",
           "A JSON array of tasks: data.text, annotations[].result of type choices, predictions if asked."),
    Format("spans-jsonl", "JSON Lines with character spans", "application/x-ndjson; charset=utf-8", "jsonl",
           "One JSON object per line: id, text, spans [{start, end, label}] (character offsets, end exclusive; "
           "null when unlabelled, [] for 'no entity'), metadata keys. Imports back as it is.", SPAN_TASKS),
    Format("conll", "CoNLL (IOB2)", "text/plain; charset=utf-8", "conll",
           "Labelled examples only: one token per line, a tab, its IOB2 tag (B-label, I-label, O); a blank line "
           "between examples.", SPAN_TASKS),
    Format("spacy-ner", "spaCy DocBin (entities)", "application/octet-stream", "spacy",
           "A .spacy file of docs tokenized as in LabelHub, with doc.ents from the spans (unlabelled docs have "
           "their entities missing, not 'none'), for spacy train.", SPAN_TASKS),
    Format("hf-ner-jsonl", "Hugging Face datasets, token classification (JSON Lines, zip)", "application/zip",
           "zip", "A zip of train.jsonl (tokens, ner_tags as indices into the IOB2 tag list; null when "
           "unlabelled), dataset_info.json (the features, with the ClassLabel tag names) and a dataset card "
           "README.md.", SPAN_TASKS),
)}


def formats_for(project: Project) -> list[Format]:
    """The formats a project of this task type exports to."""
    return [f for f in FORMATS.values() if project.task_type in f.tasks]


def modes_for(project: Project) -> dict[str, str]:
    """What each `annotations` choice means for this project's task type."""
    return SPAN_MODES if project.is_span else ANNOTATION_MODES


# What the modes mean for span projects (documented on the export page, the API and the CLI): "latest" is the
# example's latest annotation's spans; "each" is one row per annotator; "majority" keeps a span (exact start,
# end and label) that more than half of the annotators' latest answers have, or exactly half including the
# newest answer (the tie rule of classification). Spans kept that way never overlap: two of them share a voter,
# and one annotator's spans do not overlap.
SPAN_MODES: dict[str, str] = {
    "latest": "Final: each example's latest answer's spans (a review or re-label overrides earlier ones); "
              "what the model trains on",
    "majority": "Majority: each annotator's latest answer, the spans (same start, end and label) more than half "
                "of them gave; a span exactly half gave is kept if the latest answer has it",
    "each": "Each annotator's: one row per annotator and example (their latest spans), with the annotator's name",
}

ANNOTATION_MODES: dict[str, str] = {
    "latest": "Final: each example's latest answer (a review or re-label overrides earlier ones); "
              "what the model trains on",
    "majority": "Majority: each annotator's latest answer, the label most of them gave (multi-label: the labels "
                "more than half gave); ties go to the latest answer",
    "each": "Each annotator's: one row per annotator and example (their latest answer), with the annotator's name",
}


@dataclass(frozen=True)
class ExportOptions:
    format: str
    labelled_only: bool = False
    annotations: str = "latest"
    metadata: tuple[str, ...] | None = None  # None: every metadata key; (): none
    taxonomy_version: int | None = None  # None: the current version
    predictions: bool = False


TRUE = {"1", "true", "yes", "on"}
FALSE = {"0", "false", "no", "off", ""}


def _flag(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in TRUE:
        return True
    if text in FALSE:
        return False
    raise ActionError(f"{name}={value!r} is not a yes/no value: use true or false.")


def parse_options(params: Mapping[str, Any], *, getlist: Callable[[str], list[str]] | None = None) -> ExportOptions:
    """Export options from query parameters, a form or the CLI; a clear 400 for anything unknown.

    ``metadata`` is ``all`` (default), ``none``, or metadata keys (comma-separated or repeated).
    """
    fmt = str(params.get("format") or "").strip()
    if not fmt:
        raise ActionError(f"Choose a format: format= one of {', '.join(FORMATS)}.")
    if fmt not in FORMATS:
        raise ActionError(f"Unknown export format '{fmt}': use one of {', '.join(FORMATS)}.")
    mode = str(params.get("annotations") or "latest").strip()
    if mode not in ANNOTATION_MODES:
        raise ActionError(f"Unknown annotations choice '{mode}': use one of {', '.join(ANNOTATION_MODES)}.")
    raw_version = str(params.get("taxonomy_version") or "").strip()
    version: int | None = None
    if raw_version:
        try:
            version = int(raw_version)
        except ValueError:
            raise ActionError(f"taxonomy_version={raw_version!r} is not a version number.") from None
        if not 1 <= version <= MAX_NUMBER:
            raise ActionError(f"taxonomy_version={raw_version!r} is not a version number (they start at 1).")
    values = getlist("metadata") if getlist else ([params["metadata"]] if params.get("metadata") is not None else [])
    metadata: tuple[str, ...] | None = None
    if values:
        keys = [k.strip() for v in values for k in str(v).split(",")]
        chosen = tuple(dict.fromkeys(k for k in keys if k))
        metadata = None if chosen == ("all",) else () if chosen in {(), ("none",)} else chosen
    return ExportOptions(format=fmt, labelled_only=_flag("labelled_only", params.get("labelled_only", False)),
                         annotations=mode, metadata=metadata, taxonomy_version=version,
                         predictions=_flag("predictions", params.get("predictions", False)))


# --- Reading ------------------------------------------------------------------------------------------------------


@dataclass
class Answer:
    labels: list[str]  # label names in the export's taxonomy version, in taxonomy order
    annotator: str | None = None
    created_at: datetime | None = None
    # Span projects: [{"start", "end", "label": name}], sorted; spans whose label the version lacks are left out.
    spans: list[dict[str, Any]] | None = None


@dataclass
class Item:
    example_id: int
    external_id: str
    text: str
    metadata: dict[str, Any]
    answers: list[Answer] = field(default_factory=list)
    prediction: list[str] | None = None
    confidence: float | None = None
    model_version: int | None = None
    tokens: list[tuple[int, int]] | None = None  # span projects: the tokens' character offsets
    predicted_spans: list[dict[str, Any]] | None = None  # span projects: {"start", "end", "label", "confidence"}

    @property
    def export_id(self) -> str:
        """The id column: the id the example was imported with, else LabelHub's number for it."""
        return self.external_id or str(self.example_id)


@dataclass
class ExportPlan:
    """What one export writes: the project, the options, the label list, the metadata columns."""

    project: Project
    options: ExportOptions
    version: TaxonomyVersion
    label_names: list[str]  # the version's active labels in taxonomy order: the class list
    name_of: dict[str, str]  # label key -> name, for the version's active labels
    metadata_keys: list[str]

    @cached_property
    def class_index(self) -> dict[str, int]:
        """Label name -> class index (the Hugging Face formats' label values)."""
        return {name: i for i, name in enumerate(self.label_names)}

    @cached_property
    def tag_names(self) -> list[str]:
        """IOB2 tags of the span formats: O, then B- and I- of each label in taxonomy order (the order of
        learning.spans.TagSet: id 0 is O, B-label i is 1 + 2i, I-label i is 2 + 2i)."""
        return ["O"] + [f"{prefix}-{name}" for name in self.label_names for prefix in ("B", "I")]

    @property
    def is_span(self) -> bool:
        return self.project.is_span

    @property
    def multi_label(self) -> bool:
        return self.project.is_multi_label

    @property
    def label_field(self) -> str:
        return "labels" if self.multi_label else "label"

    @property
    def format(self) -> Format:
        return FORMATS[self.options.format]

    def filename(self) -> str:
        slug = "".join(c if c.isalnum() else "-" for c in self.project.name.lower()).strip("-") or "project"
        return f"{slug}-v{self.version.number}.{self.format.extension}"

    def metadata_column(self, key: str) -> str:
        """A metadata key's column name; a key that clashes with one of ours gets a `meta_` prefix."""
        return f"meta_{key}" if key in self.reserved_columns() else key

    def reserved_columns(self) -> set[str]:
        return {"id", "text", "label", "labels", "annotator", "annotated_at", "prediction", "confidence",
                "model_version", "spans", "tokens", "ner_tags", "predicted_spans", "pred_ner_tags"}


def metadata_keys(project: Project) -> list[str]:
    """Every key of the project's example metadata, sorted (one pass in the database)."""
    sql = {
        "postgresql": "SELECT DISTINCT k FROM projects_example, jsonb_object_keys(metadata) AS k "
                      "WHERE project_id = %s AND jsonb_typeof(metadata) = 'object'",
        "sqlite": "SELECT DISTINCT j.key FROM projects_example, json_each(projects_example.metadata) AS j "
                  "WHERE project_id = %s AND json_type(projects_example.metadata) = 'object'",
    }.get(connection.vendor)
    if sql is None:  # another backend: read them in Python, a chunk at a time
        keys: set[str] = set()
        for meta in Example.objects.filter(project=project).values_list("metadata", flat=True).iterator(CHUNK):
            keys.update(meta if isinstance(meta, dict) else ())
        return sorted(keys)
    with connection.cursor() as cursor:
        cursor.execute(sql, [project.pk])
        return sorted(row[0] for row in cursor.fetchall())


def plan_export(project: Project, options: ExportOptions) -> ExportPlan:
    """Check the options against the project (400 with the reason) and fix the columns."""
    fmt = FORMATS[options.format]
    if project.task_type not in fmt.tasks:
        kind = "span" if project.is_span else "classification"
        fitting = ", ".join(f.name for f in formats_for(project))
        raise ActionError(f"The {fmt.name} format is for {'span' if fmt.tasks == SPAN_TASKS else 'classification'} "
                          f"projects; this is a {kind} project: export it as one of {fitting}.")
    if fmt.name == "conll" and options.annotations == "each":
        raise ActionError("CoNLL has no place for the annotator: export each annotator's spans as spans-jsonl or "
                          "hf-ner-jsonl, or choose latest or majority.")
    if fmt.name == "conll" and options.predictions:
        raise ActionError("CoNLL has one tag column, the people's: export the model's spans with spans-jsonl, "
                          "spacy-ner or hf-ner-jsonl.")
    if fmt.name == "conll" and not options.labelled_only:
        options = replace(options, labelled_only=True)  # the format cannot say "not annotated"
    if options.taxonomy_version is None:
        version = project.current_taxonomy()
    else:
        found = project.taxonomy_versions.filter(number=options.taxonomy_version).first()
        if found is None:
            latest = project.current_taxonomy().number
            raise ActionError(f"Taxonomy version {options.taxonomy_version} does not exist in this project "
                              f"(versions 1 to {latest}).")
        version = found
    active = list(version.active_labels().order_by("position", "id"))
    known = metadata_keys(project)
    if options.metadata is None:
        chosen = known
    else:
        unknown = [k for k in options.metadata if k not in known]
        if unknown:
            raise ActionError(f"No example has the metadata key(s) {', '.join(map(repr, unknown))}; "
                              f"the keys are: {', '.join(known) or 'none'}.")
        chosen = list(options.metadata)
    if options.format in ("spacy", "spacy-ner"):
        examples = Example.objects.filter(project=project)
        if options.labelled_only:
            examples = examples.filter(Exists(Annotation.objects.filter(example=OuterRef("pk"))))
        count = examples.count()
        if count > SPACY_MAX_DOCS:
            raise ActionError(f"A spaCy DocBin is built in memory (about 10 KB per example): {count:,} examples are "
                              f"more than the {SPACY_MAX_DOCS:,} it takes. Export the labelled examples only, or "
                              f"use another format (they stream).")
    return ExportPlan(project=project, options=options, version=version,
                      label_names=[label.name for label in active],
                      name_of={label.key: label.name for label in active}, metadata_keys=chosen)


def _names(plan: ExportPlan, keys: Iterable[str]) -> list[str]:
    """Label keys as names of the plan's version, in taxonomy order. Keys the version does not have (added or
    split later) or has deprecated are left out: the version maps every rename, and a merge already moved
    the merged labels' annotations to the label they were merged into."""
    wanted = {plan.name_of[k] for k in keys if k in plan.name_of}
    return [name for name in plan.label_names if name in wanted]


def _latest_per_annotator(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each annotator's newest answer, newest first (rows arrive newest first)."""
    seen: set[Any] = set()
    kept = []
    for row in rows:
        if row["annotator_id"] not in seen:
            seen.add(row["annotator_id"])
            kept.append(row)
    return kept


def _answers(plan: ExportPlan, rows: list[dict[str, Any]]) -> list[Answer]:
    """The answers an example is exported with, from its annotations (newest first)."""
    mode = plan.options.annotations
    if not rows:
        return []
    if mode == "latest":
        row = rows[0]
        return [Answer(_names(plan, row["label_keys"]), row["annotator__username"], row["created_at"])]
    per_annotator = _latest_per_annotator(rows)
    if mode == "each":
        return [Answer(_names(plan, row["label_keys"]), row["annotator__username"], row["created_at"])
                for row in per_annotator]
    # Majority over each annotator's latest answer.
    votes: dict[str, int] = {}
    newest_vote: dict[str, int] = {}  # label -> rank of its newest voter (0 = newest)
    for rank, row in enumerate(per_annotator):
        for name in _names(plan, row["label_keys"]):
            votes[name] = votes.get(name, 0) + 1
            newest_vote.setdefault(name, rank)
    if not votes:
        return [Answer([], None, per_annotator[0]["created_at"])]
    if plan.multi_label:
        chosen = [name for name in plan.label_names if votes.get(name, 0) * 2 > len(per_annotator)]
    else:
        top = max(votes.values())
        chosen = [min((name for name, n in votes.items() if n == top), key=lambda name: newest_vote[name])]
    return [Answer(chosen, None, per_annotator[0]["created_at"])]


def _span_names(plan: ExportPlan, spans: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Stored spans (label keys) as the export's spans (label names of the plan's version), sorted. A span whose
    label the version lacks or has deprecated is left out, as classification labels are."""
    out = []
    for span in spans:
        name = plan.name_of.get(span.get("label", ""))
        if name is not None:
            out.append({"start": int(span["start"]), "end": int(span["end"]), "label": name})
    return sorted(out, key=lambda s: (s["start"], s["end"]))


def _span_answer(plan: ExportPlan, row: dict[str, Any]) -> Answer:
    spans = _span_names(plan, row["spans"] or [])
    return Answer(_names(plan, row["label_keys"]), row["annotator__username"], row["created_at"], spans)


def _span_answers(plan: ExportPlan, rows: list[dict[str, Any]]) -> list[Answer]:
    """The answers of a span project's example (rows newest first); see SPAN_MODES for the modes."""
    mode = plan.options.annotations
    if not rows:
        return []
    if mode == "latest":
        return [_span_answer(plan, rows[0])]
    per_annotator = [_span_answer(plan, row) for row in _latest_per_annotator(rows)]
    if mode == "each":
        return per_annotator
    votes: dict[tuple[int, int, str], int] = {}
    for answer in per_annotator:
        for span in answer.spans or []:
            key = (span["start"], span["end"], span["label"])
            votes[key] = votes.get(key, 0) + 1
    newest = {(s["start"], s["end"], s["label"]) for s in per_annotator[0].spans or []}
    n = len(per_annotator)
    chosen = [{"start": start, "end": end, "label": label} for (start, end, label), count in sorted(votes.items())
              if count * 2 > n or (count * 2 == n and (start, end, label) in newest)]
    labels = [name for name in plan.label_names if any(s["label"] == name for s in chosen)]
    return [Answer(labels, None, per_annotator[0].created_at, chosen)]


def iter_span_items(plan: ExportPlan) -> Iterator[Item]:
    """A span project's examples in id order, with their tokens, answers (spans) and, if asked, the model's
    suggested spans. An annotation with no spans is an answer ("no entity here"), not a missing one."""
    from projects.spanformats import tokenize

    examples = Example.objects.filter(project=plan.project)
    if plan.options.labelled_only:
        examples = examples.filter(Exists(Annotation.objects.filter(example=OuterRef("pk"))))
    rows = (examples.order_by("id").values_list("id", "external_id", "text", "metadata", "tokens")
            .iterator(chunk_size=CHUNK))
    while True:
        batch = list(islice(rows, CHUNK))
        if not batch:
            return
        reset_queries()
        ids = [row[0] for row in batch]
        annotations: dict[int, list[Any]] = {}
        for row in (Annotation.objects.filter(example_id__in=ids).order_by("example_id", "-created_at", "-id")
                    .values("example_id", "annotator_id", "annotator__username", "label_keys", "spans",
                            "created_at")):
            annotations.setdefault(row["example_id"], []).append(row)
        scores: dict[int, tuple[list[dict[str, Any]], float | None, int | None]] = {}
        if plan.options.predictions:
            scores = {pk: (spans, conf, number) for pk, spans, conf, number in ExampleScore.objects.filter(
                example_id__in=ids, model_version_number__isnull=False).values_list(
                "example_id", "suggested_spans", "confidence", "model_version_number")}
        for pk, external_id, text, metadata, tokens in batch:
            answers = _span_answers(plan, annotations.get(pk, []))
            # Examples imported before span tagging (or routed by an older server) have no tokens: made now.
            offsets = ([(int(a), int(b)) for a, b in tokens] if tokens is not None
                       else tokenize(text, plan.project.language or "en"))
            item = Item(pk, external_id, text, metadata if isinstance(metadata, dict) else {}, answers,
                        tokens=offsets)
            if pk in scores:
                suggested, item.confidence, item.model_version = scores[pk]
                confidence = {(int(s["start"]), int(s["end"])): s.get("confidence") for s in suggested or []}
                item.predicted_spans = [{**s, "confidence": confidence.get((s["start"], s["end"]))}
                                        for s in _span_names(plan, suggested or [])]
                item.prediction = [s["label"] for s in item.predicted_spans]
            yield item


def iter_items(plan: ExportPlan) -> Iterator[Item]:
    """The export's examples in id order, with their answers and, if asked, the model's suggestion."""
    examples = Example.objects.filter(project=plan.project)
    if plan.options.labelled_only:
        examples = examples.filter(Exists(Annotation.objects.filter(example=OuterRef("pk"))))
    # One query in id order, read CHUNK rows at a time (a server-side cursor on PostgreSQL). Keyset pages
    # (id > last LIMIT n) were quadratic: with no (project, id) index each page sorted the project's rows.
    rows = examples.order_by("id").values_list("id", "external_id", "text", "metadata").iterator(chunk_size=CHUNK)
    while True:
        batch = list(islice(rows, CHUNK))
        if not batch:
            return
        # With DEBUG on, Django keeps every query's SQL (each names a chunk's ids): a long export would grow.
        reset_queries()
        ids = [row[0] for row in batch]
        annotations: dict[int, list[Any]] = {}
        for row in (Annotation.objects.filter(example_id__in=ids).order_by("example_id", "-created_at", "-id")
                    .values("example_id", "annotator_id", "annotator__username", "label_keys", "created_at")):
            annotations.setdefault(row["example_id"], []).append(row)
        scores: dict[int, tuple[list[str], float | None, int | None]] = {}
        if plan.options.predictions:
            scores = {pk: (keys, conf, number) for pk, keys, conf, number in ExampleScore.objects.filter(
                example_id__in=ids, model_version_number__isnull=False).values_list(
                "example_id", "predicted_keys", "confidence", "model_version_number")}
        for pk, external_id, text, metadata in batch:
            answers = [a for a in _answers(plan, annotations.get(pk, [])) if a.labels]
            if plan.options.labelled_only and not answers:
                continue  # its labels are not in the chosen version
            item = Item(pk, external_id, text, metadata if isinstance(metadata, dict) else {}, answers)
            if pk in scores:
                keys, item.confidence, item.model_version = scores[pk]
                item.prediction = _names(plan, keys)
            yield item


# --- Writers --------------------------------------------------------------------------------------------------------


def _meta_value(value: Any) -> str:
    """A metadata value in a text column: strings as they are, anything else as JSON."""
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _rows(plan: ExportPlan, items: Iterable[Item]) -> Iterator[tuple[Item, Answer | None]]:
    """One row per answer (each annotator's, or the one final answer), one for an unlabelled example."""
    for item in items:
        if item.answers:
            for answer in item.answers:
                yield item, answer
        else:
            yield item, None


def _record(plan: ExportPlan, item: Item, answer: Answer | None) -> dict[str, Any]:
    """A row as a JSON object (the JSONL format, and the CSV format's columns)."""
    labels = answer.labels if answer else None
    record: dict[str, Any] = {"id": item.export_id, "text": item.text}
    record[plan.label_field] = labels if plan.multi_label else (labels[0] if labels else None)
    if plan.options.annotations == "each":
        record["annotator"] = answer.annotator if answer else None
        record["annotated_at"] = answer.created_at.isoformat() if answer and answer.created_at else None
    for key in plan.metadata_keys:
        record[plan.metadata_column(key)] = item.metadata.get(key)
    if plan.options.predictions:
        record["prediction"] = item.prediction if plan.multi_label else (
            item.prediction[0] if item.prediction else None)
        record["confidence"] = item.confidence
        record["model_version"] = item.model_version
    return record


class _Buffer:
    """A write-only file that hands its bytes over in chunks (for the zip and Parquet writers)."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._size = 0
        self._written = 0

    def write(self, data: bytes | bytearray | memoryview) -> int:
        data = bytes(data)
        self._parts.append(data)
        self._size += len(data)
        self._written += len(data)
        return len(data)

    def tell(self) -> int:
        return self._written

    def flush(self) -> None:
        pass

    @property
    def closed(self) -> bool:
        return False

    def full(self) -> bool:
        return self._size >= FLUSH_BYTES

    def take(self) -> bytes:
        data = b"".join(self._parts)
        self._parts, self._size = [], 0
        return data


def write_csv(plan: ExportPlan, items: Iterable[Item]) -> Iterator[bytes]:
    text = io.StringIO()
    writer = csv.writer(text)
    header = ["id", "text", plan.label_field]
    if plan.options.annotations == "each":
        header += ["annotator", "annotated_at"]
    header += [plan.metadata_column(k) for k in plan.metadata_keys]
    if plan.options.predictions:
        header += ["prediction", "confidence", "model_version"]
    writer.writerow(header)
    for item, answer in _rows(plan, items):
        record = _record(plan, item, answer)
        row = []
        for column in header:
            value = record.get(column)
            if column in ("label", "labels", "prediction"):
                value = "|".join(value) if isinstance(value, list) else (value or "")
            elif column in ("id", "text", "annotator", "annotated_at"):
                value = value or ""
            elif column in ("confidence", "model_version"):
                value = "" if value is None else value
            else:
                value = _meta_value(value)
            row.append(value)
        writer.writerow(row)
        if text.tell() >= FLUSH_BYTES:
            yield text.getvalue().encode("utf-8")
            text.seek(0)
            text.truncate()
    yield text.getvalue().encode("utf-8")


def _jsonl(plan: ExportPlan, items: Iterable[Item], record: Callable[[ExportPlan, Item, Answer | None], Any]
           ) -> Iterator[bytes]:
    lines: list[str] = []
    size = 0
    for item, answer in _rows(plan, items):
        line = json.dumps(record(plan, item, answer), ensure_ascii=False)
        lines.append(line)
        size += len(line)
        if size >= FLUSH_BYTES:
            yield ("\n".join(lines) + "\n").encode("utf-8")
            lines, size = [], 0
    if lines:
        yield ("\n".join(lines) + "\n").encode("utf-8")


def write_jsonl(plan: ExportPlan, items: Iterable[Item]) -> Iterator[bytes]:
    return _jsonl(plan, items, _record)


# Hugging Face datasets: labels as class indices of a ClassLabel feature whose names are the label list.


def hf_features(plan: ExportPlan) -> dict[str, Any]:
    """The datasets `Features` of the export, as `Features.to_dict()` writes them (and `from_dict` reads)."""
    class_label = {"names": list(plan.label_names), "_type": "ClassLabel"}
    string = {"dtype": "string", "_type": "Value"}
    label = {"feature": class_label, "_type": "Sequence"} if plan.multi_label else class_label
    features: dict[str, Any] = {"id": string, "text": string, plan.label_field: label}
    if plan.options.annotations == "each":
        features["annotator"] = string
        features["annotated_at"] = string
    for key in plan.metadata_keys:
        features[plan.metadata_column(key)] = string
    if plan.options.predictions:
        features["prediction"] = label
        features["confidence"] = {"dtype": "float64", "_type": "Value"}
        features["model_version"] = {"dtype": "int64", "_type": "Value"}
    return features


def _hf_record(plan: ExportPlan, item: Item, answer: Answer | None) -> dict[str, Any]:
    index = plan.class_index
    record = _record(plan, item, answer)
    labels = answer.labels if answer else None
    # Unlabelled: -1 (the datasets convention for a missing ClassLabel), or null for a list.
    record[plan.label_field] = ([index[n] for n in labels] if labels is not None else None) if plan.multi_label \
        else (index[labels[0]] if labels else -1)
    for key in plan.metadata_keys:
        column = plan.metadata_column(key)
        record[column] = _meta_value(record[column]) if record[column] is not None else None
    if plan.options.predictions:
        pred = item.prediction
        record["prediction"] = ([index[n] for n in pred] if pred is not None else None) if plan.multi_label \
            else (index[pred[0]] if pred else -1)
    return record


def _dataset_card(plan: ExportPlan, data_file: str) -> str:
    """A dataset card whose YAML header declares the features, as the Hub writes it."""
    def card_type(feature: dict[str, Any]) -> Any:
        if feature["_type"] == "ClassLabel":
            return {"class_label": {"names": {str(i): n for i, n in enumerate(feature["names"])}}}
        if feature["_type"] == "Sequence":
            return {"sequence": card_type(feature["feature"])}
        return feature["dtype"]

    features = _ner_features(plan) if plan.is_span else hf_features(plan)
    header = {
        "dataset_info": {"features": [{"name": name, "dtype": card_type(f)} for name, f in features.items()]},
        "configs": [{"config_name": "default", "data_files": [{"split": "train", "path": data_file}]}],
    }
    return (f"---\n{yaml.safe_dump(header, sort_keys=False, allow_unicode=True)}---\n\n"
            f"# {plan.project.name}\n\nExported from LabelHub (taxonomy v{plan.version.number}, "
            f"annotations: {plan.options.annotations}). " + (
                f"`ner_tags` holds one IOB2 tag index per token into {plan.tag_names!r}; null is unlabelled.\n"
                if plan.is_span else f"`{plan.label_field}` holds class indices into "
                f"{plan.label_names!r}; -1 (or null) is unlabelled.\n"))


def write_hf_jsonl(plan: ExportPlan, items: Iterable[Item]) -> Iterator[bytes]:
    sink = _Buffer()
    with zipfile.ZipFile(cast(IO[bytes], sink), "w", compression=zipfile.ZIP_DEFLATED) as archive:
        info = {"description": f"{plan.project.name}, exported from LabelHub", "features": hf_features(plan),
                "config_name": "default", "splits": {"train": {"name": "train"}}}
        archive.writestr("dataset_info.json", json.dumps(info, indent=2, ensure_ascii=False))
        archive.writestr("README.md", _dataset_card(plan, "train.jsonl"))
        with archive.open("train.jsonl", "w", force_zip64=True) as member:
            for chunk in _jsonl(plan, items, _hf_record):
                member.write(chunk)
                if sink.full():
                    yield sink.take()
    yield sink.take()


def write_hf_parquet(plan: ExportPlan, items: Iterable[Item]) -> Iterator[bytes]:
    import pyarrow as pa  # type: ignore[import-untyped]
    import pyarrow.parquet as pq  # type: ignore[import-untyped]

    label_type = pa.list_(pa.int64()) if plan.multi_label else pa.int64()
    types: dict[str, Any] = {"id": pa.string(), "text": pa.string(), plan.label_field: label_type}
    if plan.options.annotations == "each":
        types.update(annotator=pa.string(), annotated_at=pa.string())
    types.update({plan.metadata_column(k): pa.string() for k in plan.metadata_keys})
    if plan.options.predictions:
        types.update(prediction=label_type, confidence=pa.float64(), model_version=pa.int64())
    schema = pa.schema(list(types.items()),
                       metadata={"huggingface": json.dumps({"info": {"features": hf_features(plan)}})})
    sink = _Buffer()
    with pq.ParquetWriter(sink, schema, compression="zstd") as writer:
        batch: list[dict[str, Any]] = []
        for item, answer in _rows(plan, items):
            batch.append(_hf_record(plan, item, answer))
            if len(batch) >= 10 * CHUNK:
                writer.write_table(pa.Table.from_pylist(batch, schema=schema))
                batch = []
                yield sink.take()
        if batch:
            writer.write_table(pa.Table.from_pylist(batch, schema=schema))
    yield sink.take()


def write_spacy(plan: ExportPlan, items: Iterable[Item]) -> Iterator[bytes]:
    import spacy
    import srsly  # type: ignore[import-untyped]
    from spacy.tokens import DocBin

    nlp = spacy.blank("en")
    # Each doc's user data (id, metadata, prediction) is packed here with one reused msgpack packer and
    # handed to the DocBin as its `user_data` list, which it writes when `store_user_data` is on: DocBin.add
    # packs it with srsly.msgpack_dumps, which builds a packer per call and took 0.8 ms per doc (12x the rest).
    docs = DocBin(store_user_data=False)
    packer = srsly.msgpack.Packer(use_bin_type=True)
    user_data: list[bytes | None] = []
    for item, answer in _rows(plan, items):
        doc = nlp.make_doc(item.text)
        if answer is not None:
            doc.cats = {name: float(name in answer.labels) for name in plan.label_names}
        doc.user_data["id"] = item.export_id
        if plan.options.annotations == "each" and answer is not None:
            doc.user_data["annotator"] = answer.annotator or ""
        if plan.metadata_keys:
            doc.user_data["metadata"] = {k: item.metadata[k] for k in plan.metadata_keys if k in item.metadata}
        if plan.options.predictions and item.prediction is not None:
            doc.user_data["prediction"] = item.prediction
            doc.user_data["confidence"] = item.confidence
        docs.add(doc)
        user_data.append(packer.pack(doc.user_data))
    docs.store_user_data = True
    docs.user_data = user_data
    yield docs.to_bytes()


def _ls_result(plan: ExportPlan, names: list[str]) -> list[dict[str, Any]]:
    return [{"from_name": "label", "to_name": "text", "type": "choices", "value": {"choices": names}}]


def label_studio_config(plan: ExportPlan) -> str:
    """The Label Studio labelling config the export's results refer to (from_name label, to_name text)."""
    from xml.sax.saxutils import quoteattr

    choices = "".join(f"<Choice value={quoteattr(name)}/>" for name in plan.label_names)
    kind = "multiple" if plan.multi_label else "single"
    return (f'<View><Text name="text" value="$text"/><Choices name="label" toName="text" choice="{kind}">'
            f"{choices}</Choices></View>")


def write_label_studio(plan: ExportPlan, items: Iterable[Item]) -> Iterator[bytes]:
    parts: list[str] = ["["]
    size = 0
    first = True
    for item in items:
        data: dict[str, Any] = {"text": item.text, "id": item.export_id}
        for key in plan.metadata_keys:
            if key in item.metadata:
                data[plan.metadata_column(key)] = item.metadata[key]
        task: dict[str, Any] = {"data": data, "annotations": [
            {"result": _ls_result(plan, answer.labels), "ground_truth": False,
             **({"created_at": answer.created_at.isoformat()} if answer.created_at else {}),
             **({"meta": {"annotator": answer.annotator}} if plan.options.annotations == "each" else {})}
            for answer in item.answers]}
        if plan.options.predictions and item.prediction is not None:
            task["predictions"] = [{"model_version": f"v{item.model_version}", "score": item.confidence,
                                    "result": _ls_result(plan, item.prediction)}]
        line = ("\n" if first else ",\n") + json.dumps(task, ensure_ascii=False)
        first = False
        parts.append(line)
        size += len(line)
        if size >= FLUSH_BYTES:
            yield "".join(parts).encode("utf-8")
            parts, size = [], 0
    parts.append("\n]\n")
    yield "".join(parts).encode("utf-8")


# --- Span formats ------------------------------------------------------------------------------------------------


def _span_record(plan: ExportPlan, item: Item, answer: Answer | None) -> dict[str, Any]:
    """A span-project row as a JSON object: the spans-jsonl line, and the columns the other span formats share."""
    record: dict[str, Any] = {"id": item.export_id, "text": item.text,
                              "spans": answer.spans if answer is not None else None}
    if plan.options.annotations == "each":
        record["annotator"] = answer.annotator if answer else None
        record["annotated_at"] = answer.created_at.isoformat() if answer and answer.created_at else None
    for key in plan.metadata_keys:
        record[plan.metadata_column(key)] = item.metadata.get(key)
    if plan.options.predictions:
        record["predicted_spans"] = item.predicted_spans
        record["confidence"] = item.confidence
        record["model_version"] = item.model_version
    return record


def write_spans_jsonl(plan: ExportPlan, items: Iterable[Item]) -> Iterator[bytes]:
    return _jsonl(plan, items, _span_record)


def _tags(item: Item, spans: list[dict[str, Any]]) -> list[str]:
    from projects.spanformats import Span, tags_from_spans

    return list(tags_from_spans(item.tokens or [], cast("list[Span]", spans), scheme="IOB2"))


def _token_texts(item: Item) -> list[str]:
    return [item.text[start:end] for start, end in item.tokens or []]


def write_conll(plan: ExportPlan, items: Iterable[Item]) -> Iterator[bytes]:
    """Token TAB tag per line, a blank line after each example; labelled examples only (plan_export asks)."""
    parts: list[str] = []
    size = 0
    for item, answer in _rows(plan, items):
        if answer is None:
            continue
        lines = [f"{token}\t{tag}" for token, tag in zip(_token_texts(item), _tags(item, answer.spans or []),
                                                          strict=True)]
        block = "\n".join(lines) + "\n\n"
        parts.append(block)
        size += len(block)
        if size >= FLUSH_BYTES:
            yield "".join(parts).encode("utf-8")
            parts, size = [], 0
    yield "".join(parts).encode("utf-8")


def _ner_features(plan: ExportPlan) -> dict[str, Any]:
    string = {"dtype": "string", "_type": "Value"}
    tags = {"feature": {"names": list(plan.tag_names), "_type": "ClassLabel"}, "_type": "Sequence"}
    features: dict[str, Any] = {"id": string, "tokens": {"feature": string, "_type": "Sequence"}, "ner_tags": tags}
    if plan.options.annotations == "each":
        features["annotator"] = string
        features["annotated_at"] = string
    for key in plan.metadata_keys:
        features[plan.metadata_column(key)] = string
    if plan.options.predictions:
        features["pred_ner_tags"] = tags
        features["confidence"] = {"dtype": "float64", "_type": "Value"}
        features["model_version"] = {"dtype": "int64", "_type": "Value"}
    return features


def _hf_ner_record(plan: ExportPlan, item: Item, answer: Answer | None) -> dict[str, Any]:
    index = {name: i for i, name in enumerate(plan.tag_names)}
    record: dict[str, Any] = {"id": item.export_id, "tokens": _token_texts(item),
                              "ner_tags": [index[t] for t in _tags(item, answer.spans or [])]
                              if answer is not None else None}
    if plan.options.annotations == "each":
        record["annotator"] = answer.annotator if answer else None
        record["annotated_at"] = answer.created_at.isoformat() if answer and answer.created_at else None
    for key in plan.metadata_keys:
        value = item.metadata.get(key)
        record[plan.metadata_column(key)] = _meta_value(value) if value is not None else None
    if plan.options.predictions:
        record["pred_ner_tags"] = ([index[t] for t in _tags(item, item.predicted_spans)]
                                   if item.predicted_spans is not None else None)
        record["confidence"] = item.confidence
        record["model_version"] = item.model_version
    return record


def write_hf_ner_jsonl(plan: ExportPlan, items: Iterable[Item]) -> Iterator[bytes]:
    sink = _Buffer()
    with zipfile.ZipFile(cast(IO[bytes], sink), "w", compression=zipfile.ZIP_DEFLATED) as archive:
        info = {"description": f"{plan.project.name}, exported from LabelHub (token classification)",
                "features": _ner_features(plan), "config_name": "default", "splits": {"train": {"name": "train"}}}
        archive.writestr("dataset_info.json", json.dumps(info, indent=2, ensure_ascii=False))
        archive.writestr("README.md", _dataset_card(plan, "train.jsonl"))
        with archive.open("train.jsonl", "w", force_zip64=True) as member:
            for chunk in _jsonl(plan, items, _hf_ner_record):
                member.write(chunk)
                if sink.full():
                    yield sink.take()
    yield sink.take()


def _spacy_doc(nlp: Any, item: Item) -> Any:
    """A spaCy doc with LabelHub's own tokens (so every span aligns strictly) and exactly the example's text:
    the text between two tokens becomes the first one's trailing space, or a whitespace token of its own."""
    from spacy.tokens import Doc

    words: list[str] = []
    spaces: list[bool] = []

    def gap(text: str) -> None:
        if not text:
            return
        if words and text[0] == " ":
            spaces[-1] = True
            text = text[1:]
        if text:
            words.append(text)
            spaces.append(False)

    position = 0
    for start, end in item.tokens or []:
        gap(item.text[position:start])
        words.append(item.text[start:end])
        spaces.append(False)
        position = end
    gap(item.text[position:])
    doc = Doc(nlp.vocab, words=words, spaces=spaces)
    if doc.text != item.text:  # the offsets do not cover the text in order: a damaged example, say which
        raise ActionError(f"Example {item.export_id}: its stored tokens do not match its text; re-import it.")
    return doc


def write_spacy_ner(plan: ExportPlan, items: Iterable[Item]) -> Iterator[bytes]:
    import spacy
    import srsly
    from spacy.tokens import DocBin

    try:
        nlp = spacy.blank(plan.project.language or "en")
    except ImportError:  # a language spaCy has no class for: the vocabulary does not change the docs
        nlp = spacy.blank("xx")
    docs = DocBin(attrs=["ORTH", "ENT_IOB", "ENT_TYPE"], store_user_data=False)
    packer = srsly.msgpack.Packer(use_bin_type=True)
    user_data: list[bytes | None] = []
    for item, answer in _rows(plan, items):
        doc = _spacy_doc(nlp, item)
        if answer is not None:
            ents = []
            for span in answer.spans or []:
                ent = doc.char_span(span["start"], span["end"], label=span["label"], alignment_mode="strict")
                if ent is None:
                    raise ActionError(f"Example {item.export_id}: the span {span['start']}-{span['end']} is not on "
                                      "its token boundaries; re-import it.")
                ents.append(ent)
            doc.set_ents(ents, default="outside")  # labelled: every other token is O, not missing
        doc.user_data["id"] = item.export_id
        if plan.options.annotations == "each" and answer is not None:
            doc.user_data["annotator"] = answer.annotator or ""
        if plan.metadata_keys:
            doc.user_data["metadata"] = {k: item.metadata[k] for k in plan.metadata_keys if k in item.metadata}
        if plan.options.predictions and item.predicted_spans is not None:
            doc.user_data["predicted_spans"] = item.predicted_spans
            doc.user_data["confidence"] = item.confidence
            doc.user_data["model_version"] = item.model_version
        docs.add(doc)
        user_data.append(packer.pack(doc.user_data))
    docs.store_user_data = True
    docs.user_data = user_data
    yield docs.to_bytes()


WRITERS: dict[str, Callable[[ExportPlan, Iterable[Item]], Iterator[bytes]]] = {
    "csv": write_csv, "jsonl": write_jsonl, "hf-jsonl": write_hf_jsonl, "hf-parquet": write_hf_parquet,
    "spacy": write_spacy, "label-studio": write_label_studio, "spans-jsonl": write_spans_jsonl,
    "conll": write_conll, "spacy-ner": write_spacy_ner, "hf-ner-jsonl": write_hf_ner_jsonl,
}


def stream_export(plan: ExportPlan) -> Iterator[bytes]:
    """The export's bytes, chunk by chunk, as the rows are read."""
    return WRITERS[plan.options.format](plan, iter_span_items(plan) if plan.is_span else iter_items(plan))


# --- Taxonomy history and model versions ------------------------------------------------------------------------


def taxonomy_history(project: Project) -> dict[str, Any]:
    """Every taxonomy version, oldest first, with its changelog, its labels and the changes from the one before."""
    versions = list(project.taxonomy_versions.order_by("number").select_related("created_by")
                    .prefetch_related("labels"))
    out = []
    previous: TaxonomyVersion | None = None
    for version in versions:
        labels = sorted(version.labels.all(), key=lambda label: (label.position, label.pk))
        out.append({
            "number": version.number,
            "created_at": version.created_at.isoformat(),
            "created_by": version.created_by.get_username() if version.created_by else None,
            "changelog": list(version.changelog or []),
            "labels": [{"key": label.key, "name": label.name, "description": label.description,
                        "colour": label.colour, "shortcut": label.shortcut, "deprecated": label.is_deprecated,
                        "position": label.position} for label in labels],
            "changes": taxonomy_diff(previous, version) if previous is not None else [],
        })
        previous = version
    return {"project": {"id": project.pk, "name": project.name, "task_type": project.task_type},
            "versions": out}


def model_manifest(version: ModelVersion) -> dict[str, Any]:
    """What a model download's model.json says: the encoder to embed with, the outputs, the figures."""
    names = dict(version.taxonomy_version.labels.values_list("key", "name"))
    return {
        "project": {"id": version.project_id, "name": version.project.name,
                    "task_type": version.project.task_type},
        "version": version.number,
        "created_at": version.created_at.isoformat(),
        "report_at": version.report_at.isoformat() if version.report_at else None,
        "encoder": version.encoder,
        "taxonomy_version": version.taxonomy_version.number,
        "label_keys": list(version.label_keys),
        "labels": [names.get(key, key) for key in version.label_keys],
        "n_labels": version.n_labels,
        "strategy": version.strategy,
        "metrics": version.metrics,
        "posterior": "posterior.npz: the Laplace posterior over the last-layer weights (learning.bayes.Posterior; "
                     "mean (D+1, K) in standardised coordinates with the bias last, shift and scale standardise "
                     "the encoder's vectors, in_basis/in_eig/out_eig the Kronecker precision factors, meta the "
                     "prior precision, temperature and calibration). Embed texts with `encoder`; outputs are "
                     "in the order of `labels`.",
    }


def model_archive(version: ModelVersion) -> bytes:
    """A zip of posterior.npz (the version's posterior, as stored) and model.json."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("posterior.npz", bytes(version.artifact))
        archive.writestr("model.json", json.dumps(model_manifest(version), indent=2, ensure_ascii=False))
    return buffer.getvalue()

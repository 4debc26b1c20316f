"""Taxonomy edits that move annotations: merge (annotations migrate), split (items go to
re-review) and deprecate (annotations stop training the model).

Each makes a new version through `projects.taxonomy.new_version` and announces it, so
the learning layer retrains on the current version without this module knowing it.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from django.db import connection, transaction
from django.db.models import Q, QuerySet

from annotation.models import Annotation, Relabel
from labelhub.errors import ActionError
from projects.models import Label, Project, TaxonomyVersion
from projects.taxonomy import (
    PALETTE,
    LabelSpec,
    announce,
    default_shortcut,
    label_in,
    new_version,
    validate_label_specs,
)


@dataclass(frozen=True)
class MergePreview:
    """What a merge would do, for the confirmation a manager answers before it rewrites annotations."""

    target: Label
    sources: list[Label]
    annotations: int  # annotations whose label keys change
    items: int  # examples they label


def _merge_labels_checked(current: TaxonomyVersion, into: str, merged: Sequence[str]) -> tuple[Label, list[Label]]:
    target = label_in(current, into)
    sources = [label_in(current, key) for key in dict.fromkeys(merged) if key != into]
    if not sources:
        raise ActionError("Choose at least one other label to merge into this one.")
    if target.is_deprecated:
        raise ActionError(f"'{target.name}' is deprecated; restore it before merging into it.")
    return target, sources


def merge_preview(project: Project, *, into: str, merged: Sequence[str]) -> MergePreview:
    """How many annotations (and items) merging `merged` into `into` would rewrite; changes nothing."""
    target, sources = _merge_labels_checked(project.current_taxonomy(), into, merged)
    keys = {label.key for label in sources}
    rows = _annotations_with_any(project, keys).values_list("example_id", "label_keys")
    annotations, items = 0, set()
    for example_id, label_keys in rows.iterator(chunk_size=10000):
        if keys.intersection(label_keys):
            annotations += 1
            items.add(example_id)
    return MergePreview(target=target, sources=sources, annotations=annotations, items=len(items))


@transaction.atomic
def merge_labels(project: Project, *, into: str, merged: Sequence[str], user: Any,
                 expected_number: int | None = None) -> TaxonomyVersion:
    """Merge labels into one (A + B → A): their annotations move to A and they are retired."""
    current = project.current_taxonomy()
    target, sources = _merge_labels_checked(current, into, merged)
    source_keys = {label.key for label in sources}
    moved = _rewrite_annotation_keys(project, {key: into for key in source_keys})
    changelog = [f"Merged {', '.join(repr(s.name) for s in sources)} into '{target.name}' "
                 f"({moved} annotation{'s' if moved != 1 else ''} moved)."]
    _, new = new_version(project, user=user, expected_number=expected_number, changelog=changelog)
    for label in new.labels.filter(key__in=source_keys):
        label.is_deprecated = True
        label.shortcut = ""
        label.description = f"Merged into '{target.name}' in v{new.number}. {label.description}".strip()
        label.save()
    announce(project, new, retrain_reason=f"labels merged into {target.name}")
    return new


def _annotations_with_any(project: Project, keys: set[str]) -> QuerySet[Annotation]:
    """The project's annotations that carry any of `keys`; where the database has no JSON containment
    (SQLite) all of them, so callers check the keys of each row themselves."""
    annotations = Annotation.objects.in_project(project)
    if connection.features.supports_json_field_contains:
        query = Q()
        for key in keys:
            query |= Q(label_keys__contains=[key])
        annotations = annotations.filter(query)
    return annotations


def _rewrite_annotation_keys(project: Project, mapping: dict[str, str]) -> int:
    """Replace label keys in every annotation of the project (span projects: the spans' labels too, and
    label_keys stays their sorted distinct keys); returns how many annotations changed."""
    annotations = _annotations_with_any(project, set(mapping)).only("id", "label_keys", "spans")
    fields = ["label_keys", "spans"] if project.is_span else ["label_keys"]
    changed: list[Annotation] = []
    total = 0
    for annotation in annotations.iterator(chunk_size=5000):
        if project.is_span:
            # Two adjacent spans that now share a label stay two entities: a merge renames, it does not
            # redraw boundaries.
            spans = [{**span, "label": mapping.get(span["label"], span["label"])} for span in annotation.spans]
            keys = sorted({span["label"] for span in spans})
            if keys != annotation.label_keys or spans != annotation.spans:
                annotation.label_keys, annotation.spans = keys, spans
                changed.append(annotation)
        else:
            keys = list(dict.fromkeys(mapping.get(k, k) for k in annotation.label_keys))
            if keys != annotation.label_keys:
                annotation.label_keys = keys
                changed.append(annotation)
        if len(changed) >= 5000:
            Annotation.objects.bulk_update(changed, fields)
            total += len(changed)
            changed = []
    Annotation.objects.bulk_update(changed, fields)
    return total + len(changed)


@transaction.atomic
def split_label(project: Project, *, key: str, into: Sequence[LabelSpec], user: Any,
                expected_number: int | None = None) -> TaxonomyVersion:
    """Split a label into new ones (A → B, C): A is retired and its items go to re-review."""
    current = project.current_taxonomy()
    old = label_in(current, key)
    if old.is_deprecated:
        raise ActionError(f"'{old.name}' is already deprecated.")
    if len(into) < 2:
        raise ActionError(f"Splitting '{old.name}' needs at least two new labels.")
    validate_label_specs(into, existing=current.labels.exclude(key=key).values_list("name", flat=True))
    example_ids = Annotation.objects.in_project(project).examples_whose_latest_label_has(key)
    names = ", ".join(repr(spec.name) for spec in into)
    changelog = [f"Split '{old.name}' into {names}; its {len(example_ids)} labelled "
                 f"item{'s' if len(example_ids) != 1 else ''} go to re-review."]
    _, new = new_version(project, user=user, expected_number=expected_number, changelog=changelog)
    retired = new.labels.get(key=key)
    retired.is_deprecated = True
    retired.shortcut = ""
    retired.description = f"Split into {names} in v{new.number}. {retired.description}".strip()
    retired.save()
    used = set(new.labels.exclude(shortcut="").values_list("shortcut", flat=True))
    position = new.labels.count()
    created = []
    for offset, spec in enumerate(into):
        shortcut = spec.shortcut or (old.shortcut if offset == 0 else "") or default_shortcut(position + offset)
        if shortcut in used:
            shortcut = next((s for s in "123456789" if s not in used), "")
        used.add(shortcut)
        created.append(Label(version=new, name=spec.name, description=spec.description,
                             colour=spec.colour or (old.colour if offset == 0 else PALETTE[(position + offset) % 10]),
                             shortcut=shortcut, position=position + offset))
    Label.objects.bulk_create(created)
    Relabel.objects.bulk_create(
        [Relabel(project=project, example_id=example_id, reason=f"'{old.name}' was split into {names}")
         for example_id in example_ids],
        ignore_conflicts=True,
    )
    announce(project, new, retrain_reason=f"{old.name} split")
    return new


@transaction.atomic
def set_label_deprecated(project: Project, *, key: str, deprecated: bool, user: Any,
                         expected_number: int | None = None) -> TaxonomyVersion:
    """Retire a label (its annotations stop training the model) or bring it back."""
    current = project.current_taxonomy()
    label = label_in(current, key)
    if label.is_deprecated == deprecated:
        raise ActionError(f"'{label.name}' is already {'deprecated' if deprecated else 'active'}.")
    if deprecated:
        count = Annotation.objects.in_project(project).with_label(key).count()
        line = (f"Deprecated '{label.name}': annotators no longer see it and its {count} "
                f"annotation{'s' if count != 1 else ''} no longer train the model.")
    else:
        line = f"Restored '{label.name}'."
    _, new = new_version(project, user=user, expected_number=expected_number, changelog=[line])
    copy = new.labels.get(key=key)
    copy.is_deprecated = deprecated
    if deprecated:
        copy.shortcut = ""
    copy.save()
    announce(project, new, retrain_reason=f"{label.name} {'deprecated' if deprecated else 'restored'}")
    return new

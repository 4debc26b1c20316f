"""How the annotation layer follows what the projects layer announces."""
from __future__ import annotations

import json
from typing import Any

from django.db import connection, transaction
from django.utils import timezone

from annotation import events, progress
from annotation.models import Annotation, AnnotationSource
from projects import events as project_events
from projects.models import Dataset, Example, Project, TaxonomyVersion

# An example already labelled by this annotator under this version keeps its annotation, as
# bulk_create(ignore_conflicts=True) did.
_INSERT_IMPORTED = """
INSERT INTO {table} (annotator_id, taxonomy_version_id, source, created_at, example_id, label_keys, spans)
SELECT %s, %s, %s, %s, example_id, keys::jsonb, spans::jsonb
FROM unnest(%s::bigint[], %s::text[], %s::text[]) AS t(example_id, keys, spans)
ON CONFLICT DO NOTHING
"""


def record_imported_labels(*, dataset: Dataset, taxonomy: TaxonomyVersion, labels: dict[int, list[str]],
                           annotator: Any, spans: dict[int, list[dict[str, Any]]] | None = None,
                           **_: Any) -> None:
    """Rows imported with labels (span projects: with spans) become annotations (source: import), in the
    import's transaction."""
    spans = spans or {}
    if connection.vendor == "postgresql":
        # One statement per announced batch (up to 10,000 rows), the rows as arrays: no model
        # instance per row, which was most of a large labelled import's time.
        with connection.cursor() as cursor:
            cursor.execute(_INSERT_IMPORTED.format(table=Annotation._meta.db_table),
                           [annotator.pk if annotator is not None else None, taxonomy.pk,
                            AnnotationSource.IMPORT.value, timezone.now(), list(labels),
                            [json.dumps(keys) for keys in labels.values()],
                            [json.dumps(spans.get(example_id, [])) for example_id in labels]])
        return
    Annotation.objects.bulk_create(
        [Annotation(example_id=example_id, annotator=annotator, taxonomy_version=taxonomy, label_keys=keys,
                    spans=spans.get(example_id, []), source=AnnotationSource.IMPORT)
         for example_id, keys in labels.items()],
        ignore_conflicts=True,
    )


def count_again_after_import(*, dataset: Dataset, **_: Any) -> None:
    """New examples (and their imported labels) move the labelling header's counts."""
    progress.counts_changed(dataset.project_id)


def count_again_after_labels(*, project: Project, counted: bool = False, **_: Any) -> None:
    """Labels given or taken back elsewhere than a submit on the labelling page (undo, bulk "label as")."""
    if not counted:
        progress.counts_changed(project.pk)


def count_again_after_deletion(*, project: Project, **_: Any) -> None:
    transaction.on_commit(lambda: progress.counts_changed(project.pk))


def connect() -> None:
    events.labels_given.connect(count_again_after_labels, sender=Annotation,
                                dispatch_uid="annotation.count_again_after_labels")
    events.examples_deleted.connect(count_again_after_deletion, sender=Example,
                                    dispatch_uid="annotation.count_again_after_deletion")
    project_events.examples_imported.connect(record_imported_labels, sender=Dataset,
                                             dispatch_uid="annotation.record_imported_labels")
    project_events.dataset_imported.connect(count_again_after_import, sender=Dataset,
                                            dispatch_uid="annotation.count_again_after_import")

"""How the annotation layer follows what the projects layer announces."""
from __future__ import annotations

from typing import Any

from annotation.models import Annotation, AnnotationSource
from projects import events as project_events
from projects.models import Dataset, TaxonomyVersion


def record_imported_labels(*, dataset: Dataset, taxonomy: TaxonomyVersion, labels: dict[int, list[str]],
                           annotator: Any, **_: Any) -> None:
    """Rows imported with labels become annotations (source: import), in the import's transaction."""
    Annotation.objects.bulk_create(
        [Annotation(example_id=example_id, annotator=annotator, taxonomy_version=taxonomy, label_keys=keys,
                    source=AnnotationSource.IMPORT) for example_id, keys in labels.items()],
        ignore_conflicts=True,
    )


def connect() -> None:
    project_events.examples_imported.connect(record_imported_labels, sender=Dataset,
                                             dispatch_uid="annotation.record_imported_labels")

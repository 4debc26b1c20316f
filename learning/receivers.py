"""How the learning layer follows what the layers below announce: labels given, taxonomy
changes and finished imports start model work; and what it announces to itself: a finished
quality report refreshes the review queue's candidates."""
from __future__ import annotations

from typing import Any

from django.db import transaction

from annotation import events as annotation_events
from annotation.models import Annotation
from labelhub.jobs import enqueue
from learning import actions, events, finetuning, review_candidates, store
from learning.models import ModelVersion
from projects import events as project_events
from projects.models import Dataset, DatasetStatus, Example, Project, TaxonomyVersion


def retrain_after_labels(*, project: Project, example_ids: list[int], **_: Any) -> None:
    actions.request_training(project, reason="new labels")


def retrain_after_taxonomy_change(*, project: Project, retrain_reason: str = "", **_: Any) -> None:
    if retrain_reason:
        transaction.on_commit(lambda: actions.request_training(project, reason=retrain_reason))


def embed_after_import(*, dataset: Dataset, embed: bool = True, **_: Any) -> None:
    # New examples need embeddings before the model can learn from or score them.
    if embed and dataset.status == DatasetStatus.DONE and dataset.imported_count:
        actions.embedding_requested(dataset.project_id, count=dataset.imported_count)
        enqueue("learning.jobs.embed_project", dataset.project_id,
                on_failure=lambda: actions.embedding_requested(dataset.project_id, count=0))


def forget_deleted_examples(*, project: Project, example_ids: list[int], reason: str = "examples deleted",
                            **_: Any) -> None:
    # Their vectors go in the deleting transaction (a later update must not score rows that are gone);
    # the model then learns again without their labels.
    store.drop(project.pk, example_ids)
    transaction.on_commit(lambda: actions.request_training(project, reason=reason))


def refresh_review_candidates(*, version: ModelVersion, **_: Any) -> None:
    # Likely mislabels, low-precision classes and ambiguous items come from the reported model.
    review_candidates.refresh_after_report(version)


def finetune_when_labels_grew(*, version: ModelVersion, **_: Any) -> None:
    # The slow loop: a fine-tune once the labels have grown enough since the last one (LABELHUB_FINETUNE_*).
    finetuning.finetune_when_labels_grew(version)


def follow_promoted_encoder(*, version: ModelVersion, **_: Any) -> None:
    finetuning.version_promoted(version)


def connect() -> None:
    annotation_events.labels_given.connect(retrain_after_labels, sender=Annotation,
                                           dispatch_uid="learning.retrain_after_labels")
    project_events.taxonomy_changed.connect(retrain_after_taxonomy_change, sender=TaxonomyVersion,
                                            dispatch_uid="learning.retrain_after_taxonomy_change")
    project_events.dataset_imported.connect(embed_after_import, sender=Dataset,
                                            dispatch_uid="learning.embed_after_import")
    annotation_events.examples_deleted.connect(forget_deleted_examples, sender=Example,
                                               dispatch_uid="learning.forget_deleted_examples")
    events.model_version_reported.connect(refresh_review_candidates, sender=ModelVersion,
                                          dispatch_uid="learning.refresh_review_candidates")
    events.model_version_recorded.connect(finetune_when_labels_grew, sender=ModelVersion,
                                          dispatch_uid="learning.finetune_when_labels_grew")
    events.model_version_promoted.connect(follow_promoted_encoder, sender=ModelVersion,
                                          dispatch_uid="learning.follow_promoted_encoder")

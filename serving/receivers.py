"""How the serving layer follows what the layers below announce."""
from __future__ import annotations

from typing import Any

from annotation import events as annotation_events
from annotation.models import Annotation
from learning import events as learning_events
from learning.models import ModelVersion
from projects import events as project_events
from projects.models import Dataset, Project
from serving import predictions, served, webhooks


def tell_webhooks_import_finished(*, dataset: Dataset, **_: Any) -> None:
    webhooks.import_finished(dataset)


def answer_routed_predictions(*, project: Project, example_ids: list[int], **_: Any) -> None:
    predictions.human_labels_given(project.pk, example_ids)


def serve_new_version(*, version: ModelVersion, **_: Any) -> None:
    served.version_recorded(version.pk)


def connect() -> None:
    project_events.dataset_imported.connect(tell_webhooks_import_finished, sender=Dataset,
                                            dispatch_uid="serving.import_finished")
    annotation_events.labels_given.connect(answer_routed_predictions, sender=Annotation,
                                           dispatch_uid="serving.answer_routed_predictions")
    learning_events.model_version_recorded.connect(serve_new_version, sender=ModelVersion,
                                                   dispatch_uid="serving.serve_new_version")

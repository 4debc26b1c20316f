"""The events between the layers: each upward effect happens through its signal, and only through it.

Every test runs the same lower-layer action twice: with the upper layer's receiver
connected (the effect happens) and with it disconnected (the action still does its
own work, and the effect does not happen). So no layer reaches the one above it
directly: the annotation layer's submit does not call learning, an import does not
call learning or serving, a taxonomy edit does not call learning.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.dispatch import Signal

from annotation import actions as annotation_actions
from annotation import events as annotation_events
from annotation import receivers as annotation_receivers
from annotation import taxonomy as annotation_taxonomy
from annotation.models import Annotation, AnnotationSource
from labelhub import jobs
from learning import receivers as learning_receivers
from learning.models import TrainingRun
from projects import events as project_events
from projects import imports
from projects.models import Dataset, DatasetStatus, Example, Project, TaxonomyVersion
from serving import receivers as serving_receivers
from serving import webhooks
from serving.models import WebhookDelivery

pytestmark = pytest.mark.django_db


@contextmanager
def disconnected(signal: Signal, receiver: Callable[..., Any], *, sender: type, dispatch_uid: str) -> Iterator[None]:
    """Take one receiver off a signal for the block (as if its layer were not installed)."""
    assert signal.disconnect(sender=sender, dispatch_uid=dispatch_uid), f"{dispatch_uid} was not connected"
    try:
        yield
    finally:
        signal.connect(receiver, sender=sender, dispatch_uid=dispatch_uid)


@pytest.fixture
def queued_jobs(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, tuple[Any, ...]]]:
    """The jobs handed to the queue (dotted path, args), recorded instead of run."""
    queued: list[tuple[str, tuple[Any, ...]]] = []
    monkeypatch.setattr(jobs, "_dispatch", lambda path, args, kwargs, queue, job_id, delay: queued.append((path, args)))
    return queued


@pytest.fixture
def heard() -> Iterator[Callable[[Signal], list[dict[str, Any]]]]:
    """`heard(signal)`: a list that fills with the keyword arguments of each sending of `signal`."""
    listeners: list[tuple[Signal, Callable[..., None]]] = []

    def heard(signal: Signal) -> list[dict[str, Any]]:
        sent: list[dict[str, Any]] = []

        def listen(sender: Any, **kwargs: Any) -> None:
            sent.append(kwargs)

        signal.connect(listen, weak=False)
        listeners.append((signal, listen))
        return sent

    yield heard
    for signal, listen in listeners:
        signal.disconnect(listen)


def import_csv(project: Project, user: Any, content: bytes, *, name: str = "rows.csv", **mapping: str) -> Dataset:
    """An upload mapped and imported as the import job does it (in this process)."""
    dataset = imports.create_dataset_from_upload(project, upload=SimpleUploadedFile(name, content), user=user)
    imports.configure_import(dataset, text_column="text", **mapping)
    return imports.run_import(dataset.pk)


# --- (a) labels given -> a training run --------------------------------------------------------------------------


def test_a_label_given_asks_for_training_only_through_labels_given(
        project, bob, make_pool, active_keys, heard, django_capture_on_commit_callbacks):
    make_pool(project, 2)
    sent = heard(annotation_events.labels_given)
    with disconnected(annotation_events.labels_given, learning_receivers.retrain_after_labels, sender=Annotation,
                      dispatch_uid="learning.retrain_after_labels"):
        item = annotation_actions.next_item(project, user=bob)
        with django_capture_on_commit_callbacks(execute=True):
            annotation_actions.submit_annotation(project, ticket=item.ticket, user=bob,
                                                 label_keys=active_keys(project)[:1])
    assert Annotation.objects.filter(annotator=bob).count() == 1
    assert [(s["project"], s["example_ids"]) for s in sent] == [(project, [item.example.pk])]
    assert not TrainingRun.objects.filter(project=project).exists()

    item = annotation_actions.next_item(project, user=bob)
    with django_capture_on_commit_callbacks(execute=True):
        annotation_actions.submit_annotation(project, ticket=item.ticket, user=bob,
                                             label_keys=active_keys(project)[:1])
    assert len(sent) == 2
    run = TrainingRun.objects.get(project=project)
    assert run.reason == "new labels"


def test_the_labels_given_signal_is_sent_after_commit_not_before(project, bob, make_pool, active_keys, heard,
                                                                  django_capture_on_commit_callbacks):
    make_pool(project, 1)
    sent = heard(annotation_events.labels_given)
    item = annotation_actions.next_item(project, user=bob)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        annotation_actions.submit_annotation(project, ticket=item.ticket, user=bob,
                                             label_keys=active_keys(project)[:1])
    assert sent == [] and not TrainingRun.objects.exists()  # nothing upstairs sees an uncommitted label
    for callback in callbacks:
        callback()
    assert len(sent) == 1 and TrainingRun.objects.filter(project=project).count() == 1


# --- (b) an import ends -> embeddings and the import.finished webhook ----------------------------------------------


def test_a_finished_import_queues_embeddings_and_the_webhook_only_through_dataset_imported(
        project, alice, heard, queued_jobs, settings, django_capture_on_commit_callbacks):
    settings.WEBHOOK_ALLOWED_HOSTS = ["127.0.0.1"]
    webhooks.register_endpoint(project, url="http://127.0.0.1:9/hook", events=["import.finished"], user=alice)
    sent = heard(project_events.dataset_imported)
    with (disconnected(project_events.dataset_imported, learning_receivers.embed_after_import, sender=Dataset,
                       dispatch_uid="learning.embed_after_import"),
          disconnected(project_events.dataset_imported, serving_receivers.tell_webhooks_import_finished,
                       sender=Dataset, dispatch_uid="serving.import_finished"),
          django_capture_on_commit_callbacks(execute=True)):
        first = import_csv(project, alice, b"text\nwe overrule smith.\nwe follow smith.\n", name="first.csv")
    assert first.status == DatasetStatus.DONE and first.imported_count == 2
    assert [s["dataset"].pk for s in sent] == [first.pk]
    assert not [path for path, _ in queued_jobs if path == "learning.jobs.embed_project"]
    assert not WebhookDelivery.objects.exists()

    with django_capture_on_commit_callbacks(execute=True):
        second = import_csv(project, alice, b"text\nwe distinguish jones.\n", name="second.csv")
    assert second.status == DatasetStatus.DONE
    assert ("learning.jobs.embed_project", (project.pk,)) in queued_jobs
    delivery = WebhookDelivery.objects.get()
    assert delivery.event == "import.finished" and delivery.payload["data"]["dataset_id"] == second.pk
    assert ("serving.jobs.deliver_webhook", (str(delivery.pk),)) in queued_jobs


def test_a_failed_import_tells_the_webhook_but_embeds_nothing(project, alice, queued_jobs, settings,
                                                               django_capture_on_commit_callbacks):
    settings.WEBHOOK_ALLOWED_HOSTS = ["127.0.0.1"]
    webhooks.register_endpoint(project, url="http://127.0.0.1:9/hook", events=["import.finished"], user=alice)
    with django_capture_on_commit_callbacks(execute=True):
        dataset = import_csv(project, alice, b"text,label\nwe overrule smith.,Maybe\n", label_column="label")
    assert dataset.status == DatasetStatus.FAILED
    assert WebhookDelivery.objects.get().payload["data"]["status"] == "failed"
    assert not [path for path, _ in queued_jobs if path == "learning.jobs.embed_project"]


# --- (c) a taxonomy change -> retraining ---------------------------------------------------------------------------


def test_a_merge_asks_for_retraining_only_through_taxonomy_changed(multi_project, alice, heard,
                                                                    django_capture_on_commit_callbacks):
    keys = {label.name: label.key for label in multi_project.current_taxonomy().labels.all()}
    sent = heard(project_events.taxonomy_changed)
    with (disconnected(project_events.taxonomy_changed, learning_receivers.retrain_after_taxonomy_change,
                       sender=TaxonomyVersion, dispatch_uid="learning.retrain_after_taxonomy_change"),
          django_capture_on_commit_callbacks(execute=True)):
        merged = annotation_taxonomy.merge_labels(multi_project, into=keys["Hardware"], merged=[keys["Access"]],
                                                  user=alice)
    assert merged.number == 2 and merged.labels.get(key=keys["Access"]).is_deprecated
    assert [(s["version"].number, s["retrain_reason"]) for s in sent] == [(2, "labels merged into Hardware")]
    assert not TrainingRun.objects.filter(project=multi_project).exists()

    with django_capture_on_commit_callbacks(execute=True):
        annotation_taxonomy.merge_labels(multi_project, into=keys["Hardware"], merged=[keys["Billing"]], user=alice)
    assert TrainingRun.objects.get(project=multi_project).reason == "labels merged into Hardware"


# --- (d) a labelled import -> annotations --------------------------------------------------------------------------


def test_a_labelled_import_records_annotations_only_through_examples_imported(project, alice, heard,
                                                                               django_capture_on_commit_callbacks):
    keys = {label.name: label.key for label in project.current_taxonomy().labels.all()}
    sent = heard(project_events.examples_imported)
    content = b"text,label\nwe overrule smith.,Yes\nwe follow smith.,No\nwe note jones.,\n"
    with (disconnected(project_events.examples_imported, annotation_receivers.record_imported_labels,
                       sender=Dataset, dispatch_uid="annotation.record_imported_labels"),
          django_capture_on_commit_callbacks(execute=True)):
        first = import_csv(project, alice, content, name="first.csv", label_column="label")
    assert first.status == DatasetStatus.DONE and first.imported_count == 3
    assert len(sent) == 1 and sorted(sent[0]["labels"].values()) == sorted([[keys["No"]], [keys["Yes"]]])
    assert not Annotation.objects.exists()

    with django_capture_on_commit_callbacks(execute=True):
        second = import_csv(project, alice, content.replace(b"smith", b"brown").replace(b"jones", b"green"),
                            name="second.csv", label_column="label")
    annotations = Annotation.objects.in_project(project)
    assert sorted((a.example.text, a.label_keys) for a in annotations) == [
        ("we follow brown.", [keys["No"]]), ("we overrule brown.", [keys["Yes"]])]
    assert {(a.annotator, a.source, a.example.dataset_id) for a in annotations} == {
        (alice, AnnotationSource.IMPORT, second.pk)}
    assert Example.objects.filter(dataset=second).count() == 3


def test_every_receiver_is_connected_once_by_its_apps_ready():
    # connect() runs in each AppConfig.ready(); running it again (a second ready()) must not double up.
    before = {signal: len(signal.receivers) for signal in (
        annotation_events.labels_given, project_events.taxonomy_changed, project_events.examples_imported,
        project_events.dataset_imported)}
    annotation_receivers.connect()
    learning_receivers.connect()
    serving_receivers.connect()
    assert {signal: len(signal.receivers) for signal in before} == before
    assert before[annotation_events.labels_given] >= 2  # learning retrains, serving answers routed predictions
    assert before[project_events.dataset_imported] >= 2  # learning embeds, serving tells the webhooks

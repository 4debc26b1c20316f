"""Embedding progress on every page that shows the model and in the API; labels given while it runs train
the model as soon as it finishes."""
from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
from django.core.cache import cache
from django.urls import reverse

from annotation.models import Annotation, AnnotationSource
from learning import actions
from learning.models import EmbeddingChunk, ModelVersion
from projects.importing import content_hash
from projects.models import Example


def test_it_shows_embedding_progress_on_the_labelling_header_project_dashboard_and_api(
        project, alice, bob, charlie, login, htmx, api_client):
    cache.set(actions.embed_progress_key(project.pk), {"done": 2048, "total": 5381}, timeout=60)
    status = login(bob).get(reverse("learning:model-status", args=[project.pk]))
    assert "Embedding 2,048 / 5,381" in status.text and 'hx-trigger="every 2s"' in status.text
    assert "trains on your labels when it finishes" in status.text
    region = login(bob).get(reverse("learning:embedding-status", args=[project.pk]), **htmx)
    assert "Embedding 2,048 / 5,381" in region.text and 'hx-trigger="every 2s"' in region.text
    panel = login(bob).get(reverse("learning:model", args=[project.pk]), **htmx).text
    assert "No model yet: it trains as soon as the examples are embedded (Embedding 2,048 / 5,381)" in " ".join(
        panel.split())
    assert 'hx-trigger="every 5s, embedding-finished from:body"' in panel  # it refreshes when embedding ends
    full = login(bob).get(reverse("learning:model", args=[project.pk])).text
    assert "Embedding 2,048 / 5,381</b> — suggestions start after it" in full  # the live region, on its own
    assert "Embedding 2,048 / 5,381" in login(alice).get(reverse("learning:dashboard", args=[project.pk])).text
    body = api_client(alice).get(reverse("api-model-summary", args=[project.pk])).json()
    assert body["embedding"] == {"done": 2048, "total": 5381}
    assert login(charlie).get(reverse("learning:embedding-status", args=[project.pk])).status_code == 404
    assert "2,048" not in login(charlie).get(reverse("learning:model-status", args=[project.pk])).text

    assert "suggestions start after it" in region.text
    # The running region asks with ?active=1, so the answer that finds it finished can say so.
    assert "?active=1" in region.text

    cache.delete(actions.embed_progress_key(project.pk))
    done = login(bob).get(reverse("learning:embedding-status", args=[project.pk]) + "?active=1", **htmx)
    assert "Embedding" not in done.text and "every 2s" not in done.text  # the region slows down, hidden
    assert 'hidden' in done.text and 'hx-trigger="every 10s"' in done.text  # an import finishing later shows
    assert done["HX-Trigger"] == "embedding-finished"
    idle = login(bob).get(reverse("learning:embedding-status", args=[project.pk]), **htmx)
    assert "HX-Trigger" not in idle  # only the transition refreshes the other regions
    status = login(bob).get(reverse("learning:model-status", args=[project.pk]))
    assert "No model yet" in status.text and "hx-trigger" not in status.text


def test_an_import_shows_embedding_at_once_while_the_job_waits(project, alice, login):
    from projects import imports

    imports.import_records(project, records=[{"text": f"text {i}"} for i in range(7)], user=alice)
    assert actions.embedding_progress(project) == {"done": 0, "total": 7}
    assert "Embedding 0 / 7" in login(alice).get(reverse("learning:model-status", args=[project.pk])).text


def test_labels_given_while_embedding_train_the_model_as_soon_as_it_finishes(
        project, alice, fake_encoder, monkeypatch, settings, api_client, login, run_jobs):
    settings.EMBED_BATCH = 16
    texts = [f"we overrule case {i}" for i in range(20)] + [f"we affirm case {i}" for i in range(20)]
    examples = Example.objects.bulk_create(
        Example(project=project, text=t, content_hash=content_hash(t)) for t in texts)
    api = api_client(alice)
    page = login(alice)
    seen: list[Any] = []
    version = project.current_taxonomy()
    keys = dict(version.labels.values_list("name", "key"))

    class ReportingEncoder:
        """The fake encoder, reporting progress per batch as the real one does."""

        name, dim, reports_progress = fake_encoder.name, fake_encoder.dim, True

        def encode(self, batch: list[str], *, progress: Any = None) -> np.ndarray:
            seen.append((api.get(reverse("api-model-summary", args=[project.pk])).json()["embedding"],
                         "Embedding" in page.get(reverse("learning:model-status", args=[project.pk])).text))
            if len(seen) == 1:
                # An annotator labels while the project is still being encoded: no model can train yet.
                Annotation.objects.bulk_create(
                    Annotation(example=e, annotator=alice, taxonomy_version=version, source=AnnotationSource.UI,
                               label_keys=[keys["Yes" if "overrule" in e.text else "No"]])
                    for e in examples[:15] + examples[20:35])
            vectors = fake_encoder.encode(batch)
            if progress is not None:
                progress(len(batch), len(batch))
            return vectors

    monkeypatch.setattr(actions, "current_encoder", lambda: ReportingEncoder())
    with run_jobs():
        assert actions.embed_project(project.pk) == 40
        assert not ModelVersion.objects.filter(project=project).exists()
    assert seen == [({"done": 0, "total": 40}, True), ({"done": 16, "total": 40}, True),
                    ({"done": 32, "total": 40}, True)]
    assert sum(c.count for c in EmbeddingChunk.objects.filter(project=project)) == 40
    # Embedding finished, then the queued update ran on the labels given meanwhile.
    model = ModelVersion.objects.get(project=project)
    assert model.n_labels == 30 and model.encoder == fake_encoder.name
    assert actions.embedding_progress(project) is None


def test_the_embed_command_encodes_what_the_current_encoder_lacks(project, fake_encoder):
    from django.core.management import call_command

    Example.objects.bulk_create(Example(project=project, text=f"text {i}", content_hash=f"h{i}") for i in range(5))
    out = io.StringIO()
    call_command("embed", str(project.pk), stdout=out)
    assert f"Project {project.pk} (Overruling): 5 examples embedded" in out.getvalue()
    assert sum(c.count for c in EmbeddingChunk.objects.filter(project=project, encoder=fake_encoder.name)) == 5
    call_command("embed", stdout=io.StringIO())  # nothing left to do
    assert EmbeddingChunk.objects.filter(project=project).count() == 1


def test_vectors_of_another_encoder_are_made_for_the_items_it_lacks_and_only_those(project, fake_encoder):
    # The review judges with the configured encoder after a fine-tune: items imported since have only the
    # fine-tuned vectors, so the configured encoder's are made for them first (actions.embedded_with).
    from learning import store

    texts = [f"we overrule case {i}" for i in range(6)]
    examples = Example.objects.bulk_create(Example(project=project, text=t, content_hash=content_hash(t))
                                           for t in texts)
    ids = np.array([e.pk for e in examples], dtype=np.int64)
    EmbeddingChunk.objects.create(project=project, encoder=fake_encoder.name, dim=16, count=2,
                                  example_ids=ids[:2].tobytes(),
                                  vectors=fake_encoder.encode(texts[:2]).astype(np.float16).tobytes())
    got = actions.embedded_with(project.pk, fake_encoder, ids[1:5])
    assert got.has(ids).tolist() == [True, True, True, True, True, False]
    assert np.allclose(got.vectors[got.rows_of(ids[2:5])], fake_encoder.encode(texts[2:5]), atol=1e-3)
    assert EmbeddingChunk.objects.filter(project=project, encoder=fake_encoder.name).count() == 2
    again = actions.embedded_with(project.pk, fake_encoder, ids[:5])  # nothing left to encode
    assert again is store.load(project.pk, fake_encoder.name)
    assert EmbeddingChunk.objects.filter(project=project, encoder=fake_encoder.name).count() == 2


@pytest.mark.django_db(transaction=True)
def test_a_project_deleted_while_it_is_embedded_ends_the_job_quietly(project, fake_encoder, monkeypatch):
    # Seen in a benchmark: the project went while a chunk was being encoded, and the job crashed on the chunk's
    # foreign key. It must stop, store nothing and raise nothing (there is no one left to tell).
    Example.objects.bulk_create(Example(project=project, text=f"text {i}", content_hash=f"h{i}") for i in range(5))
    encode = fake_encoder.encode

    def encode_then_delete(texts, **kwargs):
        vectors = encode(texts)
        from projects.models import Project

        Project.objects.filter(pk=project.pk).delete()
        return vectors

    monkeypatch.setattr(fake_encoder, "encode", encode_then_delete)
    assert actions.embed_project(project.pk) == 0
    assert not EmbeddingChunk.objects.exists() and actions.embedding_progress(project) is None

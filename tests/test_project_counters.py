"""The project page's and the dashboard's counters are true: read as a user meets them (the pages, the labelling
actions), right after the change, with no cache standing between a label and the figure; and embeddings that
stalled (a lost job, a dead worker) are said so, not hidden."""
from __future__ import annotations

import re

import numpy as np
import pytest
from django.core.cache import cache
from django.urls import reverse

from annotation import taxonomy as annotation_taxonomy
from learning import actions
from learning.models import EmbeddingChunk
from projects.models import Example
from projects.taxonomy import LabelSpec


@pytest.fixture(autouse=True)
def _no_training(monkeypatch):
    # Labels and taxonomy edits ask for a retrain; these tests are about what the pages show.
    monkeypatch.setattr("learning.actions.request_training", lambda project, reason: None)


def counters(client, project, version: str = "") -> tuple[int, str]:
    url = reverse("learning:project-counters", args=[project.pk]) + (f"?v={version}" if version else "")
    response = client.get(url, HTTP_HX_REQUEST="true")
    return response.status_code, response.content.decode()


def figure(html: str, name: str) -> str:
    """The figure a stat box shows under its name, tags and whitespace folded: '3 / 7'."""
    match = re.search(rf'<span class="muted">{re.escape(name)}</span><b>(.*?)</b>', html, re.S)
    assert match, html
    return " ".join(re.sub(r"<[^>]+>", "", match.group(1)).split())


def fingerprint(html: str) -> str:
    match = re.search(r"\?v=([0-9a-f]+)", html)
    assert match, html
    return match.group(1)


def submit_next(client, project, label_key: str) -> None:
    page = client.get(reverse("annotation:label", args=[project.pk])).content.decode()
    ticket = re.search(r'name="ticket" value="([ar]\d+)"', page)
    assert ticket, page[:2000]
    response = client.post(reverse("annotation:submit", args=[project.pk]),
                           {"ticket": ticket.group(1), "label": label_key})
    assert response.status_code == 302, response.content.decode()[:1000]


def test_an_empty_project_shows_zero_of_zero_and_the_page_loads_the_live_counters(project, bob, login):
    client = login(bob)
    status, html = counters(client, project)
    assert status == 200
    assert figure(html, "Examples") == "0" and figure(html, "Labelled") == "0 / 0"
    assert figure(html, "In re-review") == "0" and figure(html, "Labels (taxonomy v1)") == "2"
    assert 'hx-trigger="every 5s, embedding-finished from:body"' in html
    page = client.get(reverse("projects:detail", args=[project.pk])).content.decode()
    assert reverse("learning:project-counters", args=[project.pk]) in page
    assert reverse("learning:embedding-status", args=[project.pk]) in page


def test_the_labelled_count_moves_with_the_first_label_not_20_seconds_later(project, bob, login, make_pool,
                                                                             active_keys):
    make_pool(project, 50)
    client = login(bob)
    status, html = counters(client, project)
    assert figure(html, "Labelled") == "0 / 50"
    shown = fingerprint(html)
    assert counters(client, project, shown)[0] == 204  # nothing changed: the poll swaps nothing
    # The labelling page's own header caches its counts; the project page must not lag behind it.
    client.get(reverse("annotation:label", args=[project.pk]))
    submit_next(client, project, active_keys(project)[0])
    status, html = counters(client, project, shown)
    assert status == 200 and figure(html, "Labelled") == "1 / 50"
    for _ in range(26):
        submit_next(client, project, active_keys(project)[1])
    status, html = counters(client, project, fingerprint(html))
    assert figure(html, "Labelled") == "27 / 50"
    dashboard = client.get(reverse("learning:dashboard", args=[project.pk])).content.decode()
    assert re.search(r"Labelled examples</span><b>27 <small class=\"muted\">/ 50</small>", dashboard)


def test_re_review_counts_items_until_they_are_labelled_again(project, alice, bob, login, make_pool, active_keys):
    examples = make_pool(project, 4)
    client = login(bob)
    yes, _ = active_keys(project)
    for _ in range(2):
        submit_next(client, project, yes)
    annotation_taxonomy.split_label(project, key=yes, into=[LabelSpec("Overrules"), LabelSpec("Partly")],
                                    user=alice)
    status, html = counters(client, project)
    assert figure(html, "In re-review") == "2" and "items to label again" in html
    assert figure(html, "Labels (taxonomy v2)") == "3"
    dashboard = client.get(reverse("learning:dashboard", args=[project.pk])).content.decode()
    assert re.search(r"Waiting for re-labelling</span><b>2</b>", dashboard)

    # Re-review items come first in the queue; labelling one takes it off the count at once.
    new_keys = active_keys(project)
    submit_next(client, project, new_keys[-1])
    status, html = counters(client, project, fingerprint(html))
    assert status == 200 and figure(html, "In re-review") == "1" and "item to label again" in html
    submit_next(client, project, new_keys[-1])
    assert figure(counters(client, project)[1], "In re-review") == "0"
    assert len(examples) == 4


def test_the_counters_are_for_members_only(project, charlie, login):
    assert login(charlie).get(reverse("learning:project-counters", args=[project.pk])).status_code == 404


def test_embeddings_that_stalled_are_shown_from_the_database_and_queued_again(project, bob, login, monkeypatch):
    examples = Example.objects.bulk_create(
        Example(project=project, text=f"text {i}", content_hash=f"s{i}") for i in range(5))
    queued: list[tuple[str, tuple]] = []
    monkeypatch.setattr(actions, "enqueue", lambda path, *args, **kwargs: queued.append((path, args)))
    # Two of five examples were embedded, then the worker died: its progress entry expired.
    ids = np.array([e.pk for e in examples[:2]], dtype=np.int64)
    EmbeddingChunk.objects.create(project=project, encoder="enc", dim=2, count=2, example_ids=ids.tobytes(),
                                  vectors=np.zeros((2, 2), dtype=np.float16).tobytes())
    assert cache.get(actions.embed_progress_key(project.pk)) is None
    client = login(bob)
    region = client.get(reverse("learning:embedding-status", args=[project.pk]), HTTP_HX_REQUEST="true").text
    assert "Embedding 2 / 5" in region and "No embedding job is reporting progress" in region
    assert f"manage.py embed {project.pk}" in region and 'hx-trigger="every 10s"' in region
    assert queued == [("learning.jobs.embed_project", (project.pk,))]
    assert "Embedding 2 / 5" in client.get(reverse("learning:dashboard", args=[project.pk])).text
    client.get(reverse("learning:embedding-status", args=[project.pk]))
    assert len(queued) == 1  # queued again at most every EMBED_REQUEUE_SECONDS

    # The job ran: every example has its vector, and the region goes quiet.
    rest = np.array([e.pk for e in examples[2:]], dtype=np.int64)
    EmbeddingChunk.objects.create(project=project, encoder="enc", dim=2, count=3, example_ids=rest.tobytes(),
                                  vectors=np.zeros((3, 2), dtype=np.float16).tobytes())
    done = client.get(reverse("learning:embedding-status", args=[project.pk]) + "?active=1",
                      HTTP_HX_REQUEST="true")
    assert "Embedding" not in done.text and done["HX-Trigger"] == "embedding-finished"
    assert actions.embedding_state(project) is None

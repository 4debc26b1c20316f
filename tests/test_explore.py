"""Explore / rare-class discovery: the pool's clusters, the unexplored ones, and what a manager does from them.

The main test holds one TREC question type (ABBR, "What does NASA stand for?") out of the labels, encodes a
real slice of TREC with the real sentence encoder, and expects that class to come back as unexplored clusters.
"""
from __future__ import annotations

import csv
import random
from collections import Counter
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.urls import reverse

from annotation import actions as queue
from annotation.models import Annotation, AnnotationSource, ExampleScore
from learning import actions as learning_actions
from learning import explore
from learning.models import EmbeddingChunk, TrainingRun
from projects import taxonomy
from projects.models import Example, Membership, Project, Role

pytestmark = pytest.mark.django_db

TREC = Path(settings.BASE_DIR).parent / "shared" / "data" / "trec" / "train.csv"
HELD_BACK = "ABBR"
PER_CLASS, HELD_BACK_ROWS, LABELLED_PER_CLASS = 80, 60, 20


@lru_cache(maxsize=1)
def trec_slice() -> tuple[list[tuple[str, str]], np.ndarray]:
    """460 distinct TREC questions (80 of each type, 60 ABBR), fixed sample, and their real sentence vectors."""
    if not TREC.exists():
        pytest.skip(f"{TREC} is not here (the shared data sets)")
    with TREC.open(newline="", encoding="utf-8") as handle:
        rows = list({row["text"]: row["label"] for row in csv.DictReader(handle)}.items())
    random.Random(5).shuffle(rows)
    taken: Counter[str] = Counter()
    chosen = []
    for text, label in rows:
        if taken[label] < (HELD_BACK_ROWS if label == HELD_BACK else PER_CLASS):
            chosen.append((text, label))
            taken[label] += 1
    from learning.encoder import get_encoder

    vectors = get_encoder(backend="torch", threads=1).encode([text for text, _ in chosen])
    return chosen, vectors


def _store(project: Project, examples: list[Example], vectors: np.ndarray, name: str) -> None:
    ids = np.array([e.pk for e in examples], dtype=np.int64)
    EmbeddingChunk.objects.create(project=project, encoder=name, dim=vectors.shape[1], count=len(ids),
                                  example_ids=ids.tobytes(), vectors=vectors.astype(np.float16).tobytes())


@pytest.fixture
def viewer(team: Any) -> User:
    user = User.objects.create_user(username="victor", password="victor-password-123")
    Membership.objects.create(team=team, user=user, role=Role.VIEWER)
    return user


def test_cluster_count_grows_with_the_square_root_of_the_pool():
    assert [explore.cluster_count(n) for n in (0, 3, 4, 100, 600, 10_000, 10**6)] == [0, 1, 2, 5, 12, 50, 50]


def test_a_group_nobody_labelled_near_is_unexplored():
    rng = np.random.default_rng(0)
    centres = np.eye(8)[:3] * 5
    X = np.vstack([centres[c] + rng.normal(size=(50, 8)) * 0.3 for c in range(3)])
    labelled = np.zeros(150, dtype=bool)
    labelled[list(range(10)) + list(range(50, 60))] = True  # groups 0 and 1 have labels, group 2 none
    result = explore.cluster_embeddings(X, labelled, k=3, seed=0)
    group_of_cluster = [Counter(result.assignment[g * 50:(g + 1) * 50]).most_common(1)[0][0] for g in range(3)]
    assert [bool(result.unexplored[c]) for c in group_of_cluster] == [False, False, True]
    # Representatives are members, nearest the centre first.
    for c, reps in enumerate(result.representatives):
        assert (result.assignment[reps] == c).all()
        assert np.all(np.diff(result.distance_to_centre[reps]) >= 0)


@pytest.mark.slow
def test_a_held_back_trec_class_shows_up_as_unexplored_clusters(team, alice, bob, login, htmx, stored_vectors):
    rows, vectors = trec_slice()
    kinds = sorted({label for _, label in rows} - {HELD_BACK})
    project = taxonomy.create_project(team, name="Questions", task_type="single_label", created_by=alice,
                                      labels=[taxonomy.LabelSpec(k) for k in kinds])
    examples = Example.objects.bulk_create(Example(project=project, text=t, content_hash=f"q{i}")
                                           for i, (t, _) in enumerate(rows))
    _store(project, examples, vectors, stored_vectors.name)
    truth = {e.pk: label for e, (_, label) in zip(examples, rows, strict=True)}
    keys = dict(project.current_taxonomy().labels.values_list("name", "key"))
    rng = np.random.default_rng(0)
    to_label = [i for kind in kinds for i in rng.choice([j for j, (_, lab) in enumerate(rows) if lab == kind],
                                                         LABELLED_PER_CLASS, replace=False)]
    Annotation.objects.bulk_create(Annotation(example=examples[i], annotator=alice, label_keys=[keys[rows[i][1]]],
                                              taxonomy_version=project.current_taxonomy(), source=AnnotationSource.UI)
                                   for i in to_label)
    TrainingRun.objects.create(project=project)
    assert learning_actions.run_training(project.pk).model_version is not None

    client = login(alice)
    page = client.post(reverse("learning:explore-run", args=[project.pk]), **htmx).content.decode()
    assert "Clustered." in page and "Unexplored · Cluster" in page
    result = explore.current(project)
    assert result is not None and result["model_version"] == 1 and result["k"] == 11
    unexplored = [row for row in result["clusters"] if row["unexplored"]]
    assert unexplored and all(row["distribution"] and row["mean_bald"] is not None for row in result["clusters"])
    # Every unexplored cluster is mostly the held-back class, most of that class is in them, the others are not.
    for row in unexplored:
        assert Counter(truth[i] for i in row["example_ids"]).most_common(1)[0][0] == HELD_BACK
    in_unexplored = {i for row in unexplored for i in row["example_ids"]}
    held = [i for i, label in truth.items() if label == HELD_BACK]
    others = [i for i, label in truth.items() if label != HELD_BACK]
    assert sum(i in in_unexplored for i in held) / len(held) >= 0.5
    assert sum(i in in_unexplored for i in others) / len(others) <= 0.05

    # From the cluster: a new label, then its items first in the queue.
    cluster = unexplored[0]
    added = client.post(reverse("learning:explore-add-label", args=[project.pk]),
                        {"name": "Abbreviation", "taxonomy_version": project.current_taxonomy().number}, **htmx)
    assert "Added the label “Abbreviation”" in added.content.decode()
    assert project.current_taxonomy().labels.filter(name="Abbreviation").exists()
    # A new taxonomy version retrains and so re-keys the clustering: the form of the old page is refused.
    stale = client.post(reverse("learning:explore-send", args=[project.pk]),
                        {"key": result["key"], "cluster": cluster["index"]}, **htmx).content.decode()
    if explore.current(project) is None:
        assert "The clusters changed" in stale
        client.post(reverse("learning:explore-run", args=[project.pk]), **htmx)
        result = explore.current(project)
        cluster = next(row for row in result["clusters"] if row["unexplored"])
        stale = client.post(reverse("learning:explore-send", args=[project.pk]),
                            {"key": result["key"], "cluster": cluster["index"]}, **htmx).content.decode()
    assert "go to the front of the labelling queue" in stale
    first = queue.candidates(project, user=bob, limit=5)
    assert first == cluster["example_ids"][:5]
    assert ExampleScore.objects.filter(example_id__in=cluster["example_ids"], is_routed=True).count() == cluster["size"]


def test_only_managers_explore(project, alice, bob, viewer, charlie, login, htmx, clustered_examples):
    clustered_examples(project, alice, 40, labelled=10)
    urls = {name: reverse(f"learning:{name}", args=[project.pk])
            for name in ("explore", "explore-run", "explore-send", "explore-add-label")}
    assert login(alice).get(urls["explore"]).status_code == 200
    for user, code in ((bob, 403), (viewer, 403), (charlie, 404)):
        client = login(user)
        assert client.get(urls["explore"]).status_code == code
        for name in ("explore-run", "explore-send", "explore-add-label"):
            assert client.post(urls[name], {"name": "X", "cluster": 0}).status_code == code
    assert explore.current(project) is None
    assert project.current_taxonomy().number == 1
    # The nav shows the tab to the manager only.
    assert urls["explore"] in login(alice).get(reverse("projects:detail", args=[project.pk])).content.decode()
    assert urls["explore"] not in login(bob).get(reverse("projects:detail", args=[project.pk])).content.decode()


def test_bad_input_changes_nothing(project, alice, login, htmx, clustered_examples):
    clustered_examples(project, alice, 40, labelled=10)
    client = login(alice)
    client.post(reverse("learning:explore-run", args=[project.pk]), **htmx)
    result = explore.current(project)
    assert result is not None and result["n"] == 40
    send = reverse("learning:explore-send", args=[project.pk])
    add = reverse("learning:explore-add-label", args=[project.pk])
    cases = [
        (send, {"key": result["key"], "cluster": "x"}, "lost its cluster number"),
        (send, {"key": result["key"], "cluster": 99}, "no cluster 99"),
        (send, {"key": "labelhub:explore:old", "cluster": 0}, "The clusters changed"),
        (add, {"name": ""}, "A label needs a name"),
        (add, {"name": "Yes"}, "appears twice"),
        (add, {"name": "Other", "taxonomy_version": "7"}, "taxonomy"),
        (add, {"name": "Other", "taxonomy_version": "v"}, "not a number"),
    ]
    for url, data, message in cases:
        body = client.post(url, data, **htmx).content.decode()
        assert message in body, message
    assert not ExampleScore.objects.filter(is_routed=True).exists()
    assert project.current_taxonomy().number == 1
    # Without htmx: a redirect with the message.
    response = client.post(send, {"key": result["key"], "cluster": "x"})
    assert response.status_code == 302


def test_a_tiny_pool_is_refused_with_a_reason(project, alice, login, htmx, stored_vectors):
    body = login(alice).post(reverse("learning:explore-run", args=[project.pk]), **htmx).content.decode()
    assert "clustering needs at least 4" in body


def test_a_large_pool_clusters_in_the_background_with_progress(project, alice, login, htmx, clustered_examples,
                                                               run_jobs, monkeypatch):
    monkeypatch.setattr(explore, "INLINE_LIMIT", 10)
    clustered_examples(project, alice, 60, labelled=6)
    client = login(alice)
    with run_jobs():
        body = client.post(reverse("learning:explore-run", args=[project.pk]), **htmx).content.decode()
        assert "Clustering in the background" in body and "step 1 of 4" in body and 'hx-trigger="every 2s"' in body
    result = explore.current(project)
    assert result is not None and result["n"] == 60 and explore.progress(project) is None
    page = client.get(reverse("learning:explore", args=[project.pk]), HTTP_HX_TARGET="explore-results",
                      **htmx).content.decode()
    assert "every 2s" not in page and f"of {result['n']} items" in page

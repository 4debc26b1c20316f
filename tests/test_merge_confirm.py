"""Merging labels rewrites annotations and cannot be undone, so the editor first says how many annotations (and
items) change and asks; only the confirmed form merges."""
from __future__ import annotations

import re

import pytest
from django.urls import reverse

from annotation import taxonomy as annotation_taxonomy
from annotation.models import Annotation, AnnotationSource
from projects import taxonomy
from projects.models import Example


@pytest.fixture(autouse=True)
def _no_training(monkeypatch):
    monkeypatch.setattr("learning.actions.request_training", lambda project, reason: None)


def by_name(project):
    return {lab.name: lab for lab in project.current_taxonomy().labels.all()}


@pytest.fixture
def labelled(project, alice, bob):
    """Three labels; 'Maybe' on four annotations of three items, 'Unclear' on one, 'No' on two."""
    taxonomy.add_labels(project, labels=[taxonomy.LabelSpec("Maybe"), taxonomy.LabelSpec("Unclear")], user=alice)
    labels = by_name(project)
    version = project.current_taxonomy()
    examples = Example.objects.bulk_create(
        Example(project=project, text=f"sentence {i}", content_hash=f"m{i}") for i in range(6))
    given = [(0, alice, "Maybe"), (0, bob, "Maybe"), (1, alice, "Maybe"), (2, bob, "Maybe"), (3, alice, "Unclear"),
             (4, alice, "No"), (5, bob, "No")]
    Annotation.objects.bulk_create(
        Annotation(example=examples[i], annotator=user, taxonomy_version=version, source=AnnotationSource.UI,
                   label_keys=[labels[name].key]) for i, user, name in given)
    return labels


@pytest.mark.parametrize("hx", [False, True])
def test_merging_asks_first_with_the_number_of_annotations_it_rewrites(project, alice, labelled, hx, htmx, login):
    client = login(alice)
    extra = htmx if hx else {}
    url = reverse("annotation:edit-label", args=[project.pk])
    version = project.current_taxonomy().number
    form = {"key": labelled["No"].key, "op": "merge", "merged": [labelled["Maybe"].key, labelled["Unclear"].key],
            "expected_version": version}
    response = client.post(url, form, **extra)
    html = response.content.decode()
    assert response.status_code == 200
    text = " ".join(re.sub(r"<[^>]+>", " ", html).split())
    assert "Merge “Maybe”, “Unclear” into “No”?" in text
    assert "This rewrites 5 annotations (on 4 items) to “No”" in text and "cannot be undone" in text
    assert "Merge and rewrite 5 annotations" in text
    # Nothing changed yet.
    assert project.current_taxonomy().number == version
    assert Annotation.objects.with_label(labelled["Maybe"].key).count() == 4
    # The confirmation carries the same merge, marked confirmed.
    confirm = html[html.index('id="merge-confirm"'):]
    assert 'name="confirm" value="1"' in confirm and f'name="merged" value="{labelled["Unclear"].key}"' in confirm

    response = client.post(url, {**form, "confirm": "1"}, **extra)
    assert response.status_code == (200 if hx else 302)
    assert project.current_taxonomy().number == version + 1
    assert Annotation.objects.with_label(labelled["No"].key).count() == 7
    assert "Merged 'Maybe', 'Unclear' into 'No' (5 annotations moved)." in project.current_taxonomy().changelog


def test_the_count_is_that_of_the_merge_itself(project, alice, labelled):
    preview = annotation_taxonomy.merge_preview(project, into=labelled["Maybe"].key, merged=[labelled["No"].key])
    assert (preview.annotations, preview.items) == (2, 2)
    annotation_taxonomy.merge_labels(project, into=labelled["Maybe"].key, merged=[labelled["No"].key], user=alice)
    assert "(2 annotations moved)" in project.current_taxonomy().changelog[0]


def test_a_merge_that_cannot_happen_says_why_instead_of_asking(project, alice, labelled, htmx, login):
    url = reverse("annotation:edit-label", args=[project.pk])
    response = login(alice).post(url, {"key": labelled["No"].key, "op": "merge", "merged": [],
                                       "expected_version": project.current_taxonomy().number}, **htmx)
    assert "Choose at least one other label" in response.content.decode()
    assert 'id="merge-confirm"' not in response.content.decode()


def test_a_confirmed_merge_on_a_taxonomy_that_changed_meanwhile_is_refused(project, alice, labelled, login):
    url = reverse("annotation:edit-label", args=[project.pk])
    version = project.current_taxonomy().number
    form = {"key": labelled["No"].key, "op": "merge", "merged": [labelled["Maybe"].key], "expected_version": version}
    login(alice).post(url, form)
    taxonomy.add_labels(project, labels=[taxonomy.LabelSpec("Later")], user=alice)  # another manager
    response = login(alice).post(url, {**form, "confirm": "1"})
    assert response.status_code == 409
    assert Annotation.objects.with_label(labelled["Maybe"].key).count() == 4

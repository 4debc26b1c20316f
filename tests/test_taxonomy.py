"""Taxonomy edits during annotation: each one's effect on labels, versions and existing annotations."""
from __future__ import annotations

import threading

import pytest
from django.db import connection, connections
from django.urls import reverse

from annotation import taxonomy as annotation_taxonomy
from annotation.models import Annotation, AnnotationSource, Relabel
from labelhub.errors import ActionError, ConflictError
from learning.actions import training_set
from projects import taxonomy
from projects.models import Example
from projects.taxonomy import LabelSpec


@pytest.fixture(autouse=True)
def _no_training(monkeypatch):
    monkeypatch.setattr("learning.actions.request_training", lambda project, reason: None)


def label(project, name):
    return project.current_taxonomy().labels.get(name=name)


def annotate(project, user, texts_and_labels):
    version = project.current_taxonomy()
    out = []
    for i, (text, names) in enumerate(texts_and_labels):
        example = Example.objects.create(project=project, text=text, content_hash=f"{project.pk}-{i}-{text}")
        Annotation.objects.create(example=example, annotator=user, taxonomy_version=version,
                                  label_keys=[label(project, n).key for n in names], source=AnnotationSource.UI)
        out.append(example)
    return out


def test_rename_keeps_the_key_so_annotations_are_untouched(project, alice):
    yes = label(project, "Yes")
    annotate(project, alice, [("a", ["Yes"])])
    new = taxonomy.edit_label(project, key=yes.key, name="Overrules", user=alice, expected_number=1)
    assert new.number == 2 and new.changelog == ["Renamed 'Yes' to 'Overrules'."]
    assert new.labels.get(key=yes.key).name == "Overrules"
    assert project.taxonomy_versions.get(number=1).labels.get(key=yes.key).name == "Yes"  # history kept
    assert Annotation.objects.get().label_keys == [yes.key]
    assert training_set(project).label_names == ["Overrules", "No"]


def test_edit_checks_names_colours_and_shortcuts(project, alice):
    yes, no = label(project, "Yes"), label(project, "No")
    with pytest.raises(ActionError, match="appears twice"):
        taxonomy.edit_label(project, key=yes.key, name="no", user=alice)
    with pytest.raises(ActionError, match="hex colour"):
        taxonomy.edit_label(project, key=yes.key, colour="red", user=alice)
    with pytest.raises(ActionError, match="already belongs to 'No'"):
        taxonomy.edit_label(project, key=yes.key, shortcut=no.shortcut, user=alice)
    with pytest.raises(ActionError, match="labelling page's own keys"):
        taxonomy.edit_label(project, key=yes.key, shortcut="s", user=alice)
    with pytest.raises(ActionError, match="Nothing changed"):
        taxonomy.edit_label(project, key=yes.key, name="Yes", user=alice)
    assert project.current_taxonomy().number == 1
    new = taxonomy.edit_label(project, key=yes.key, description="Overrules a precedent", colour="#112233",
                             shortcut="y", user=alice)
    changed = new.labels.get(key=yes.key)
    assert (changed.description, changed.colour, changed.shortcut) == ("Overrules a precedent", "#112233", "y")


def test_merge_moves_annotations_and_retires_the_merged_label(multi_project, alice):
    hw, acc = label(multi_project, "Hardware"), label(multi_project, "Access")
    a, b, c = annotate(multi_project, alice, [("x", ["Access"]), ("y", ["Hardware", "Access"]), ("z", ["Billing"])])
    new = annotation_taxonomy.merge_labels(multi_project, into=hw.key, merged=[acc.key], user=alice, expected_number=1)
    assert new.labels.get(key=acc.key).is_deprecated
    assert "Merged 'Access' into 'Hardware' (2 annotations moved)." in new.changelog
    assert Annotation.objects.get(example=a).label_keys == [hw.key]
    assert Annotation.objects.get(example=b).label_keys == [hw.key]  # no duplicate key
    assert Annotation.objects.get(example=c).label_keys == [label(multi_project, "Billing").key]
    data = training_set(multi_project)
    assert data.label_names == ["Hardware", "Billing"] and data.skipped_deprecated == 0


def test_split_retires_the_label_and_sends_its_items_to_re_review(project, alice):
    yes = label(project, "Yes")
    items = annotate(project, alice, [("a", ["Yes"]), ("b", ["Yes"]), ("c", ["No"])])
    new = annotation_taxonomy.split_label(project, key=yes.key, into=[LabelSpec("Overrules"), LabelSpec("Questions")],
                              user=alice, expected_number=1)
    names = {lab.name: lab for lab in new.labels.all()}
    assert names["Yes"].is_deprecated and not names["Overrules"].is_deprecated
    assert names["Overrules"].shortcut == yes.shortcut  # the first part inherits the key
    assert len({lab.shortcut for lab in new.active_labels()}) == 3
    assert set(Relabel.objects.values_list("example_id", flat=True)) == {items[0].pk, items[1].pk}
    # Until re-reviewed, the old label no longer trains the model.
    assert training_set(project).skipped_deprecated == 2
    with pytest.raises(ActionError, match="at least two"):
        annotation_taxonomy.split_label(project, key=label(project, "No").key, into=[LabelSpec("One")], user=alice)


def test_deprecate_and_restore(project, alice):
    no = label(project, "No")
    annotate(project, alice, [("a", ["No"])])
    new = annotation_taxonomy.set_label_deprecated(project, key=no.key, deprecated=True, user=alice)
    assert new.labels.get(key=no.key).is_deprecated
    assert "its 1 annotation no longer train" in new.changelog[0]
    assert training_set(project).skipped_deprecated == 1
    with pytest.raises(ActionError, match="already deprecated"):
        annotation_taxonomy.set_label_deprecated(project, key=no.key, deprecated=True, user=alice)
    restored = annotation_taxonomy.set_label_deprecated(project, key=no.key, deprecated=False, user=alice)
    assert not restored.labels.get(key=no.key).is_deprecated


def test_a_stale_edit_is_refused_and_changes_nothing(project, alice):
    yes = label(project, "Yes")
    taxonomy.edit_label(project, key=yes.key, name="Y1", user=alice, expected_number=1)
    with pytest.raises(ConflictError, match="version 1, it is now version 2"):
        taxonomy.edit_label(project, key=yes.key, name="Y2", user=alice, expected_number=1)
    assert project.current_taxonomy().number == 2


@pytest.mark.django_db(transaction=True)
def test_two_managers_editing_at_once_one_wins_the_other_is_told(team, alice):
    if connection.vendor != "postgresql":
        pytest.skip("row locks are tested on PostgreSQL")
    project = taxonomy.create_project(team, name="Race", task_type="single_label", created_by=alice,
                                     labels=[LabelSpec("Yes"), LabelSpec("No")])
    key = label(project, "Yes").key
    outcomes: list[str] = []
    barrier = threading.Barrier(2)

    def edit(name: str) -> None:
        try:
            barrier.wait()
            taxonomy.edit_label(project, key=key, name=name, user=alice, expected_number=1)
            outcomes.append("ok")
        except ConflictError:
            outcomes.append("stale")
        finally:
            connections.close_all()

    threads = [threading.Thread(target=edit, args=(n,)) for n in ("First", "Second")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["ok", "stale"]
    assert project.current_taxonomy().number == 2


def test_diff_lists_each_change_by_stable_key(project, alice):
    yes, no = label(project, "Yes"), label(project, "No")
    taxonomy.edit_label(project, key=yes.key, name="Overrules", user=alice)
    annotation_taxonomy.set_label_deprecated(project, key=no.key, deprecated=True, user=alice)
    taxonomy.add_labels(project, labels=[LabelSpec("Maybe")], user=alice)
    v1, v4 = project.taxonomy_versions.get(number=1), project.taxonomy_versions.get(number=4)
    changes = {c["change"]: c for c in taxonomy.taxonomy_diff(v1, v4)}
    assert changes["renamed"]["fields"]["name"] == {"from": "Yes", "to": "Overrules"}
    assert changes["deprecated"]["key"] == no.key
    assert changes["added"]["name"] == "Maybe"


def test_the_versions_api_lists_shows_and_diffs(project, alice, bob, charlie, api_client):
    yes = label(project, "Yes")
    taxonomy.edit_label(project, key=yes.key, name="Overrules", user=alice)
    client = api_client(bob)
    listing = client.get(f"/api/v1/projects/{project.pk}/taxonomy/versions/")
    assert listing.status_code == 200
    assert [v["number"] for v in listing.json()] == [2, 1]
    shown = client.get(f"/api/v1/projects/{project.pk}/taxonomy/versions/2/").json()
    assert [lab["name"] for lab in shown["labels"]] == ["Overrules", "No"]
    diff = client.get(f"/api/v1/projects/{project.pk}/taxonomy/versions/1/diff/2/").json()
    assert diff["changes"][0]["change"] == "renamed"
    assert client.get(f"/api/v1/projects/{project.pk}/taxonomy/versions/9/").status_code == 404
    assert api_client(charlie).get(f"/api/v1/projects/{project.pk}/taxonomy/versions/").status_code == 404
    assert api_client(None).get(f"/api/v1/projects/{project.pk}/taxonomy/versions/").status_code in (401, 403)


@pytest.mark.parametrize("hx", [False, True])
def test_the_editor_renames_merges_splits_and_deprecates(project, alice, hx, htmx, login):
    client = login(alice)
    extra = htmx if hx else {}
    url = reverse("annotation:edit-label", args=[project.pk])
    yes, no = label(project, "Yes"), label(project, "No")
    response = client.post(url, {"key": yes.key, "op": "edit", "name": "Overrules", "description": "",
                                 "colour": yes.colour, "shortcut": yes.shortcut, "expected_version": 1}, **extra)
    assert response.status_code == (200 if hx else 302)
    assert label(project, "Overrules").key == yes.key
    response = client.post(url, {"key": no.key, "op": "split", "into": "Distinguishes\nAffirms",
                                 "expected_version": 2}, **extra)
    assert project.current_taxonomy().number == 3
    merge = {"key": label(project, "Affirms").key, "op": "merge", "merged": [label(project, "Distinguishes").key],
             "expected_version": 3}
    response = client.post(url, merge, **extra)  # first the confirmation, which changes nothing
    assert response.status_code == 200 and b'id="merge-confirm"' in response.content
    assert not label(project, "Distinguishes").is_deprecated
    response = client.post(url, {**merge, "confirm": "1"}, **extra)
    assert label(project, "Distinguishes").is_deprecated
    response = client.post(url, {"key": yes.key, "op": "deprecate", "expected_version": 3}, **extra)
    assert response.status_code in (400, 409) if not hx else b"changed while you were editing" in response.content
    assert not label(project, "Overrules").is_deprecated


def test_annotators_and_outsiders_cannot_edit_the_taxonomy(project, bob, charlie, login):
    url = reverse("annotation:edit-label", args=[project.pk])
    key = label(project, "Yes").key
    assert login(bob).post(url, {"key": key, "op": "deprecate", "expected_version": 1}).status_code == 403
    assert login(charlie).post(url, {"key": key, "op": "deprecate", "expected_version": 1}).status_code == 404
    assert project.current_taxonomy().number == 1

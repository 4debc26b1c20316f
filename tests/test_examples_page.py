"""The Examples page: search in metadata, filters in the URL, bulk actions with a confirmation that states the
count, and deleting a dataset with its examples; each by persona (managers only)."""
from __future__ import annotations

import re
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.files.base import ContentFile
from django.urls import reverse

from annotation import bulk
from annotation.models import Annotation, AnnotationSource, Comment, ExampleScore, Flag, Relabel
from learning import store
from learning.models import EmbeddingChunk, RunStatus, TrainingRun
from projects.models import Dataset, DatasetStatus, Example, Membership, Role


def url(name: str, project: Any, *args: Any) -> str:
    return reverse(f"annotation:{name}", args=[project.pk, *args])


def make_examples(project: Any, rows: list[tuple[str, dict[str, Any]]], dataset: Dataset | None = None
                  ) -> list[Example]:
    return Example.objects.bulk_create(
        Example(project=project, text=text, metadata=meta, dataset=dataset, content_hash=f"{project.pk}-{text}")
        for text, meta in rows)


def annotate(project: Any, user: Any, examples: list[Example], name: str) -> None:
    version = project.current_taxonomy()
    key = version.labels.get(name=name).key
    Annotation.objects.bulk_create(Annotation(example=e, annotator=user, taxonomy_version=version, label_keys=[key],
                                              source=AnnotationSource.UI) for e in examples)


def confirm_fields(body: str) -> dict[str, Any]:
    """The hidden fields of the confirmation form, as the browser would post them back."""
    form = body[body.index('id="bulk-confirm"'):]
    fields: dict[str, Any] = {}
    for name, value in re.findall(r'<input type="hidden" name="([a-z_]+)" value="([^"]*)"', form):
        if name == "csrfmiddlewaretoken":
            continue
        fields.setdefault(name, []).append(value)
    return {k: v if len(v) > 1 or k == "ids" else v[0] for k, v in fields.items()}


# --- Finding examples ------------------------------------------------------------------------------------------------


def test_it_finds_examples_by_a_metadata_value_and_not_by_a_key(project, alice, login, htmx):
    make_examples(project, [("the motion is granted", {"court": "9th Cir.", "year": 1999}),
                            ("we affirm", {"court": "2d Cir.", "year": 2004}),
                            ("the 9th of May", {})])
    client = login(alice)
    body = client.get(url("browse", project), {"q": "9TH CIR"}).content.decode()
    assert "the motion is granted" in body and "we affirm" not in body and "1 example" in body
    body = client.get(url("browse", project), {"q": "9th"}, **htmx).content.decode()
    assert "the motion is granted" in body and "the 9th of May" in body and "we affirm" not in body
    # Numbers are values too; a key alone matches nothing.
    assert "we affirm" in client.get(url("browse", project), {"q": "2004"}).content.decode()
    assert "No example matches" in client.get(url("browse", project), {"q": "court"}).content.decode()
    # LIKE wildcards are searched for as characters.
    assert "No example matches" in client.get(url("browse", project), {"q": "%"}).content.decode()


def test_the_filters_live_in_the_url_so_a_reload_or_a_shared_link_keeps_them(project, alice, login, htmx):
    first = Dataset.objects.create(project=project, name="first.csv", status=DatasetStatus.DONE)
    second = Dataset.objects.create(project=project, name="second.csv", status=DatasetStatus.DONE)
    make_examples(project, [(f"first item {i}", {}) for i in range(30)], first)
    make_examples(project, [(f"second item {i}", {}) for i in range(3)], second)
    client = login(alice)
    page = client.get(url("browse", project), {"q": "item", "state": "unlabelled", "dataset": first.pk})
    body = page.content.decode()
    # A reload of this URL shows the same filters and the same 30 results, the pager keeps them.
    assert 'value="item"' in body and 'value="unlabelled" selected' in body
    assert f'<option value="{first.pk}" selected>' in body and "30 examples" in body and "second item" not in body
    assert f"?q=item&amp;state=unlabelled&amp;dataset={first.pk}&amp;page=2" in body
    # The htmx filter form pushes its query string into the address bar.
    assert 'hx-push-url="true"' in body and 'method="get"' in body
    body = client.get(url("browse", project), {"dataset": second.pk, "page": "1"}, **htmx).content.decode()
    assert "3 examples" in body and "first item" not in body
    # An unknown state or dataset in a shared link is ignored, not an error.
    assert client.get(url("browse", project), {"state": "bogus", "dataset": "x"}).status_code == 200


# --- Bulk actions ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("hx", [False, True])
def test_deleting_a_selection_states_the_count_then_deletes_and_retrains(
        project, alice, bob, login, htmx, hx, django_capture_on_commit_callbacks):
    examples = make_examples(project, [(f"text {i}", {}) for i in range(5)])
    annotate(project, alice, examples[:2], "Yes")
    annotate(project, bob, examples[:1], "No")
    Comment.objects.create(example=examples[0], author=bob, body="odd")
    Flag.objects.create(example=examples[1], raised_by=bob, reason="two labels apply")
    client = login(alice)
    extra = htmx if hx else {}
    chosen = [str(e.pk) for e in examples[:3]]
    page = client.post(url("bulk", project), {"action": "delete", "ids": chosen}, **extra)
    body = page.content.decode()
    assert page.status_code == 200
    assert "Delete 3 examples?" in body and "3 annotations" in body and "by 2 people" in body
    assert "1 comment" in body and "1 open flag" in body and "Delete 3 examples</button>" in body
    assert Example.objects.count() == 5  # asking changes nothing
    fields = confirm_fields(body)
    assert fields["ids"] == chosen and fields["expected"] == "3" and fields["confirm"] == "1"
    with django_capture_on_commit_callbacks(execute=True):
        done = client.post(url("bulk", project), fields, **extra)
    assert done.status_code == 302 and done["Location"] == url("browse", project)
    assert sorted(Example.objects.values_list("pk", flat=True)) == [e.pk for e in examples[3:]]
    assert not Annotation.objects.exists() and not Comment.objects.exists() and not Flag.objects.exists()
    assert TrainingRun.objects.get(project=project).reason == "3 examples deleted"
    assert "Deleted 3 examples and 3 annotations" in client.get(url("browse", project)).content.decode()


def test_all_matching_acts_on_the_filtered_set_and_refuses_when_it_changed(project, alice, login):
    make_examples(project, [(f"keep {i}", {}) for i in range(4)] + [(f"drop {i}", {"batch": "b7"}) for i in range(6)])
    client = login(alice)
    body = client.post(url("bulk", project), {"action": "delete", "all_matching": "1", "q": "b7"}).content.decode()
    assert "Delete 6 examples?" in body
    fields = confirm_fields(body)
    assert fields["q"] == "b7" and fields["all_matching"] == "1" and "ids" not in fields
    # Someone adds a matching example before the manager confirms: nothing is deleted, the new count shown.
    make_examples(project, [("drop late", {"batch": "b7"})])
    refused = client.post(url("bulk", project), fields)
    assert refused.status_code == 409 and Example.objects.count() == 11
    text = refused.content.decode()
    assert "now holds 7 examples, not 6" in text and "Delete 7 examples?" in text
    done = client.post(url("bulk", project), confirm_fields(text))
    assert done.status_code == 302 and done["Location"] == url("browse", project) + "?q=b7"
    assert sorted(Example.objects.values_list("text", flat=True)) == [f"keep {i}" for i in range(4)]


def test_sending_to_relabel_queues_each_example_once(project, alice, login):
    examples = make_examples(project, [(f"text {i}", {}) for i in range(4)])
    annotate(project, alice, examples, "Yes")
    Relabel.objects.create(project=project, example=examples[0], reason="split")
    client = login(alice)
    chosen = [str(e.pk) for e in examples[:3]]
    body = client.post(url("bulk", project), {"action": "relabel", "ids": chosen}).content.decode()
    assert "Send 3 examples back for re-labelling?" in body
    response = client.post(url("bulk", project), confirm_fields(body), follow=True)
    assert "2 examples sent back for re-labelling (1 were waiting there already)" in response.content.decode()
    assert sorted(Relabel.objects.open().values_list("example_id", flat=True)) == sorted(int(c) for c in chosen)
    assert Annotation.objects.count() == 4  # labels stay until someone labels again


def test_label_as_gives_the_managers_label_and_retrains(project, alice, bob, login, django_capture_on_commit_callbacks):
    examples = make_examples(project, [(f"text {i}", {}) for i in range(4)])
    ExampleScore.objects.bulk_create(ExampleScore(example=e, project=project, priority=1.0) for e in examples)
    annotate(project, alice, examples[:1], "No")
    annotate(project, bob, examples[1:2], "No")
    Relabel.objects.create(project=project, example=examples[1], reason="split")
    yes = project.current_taxonomy().labels.get(name="Yes")
    client = login(alice)
    chosen = [str(e.pk) for e in examples[:3]]
    body = client.post(url("bulk", project), {"action": "label", "as_label": yes.key, "ids": chosen}).content.decode()
    assert "Label 3 examples as “Yes”?" in body
    with django_capture_on_commit_callbacks(execute=True):
        client.post(url("bulk", project), confirm_fields(body))
    mine = dict(Annotation.objects.filter(annotator=alice).values_list("example_id", "label_keys"))
    assert mine == {e.pk: [yes.key] for e in examples[:3]}  # her earlier "No" replaced, not doubled
    assert Annotation.objects.get(annotator=bob).label_keys != [yes.key]  # others' labels stay
    assert not Relabel.objects.open().exists()
    assert list(ExampleScore.objects.values_list("example_id", flat=True)) == [examples[3].pk]
    assert TrainingRun.objects.filter(project=project, reason="new labels").exists()


def test_label_as_refuses_a_retired_label_and_bad_selections(project, alice, login):
    examples = make_examples(project, [("text", {})])
    client = login(alice)
    response = client.post(url("bulk", project), {"action": "label", "as_label": "nope", "ids": [examples[0].pk],
                                                  "confirm": "1", "expected": "1"})
    assert response.status_code == 400 and "Choose the label to give" in response.content.decode()
    response = client.post(url("bulk", project), {"action": "delete", "ids": ["1; drop table"]})
    assert response.status_code == 400 and "is not an example id" in response.content.decode()
    response = client.post(url("bulk", project), {"action": "delete"})
    assert response.status_code == 400 and "No example is selected" in response.content.decode()
    response = client.post(url("bulk", project), {"action": "explode", "ids": [examples[0].pk]})
    assert response.status_code == 400 and "Choose an action" in response.content.decode()
    assert Example.objects.count() == 1 and not Annotation.objects.exists()


def test_only_managers_see_the_page_and_act_on_it(project, alice, bob, charlie, team, login):
    examples = make_examples(project, [("text", {})])
    dataset = Dataset.objects.create(project=project, name="d.csv", status=DatasetStatus.DONE)
    viewer = User.objects.create_user(username="vera")
    Membership.objects.create(team=team, user=viewer, role=Role.VIEWER)
    post = {"action": "delete", "ids": [examples[0].pk], "confirm": "1", "expected": "1"}
    for user, status in ((bob, 403), (viewer, 403), (charlie, 404)):
        client = login(user)
        assert client.get(url("browse", project)).status_code == status
        assert client.post(url("bulk", project), post).status_code == status
        assert client.get(url("delete-dataset", project, dataset.pk)).status_code == status
        assert client.post(url("delete-dataset", project, dataset.pk), {"expected": "0"}).status_code == status
    assert Example.objects.count() == 1 and Dataset.objects.count() == 1
    # Another project's example cannot be reached through this one.
    other = make_examples(project.__class__.objects.create(team=charlie.teams.get(), name="theirs"), [("x", {})])
    response = login(alice).post(url("bulk", project), {**post, "ids": [other[0].pk]})
    assert response.status_code == 400 and Example.objects.filter(pk=other[0].pk).exists()
    # Bulk actions are POSTs with the CSRF token.
    from django.test import Client
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(alice)
    assert strict.post(url("bulk", project), post).status_code == 403
    assert Example.objects.filter(pk=examples[0].pk).exists()
    assert login(alice).get(url("bulk", project)).status_code == 405


# --- Deleting a dataset ----------------------------------------------------------------------------------------------


def test_deleting_a_dataset_says_what_goes_with_it_and_takes_all_of_it(
        project, alice, bob, login, django_capture_on_commit_callbacks):
    dataset = Dataset.objects.create(project=project, name="batch-2.csv", status=DatasetStatus.DONE)
    dataset.file.save("batch-2.csv", ContentFile(b"text\nhello\n"))
    path = dataset.file.path
    gone = make_examples(project, [(f"batch text {i}", {}) for i in range(3)], dataset)
    kept = make_examples(project, [("kept", {})])
    annotate(project, alice, gone[:2], "Yes")
    annotate(project, bob, gone[:1], "No")
    annotate(project, alice, kept, "No")
    Comment.objects.create(example=gone[2], author=bob, body="typo")
    client = login(alice)
    assert "Delete…" in client.get(url("browse", project)).content.decode()
    page = client.get(url("delete-dataset", project, dataset.pk)).content.decode()
    assert "Delete “batch-2.csv” with its 3 examples?" in page and "3 annotations" in page
    assert "by 2 people" in page and "1 comment" in page and 'name="expected" value="3"' in page
    with django_capture_on_commit_callbacks(execute=True):
        done = client.post(url("delete-dataset", project, dataset.pk), {"expected": "3"})
    assert done.status_code == 302
    assert not Dataset.objects.exists() and list(Example.objects.all()) == kept
    assert list(Annotation.objects.values_list("example_id", flat=True)) == [kept[0].pk]
    assert not Comment.objects.exists()
    import os
    assert not os.path.exists(path)
    assert TrainingRun.objects.get(project=project).reason == "dataset “batch-2.csv” deleted"
    assert "Deleted dataset “batch-2.csv” with 3 examples and 3 annotations" in client.get(
        url("browse", project)).content.decode()


def test_a_dataset_delete_is_refused_while_importing_or_when_it_changed(project, alice, login):
    running = Dataset.objects.create(project=project, name="big.csv", status=DatasetStatus.IMPORTING)
    done = Dataset.objects.create(project=project, name="small.csv", status=DatasetStatus.DONE)
    make_examples(project, [("a", {}), ("b", {})], done)
    client = login(alice)
    response = client.post(url("delete-dataset", project, running.pk), {"expected": "0"})
    assert response.status_code == 409 and "still being imported" in response.content.decode()
    response = client.post(url("delete-dataset", project, done.pk), {"expected": "5"})
    assert response.status_code == 409 and "now has 2 examples, not 5" in response.content.decode()
    response = client.post(url("delete-dataset", project, done.pk), {})
    assert response.status_code == 400
    assert Dataset.objects.count() == 2 and Example.objects.count() == 2


def test_a_dataset_delete_is_all_or_nothing(project, alice, monkeypatch):
    dataset = Dataset.objects.create(project=project, name="d.csv", status=DatasetStatus.DONE)
    examples = make_examples(project, [(f"t{i}", {}) for i in range(3)], dataset)
    annotate(project, alice, examples, "Yes")

    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("disk full")

    # The learning layer's receiver fails after the rows were deleted: the transaction rolls all of it back.
    monkeypatch.setattr(store, "drop", broken)
    with pytest.raises(RuntimeError):
        bulk.delete_dataset(project, dataset=dataset, expected=3)
    assert Dataset.objects.count() == 1 and Example.objects.count() == 3 and Annotation.objects.count() == 3


# --- The model after a deletion ---------------------------------------------------------------------------------------


def test_after_a_deletion_the_next_update_trains_without_the_deleted_examples(trained, alice, login, train):
    project = trained
    pool = list(Example.objects.filter(project=project, text__startswith="pool text").order_by("pk"))
    labelled = list(Example.objects.filter(project=project, text__startswith="we affirm").order_by("pk"))[:5]
    # A worker that loaded the embeddings before the deletion keeps them cached in its process.
    encoder_name = EmbeddingChunk.objects.filter(project=project).values_list("encoder", flat=True).first()
    stale = store.load(project.pk, encoder_name)
    client = login(alice)
    chosen = [str(e.pk) for e in pool[:4] + labelled]
    body = client.post(url("bulk", project), {"action": "delete", "ids": chosen}).content.decode()
    client.post(url("bulk", project), confirm_fields(body))
    remaining = {int(i) for chunk in EmbeddingChunk.objects.filter(project=project) for i in chunk.ids_array()}
    assert remaining.isdisjoint(int(c) for c in chosen) and len(remaining) == 50 - 9
    store._cache[(project.pk, encoder_name)] = stale
    TrainingRun.objects.filter(project=project, status=RunStatus.QUEUED).delete()
    version = train(project)
    assert version.n_labels == 40 - 5
    scored = set(ExampleScore.objects.filter(project=project).values_list("example_id", flat=True))
    assert scored == {e.pk for e in pool[4:]}


# --- In a browser ---


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_a_manager_filters_ticks_and_deletes_in_a_browser(live_server, browser, project, alice, bob, settings):
    import os
    from pathlib import Path

    shots = Path(os.environ.get("LABELHUB_SCREENSHOTS", settings.BASE_DIR / "var" / "screenshots"))
    shots.mkdir(parents=True, exist_ok=True)
    dataset = Dataset.objects.create(project=project, name="opinions-2024.csv", status=DatasetStatus.DONE)
    examples = make_examples(project, [(f"The court overrules case {i}.", {"court": "9th Cir.", "year": 2000 + i})
                                       for i in range(6)] + [("We affirm the judgment.", {"court": "2d Cir."})],
                             dataset)
    annotate(project, bob, examples[:2], "Yes")
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(f"{live_server.url}/accounts/login/")
    page.fill("input[name=username]", "alice")
    page.fill("input[name=password]", "alice-password-123")
    page.click("main button[type=submit]")
    page.wait_for_url(f"{live_server.url}/")
    page.goto(f"{live_server.url}{url('browse', project)}")
    page.fill("input[name=q]", "9th cir")
    page.wait_for_url(re.compile(r"q=9th(%20|\+)cir"))  # the search is in the address bar: a reload keeps it
    page.reload()
    assert page.input_value("input[name=q]") == "9th cir"
    assert page.locator("#browse-results tbody tr").count() == 6
    page.check("input[data-select-page]")
    assert page.locator("input[name=ids]:checked").count() == 6
    page.uncheck(f"input[name=ids][value='{examples[5].pk}']")
    page.screenshot(path=str(shots / "examples-page.png"), full_page=True)
    page.click("button[name=action][value=delete]")
    page.wait_for_selector("#bulk-confirm")
    assert "Delete 5 examples?" in page.inner_text("#bulk-confirm")
    assert "2 annotations" in page.inner_text("#bulk-confirm")
    page.screenshot(path=str(shots / "examples-confirm.png"), full_page=True)
    page.click("#bulk-confirm button[type=submit]")
    page.wait_for_selector(".msg")
    assert "Deleted 5 examples and 2 annotations" in page.inner_text(".messages")
    assert "q=9th+cir" in page.url
    assert Example.objects.count() == 2 and not Annotation.objects.exists()
    page.click(f"a[href$='/datasets/{dataset.pk}/delete/']")
    assert "with its 2 examples" in page.inner_text("#dataset-delete")
    page.screenshot(path=str(shots / "examples-dataset-delete.png"), full_page=True)
    page.click("#dataset-delete button[type=submit]")
    page.wait_for_selector(".msg")
    assert not Example.objects.exists() and not Dataset.objects.exists()

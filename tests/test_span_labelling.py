"""The labelling page of a span project and its submit, through the plain and the HTMX path.

The browser side (keys, mouse, timing) is tests/test_browser_spans.py; here the server: what the page sends the
script, and what a submission must satisfy before it is stored (token boundaries, no overlap, current labels).
"""
from __future__ import annotations

import json
import re

import pytest
from django.contrib.auth.models import User
from django.urls import reverse

from annotation import taxonomy as annotation_taxonomy
from annotation.models import Annotation, Assignment, AssignmentStatus, ExampleScore, Relabel
from projects.importing import content_hash
from projects.models import Example, Membership, Role
from projects.spanformats import spans_from_tags
from projects.taxonomy import LabelSpec, create_project

# Two conll2003 training sentences (../shared/data/conll2003/train.jsonl, lines 1 and 4, the second cut short).
SENTENCES = [
    (["EU", "rejects", "German", "call", "to", "boycott", "British", "lamb", "."],
     ["B-ORG", "O", "B-MISC", "O", "O", "O", "B-MISC", "O", "O"]),
    (["The", "European", "Commission", "said", "on", "Thursday", "it", "disagreed", "with", "German", "advice"],
     ["O", "B-ORG", "I-ORG", "O", "O", "O", "O", "O", "O", "B-MISC", "O"]),
]


@pytest.fixture
def trained(monkeypatch) -> list[str]:
    """The training requests the learning layer would send (the worker is not running here)."""
    calls: list[str] = []
    monkeypatch.setattr("learning.actions.request_training", lambda project, reason: calls.append(reason))
    return calls


@pytest.fixture
def span_project(team, alice):
    project = create_project(team, name="News entities", task_type="span", created_by=alice,
                             labels=[LabelSpec(n, description=f"{n} entity") for n in ("PER", "ORG", "LOC", "MISC")])
    for order, (tokens, tags) in enumerate(SENTENCES):
        text, offsets, _ = spans_from_tags(tokens, tags)
        example = Example.objects.create(project=project, text=text, content_hash=content_hash(text),
                                         tokens=[list(o) for o in offsets])
        ExampleScore.objects.create(example=example, project=project, priority=10.0 - order)
    return project


def keys_of(project) -> dict[str, str]:
    return {label.name: label.key for label in project.current_taxonomy().labels.all()}


def url(name: str, project) -> str:
    return reverse(f"annotation:{name}", args=[project.pk])


def ticket_of(body: str) -> str:
    match = re.search(r'name="ticket" value="([ar]\d+)"', body)
    assert match, body[:2000]
    return match.group(1)


def span_data(body: str) -> dict:
    match = re.search(r'<script id="span-data" type="application/json">(.*?)</script>', body, re.S)
    assert match, body[:3000]
    return json.loads(match.group(1))


def test_the_page_sends_tokens_suggestions_and_a_legend_instead_of_whole_item_labels(span_project, alice, bob,
                                                                                        login):
    keys = keys_of(span_project)
    first = Example.objects.get(text__startswith="EU")
    ExampleScore.objects.filter(example=first).update(model_version_number=1, suggested_spans=[
        {"start": 0, "end": 2, "label": keys["ORG"], "confidence": 0.91},
        {"start": 11, "end": 17, "label": "gone-label", "confidence": 0.5},
    ])
    body = login(bob).get(url("label", span_project)).content.decode()
    assert 'data-mode="span"' in body and "js/spans.js" in body
    data = span_data(body)
    assert data["text"] == first.text and data["tokens"] == first.tokens
    # A suggestion whose label is not in the taxonomy is not offered.
    assert data["suggested"] == [{"start": 0, "end": 2, "label": keys["ORG"], "confidence": 0.91}]
    assert data["labels"][keys["PER"]]["shortcut"] == "1"
    assert 'class="label-btn span-label"' in body and 'data-shortcut="4"' in body and "MISC entity" in body
    assert 'name="label"' not in body  # no whole-item label buttons
    assert "replaces" in body  # the page says that tagging over a span replaces it
    # Without JavaScript, Submit sends the suggestions as they are.
    hidden = re.search(r'name="spans" value="([^"]*)"', body).group(1).replace("&quot;", '"')
    assert json.loads(hidden) == [{"start": 0, "end": 2, "label": keys["ORG"]}]
    assert "The model suggests 1 span" in body


def test_weak_suggestions_are_shown_but_not_taken_by_enter(span_project, bob, login):
    """An early model suggests spans at 10-20 %: Submit must not store those as the annotator's labels."""
    keys = keys_of(span_project)
    first = Example.objects.get(text__startswith="EU")
    ExampleScore.objects.filter(example=first).update(model_version_number=1, suggested_spans=[
        {"start": 0, "end": 2, "label": keys["ORG"], "confidence": 0.72},
        {"start": 11, "end": 17, "label": keys["MISC"], "confidence": 0.13},
    ])
    body = login(bob).get(url("label", span_project)).content.decode()
    data = span_data(body)
    assert len(data["suggested"]) == 2 and data["accept_at"] == 0.5  # both drawn; the script fades the weak one
    hidden = re.search(r'name="spans" value="([^"]*)"', body).group(1).replace("&quot;", '"')
    assert json.loads(hidden) == [{"start": 0, "end": 2, "label": keys["ORG"]}]
    assert "accepts the 1 at 50% or more" in body


@pytest.mark.parametrize("hx", [False, True])
def test_submitting_spans_stores_them_sorted_with_their_keys_and_does_what_a_label_does(
        span_project, bob, hx, htmx, login, trained, django_capture_on_commit_callbacks):
    keys = keys_of(span_project)
    client = login(bob)
    body = client.get(url("label", span_project)).content.decode()
    example = Example.objects.get(text__startswith="EU")
    assert f'data-example="{example.pk}"' in body
    spans = [{"start": 34, "end": 41, "label": keys["MISC"]}, {"start": 0, "end": 2, "label": keys["ORG"]},
             {"start": 11, "end": 17, "label": keys["MISC"]}]
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(url("submit", span_project), {"ticket": ticket_of(body), "taxonomy_version": 1,
                                                             "spans": json.dumps(spans)}, **(htmx if hx else {}))
    annotation = Annotation.objects.get(annotator=bob)
    assert annotation.example == example
    assert annotation.spans == sorted(spans, key=lambda s: s["start"])
    assert annotation.label_keys == sorted({keys["ORG"], keys["MISC"]})
    assert Assignment.objects.get(annotator=bob, example=example).status == AssignmentStatus.SUBMITTED
    assert not ExampleScore.objects.filter(example=example).exists()  # out of the queue
    assert trained == ["new labels"]
    if hx:
        assert response.status_code == 200 and "European Commission" in span_data(response.content.decode())["text"]
    else:
        assert response.status_code == 302


def test_no_span_is_an_answer_and_undo_takes_it_back(span_project, bob, htmx, login, trained):
    client = login(bob)
    body = client.get(url("label", span_project)).content.decode()
    client.post(url("submit", span_project), {"ticket": ticket_of(body), "spans": "[]"}, **htmx)
    annotation = Annotation.objects.get(annotator=bob)
    assert annotation.spans == [] and annotation.label_keys == []
    response = client.post(url("undo", span_project), **htmx)
    assert not Annotation.objects.exists()
    assert span_data(response.content.decode())["text"].startswith("EU rejects")


BAD = [
    ([{"start": 0, "end": 1, "label": "ORG"}], "not on token boundaries: end 1 is not a token end"),
    ([{"start": 3, "end": 17, "label": "ORG"}, {"start": 11, "end": 22, "label": "MISC"}], "overlap"),
    ([{"start": 0, "end": 2, "label": "nope"}], "'nope' (on “EU”) is not a label of this project"),
    ([{"start": 0, "end": 80, "label": "ORG"}], "outside the text"),
    ([{"start": "0", "end": 2, "label": "ORG"}], "must be whole numbers"),
    ({"start": 0}, "not sent as a list"),
    ("[{", "not valid JSON"),
    (None, "send them (an empty list means the text has no entity)"),
]


@pytest.mark.parametrize("hx", [False, True])
@pytest.mark.parametrize(("spans", "message"), BAD)
def test_bad_spans_are_refused_with_the_reason_and_change_nothing(span_project, bob, hx, htmx, login, trained,
                                                                  spans, message):
    keys = keys_of(span_project)
    client = login(bob)
    ticket = ticket_of(client.get(url("label", span_project)).content.decode())
    data = {"ticket": ticket}
    if isinstance(spans, list):
        spans = [{**s, "label": keys.get(s["label"], s["label"])} for s in spans]
    if spans is not None:
        data["spans"] = spans if isinstance(spans, str) else json.dumps(spans)
    response = client.post(url("submit", span_project), data, **(htmx if hx else {}))
    text = response.content.decode().replace("&#x27;", "'").replace("&quot;", '"')
    assert response.status_code == 400 and message in text, text[:3000]
    if hx:
        assert response["Content-Type"].startswith("text/plain")
    else:
        assert ticket_of(text) == ticket  # the same item, with the message
    assert not Annotation.objects.exists()
    assert Assignment.objects.get(annotator=bob).status == AssignmentStatus.LEASED
    assert ExampleScore.objects.count() == 2 and trained == []


def test_a_deprecated_label_is_refused_and_leaves_the_legend(span_project, alice, bob, htmx, login, trained):
    keys = keys_of(span_project)
    client = login(bob)
    ticket = ticket_of(client.get(url("label", span_project)).content.decode())
    annotation_taxonomy.set_label_deprecated(span_project, key=keys["MISC"], deprecated=True, user=alice)
    response = client.post(url("submit", span_project), {
        "ticket": ticket, "taxonomy_version": 1,
        "spans": json.dumps([{"start": 11, "end": 17, "label": keys["MISC"]}])}, **htmx)
    assert response.status_code == 400
    assert "'MISC' (on “German”) is no longer in use (the taxonomy changed from v1 to v2)" in response.content.decode()
    assert not Annotation.objects.exists()
    body = client.get(url("label", span_project)).content.decode()
    assert keys["MISC"] not in span_data(body)["labels"] and 'data-shortcut="4"' not in body


def test_a_classification_project_takes_no_spans(project, bob, htmx, login, make_pool, trained, active_keys):
    make_pool(project, 1)
    client = login(bob)
    ticket = ticket_of(client.get(url("label", project)).content.decode())
    response = client.post(url("submit", project), {"ticket": ticket, "label": active_keys(project)[0],
                                                    "spans": json.dumps([{"start": 0, "end": 4, "label": "x"}])},
                           **htmx)
    assert response.status_code == 400 and "takes no spans" in response.content.decode()
    assert not Annotation.objects.exists()


def test_text_without_stored_tokens_is_tokenized_for_the_page_and_the_check_alike(span_project, bob, htmx, login,
                                                                                    trained):
    Example.objects.all().delete()
    text = "Apple's shares rose in New York."
    Example.objects.create(project=span_project, text=text, content_hash=content_hash(text))
    client = login(bob)
    body = client.get(url("label", span_project)).content.decode()
    tokens = span_data(body)["tokens"]
    assert [text[s:e] for s, e in tokens] == ["Apple", "'s", "shares", "rose", "in", "New", "York", "."]
    keys = keys_of(span_project)
    response = client.post(url("submit", span_project), {"ticket": ticket_of(body), "spans": json.dumps(
        [{"start": 0, "end": 5, "label": keys["ORG"]}, {"start": 23, "end": 31, "label": keys["LOC"]}])}, **htmx)
    assert response.status_code == 200
    assert [text[s["start"]:s["end"]] for s in Annotation.objects.get().spans] == ["Apple", "New York"]


def test_a_re_review_item_starts_from_its_previous_spans(span_project, alice, bob, login, trained):
    keys = keys_of(span_project)
    example = Example.objects.get(text__startswith="EU")
    Annotation.objects.create(example=example, annotator=alice, taxonomy_version=span_project.current_taxonomy(),
                              spans=[{"start": 0, "end": 2, "label": keys["LOC"]}], label_keys=[keys["LOC"]])
    Relabel.objects.create(project=span_project, example=example, reason="Flagged: EU is an organisation")
    body = login(bob).get(url("label", span_project)).content.decode()
    assert span_data(body)["initial"] == [{"start": 0, "end": 2, "label": keys["LOC"]}]


def test_who_may_label_a_span_project(span_project, bob, charlie, team, login, trained):
    viewer = User.objects.create_user(username="vera")
    Membership.objects.create(team=team, user=viewer, role=Role.VIEWER)
    assert login(viewer).get(url("label", span_project)).status_code == 403
    assert login(viewer).post(url("submit", span_project), {"ticket": "a1", "spans": "[]"}).status_code == 403
    assert login(charlie).get(url("label", span_project)).status_code == 404
    assert login(charlie).post(url("submit", span_project), {"ticket": "a1", "spans": "[]"}).status_code == 404
    # Another annotator's lease is not bob's to submit.
    ticket = ticket_of(login(bob).get(url("label", span_project)).content.decode())
    other = User.objects.create_user(username="otto")
    Membership.objects.create(team=team, user=other, role=Role.ANNOTATOR)
    response = login(other).post(url("submit", span_project), {"ticket": ticket, "spans": "[]"})
    assert response.status_code == 302 and not Annotation.objects.exists()

"""Agreement and adjudication: the training target rule (adjudicated, else unanimous, else majority; ties left
out and listed as conflicts), the adjudication page and its API, the agreement page, and who may use them."""
from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import User
from django.urls import reverse

from annotation.adjudication import MAJORITY, TIE, UNANIMOUS, conflicts, resolve, training_targets
from annotation.models import Adjudication, Annotation, AnnotationSource, ReviewAction, ReviewDecision, ReviewKind
from learning.actions import training_set
from projects import taxonomy
from projects.models import Example, Membership, Project, Role

pytestmark = pytest.mark.django_db


@pytest.fixture
def carol(team: Any) -> User:
    user = User.objects.create_user(username="carol", password="carol-password-123")
    Membership.objects.create(team=team, user=user, role=Role.ANNOTATOR)
    return user


@pytest.fixture
def victor(team: Any) -> User:
    user = User.objects.create_user(username="victor", password="victor-password-123")
    Membership.objects.create(team=team, user=user, role=Role.VIEWER)
    return user


def _keys(project: Project) -> dict[str, str]:
    return dict(project.current_taxonomy().labels.values_list("name", "key"))


def _answer(example: Example, user: User | None, keys: list[str]) -> Annotation:
    return Annotation.objects.create(example=example, annotator=user, label_keys=keys, source=AnnotationSource.UI,
                                     taxonomy_version=example.project.current_taxonomy())


@pytest.fixture
def disputed(project: Project, alice: User, bob: User, carol: User) -> dict[str, Example]:
    """Four items: unanimous (Yes, Yes), majority (Yes, Yes, No), tie (Yes / No), and one labelled once (No)."""
    k = _keys(project)
    items = {name: Example.objects.create(project=project, text=f"the {name} item", content_hash=name)
             for name in ("unanimous", "majority", "tie", "single")}
    _answer(items["unanimous"], alice, [k["Yes"]])
    _answer(items["unanimous"], bob, [k["Yes"]])
    _answer(items["majority"], alice, [k["Yes"]])
    _answer(items["majority"], bob, [k["Yes"]])
    _answer(items["majority"], carol, [k["No"]])
    _answer(items["tie"], bob, [k["Yes"]])
    _answer(items["tie"], carol, [k["No"]])
    _answer(items["single"], carol, [k["No"]])
    return items


def test_the_rule_takes_the_adjudication_then_unanimity_then_the_majority():
    assert resolve([("a",), ("a",)]).rule == UNANIMOUS
    assert resolve([("a",), ("a",), ("b",)]).keys == ("a",)
    assert resolve([("a",), ("a",), ("b",)]).rule == MAJORITY
    assert resolve([("a",), ("b",)]).rule == TIE and resolve([("a",), ("b",)]).keys is None
    assert resolve([("a",), ("b",)], adjudicated=("b",)).keys == ("b",)
    # Multi-label: the answer is the set; {a, b} twice beats {a} once.
    assert resolve([("a", "b"), ("b", "a"), ("a",)]).keys == ("a", "b")
    # An answer with a label no longer in use gives way to the current ones (an item re-labelled after a split).
    assert resolve([("old",), ("new",)], active={"new"}).keys == ("new",)


def test_training_leaves_out_a_tie_and_lists_it_as_a_conflict(project, disputed):
    k = _keys(project)
    targets = training_targets(project)
    assert targets.conflicts == [disputed["tie"].pk]
    assert targets.keys == {disputed["unanimous"].pk: [k["Yes"]], disputed["majority"].pk: [k["Yes"]],
                            disputed["single"].pk: [k["No"]]}
    data = training_set(project)
    assert disputed["tie"].pk not in data.example_ids.tolist() and len(data.example_ids) == 3
    listed = conflicts(project)
    assert [c.example.pk for c in listed] == [disputed["tie"].pk, disputed["majority"].pk]  # ties first
    assert listed[0].is_tie and not listed[1].is_tie


def test_adjudication_changes_the_training_target_and_is_recorded(project, disputed, alice, login, htmx,
                                                                   django_capture_on_commit_callbacks):
    k = _keys(project)
    url = reverse("annotation:adjudicate", args=[project.pk])
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = login(alice).post(url, {"example": disputed["majority"].pk, "label_keys": [k["No"]]}, **htmx)
    assert response.status_code == 200 and "The model retrains on it" in response.content.decode()
    assert callbacks  # the retrain announcement waits for the commit
    data = training_set(project)
    index = data.example_ids.tolist().index(disputed["majority"].pk)
    assert data.label_keys[int(data.targets[index])] == k["No"]  # was Yes by majority
    decision = ReviewDecision.objects.get(example=disputed["majority"])
    assert (decision.action, decision.kind, decision.previous_keys, decision.new_keys, decision.decided_by) == (
        ReviewAction.ADJUDICATE, ReviewKind.CONFLICT, [k["Yes"]], [k["No"]], alice)
    # The tie, adjudicated without htmx: trained on now, and no longer a conflict.
    response = login(alice).post(url, {"example": disputed["tie"].pk, "label_keys": [k["Yes"]]})
    assert response.status_code == 302
    assert disputed["tie"].pk in training_set(project).example_ids.tolist()
    assert conflicts(project) == [] and training_targets(project).conflicts == []


def test_bad_adjudications_change_nothing(project, disputed, alice, login, htmx, multi_project):
    k = _keys(project)
    client = login(alice)
    url = reverse("annotation:adjudicate", args=[project.pk])
    cases = [
        ({"example": disputed["tie"].pk, "label_keys": ["no-such-key"]}, "not a label of this project"),
        ({"example": disputed["tie"].pk, "label_keys": [k["Yes"], k["No"]]}, "exactly one label"),
        ({"example": disputed["tie"].pk}, "Choose a label first"),
        ({"example": disputed["single"].pk, "label_keys": [k["Yes"]]}, "Only one person labelled this item"),
        ({"example": "x", "label_keys": [k["Yes"]]}, "reload the page"),
        ({"example": 10**9, "label_keys": [k["Yes"]]}, "not in this project"),
    ]
    for data, message in cases:
        response = client.post(url, data, **htmx)
        assert response.status_code == 200 and message in response.content.decode(), message
    other = Example.objects.create(project=multi_project, text="elsewhere", content_hash="elsewhere")
    response = client.post(url, {"example": other.pk, "label_keys": [k["Yes"]]}, **htmx)
    assert "not in this project" in response.content.decode()
    assert not Adjudication.objects.exists() and not ReviewDecision.objects.exists()


def test_the_pages_and_who_may_see_them(project, disputed, alice, bob, victor, charlie, login, htmx):
    page = reverse("annotation:adjudication", args=[project.pk])
    agreement = reverse("annotation:agreement", args=[project.pk])
    decide = reverse("annotation:adjudicate", args=[project.pk])
    as_alice = login(alice).get(page).content.decode()
    assert "the tie item" in as_alice and "the majority item" in as_alice and "the unanimous item" not in as_alice
    assert "2</b> disagreements to decide" in as_alice and "1</b> tie left out of training" in as_alice
    partial = login(alice).get(page, HTTP_HX_TARGET="adjudication-list", **htmx).content.decode()
    assert partial.startswith('\n<section id="adjudication-list"') or partial.lstrip().startswith("<section")
    shown = login(alice).get(agreement).content.decode()
    assert "Adjudicate disagreements (2)" in shown and "Krippendorff" in shown and "Cohen" in shown
    # Annotators and viewers read the agreement page (no adjudication link) but may not adjudicate.
    for user in (bob, victor):
        client = login(user)
        body = client.get(agreement)
        assert body.status_code == 200 and "Adjudicate disagreements" not in body.content.decode()
        assert client.get(page).status_code == 403
        assert client.post(decide, {"example": disputed["tie"].pk, "label_keys": ["x"]}).status_code == 403
    for url in (page, agreement):
        assert login(charlie).get(url).status_code == 404
    assert login(charlie).post(decide, {"example": disputed["tie"].pk}).status_code == 404
    assert not Adjudication.objects.exists()


def test_the_agreement_page_says_when_nobody_overlapped(project, alice, login):
    Example.objects.create(project=project, text="alone", content_hash="alone")
    body = login(alice).get(reverse("annotation:agreement", args=[project.pk])).content.decode()
    assert "No item has been labelled by two people yet" in body


def test_the_api_lists_conflicts_and_takes_an_adjudication(project, disputed, alice, bob, charlie, api_client):
    k = _keys(project)
    conflicts_url = reverse("annotation:api-conflicts", args=[project.pk])
    post_url = reverse("annotation:api-adjudicate", args=[project.pk])
    body = api_client(alice).get(conflicts_url).json()
    assert (body["count"], body["ties"]) == (2, 1)
    tie = body["results"][0]
    assert tie["example_id"] == disputed["tie"].pk and tie["is_tie"] and tie["training_keys"] is None
    assert sorted(a["annotator"] for a in tie["answers"]) == ["bob", "carol"]
    assert api_client(alice).get(conflicts_url, {"limit": "0"}).status_code == 400
    assert api_client(bob).get(conflicts_url).status_code == 403
    assert api_client(charlie).get(conflicts_url).status_code == 404
    assert api_client(None).get(conflicts_url).status_code in (401, 403)

    assert api_client(bob).post(post_url, {"example_id": disputed["tie"].pk, "label_keys": [k["No"]]},
                                format="json").status_code == 403
    bad = api_client(alice).post(post_url, {"example_id": disputed["tie"].pk, "label_keys": ["nope"]}, format="json")
    assert bad.status_code == 400 and "not a label" in bad.json()["detail"]
    assert api_client(alice).post(post_url, {"example_id": disputed["tie"].pk}, format="json").status_code == 400
    missing = api_client(alice).post(post_url, {"example_id": 10**9, "label_keys": [k["No"]]}, format="json")
    assert missing.status_code == 404
    assert not Adjudication.objects.exists()
    done = api_client(alice).post(post_url, {"example_id": disputed["tie"].pk, "label_keys": [k["No"]],
                                             "note": "guideline 3"}, format="json")
    assert done.status_code == 201
    assert (done.json()["action"], done.json()["new_keys"], done.json()["note"]) == ("adjudicate", [k["No"]],
                                                                                     "guideline 3")
    assert training_targets(project).keys[disputed["tie"].pk] == [k["No"]]


def test_the_api_gives_the_agreement_figures(project, disputed, alice, charlie, victor, api_client):
    url = reverse("annotation:api-agreement", args=[project.pk])
    body = api_client(victor).get(url).json()
    assert body["items"] == 3 and body["ratings"] == 7
    assert {p["a"] + "-" + p["b"] for p in body["pairs"]} >= {"alice-bob"}
    pair = next(p for p in body["pairs"] if {p["a"], p["b"]} == {"alice", "bob"})
    assert pair["items"] == 2 and pair["observed"] == 1.0
    assert {a["annotator"] for a in body["annotators"]} == {"alice", "bob", "carol"}
    assert api_client(charlie).get(url).status_code == 404


def test_the_schema_documents_the_new_endpoints(alice, login):
    schema = login(alice).get(reverse("api-schema")).content.decode()
    for path in ("/agreement/", "/conflicts/", "/adjudications/"):
        assert f"/api/v1/projects/{{id}}{path}" in schema


def test_multi_label_adjudication_takes_several_keys(multi_project, alice, bob, login, htmx):
    k = _keys(multi_project)
    item = Example.objects.create(project=multi_project, text="printer and login", content_hash="pl")
    _answer(item, alice, [k["Hardware"]])
    _answer(item, bob, [k["Access"]])
    assert training_targets(multi_project).conflicts == [item.pk]
    response = login(alice).post(reverse("annotation:adjudicate", args=[multi_project.pk]),
                                 {"example": item.pk, "label_keys": [k["Access"], k["Hardware"]]}, **htmx)
    assert response.status_code == 200
    assert sorted(training_targets(multi_project).keys[item.pk]) == sorted([k["Access"], k["Hardware"]])


def test_a_new_label_is_not_a_tie_with_the_label_it_replaced(project, alice, bob):
    """An item labelled 'Yes' by alice, then the label is deprecated and bob re-labels it 'Maybe'."""
    k = _keys(project)
    item = Example.objects.create(project=project, text="unsure", content_hash="unsure")
    _answer(item, alice, [k["Yes"]])
    taxonomy.add_labels(project, labels=[taxonomy.LabelSpec("Maybe")], user=alice)
    from annotation.taxonomy import set_label_deprecated

    set_label_deprecated(project, key=k["Yes"], deprecated=True, user=alice)
    maybe = _keys(project)["Maybe"]
    _answer(item, bob, [maybe])
    assert training_targets(project).keys[item.pk] == [maybe]

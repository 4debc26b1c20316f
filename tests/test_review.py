"""The review queue of flagged items: who may see and resolve, what it shows, resolve / send back, races."""
from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.urls import reverse
from django.utils import timezone

from annotation.models import Annotation, Comment, Flag, Relabel
from projects import taxonomy
from projects.models import Example, Membership, Role

XSS = '<script>alert("x")</script><img src=x onerror=alert(1)>'


@pytest.fixture(autouse=True)
def _no_training(monkeypatch):
    monkeypatch.setattr("learning.actions.request_training", lambda project, reason: None)


def make_flag(project, user, *, text: str, reason: str, minutes_ago: int = 0) -> Flag:
    example = Example.objects.create(project=project, text=text, content_hash=f"{project.pk}-{hash(text)}")
    return Flag.objects.create(example=example, raised_by=user, reason=reason,
                               created_at=timezone.now() - timezone.timedelta(minutes=minutes_ago))


@pytest.fixture
def flag(project, bob):
    return make_flag(project, bob, text="The court overrules Smith v. Jones.", reason="two labels apply")


def resolve_url(flag) -> str:
    return reverse("annotation:resolve", args=[flag.example.project_id, flag.pk])


def review_url(project) -> str:
    return reverse("annotation:review", args=[project.pk])


# --- Access --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("headers", [{}, {"HTTP_HX_REQUEST": "true", "HTTP_HX_TARGET": "review-list"},
                                     {"HTTP_HX_REQUEST": "true", "HTTP_HX_TARGET": "review-count"}])
def test_it_shows_the_review_queue_to_managers_only(project, alice, bob, charlie, flag, headers, login):
    assert login(charlie).get(review_url(project), **headers).status_code == 404
    assert login(bob).get(review_url(project), **headers).status_code == 403
    response = login(alice).get(review_url(project), **headers)
    assert response.status_code == 200 and "HX-Request" in response["Vary"]


@pytest.mark.parametrize("headers", [{}, {"HTTP_HX_REQUEST": "true"}])
def test_it_refuses_resolving_to_outsiders_and_annotators(project, bob, charlie, flag, headers, login):
    assert login(charlie).post(resolve_url(flag), {"resolution": "x"}, **headers).status_code == 404
    assert login(bob).post(resolve_url(flag), {"resolution": "x", "relabel": "1"}, **headers).status_code == 403
    flag.refresh_from_db()
    assert flag.is_open and not Relabel.objects.exists()


def test_it_does_not_resolve_another_projects_flag_through_this_project(project, team, alice, charlie, flag, login):
    other = taxonomy.create_project(charlie.memberships.get().team, name="Theirs", task_type="single_label",
                                   created_by=charlie, labels=[taxonomy.LabelSpec("A"), taxonomy.LabelSpec("B")])
    theirs = make_flag(other, charlie, text="their text", reason="theirs")
    url = reverse("annotation:resolve", args=[project.pk, theirs.pk])
    assert login(alice).post(url, {"resolution": "mine now"}).status_code == 404
    assert login(alice).post(reverse("annotation:resolve", args=[other.pk, theirs.pk])).status_code == 404
    theirs.refresh_from_db()
    assert theirs.is_open


def test_it_only_takes_posts_to_resolve(alice, flag, login):
    assert login(alice).get(resolve_url(flag)).status_code == 405


# --- The list ------------------------------------------------------------------------------------------------------


def test_it_lists_open_flags_newest_first_with_the_item_comments_and_labels(project, alice, bob, flag, login):
    older = make_flag(project, bob, text="An older flagged sentence.", reason="cut off", minutes_ago=30)
    done = make_flag(project, bob, text="Already dealt with.", reason="dup")
    done.resolve(user=alice, resolution="duplicate removed")
    Comment.objects.create(example=flag.example, author=alice, body="I think it's Yes")
    yes = project.current_taxonomy().labels.get(name="Yes")
    Annotation.objects.create(example=flag.example, annotator=bob, taxonomy_version=project.current_taxonomy(),
                              label_keys=[yes.key])
    page = login(alice).get(review_url(project)).content.decode()
    assert page.index(f'id="review-flag-{flag.pk}"') < page.index(f'id="review-flag-{older.pk}"')
    assert "Already dealt with." not in page
    assert "two labels apply" in page and "I think it&#x27;s Yes" in page
    row = page[page.index(f'id="review-flag-{flag.pk}"'):page.index(f'id="review-flag-{older.pk}"')]
    assert "Yes</span>" in row and "<b>bob</b> flagged" in row
    assert "Open (2)" in page and 'aria-current="page">Review' in page


def test_it_shows_resolved_flags_on_request(project, alice, bob, flag, htmx, login):
    done = make_flag(project, bob, text="Already dealt with.", reason="dup")
    done.resolve(user=alice, resolution="duplicate removed")
    client = login(alice)
    for headers in ({}, {**htmx, "HTTP_HX_TARGET": "review-list"}):
        body = client.get(review_url(project), {"show": "resolved"}, **headers).content.decode()
        assert "Already dealt with." in body and "duplicate removed" in body
        assert flag.example.text not in body
        assert ("<html" in body) == (not headers)


def test_it_renders_user_text_inert(project, alice, bob, login):
    make_flag(project, bob, text=f"Payload {XSS}", reason=f"reason {XSS}")
    Comment.objects.create(example=Flag.objects.get().example, author=bob, body=f"comment {XSS}")
    page = login(alice).get(review_url(project)).content.decode()
    assert "<script>alert" not in page and "<img src=x" not in page
    assert page.count("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;") == 3


def test_it_says_so_when_there_is_nothing_to_review(project, alice, login):
    assert "No open flags: nothing to review." in login(alice).get(review_url(project)).content.decode()


def test_it_serves_the_open_count_for_the_tab(project, alice, bob, flag, login):
    make_flag(project, bob, text="another", reason="r")
    body = login(alice).get(review_url(project), HTTP_HX_REQUEST="true", HTTP_HX_TARGET="review-count")
    text = body.content.decode()
    assert text.lstrip().startswith('<span id="review-count"') and ">2</span>" in text
    assert "flags-changed from:body" in text and "load" not in text  # no reload loop


def test_it_pages_through_many_flags(project, alice, bob, login):
    for i in range(30):
        make_flag(project, bob, text=f"text {i}", reason="r", minutes_ago=i)
    first = login(alice).get(review_url(project)).content.decode()
    assert first.count('class="card review-flag') == 25 and "Page 1 of 2" in first
    second = login(alice).get(review_url(project), {"page": 2}).content.decode()
    assert second.count('class="card review-flag') == 5 and "text 29" in second


# --- Resolving -----------------------------------------------------------------------------------------------------


def test_it_resolves_a_flag_with_a_plain_post(project, alice, flag, login):
    client = login(alice)
    response = client.post(resolve_url(flag), {"resolution": "  label is right  "})
    assert response.status_code == 302 and response["Location"] == review_url(project)
    flag.refresh_from_db()
    assert flag.resolved_by == alice and flag.resolved_at is not None and flag.resolution == "label is right"
    assert not Relabel.objects.exists()
    page = client.get(response["Location"]).content.decode()
    assert "Resolved." in page and "No open flags" in page


def test_it_resolves_with_htmx_by_replacing_the_row(project, alice, flag, login):
    response = login(alice).post(resolve_url(flag), {"resolution": ""}, HTTP_HX_REQUEST="true",
                                 HTTP_HX_TARGET=f"review-flag-{flag.pk}")
    body = response.content.decode()
    assert response.status_code == 200 and body.lstrip().startswith(f'<article id="review-flag-{flag.pk}"')
    assert "<html" not in body and "Resolved</span> by <b>alice</b>" in body and "<form" not in body
    assert response["HX-Trigger"] == "flags-changed"
    flag.refresh_from_db()
    assert flag.resolved_by == alice and flag.resolution == "Resolved"


@pytest.mark.parametrize("headers", [{}, {"HTTP_HX_REQUEST": "true"}])
def test_it_sends_an_item_back_for_relabelling(project, alice, flag, headers, login):
    login(alice).post(resolve_url(flag), {"resolution": "wrong label", "relabel": "1"}, **headers)
    flag.refresh_from_db()
    assert not flag.is_open and flag.resolution == "Sent back for re-labelling: wrong label"
    relabel = Relabel.objects.get()
    assert relabel.example == flag.example and relabel.done_at is None and "two labels apply" in relabel.reason


def test_it_explains_when_another_manager_resolved_it_first(project, team, alice, flag, login):
    dave = User.objects.create_user("dave")
    Membership.objects.create(team=team, user=dave, role=Role.MANAGER)
    flag.resolve(user=dave, resolution="done by dave")
    client = login(alice)
    body = client.post(resolve_url(flag), {"resolution": "mine"}, HTTP_HX_REQUEST="true").content.decode()
    assert "already resolved by dave" in body and 'role="alert"' in body and "done by dave" in body
    response = client.post(resolve_url(flag), {"resolution": "mine", "relabel": "1"}, follow=True)
    assert "already resolved by dave" in response.content.decode()
    flag.refresh_from_db()
    assert flag.resolved_by == dave and flag.resolution == "done by dave"
    assert not Relabel.objects.exists()

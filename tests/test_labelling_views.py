"""The labelling page and its actions, through both the plain and the HTMX path, for every persona."""
from __future__ import annotations

import re

import pytest
from django.contrib.auth.models import User
from django.urls import reverse

from annotation.models import Annotation, Assignment, AssignmentStatus, Comment, ExampleScore, Flag
from learning.models import ModelVersion
from projects.models import Example, Membership, Role

XSS = '<script>alert("x")</script><img src=x onerror=alert(1)>'


@pytest.fixture(autouse=True)
def _no_training(monkeypatch):
    monkeypatch.setattr("learning.actions.request_training", lambda project, reason: None)


def ticket_of(response) -> str:
    match = re.search(r'name="ticket" value="([ar]\d+)"', response.content.decode())
    assert match, response.content.decode()[:2000]
    return match.group(1)


def url(name: str, project, *args) -> str:
    return reverse(f"annotation:{name}", args=[project.pk, *args])


def test_the_page_shows_one_item_escaped_with_its_metadata_and_label_keys(project, bob, login):
    Example.objects.create(project=project, text=XSS + "\n\n  indented line", content_hash="x",
                           metadata={"court": "<b>9th Cir.</b>"})
    response = login(bob).get(url("label", project))
    body = response.content.decode()
    assert response.status_code == 200
    assert "<script>alert" not in body and "&lt;script&gt;alert" in body
    assert "&lt;b&gt;9th Cir.&lt;/b&gt;" in body
    assert "\n\n  indented line" in body  # whitespace kept (white-space: pre-wrap)
    assert '<kbd>1</kbd>' in body and 'data-shortcut="2"' in body


def test_the_models_suggestion_is_preselected_with_its_confidence(project, alice, bob, active_keys, login, make_pool):
    example = make_pool(project, 1)[0]
    version = ModelVersion.objects.create(project=project, number=1, taxonomy_version=project.current_taxonomy(),
                                          label_keys=active_keys(project), encoder="e", strategy="bald", n_labels=2,
                                          artifact=b"")
    ExampleScore.objects.filter(example=example).update(model_version_number=version.number,
                                                        predicted_keys=[active_keys(project)[1]], confidence=0.87)
    body = login(bob).get(url("label", project)).content.decode()
    assert "Model suggests <b>No</b>" in body and "87% confident" in body
    assert re.search(rf'value="{active_keys(project)[1]}" class="label-btn suggested"', body)


@pytest.mark.parametrize("hx", [False, True])
def test_submitting_saves_the_label_and_serves_the_next_item(project, bob, hx, active_keys, htmx, login, make_pool):
    make_pool(project, 3)
    client = login(bob)
    first = client.get(url("label", project))
    ticket = ticket_of(first)
    response = client.post(url("submit", project), {"ticket": ticket, "label": active_keys(project)[0],
                                                    "taxonomy_version": 1}, **(htmx if hx else {}))
    assert Annotation.objects.filter(annotator=bob).count() == 1
    if hx:
        assert response.status_code == 200 and 'id="label-item"' in response.content.decode()
        assert ticket_of(response) != ticket
        assert "<html" not in response.content.decode()  # just the partial
    else:
        assert response.status_code == 302 and response["Location"] == url("label", project)


@pytest.mark.parametrize("hx", [False, True])
def test_a_refused_submission_says_why_and_saves_nothing(project, bob, hx, htmx, login, make_pool):
    make_pool(project, 2)
    client = login(bob)
    ticket = ticket_of(client.get(url("label", project)))
    response = client.post(url("submit", project), {"ticket": ticket, "label": "bogus"},
                           **(htmx if hx else {}), follow=not hx)
    assert "is not a label of this project" in response.content.decode().replace("&#x27;", "'")
    assert not Annotation.objects.exists()


def test_someone_elses_ticket_is_refused(project, alice, bob, active_keys, htmx, login, make_pool):
    make_pool(project, 2)
    ticket = ticket_of(login(alice).get(url("label", project)))
    client = login(bob)
    response = client.post(url("submit", project), {"ticket": ticket, "label": active_keys(project)[0]}, **htmx)
    assert "not leased to you" in response.content.decode()
    assert not Annotation.objects.exists()


@pytest.mark.parametrize("hx", [False, True])
def test_skip_and_undo(project, bob, hx, active_keys, htmx, login, make_pool):
    make_pool(project, 3)
    client = login(bob)
    extra = htmx if hx else {}
    ticket = ticket_of(client.get(url("label", project)))
    client.post(url("skip", project), {"ticket": ticket}, **extra)
    assert Assignment.objects.filter(annotator=bob, status=AssignmentStatus.SKIPPED).count() == 1
    ticket = ticket_of(client.get(url("label", project)))
    client.post(url("submit", project), {"ticket": ticket, "label": active_keys(project)[0]}, **extra)
    response = client.post(url("undo", project), **extra)
    assert not Annotation.objects.exists()
    if hx:
        assert ticket_of(response) == ticket and "Undone" in response.content.decode()


@pytest.mark.parametrize("hx", [False, True])
def test_comments_and_flags(project, bob, hx, htmx, login, make_pool):
    example = make_pool(project, 1)[0]
    client = login(bob)
    extra = htmx if hx else {}
    response = client.post(url("comments", project, example.pk), {"body": XSS}, **extra)
    assert Comment.objects.get().body == XSS
    if hx:
        assert "&lt;script&gt;" in response.content.decode() and "<script>alert" not in response.content.decode()
    client.post(url("flag", project, example.pk), {"reason": "two labels apply"}, **extra)
    assert Flag.objects.get().reason == "two labels apply"
    response = client.post(url("flag", project, example.pk), {"reason": "  "}, **extra)
    assert Flag.objects.count() == 1
    if hx:
        assert "Say why" in response.content.decode()
    response = client.post(url("comments", project, example.pk), {"body": ""}, **extra)
    assert Comment.objects.count() == 1


def test_a_manager_searches_and_opens_any_item(project, alice, active_keys, htmx, login, make_pool):
    examples = make_pool(project, 5)
    client = login(alice)
    body = client.get(url("browse", project), {"q": "item 3"}).content.decode()
    assert "item 3" in body and "item 4" not in body
    body = client.get(url("browse", project), {"state": "unlabelled"}, **htmx).content.decode()
    assert 'id="browse-results"' in body and "5 examples" in body
    page = client.get(url("label", project), {"example": examples[2].pk})
    assert f'data-example="{examples[2].pk}"' in page.content.decode()
    client.post(url("submit", project), {"ticket": ticket_of(page), "label": active_keys(project)[1]})
    assert Annotation.objects.get().example == examples[2]
    # Picking by hand takes no queue slot: an annotator can still be served the item.
    assert Assignment.objects.get(annotator__username="alice").slot is None


def test_items_opened_by_hand_are_not_served_back_by_the_queue(project, alice, active_keys, htmx, login, make_pool):
    examples = make_pool(project, 6)  # queued highest last: the queue serves examples[5] first
    client = login(alice)
    key = active_keys(project)[0]
    page = client.get(url("label", project), {"example": examples[0].pk})
    client.post(url("submit", project), {"ticket": ticket_of(page), "label": key})
    # Browsing: two items opened from the Examples page (one of them labelled already) and left unanswered.
    for example in (examples[0], examples[1]):
        opened = client.get(url("label", project), {"example": example.pk})
        assert f'data-example="{example.pk}"' in opened.content.decode()
    served = client.get(url("label", project))
    assert f'data-example="{examples[5].pk}"' in served.content.decode()  # the queue's first, not one opened by hand
    client.post(url("submit", project), {"ticket": ticket_of(served), "label": key}, **htmx)
    assert f'data-example="{examples[4].pk}"' in client.get(url("label", project)).content.decode()


def test_a_second_answer_from_the_same_person_replaces_the_first(project, alice, active_keys, login, make_pool):
    example = make_pool(project, 1)[0]
    client = login(alice)
    first, second = active_keys(project)[:2]
    for key in (first, second):
        page = client.get(url("label", project), {"example": example.pk})
        client.post(url("submit", project), {"ticket": ticket_of(page), "label": key})
    assert list(Annotation.objects.values_list("annotator__username", "label_keys")) == [("alice", [second])]


def test_deleting_people_keeps_their_answers(project, alice, bob, active_keys, login, make_pool):
    # Each deleted person's answers stay, unattributed; before, deleting the second of two people who had
    # answered the same item failed on the unique constraint (NULLS NOT DISTINCT).
    project.overlap = 2
    project.save(update_fields=["overlap"])
    example = make_pool(project, 1)[0]
    carol = User.objects.create_user(username="carol")
    Membership.objects.create(team=project.team, user=carol, role=Role.ANNOTATOR)
    for person in (bob, carol):
        client = login(person)
        page = client.get(url("label", project))
        assert f'data-example="{example.pk}"' in page.content.decode()
        client.post(url("submit", project), {"ticket": ticket_of(page), "label": active_keys(project)[0]})
    bob.delete()
    carol.delete()
    assert list(Annotation.objects.filter(example=example).values_list("annotator", flat=True)) == [None, None]


def test_roles_and_outsiders(project, bob, charlie, team, login, make_pool):
    example = make_pool(project, 1)[0]
    viewer = User.objects.create_user(username="vera")
    Membership.objects.create(team=team, user=viewer, role=Role.VIEWER)
    assert login(viewer).get(url("label", project)).status_code == 403
    assert login(viewer).get(url("comments", project, example.pk)).status_code == 200
    assert login(bob).get(url("browse", project)).status_code == 403
    assert login(bob).get(url("label", project), {"example": example.pk}).status_code == 403
    outsider = login(charlie)
    for response in (
        outsider.get(url("label", project)),
        outsider.post(url("submit", project), {"ticket": "a1", "label": "x"}),
        outsider.post(url("skip", project), {"ticket": "a1"}),
        outsider.post(url("undo", project)),
        outsider.get(url("browse", project)),
        outsider.get(url("comments", project, example.pk)),
        outsider.post(url("comments", project, example.pk), {"body": "hi"}),
        outsider.post(url("flag", project, example.pk), {"reason": "x"}),
    ):
        assert response.status_code == 404
    assert not Assignment.objects.exists() and not Comment.objects.exists() and not Flag.objects.exists()
    anonymous = login(bob)
    anonymous.logout()
    assert anonymous.get(url("label", project)).status_code == 302

"""The annotation queue: order, leases, overlap, skip, undo, and concurrent claims on PostgreSQL."""
from __future__ import annotations

import threading
from collections import Counter
from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.db import connection, connections
from django.utils import timezone

from annotation import actions
from annotation.models import Annotation, Assignment, AssignmentStatus, ExampleScore, Relabel
from labelhub.errors import ActionError
from projects.models import Membership, Role


@pytest.fixture(autouse=True)
def _no_training(monkeypatch):
    # The queue's tests are about the queue; training is covered elsewhere.
    monkeypatch.setattr("learning.actions.request_training", lambda project, reason: None)


def annotator(team, name: str) -> User:
    user = User.objects.create_user(username=name)
    Membership.objects.create(team=team, user=user, role=Role.ANNOTATOR)
    return user


def test_it_serves_routed_then_seed_then_highest_priority(project, bob, active_keys, make_pool):
    examples = make_pool(project, 6)
    ExampleScore.objects.filter(example=examples[1]).update(is_seed=True, priority=-5)
    ExampleScore.objects.filter(example=examples[2]).update(is_routed=True, priority=-9)
    served = []
    for _ in range(3):
        item = actions.next_item(project, user=bob)
        served.append(item.example.pk)
        actions.submit_annotation(project, ticket=item.ticket, user=bob, label_keys=active_keys(project)[:1])
    assert served == [examples[2].pk, examples[1].pk, examples[5].pk]


def test_it_serves_unscored_items_when_no_model_has_ranked_them(project, bob, make_pool):
    examples = make_pool(project, 3, scored=False)
    item = actions.next_item(project, user=bob)
    assert item.example == examples[0]


def test_it_serves_the_same_leased_item_again_until_it_is_submitted(project, bob, make_pool):
    make_pool(project, 5)
    first = actions.next_item(project, user=bob)
    assert actions.next_item(project, user=bob).example == first.example


def test_two_annotators_never_get_the_same_item(project, alice, bob, make_pool):
    make_pool(project, 5)
    a = actions.next_item(project, user=alice)
    b = actions.next_item(project, user=bob)
    assert a.example != b.example


def test_an_abandoned_lease_expires_and_goes_to_someone_else(project, alice, bob, active_keys, make_pool):
    make_pool(project, 1)
    item = actions.next_item(project, user=bob)
    Assignment.objects.filter(pk=item.assignment.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    taken = actions.next_item(project, user=alice)
    assert taken is not None and taken.example == item.example
    with pytest.raises(ActionError, match="not leased to you"):
        actions.submit_annotation(project, ticket=item.ticket, user=bob, label_keys=active_keys(project)[:1])
    assert not Annotation.objects.filter(annotator=bob).exists()


def test_a_late_submission_is_kept_when_nobody_took_the_item(project, bob, active_keys, make_pool):
    make_pool(project, 1)
    item = actions.next_item(project, user=bob)
    Assignment.objects.filter(pk=item.assignment.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    actions.submit_annotation(project, ticket=item.ticket, user=bob, label_keys=active_keys(project)[:1])
    assert Annotation.objects.filter(annotator=bob, example=item.example).count() == 1


def test_it_refuses_a_double_submit_and_keeps_one_annotation(project, bob, active_keys, make_pool):
    make_pool(project, 2)
    item = actions.next_item(project, user=bob)
    actions.submit_annotation(project, ticket=item.ticket, user=bob, label_keys=active_keys(project)[:1])
    with pytest.raises(ActionError, match="already submitted"):
        actions.submit_annotation(project, ticket=item.ticket, user=bob, label_keys=active_keys(project)[1:])
    assert list(Annotation.objects.filter(annotator=bob).values_list("label_keys", flat=True)) == [
        active_keys(project)[:1]]


def test_it_refuses_another_annotators_ticket(project, alice, bob, active_keys, make_pool):
    make_pool(project, 2)
    item = actions.next_item(project, user=bob)
    with pytest.raises(ActionError, match="not leased to you"):
        actions.submit_annotation(project, ticket=item.ticket, user=alice, label_keys=active_keys(project)[:1])


def test_it_refuses_two_labels_on_a_single_label_project_and_unknown_keys(project, bob, active_keys, make_pool):
    make_pool(project, 1)
    item = actions.next_item(project, user=bob)
    with pytest.raises(ActionError, match="exactly one"):
        actions.submit_annotation(project, ticket=item.ticket, user=bob, label_keys=active_keys(project))
    with pytest.raises(ActionError, match="not a label"):
        actions.submit_annotation(project, ticket=item.ticket, user=bob, label_keys=["nope"])
    with pytest.raises(ActionError, match="Choose a label"):
        actions.submit_annotation(project, ticket=item.ticket, user=bob, label_keys=[])
    assert not Annotation.objects.exists()


def test_skipped_items_go_to_others_but_not_back_to_the_skipper(project, alice, bob, make_pool):
    examples = make_pool(project, 2)
    item = actions.next_item(project, user=bob)
    actions.skip(project, ticket=item.ticket, user=bob)
    assert actions.next_item(project, user=bob).example != item.example
    assert actions.next_item(project, user=alice).example == item.example
    assert {examples[0].pk, examples[1].pk} == {item.example.pk, actions.next_item(project, user=bob).example.pk}


def test_undo_takes_back_the_last_submission_and_serves_it_again(project, bob, active_keys, make_pool):
    make_pool(project, 4)
    done = []
    for _ in range(2):
        item = actions.next_item(project, user=bob)
        actions.submit_annotation(project, ticket=item.ticket, user=bob, label_keys=active_keys(project)[:1])
        done.append(item.example)
    current = actions.next_item(project, user=bob)
    undone = actions.undo_last(project, user=bob)
    assert undone.example == done[1]
    assert actions.next_item(project, user=bob).example == done[1]
    assert not Annotation.objects.filter(annotator=bob, example=done[1]).exists()
    # Two steps back: the first submission too. The item they held went back to the queue.
    assert actions.undo_last(project, user=bob).example == done[0]
    assert not Assignment.objects.filter(example=current.example, annotator=bob,
                                         status=AssignmentStatus.LEASED).exists()
    with pytest.raises(ActionError, match="Nothing to undo"):
        actions.undo_last(project, user=bob)


def test_overlap_serves_each_item_to_k_different_annotators(project, team, active_keys, make_pool):
    project.overlap = 2
    project.save()
    examples = make_pool(project, 3)
    users = [annotator(team, f"ann{i}") for i in range(3)]
    counts: Counter[int] = Counter()
    for user in users:
        while (item := actions.next_item(project, user=user)) is not None:
            actions.submit_annotation(project, ticket=item.ticket, user=user, label_keys=active_keys(project)[:1])
            counts[item.example.pk] += 1
    assert counts == {e.pk: 2 for e in examples}
    for e in examples:
        assert Annotation.objects.filter(example=e).values("annotator").distinct().count() == 2


def test_a_deprecated_label_from_a_stale_page_is_refused_with_the_reason(project, alice, bob, active_keys, make_pool):
    from annotation.taxonomy import merge_labels

    make_pool(project, 2)
    yes, no = active_keys(project)
    item = actions.next_item(project, user=bob)
    stale = project.current_taxonomy().number
    merge_labels(project, into=yes, merged=[no], user=alice)
    with pytest.raises(ActionError, match="no longer in use.*v1 to v2"):
        actions.submit_annotation(project, ticket=item.ticket, user=bob, label_keys=[no], taxonomy_number=stale)
    # A key that survived the change is still accepted, under the new version.
    annotation = actions.submit_annotation(project, ticket=item.ticket, user=bob, label_keys=[yes],
                                           taxonomy_number=stale)
    assert annotation.taxonomy_version.number == 2


def test_relabel_items_come_first_and_are_done_once(project, alice, bob, active_keys, make_pool):
    examples = make_pool(project, 3)
    Relabel.objects.create(project=project, example=examples[0], reason="split")
    item = actions.next_item(project, user=bob)
    assert item.relabel is not None and item.example == examples[0]
    assert actions.next_item(project, user=alice).relabel is None  # leased to bob
    actions.submit_annotation(project, ticket=item.ticket, user=bob, label_keys=active_keys(project)[:1])
    assert Relabel.objects.get().done_by == bob


@pytest.mark.django_db(transaction=True)
def test_concurrent_annotators_never_share_an_item_and_lose_none(team, active_keys, make_pool):
    """Ten threads, each its own PostgreSQL connection, drain a 300-item queue at once."""
    if connection.vendor != "postgresql":
        pytest.skip("the concurrency guarantee is tested on PostgreSQL")
    from projects.taxonomy import LabelSpec, create_project

    manager = User.objects.create_user(username="mgr")
    project = create_project(team, name="Race", task_type="single_label", created_by=manager,
                             labels=[LabelSpec("A"), LabelSpec("B")])
    examples = make_pool(project, 300)
    users = [annotator(team, f"racer{i}") for i in range(10)]
    label = active_keys(project)[:1]
    served: dict[int, list[int]] = {u.pk: [] for u in users}
    errors: list[BaseException] = []
    start = threading.Barrier(len(users))

    def work(user: User) -> None:
        try:
            start.wait()
            while (item := actions.next_item(project, user=user)) is not None:
                served[user.pk].append(item.example.pk)
                actions.submit_annotation(project, ticket=item.ticket, user=user, label_keys=label)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=work, args=(u,)) for u in users]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    everything = [pk for pks in served.values() for pk in pks]
    assert len(everything) == len(set(everything)) == len(examples)
    assert Annotation.objects.filter(example__project=project).count() == len(examples)
    assert sum(1 for pks in served.values() if pks) > 1  # the work really was shared

"""The project dashboard (figures against a small fixture, polling, empty states) and recent activity."""
from __future__ import annotations

import json
import re
from datetime import timedelta

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from annotation import taxonomy as annotation_taxonomy
from annotation.models import Annotation, AnnotationSource, Comment, Flag, Relabel
from annotation.stats import annotator_stats, label_distribution
from learning.activity import recent_activity
from learning.models import ModelVersion
from projects import taxonomy
from projects.models import Dataset, DatasetStatus, Example, Membership, Role


@pytest.fixture(autouse=True)
def _no_training(monkeypatch):
    # Taxonomy edits ask for a retrain; these tests are about what the pages show.
    monkeypatch.setattr("learning.actions.request_training", lambda project, reason: None)


def keys_by_name(project) -> dict[str, str]:
    return {label.name: label.key for label in project.current_taxonomy().labels.all()}


def make_examples(project, n: int) -> list[Example]:
    start = Example.objects.filter(project=project).count()
    return Example.objects.bulk_create(
        Example(project=project, text=f"sentence {i}", content_hash=f"{project.pk}-{i}")
        for i in range(start, start + n))


def annotate(example, user, names, *, at, source=AnnotationSource.UI) -> Annotation:
    project = example.project
    by_name = keys_by_name(project)
    return Annotation.objects.create(example=example, annotator=user, taxonomy_version=project.current_taxonomy(),
                                     label_keys=[by_name[name] for name in names], source=source, created_at=at)


@pytest.fixture
def labelled(project, alice, bob):
    """Six examples: bob labelled three on the page (10 s, 20 s, then a 1 h break), alice one, plus two imported."""
    examples = make_examples(project, 6)
    start = timezone.now() - timedelta(hours=2)
    annotate(examples[0], bob, ["Yes"], at=start)
    annotate(examples[1], bob, ["No"], at=start + timedelta(seconds=10))
    annotate(examples[2], bob, ["Yes"], at=start + timedelta(seconds=30))
    annotate(examples[3], bob, ["Yes"], at=start + timedelta(hours=1, seconds=30))
    annotate(examples[3], alice, ["No"], at=start + timedelta(hours=1, minutes=1))
    annotate(examples[4], alice, ["No"], at=start, source=AnnotationSource.IMPORT)
    annotate(examples[5], alice, ["No"], at=start, source=AnnotationSource.IMPORT)
    return examples


def model_version(project, *, n_labels=40, number=1, f1=0.8):
    taxonomy = project.current_taxonomy()
    keys = [label.key for label in taxonomy.active_labels()]
    names = [label.name for label in taxonomy.active_labels()]
    metrics = {
        "n_eval": n_labels, "accuracy": {"value": 0.85, "low": 0.75, "high": 0.93},
        "macro_f1": {"value": f1, "low": f1 - 0.1, "high": f1 + 0.05}, "ece": 0.04,
        "per_class": [
            {"label": names[0], "f1": 0.9, "f1_low": 0.8, "f1_high": 0.96, "precision": 0.88, "recall": 0.92,
             "support": 25},
            {"label": names[1], "f1": 0.7, "f1_low": 0.5, "f1_high": 0.85, "precision": 0.75, "recall": 0.66,
             "support": 15},
        ],
        "confusion": {"labels": names, "matrix": [[23, 2], [5, 10]]},
        "reliability": {"bin_lower": [0.4, 0.6, 0.8], "bin_upper": [0.6, 0.8, 1.0],
                        "confidence": [None, 0.7, 0.9], "accuracy": [None, 0.65, 0.92], "count": [0, 12, 28]},
    }
    return ModelVersion.objects.create(project=project, number=number, taxonomy_version=taxonomy, label_keys=keys,
                                       encoder="test", strategy="bald", n_labels=n_labels, artifact=b"",
                                       metrics=metrics, report_at=timezone.now())


def chart_data(response, name: str):
    match = re.search(rf'<script id="{name}-data" type="application/json">(.*?)</script>', response.content.decode(),
                      re.S)
    assert match, f"no {name} data on the page"
    return json.loads(match.group(1))


# --- Access --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("headers", [{}, {"HTTP_HX_REQUEST": "true", "HTTP_HX_TARGET": "dashboard-data"}])
def test_it_shows_the_dashboard_to_members_only(project, alice, bob, charlie, headers, login):
    url = reverse("learning:dashboard", args=[project.pk])
    assert login(charlie).get(url, **headers).status_code == 404
    assert login(bob).get(url, **headers).status_code == 200
    assert login(alice).get(url, **headers).status_code == 200
    assert "/accounts/login/" in Client().get(url, **headers)["Location"]


def test_it_lets_a_viewer_see_the_dashboard_but_not_the_review_tab(project, team, alice, login):
    from django.contrib.auth.models import User

    viewer = User.objects.create_user("vera")
    Membership.objects.create(team=team, user=viewer, role=Role.VIEWER)
    response = login(viewer).get(reverse("learning:dashboard", args=[project.pk]))
    assert response.status_code == 200
    assert 'aria-current="page">Dashboard</a>' in response.content.decode()
    assert reverse("annotation:review", args=[project.pk]) not in response.content.decode()


def test_it_shows_the_review_tab_with_its_count_to_managers_only(project, alice, bob, login):
    url = reverse("projects:detail", args=[project.pk])
    review = reverse("annotation:review", args=[project.pk])
    assert f'href="{review}"' in login(alice).get(url).content.decode()
    page = login(bob).get(url).content.decode()
    assert f'href="{review}"' not in page
    assert f'href="{reverse("learning:dashboard", args=[project.pk])}"' in page


# --- Figures -------------------------------------------------------------------------------------------------------


def test_it_counts_labels_and_pace_per_annotator(project, labelled):
    rows = {row.name: row for row in annotator_stats(project)}
    assert (rows["bob"].total, rows["bob"].in_app, rows["bob"].imported) == (4, 4, 0)
    assert (rows["alice"].total, rows["alice"].in_app, rows["alice"].imported) == (3, 1, 2)
    # bob's gaps: 10 s, 20 s, then an hour's break that does not count as labelling time.
    assert rows["bob"].median_seconds == pytest.approx(15, abs=0.01)
    assert rows["bob"].per_hour == pytest.approx(2 / 30 * 3600, rel=1e-3)
    # alice labelled once on the page: no pace to measure.
    assert rows["alice"].median_seconds is None and rows["alice"].per_hour is None


def test_it_counts_labelled_examples_per_label_with_retired_labels_marked(project, alice, labelled):
    rows = {row["name"]: row for row in label_distribution(project, project.current_taxonomy())}
    # Example 3 has "Yes" from bob and "No" from alice: it counts for both.
    assert rows["Yes"]["count"] == 3 and rows["No"]["count"] == 4
    annotation_taxonomy.set_label_deprecated(project, key=keys_by_name(project)["No"], deprecated=True, user=alice)
    taxonomy.add_labels(project, labels=[taxonomy.LabelSpec("Maybe")], user=alice)
    rows = label_distribution(project, project.current_taxonomy())
    assert [(r["name"], r["count"], r["note"]) for r in rows] == [("Yes", 3, ""), ("Maybe", 0, ""),
                                                                  ("No", 4, "deprecated")]


def test_it_shows_the_figures_on_the_page(project, alice, bob, labelled, login):
    Flag.objects.create(example=labelled[0], raised_by=bob, reason="cut off")
    Relabel.objects.create(project=project, example=labelled[1], reason="split")
    response = login(bob).get(reverse("learning:dashboard", args=[project.pk]))
    page = response.content.decode()
    assert "HX-Request" in response["Vary"]
    assert re.search(r"Labelled examples</span><b>6 <small", page)
    assert re.search(r"Waiting for re-labelling</span><b>1</b>", page)
    assert re.search(r"Open flags</span><b>1</b>", page)
    assert {r["name"]: r["count"] for r in chart_data(response, "dashboard-distribution")} == {"Yes": 3, "No": 4}
    assert chart_data(response, "dashboard-annotators") == [
        {"name": "bob", "in_app": 4, "imported": 0}, {"name": "alice", "in_app": 1, "imported": 2}]
    assert "No model yet" in page


def test_it_reads_well_when_nothing_is_labelled(project, bob, login):
    page = login(bob).get(reverse("learning:dashboard", args=[project.pk])).content.decode()
    assert "No examples in this project yet." in page
    assert "No labels yet." in page and "Nobody has labelled yet." in page
    assert page.count("No model yet") == 4
    assert "data-chart=" not in page


def test_it_draws_the_model_report_with_current_label_names(project, alice, bob, labelled, login):
    model_version(project)
    taxonomy.edit_label(project, key=keys_by_name(project)["Yes"], user=alice, name="Overruled")
    response = login(bob).get(reverse("learning:dashboard", args=[project.pk]))
    page = response.content.decode()
    f1 = chart_data(response, "dashboard-f1")
    assert [(r["label"], r["f1"], r["low"], r["high"]) for r in f1] == [("Overruled", 0.9, 0.8, 0.96),
                                                                          ("No", 0.7, 0.5, 0.85)]
    assert chart_data(response, "dashboard-calibration") == [{"x": 0.7, "y": 0.65, "n": 12},
                                                             {"x": 0.9, "y": 0.92, "n": 28}]
    assert [p["n_labels"] for p in chart_data(response, "learning-curve")] == [40]
    assert '<th scope="row">Overruled</th>' in page
    assert 'title="No predicted as Overruled: 5">5</td>' in page
    assert "ECE 0.040" in page


def test_it_polls_without_redrawing_until_something_changes(project, bob, labelled, htmx, login):
    client = login(bob)
    url = reverse("learning:dashboard", args=[project.pk])
    poll = {**htmx, "HTTP_HX_TARGET": "dashboard-data"}
    first = client.get(url, **poll)
    assert first.status_code == 200 and "<html" not in first.content.decode()
    assert first.content.decode().lstrip().startswith('<section id="dashboard-data"')
    version = re.search(r'\?v=([0-9a-f]+)"', first.content.decode()).group(1)
    assert client.get(url, {"v": version}, **poll).status_code == 204
    annotate(make_examples(project, 1)[0], bob, ["No"], at=timezone.now())
    fresh = client.get(url, {"v": version}, **poll)
    assert fresh.status_code == 200
    assert re.search(r"Labelled examples</span><b>7 <small", fresh.content.decode())


def test_it_keeps_the_number_of_queries_flat_as_data_grows(project, alice, bob, labelled,
                                                           django_assert_max_num_queries, login):
    model_version(project)
    more = make_examples(project, 300)
    start = timezone.now() - timedelta(hours=1)
    Annotation.objects.bulk_create(
        Annotation(example=e, annotator=bob if i % 2 else alice, taxonomy_version=project.current_taxonomy(),
                   label_keys=[keys_by_name(project)["Yes" if i % 3 else "No"]],
                   created_at=start + timedelta(seconds=i)) for i, e in enumerate(more))
    client = login(bob)
    # 28: one more than before embeddings were checked against the database (these examples have none).
    with django_assert_max_num_queries(28):
        assert client.get(reverse("learning:dashboard", args=[project.pk])).status_code == 200


# --- Recent activity on the project page ---------------------------------------------------------------------------


def test_it_shows_recent_activity_newest_first(project, alice, bob, labelled, htmx, login):
    now = timezone.now()
    Comment.objects.create(example=labelled[0], author=bob, body="Is <b>this</b> a holding?",
                           created_at=now - timedelta(minutes=3))
    flag = Flag.objects.create(example=labelled[1], raised_by=bob, reason="text is cut off",
                               created_at=now - timedelta(minutes=2))
    flag.resolve(user=alice, resolution="fine as is")
    model_version(project)
    Dataset.objects.create(project=project, name="batch-2.csv", status=DatasetStatus.DONE, imported_count=1200,
                           labelled_count=10, created_by=alice, created_at=now - timedelta(minutes=5),
                           finished_at=now - timedelta(minutes=4))
    taxonomy.add_labels(project, labels=[taxonomy.LabelSpec("Maybe")], user=alice)

    kinds = [item.kind for item in recent_activity(project)]
    assert kinds[:3] == ["taxonomy", "model", "resolve"]
    assert {"label", "comment", "flag", "import"} <= set(kinds) and len(kinds) <= 15

    page = login(bob).get(reverse("projects:detail", args=[project.pk])).content.decode()
    assert f'hx-get="{reverse("learning:activity", args=[project.pk])}"' in page  # the page loads the panel
    section = login(bob).get(reverse("learning:activity", args=[project.pk]), **htmx).content.decode()
    assert "Added label &#x27;Maybe&#x27;." in section
    assert "Is &lt;b&gt;this&lt;/b&gt; a holding?" in section and "<b>this</b>" not in section
    assert re.search(r'imported</a>\s+<q>batch-2.csv</q>\s+<span class="muted">— 1,200 examples, 10 labelled',
                     section)
    assert "text is cut off" in section and "fine as is" in section
    assert re.search(r"<b>alice</b>\s+labelled\s+<q>sentence 3</q>", section)


def test_it_refreshes_the_activity_partial_for_members_only(project, alice, bob, charlie, labelled, login):
    url = reverse("learning:activity", args=[project.pk])
    headers = {"HTTP_HX_REQUEST": "true", "HTTP_HX_TARGET": "project-activity"}
    assert login(charlie).get(url, **headers).status_code == 404
    response = login(bob).get(url, **headers)
    body = response.content.decode()
    assert response.status_code == 200 and body.lstrip().startswith('<section id="project-activity"')
    assert 'hx-trigger="every 10s"' in body and "<html" not in body
    # Imported annotations are summed up by their import, not listed one by one; bob's run of
    # four labels is one line.
    assert body.count("<li") == 3
    assert re.search(r"<b>bob</b> labelled 4 items\s+— <span class=\"activity-labels\">Yes ×3, No ×1</span>", body)
    # Managers get links into the review queue; annotators don't.
    annotate(labelled[0], alice, ["No"], at=timezone.now())
    Flag.objects.create(example=labelled[0], raised_by=bob, reason="why")
    assert reverse("annotation:review", args=[project.pk]) not in login(bob).get(url, **headers).content.decode()
    assert reverse("annotation:review", args=[project.pk]) in login(alice).get(url, **headers).content.decode()


def test_it_says_so_when_nothing_happened_yet(project, bob, login):
    Annotation.objects.all().delete()
    body = login(bob).get(reverse("learning:activity", args=[project.pk]),
                          HTTP_HX_REQUEST="true", HTTP_HX_TARGET="project-activity").content.decode()
    # The project's creation made taxonomy v1: that is the one event.
    assert "made taxonomy v1" in body and body.count("<li") == 1


def test_it_stops_the_timeline_where_the_fetched_labels_end(project, bob, labelled, monkeypatch):
    monkeypatch.setattr("learning.activity.LABELS_FETCHED", 3)
    old = timezone.now() - timedelta(hours=3)
    Comment.objects.create(example=labelled[0], author=bob, body="older than the labels shown", created_at=old)
    items = recent_activity(project)
    # Labels between this comment and the three fetched ones exist but were not fetched:
    # showing the comment would suggest nobody labelled in between.
    assert "older than the labels shown" not in [item.detail for item in items]
    assert [(item.actor, item.count) for item in items if item.kind == "label"] == [("alice", 1), ("bob", 2)]


def test_it_folds_interleaved_labels_into_one_line_per_annotator_between_other_events(project, alice, bob):
    examples = make_examples(project, 5)
    now = timezone.now()
    annotate(examples[0], bob, ["Yes"], at=now - timedelta(seconds=50))
    annotate(examples[1], alice, ["No"], at=now - timedelta(seconds=40))
    Flag.objects.create(example=examples[1], raised_by=alice, reason="hm", created_at=now - timedelta(seconds=35))
    annotate(examples[2], bob, ["No"], at=now - timedelta(seconds=30))
    annotate(examples[3], alice, ["No"], at=now - timedelta(seconds=20))
    annotate(examples[4], bob, ["No"], at=now - timedelta(seconds=10))
    lines = [(item.actor, item.kind, item.count, item.detail) for item in recent_activity(project)
             if item.kind != "taxonomy"]
    assert lines == [("bob", "label", 2, "No ×2"), ("alice", "label", 1, "No"), ("alice", "flag", 1, "hm"),
                         ("alice", "label", 1, "No"), ("bob", "label", 1, "Yes")]


def test_it_renders_user_text_inert_in_tables_and_chart_data(project, alice, bob, labelled, login):
    payload = "</script><img src=x onerror=alert(1)>"
    model_version(project)
    taxonomy.edit_label(project, key=keys_by_name(project)["Yes"], user=alice, name=payload[:40])
    Comment.objects.create(example=labelled[0], author=bob, body=payload)
    for url in (reverse("learning:dashboard", args=[project.pk]), reverse("projects:detail", args=[project.pk]),
                reverse("learning:activity", args=[project.pk])):
        page = login(alice).get(url).content.decode()
        assert "<img src=x" not in page and "</script><img" not in page
    response = login(alice).get(reverse("learning:dashboard", args=[project.pk]))
    assert payload[:40] in [row["name"] for row in chart_data(response, "dashboard-distribution")]


def test_the_dashboard_shows_agreement_when_items_have_several_annotators(project, alice, bob, login):
    from annotation.models import Annotation, AnnotationSource
    from projects.models import Example

    version = project.current_taxonomy()
    yes, no = [label.key for label in version.labels.all()]
    for i, (a, b) in enumerate([(yes, yes), (no, no), (yes, no), (no, no)]):
        example = Example.objects.create(project=project, text=f"shared {i}", content_hash=f"shared-{i}")
        for user, key in ((alice, a), (bob, b)):
            Annotation.objects.create(example=example, annotator=user, taxonomy_version=version, label_keys=[key],
                                      source=AnnotationSource.UI)
    body = login(bob).get(reverse("learning:dashboard", args=[project.pk])).content.decode()
    assert "Agreement between annotators" in body
    assert "75%" in body and "on 4 items labelled by several people" in body

"""The Explore API (learning/explore_api.py): the pool's clusters as JSON, and a manager's actions from one (add a
label, send its items to the front of the queue), with the Explore page's access rules, refusals that change nothing,
and the OpenAPI schema."""
from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import User
from django.urls import reverse
from rest_framework.test import APIClient

from annotation import actions as queue
from annotation.models import ExampleScore
from learning import actions as learning_actions
from learning import explore
from learning.models import TrainingRun
from projects.models import Membership, Project, Role
from serving import keys

pytestmark = pytest.mark.django_db


@pytest.fixture
def viewer(team: Any) -> User:
    user = User.objects.create_user(username="victor", password="victor-password-123")
    Membership.objects.create(team=team, user=user, role=Role.VIEWER)
    return user


@pytest.fixture
def pool(project: Project, alice: User, clustered_examples: Any) -> Project:
    """40 items in two clusters, 10 of them labelled, and a model trained on them."""
    clustered_examples(project, alice, 40, labelled=10)
    TrainingRun.objects.create(project=project)
    run = learning_actions.run_training(project.pk)
    assert run is not None and run.model_version is not None, run and run.error
    return project


def urls(project: Project) -> dict[str, str]:
    return {name: reverse(f"api-explore{suffix}", args=[project.pk])
            for name, suffix in (("clusters", ""), ("queue", "-queue"), ("label", "-label"))}


def nothing_changed(project: Project) -> None:
    assert project.current_taxonomy().number == 1
    assert not ExampleScore.objects.filter(project=project, is_routed=True).exists()


def test_a_manager_clusters_the_pool_and_reads_each_clusters_figures(pool: Project, alice: User,
                                                                      api_client: Any) -> None:
    client = api_client(alice)
    first = client.get(urls(pool)["clusters"])
    assert first.status_code == 200 and first.json()["status"] == "none" and first.json()["clusters"] == []
    done = client.post(urls(pool)["clusters"])
    assert done.status_code == 200, done.content
    data = done.json()
    assert data["status"] == "ready" and data["n"] == 40 and data["labelled"] == 10 and data["model_version"] == 1
    current = explore.current(pool)
    assert current is not None and data["key"] == current["key"]
    assert client.get(urls(pool)["clusters"]).json() == data  # the same clustering, read back
    rows = data["clusters"]
    assert len(rows) == data["k"] and sum(row["size"] for row in rows) == 40
    names = set(pool.current_taxonomy().labels.values_list("name", flat=True))
    texts = dict(pool.examples.values_list("pk", "text"))
    for row in rows:
        assert 1 <= len(row["representatives"]) <= explore.REPRESENTATIVES
        assert all(texts[r["id"]] == r["text"] for r in row["representatives"])
        assert row["distribution"] and {d["name"] for d in row["distribution"]} <= names
        assert sum(d["share"] for d in row["distribution"]) == pytest.approx(1.0)
        assert row["mean_bald"] is not None and row["mean_bald"] >= 0.0
        assert isinstance(row["unexplored"], bool) and 0 <= row["labelled"] <= row["size"]
    # Unexplored first, then the largest, as on the page.
    order = [(not row["unexplored"], -row["size"]) for row in rows]
    assert order == sorted(order)


def test_a_manager_sends_a_clusters_items_to_the_front_of_the_queue(pool: Project, alice: User, bob: User,
                                                                     api_client: Any) -> None:
    client = api_client(alice)
    data = client.post(urls(pool)["clusters"]).json()
    cluster = data["clusters"][0]
    unlabelled = cluster["size"] - cluster["labelled"]
    answer = client.post(urls(pool)["queue"], {"key": data["key"], "cluster": cluster["index"]}, format="json")
    assert answer.status_code == 200, answer.content
    assert answer.json() == {"cluster": cluster["index"], "sent": unlabelled}
    routed = set(ExampleScore.objects.filter(project=pool, is_routed=True).values_list("example_id", flat=True))
    assert len(routed) == unlabelled
    assert set(queue.candidates(pool, user=bob, limit=unlabelled)) == routed


def test_a_manager_adds_a_label_from_a_cluster_and_queues_its_items_in_one_step(pool: Project, alice: User,
                                                                                api_client: Any) -> None:
    client = api_client(alice)
    data = client.post(urls(pool)["clusters"]).json()
    cluster = data["clusters"][-1]
    answer = client.post(urls(pool)["label"], {"key": data["key"], "cluster": cluster["index"], "name": " Other ",
                                               "description": "Neither yes nor no.", "taxonomy_version": 1},
                         format="json")
    assert answer.status_code == 201, answer.content
    body = answer.json()
    assert body["taxonomy_version"] == 2 and body["label"]["name"] == "Other"
    assert body["sent"] == cluster["size"] - cluster["labelled"]
    label = pool.current_taxonomy().labels.get(name="Other")
    assert label.key == body["label"]["key"] and label.description == "Neither yes nor no."
    assert ExampleScore.objects.filter(project=pool, is_routed=True).count() == body["sent"]
    # Without queueing: the label only (the clustering is re-read: the new taxonomy may have re-keyed it).
    data = client.post(urls(pool)["clusters"]).json()
    again = client.post(urls(pool)["label"], {"key": data["key"], "cluster": data["clusters"][0]["index"],
                                              "name": "Unsure", "queue": False}, format="json")
    assert again.status_code == 201 and again.json()["sent"] == 0 and again.json()["taxonomy_version"] == 3


def test_bad_input_is_a_4xx_with_the_reason_and_changes_nothing(pool: Project, alice: User, api_client: Any,
                                                                  clustered_examples: Any) -> None:
    client = api_client(alice)
    data = client.post(urls(pool)["clusters"]).json()
    key, index = data["key"], data["clusters"][0]["index"]
    cases = [
        ("queue", {"cluster": index}, 400, "key: This field is required"),
        ("queue", {"key": key, "cluster": "x"}, 400, "cluster: A valid integer is required"),
        ("queue", {"key": key, "cluster": -1}, 400, "cluster: Ensure this value is greater than or equal to 0"),
        ("queue", {"key": key, "cluster": 99}, 400, "There is no cluster 99"),
        ("queue", {"key": "labelhub:explore:old", "cluster": index}, 409, "The clusters changed"),
        ("label", {"key": key, "cluster": index, "name": ""}, 400, "name: This field may not be blank"),
        ("label", {"key": key, "cluster": index}, 400, "name: This field is required"),
        ("label", {"key": key, "cluster": index, "name": "x" * 101}, 400, "name: Ensure this field has no more"),
        ("label", {"key": key, "cluster": index, "name": "yes"}, 400, "appears twice"),
        ("label", {"key": key, "cluster": index, "name": "Other", "taxonomy_version": 7}, 409, "taxonomy"),
        ("label", {"key": key, "cluster": index, "name": "Other", "taxonomy_version": "v"}, 400,
         "taxonomy_version: A valid integer is required"),
        ("label", {"key": key, "cluster": 99, "name": "Other"}, 400, "There is no cluster 99"),
        ("label", {"key": "stale", "cluster": index, "name": "Other"}, 409, "The clusters changed"),
        ("label", {"key": key, "cluster": index, "name": "Other", "queue": "maybe"}, 400, "queue: Must be a valid"),
    ]
    for action, body, code, message in cases:
        answer = client.post(urls(pool)[action], body, format="json")
        assert answer.status_code == code and message in answer.json()["detail"], (action, body, answer.content)
        nothing_changed(pool)
    assert client.post(urls(pool)["queue"], "not json", content_type="application/json").status_code == 400
    nothing_changed(pool)


def test_a_cluster_with_nothing_left_to_label_adds_no_label_when_asked_to_queue(project: Project, alice: User,
                                                                                api_client: Any,
                                                                                clustered_examples: Any) -> None:
    clustered_examples(project, alice, 12, labelled=12)
    client = api_client(alice)
    data = client.post(urls(project)["clusters"]).json()
    body = {"key": data["key"], "cluster": data["clusters"][0]["index"], "name": "Other"}
    answer = client.post(urls(project)["label"], body, format="json")
    assert answer.status_code == 400 and "labelled already" in answer.json()["detail"]
    nothing_changed(project)  # the label is not added when its queueing half is refused
    assert client.post(urls(project)["label"], {**body, "queue": False}, format="json").status_code == 201


def test_a_tiny_pool_is_refused_with_the_reason(project: Project, alice: User, api_client: Any,
                                                stored_vectors: Any) -> None:
    answer = api_client(alice).post(urls(project)["clusters"])
    assert answer.status_code == 400 and "clustering needs at least 4" in answer.json()["detail"]


def test_a_large_pool_is_clustered_in_the_background(project: Project, alice: User, api_client: Any,
                                                     clustered_examples: Any, run_jobs: Any, monkeypatch: Any) -> None:
    monkeypatch.setattr(explore, "INLINE_LIMIT", 10)
    clustered_examples(project, alice, 60, labelled=6)
    client = api_client(alice)
    with run_jobs():
        queued = client.post(urls(project)["clusters"])
        assert queued.status_code == 202 and queued.json()["status"] == "running"
        assert queued.json()["progress"]["steps"] == len(explore.STAGES) and queued.json()["clusters"] == []
    ready = client.get(urls(project)["clusters"]).json()
    assert ready["status"] == "ready" and ready["n"] == 60 and ready["progress"] is None


def test_only_managers_reach_it_as_on_the_page(pool: Project, alice: User, bob: User, viewer: User, charlie: User,
                                               api_client: Any, login: Any) -> None:
    explore.compute(pool)
    result = explore.current(pool)
    assert result is not None
    body = {"key": result["key"], "cluster": result["clusters"][0]["index"], "name": "Other"}
    page = reverse("learning:explore", args=[pool.pk])
    for user, code in ((bob, 403), (viewer, 403), (charlie, 404)):
        assert login(user).get(page).status_code == code  # the page's answer, and the API's
        client = api_client(user)
        assert client.get(urls(pool)["clusters"]).status_code == code
        for action in ("clusters", "queue", "label"):
            assert client.post(urls(pool)[action], body, format="json").status_code == code
    anonymous = APIClient()
    assert login(alice).get(page).status_code == 200 and anonymous.get(page).status_code == 302  # page: to login
    for action in ("clusters", "queue", "label"):
        assert anonymous.post(urls(pool)[action], body, format="json").status_code in {401, 403}
    assert anonymous.get(urls(pool)["clusters"]).status_code in {401, 403}
    # A project API key is a machine's credential: refused, even with every scope (as the review API).
    _, key = keys.create_api_key(pool, name="robot", scopes=["predict", "import", "read"], user=alice)
    machine = APIClient()
    machine.credentials(HTTP_AUTHORIZATION=f"Api-Key {key}")
    assert machine.get(urls(pool)["clusters"]).status_code in {401, 403}
    assert machine.post(urls(pool)["label"], body, format="json").status_code in {401, 403}
    nothing_changed(pool)
    assert api_client(alice).get(urls(pool)["clusters"]).status_code == 200


def test_the_endpoints_are_in_the_openapi_schema(client: Any) -> None:
    schema = client.get("/api/schema/", HTTP_ACCEPT="application/json").json()
    paths = schema["paths"]
    assert {"get", "post"} <= set(paths["/api/v1/projects/{id}/explore/"])
    assert "post" in paths["/api/v1/projects/{id}/explore/queue/"]
    label = paths["/api/v1/projects/{id}/explore/label/"]["post"]
    assert {"201", "400", "409"} <= set(label["responses"])
    assert "Add a label from a cluster" in label["summary"]
    cluster = schema["components"]["schemas"]["ExploreCluster"]["properties"]
    assert {"size", "representatives", "distribution", "mean_bald", "unexplored"} <= set(cluster)
    body = schema["components"]["schemas"]["ExploreLabelInputRequest"]["properties"]
    assert {"key", "cluster", "name", "description", "taxonomy_version", "queue"} <= set(body)

"""Who may see and do what: every page and endpoint, for each persona."""
from __future__ import annotations

import pytest
from django.urls import reverse

from projects.models import Dataset, DatasetStatus


@pytest.fixture
def dataset(project, alice) -> Dataset:
    return Dataset.objects.create(project=project, name="rows.csv", file_format="csv", columns=["text", "label"],
                                  status=DatasetStatus.DONE, created_by=alice)


# (url name, kwargs builder, expected status for alice, bob, charlie)
PAGES = [
    ("projects:detail", lambda p, d: [p.pk], 200, 200, 404),
    ("projects:settings", lambda p, d: [p.pk], 200, 403, 404),
    ("projects:upload", lambda p, d: [p.pk], 200, 403, 404),
    ("projects:dataset", lambda p, d: [p.pk, d.pk], 200, 200, 404),
]


@pytest.mark.parametrize(("name", "args", "for_alice", "for_bob", "for_charlie"), PAGES)
def test_it_gives_each_persona_the_right_answer_on_project_pages(
        name, args, for_alice, for_bob, for_charlie, project, dataset, alice, bob, charlie, login):
    url = reverse(name, args=args(project, dataset))
    assert login(alice).get(url).status_code == for_alice
    assert login(bob).get(url).status_code == for_bob
    assert login(charlie).get(url).status_code == for_charlie


@pytest.mark.parametrize(("name", "args"), [(name, args) for name, args, *_ in PAGES])
def test_it_sends_anonymous_users_to_the_login_page(name, args, project, dataset):
    from django.test import Client

    response = Client().get(reverse(name, args=args(project, dataset)))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login"))


def test_it_lists_only_projects_of_the_users_teams(project, alice, bob, charlie, login):
    assert "Overruling" in login(alice).get(reverse("projects:list")).text
    assert "Overruling" in login(bob).get(reverse("projects:list")).text
    assert "Overruling" not in login(charlie).get(reverse("projects:list")).text


def test_it_refuses_writes_to_outsiders_and_annotators(project, alice, bob, charlie, login):
    url = reverse("projects:add-label", args=[project.pk])
    payload = {"name": "Maybe", "expected_version": 1}
    assert login(charlie).post(url, payload).status_code == 404
    assert login(bob).post(url, payload).status_code == 403
    assert project.current_taxonomy().number == 1
    assert login(charlie).post(reverse("projects:settings", args=[project.pk]), {"name": "x"}).status_code == 404
    project.refresh_from_db()
    assert project.name == "Overruling"


def test_it_lets_only_managers_create_projects(alice, bob, charlie, team, login):
    payload = {"team": team.pk, "name": "New", "task_type": "single_label", "labels": "A\nB"}
    assert login(bob).post(reverse("projects:create"), payload).status_code == 302
    assert not team.projects.filter(name="New").exists()
    # charlie manages his own team only: alice's team is not a valid choice for him.
    response = login(charlie).post(reverse("projects:create"), payload)
    assert response.status_code == 200 and not team.projects.filter(name="New").exists()
    response = login(alice).post(reverse("projects:create"), payload)
    assert response.status_code == 302
    created = team.projects.get(name="New")
    assert [label.name for label in created.current_taxonomy().labels.all()] == ["A", "B"]


API = [
    ("api-project-detail", lambda p, d: [p.pk], "get", 200, 200, 404),
    ("api-dataset-list", lambda p, d: [p.pk], "get", 200, 200, 404),
    ("api-dataset-detail", lambda p, d: [p.pk, d.pk], "get", 200, 200, 404),
    ("api-bulk-import", lambda p, d: [p.pk], "post", 201, 403, 404),
]


@pytest.mark.parametrize(("name", "args", "method", "for_alice", "for_bob", "for_charlie"), API)
def test_it_checks_the_token_owner_on_every_endpoint(
        name, args, method, for_alice, for_bob, for_charlie, project, dataset, alice, bob, charlie, api_client):
    url = reverse(name, args=args(project, dataset))
    body = {"examples": [{"text": "we overrule smith v. jones."}]}
    for user, expected in ((bob, for_bob), (charlie, for_charlie), (alice, for_alice)):
        response = getattr(api_client(user), method)(url, body, format="json")
        assert response.status_code == expected, (user.username, response.content)
    assert getattr(api_client(None), method)(url, body, format="json").status_code == 401


def test_it_lists_only_visible_projects_over_the_api(project, alice, charlie, api_client):
    assert [p["name"] for p in api_client(alice).get(reverse("api-project-list")).json()] == ["Overruling"]
    assert api_client(charlie).get(reverse("api-project-list")).json() == []


def test_it_publishes_the_openapi_schema_and_docs(alice, client):
    schema = client.get(reverse("api-schema"), HTTP_ACCEPT="application/json")
    assert schema.status_code == 200
    paths = schema.json()["paths"]
    assert "/api/v1/projects/{id}/examples/bulk/" in paths
    assert "tokenAuth" in schema.json()["components"]["securitySchemes"]
    docs = client.get(reverse("api-docs"))
    assert docs.status_code == 200 and b"swagger" in docs.content.lower()


def test_it_shows_a_new_api_token_once(alice, login):
    # Personal tokens are hashed (issue 10): the key is in the creating response only;
    # tests/test_auth_security.py covers expiry and revoke.
    client = login(alice)
    assert "No tokens yet" in client.get(reverse("api-token")).text
    created = client.post(reverse("api-token"), {"name": "script", "expires_in_days": ""}).text
    key = created.split('id="api-token">', 1)[1].split("<", 1)[0]
    assert key.startswith("lhp_")
    assert key not in client.get(reverse("api-token")).text

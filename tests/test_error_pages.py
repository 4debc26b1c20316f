"""The error pages (400, 403, 404, 500, a refused form) look like the rest of LabelHub, say what to do next and
show nothing of the request or the server."""
from __future__ import annotations

import pytest
from django.http import HttpRequest, HttpResponse
from django.test import Client
from django.urls import include, path, reverse


def boom(request: HttpRequest) -> HttpResponse:
    raise RuntimeError("secret internals: password=hunter2")


# This module is the URLconf of the 500 test: everything of labelhub.urls plus a view that fails.
urlpatterns = [path("test-boom/", boom), path("", include("labelhub.urls"))]


def styled(html: str) -> bool:
    return 'href="/static/css/labelhub.css"' in html and 'class="topbar"' in html and "LabelHub" in html


@pytest.fixture
def production(settings):
    settings.DEBUG = False  # Django's own technical pages only show with DEBUG on
    settings.ALLOWED_HOSTS = ["testserver"]


def test_a_role_too_low_gets_a_styled_403_that_says_which_role(project, bob, login, production):
    response = login(bob).get(reverse("projects:settings", args=[project.pk]))
    html = response.content.decode()
    assert response.status_code == 403 and styled(html)
    assert "This needs the manager role in team" in html and "Your projects" in html
    assert "Traceback" not in html and "settings/" not in html.split("<main", 1)[1]


def test_an_outsider_gets_a_styled_404_that_does_not_say_whether_the_project_exists(project, charlie, login,
                                                                                    production):
    seen = login(charlie).get(reverse("projects:detail", args=[project.pk]))
    missing = login(charlie).get(reverse("projects:detail", args=[project.pk + 1000]))
    assert seen.status_code == missing.status_code == 404
    assert styled(seen.content.decode()) and "There is nothing here" in seen.content.decode()
    # The same page for a project that exists in another team and for one that does not.
    def main(response) -> str:
        return response.content.decode().split("<main", 1)[1]

    assert main(seen) == main(missing)
    assert project.name not in seen.content.decode()


def test_a_failing_view_gets_a_styled_500_without_its_error(settings, production, db):
    settings.ROOT_URLCONF = __name__
    response = Client(raise_request_exception=False).get("/test-boom/")
    html = response.content.decode()
    assert response.status_code == 500 and 'href="/static/css/labelhub.css"' in html
    assert "Something went wrong on our side" in html
    assert "hunter2" not in html and "RuntimeError" not in html and "test-boom" not in html


def test_a_form_without_its_csrf_token_gets_a_styled_page_that_says_what_to_do(project, alice, production):
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)
    response = client.post(reverse("projects:settings", args=[project.pk]), {"name": "x"})
    html = response.content.decode()
    assert response.status_code == 403 and 'href="/static/css/labelhub.css"' in html
    assert "This form was refused" in html and "reload the page and send it again" in html
    assert "CSRF token" not in html  # Django's technical reason stays in the log


def test_a_bad_request_gets_a_styled_400(production, db):
    response = Client(HTTP_HOST="evil.example").get("/accounts/login/")
    assert response.status_code == 400
    assert "This request could not be understood" in response.content.decode()
    assert "evil.example" not in response.content.decode()


def test_favicon_ico_points_anyone_at_the_icon_our_pages_name(client):
    # Browsers ask for /favicon.ico on pages that name no icon (the admin's, the browsable API's); before,
    # every such page logged a 404 in the browser's console and the server's log.
    response = client.get("/favicon.ico")
    assert response.status_code == 302 and response["Location"] == "/static/img/favicon.svg"
    icon = client.get(response["Location"])
    assert icon.status_code == 200 and b"<svg" in b"".join(icon.streaming_content)

"""The main pages under the Content-Security-Policy in a real browser (Debian's Chromium via Playwright).

Every page loads, its scripts run (charts drawn, htmx regions filled) and the browser reports no CSP
violation; an inline script injected into a page is refused, so the policy is really enforced.
Screenshots land in $LABELHUB_SCREENSHOTS (default var/screenshots), csp-*.png.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

# Records what the browser refuses; init scripts are injected by the driver, outside the page's CSP.
RECORD_VIOLATIONS = """
window.__csp = [];
document.addEventListener('securitypolicyviolation',
  e => window.__csp.push(`${e.violatedDirective} ${e.blockedURI || 'inline'} ${e.sourceFile}:${e.lineNumber}`));
"""



def _screenshots() -> Path:
    path = Path(os.environ.get("LABELHUB_SCREENSHOTS", settings.BASE_DIR / "var" / "screenshots"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def test_the_main_pages_run_under_the_policy_without_a_violation(live_server: Any, browser: Any, trained: Any,
                                                                 alice: Any, bob: Any, give_curve: Any) -> None:
    give_curve(trained.model_versions.get())
    alice.is_staff = alice.is_superuser = True
    alice.save()
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.add_init_script(RECORD_VIOLATIONS)
    console: list[str] = []
    page.on("console", lambda m: console.append(f"{m.type}: {m.text}") if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
    # Every request a page makes succeeds, the browser's own favicon request included (which Playwright
    # reports only as a console error).
    failed: list[str] = []
    page.on("response", lambda r: failed.append(f"{r.status} {r.url}") if r.status >= 400 else None)

    page.goto(f"{live_server.url}/accounts/login/")
    page.fill("input[name=username]", "alice")
    page.fill("input[name=password]", "alice-password-123")
    page.click("main button[type=submit]")
    page.wait_for_url(f"{live_server.url}/")

    pk = trained.pk
    pages = {
        "projects": "/", "project": f"/projects/{pk}/", "label": f"/projects/{pk}/label/",
        "dashboard": f"/projects/{pk}/dashboard/", "model": f"/projects/{pk}/model/",
        "serving": f"/projects/{pk}/serving/", "monitoring": f"/projects/{pk}/monitoring/",
        "upload": f"/projects/{pk}/datasets/new/", "api-keys": f"/projects/{pk}/api-keys/",
        "webhooks": f"/projects/{pk}/webhooks/", "versions": f"/projects/{pk}/versions/",
        "settings": f"/projects/{pk}/settings/", "tokens": "/accounts/token/", "password": "/accounts/password/change/",
        "api-docs": "/api/docs/", "admin": "/admin/", "admin-user": f"/admin/auth/user/{alice.pk}/change/",
        "jobs": "/admin/jobs/", "jobs-queue": "/admin/jobs/queues/0/",
    }
    charts: dict[str, int] = {}
    violations: dict[str, list[str]] = {}
    for name, path in pages.items():
        response = page.goto(f"{live_server.url}{path}")
        assert response is not None and response.status == 200, (name, response and response.status)
        page.wait_for_load_state("load")
        page.wait_for_timeout(1200)  # htmx `load` triggers and charts
        charts[name] = page.evaluate("() => window.Chart ? Object.keys(Chart.instances).length : 0")
        found = page.evaluate("() => window.__csp")
        if name.startswith("jobs"):
            # django-rq's one inline script, refused on purpose (labelhub/urls.py): dead code anyway.
            found = [v for v in found if not v.startswith("script-src-elem inline")]
        if found:
            violations[name] = found
        page.screenshot(path=str(_screenshots() / f"csp-{name}.png"), full_page=True)

    assert violations == {}
    assert failed == [] and [line for line in console if "Failed to load resource" in line] == []
    assert [line for line in console if "pageerror" in line] == []
    # The scripts really ran: charts on the pages that have them, htmx filled the model panel.
    assert charts["dashboard"] >= 1 and charts["project"] >= 1 and charts["serving"] >= 1 and charts["model"] >= 1, (
        charts, console)
    page.goto(f"{live_server.url}/projects/{pk}/")
    page.wait_for_selector("#project-model canvas")
    # Swagger UI drew the operations from the schema.
    page.goto(f"{live_server.url}/api/docs/")
    page.wait_for_selector(".opblock", timeout=15000)

    # A new personal token is shown once, in a page no cache keeps.
    page.goto(f"{live_server.url}/accounts/token/")
    page.fill("input[name=name]", "nightly import")
    with page.expect_response(lambda r: r.request.method == "POST") as created:
        page.click("main button.primary")
    assert "no-store" in created.value.headers["cache-control"]
    assert page.locator("#api-token").inner_text().startswith("lhp_")
    page.screenshot(path=str(_screenshots() / "csp-token-created.png"), full_page=True)
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("form[hx-post] button")
    page.wait_for_selector("text=revoked: it no longer works")
    assert "Revoked" in page.locator("table").inner_text()

    # Five wrong passwords lock this user out from this address, with a page that says what to do.
    guesser = browser.new_page(viewport={"width": 1280, "height": 700})
    guesser.add_init_script(RECORD_VIOLATIONS)
    for _ in range(5):
        guesser.goto(f"{live_server.url}/accounts/login/")
        guesser.fill("input[name=username]", "bob")
        guesser.fill("input[name=password]", "not-bobs-password")
        guesser.click("main button[type=submit]")
    assert "Too many failed logins" in guesser.content()
    assert guesser.evaluate("() => window.__csp") == []
    guesser.screenshot(path=str(_screenshots() / "csp-lockout.png"), full_page=True)

    # The policy is enforced: an inline script put into the page does not run.
    page.evaluate("""() => { const s = document.createElement('script');
                             s.textContent = 'window.__ran = true'; document.body.appendChild(s); }""")
    page.wait_for_timeout(200)
    assert page.evaluate("() => window.__ran === true") is False
    assert any("script-src" in v for v in page.evaluate("() => window.__csp"))

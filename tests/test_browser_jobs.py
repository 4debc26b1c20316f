"""django-rq's job pages under /admin/jobs/ work in a real browser under the Content-Security-Policy: a job's
result rows open the result when clicked (their inline onclick is refused by the policy; a script file does it)."""
from __future__ import annotations

from typing import Any

import django_rq
import pytest
from django.urls import reverse
from django_rq.settings import get_queues_map
from rq import SimpleWorker

from tests.test_browser_csp import RECORD_VIOLATIONS, _screenshots

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_a_jobs_result_row_opens_the_result_without_a_policy_violation(live_server: Any, browser: Any,
                                                                       alice: Any) -> None:
    alice.is_staff = alice.is_superuser = True
    alice.save()
    queue = django_rq.get_queue("default")
    job = queue.enqueue("os.getpid")
    django_rq.get_worker("default", worker_class=SimpleWorker).work(burst=True)
    job.refresh()
    results = job.results()
    assert results, "the job left no result to show"
    queue_index = get_queues_map()["default"]

    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.add_init_script(RECORD_VIOLATIONS)
    page.goto(f"{live_server.url}/accounts/login/")
    page.fill("input[name=username]", "alice")
    page.fill("input[name=password]", "alice-password-123")
    page.click("main button[type=submit]")
    page.wait_for_url(f"{live_server.url}/")

    detail = reverse("django_rq:job_detail", args=[queue_index, job.id])
    assert detail.startswith("/admin/jobs/")
    response = page.goto(f"{live_server.url}{detail}")
    assert response is not None and response.status == 200
    page.wait_for_load_state("load")
    page.screenshot(path=str(_screenshots() / "jobs-detail.png"), full_page=True)
    # No inline handler is left for the policy to refuse, and nothing else was refused but django-rq's one
    # dead inline script (labelhub/urls.py).
    assert page.locator("[onclick]").count() == 0
    found = [v for v in page.evaluate("() => window.__csp") if not v.startswith("script-src-elem inline")]
    assert found == []
    page.click("tr.rq-clickable td.rq-nowrap >> nth=0")  # the row, not its link
    result = reverse("django_rq:result_detail", args=[queue_index, job.id, results[0].id])
    page.wait_for_url(f"{live_server.url}{result}")

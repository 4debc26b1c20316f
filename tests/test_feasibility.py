"""Know sooner: the learning-curve projection (learning/feasibility.py) and its dashboard region."""
from __future__ import annotations

import re
from typing import Any

import numpy as np
import pytest
from django.contrib.auth.models import User
from django.urls import reverse
from django.utils import timezone
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from learning import feasibility
from learning.models import ModelVersion, ProjectionSetting
from projects.models import Membership, Role

# --- The fit ----------------------------------------------------------------------------------------------------------


def power_law(n: np.ndarray, a: float, b: float, c: float) -> np.ndarray:
    return a - b * np.power(n, -c)


@settings(max_examples=25, deadline=None)
@given(a=st.floats(0.6, 0.97), b=st.floats(0.5, 3.0), c=st.floats(0.2, 1.0), noise=st.floats(0.0, 0.01),
       seed=st.integers(0, 2**16))
def test_a_rising_curve_is_projected_at_or_above_its_last_value(a, b, c, noise, seed):
    n = np.arange(50, 420, 20, dtype=float)
    assume(power_law(n[0], a, b, c) > 0.2)  # a learning curve starts above chance, not at 0
    y = np.clip(power_law(n, a, b, c) + np.random.default_rng(seed).normal(0, noise, len(n)), 0, 1)
    y = np.maximum.accumulate(y)  # monotone data
    projection = feasibility.project(n, y, n_bootstrap=50)
    at_2n = projection.at[int(2 * n[-1])]
    assert at_2n.value >= y[-1] - 3 * noise - 0.01
    assert 0.0 <= at_2n.low <= at_2n.value <= at_2n.high <= 1.0
    assert projection.at[int(5 * n[-1])].value >= at_2n.value - 1e-9
    assert projection.gain_per_step.value >= 0.0


def test_the_interval_holds_the_truth_of_noisy_power_law_curves_at_about_its_nominal_rate():
    rng = np.random.default_rng(2026)
    n = np.arange(50, 410, 20, dtype=float)
    inside, errors = [], []
    for _ in range(40):
        a, b, c, noise = rng.uniform(0.65, 0.95), rng.uniform(0.8, 3.0), rng.uniform(0.25, 0.9), 0.01
        y = power_law(n, a, b, c) + rng.normal(0, noise, len(n))
        projection = feasibility.project(n, y, seed=int(rng.integers(1 << 30)))
        estimate = projection.at[int(2 * n[-1])]
        later = power_law(np.array([2 * n[-1]]), a, b, c)[0] + rng.normal(0, noise)  # what the curve shows then
        inside.append(estimate.low <= later <= estimate.high)
        errors.append(abs(estimate.value - later))
    coverage = float(np.mean(inside))
    assert 0.6 <= coverage <= 0.98, coverage  # nominal 0.8
    assert float(np.mean(errors)) < 0.02


def test_a_flat_curve_says_stop_and_a_steep_one_says_go_on():
    n = np.arange(100, 600, 50, dtype=float)
    flat = feasibility.project(n, 0.8 + 0.0005 * np.sin(n), n_bootstrap=50)
    assert flat.gain_points() < 0.5 and flat.should_stop(0.5)
    steep = feasibility.project(n, power_law(n, 0.95, 4.0, 0.5), n_bootstrap=50)
    assert steep.gain_points() > 0.5 and not steep.should_stop(0.5)


def test_it_refuses_a_curve_too_short_to_project():
    with pytest.raises(feasibility.NotEnoughCurve, match="4 model versions"):
        feasibility.project([50, 70, 90], [0.5, 0.6, 0.65])
    with pytest.raises(feasibility.NotEnoughCurve, match="1.5×"):
        feasibility.project([100, 110, 120, 130], [0.5, 0.6, 0.65, 0.66])
    with pytest.raises(feasibility.NotEnoughCurve):
        feasibility.project([50, 50, 50, 50, 90], [0.5, 0.6, 0.65, 0.7, 0.71])


def test_projections_stay_within_zero_and_one():
    n = np.arange(50, 450, 50, dtype=float)
    near_one = feasibility.project(n, np.minimum(power_law(n, 1.05, 1.0, 0.6), 1.0), n_bootstrap=50)
    assert all(0 <= e.low <= e.value <= e.high <= 1 for e in near_one.at.values())
    assert near_one.ceiling <= 1.0


# --- The dashboard region ---------------------------------------------------------------------------------------------


def record_curve(project: Any, curve: list[tuple[int, float]], *, label_keys: list[str] | None = None,
                 start: int = 1) -> None:
    taxonomy = project.current_taxonomy()
    keys = label_keys or [label.key for label in taxonomy.labels.all()]
    for i, (n, f1) in enumerate(curve, start=start):
        ModelVersion.objects.create(
            project=project, number=i, taxonomy_version=taxonomy, label_keys=keys, encoder="e", strategy="s",
            n_labels=n, artifact=b"", report_at=timezone.now(),
            metrics={"macro_f1": {"value": f1, "low": f1 - 0.04, "high": f1 + 0.04}, "report_version": i})


CURVE = [(n, round(0.88 - 1.6 * n ** -0.5, 4)) for n in range(60, 620, 60)]


def sentence(body: str) -> str:
    match = re.search(r'id="projection-sentence">(.*?)</p>', body, re.S)
    assert match, body
    return re.sub(r"<[^>]+>", "", re.sub(r"\s+", " ", match.group(1))).strip()


def test_the_dashboard_shows_the_projection_and_the_stop_signal(project, alice, bob, login, htmx):
    record_curve(project, CURVE)
    dashboard = login(bob).get(reverse("learning:dashboard", args=[project.pk])).content.decode()
    assert 'id="feasibility"' in dashboard and reverse("learning:projection", args=[project.pk]) in dashboard
    region = login(bob).get(reverse("learning:projection", args=[project.pk]), **htmx)
    body = region.content.decode()
    expected = feasibility.project([n for n, _ in CURVE], [f for _, f in CURVE], sigma=[0.08 / 3.92] * len(CURVE))
    two, five = expected.at[1200], expected.at[3000]
    text = sentence(body)
    assert text.startswith(f"At 2× labels (1,200) expect macro-F1 {two.value:.2f} ({two.low:.2f}–{two.high:.2f}); "
                           f"at 5× (3,000) {five.value:.2f} ({five.low:.2f}–{five.high:.2f}).")
    gain = expected.gain_points()
    assert f"Each 100 more labels adds ~{gain:.1f} macro-F1 points" in text
    verdict = "consider stopping" if gain < 0.5 else "labelling still pays"
    assert f"your 0.5-point threshold — {verdict}" in text
    assert 'data-chart="feasibility"' in body and 'id="feasibility-data"' in body
    assert "a manager sets it" in body and 'name="stop_gain_points"' not in body  # bob only reads


@pytest.mark.parametrize("hx", [False, True])
def test_a_manager_sets_the_threshold_and_the_signal_follows(project, alice, login, htmx, hx):
    record_curve(project, CURVE)
    gain = feasibility.project([n for n, _ in CURVE], [f for _, f in CURVE],
                               sigma=[0.08 / 3.92] * len(CURVE)).gain_points()
    client = login(alice)
    extra = htmx if hx else {}
    url = reverse("learning:projection", args=[project.pk])
    response = client.post(url, {"stop_gain_points": f"{gain + 1:.2f}"}, **extra)
    assert ProjectionSetting.objects.get(project=project).stop_gain_points == pytest.approx(round(gain + 1, 2))
    if hx:
        assert "consider stopping" in sentence(response.content.decode())
    else:
        assert response.status_code == 302
    response = client.post(url, {"stop_gain_points": f"{max(gain - 0.2, 0):.2f}"}, **extra)
    body = client.get(url, **htmx).content.decode()
    assert "labelling still pays" in sentence(body)
    for bad, message in (("lots", "is not a number"), ("-1", "from 0 to 100"), ("nan", "from 0 to 100"), ("", "")):
        response = client.post(url, {"stop_gain_points": bad}, **extra)
        assert response.status_code == 400 and message in response.content.decode()
    kept = ProjectionSetting.objects.get(project=project).stop_gain_points
    assert kept == pytest.approx(round(max(gain - 0.2, 0), 2))


def test_who_may_read_and_set_the_threshold(project, alice, bob, charlie, team, login):
    record_curve(project, CURVE)
    viewer = User.objects.create_user(username="vera")
    Membership.objects.create(team=team, user=viewer, role=Role.VIEWER)
    url = reverse("learning:projection", args=[project.pk])
    assert login(viewer).get(url).status_code == 200
    assert login(bob).post(url, {"stop_gain_points": "3"}).status_code == 403
    assert login(viewer).post(url, {"stop_gain_points": "3"}).status_code == 403
    assert login(charlie).get(url).status_code == 404
    assert login(charlie).post(url, {"stop_gain_points": "3"}).status_code == 404
    assert not ProjectionSetting.objects.exists()


def test_no_projection_until_the_curve_is_long_enough_and_a_poll_is_cheap(project, alice, login, htmx):
    url = reverse("learning:projection", args=[project.pk])
    client = login(alice)
    assert "No projection yet" in sentence(client.get(url, **htmx).content.decode())
    record_curve(project, CURVE[:3])
    body = client.get(url, **htmx).content.decode()
    assert "No projection yet: 4 model versions with a quality report are needed (this curve has 3)" in sentence(body)
    version = re.search(r"\?v=([^\"]+)\"", body).group(1)
    assert client.get(url, {"v": version}, **htmx).status_code == 204
    record_curve(project, CURVE[3:], start=4)
    assert client.get(url, {"v": version}, **htmx).status_code == 200


def test_versions_of_another_label_set_are_left_out(project, alice, login, htmx):
    # Before a merge the model had three labels: a different task, whose curve does not continue this one.
    record_curve(project, [(n + 1, 0.3) for n, _ in CURVE[:6]], label_keys=["a", "b", "c"])
    record_curve(project, CURVE[7:], start=8)
    body = login(alice).get(reverse("learning:projection", args=[project.pk]), **htmx).content.decode()
    assert "No projection yet: 4 model versions" in sentence(body) and "(this curve has 3)" in body


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_the_projection_is_drawn_on_the_dashboard_in_a_browser(live_server, browser, project, alice, settings):
    import os
    from pathlib import Path

    shots = Path(os.environ.get("LABELHUB_SCREENSHOTS", settings.BASE_DIR / "var" / "screenshots"))
    shots.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    record_curve(project, [(n, round(f + rng.normal(0, 0.01), 4)) for n, f in CURVE])
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("response", lambda r: errors.append(f"{r.status} {r.url}")
            if r.status >= 400 and not r.url.endswith("/favicon.ico") else None)
    page.goto(f"{live_server.url}/accounts/login/")
    page.fill("input[name=username]", "alice")
    page.fill("input[name=password]", "alice-password-123")
    page.click("main button[type=submit]")
    page.wait_for_url(f"{live_server.url}/")
    page.goto(f"{live_server.url}{reverse('learning:dashboard', args=[project.pk])}")
    page.wait_for_selector("#projection-sentence")
    page.wait_for_function("() => { const c = document.querySelector('canvas[data-chart=feasibility]');"
                           " return c && window.Chart && Chart.getChart(c) !== undefined; }")
    assert "At 2× labels (1,200) expect macro-F1" in page.inner_text("#projection-sentence")
    page.fill("input[name=stop_gain_points]", "5")
    page.click("#feasibility button[type=submit]")
    page.wait_for_function("() => document.querySelector('#projection-sentence').innerText.includes('your 5-point')")
    assert "consider stopping" in page.inner_text("#projection-sentence")
    page.locator("#feasibility").screenshot(path=str(shots / "dashboard-projection.png"))
    assert not errors, errors

"""Adjudication by keyboard in a real browser: the manager moves to the second disagreement with j, gives it its
final label by its key, then settles the tie left at the top; the training targets follow, and no script is
refused by the Content Security Policy.

Screenshots land in $LABELHUB_SCREENSHOTS (default var/screenshots): adjudication-1-open.png, -2-decided.png,
agreement.png (the agreement page with its pair heat map) and explore.png.
"""
from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from playwright.sync_api import expect

from annotation.adjudication import training_targets
from annotation.models import Adjudication, Annotation, AnnotationSource, ReviewDecision
from projects.models import Example, Membership, Role
from tests.browser import log_in, screenshot_dir

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_a_manager_adjudicates_disagreements_by_keyboard(live_server, browser, project, alice, bob, team):
    carol = User.objects.create_user(username="carol", password="carol-password-123")
    Membership.objects.create(team=team, user=carol, role=Role.ANNOTATOR)
    version = project.current_taxonomy()
    keys = dict(version.labels.values_list("name", "key"))
    answers = {
        "We overrule Smith v. Jones to the extent it conflicts.": {alice: "Yes", bob: "No"},  # tie
        "The earlier case is distinguished, not overruled.": {alice: "No", bob: "No", carol: "Yes"},  # majority No
        "Both readings are possible here.": {bob: "Yes", carol: "No"},  # tie
    }
    examples = {}
    for i, (text, given) in enumerate(answers.items()):
        examples[text] = Example.objects.create(project=project, text=text, content_hash=f"adj{i}")
        for user, name in given.items():
            Annotation.objects.create(example=examples[text], annotator=user, taxonomy_version=version,
                                      label_keys=[keys[name]], source=AnnotationSource.UI)
    ties_first = sorted([examples[t].pk for t, g in answers.items() if len(g) == 2])
    assert training_targets(project).conflicts == ties_first

    page = browser.new_page(viewport={"width": 1280, "height": 900})
    refused: list[str] = []
    page.on("console", lambda msg: refused.append(msg.text) if "Content Security Policy" in msg.text else None)
    log_in(page, live_server, "alice")
    page.goto(f"{live_server.url}/projects/{project.pk}/agreement/")
    page.wait_for_selector("table.heat")
    page.screenshot(path=str(screenshot_dir() / "agreement.png"), full_page=True)
    page.click("text=Adjudicate disagreements (3)")
    page.wait_for_selector("#adjudication-list .adjudicate-item.current")
    shots = screenshot_dir()
    page.screenshot(path=str(shots / "adjudication-1-open.png"), full_page=True)
    items = page.locator("#adjudication-list .adjudicate-item")
    assert items.count() == 3
    second_id = int(items.nth(1).get_attribute("data-example"))

    # j moves to the second tie; "1" (Yes) is its final label.
    page.keyboard.press("j")
    assert "current" in items.nth(1).get_attribute("class")
    page.keyboard.press("1")
    expect(page.locator("#adjudication-list .adjudicate-item")).to_have_count(2)
    assert Adjudication.objects.get(example_id=second_id).label_keys == [keys["Yes"]]

    # The list came back with the first tie current: "2" (No) settles it.
    first_id = int(page.locator("#adjudication-list .adjudicate-item.current").get_attribute("data-example"))
    page.keyboard.press("2")
    expect(page.locator("#adjudication-list .adjudicate-item")).to_have_count(1)
    page.screenshot(path=str(shots / "adjudication-2-decided.png"), full_page=True)
    assert Adjudication.objects.get(example_id=first_id).label_keys == [keys["No"]]
    assert ReviewDecision.objects.filter(action="adjudicate").count() == 2

    targets = training_targets(project)
    assert targets.conflicts == [] and targets.keys[first_id] == [keys["No"]]
    assert targets.keys[second_id] == [keys["Yes"]]
    assert not refused, refused


def test_the_explore_page_clusters_and_sends_a_cluster_to_the_queue(live_server, browser, project, alice,
                                                                    clustered_examples):
    """Not keyboard work, but the page a manager reaches from the same nav: drawn, clustered, acted on."""
    clustered_examples(project, alice, 60, labelled=0)
    labelled = Example.objects.filter(project=project).order_by("id")[:10]
    keys = list(project.current_taxonomy().labels.values_list("key", flat=True))
    # Label only items of the first group (even positions): the other group stays unexplored.
    Annotation.objects.bulk_create(Annotation(example=e, annotator=alice, taxonomy_version=project.current_taxonomy(),
                                              label_keys=[keys[0]], source=AnnotationSource.UI)
                                   for i, e in enumerate(labelled) if i % 2 == 0)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    refused: list[str] = []
    page.on("console", lambda msg: refused.append(msg.text) if "Content Security Policy" in msg.text else None)
    log_in(page, live_server, "alice")
    page.goto(f"{live_server.url}/projects/{project.pk}/")
    page.click("nav.tabs >> text=Explore")
    page.click("text=Cluster the pool")
    expect(page.locator("#explore-results p.notice")).to_contain_text("Clustered.")
    expect(page.locator("article.cluster.unexplored").first).to_be_visible()
    page.screenshot(path=str(screenshot_dir() / "explore.png"), full_page=True)
    page.locator("article.cluster.unexplored").first.locator("text=Label these first").click()
    expect(page.locator("#explore-results p.notice")).to_contain_text("go to the front of the labelling queue")
    assert not refused, refused

"""The labelling flow in a real browser (Debian's Chromium driven by Playwright) with a real rqworker.

An annotator logs in and labels with the keyboard only; after the seed batch the
model's suggestion appears; meanwhile a manager renames one label and merges
another away in the taxonomy editor, and the annotator's next item shows the new
taxonomy. Screenshots land in $LABELHUB_SCREENSHOTS (default var/screenshots).
"""
from __future__ import annotations

import csv
import re

import pytest
from django.conf import settings

from annotation.models import Annotation, ExampleScore
from learning.actions import embed_project
from learning.models import ModelVersion
from projects.importing import content_hash
from projects.models import Example, Membership, Role
from projects.taxonomy import LabelSpec, create_project
from tests.browser import log_in, screenshot_dir

pytestmark = [pytest.mark.browser, pytest.mark.worker, pytest.mark.django_db(transaction=True)]


def demo_truth(n: int) -> dict[str, str]:
    with (settings.BASE_DIR / "demo" / "legal_overruling.csv").open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    # Alternate classes so the seed holds both whatever the seed picks.
    yes = [r for r in rows if r["label"] == "Yes"][: n // 2]
    no = [r for r in rows if r["label"] == "No"][: n - n // 2]
    return {r["text"]: r["label"] for r in yes + no}


def current_text(page) -> str:
    return page.locator("#label-item .item-text").inner_text()


def wait_for_next_item(page, text: str) -> None:
    """Wait until the item on screen is no longer `text`; on failure keep a screenshot to look at."""
    try:
        page.wait_for_function("t => document.querySelector('#label-item .item-text')?.innerText !== t",
                               arg=text, timeout=15000)
    except Exception:
        page.screenshot(path=str(screenshot_dir() / "failure.png"), full_page=True)
        raise


def test_an_annotator_labels_by_keyboard_while_a_manager_edits_the_taxonomy(
        worker, wait_for, live_server, browser, team, alice, bob, settings):
    settings.SEED_SIZE = 8
    project = create_project(team, name="Overruling", task_type="single_label", created_by=alice,
                             labels=[LabelSpec("Yes"), LabelSpec("No"), LabelSpec("Unclear")],
                             guidelines="Yes if the sentence overrules a precedent, otherwise No.")
    truth = demo_truth(80)
    Example.objects.bulk_create(Example(project=project, text=text, content_hash=content_hash(text))
                                for text in truth)
    embed_project(project.pk)  # what the import job does; the seed batch is ranked first
    assert Membership.objects.get(user=bob).role == Role.ANNOTATOR
    shots = screenshot_dir()

    annotator = browser.new_page(viewport={"width": 1280, "height": 860})
    log_in(annotator, live_server, "bob")
    annotator.goto(f"{live_server.url}/projects/{project.pk}/label/")
    annotator.wait_for_selector("#label-item .item-text")

    keys = {"Yes": "1", "No": "2"}
    labelled, suggestion_at = 0, None
    while labelled < 45 and not (labelled >= 20 and suggestion_at is not None):
        if labelled == 20 and suggestion_at is None:
            # The worker trains after the seed batch; give it time before going on.
            wait_for(lambda: ModelVersion.objects.filter(project=project).exists(), timeout=120, process=worker)
        text = current_text(annotator)
        if suggestion_at is None and annotator.locator("#label-item .suggestion").count():
            suggestion_at = labelled
            # The header's model line is its own region (learning:model-status), loaded after the item.
            annotator.locator("#model-status").filter(has_text=re.compile("Model v|No model yet")).wait_for()
            annotator.screenshot(path=str(shots / "labelling-page.png"))
        annotator.keyboard.press(keys[truth[text]])
        wait_for_next_item(annotator, text)
        labelled += 1
    assert labelled >= 20
    assert suggestion_at is not None and suggestion_at >= 8, "no model suggestion after the seed batch"
    assert Annotation.objects.filter(annotator=bob, example__project=project).count() == labelled

    # The manager renames Yes and merges Unclear into No while bob holds an item.
    manager = browser.new_page(viewport={"width": 1280, "height": 900})
    log_in(manager, live_server, "alice")
    manager.goto(f"{live_server.url}/projects/{project.pk}/settings/")
    row = manager.locator("details.label-edit[data-label='Yes']")
    row.locator("summary").click()
    row.locator("input[name=name]").fill("Overrules")
    row.locator("button[value=edit]").click()
    manager.wait_for_selector("text=Renamed 'Yes' to 'Overrules'.")
    row = manager.locator("details.label-edit[data-label='No']")
    row.locator("summary").click()
    row.locator("select[name=merged]").select_option(label="Unclear")
    row.locator("button[value=merge]").click()
    # A merge rewrites annotations: the editor asks first, with the count.
    manager.locator("#merge-confirm").filter(has_text="Merge “Unclear” into “No”?").wait_for()
    manager.locator("#merge-confirm button[value=merge]").click()
    manager.wait_for_selector("text=Merged 'Unclear' into 'No'")
    manager.locator("details.label-edit[data-label='Overrules'] summary").click()
    manager.screenshot(path=str(shots / "taxonomy-editor.png"), full_page=True)

    # bob submits the item he held (its key survived the rename) and gets the new taxonomy.
    text = current_text(annotator)
    annotator.keyboard.press("1" if truth[text] == "Yes" else "2")
    wait_for_next_item(annotator, text)
    buttons = annotator.locator("#label-item .label-btn").all_inner_texts()
    assert any("Overrules" in b for b in buttons) and not any("Yes" in b for b in buttons)
    assert not any("Unclear" in b for b in buttons)
    assert "Taxonomy v3" in annotator.locator("#label-item .label-progress").inner_text()

    # Skip, undo and help work from the keyboard too.
    before = current_text(annotator)
    annotator.keyboard.press("s")
    wait_for_next_item(annotator, before)
    annotator.keyboard.press("u")
    annotator.wait_for_selector("text=Undone: label this item again.")
    annotator.keyboard.press("?")
    assert annotator.locator("#help-dialog").is_visible()
    annotator.keyboard.press("Escape")

    # An XSS payload in a comment is shown as text.
    annotator.keyboard.press("c")
    annotator.keyboard.type("<img src=x onerror=alert(1)> looks like a citation")
    annotator.keyboard.press("Control+Enter")
    annotator.wait_for_selector("#comment-thread .comment-body")
    assert "<img src=x" in annotator.locator("#comment-thread .comment-body").inner_text()
    annotator.screenshot(path=str(shots / "labelling-page-after-edit.png"))

    manager.goto(f"{live_server.url}/projects/{project.pk}/dashboard/")
    manager.wait_for_load_state("networkidle")
    manager.screenshot(path=str(shots / "dashboard.png"), full_page=True)
    assert (shots / "labelling-page.png").stat().st_size > 10_000


def test_multi_label_items_are_ticked_by_key_and_submitted_with_enter(live_server, browser, multi_project, alice,
                                                                       bob):
    project = multi_project
    keys = {label.name: label.key for label in project.current_taxonomy().labels.all()}
    texts = ["My laptop will not boot and I cannot log in to the VPN either.",
             "Please reset my password, the account is locked.",
             "Invoice 1043 was charged twice this month."]
    examples = Example.objects.bulk_create(
        Example(project=project, text=t, content_hash=content_hash(t), metadata={"queue": "EMEA", "priority": "P2"})
        for t in texts)
    version = ModelVersion.objects.create(project=project, number=1, taxonomy_version=project.current_taxonomy(),
                                          label_keys=list(keys.values()), encoder="e", strategy="bald",
                                          n_labels=10, artifact=b"")
    for example, predicted, priority in zip(examples, (["Hardware"], ["Access"], ["Billing"]), (3, 2, 1),
                                            strict=True):
        ExampleScore.objects.create(example=example, project=project, model_version_number=version.number,
                                    priority=priority, predicted_keys=[keys[n] for n in predicted], confidence=0.71)
    page = browser.new_page(viewport={"width": 1280, "height": 760})
    log_in(page, live_server, "bob")
    page.goto(f"{live_server.url}/projects/{project.pk}/label/")
    assert page.locator("#label-item input[type=checkbox]:checked").count() == 1  # the suggestion
    page.keyboard.press("2")  # tick Access as well
    page.screenshot(path=str(screenshot_dir() / "labelling-page-multi-label.png"))
    text = current_text(page)
    page.keyboard.press("Enter")
    wait_for_next_item(page, text)
    annotation = Annotation.objects.get(annotator=bob)
    assert annotation.example == examples[0]
    assert sorted(annotation.label_keys) == sorted([keys["Hardware"], keys["Access"]])

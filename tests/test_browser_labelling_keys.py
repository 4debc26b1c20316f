"""The labelling page by keyboard in a real browser: label buttons that start with their key and show their
description, the guidelines panel one key away, and a long document scrolled without the mouse.

Screenshots land in $LABELHUB_SCREENSHOTS (default var/screenshots).
"""
from __future__ import annotations

import pytest

from annotation.models import Annotation
from projects.importing import content_hash
from projects.models import Example
from projects.taxonomy import LabelSpec, create_project
from tests.browser import log_in, screenshot_dir

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

GUIDELINES = "Label the holding, not the dicta.\nIf the court only distinguishes a case, it does not overrule it."


def scroll_top(page) -> float:
    return page.evaluate("document.querySelector('#label-item .item-text').scrollTop")


def test_keys_open_the_guidelines_and_scroll_a_long_document_without_taking_a_label(live_server, browser, team,
                                                                                     alice, bob):
    project = create_project(
        team, name="Overruling", task_type="single_label", created_by=alice, guidelines=GUIDELINES,
        labels=[LabelSpec("Overrules", description="The court expressly overrules an earlier decision."),
                LabelSpec("Does not overrule", description="Anything else, including distinguishing a case."),
                LabelSpec("Unclear")])
    opinion = "\n\n".join(f"¶ {i}. The appellant contends that the earlier ruling in Smith v. Jones controls; "
                          f"we consider the argument at length." for i in range(1, 80))
    Example.objects.create(project=project, text=opinion, content_hash=content_hash(opinion))
    short = "We overrule Smith v. Jones."
    Example.objects.create(project=project, text=short, content_hash=content_hash(short))

    page = browser.new_page(viewport={"width": 1280, "height": 820})
    refused: list[str] = []
    page.on("console", lambda msg: refused.append(msg.text) if "Content Security Policy" in msg.text else None)
    log_in(page, live_server, "bob")
    page.goto(f"{live_server.url}/projects/{project.pk}/label/")
    page.wait_for_selector("#label-item .item-text")
    shots = screenshot_dir()

    # Each button starts with its key, drawn as a key, and shows what the label means.
    first = page.locator("#label-item .label-btn").first
    assert first.locator("kbd.key").inner_text() == "1"
    assert first.inner_text().startswith("1")
    assert first.locator(".label-desc").is_visible()
    assert "expressly overrules" in first.locator(".label-desc").inner_text()

    # The long document scrolls by key; no label is given meanwhile.
    assert page.locator("#label-item .item-text").inner_text().startswith("¶ 1.")
    assert scroll_top(page) == 0
    page.keyboard.press("j")
    after_j = scroll_top(page)
    assert after_j > 0
    page.keyboard.press("PageDown")
    after_page = scroll_top(page)
    assert after_page > after_j + 100
    page.keyboard.press("k")
    assert scroll_top(page) < after_page
    page.keyboard.press("End")
    at_end = page.evaluate("(() => { const t = document.querySelector('#label-item .item-text');"
                           " return t.scrollTop + t.clientHeight >= t.scrollHeight - 2; })()")
    assert at_end
    page.screenshot(path=str(shots / "labelling-keys-scrolled.png"))
    page.keyboard.press("Home")
    assert scroll_top(page) == 0
    assert not Annotation.objects.exists()

    # g: the guidelines and every label's description; g again closes it.
    page.keyboard.press("g")
    guide = page.locator("#guide-dialog")
    assert guide.is_visible()
    assert "Label the holding, not the dicta." in guide.inner_text()
    assert "Anything else, including distinguishing a case." in guide.inner_text()
    page.screenshot(path=str(shots / "labelling-guide-panel.png"))
    page.keyboard.press("g")
    assert not guide.is_visible()
    # ? lists the keys, the scrolling ones included; Escape closes it.
    page.keyboard.press("?")
    assert page.locator("#help-dialog").is_visible()
    assert "scroll a long text" in page.locator("#help-dialog").inner_text()
    page.keyboard.press("Escape")
    assert not page.locator("#help-dialog").is_visible()

    # The label keys still label: 1 saves "Overrules" and the next item comes.
    page.keyboard.press("1")
    page.wait_for_function("t => document.querySelector('#label-item .item-text')?.innerText === t", arg=short)
    annotation = Annotation.objects.get()
    assert annotation.example.text == opinion and annotation.label_keys == [
        project.current_taxonomy().labels.get(name="Overrules").key]
    page.screenshot(path=str(shots / "labelling-keys-page.png"))
    assert not refused, refused

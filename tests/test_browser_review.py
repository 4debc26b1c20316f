"""A manager works the data-quality review queue by keyboard in a real browser: from the dashboard's count to the
likely mislabels, keep (k), change by the label's key, send back (r) and comment (c), every decision recorded.

Screenshots land in $LABELHUB_SCREENSHOTS (default var/screenshots).
"""
from __future__ import annotations

import re

import pytest

from annotation.models import Annotation, Comment, Relabel, ReviewDecision, ReviewKind
from annotation.review_queue import open_candidates
from learning.models import RunStatus, TrainingRun
from tests.browser import log_in, screenshot_dir

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def current(page) -> str:
    return page.locator("#review-queue .review-item.current").get_attribute("data-candidate")


def test_a_manager_works_the_review_queue_by_keyboard(live_server, browser, project, alice, bob, add_examples,
                                                      label_examples, train):
    # 30 + 30 clearly separated texts, 4 of each side labelled the other way by bob; 10 unlabelled.
    overrule = [f"we overrule case {i}" for i in range(30)]
    affirm = [f"we affirm case {i}" for i in range(30)]
    examples = add_examples(project, overrule + affirm + [f"pool text {i}" for i in range(10)])
    names = ["Yes"] * 30 + ["No"] * 30
    for i in (0, 1, 2, 3, 30, 31, 32, 33):
        names[i] = "No" if names[i] == "Yes" else "Yes"
    label_examples(project, bob, examples[:60], names)
    train(project)
    flipped = {examples[i].pk for i in (0, 1, 2, 3, 30, 31, 32, 33)}
    queued = list(open_candidates(project, ReviewKind.MISLABEL))
    assert len(queued) >= 4 and {c.example_id for c in queued[:4]} <= flipped

    page = browser.new_page(viewport={"width": 1280, "height": 900})
    refused: list[str] = []
    page.on("console", lambda msg: refused.append(msg.text) if "Content Security Policy" in msg.text else None)
    log_in(page, live_server, "alice")
    shots = screenshot_dir()

    # The dashboard's count links to the queue.
    page.goto(f"{live_server.url}/projects/{project.pk}/dashboard/")
    summary = page.locator("section#review-summary")
    summary.wait_for()
    assert re.search(rf"\b{len(queued)}\b\s+likely mislabels", summary.inner_text())
    summary.scroll_into_view_if_needed()
    page.screenshot(path=str(shots / "review-dashboard-counts.png"))
    summary.get_by_role("link", name=re.compile("likely mislabels")).click()
    page.wait_for_selector("#review-queue .review-item.current")
    assert "tab=mislabel" in page.url
    page.screenshot(path=str(shots / "review-queue-mislabels.png"), full_page=True)
    first = page.locator("#review-queue .review-item.current")
    assert "bob" in first.locator(".given").inner_text() and "%" in first.locator(".model").inner_text()
    assert "Out of fold" in first.locator(".reason").inner_text()

    # k keeps the label: the item leaves, the count goes down, the decision is recorded.
    # htmx's settling (20 ms after a swap) is stretched so that keys fall inside it, as a fast reviewer's do: the
    # swapped-in forms must already be htmx's (a key there once made the browser post the form itself and reload
    # the page), the item chosen with ↓ must stay chosen, and a comment being typed must keep the focus. Every
    # decision below is a swap, never a page load.
    page.evaluate("htmx.config.defaultSettleDelay = 400")
    loads: list[str] = []
    page.on("framenavigated", lambda frame: loads.append(frame.url) if frame == page.main_frame else None)
    kept = current(page)
    page.keyboard.press("k")
    page.wait_for_selector(f"#review-item-{kept}", state="detached")
    assert page.locator("#review-queue .msg.success").inner_text() == "Kept the label."
    assert page.locator('nav.review-tabs a[data-tab="mislabel"] .count').inner_text() == str(len(queued) - 1)
    decision = ReviewDecision.objects.get()
    assert (decision.action, decision.decided_by) == ("keep", alice)

    # ↓ moves to the next item; its model label's key changes the label to it. Settling gives swapped items their
    # server classes back; the item chosen with ↓ must stay the one the key acts on.
    page.keyboard.press("ArrowDown")
    second = current(page)
    page.wait_for_timeout(600)
    assert current(page) == second
    assert second != page.locator("#review-queue .review-item").first.get_attribute("data-candidate")
    candidate = next(c for c in queued if str(c.pk) == second)
    key = page.locator(f"#review-item-{second} .label-btn.suggested kbd.key").inner_text()
    page.keyboard.press(key)
    page.wait_for_selector(f"#review-item-{second}", state="detached")
    mine = Annotation.objects.get(example_id=candidate.example_id, annotator=alice)
    assert mine.label_keys == candidate.model_keys
    assert ReviewDecision.objects.get(example_id=candidate.example_id).action == "change"
    assert TrainingRun.objects.filter(project=project, status=RunStatus.QUEUED).exists()
    page.screenshot(path=str(shots / "review-queue-after-change.png"), full_page=True)

    # r sends the (new) current item back for relabelling.
    third = current(page)
    page.keyboard.press("r")
    page.wait_for_selector(f"#review-item-{third}", state="detached")
    sent = next(c for c in queued if str(c.pk) == third)
    assert Relabel.objects.filter(example_id=sent.example_id, done_at__isnull=True).exists()

    # c opens the thread; Ctrl+Enter sends; the item stays, with the comment shown.
    fourth = current(page)
    page.keyboard.press("c")
    box = page.locator(f"#review-item-{fourth} textarea[name=note]")
    assert box.is_visible() and box.evaluate("el => el === document.activeElement")
    box.type("Is 'we overrule' ever used for a partial overruling?")
    assert box.input_value() == "Is 'we overrule' ever used for a partial overruling?"
    page.screenshot(path=str(shots / "review-queue-comment.png"), full_page=True)
    page.keyboard.press("Control+Enter")
    page.wait_for_selector(f"#review-item-{fourth} .review-comment")
    assert "partial overruling" in page.locator(f"#review-item-{fourth} .review-comment").inner_text()
    assert Comment.objects.get().author == alice
    assert list(ReviewDecision.objects.order_by("decided_at").values_list("action", flat=True)) == [
        "keep", "change", "relabel", "comment"]
    page.screenshot(path=str(shots / "review-queue-commented.png"), full_page=True)
    assert not loads, loads
    assert not refused, refused

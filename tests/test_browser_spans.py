"""Span tagging in a real browser (Debian's Chromium driven by Playwright).

An annotator tags conll2003 sentences with the keyboard only (cursor, Shift selection, a label's key, Enter),
accepts and rejects the model's dashed suggestions with `a` / `x`, and removes a span with Backspace; the mouse
tags by drag and double-click. A 50,000-character document with 300 spans is drawn and answers keys within
50 ms (measured in the page with performance.now() and printed: benchmarks/README.md records the figures).
The loop with a real worker (suggestions appearing after the seed batch) is the last test.
Screenshots land in $LABELHUB_SCREENSHOTS (default var/screenshots).
"""
from __future__ import annotations

import json
import re
import statistics
from pathlib import Path

import pytest

from annotation.models import Annotation, ExampleScore
from projects.importing import content_hash
from projects.models import Example
from projects.spanformats import spans_from_tags
from projects.taxonomy import LabelSpec, create_project
from tests.browser import log_in, screenshot_dir

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

CONLL = Path("/work/shared/data/conll2003/train.jsonl")
NAMES = ("PER", "ORG", "LOC", "MISC")


def conll_sentences(n: int, *, min_entities: int = 1, skip: int = 0) -> list[tuple[str, list, list]]:
    """(text, offsets, spans) of real conll2003 training sentences with entities, in file order."""
    if not CONLL.exists():
        pytest.skip("../shared/data/conll2003 is not here")
    found = []
    with CONLL.open(encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            text, offsets, spans = spans_from_tags(row["tokens"], row["tags"])
            if len(spans) >= min_entities and len(row["tokens"]) >= 5:
                found.append((text, offsets, spans))
                if len(found) == n + skip:
                    return found[skip:]
    return found[skip:]


def make_span_project(team, alice, name: str = "News entities"):
    return create_project(team, name=name, task_type="span", created_by=alice,
                          guidelines="Tag people, organisations, places and other names (MISC).",
                          labels=[LabelSpec(n, description=f"{n}: conll2003's {n} entities") for n in NAMES])


def add_examples(project, sentences, priority_from: float = 1000.0) -> list[Example]:
    examples = []
    for i, (text, offsets, _spans) in enumerate(sentences):
        example = Example.objects.create(project=project, text=text, content_hash=content_hash(text),
                                         tokens=[list(o) for o in offsets])
        ExampleScore.objects.create(example=example, project=project, priority=priority_from - i)
        examples.append(example)
    return examples


def shown(page) -> dict:
    return page.evaluate("JSON.parse(document.getElementById('span-data').textContent)")


def wait_for_item(page, previous_text: str | None) -> dict:
    try:
        page.wait_for_function(
            "t => { const d = document.getElementById('span-data'); return d && JSON.parse(d.textContent).text !== t"
            " && document.querySelector('#label-item .span-text .t'); }", arg=previous_text, timeout=20000)
    except Exception:
        page.screenshot(path=str(screenshot_dir() / "spans-failure.png"), full_page=True)
        raise
    return shown(page)


def tag_by_keyboard(page, offsets, spans, shortcut: dict[str, str]) -> None:
    """From the first token, move to each span with →, select it with Shift+→ and press its label's key."""
    starts = {start: i for i, (start, _end) in enumerate(offsets)}
    ends = {end: i for i, (_start, end) in enumerate(offsets)}
    cursor = 0
    for span in sorted(spans, key=lambda s: s["start"]):
        a, b = starts[span["start"]], ends[span["end"]]
        for _ in range(a - cursor):
            page.keyboard.press("ArrowRight")
        for _ in range(b - a):
            page.keyboard.press("Shift+ArrowRight")
        page.keyboard.press(shortcut[span["label"]])
        cursor = b


def test_keyboard_tagging_suggestions_and_mouse_on_conll_sentences(live_server, browser, team, alice, bob):
    project = make_span_project(team, alice)
    keys = {label.name: label.key for label in project.current_taxonomy().labels.all()}
    shortcut = {label.name: label.shortcut for label in project.current_taxonomy().labels.all()}
    sentences = conll_sentences(4, min_entities=2)
    examples = add_examples(project, sentences)
    # The model's suggestions on the second sentence: one right, one of the wrong type, one wrong and dashed.
    text2, offsets2, truth2 = sentences[1]
    wrong = {**truth2[1], "label": "PER" if truth2[1]["label"] != "PER" else "ORG"}
    ExampleScore.objects.filter(example=examples[1]).update(model_version_number=1, suggested_spans=[
        {**{k: truth2[0][k] for k in ("start", "end")}, "label": keys[truth2[0]["label"]], "confidence": 0.93},
        {**{k: wrong[k] for k in ("start", "end")}, "label": keys[wrong["label"]], "confidence": 0.41},
    ])
    page = browser.new_page(viewport={"width": 1280, "height": 860})
    refused: list[str] = []
    page.on("console", lambda msg: refused.append(msg.text) if "Content Security Policy" in msg.text else None)
    log_in(page, live_server, "bob")
    page.goto(f"{live_server.url}/projects/{project.pk}/label/")
    data = wait_for_item(page, None)
    shots = screenshot_dir()

    # 1. Keyboard only: every entity of the first sentence; a wrong tag fixed by tagging over it.
    text, offsets, truth = sentences[0]
    assert data["text"] == text
    page.keyboard.press("Shift+ArrowRight")
    page.keyboard.press(shortcut["LOC"])
    status = page.locator("#span-status").inner_text()
    assert "Tagged" in status and "as LOC" in status and "1 span" in status
    page.keyboard.press("Home")
    page.keyboard.press(shortcut["PER"])  # over the LOC span: it is replaced, never overlapped
    status = page.locator("#span-status").inner_text()
    assert "replaced LOC" in status and "1 span" in status, status
    page.keyboard.press("Backspace")
    assert "0 spans" in page.locator("#span-status").inner_text()
    # Ctrl+→ jumps 5 tokens (or to a sentence start, none in this sentence's first tokens); Ctrl+← back.
    cursor = "#label-item .span-text .t.cur"
    assert page.locator(cursor).get_attribute("data-i") == "0"
    page.keyboard.press("Control+ArrowRight")
    assert page.locator(cursor).get_attribute("data-i") == str(min(5, len(offsets) - 1))
    page.keyboard.press("Control+ArrowLeft")
    assert page.locator(cursor).get_attribute("data-i") == "0"
    tag_by_keyboard(page, offsets, truth, shortcut)
    assert page.locator("#label-item .span-text .t.s-last").count() == len(truth)
    page.screenshot(path=str(shots / "spans-tagged.png"))
    page.keyboard.press("Enter")
    data = wait_for_item(page, text)
    saved = Annotation.objects.get(example=examples[0])
    assert saved.spans == [{**s, "label": keys[s["label"]]} for s in truth]
    assert saved.label_keys == sorted({keys[s["label"]] for s in truth})

    # 2. Suggestions: dashed with their confidence; Tab goes to each, `a` accepts, `x` rejects.
    assert data["text"] == text2
    assert page.locator("#label-item .span-text .t.sugg").count() > 0
    assert "93%" in page.locator("#label-item .span-text .t.sugg[data-tag]").first.get_attribute("data-tag")
    page.screenshot(path=str(shots / "spans-suggestions.png"))
    page.keyboard.press("Tab")
    page.keyboard.press("a")
    assert "Accepted" in page.locator("#span-status").inner_text()
    page.keyboard.press("Tab")
    page.keyboard.press("x")
    assert "Rejected" in page.locator("#span-status").inner_text()
    assert page.locator("#label-item .span-text .t.sugg").count() == 0
    # ... and tag the rejected one right, plus any other entity, by keyboard.
    page.keyboard.press("Home")
    tag_by_keyboard(page, offsets2, truth2[1:], shortcut)
    page.keyboard.press("Enter")
    data = wait_for_item(page, text2)
    assert Annotation.objects.get(example=examples[1]).spans == [{**s, "label": keys[s["label"]]} for s in truth2]

    # 3. Backspace removes a span; undo (u) brings the last item back with its suggestions; then the mouse.
    text3, offsets3, truth3 = sentences[2]
    page.keyboard.press("End")
    page.keyboard.press(shortcut["MISC"])
    assert page.locator("#label-item .span-text .t.s").count() == 1
    page.keyboard.press("Backspace")
    assert page.locator("#label-item .span-text .t.s").count() == 0
    assert "Removed" in page.locator("#span-status").inner_text()
    # The mouse: pick ORG in the legend, drag over two tokens, double-click another token.
    page.locator(f"#label-item .span-label[data-key='{keys['ORG']}']").click()
    first, second = page.locator("#label-item .span-text .t").nth(0), page.locator("#label-item .span-text .t").nth(1)
    first.hover()
    page.mouse.down()
    second.hover()
    page.mouse.up()
    page.locator("#label-item .span-text .t").nth(3).dblclick()
    assert page.locator("#label-item .span-text .t.s-last").count() == 2
    page.screenshot(path=str(shots / "spans-mouse.png"))
    page.keyboard.press("Enter")
    wait_for_item(page, text3)
    mouse_spans = Annotation.objects.get(example=examples[2]).spans
    assert [(s["start"], s["end"], s["label"]) for s in mouse_spans] == [
        (offsets3[0][0], offsets3[1][1], keys["ORG"]), (offsets3[3][0], offsets3[3][1], keys["ORG"])]
    page.keyboard.press("u")
    data = wait_for_item(page, sentences[3][0])
    assert data["text"] == text3 and not Annotation.objects.filter(example=examples[2]).exists()

    # 4. The guidelines and every label's description are one key away; ? lists the span keys.
    page.keyboard.press("g")
    assert "conll2003's ORG entities" in page.locator("#guide-dialog").inner_text()
    page.keyboard.press("g")
    page.keyboard.press("?")
    assert "accept / reject the model's suggestion" in page.locator("#help-dialog").inner_text()
    page.keyboard.press("Escape")
    assert not refused, refused


def long_document(n_chars: int = 50_000, n_spans: int = 300) -> tuple[str, list[list[int]], list[dict]]:
    """Real conll2003 sentences, one per line, to 50,000 characters; the first 300 entities as spans."""
    parts, offsets, spans, position = [], [], [], 0
    for text, sentence_offsets, sentence_spans in conll_sentences(3000, min_entities=0):
        parts.append(text)
        offsets += [[start + position, end + position] for start, end in sentence_offsets]
        spans += [{**s, "start": s["start"] + position, "end": s["end"] + position} for s in sentence_spans]
        position += len(text) + 1
        if position >= n_chars:
            break
    text = "\n".join(parts)[:n_chars]
    offsets = [o for o in offsets if o[1] <= len(text)]
    spans = [s for s in spans if s["end"] <= len(text)]
    step = len(spans) / n_spans
    return text, offsets, [spans[int(i * step)] for i in range(n_spans)]


KEY_TIMING = """async ([key, shift, ctrl]) => {
  const t0 = performance.now();
  document.dispatchEvent(new KeyboardEvent("keydown", {key, shiftKey: shift, ctrlKey: ctrl, bubbles: true,
                                                       cancelable: true}));
  const handled = performance.now() - t0;
  await new Promise((resolve) => requestAnimationFrame(() => setTimeout(resolve, 0)));
  return [handled, performance.now() - t0];
}"""


def test_a_50k_character_document_with_300_spans_answers_each_key_within_50_ms(live_server, browser, team, alice,
                                                                                bob):
    project = make_span_project(team, alice, name="Long filings")
    keys = {label.name: label.key for label in project.current_taxonomy().labels.all()}
    text, offsets, spans = long_document()
    assert len(text) == 50_000 and len(spans) == 300
    example = Example.objects.create(project=project, text=text, content_hash=content_hash(text), tokens=offsets)
    ExampleScore.objects.create(example=example, project=project, model_version_number=1, suggested_spans=[
        {**s, "label": keys[s["label"]], "confidence": 0.5 + (i % 50) / 100} for i, s in enumerate(spans)])
    page = browser.new_page(viewport={"width": 1280, "height": 860})
    log_in(page, live_server, "bob")
    # The renderer's main-thread busy time (Chrome's own counters), beside the wall-clock figures: on a loaded
    # machine the two differ by the time the renderer waited for a core.
    cdp = page.context.new_cdp_session(page)
    cdp.send("Performance.enable")

    def busy() -> dict[str, float]:
        metrics = {m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]}
        # ThreadTime: CPU time of the renderer's main thread; ProcessTime: of the whole renderer process.
        return {k: metrics.get(k, 0.0) * 1000 for k in ("ThreadTime", "ProcessTime", "TaskDuration",
                                                         "ScriptDuration", "LayoutDuration", "RecalcStyleDuration")}

    before = busy()
    page.goto(f"{live_server.url}/projects/{project.pk}/label/")
    page.wait_for_function("performance.getEntriesByName('span-render-frame').length > 0", timeout=20000)
    loaded = busy()
    render = page.evaluate("performance.getEntriesByName('span-render')[0].duration")
    render_frame = page.evaluate("performance.getEntriesByName('span-render-frame')[0].duration")
    # Blocks near the screen are drawn as tokens at once, the rest as they come near it (End, below, draws the last).
    assert 0 < page.locator("#label-item .span-text .t").count() < len(offsets)
    assert page.evaluate("Array.from(document.querySelectorAll('#label-item .span-text .ln'),"
                         " (line) => line.textContent).join('\\n')") == text
    assert "The model suggests 300 spans" in page.locator("#span-status").inner_text()

    # Moves (arrows, Ctrl+arrows, Shift selection, Tab to the next suggestion, Home / End) and edits (a tag over
    # suggestions, which replaces them; accept; reject; remove), from the top of the document to its end.
    plan = ([("ArrowRight", False, False)] * 30 + [("ArrowRight", False, True)] * 20
            + [("ArrowRight", True, False)] * 10 + [("2", False, False)]
            + [("Tab", False, False)] * 10 + [("ArrowRight", True, True)] * 2 + [("3", False, False)]
            + [("Tab", False, False)] * 10
            + [("a", False, False), ("Tab", False, False), ("x", False, False), ("Backspace", False, False)]
            + [("End", False, False), ("ArrowLeft", True, True), ("ArrowLeft", True, True), ("4", False, False),
               ("Home", False, False)])
    timings: dict[str, list[tuple[float, float]]] = {"move": [], "edit": []}
    statuses = []
    cpu = {"move": 0.0, "edit": 0.0}
    for key, shift, ctrl in plan:
        edit = key in ("2", "3", "4", "a", "x", "Backspace")
        cpu_before = busy()["ThreadTime"]
        handled, frame = page.evaluate(KEY_TIMING, [key, shift, ctrl])
        cpu["edit" if edit else "move"] += busy()["ThreadTime"] - cpu_before
        timings["edit" if edit else "move"].append((handled, frame))
        if edit:
            statuses.append(page.locator("#span-status").inner_text())
    page.screenshot(path=str(screenshot_dir() / "spans-50k.png"))
    assert any("replaced suggested" in status for status in statuses), statuses
    assert any("Accepted" in status for status in statuses) and any("Rejected" in status for status in statuses)

    def summary(rows: list[tuple[float, float]]) -> dict[str, float]:
        handled, frame = [r[0] for r in rows], [r[1] for r in rows]
        return {"n": len(rows), "handler_p50_ms": round(statistics.median(handled), 2),
                "handler_max_ms": round(max(handled), 2), "frame_p50_ms": round(statistics.median(frame), 2),
                "frame_max_ms": round(max(frame), 2)}

    figures = {"chars": len(text), "tokens": len(offsets), "spans": 300, "render_ms": round(render, 1),
               "render_to_frame_ms": round(render_frame, 1),
               "move": summary(timings["move"]), "edit": summary(timings["edit"]),
               "page_load_ms": {k: round(loaded[k] - before[k], 1) for k in loaded},
               "main_thread_cpu_per_key_ms": {kind: round(cpu[kind] / len(timings[kind]), 2) for kind in cpu}}
    print("SPAN_PAGE_TIMING", json.dumps(figures))
    # Under 50 ms from the key to the next frame on screen (the frame wait alone is up to 16.7 ms at 60 Hz).
    assert figures["move"]["frame_p50_ms"] < 50 and figures["edit"]["frame_p50_ms"] < 50, figures
    # (Wall-clock maxima are printed, not asserted: at a load of 30 on 2 cores a key can wait 50 ms for a core.)
    # CPU, which a loaded machine does not inflate as it does the wall clock: the main thread's time per key,
    # and for opening the page (HTML, htmx, the JSON, the first blocks of tokens, style, layout).
    assert max(figures["main_thread_cpu_per_key_ms"].values()) < 50, figures
    # Opening it is not within 50 ms here (about 280 ms of main-thread CPU for the whole page at load 30 on 2
    # cores; benchmarks/README.md); this bound catches drawing every token up front again (several times that).
    assert figures["page_load_ms"]["ThreadTime"] < 500, figures

    assert page.locator(f"#label-item .span-text .t[data-i='{len(offsets) - 1}']").count() == 1  # End drew it
    # What the page counts (spans of the annotator's and suggestions still dashed) is what Enter stores.
    counts = re.search(r"(\d+) spans?(?:, (\d+) suggested)?", page.locator("#span-status").inner_text())
    on_screen = int(counts.group(1)) + int(counts.group(2) or 0)
    page.keyboard.press("Enter")
    page.wait_for_selector("text=Nothing left to label for you right now.")
    stored = Annotation.objects.get(example=example).spans
    assert len(stored) == on_screen and 290 <= on_screen <= 305


@pytest.mark.worker
@pytest.mark.slow
def test_an_annotator_tags_20_sentences_by_keyboard_and_accepts_the_models_suggestion(
        worker, wait_for, live_server, browser, team, alice, bob, settings, tmp_path):
    """The whole loop with a real rqworker: the seed batch tagged by keyboard, the worker trains the span model
    and writes suggested spans, the annotator accepts one with `a` and submits."""
    from learning.actions import embed_project
    from learning.models import ModelVersion

    settings.SEED_SIZE = 8
    settings.DATA_DIR = tmp_path  # the worker's LABELHUB_DATA_DIR: both see the token vectors
    project = make_span_project(team, alice)
    keys = {label.name: label.key for label in project.current_taxonomy().labels.all()}
    shortcut = {label.name: label.shortcut for label in project.current_taxonomy().labels.all()}
    sentences = conll_sentences(90, min_entities=1)
    by_text = {text: (offsets, spans) for text, offsets, spans in sentences}
    for text, offsets, _spans in sentences:
        Example.objects.create(project=project, text=text, content_hash=content_hash(text),
                               tokens=[list(o) for o in offsets])
    embed_project(project.pk)  # what the import job does: token vectors, and the seed batch ranked first

    page = browser.new_page(viewport={"width": 1280, "height": 860})
    log_in(page, live_server, "bob")
    page.goto(f"{live_server.url}/projects/{project.pk}/label/")
    data = wait_for_item(page, None)
    labelled, accepted = 0, None
    while labelled < 45 and not (labelled >= 20 and accepted is not None):
        if labelled == settings.SEED_SIZE + 2:
            # The worker trains after the seed batch; give it time before going on.
            wait_for(lambda: ModelVersion.objects.filter(project=project).exists(), timeout=400, process=worker)
        offsets, truth = by_text[data["text"]]
        if data["suggested"] and accepted is None:
            # The model's spans are on screen, dashed: go to the first, accept it with `a`, submit.
            assert page.locator("#label-item .span-text .t.sugg").count() > 0
            page.screenshot(path=str(screenshot_dir() / "spans-model-suggestions.png"))
            page.keyboard.press("Home")
            first = min(data["suggested"], key=lambda s: s["start"])
            if first["start"] != offsets[0][0]:
                page.keyboard.press("Tab")
            page.keyboard.press("a")
            assert "Accepted" in page.locator("#span-status").inner_text()
            accepted = (data["text"], {k: first[k] for k in ("start", "end", "label")})
        else:
            if data["suggested"]:  # later items: clear the suggestions (select all, Backspace), then tag
                page.keyboard.press("Home")
                page.keyboard.press("Shift+End")
                page.keyboard.press("Backspace")
                assert page.locator("#label-item .span-text .t.s").count() == 0
            page.keyboard.press("Home")
            tag_by_keyboard(page, offsets, truth, shortcut)
        before = data["text"]
        page.keyboard.press("Enter")
        data = wait_for_item(page, before)
        labelled += 1
    assert labelled >= 20
    assert accepted is not None, "no suggested span appeared after the seed batch"
    text, span = accepted
    stored = Annotation.objects.get(example__text=text, annotator=bob)
    assert span in stored.spans
    # Every item tagged by keys alone was stored with exactly its conll2003 entities.
    for annotation in Annotation.objects.filter(annotator=bob).exclude(example__text=text).select_related("example"):
        offsets, truth = by_text[annotation.example.text]
        assert annotation.spans == [{**s, "label": keys[s["label"]]} for s in truth]
    assert Annotation.objects.filter(annotator=bob).count() == labelled

"""A new manager's first hour, in a real browser (Debian's Chromium via Playwright) with a real rqworker and the real
sentence encoder: create a project, upload a semicolon-separated CSV (as Excel writes it in much of Europe) with some
rows labelled, create the labels the import offers, watch the embedding progress, label 20 items by keyboard, and
export JSONL and CSV, reading the files back.

Screenshots of each step land in $LABELHUB_SCREENSHOTS/first_hour (default var/screenshots/first_hour).
"""
from __future__ import annotations

import csv
import io
import json
import os
import random
import re
import time
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings

from annotation.models import Annotation, AnnotationSource
from projects.models import Dataset, DatasetStatus, Example, Project

pytestmark = [pytest.mark.browser, pytest.mark.worker, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

ROWS = 1000  # enough that encoding them takes a while on a CPU, so the progress can be watched
LABELLED = 60
TO_LABEL = 20
TREC = Path(settings.BASE_DIR).parent / "shared" / "data" / "trec" / "train.csv"


def shots() -> Path:
    path = Path(os.environ.get("LABELHUB_SCREENSHOTS", settings.BASE_DIR / "var" / "screenshots")) / "first_hour"
    path.mkdir(parents=True, exist_ok=True)
    return path


def question_rows() -> list[tuple[str, str]]:
    """TREC questions with their coarse type (DESC, ENTY, HUM, NUM, LOC, ABBR), distinct texts, a fixed sample."""
    if not TREC.exists():
        pytest.skip(f"{TREC} is not here (the shared data sets)")
    with TREC.open(newline="", encoding="utf-8") as handle:
        rows = list({row["text"]: row["label"] for row in csv.DictReader(handle)}.items())
    random.Random(13).shuffle(rows)
    return rows[:ROWS]


def semicolon_csv(rows: list[tuple[str, str]], path: Path) -> Path:
    """The first LABELLED rows carry their type, the rest an empty label cell; ';' between fields."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, delimiter=";")
        writer.writerow(["question", "category"])
        for i, (text, label) in enumerate(rows):
            writer.writerow([text, label if i < LABELLED else ""])
    return path


def text_only(html: str) -> str:
    return " ".join(re.sub(r"<[^>]+>", " ", html).split())


def test_a_managers_first_hour(worker: Any, wait_for: Any, live_server: Any, browser: Any, alice: Any,
                               tmp_path: Path) -> None:
    rows = question_rows()
    truth = dict(rows)
    upload = semicolon_csv(rows, tmp_path / "questions.csv")
    out = shots()
    page = browser.new_page(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))

    # Log in and create a project with no labels.
    page.goto(f"{live_server.url}/accounts/login/")
    page.fill("input[name=username]", "alice")
    page.fill("input[name=password]", "alice-password-123")
    page.click("main button[type=submit]")
    page.wait_for_url(f"{live_server.url}/")
    page.click("text=New project")
    page.fill("input[name=name]", "Client questions")
    page.fill("textarea[name=description]", "What kind of answer does each question ask for?")
    page.screenshot(path=str(out / "01-new-project.png"), full_page=True)
    page.click("main button[type=submit]")
    page.wait_for_url(re.compile(r".*/projects/\d+/datasets/new/$"))
    project = Project.objects.get(name="Client questions")
    assert project.current_taxonomy().labels.count() == 0

    # Upload the semicolon CSV: the preview reads two columns, the label column is found and its labels offered.
    page.set_input_files("input[type=file]", str(upload))
    page.click("#upload-form button[type=submit]")
    page.wait_for_selector("#import-draft")
    assert "“;”-separated" in page.inner_text("#reading-as")
    assert [h.strip().lower() for h in page.locator("#preview thead th").all_inner_texts()] == ["question", "category"]
    first = page.locator("#preview tbody tr").first.locator("td").all_inner_texts()
    assert first == [rows[0][0], rows[0][1]]
    assert page.locator("#id_label_column").input_value() == "category"
    offered = page.inner_text("#labels-found")
    found = sorted({label for _, label in rows[:LABELLED]})
    for label in found:
        assert f"create the label “{label}”" in offered
    page.screenshot(path=str(out / "02-preview.png"), full_page=True)

    # Import, creating the labels offered (each one's "Becomes" is "create the label").
    page.click("#start-import")
    dataset = Dataset.objects.get(project=project)
    wait_for(lambda: Dataset.objects.get(pk=dataset.pk).status in (DatasetStatus.DONE, DatasetStatus.FAILED),
             timeout=180, process=worker)
    dataset.refresh_from_db()
    assert dataset.status == DatasetStatus.DONE, dataset.errors
    assert (dataset.imported_count, dataset.labelled_count) == (ROWS, LABELLED)
    assert sorted(project.current_taxonomy().active_labels().values_list("name", flat=True)) == found
    page.wait_for_selector("text=Imported")
    page.screenshot(path=str(out / "03-imported.png"), full_page=True)

    # The project page shows the encoding progress, live, then the counters.
    page.goto(f"{live_server.url}/projects/{project.pk}/")
    page.locator("#project-counters").filter(has_text=f"/ {ROWS:,}").wait_for(timeout=15000)
    seen: list[tuple[int, int]] = []
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        status = page.locator("#embedding-status")
        shown = status.inner_text() if status.count() and status.is_visible() else ""
        match = re.search(r"Embedding ([\d,]+) / ([\d,]+)", shown)
        if match:
            pair = (int(match.group(1).replace(",", "")), int(match.group(2).replace(",", "")))
            if not seen:
                assert "suggestions start after it" in shown
                page.screenshot(path=str(out / "04-embedding.png"), full_page=True)
            if pair not in seen:
                seen.append(pair)
        elif seen:
            break
        assert worker.poll() is None, "the worker died"
        time.sleep(0.5)
    assert seen, "the project page never showed the embedding progress"
    assert all(total == ROWS for _, total in seen) and seen == sorted(seen)
    # Finished: every example has its vector and the region went quiet by itself (no reload); the model
    # panel followed at once (it says why there is no model yet: now the first training, not the embedding).
    assert not page.locator("#embedding-status").is_visible()
    page.locator("#project-model").filter(has_not_text="Embedding").wait_for(timeout=10000)
    counters = page.locator("#project-counters")
    counters.filter(has_text=f"{LABELLED} / {ROWS:,}").wait_for(timeout=15000)
    assert "Examples 1,000" in text_only(counters.inner_html())
    page.screenshot(path=str(out / "05-embedded.png"), full_page=True)

    # Label 20 items by keyboard, each with its true type; the next item is on screen after each key.
    keys = dict(project.current_taxonomy().active_labels().values_list("name", "shortcut"))
    page.goto(f"{live_server.url}/projects/{project.pk}/label/")
    page.wait_for_selector("#label-item .item-text")
    for n in range(TO_LABEL):
        text = page.locator("#label-item .item-text").inner_text()
        assert text in truth and Example.objects.filter(project=project, text=text).exists()
        page.keyboard.press(keys[truth[text]])
        page.wait_for_function("t => document.querySelector('#label-item .item-text')?.innerText !== t",
                               arg=text, timeout=20000)
        if n == TO_LABEL // 2:
            page.screenshot(path=str(out / "06-labelling.png"), full_page=True)
    given = Annotation.objects.filter(annotator=alice, source=AnnotationSource.UI, example__project=project)
    assert given.count() == TO_LABEL
    assert all(truth[a.example.text] == project.current_taxonomy().labels.get(key=a.label_keys[0]).name
               for a in given.select_related("example"))

    # The project page counts them at once.
    page.goto(f"{live_server.url}/projects/{project.pk}/")
    page.locator("#project-counters").filter(has_text=f"{LABELLED + TO_LABEL} / {ROWS:,}").wait_for(timeout=15000)

    # Export the labelled examples as JSONL and as CSV from the export page, and read the files back.
    page.goto(f"{live_server.url}/projects/{project.pk}/export/")
    page.check("input[name=labelled_only]")
    exported: dict[str, bytes] = {}
    for name in ("jsonl", "csv"):
        page.check(f"input[name=format][value={name}]")
        if name == "jsonl":
            page.screenshot(path=str(out / "07-export.png"), full_page=True)
        with page.expect_download() as download:
            page.click("#export-form button[type=submit]")
        path = download.value.path()
        assert path is not None, download.value.failure()
        exported[name] = Path(path).read_bytes()
    records = [json.loads(line) for line in exported["jsonl"].decode("utf-8").splitlines() if line.strip()]
    table = list(csv.DictReader(io.StringIO(exported["csv"].decode("utf-8-sig"))))
    for got in (records, table):
        assert len(got) == LABELLED + TO_LABEL
        assert {row["text"]: row["label"] for row in got} == {row["text"]: truth[row["text"]] for row in got}
    assert {r["text"] for r in records} == {r["text"] for r in table}
    assert {a.example.text for a in given.select_related("example")} <= {r["text"] for r in records}
    assert errors == []

"""The Export page in a real browser (Debian's Chromium driven by Playwright): a manager goes from the project
page to Export, picks JSONL, labelled only and one metadata column, downloads, and the file reads back; then CSV.
Screenshots land in $LABELHUB_SCREENSHOTS (default var/screenshots)."""
from __future__ import annotations

import csv
import json
import re

import pytest

from annotation.models import Annotation, AnnotationSource
from projects.importing import content_hash
from projects.models import Example
from tests.browser import screenshot_dir

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_a_manager_downloads_an_export_from_the_project_page(live_server, browser, project, alice, tmp_path):
    texts = ["We overrule Smith v. Jones.", "The judgment is affirmed.", "Not yet labelled."]
    examples = Example.objects.bulk_create(
        Example(project=project, text=t, external_id=f"case-{i}", metadata={"court": "9th Cir.", "client": "ACME"},
                content_hash=content_hash(t)) for i, t in enumerate(texts))
    version = project.current_taxonomy()
    keys = dict(version.labels.values_list("name", "key"))
    Annotation.objects.bulk_create(
        Annotation(example=e, annotator=alice, taxonomy_version=version, label_keys=[keys[name]],
                   source=AnnotationSource.UI) for e, name in zip(examples[:2], ["Yes", "No"], strict=True))

    page = browser.new_page(accept_downloads=True, viewport={"width": 1200, "height": 900})
    page.goto(f"{live_server.url}/accounts/login/")
    page.fill("input[name=username]", "alice")
    page.fill("input[name=password]", "alice-password-123")
    page.click("main button[type=submit]")
    page.wait_for_url(re.compile(r".*/$"))
    page.goto(f"{live_server.url}/projects/{project.pk}/")
    page.click("a:text-is('Export')")
    page.wait_for_url(re.compile(r".*/export/$"))
    page.check("input[name=format][value=jsonl]")
    page.check("input[name=labelled_only]")
    page.uncheck("input[name=metadata][value=client]")
    page.screenshot(path=str(screenshot_dir() / "export-page.png"), full_page=True)
    with page.expect_download() as download:
        page.click("#export-form button[type=submit]")
    assert download.value.suggested_filename == "overruling-v1.jsonl"
    path = tmp_path / "export.jsonl"
    download.value.save_as(path)
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert rows == [{"id": "case-0", "text": texts[0], "label": "Yes", "court": "9th Cir."},
                    {"id": "case-1", "text": texts[1], "label": "No", "court": "9th Cir."}]

    page.check("input[name=format][value=csv]")
    page.uncheck("input[name=labelled_only]")
    with page.expect_download() as download:
        page.click("#export-form button[type=submit]")
    path = tmp_path / "export.csv"
    download.value.save_as(path)
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["id"], r["label"], r["court"]) for r in rows] == [
        ("case-0", "Yes", "9th Cir."), ("case-1", "No", "9th Cir."), ("case-2", "", "9th Cir.")]
    assert "client" not in rows[0]

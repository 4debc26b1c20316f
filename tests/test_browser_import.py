"""The upload page in a real browser (Debian's chromium): a Windows-1252 semicolon CSV from Excel is
previewed as read, the delimiter changed and changed back without uploading again, a column hidden,
the labels found created, and the import run by a real worker. Screenshots land in
$LABELHUB_SCREENSHOTS (default var/screenshots)."""
from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import pytest

from projects.models import Dataset, DatasetStatus, Example
from projects.taxonomy import create_project
from tests.browser import screenshot_dir

pytestmark = [pytest.mark.browser, pytest.mark.worker, pytest.mark.django_db(transaction=True)]

FILE = Path(__file__).resolve().parent / "data" / "imports" / "decisoes_cp1252.csv"


def test_a_manager_previews_fixes_and_imports_an_excel_csv(live_server, browser, worker, wait_for, team, alice):
    project = create_project(team, name="Decisões", task_type="single_label", created_by=alice, labels=[])
    rows = list(csv.DictReader(io.StringIO(FILE.read_bytes().decode("cp1252")), delimiter=";"))
    shots = screenshot_dir()
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(f"{live_server.url}/accounts/login/")
    page.fill("input[name=username]", "alice")
    page.fill("input[name=password]", "alice-password-123")
    page.click("main button[type=submit]")
    page.wait_for_url(re.compile(r".*/$"))

    page.goto(f"{live_server.url}/projects/{project.pk}/datasets/new/")
    page.set_input_files("#id_file", str(FILE))
    page.click("#upload-form button[type=submit]")
    page.wait_for_selector("#preview")
    assert "cp1252" in page.inner_text("#sniffed")
    assert page.locator("#preview thead th").all_text_contents() == ["id", "text", "label", "cliente"]
    assert rows[0]["text"][:30] in page.inner_text("#preview")

    page.select_option("#id_delimiter", ",")  # htmx re-reads the stored file
    page.wait_for_selector("text=Only one column")
    assert page.locator("#preview thead th").count() == 1
    page.screenshot(path=str(shots / "import-preview-one-column.png"), full_page=True)
    page.select_option("#id_delimiter", ";")
    page.wait_for_function("() => document.querySelectorAll('#preview thead th').length === 4")

    labels = page.inner_text("#labels-found")
    for name in {row["label"] for row in rows}:
        assert name in labels
    page.select_option("#column-roles select", "hidden")  # cliente: kept, never shown to annotators
    page.screenshot(path=str(shots / "import-preview.png"), full_page=True)
    assert Dataset.objects.get(project=project).status == DatasetStatus.DRAFT

    page.click("#start-import")
    wait_for(lambda: Dataset.objects.get(project=project).status in (DatasetStatus.DONE, DatasetStatus.FAILED),
             timeout=120, process=worker)
    dataset = Dataset.objects.get(project=project)
    assert dataset.status == DatasetStatus.DONE, dataset.errors
    page.wait_for_selector(".status.done")
    page.screenshot(path=str(shots / "import-done.png"), full_page=True)
    assert dataset.hidden_columns == ["cliente"]
    assert set(Example.objects.filter(project=project).values_list("text", flat=True)) == {r["text"] for r in rows}
    assert sorted(project.current_taxonomy().labels.values_list("name", flat=True)) == \
        sorted({row["label"] for row in rows})

"""Forgiving imports (issue 13): files as they come out of Excel and other tools.

Semicolon, tab and pipe separated files, Windows-1252 and UTF-16 text, Excel workbooks, columns kept
hidden from annotators, the first import into a project without labels, a failed import retried with
another mapping without uploading again, and bad input that imports nothing. The files are real rows
(tests/data/imports/make_fixtures.py).
"""
from __future__ import annotations

import csv
import io
from collections import Counter
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.core.management.base import CommandError
from django.urls import reverse

from annotation.models import Annotation
from projects import taxonomy
from projects.models import Dataset, DatasetStatus, Example, Project

pytestmark = pytest.mark.django_db

FIXTURES = Path(__file__).resolve().parent / "data" / "imports"


def read_rows(name: str, *, encoding: str = "utf-8", delimiter: str = ",") -> list[dict[str, str]]:
    text = (FIXTURES / name).read_bytes().decode(encoding)
    return list(csv.DictReader(io.StringIO(text.removeprefix("\ufeff")), delimiter=delimiter))


def upload(client, project: Project, name: str) -> Dataset:
    response = client.post(reverse("projects:upload", args=[project.pk]),
                           {"file": SimpleUploadedFile(name, (FIXTURES / name).read_bytes())})
    assert response.status_code == 302, response.content.decode()[:2000]
    return Dataset.objects.filter(project=project, name=name).latest("pk")


def page_url(dataset: Dataset) -> str:
    return reverse("projects:dataset", args=[dataset.project_id, dataset.pk])


def start(client, dataset: Dataset, run_jobs, **form) -> Dataset:
    with run_jobs():
        response = client.post(page_url(dataset), {"action": "import", **form})
    assert response.status_code == 302, response.content.decode()[:3000]
    dataset.refresh_from_db()
    return dataset


@pytest.fixture
def empty_project(team, alice) -> Project:
    """A new project whose taxonomy has no labels yet."""
    return taxonomy.create_project(team, name="Intents", task_type="single_label", created_by=alice, labels=[])


def label_counts(project: Project) -> Counter[str]:
    names = {label.key: label.name for label in project.current_taxonomy().labels.all()}
    return Counter(names[a.label_keys[0]] for a in Annotation.objects.in_project(project))


@pytest.mark.parametrize(("name", "delimiter", "columns"), [
    ("intents_semicolon.csv", ";", ["text", "label", "scenario"]),
    ("intents_tab.tsv", "\t", ["id", "text", "label"]),
    ("intents_pipe.csv", "|", ["text", "label"]),
])
def test_a_delimited_file_is_split_on_its_own_delimiter(name, delimiter, columns, empty_project, alice, login,
                                                        run_jobs):
    client = login(alice)
    dataset = upload(client, empty_project, name)
    assert dataset.delimiter == delimiter and dataset.columns == columns
    expected = read_rows(name, delimiter=delimiter)
    page = client.get(page_url(dataset)).content.decode()
    # The preview shows the rows split as they will be imported, before anything is.
    assert f"<td>{expected[0]['text']}</td>" in page and f"<td>{expected[0]['label']}</td>" in page
    assert not Example.objects.filter(project=empty_project).exists()
    dataset = start(client, dataset, run_jobs, text_column="text", label_column="label")
    assert dataset.status == DatasetStatus.DONE, dataset.errors
    assert set(Example.objects.filter(project=empty_project).values_list("text", flat=True)) == \
        {row["text"] for row in expected}
    assert label_counts(empty_project) == Counter(row["label"] for row in expected)


def test_a_windows_1252_semicolon_file_from_excel_keeps_its_accents(empty_project, alice, login, run_jobs):
    client = login(alice)
    dataset = upload(client, empty_project, "decisoes_cp1252.csv")
    assert (dataset.encoding, dataset.delimiter) == ("cp1252", ";")
    expected = read_rows("decisoes_cp1252.csv", encoding="cp1252", delimiter=";")
    page = client.get(page_url(dataset)).content.decode()
    assert "cp1252" in page and expected[0]["text"][:40] in page
    dataset = start(client, dataset, run_jobs, text_column="text", label_column="label", id_column="id")
    assert dataset.status == DatasetStatus.DONE, dataset.errors
    stored = dict(Example.objects.filter(project=empty_project).values_list("external_id", "text"))
    assert stored == {row["id"]: row["text"] for row in expected}
    assert any(ch in "".join(stored.values()) for ch in "ãçéó")


def test_a_utf16_unicode_text_file_from_excel_is_read(empty_project, alice, login, run_jobs):
    client = login(alice)
    dataset = upload(client, empty_project, "intents_utf16.txt")
    assert (dataset.encoding, dataset.delimiter, dataset.columns) == ("utf-16", "\t", ["text", "label", "client"])
    dataset = start(client, dataset, run_jobs, text_column="text", label_column="label")
    assert dataset.status == DatasetStatus.DONE, dataset.errors
    expected = read_rows("intents_utf16.txt", encoding="utf-16", delimiter="\t")
    assert Example.objects.filter(project=empty_project).count() == len({r["text"] for r in expected})
    assert Example.objects.get(text=expected[0]["text"]).metadata == {"client": expected[0]["client"]}


def test_a_utf8_file_with_a_bom_has_clean_column_names(empty_project, alice, login, run_jobs):
    dataset = upload(login(alice), empty_project, "intents_utf8_bom.csv")
    assert dataset.columns == ["text", "label"] and dataset.encoding == "utf-8-sig"


def test_the_user_can_change_the_delimiter_and_encoding_before_importing(empty_project, alice, login, run_jobs):
    client = login(alice)
    dataset = upload(client, empty_project, "decisoes_cp1252.csv")
    # Read as commas, the file is one column: the preview shows it, nothing is imported.
    response = client.post(page_url(dataset), {"action": "preview", "delimiter": ",", "encoding": "cp1252"})
    assert response.status_code == 200
    dataset.refresh_from_db()
    assert dataset.columns == ["id;text;label;cliente"]
    assert "Only one column" in response.content.decode()
    # Latin-1 reads the same bytes differently where Windows-1252 has its extra characters; the choice sticks.
    response = client.post(page_url(dataset), {"action": "preview", "delimiter": ";", "encoding": "latin-1"})
    dataset.refresh_from_db()
    assert (dataset.delimiter, dataset.encoding) == (";", "latin-1")
    assert dataset.columns == ["id", "text", "label", "cliente"]
    assert not Example.objects.filter(project=empty_project).exists()
    dataset = start(client, dataset, run_jobs, text_column="text", label_column="label", encoding="cp1252",
                    delimiter=";")
    assert dataset.status == DatasetStatus.DONE and dataset.encoding == "cp1252"


def test_an_xlsx_workbook_imports_its_first_sheet_or_the_chosen_one(empty_project, alice, login, run_jobs):
    from openpyxl import load_workbook

    workbook = load_workbook(FIXTURES / "intents.xlsx", read_only=True)
    first = list(workbook["intents"].iter_rows(values_only=True))
    holdout = list(workbook["holdout"].iter_rows(values_only=True))
    client = login(alice)
    dataset = upload(client, empty_project, "intents.xlsx")
    assert dataset.sheet == "intents" and dataset.sniffed["sheets"] == ["intents", "holdout"]
    assert dataset.columns == ["text", "label", "client", "score"]
    dataset = start(client, dataset, run_jobs, text_column="text", label_column="label")
    assert dataset.status == DatasetStatus.DONE, dataset.errors
    example = Example.objects.get(text=first[2][0])
    assert example.metadata == {"client": first[2][2], "score": first[2][3]}  # numbers stay numbers

    dataset = upload(client, empty_project, "intents.xlsx")
    response = client.post(page_url(dataset), {"action": "preview", "sheet": "holdout"})
    assert holdout[1][0] in response.content.decode()
    dataset = start(client, dataset, run_jobs, sheet="holdout", text_column="text", label_column="label")
    assert dataset.status == DatasetStatus.DONE, dataset.errors
    assert dataset.imported_count == len({row[0] for row in holdout[1:]})
    assert Example.objects.filter(dataset=dataset, text=holdout[1][0]).exists()


def test_hidden_columns_and_the_label_never_reach_the_annotator(empty_project, alice, bob, login, run_jobs):
    client = login(alice)
    dataset = upload(client, empty_project, "decisoes_cp1252.csv")
    page = client.get(page_url(dataset)).content.decode()
    assert 'id="column-roles"' in page and "cliente" in page
    roles = {f"role_{dataset.columns.index('cliente')}": "hidden"}
    # No label column: the gold label column is kept but hidden by default (it would show the answer).
    dataset = start(client, dataset, run_jobs, text_column="text", id_column="id", **roles)
    assert dataset.status == DatasetStatus.DONE, dataset.errors
    assert sorted(dataset.hidden_columns) == ["cliente", "label"]
    example = Example.objects.filter(project=empty_project).first()
    assert example is not None and set(example.metadata) == {"label", "cliente"}  # kept, for exports
    body = login(bob).get(reverse("annotation:label", args=[empty_project.pk])).content.decode()
    shown = Example.objects.get(pk=int(body.split('data-example="')[1].split('"')[0]))
    assert shown.text.split()[0] in body
    assert shown.metadata["cliente"] not in body and f"<dd>{shown.metadata['label']}</dd>" not in body


def test_a_dropped_column_is_not_stored_and_a_shown_one_is_shown(empty_project, alice, bob, login, run_jobs):
    client = login(alice)
    dataset = upload(client, empty_project, "intents_semicolon.csv")
    roles = {f"role_{i}": {"scenario": "shown"}.get(c, "dropped") for i, c in enumerate(dataset.columns)}
    dataset = start(client, dataset, run_jobs, text_column="text", **roles)  # unlabelled: annotators get them
    assert dataset.status == DatasetStatus.DONE, dataset.errors
    assert {tuple(m) for m in Example.objects.filter(project=empty_project).values_list("metadata", flat=True)} \
        == {("scenario",)}
    dataset = upload(client, empty_project, "intents_tab.tsv")
    roles = {f"role_{i}": "dropped" for i, c in enumerate(dataset.columns)}
    dataset = start(client, dataset, run_jobs, text_column="text", **roles)
    assert dataset.status == DatasetStatus.DONE and dataset.dropped_columns == ["id", "label"]
    body = login(bob).get(reverse("annotation:label", args=[empty_project.pk])).content.decode()
    assert "<dt>scenario</dt>" in body


def test_a_routed_predictions_tracing_keys_are_not_shown_to_annotators(project, bob, login):
    Example.objects.create(project=project, text="is this an overruling?", content_hash="routed",
                           metadata={"source": "api", "prediction_id": "5f0c7d1e-a", "route": "b41e-route"})
    body = login(bob).get(reverse("annotation:label", args=[project.pk])).content.decode()
    assert "is this an overruling?" in body
    assert "5f0c7d1e-a" not in body and "b41e-route" not in body and "<dt>source</dt>" not in body


def test_the_first_import_into_a_project_without_labels_offers_to_create_them(empty_project, alice, login,
                                                                              run_jobs):
    client = login(alice)
    dataset = upload(client, empty_project, "intents_semicolon.csv")
    expected = Counter(row["label"] for row in read_rows("intents_semicolon.csv", delimiter=";"))
    page = client.get(page_url(dataset)).content.decode()
    assert 'id="labels-found"' in page and "the labels below are created" in page
    for name, count in expected.items():
        assert f"create the label “{name}”" in page and f'<td class="num">{count}</td>' in page
    dataset = start(client, dataset, run_jobs, text_column="text", label_column="label",
                    **{f"label_{i}": "+" for i in range(len(expected))})
    assert dataset.status == DatasetStatus.DONE, dataset.errors
    assert sorted(empty_project.current_taxonomy().labels.values_list("name", flat=True)) == sorted(expected)
    assert label_counts(empty_project) == expected
    assert dataset.labels_found == dict(expected)


def test_a_label_of_the_file_can_be_mapped_to_an_existing_label(empty_project, alice, login, run_jobs):
    taxonomy.add_labels(empty_project, labels=[taxonomy.LabelSpec("Alarm")], user=alice)
    client = login(alice)
    dataset = upload(client, empty_project, "intents_semicolon.csv")
    expected = Counter(row["label"] for row in read_rows("intents_semicolon.csv", delimiter=";"))
    page = client.get(page_url(dataset)).content.decode()
    assert "→ Alarm" in page
    order = sorted(expected, key=lambda name: (-expected[name], name))
    choice = {f"label_{i}": "Alarm" if name.startswith("alarm") else "+" for i, name in enumerate(order)}
    dataset = start(client, dataset, run_jobs, text_column="text", label_column="label", **choice)
    assert dataset.status == DatasetStatus.DONE, dataset.errors
    counts = label_counts(empty_project)
    assert counts["Alarm"] == expected["alarm_query"] + expected["alarm_set"]
    assert "alarm_query" not in counts and counts["weather_query"] == expected["weather_query"]


def test_a_failed_import_is_grouped_by_reason_and_retried_without_uploading_again(project, alice, login, run_jobs):
    client = login(alice)
    dataset = upload(client, project, "intents_semicolon.csv")
    expected = Counter(row["label"] for row in read_rows("intents_semicolon.csv", delimiter=";"))
    # Left unmapped in a project that has other labels: every row is refused, nothing imported.
    dataset = start(client, dataset, run_jobs, text_column="text", label_column="label")
    assert dataset.status == DatasetStatus.FAILED and dataset.error_count == sum(expected.values())
    assert len(dataset.error_groups) == 1 and dataset.error_groups[0]["count"] == dataset.error_count
    assert [row["row"] for row in dataset.error_groups[0]["rows"]] == [2, 3, 4, 5, 6]
    assert not Example.objects.filter(project=project).exists()
    page = client.get(page_url(dataset)).content.decode()
    assert 'id="error-groups"' in page and f'<td class="num">{dataset.error_count}</td>' in page
    assert f"Create the {len(expected)} missing labels and import again" in page
    for name, count in expected.items():
        assert f"<td>{name}</td><td class=\"num\">{count}</td>" in page

    with run_jobs():
        response = client.post(reverse("projects:dataset-retry", args=[project.pk, dataset.pk]),
                               {"create_labels": "1"})
    assert response.status_code == 302
    dataset.refresh_from_db()
    assert dataset.status == DatasetStatus.DONE, dataset.errors
    assert Dataset.objects.filter(project=project).count() == 1  # the same upload, not a new one
    assert label_counts(project) == expected


def test_a_failed_import_goes_back_to_its_mapping_with_the_file_kept(project, alice, bob, login, run_jobs):
    client = login(alice)
    dataset = upload(client, project, "intents_tab.tsv")
    dataset = start(client, dataset, run_jobs, text_column="id", label_column="label")
    assert dataset.status == DatasetStatus.FAILED
    assert login(bob).post(reverse("projects:dataset-retry", args=[project.pk, dataset.pk])).status_code == 403
    response = client.post(reverse("projects:dataset-retry", args=[project.pk, dataset.pk]))
    assert response.status_code == 302
    dataset.refresh_from_db()
    assert dataset.status == DatasetStatus.DRAFT and dataset.errors == []
    page = client.get(page_url(dataset)).content.decode()
    assert 'id="preview"' in page and "hwu-1" in page
    # This time: the text column is the text, the labels map to Yes / No.
    order = sorted(dataset.labels_found, key=lambda name: (-dataset.labels_found[name], name))
    choice = {f"label_{i}": "Yes" if name.startswith("alarm") else "No" for i, name in enumerate(order)}
    dataset = start(client, dataset, run_jobs, text_column="text", label_column="label", id_column="id", **choice)
    assert dataset.status == DatasetStatus.DONE, dataset.errors
    assert project.current_taxonomy().number == 1  # nothing created: every label was mapped
    assert Dataset.objects.filter(project=project).count() == 1


BAD = [
    ("an encoding that cannot read the file", {"encoding": "utf-8"}, "cannot be decoded"),
    ("an encoding Python does not know", {"encoding": "klingon-8"}, "not an encoding Python knows"),
    ("a delimiter that is not offered", {"delimiter": "x"}, "Choose a delimiter among"),
]


@pytest.mark.parametrize(("case", "form", "message"), BAD, ids=[case[0] for case in BAD])
def test_bad_reading_options_are_refused_and_change_nothing(case, form, message, empty_project, alice, login,
                                                            run_jobs):
    client = login(alice)
    dataset = upload(client, empty_project, "decisoes_cp1252.csv")
    with run_jobs():
        response = client.post(page_url(dataset), {"action": "import", "text_column": "text", **form})
    assert response.status_code == 400
    assert message in response.content.decode()
    dataset.refresh_from_db()
    assert (dataset.status, dataset.encoding, dataset.delimiter) == (DatasetStatus.DRAFT, "cp1252", ";")
    assert not Example.objects.filter(project=empty_project).exists()


def test_a_broken_workbook_is_refused_at_upload(empty_project, alice, login):
    response = login(alice).post(reverse("projects:upload", args=[empty_project.pk]),
                                 {"file": SimpleUploadedFile("book.xlsx", b"PK\x03\x04 not a workbook")})
    assert response.status_code == 400
    assert "book.xlsx" in response.content.decode() and "Excel workbook" in response.content.decode()
    assert not Dataset.objects.filter(project=empty_project).exists()


def test_the_command_line_sniffs_the_file_and_creates_labels_when_asked(empty_project, alice, capsys):
    path = FIXTURES / "decisoes_cp1252.csv"
    expected = read_rows("decisoes_cp1252.csv", encoding="cp1252", delimiter=";")
    with pytest.raises(CommandError, match="Nothing was imported"):
        call_command("import_examples", empty_project.pk, str(path), "--label-column", "label")
    err = capsys.readouterr().err
    assert "as cp1252, ';'-separated" in err and "Problems by kind" in err and "--create-labels creates them" in err
    assert not Example.objects.filter(project=empty_project).exists()
    call_command("import_examples", empty_project.pk, str(path), "--label-column", "label", "--id-column", "id",
                 "--create-labels", "--hidden-columns", "cliente")
    assert Example.objects.filter(project=empty_project).count() == len(expected)
    dataset = Dataset.objects.get(project=empty_project, status=DatasetStatus.DONE)
    assert dataset.hidden_columns == ["cliente"]
    assert label_counts(empty_project) == Counter(row["label"] for row in expected)


def test_the_command_line_takes_the_delimiter_encoding_and_sheet(empty_project, tmp_path):
    call_command("import_examples", empty_project.pk, str(FIXTURES / "intents.xlsx"), "--sheet", "holdout")
    assert Dataset.objects.get(project=empty_project).sheet == "holdout"
    odd = tmp_path / "odd.csv"
    raw = "text;note\n\u2018Quoted\u2019 in São Paulo, SP;x\n".encode("cp1252")
    odd.write_bytes(raw)
    with pytest.raises(CommandError, match="its columns are: text;note"):  # read as commas: one column "text;note"
        call_command("import_examples", empty_project.pk, str(odd), "--delimiter", "comma")
    call_command("import_examples", empty_project.pk, str(odd), "--delimiter", "semicolon", "--encoding", "latin-1")
    # Latin-1 has control characters where Windows-1252 has curly quotes: the flag was obeyed.
    text = raw.decode("latin-1").splitlines()[1].split(";")[0]
    assert Example.objects.filter(project=empty_project, text=text).exists() and "\x91" in text


def test_the_file_api_sniffs_and_the_bulk_api_hides_metadata(empty_project, alice, api_client, run_jobs):
    client = api_client(alice)
    with run_jobs():
        response = client.post(f"/api/v1/projects/{empty_project.pk}/datasets/upload/",
                               {"file": SimpleUploadedFile("intents_semicolon.csv",
                                                           (FIXTURES / "intents_semicolon.csv").read_bytes()),
                                "label_column": "label", "add_unknown_labels": True}, format="multipart")
    assert response.status_code == 202, response.content
    dataset = Dataset.objects.get(pk=response.json()["id"])
    assert dataset.status == DatasetStatus.DONE and dataset.delimiter == ";"
    response = client.post(f"/api/v1/projects/{empty_project.pk}/examples/bulk/", {
        "examples": [{"text": "wake me at six", "metadata": {"customer": "ACME", "channel": "app"}}],
        "hidden_metadata": ["customer"]}, format="json")
    assert response.status_code == 201, response.content
    example = Example.objects.get(text="wake me at six")
    assert example.metadata_for_annotators() == {"channel": "app"}

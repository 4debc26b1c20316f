"""Importing files and JSON pushes: what lands, and bad input that changes nothing."""
from __future__ import annotations

import csv
import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from annotation.models import Annotation
from labelhub.errors import ActionError
from projects import imports
from projects.importing import content_hash
from projects.models import Dataset, DatasetStatus, Example, Project


def upload(client, project: Project, name: str, content: bytes):
    return client.post(reverse("projects:upload", args=[project.pk]),
                       {"file": SimpleUploadedFile(name, content)})


@pytest.fixture
def import_file(login) -> Callable[..., Dataset]:
    def import_file(alice, project: Project, run_jobs, name: str, content: bytes, **mapping) -> Dataset:
        """Upload and map columns through the pages, as a manager would, then run the queued job."""
        client = login(alice)
        response = upload(client, project, name, content)
        assert response.status_code == 302, response.content
        dataset = Dataset.objects.get(project=project, name=name)
        form = {"text_column": "text", "label_column": "", "id_column": "", **mapping}
        with run_jobs():
            response = client.post(reverse("projects:dataset", args=[project.pk, dataset.pk]), form)
        assert response.status_code == 302, response.content
        dataset.refresh_from_db()
        return dataset

    return import_file


def assert_nothing_imported(project: Project, taxonomy_version: int = 1) -> None:
    assert Example.objects.filter(project=project).count() == 0
    assert Annotation.objects.in_project(project).count() == 0
    assert project.current_taxonomy().number == taxonomy_version


def test_it_imports_a_real_labelled_csv_and_turns_labels_into_annotations(
        project, alice, run_jobs, data_dir, import_file):
    path = data_dir / "legal_overruling.csv"
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    label_of = {content_hash(row["text"]): row["label"] for row in rows}  # repeats carry the same label
    dataset = import_file(alice, project, run_jobs, path.name, path.read_bytes(), label_column="label")
    assert dataset.status == DatasetStatus.DONE, dataset.errors
    unique_texts = Example.objects.filter(project=project).count()
    assert dataset.imported_count == unique_texts == len(label_of) > 400
    # The file repeats some sentences: each repeat is skipped and counted.
    assert dataset.duplicate_count == len(rows) - unique_texts > 0
    assert dataset.labelled_count == unique_texts
    keys = {label.name: label.key for label in project.current_taxonomy().labels.all()}
    yes = Annotation.objects.in_project(project).filter(label_keys=[keys["Yes"]]).count()
    no = Annotation.objects.in_project(project).filter(label_keys=[keys["No"]]).count()
    expected = Counter(label_of.values())
    assert yes + no == unique_texts and (yes, no) == (expected["Yes"], expected["No"])


def test_it_imports_jsonl_with_ids_metadata_and_multi_labels(multi_project, alice, run_jobs, import_file):
    lines = [
        {"text": "printer on floor 3 is jammed", "labels": "Hardware", "ticket": "T-1", "site": "Paris"},
        {"text": "cannot log in and was charged twice", "labels": "Access|Billing", "ticket": "T-2"},
        {"text": "new laptop request", "ticket": "T-3"},
    ]
    content = "\n".join(json.dumps(line) for line in lines).encode()
    dataset = import_file(alice, multi_project, run_jobs, "tickets.jsonl", content,
                          label_column="labels", id_column="ticket")
    assert dataset.status == DatasetStatus.DONE, dataset.errors
    second = Example.objects.get(external_id="T-2")
    keys = {label.key: label.name for label in multi_project.current_taxonomy().labels.all()}
    assert sorted(keys[k] for k in second.annotations.get().label_keys) == ["Access", "Billing"]
    assert Example.objects.get(external_id="T-1").metadata == {"site": "Paris"}
    assert not Example.objects.get(external_id="T-3").annotations.exists()


def test_it_imports_a_json_array(project, alice, run_jobs, import_file):
    content = json.dumps([{"body": "we overrule smith.", "y": "Yes"}, {"body": "we follow smith.", "y": "No"}])
    dataset = import_file(alice, project, run_jobs, "rows.json", content.encode(),
                          text_column="body", label_column="y")
    assert dataset.status == DatasetStatus.DONE, dataset.errors
    assert dataset.imported_count == 2 and dataset.labelled_count == 2


def test_it_adds_unknown_labels_when_asked(project, alice, run_jobs, import_file):
    content = b"text,label\nwe overrule smith.,Yes\nit is unclear.,Maybe\n"
    dataset = import_file(alice, project, run_jobs, "rows.csv", content, label_column="label",
                          add_unknown_labels="on")
    assert dataset.status == DatasetStatus.DONE, dataset.errors
    taxonomy = project.current_taxonomy()
    assert taxonomy.number == 2
    assert sorted(taxonomy.labels.values_list("name", flat=True)) == ["Maybe", "No", "Yes"]
    assert "Added label 'Maybe'." in taxonomy.changelog


BAD_FILES = [
    ("unknown label", "rows.csv", b"text,label\nwe overrule smith.,Yes\nit is unclear.,Maybe\n",
     {"label_column": "label"}, "unknown label 'Maybe'", 3),
    ("empty text", "rows.csv", b"text,label\nwe overrule smith.,Yes\n   ,No\n", {"label_column": "label"},
     "empty", 3),
    ("over-long text", "rows.csv", b"text\nshort\n" + b"x" * 20001 + b"\n", {}, "20,001", 3),
    # Far enough into the file that the upload's header read does not see it.
    # The upload guesses Windows-1252 for this file; the user insisted on UTF-8.
    ("undecodable bytes", "rows.csv", b"text\n" + b"".join(b"row %d\n" % i for i in range(5000)) + b"bad \xff\xfe\n",
     {"encoding": "utf-8"}, "UTF-8", None),
    ("malformed JSON line", "rows.jsonl", b'{"text": "fine"}\n{"text": "broken"\n{"text": "also fine"}\n', {},
     "", 2),
    ("wrong number of fields", "rows.csv", b"text,label\nfine,Yes\ntoo,many,fields\n", {"label_column": "label"},
     "", 3),
]


@pytest.mark.parametrize(("case", "name", "content", "mapping", "reason_part", "bad_row"), BAD_FILES,
                         ids=[case[0] for case in BAD_FILES])
def test_it_rejects_a_bad_file_whole_and_names_file_row_and_reason(
        case, name, content, mapping, reason_part, bad_row, project, alice, run_jobs, import_file, login):
    dataset = import_file(alice, project, run_jobs, name, content, **mapping)
    assert dataset.status == DatasetStatus.FAILED
    assert dataset.error_count >= 1
    error = dataset.errors[0]
    assert error["file"] == name
    assert reason_part in error["reason"]
    if bad_row is not None:
        assert error["row"] == bad_row
    assert_nothing_imported(project)
    page = login(alice).get(reverse("projects:dataset", args=[project.pk, dataset.pk])).text
    assert "Nothing was imported" in page and name in page


def test_it_rejects_a_mapping_to_a_column_the_file_lacks(project, alice, login):
    client = login(alice)
    upload(client, project, "rows.csv", b"sentence,label\nwe overrule smith.,Yes\n")
    dataset = Dataset.objects.get(project=project)
    response = client.post(reverse("projects:dataset", args=[project.pk, dataset.pk]),
                           {"text_column": "text", "label_column": "label"})
    assert response.status_code == 200
    assert "Select a valid choice" in response.text
    dataset.refresh_from_db()
    assert dataset.status == DatasetStatus.DRAFT
    with pytest.raises(ActionError, match="'text'.*sentence, label"):
        imports.start_import(dataset, text_column="text")
    assert_nothing_imported(project)


def test_it_refuses_files_over_the_size_limit(project, alice, settings, login):
    settings.MAX_UPLOAD_MB = 1
    response = upload(login(alice), project, "big.csv", b"text\n" + b"x" * (1024 * 1024 + 10) + b"\n")
    assert response.status_code == 400
    assert "upload limit is 1 MB" in response.text
    assert not Dataset.objects.filter(project=project).exists()


def test_it_reads_a_latin1_upload_instead_of_refusing_it(project, alice, login):
    response = upload(login(alice), project, "latin1.csv", "text\ncaf\xe9\n".encode("latin-1"))
    assert response.status_code == 302
    dataset = Dataset.objects.get(project=project)
    assert dataset.encoding == "cp1252" and dataset.sniffed["encoding_reason"] == "guessed by charset-normalizer"
    page = login(alice).get(reverse("projects:dataset", args=[project.pk, dataset.pk])).text
    assert "café" in page


def test_it_refuses_unknown_file_types(project, alice, login):
    response = upload(login(alice), project, "rows.xls", b"\xd0\xcf\x11\xe0")
    assert response.status_code == 400
    assert "rows.xls" in response.text and "save the workbook as .xlsx" in response.text
    assert not Dataset.objects.filter(project=project).exists()


def test_it_skips_and_counts_duplicates_within_and_across_files(project, alice, run_jobs, import_file):
    first = import_file(alice, project, run_jobs, "a.csv", b"text\none\ntwo\none\n")
    assert (first.imported_count, first.duplicate_count) == (2, 1)
    second = import_file(alice, project, run_jobs, "b.csv", b"text\ntwo\nthree\n")
    assert (second.imported_count, second.duplicate_count) == (1, 1)
    assert Example.objects.filter(project=project).count() == 3


def test_it_polls_progress_through_the_htmx_partial(project, alice, run_jobs, htmx, login):
    client = login(alice)
    upload(client, project, "rows.csv", b"text\none\ntwo\n")
    dataset = Dataset.objects.get(project=project)
    client.post(reverse("projects:dataset", args=[project.pk, dataset.pk]), {"text_column": "text"})
    url = reverse("projects:dataset", args=[project.pk, dataset.pk])
    running = client.get(url, HTTP_HX_TARGET="dataset-status", **htmx)
    assert running.status_code == 200
    assert 'id="dataset-status"' in running.text and "<html" not in running.text
    assert 'hx-trigger="every 1s"' in running.text
    assert running["Vary"] and "HX-Request" in running["Vary"]
    imports.run_import(dataset.pk)
    finished = client.get(url, HTTP_HX_TARGET="dataset-status", **htmx)
    assert finished["HX-Refresh"] == "true"
    assert "<html" in client.get(url).text


def test_it_imports_a_json_push_with_a_token(project, alice, api_client):
    url = reverse("api-bulk-import", args=[project.pk])
    body = {"examples": [
        {"text": "we overrule smith.", "label": "Yes", "external_id": "a-1", "metadata": {"court": "9th"}},
        {"text": "we follow smith.", "external_id": "a-2"},
    ]}
    response = api_client(alice).post(url, body, format="json")
    assert response.status_code == 201, response.content
    assert response.json()["imported_count"] == 2 and response.json()["labelled_count"] == 1
    assert Example.objects.get(external_id="a-1").metadata == {"court": "9th"}
    assert api_client(None).post(url, body, format="json").status_code == 401


def test_it_rejects_a_json_push_with_a_bad_row_and_imports_none(project, alice, api_client):
    url = reverse("api-bulk-import", args=[project.pk])
    body = {"examples": [{"text": "we overrule smith.", "label": "Yes"}, {"text": "", "label": "No"},
                         {"text": "hm", "label": "Perhaps"}]}
    response = api_client(alice).post(url, body, format="json")
    assert response.status_code == 400
    errors = response.json()["errors"]
    assert [e["row"] for e in errors] == [2, 3]
    assert "Perhaps" in errors[1]["reason"]
    assert_nothing_imported(project)


def test_it_rejects_an_empty_or_malformed_json_push(project, alice, api_client):
    url = reverse("api-bulk-import", args=[project.pk])
    assert api_client(alice).post(url, {"examples": []}, format="json").status_code == 400
    assert api_client(alice).post(url, {"rows": [1]}, format="json").status_code == 400
    assert api_client(alice).post(url, {"examples": [{"label": "Yes"}]}, format="json").status_code == 400
    assert_nothing_imported(project)


def test_it_queues_a_file_uploaded_over_the_api(project, alice, run_jobs, api_client):
    url = reverse("api-file-import", args=[project.pk])
    with run_jobs():
        response = api_client(alice).post(
            url, {"file": SimpleUploadedFile("rows.csv", b"text,label\nwe overrule smith.,Yes\n"),
                  "label_column": "label"}, format="multipart")
    assert response.status_code == 202, response.content
    status = api_client(alice).get(response["Location"]).json()
    assert status["status"] == "done" and status["labelled_count"] == 1


def test_it_imports_from_the_command_line_and_lists_errors(project, alice, tmp_path: Path, capsys):
    from django.core.management import CommandError, call_command

    good = tmp_path / "good.csv"
    good.write_text("text,label\nwe overrule smith.,Yes\nwe follow smith.,No\n")
    call_command("import_examples", project.pk, str(good), "--label-column", "label", "--user", "alice")
    assert "Imported 2 examples" in capsys.readouterr().out
    bad = tmp_path / "bad.csv"
    bad.write_text("text,label\nwe distinguish smith.,Maybe\n")
    with pytest.raises(CommandError, match="Nothing was imported"):
        call_command("import_examples", project.pk, str(bad), "--label-column", "label")
    assert "bad.csv: row 2: unknown label 'Maybe'" in capsys.readouterr().err
    assert Example.objects.filter(project=project).count() == 2

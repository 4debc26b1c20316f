"""Exports (issue 13, data out): each format parsed back, each option, the three ways in, round trips through the
importer, the taxonomy history and model downloads, and who may export."""
from __future__ import annotations

import csv
import io
import json
import zipfile
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command
from django.urls import reverse

from annotation import taxonomy as annotation_taxonomy
from annotation.models import Annotation, AnnotationSource, ExampleScore
from learning import bayes, exports
from projects import taxonomy
from projects.importing import content_hash
from projects.models import Example, Membership, Project, Role

pytestmark = pytest.mark.django_db


# --- Set-up ----------------------------------------------------------------------------------------------------------


def _examples(project: Project, rows: list[tuple[str, str, dict[str, Any]]]) -> list[Example]:
    return list(Example.objects.bulk_create(
        Example(project=project, text=text, external_id=ext, metadata=meta, content_hash=content_hash(text))
        for text, ext, meta in rows))


def _label(project: Project, user: Any, example: Example, *names: str) -> Annotation:
    version = project.current_taxonomy()
    keys = dict(version.labels.values_list("name", "key"))
    annotation, _ = Annotation.objects.update_or_create(
        example=example, annotator=user, taxonomy_version=version,
        defaults={"label_keys": [keys[n] for n in names], "source": AnnotationSource.UI})
    return annotation


@pytest.fixture
def labelled(project: Project, alice: User) -> list[Example]:
    """Four examples of `project` (Yes/No): two labelled, two not; metadata of mixed types; one without an id."""
    examples = _examples(project, [
        ("We overrule Smith v. Jones.", "case-1", {"court": "9th Cir.", "year": 1999}),
        ("The judgment is affirmed, \"with costs\",\nand remanded.", "case-2", {"court": "2d Cir.", "year": 2004}),
        ("Nothing to see here.", "case-3", {"court": "SCOTUS"}),
        ("Ünïcödé text, no id.", "", {}),
    ])
    _label(project, alice, examples[0], "Yes")
    _label(project, alice, examples[1], "No")
    return examples


def _export(project: Project, **options: Any) -> bytes:
    plan = exports.plan_export(project, exports.parse_options(options))
    return b"".join(exports.stream_export(plan))


def _reimport(tmp_path: Path, team: Any, alice: User, payload: bytes, name: str, *, task_type: str = "single_label",
              labels: tuple[str, ...] = ("Yes", "No"), label_column: str = "label") -> Project:
    new = taxonomy.create_project(team, name=f"Round trip {name}", task_type=task_type, created_by=alice,
                                  labels=[taxonomy.LabelSpec(n) for n in labels])
    path = tmp_path / name
    path.write_bytes(payload)
    call_command("import_examples", new.pk, str(path), "--text-column", "text", "--label-column", label_column,
                 "--id-column", "id", "--user", "alice")
    return new


def _contents(project: Project) -> dict[str, tuple[str, list[str], dict[str, Any]]]:
    """text -> (external id, label names of the latest annotation, metadata)."""
    names = dict(project.current_taxonomy().labels.values_list("key", "name"))
    latest = Annotation.objects.in_project(project).latest_label_keys()
    return {e.text: (e.external_id, sorted(names[k] for k in latest.get(e.pk, [])), e.metadata)
            for e in Example.objects.filter(project=project)}


# --- Round trips ---------------------------------------------------------------------------------------------------


def test_a_csv_export_imports_back_as_the_same_examples_and_labels(project, labelled, alice, team, tmp_path):
    payload = _export(project, format="csv")
    rows = list(csv.DictReader(io.StringIO(payload.decode("utf-8"))))
    assert list(rows[0]) == ["id", "text", "label", "court", "year"]
    assert [(r["id"], r["label"]) for r in rows] == [
        ("case-1", "Yes"), ("case-2", "No"), ("case-3", ""), (str(labelled[3].pk), "")]
    new = _reimport(tmp_path, team, alice, payload, "export.csv")
    before, after = _contents(project), _contents(new)
    assert before.keys() == after.keys()  # the text with a quote and a newline survived
    for text, (ext, labels, meta) in before.items():
        assert after[text][1] == labels
        assert after[text][0] == (ext or str(next(e.pk for e in labelled if e.text == text)))
        # CSV carries every value as text: the year comes back as "1999".
        assert after[text][2] == {k: str(v) for k, v in meta.items()}


def test_a_jsonl_export_imports_back_with_typed_metadata(project, labelled, alice, team, tmp_path):
    payload = _export(project, format="jsonl")
    lines = [json.loads(line) for line in payload.decode("utf-8").splitlines()]
    assert lines[0] == {"id": "case-1", "text": "We overrule Smith v. Jones.", "label": "Yes", "court": "9th Cir.",
                        "year": 1999}
    assert lines[2]["label"] is None and lines[2]["year"] is None
    new = _reimport(tmp_path, team, alice, payload, "export.jsonl")
    after = _contents(new)
    for text, (_, labels, meta) in _contents(project).items():
        assert after[text][1] == labels
        # Keys an example lacked come back as nulls (the export has one set of columns).
        assert {k: v for k, v in after[text][2].items() if v is not None} == meta


def test_a_multi_label_jsonl_export_imports_back(multi_project, alice, team, tmp_path):
    examples = _examples(multi_project, [("printer on fire and invoice wrong", "t1", {}), ("cannot log in", "t2", {}),
                                         ("no label yet", "t3", {})])
    _label(multi_project, alice, examples[0], "Hardware", "Billing")
    _label(multi_project, alice, examples[1], "Access")
    payload = _export(multi_project, format="jsonl", labelled_only="true")
    lines = [json.loads(line) for line in payload.decode().splitlines()]
    assert [(r["id"], r["labels"]) for r in lines] == [("t1", ["Hardware", "Billing"]), ("t2", ["Access"])]
    new = _reimport(tmp_path, team, alice, payload, "multi.jsonl", task_type="multi_label",
                    labels=("Hardware", "Access", "Billing"), label_column="labels")
    assert {t: v[1] for t, v in _contents(new).items()} == {
        "printer on fire and invoice wrong": ["Billing", "Hardware"], "cannot log in": ["Access"]}
    csv_rows = list(csv.DictReader(io.StringIO(_export(multi_project, format="csv").decode())))
    assert [r["labels"] for r in csv_rows] == ["Hardware|Billing", "Access", ""]


# --- Each format, parsed back -------------------------------------------------------------------------------------


def test_hf_parquet_carries_the_class_label_names(project, labelled):
    table = pq.read_table(io.BytesIO(_export(project, format="hf-parquet")))
    features = json.loads(table.schema.metadata[b"huggingface"])["info"]["features"]
    assert features["label"] == {"names": ["Yes", "No"], "_type": "ClassLabel"}
    assert features["text"] == {"dtype": "string", "_type": "Value"}
    rows = table.to_pylist()
    assert [(r["id"], r["label"]) for r in rows] == [("case-1", 0), ("case-2", 1), ("case-3", -1),
                                                     (str(labelled[3].pk), -1)]
    assert rows[0]["year"] == "1999" and rows[1]["text"] == labelled[1].text


def test_hf_parquet_of_a_multi_label_project_has_a_sequence_of_class_labels(multi_project, alice):
    examples = _examples(multi_project, [("a b", "1", {}), ("c d", "2", {})])
    _label(multi_project, alice, examples[0], "Access", "Billing")
    table = pq.read_table(io.BytesIO(_export(multi_project, format="hf-parquet")))
    features = json.loads(table.schema.metadata[b"huggingface"])["info"]["features"]
    assert features["labels"] == {"feature": {"names": ["Hardware", "Access", "Billing"], "_type": "ClassLabel"},
                                  "_type": "Sequence"}
    assert [r["labels"] for r in table.to_pylist()] == [[1, 2], None]


def test_hf_parquet_streams_several_row_groups(project, alice, monkeypatch):
    monkeypatch.setattr(exports, "CHUNK", 3)  # row groups of 30 rows, chunks of 3 examples
    _examples(project, [(f"text {i}", f"id-{i}", {"n": i}) for i in range(95)])
    chunks = list(exports.stream_export(exports.plan_export(project, exports.parse_options({"format": "hf-parquet"}))))
    assert len(chunks) > 3  # handed over as it went, not at the end
    parquet = pq.ParquetFile(io.BytesIO(b"".join(chunks)))
    assert parquet.metadata.num_rows == 95 and parquet.metadata.num_row_groups == 4
    assert [r["id"] for r in parquet.read().to_pylist()] == [f"id-{i}" for i in range(95)]


def test_hf_jsonl_is_a_zip_with_the_features_and_a_dataset_card(project, labelled):
    archive = zipfile.ZipFile(io.BytesIO(_export(project, format="hf-jsonl")))
    assert sorted(archive.namelist()) == ["README.md", "dataset_info.json", "train.jsonl"]
    info = json.loads(archive.read("dataset_info.json"))
    assert info["features"]["label"] == {"names": ["Yes", "No"], "_type": "ClassLabel"}
    rows = [json.loads(line) for line in archive.read("train.jsonl").decode().splitlines()]
    assert [(r["id"], r["label"]) for r in rows] == [("case-1", 0), ("case-2", 1), ("case-3", -1),
                                                     (str(labelled[3].pk), -1)]
    card = archive.read("README.md").decode()
    assert "class_label:" in card and "'1': 'No'" in card.replace('"', "'") or "'1': No" in card


def test_spacy_docbin_has_the_cats_of_each_labelled_doc(project, labelled):
    import spacy
    from spacy.tokens import DocBin

    docs = list(DocBin().from_bytes(_export(project, format="spacy", labelled_only="1")).get_docs(
        spacy.blank("en").vocab))
    assert [d.text for d in docs] == [labelled[0].text, labelled[1].text]
    assert [d.cats for d in docs] == [{"Yes": 1.0, "No": 0.0}, {"Yes": 0.0, "No": 1.0}]
    assert docs[0].user_data["id"] == "case-1"
    assert docs[0].user_data["metadata"] == {"court": "9th Cir.", "year": 1999}


def test_a_spacy_export_too_large_to_build_in_memory_is_refused(project, labelled, monkeypatch):
    monkeypatch.setattr(exports, "SPACY_MAX_DOCS", 3)
    with pytest.raises(Exception, match="4 examples are more than the 3 it takes. Export the labelled examples only"):
        _export(project, format="spacy")
    assert _export(project, format="spacy", labelled_only="true")  # 2 labelled: within the limit


def test_label_studio_tasks_have_choices_results(project, labelled, bob):
    Membership.objects.filter(user=bob).update(role=Role.ANNOTATOR)
    _label(project, bob, labelled[0], "No")
    tasks = json.loads(_export(project, format="label-studio", annotations="each"))
    assert len(tasks) == 4
    first = tasks[0]
    assert first["data"] == {"text": labelled[0].text, "id": "case-1", "court": "9th Cir.", "year": 1999}
    results = sorted((a["meta"]["annotator"], a["result"][0]["value"]["choices"]) for a in first["annotations"])
    assert results == [("alice", ["Yes"]), ("bob", ["No"])]
    assert first["annotations"][0]["result"][0]["type"] == "choices"
    assert first["annotations"][0]["result"][0]["from_name"] == "label"
    assert tasks[2]["annotations"] == []
    config = exports.label_studio_config(exports.plan_export(project, exports.parse_options({"format": "csv"})))
    assert 'name="label" toName="text"' in config and '<Choice value="Yes"/>' in config


# --- Options -------------------------------------------------------------------------------------------------------


def test_labelled_only_leaves_out_unlabelled_examples(project, labelled):
    lines = _export(project, format="jsonl", labelled_only="true").decode().splitlines()
    assert [json.loads(line)["id"] for line in lines] == ["case-1", "case-2"]


def test_which_annotations_latest_majority_or_each(project, labelled, alice, bob):
    carol = User.objects.create_user("carol")
    Membership.objects.create(team=project.team, user=carol, role=Role.ANNOTATOR)
    # case-1: alice Yes, bob No, carol No (latest) -> majority No, latest No.
    _label(project, bob, labelled[0], "No")
    _label(project, carol, labelled[0], "No")
    # case-2: alice No, bob Yes (latest) -> a tie: the latest answer wins.
    _label(project, bob, labelled[1], "Yes")

    def read(mode: str) -> list[tuple[str, str | None, str | None]]:
        rows = [json.loads(x) for x in _export(project, format="jsonl", labelled_only="1", annotations=mode,
                                               metadata="none").decode().splitlines()]
        return [(r["id"], r["label"], r.get("annotator")) for r in rows]

    assert read("latest") == [("case-1", "No", None), ("case-2", "Yes", None)]
    assert read("majority") == [("case-1", "No", None), ("case-2", "Yes", None)]
    alice_first = Annotation.objects.filter(example=labelled[0], annotator=alice)
    alice_first.update(created_at=Annotation.objects.get(example=labelled[0], annotator=carol).created_at.replace(
        year=2100))  # alice answered last: latest is hers, the majority still No
    assert read("latest")[0] == ("case-1", "Yes", None)
    assert read("majority")[0] == ("case-1", "No", None)
    each = read("each")
    assert sorted(each) == sorted([("case-1", "Yes", "alice"), ("case-1", "No", "bob"), ("case-1", "No", "carol"),
                                   ("case-2", "No", "alice"), ("case-2", "Yes", "bob")])


def test_majority_of_a_multi_label_project_keeps_labels_most_annotators_gave(multi_project, alice, bob):
    example = _examples(multi_project, [("everything broke", "x", {})])[0]
    _label(multi_project, alice, example, "Hardware", "Access")
    _label(multi_project, bob, example, "Hardware", "Billing")
    carol = User.objects.create_user("carol")
    _label(multi_project, carol, example, "Hardware", "Access")
    line = json.loads(_export(multi_project, format="jsonl", annotations="majority"))
    assert line["labels"] == ["Hardware", "Access"]


def test_metadata_columns_can_be_chosen_and_an_unknown_key_is_refused(project, labelled):
    rows = list(csv.DictReader(io.StringIO(_export(project, format="csv", metadata="year").decode())))
    assert list(rows[0]) == ["id", "text", "label", "year"]
    rows = list(csv.DictReader(io.StringIO(_export(project, format="csv", metadata="none").decode())))
    assert list(rows[0]) == ["id", "text", "label"]
    with pytest.raises(Exception, match="No example has the metadata key\\(s\\) 'judge'; the keys are: court, year"):
        _export(project, format="csv", metadata="year,judge")


def test_a_metadata_key_named_like_a_column_gets_a_prefix(project, alice):
    _examples(project, [("a text", "e1", {"label": "from the file", "text": "also"})])
    line = json.loads(_export(project, format="jsonl"))
    assert line == {"id": "e1", "text": "a text", "label": None, "meta_label": "from the file", "meta_text": "also"}


def test_labels_are_named_as_in_the_chosen_taxonomy_version(project, labelled, alice):
    yes = project.current_taxonomy().labels.get(name="Yes").key
    no = project.current_taxonomy().labels.get(name="No").key
    taxonomy.edit_label(project, key=yes, name="Overruled", user=alice)  # v2: a rename
    taxonomy.add_labels(project, labels=[taxonomy.LabelSpec("Unclear")], user=alice)  # v3
    unclear = project.current_taxonomy().labels.get(name="Unclear").key
    _label(project, alice, labelled[2], "Unclear")
    annotation_taxonomy.merge_labels(project, into=no, merged=[unclear], user=alice)  # v4: Unclear -> No

    def labels(**options: Any) -> list[Any]:
        return [json.loads(x)["label"] for x in _export(project, format="jsonl", **options).decode().splitlines()]

    assert labels() == ["Overruled", "No", "No", None]
    assert labels(taxonomy_version="1") == ["Yes", "No", "No", None]
    assert labels(taxonomy_version="2") == ["Overruled", "No", "No", None]
    table = pq.read_table(io.BytesIO(_export(project, format="hf-parquet", taxonomy_version="1")))
    assert json.loads(table.schema.metadata[b"huggingface"])["info"]["features"]["label"]["names"] == ["Yes", "No"]
    # A label the version lacks (added later) or has deprecated is left out.
    taxonomy.add_labels(project, labels=[taxonomy.LabelSpec("Partly")], user=alice)  # v5
    _label(project, alice, labelled[3], "Partly")
    assert labels(taxonomy_version="4") == ["Overruled", "No", "No", None]
    assert labels() == ["Overruled", "No", "No", "Partly"]
    annotation_taxonomy.set_label_deprecated(project, key=project.current_taxonomy().labels.get(name="Partly").key,
                                             deprecated=True, user=alice)
    assert labels(labelled_only="1") == ["Overruled", "No", "No"]
    with pytest.raises(Exception, match="Taxonomy version 9 does not exist in this project \\(versions 1 to 6\\)"):
        _export(project, format="csv", taxonomy_version="9")


def test_predictions_come_with_confidence_and_model_version(trained):
    rows = [json.loads(x) for x in _export(trained, format="jsonl", predictions="true").decode().splitlines()]
    scored = {s.example.text: s for s in ExampleScore.objects.filter(project=trained).select_related("example")}
    pool = [r for r in rows if r["label"] is None]
    assert len(pool) == 10 and all(r["text"] in scored for r in pool)
    names = dict(trained.current_taxonomy().labels.values_list("key", "name"))
    for row in pool:
        score = scored[row["text"]]
        assert row["prediction"] == names[score.predicted_keys[0]]
        assert row["confidence"] == pytest.approx(score.confidence) and row["model_version"] == 1
    assert all(r["prediction"] is None for r in rows if r["label"] is not None)
    tasks = json.loads(_export(trained, format="label-studio", predictions="true"))
    predicted = [t for t in tasks if t.get("predictions")]
    assert len(predicted) == 10 and predicted[0]["predictions"][0]["model_version"] == "v1"


@pytest.mark.parametrize(("options", "message"), [
    ({}, "Choose a format"),
    ({"format": "xlsx"}, "Unknown export format 'xlsx': use one of csv, jsonl, hf-jsonl, hf-parquet, spacy, "
                         "label-studio."),
    ({"format": "csv", "annotations": "best"}, "Unknown annotations choice 'best'"),
    ({"format": "csv", "labelled_only": "maybe"}, "labelled_only='maybe' is not a yes/no value"),
    ({"format": "csv", "taxonomy_version": "two"}, "taxonomy_version='two' is not a version number"),
    ({"format": "csv", "taxonomy_version": "99999999999"}, "taxonomy_version='99999999999' is not a version number"),
    ({"format": "csv", "taxonomy_version": "0"}, "taxonomy_version='0' is not a version number"),
])
def test_bad_options_are_refused_with_the_reason(options, message):
    with pytest.raises(Exception, match=message.replace("(", "\\(").replace(")", "\\)")):
        exports.parse_options(options)


def test_a_span_project_refuses_classification_formats(team, alice):
    spans = taxonomy.create_project(team, name="NER", task_type="span", created_by=alice,
                                    labels=[taxonomy.LabelSpec("PER")])
    with pytest.raises(Exception, match="The jsonl format is for classification projects"):
        _export(spans, format="jsonl")  # the span formats: tests/test_span_exports.py


# --- The three ways in -----------------------------------------------------------------------------------------------


def test_the_api_streams_the_export_and_explains_bad_options(project, labelled, alice, api_client):
    url = reverse("api-export", args=[project.pk])
    response = api_client(alice).get(url, {"format": "csv", "labelled_only": "true"})
    assert response.status_code == 200 and response.streaming
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"] == 'attachment; filename="overruling-v1.csv"'
    rows = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert [r["label"] for r in rows] == ["Yes", "No"]
    bad = api_client(alice).get(url, {"format": "xml"})
    assert bad.status_code == 400 and "Unknown export format 'xml'" in bad.json()["detail"]
    parquet = api_client(alice).get(url, {"format": "hf-parquet"})
    assert pq.read_table(io.BytesIO(b"".join(parquet.streaming_content))).num_rows == 4


def test_the_export_is_in_the_openapi_schema(client):
    schema = client.get(reverse("api-schema"), HTTP_ACCEPT="application/json").json()
    operation = schema["paths"]["/api/v1/projects/{id}/export/"]["get"]
    params = {p["name"]: p for p in operation["parameters"]}
    assert sorted(params["format"]["schema"]["enum"]) == sorted(exports.FORMATS) and params["format"]["required"]
    assert {"labelled_only", "annotations", "metadata", "taxonomy_version", "predictions"} <= params.keys()
    assert {"text/csv", "application/vnd.apache.parquet", "application/zip"} <= \
        operation["responses"]["200"]["content"].keys()
    assert "/api/v1/projects/{id}/taxonomy/history/" in schema["paths"]
    assert "/api/v1/projects/{id}/model-versions/{number}/download/" in schema["paths"]


def test_the_page_offers_formats_and_options_and_downloads(project, labelled, alice, login):
    client = login(alice)
    page = client.get(reverse("learning:export", args=[project.pk])).text
    for name in (f.name for f in exports.formats_for(project)):  # the span formats: test_span_exports.py
        assert f'value="{name}"' in page
    assert 'value="court"' in page and 'value="year"' in page
    assert reverse("learning:export-taxonomy", args=[project.pk]) in page
    url = reverse("learning:export-download", args=[project.pk])
    # The form sends the hidden empty metadata field and the ticked keys.
    response = client.get(url, {"format": "csv", "metadata": ["", "court"], "taxonomy_version": "1",
                                "annotations": "latest"})
    assert response.status_code == 200
    rows = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert list(rows[0]) == ["id", "text", "label", "court"]
    # No key ticked: no metadata column.
    response = client.get(url, {"format": "jsonl", "metadata": [""]})
    assert json.loads(b"".join(response.streaming_content).decode().splitlines()[0]).keys() == {"id", "text", "label"}
    bad = client.get(url, {"format": "csv", "taxonomy_version": "7"})
    assert bad.status_code == 400 and "Taxonomy version 7 does not exist" in bad.text and 'id="export-form"' in bad.text


def test_the_project_page_links_to_the_export_page(project, alice, login):
    assert reverse("learning:export", args=[project.pk]) in login(alice).get(project.get_absolute_url()).text


def test_the_cli_writes_the_file(project, labelled, tmp_path, capsys):
    out = tmp_path / "data.csv"
    call_command("export", project.pk, "--format", "csv", "--out", str(out), "--labelled-only")
    rows = list(csv.DictReader(out.open(encoding="utf-8")))
    assert [(r["id"], r["label"]) for r in rows] == [("case-1", "Yes"), ("case-2", "No")]
    assert "Wrote" in capsys.readouterr().err
    out = tmp_path / "data.jsonl"
    call_command("export", project.pk, "--format", "jsonl", "--out", str(out), "--metadata", "none",
                 "--annotations", "each")
    assert json.loads(out.read_text().splitlines()[0]).keys() == {"id", "text", "label", "annotator", "annotated_at"}
    with pytest.raises(CommandError, match="There is no project 999999"):
        call_command("export", 999999, "--format", "csv", "--out", str(out))
    with pytest.raises(CommandError, match="does not exist"):
        call_command("export", project.pk, "--format", "csv", "--out", str(tmp_path / "missing" / "x.csv"))
    with pytest.raises(CommandError, match="No example has the metadata key"):
        call_command("export", project.pk, "--format", "csv", "--out", str(out), "--metadata", "judge")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.csv", "data.jsonl"]  # no half-written files


# --- Taxonomy history and model downloads -----------------------------------------------------------------------------


def test_the_taxonomy_history_lists_every_version_with_its_changelog(project, labelled, alice, api_client):
    yes = project.current_taxonomy().labels.get(name="Yes").key
    taxonomy.edit_label(project, key=yes, name="Overruled", user=alice)
    taxonomy.add_labels(project, labels=[taxonomy.LabelSpec("Unclear")], user=alice)
    unclear = project.current_taxonomy().labels.get(name="Unclear").key
    annotation_taxonomy.merge_labels(project, into=yes, merged=[unclear], user=alice)
    response = api_client(alice).get(reverse("api-taxonomy-history", args=[project.pk]))
    assert response.status_code == 200 and response["Content-Type"] == "application/json"
    history = json.loads(response.content)
    assert [v["number"] for v in history["versions"]] == [1, 2, 3, 4]
    assert history["versions"][1]["changelog"] == ["Renamed 'Yes' to 'Overruled'."]
    assert history["versions"][1]["changes"][0]["change"] == "renamed"
    assert history["versions"][3]["changelog"][0].startswith("Merged 'Unclear' into 'Overruled'")
    assert [(lbl["name"], lbl["deprecated"]) for lbl in history["versions"][3]["labels"]] == [
        ("Overruled", False), ("No", False), ("Unclear", True)]
    assert history["versions"][0]["created_by"] == "alice"


def test_a_model_version_downloads_as_posterior_and_manifest(trained, alice, login, api_client):
    response = login(alice).get(reverse("learning:export-model", args=[trained.pk, 1]))
    assert response.status_code == 200 and response["Content-Type"] == "application/zip"
    archive = zipfile.ZipFile(io.BytesIO(response.content))
    manifest = json.loads(archive.read("model.json"))
    assert manifest["version"] == 1 and manifest["labels"] == ["Yes", "No"]
    assert manifest["encoder"] == "fake-encoder-16" and manifest["taxonomy_version"] == 1
    assert manifest["metrics"]["accuracy"]["value"] is not None
    posterior = bayes.Posterior.from_bytes(archive.read("posterior.npz"))
    assert posterior.mean.shape == (17, 2)
    assert api_client(alice).get(reverse("api-model-download", args=[trained.pk, 1])).status_code == 200
    assert login(alice).get(reverse("learning:export-model", args=[trained.pk, 2])).status_code == 404
    assert login(alice).get(reverse("learning:export-model", args=[trained.pk, 2**40])).status_code == 404


# --- Who may export -------------------------------------------------------------------------------------------------


@pytest.fixture
def viewer(team: Any) -> User:
    user = User.objects.create_user("victor")
    Membership.objects.create(team=team, user=user, role=Role.VIEWER)
    return user


# (url name, args, query, alice (manager), bob (annotator), victor (viewer), charlie (other team))
PAGES = [
    ("learning:export", lambda p: [p.pk], {}, 200, 403, 403, 404),
    ("learning:export-download", lambda p: [p.pk], {"format": "csv"}, 200, 403, 403, 404),
    ("learning:export-taxonomy", lambda p: [p.pk], {}, 200, 200, 200, 404),
    ("learning:export-model", lambda p: [p.pk, 1], {}, 200, 403, 403, 404),
]


@pytest.mark.parametrize(("name", "args", "query", "for_alice", "for_bob", "for_victor", "for_charlie"), PAGES)
def test_each_persona_gets_the_right_answer_on_export_pages(name, args, query, for_alice, for_bob, for_victor,
                                                            for_charlie, trained, alice, bob, viewer, charlie, login):
    url = reverse(name, args=args(trained))
    for user, expected in ((alice, for_alice), (bob, for_bob), (viewer, for_victor), (charlie, for_charlie)):
        assert login(user).get(url, query).status_code == expected, user.username
    from django.test import Client

    anonymous = Client().get(url, query)
    assert anonymous.status_code == 302 and anonymous["Location"].startswith(reverse("login"))


API = [
    ("api-export", lambda p: [p.pk], {"format": "jsonl"}, 200, 403, 403, 404),
    ("api-taxonomy-history", lambda p: [p.pk], {}, 200, 200, 200, 404),
    ("api-model-download", lambda p: [p.pk, 1], {}, 200, 403, 403, 404),
]


@pytest.mark.parametrize(("name", "args", "query", "for_alice", "for_bob", "for_victor", "for_charlie"), API)
def test_each_persona_gets_the_right_answer_on_export_endpoints(name, args, query, for_alice, for_bob, for_victor,
                                                                for_charlie, trained, alice, bob, viewer, charlie,
                                                                api_client):
    url = reverse(name, args=args(trained))
    for user, expected in ((alice, for_alice), (bob, for_bob), (viewer, for_victor), (charlie, for_charlie)):
        assert api_client(user).get(url, query).status_code == expected, user.username
    assert api_client(None).get(url, query).status_code == 401


def test_api_keys_read_the_taxonomy_history_but_do_not_export(trained, alice):
    from rest_framework.test import APIClient

    from serving import keys

    _, key = keys.create_api_key(trained, name="ci", scopes=["read", "predict", "import"], user=alice)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Api-Key {key}")
    assert client.get(reverse("api-taxonomy-history", args=[trained.pk])).status_code == 200
    assert client.get(reverse("api-export", args=[trained.pk]), {"format": "csv"}).status_code in {401, 403}
    assert client.get(reverse("api-model-download", args=[trained.pk, 1])).status_code in {401, 403}


def test_the_model_versions_page_links_managers_to_the_model_downloads(trained, alice, bob, login):
    url = reverse("serving:versions", args=[trained.pk])
    export = reverse("learning:export", args=[trained.pk])
    assert f'{export}#models' in login(alice).get(url).text
    assert export not in login(bob).get(url).text
    page = login(alice).get(export).text
    assert reverse("learning:export-model", args=[trained.pk, 1]) in page


def test_the_export_url_without_its_trailing_slash_redirects_with_the_query(project, labelled, alice, api_client):
    response = api_client(alice).get(f"/api/v1/projects/{project.pk}/export?format=jsonl&labelled_only=true")
    assert response.status_code == 301
    assert response["Location"] == f"/api/v1/projects/{project.pk}/export/?format=jsonl&labelled_only=true"

"""Importing into span (NER) projects: every format through every way in, and bad input that imports nothing.

The files are real: slices of SEC-filings NER (its original IO-tagged CoNLL .txt and the IOB2 JSONL made from
it) and of LeNER-Br's CoNLL, shipped in tests/data/ner (see its README).
"""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import CommandError, call_command
from django.urls import reverse

from annotation.models import Annotation, AnnotationSource
from projects import imports, spanformats, taxonomy
from projects.models import Dataset, DatasetStatus, Example, Project

NER = Path(__file__).resolve().parent / "data" / "ner"
ENTITY_TYPES = ["PER", "ORG", "LOC", "MISC"]


@pytest.fixture
def span_project(team, alice) -> Project:
    return taxonomy.create_project(team, name="Filings NER", task_type="span", created_by=alice,
                                   labels=[taxonomy.LabelSpec(name) for name in ENTITY_TYPES])


@pytest.fixture
def upload_and_import(login, run_jobs) -> Callable[..., Dataset]:
    def upload_and_import(user, project: Project, name: str, content: bytes, **mapping: str) -> Dataset:
        """Upload and map through the pages, as a manager would, then run the queued job."""
        client = login(user)
        response = client.post(reverse("projects:upload", args=[project.pk]),
                               {"file": SimpleUploadedFile(name, content)})
        assert response.status_code == 302, response.content.decode()[:2000]
        dataset = Dataset.objects.filter(project=project, name=name).latest("pk")
        page = client.get(reverse("projects:dataset", args=[project.pk, dataset.pk]))
        assert page.status_code == 200
        form = page.context["form"]
        chosen = {"text_column": form.initial.get("text_column", ""),
                  "label_column": form.initial.get("label_column", ""), "id_column": "", **mapping}
        with run_jobs():
            response = client.post(reverse("projects:dataset", args=[project.pk, dataset.pk]), chosen)
        assert response.status_code == 302, response.content.decode()[:3000]
        dataset.refresh_from_db()
        return dataset

    return upload_and_import


def sec_rows(n: int | None = None) -> list[dict]:
    lines = (NER / "sec_filings_tokens_tags.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines[:n]]


def jsonl(rows: list[dict]) -> bytes:
    return ("\n".join(json.dumps(row, ensure_ascii=False) for row in rows) + "\n").encode()


def keys_by_name(project: Project) -> dict[str, str]:
    return {label.name: label.key for label in project.current_taxonomy().labels.all()}


def stored_spans(project: Project) -> dict[str, list[tuple[int, int, str]]]:
    """{text: [(start, end, label name)]} of the project's imported annotations."""
    names = {label.key: label.name for label in project.current_taxonomy().labels.all()}
    return {a.example.text: [(s["start"], s["end"], names[s["label"]]) for s in a.spans]
            for a in Annotation.objects.in_project(project).select_related("example")}


def expected_spans(rows: list[dict]) -> dict[str, list[tuple[int, int, str]]]:
    out: dict[str, list[tuple[int, int, str]]] = {}
    for row in rows:
        text, _, spans = spanformats.spans_from_tags(row["tokens"], row["tags"])
        out.setdefault(text, [(s["start"], s["end"], s["label"]) for s in spans])
    return out


def assert_nothing_imported(project: Project, taxonomy_version: int = 1) -> None:
    assert Example.objects.filter(project=project).count() == 0
    assert Annotation.objects.in_project(project).count() == 0
    assert project.current_taxonomy().number == taxonomy_version


# --- each format ------------------------------------------------------------------------------------------------


def test_it_imports_pre_tokenized_jsonl_with_tags_as_span_annotations(span_project, alice, upload_and_import):
    rows = sec_rows()
    dataset = upload_and_import(alice, span_project, "sec.jsonl", (NER / "sec_filings_tokens_tags.jsonl").read_bytes())
    assert dataset.status == DatasetStatus.DONE, dataset.errors
    assert (dataset.text_column, dataset.label_column) == ("tokens", "tags")
    texts = {" ".join(row["tokens"]) for row in rows}
    assert dataset.imported_count == len(texts) == Example.objects.filter(project=span_project).count()
    assert stored_spans(span_project) == expected_spans(rows)
    example = Example.objects.get(project=span_project, text=" ".join(rows[0]["tokens"]))
    assert [example.text[s:e] for s, e in example.tokens] == rows[0]["tokens"]
    annotation = Annotation.objects.get(example=example)
    assert annotation.source == AnnotationSource.IMPORT and annotation.annotator == alice
    assert annotation.label_keys == sorted({s["label"] for s in annotation.spans})
    # A sentence with no entity is labelled too: "no entity here" is an answer.
    empty = next(row for row in rows if set(row["tags"]) == {"O"})
    assert Annotation.objects.get(example__text=" ".join(empty["tokens"])).spans == []
    assert dataset.labelled_count == dataset.imported_count


def test_it_imports_pre_annotated_char_spans(span_project, alice, upload_and_import):
    content = (NER / "sec_filings_spans.jsonl").read_bytes()
    dataset = upload_and_import(alice, span_project, "spans.jsonl", content)
    assert dataset.status == DatasetStatus.DONE, dataset.errors
    assert (dataset.text_column, dataset.label_column) == ("text", "spans")
    assert stored_spans(span_project) == expected_spans(sec_rows())
    example = Example.objects.filter(project=span_project).first()
    assert example.tokens == [list(t) for t in spanformats.tokenize(example.text, "en")]


def test_it_imports_plain_text_tokenized_in_the_projects_language(team, alice, upload_and_import):
    project = taxonomy.create_project(team, name="Decisões", task_type="span", created_by=alice,
                                      labels=[taxonomy.LabelSpec("PESSOA")])
    project.language = "pt"
    project.save()
    texts = ["O Sr. João da Silva recorreu ao STF.", "Nega-se provimento ao recurso."]
    content = ("text\n" + "\n".join(f'"{t}"' for t in texts) + "\n").encode()
    dataset = upload_and_import(alice, project, "decisoes.csv", content, label_column="")
    assert dataset.status == DatasetStatus.DONE, dataset.errors
    assert dataset.labelled_count == 0 and Annotation.objects.in_project(project).count() == 0
    for text in texts:
        example = Example.objects.get(project=project, text=text)
        assert example.tokens == [list(t) for t in spanformats.tokenize(text, "pt")]
    # spaCy's Portuguese rules keep "Sr." whole, where a whitespace split would not separate "STF." either.
    example = Example.objects.get(project=project, text=texts[0])
    assert "Sr." in [example.text[s:e] for s, e in example.tokens]
    assert [example.text[s:e] for s, e in example.tokens][-2:] == ["STF", "."]


def test_it_imports_a_conll_file_ignoring_docstart(team, alice, upload_and_import):
    project = taxonomy.create_project(team, name="LeNER", task_type="span", created_by=alice,
                                      labels=[taxonomy.LabelSpec(n) for n in
                                              ("ORGANIZACAO", "PESSOA", "TEMPO", "LOCAL", "LEGISLACAO",
                                               "JURISPRUDENCIA")])
    project.language = "pt"
    project.save()
    path = NER / "lener_br_train_head.conll"
    dataset = upload_and_import(alice, project, path.name, path.read_bytes())
    assert dataset.status == DatasetStatus.DONE, dataset.errors
    assert dataset.file_format == "conll"
    sentences = list(spanformats.parse_conll(path.read_text(encoding="utf-8").splitlines()))
    assert dataset.total_rows == len(sentences) == 30
    expected = expected_spans([{"tokens": t, "tags": g} for t, g in sentences])
    assert stored_spans(project) == expected
    assert not Example.objects.filter(project=project, text__contains="DOCSTART").exists()


def test_it_reads_a_txt_in_conll_columns_with_io_tags(span_project, alice, upload_and_import):
    """SEC filings' original file: `token POS - tag` columns, IO tags (I- only), a .txt."""
    path = NER / "sec_filings_fin5_head.txt"
    dataset = upload_and_import(alice, span_project, path.name, path.read_bytes())
    assert dataset.status == DatasetStatus.DONE, dataset.errors
    assert dataset.file_format == "conll"
    # The IO file and the IOB2 JSONL converted from it hold the same entities.
    spans = stored_spans(span_project)
    expected = expected_spans(sec_rows())
    assert spans and all(spans[text] == expected[text] for text in spans if text in expected)
    assert len(set(spans) & set(expected)) >= 30


def test_it_creates_unknown_entity_labels_when_ticked(team, alice, upload_and_import):
    project = taxonomy.create_project(team, name="Only people", task_type="span", created_by=alice,
                                      labels=[taxonomy.LabelSpec("PER")])
    content = (NER / "sec_filings_tokens_tags.jsonl").read_bytes()
    refused = upload_and_import(alice, project, "sec.jsonl", content)
    assert refused.status == DatasetStatus.FAILED
    assert "unknown" in refused.errors[0]["reason"] and "'ORG'" in refused.errors[0]["reason"] + str(refused.errors)
    assert_nothing_imported(project)
    dataset = upload_and_import(alice, project, "sec.jsonl", content, add_unknown_labels="on")
    assert dataset.status == DatasetStatus.DONE, dataset.errors
    found = {span[2] for spans in expected_spans(sec_rows()).values() for span in spans}
    assert set(keys_by_name(project)) == found | {"PER"} and len(found) >= 3
    assert stored_spans(project) == expected_spans(sec_rows())


# --- bad input: a row-numbered error, nothing imported ----------------------------------------------------------


def _bad_rows() -> list[tuple[str, list[dict], int, str]]:
    good = sec_rows(3)
    text = "Peter Blackburn visited Brussels ."
    return [
        ("offsets out of range", [*good, {"text": text, "spans": [{"start": 24, "end": 99, "label": "LOC"}]}],
         4, "outside the text"),
        ("not on token boundaries", [*good, {"text": text, "spans": [{"start": 2, "end": 15, "label": "PER"}]}],
         4, "not a token start (nearest: 0 or 6)"),
        ("overlapping spans", [*good, {"text": text, "spans": [{"start": 0, "end": 15, "label": "PER"},
                                                             {"start": 6, "end": 15, "label": "ORG"}]}],
         4, "overlap"),
        ("span on whitespace", [*good, {"text": "Peter   Blackburn",
                                        "spans": [{"start": 5, "end": 8, "label": "PER"}]}],
         4, "only whitespace"),
        ("I- with no B-", [*good, {"tokens": ["Mr", "Peter", "Blackburn", "and", "Smith"],
                                   "tags": ["O", "B-PER", "I-PER", "O", "I-PER"]}],
         4, "token 5 ('Smith'): I-PER follows O (no B-PER before it)"),
        ("unknown label", [*good, {"text": text, "spans": [{"start": 0, "end": 15, "label": "PERSON"}]}],
         4, "'PERSON'"),
        ("length mismatch", [*good, {"tokens": ["Peter", "Blackburn"], "tags": ["B-PER"]}],
         4, "2 tokens but 1 tags"),
        ("empty document", [*good, {"text": "   ", "spans": []}], 4, "empty document"),
        ("empty token list", [*good, {"tokens": [], "tags": []}], 4, "empty document"),
    ]


@pytest.mark.parametrize("case", _bad_rows(), ids=[case[0] for case in _bad_rows()])
def test_it_refuses_a_bad_row_by_number_and_imports_nothing(case, span_project, alice, upload_and_import):
    _, rows, row, reason = case
    text_key = "tokens" if "tokens" in rows[-1] else "text"
    label_key = "tags" if text_key == "tokens" else "spans"
    if text_key == "text":
        # A file of one shape: the good rows as char spans too.
        rows = [*[{"text": " ".join(r["tokens"]),
                   "spans": spanformats.spans_from_tags(r["tokens"], r["tags"])[2]} for r in rows[:-1]], rows[-1]]
    dataset = upload_and_import(alice, span_project, "bad.jsonl", jsonl(rows), text_column=text_key,
                                label_column=label_key)
    assert dataset.status == DatasetStatus.FAILED
    assert [e["row"] for e in dataset.errors] == [row], dataset.errors
    assert reason in dataset.errors[0]["reason"], dataset.errors
    assert_nothing_imported(span_project)


def test_it_refuses_a_document_over_the_size_limit(span_project, alice, upload_and_import, settings):
    settings.MAX_TEXT_CHARS = 100
    rows = [{"text": "Short one ."}, {"text": "Peter Blackburn " * 10}]
    dataset = upload_and_import(alice, span_project, "long.jsonl", jsonl(rows), label_column="")
    assert dataset.status == DatasetStatus.FAILED
    assert dataset.errors[0]["row"] == 2 and "the limit is 100" in dataset.errors[0]["reason"]
    assert_nothing_imported(span_project)


def test_it_says_which_line_of_a_conll_file_is_wrong(span_project, alice, upload_and_import):
    content = b"-DOCSTART- O\n\nPeter B-PER\nBlackburn I-PER\n\nin O\nParis B-LOC\nFrance I-LOC\nand O\nLyon I-LOC\n"
    dataset = upload_and_import(alice, span_project, "bad.conll", content)
    assert dataset.status == DatasetStatus.FAILED
    error = dataset.errors[0]
    assert error["row"] == 2 and "(line 6)" in error["reason"]
    assert "token 5 ('Lyon'): I-LOC follows O" in error["reason"]
    assert_nothing_imported(span_project)


def test_a_conll_file_is_refused_by_a_classification_project(project, alice, login):
    response = login(alice).post(reverse("projects:upload", args=[project.pk]),
                                 {"file": SimpleUploadedFile("x.conll", b"Peter B-PER\n")})
    assert response.status_code == 400
    assert "only a span tagging project" in response.content.decode()
    assert not Dataset.objects.filter(project=project).exists()


def test_a_csv_label_column_cannot_carry_spans(span_project, alice, login):
    client = login(alice)
    client.post(reverse("projects:upload", args=[span_project.pk]),
                {"file": SimpleUploadedFile("t.csv", b"text,label\nPeter Blackburn,PER\n")})
    dataset = Dataset.objects.get(project=span_project)
    response = client.post(reverse("projects:dataset", args=[span_project.pk, dataset.pk]),
                           {"text_column": "text", "label_column": "label"})
    assert response.status_code == 400
    assert "cannot hold them" in response.content.decode()
    dataset.refresh_from_db()
    assert dataset.status == DatasetStatus.DRAFT
    assert_nothing_imported(span_project)


# --- command line and bulk API ----------------------------------------------------------------------------------


def test_it_imports_span_files_from_the_command_line(span_project, alice, tmp_path: Path, capsys):
    call_command("import_examples", span_project.pk, str(NER / "sec_filings_tokens_tags.jsonl"), "--user", "alice")
    out = capsys.readouterr().out
    assert "Imported" in out and "with labels" in out
    assert stored_spans(span_project) == expected_spans(sec_rows())
    bad = tmp_path / "bad.conll"
    bad.write_text("Peter B-PER\nBlackburn I-PER\n\nSmith I-PER\nvisited O\n", encoding="utf-8")
    before = Example.objects.filter(project=span_project).count()
    with pytest.raises(CommandError, match="Nothing was imported"):
        call_command("import_examples", span_project.pk, str(bad))
    assert "bad.conll: row 2: (line 4) token 1 ('Smith'): I-PER follows the start of the sentence" in (
        capsys.readouterr().err)
    assert Example.objects.filter(project=span_project).count() == before


def test_it_imports_a_json_push_of_spans_and_of_tokens(span_project, alice, bob, api_client):
    url = reverse("api-bulk-import", args=[span_project.pk])
    rows = sec_rows(4)
    body = {"examples": [
        {"text": "Peter Blackburn visited Brussels .", "external_id": "s-1",
         "spans": [{"start": 0, "end": 15, "label": "PER"}, {"start": 24, "end": 32, "label": "LOC"}]},
        {"text": "Nothing to see here ."},
        *[{"tokens": row["tokens"], "tags": row["tags"]} for row in rows],
    ]}
    assert api_client(bob).post(url, body, format="json").status_code == 403
    response = api_client(alice).post(url, body, format="json")
    assert response.status_code == 201, response.content
    assert response.json()["imported_count"] == 6 and response.json()["labelled_count"] == 5
    spans = stored_spans(span_project)
    assert spans["Peter Blackburn visited Brussels ."] == [(0, 15, "PER"), (24, 32, "LOC")]
    assert all(spans[text] == expected for text, expected in expected_spans(rows).items())
    assert Example.objects.get(external_id="s-1").tokens == [[0, 5], [6, 15], [16, 23], [24, 32], [33, 34]]


def test_a_bad_json_push_imports_nothing(span_project, alice, api_client):
    url = reverse("api-bulk-import", args=[span_project.pk])
    body = {"examples": [
        {"text": "Peter Blackburn visited Brussels .", "spans": [{"start": 0, "end": 15, "label": "PER"}]},
        {"tokens": ["Peter", "Blackburn"], "tags": ["I-PER", "B-PER", "O"]},
    ]}
    response = api_client(alice).post(url, body, format="json")
    assert response.status_code == 400
    assert response.json()["errors"][0]["row"] == 2
    assert "2 tokens but 3 tags" in response.json()["errors"][0]["reason"]
    assert_nothing_imported(span_project)


def test_a_classification_import_is_unchanged_and_gets_no_tokens(project, alice, api_client):
    url = reverse("api-bulk-import", args=[project.pk])
    response = api_client(alice).post(url, {"examples": [{"text": "we overrule smith.", "label": "Yes"}]},
                                      format="json")
    assert response.status_code == 201, response.content
    example = Example.objects.get(project=project)
    assert example.tokens is None
    assert Annotation.objects.get(example=example).spans == []


def test_the_upload_page_offers_conll_to_span_projects(span_project, project, alice, login):
    client = login(alice)
    page = client.get(reverse("projects:upload", args=[span_project.pk])).content.decode()
    assert ".conll" in page and "tokens" in page and "spans" in page
    assert ".conll" not in client.get(reverse("projects:upload", args=[project.pk])).content.decode()


def test_outsiders_cannot_import_into_a_span_project(span_project, bob, charlie, login, api_client):
    content = (NER / "sec_filings_spans.jsonl").read_bytes()
    for user, status in ((bob, 403), (charlie, 404)):
        response = login(user).post(reverse("projects:upload", args=[span_project.pk]),
                                    {"file": SimpleUploadedFile("s.jsonl", content)})
        assert response.status_code == status
    url = reverse("api-bulk-import", args=[span_project.pk])
    assert api_client(charlie).post(url, {"examples": [{"text": "x"}]}, format="json").status_code == 404
    assert not Dataset.objects.filter(project=span_project).exists()
    assert imports.SPAN_TEXT_NAMES[0] == "tokens"


# --- taxonomy edits on imported spans ---------------------------------------------------------------------------


@pytest.fixture
def imported_spans(span_project, alice, api_client) -> Project:
    body = {"examples": [
        {"text": "Peter Blackburn of Acme Corp visited Brussels .",
         "spans": [{"start": 0, "end": 15, "label": "PER"}, {"start": 19, "end": 28, "label": "ORG"},
                   {"start": 37, "end": 45, "label": "LOC"}]},
        {"text": "Acme Corp Paris opened .",
         "spans": [{"start": 0, "end": 9, "label": "ORG"}, {"start": 10, "end": 15, "label": "LOC"}]},
        {"text": "Nothing here .", "spans": []},
    ]}
    response = api_client(alice).post(reverse("api-bulk-import", args=[span_project.pk]), body, format="json")
    assert response.status_code == 201, response.content
    return span_project


def test_merge_rewrites_span_labels_and_label_keys(imported_spans, alice):
    from annotation import taxonomy as annotation_taxonomy

    keys = keys_by_name(imported_spans)
    new = annotation_taxonomy.merge_labels(imported_spans, into=keys["ORG"], merged=[keys["LOC"]], user=alice)
    assert "2 annotations moved" in new.changelog[0]
    names = {label.key: label.name for label in new.labels.all()}
    spans = {a.example.text: a for a in Annotation.objects.in_project(imported_spans).select_related("example")}
    first = spans["Peter Blackburn of Acme Corp visited Brussels ."]
    assert [(s["start"], s["end"], names[s["label"]]) for s in first.spans] == [
        (0, 15, "PER"), (19, 28, "ORG"), (37, 45, "ORG")]
    assert first.label_keys == sorted({keys["PER"], keys["ORG"]})
    # Adjacent entities that now share a type stay two entities.
    second = spans["Acme Corp Paris opened ."]
    assert [(s["start"], s["end"]) for s in second.spans] == [(0, 9), (10, 15)]
    assert second.label_keys == [keys["ORG"]]
    assert spans["Nothing here ."].spans == [] and spans["Nothing here ."].label_keys == []
    assert new.labels.get(key=keys["LOC"]).is_deprecated


def test_split_sends_span_examples_to_relabel_and_deprecate_counts_them(imported_spans, alice):
    from annotation import taxonomy as annotation_taxonomy
    from annotation.models import Relabel

    keys = keys_by_name(imported_spans)
    annotation_taxonomy.split_label(imported_spans, key=keys["ORG"],
                                    into=[taxonomy.LabelSpec("COMPANY"), taxonomy.LabelSpec("AGENCY")], user=alice)
    relabel = set(Relabel.objects.filter(project=imported_spans).values_list("example__text", flat=True))
    assert relabel == {"Peter Blackburn of Acme Corp visited Brussels .", "Acme Corp Paris opened ."}
    new = annotation_taxonomy.set_label_deprecated(imported_spans, key=keys["PER"], deprecated=True, user=alice)
    assert "its 1 annotation no longer train" in new.changelog[0]
    assert new.labels.get(key=keys["PER"]).is_deprecated


# --- the project's language -------------------------------------------------------------------------------------


def test_a_span_project_is_created_with_its_language(team, alice, login):
    client = login(alice)
    page = client.get(reverse("projects:create")).content.decode()
    assert 'id="language-field"' in page and "Portuguese" in page
    payload = {"team": team.pk, "name": "Acórdãos", "task_type": "span", "language": "pt",
               "labels": "PESSOA\nORGANIZACAO"}
    response = client.post(reverse("projects:create"), payload)
    assert response.status_code == 302
    assert Project.objects.get(name="Acórdãos").language == "pt"
    refused = client.post(reverse("projects:create"), {**payload, "name": "Other", "language": "klingon"})
    assert refused.status_code == 200 and "klingon is not one of the available choices" in refused.content.decode()
    assert not Project.objects.filter(name="Other").exists()
    classification = {"team": team.pk, "name": "Overruling 2", "task_type": "single_label", "labels": "Yes\nNo"}
    assert client.post(reverse("projects:create"), classification).status_code == 302
    assert Project.objects.get(name="Overruling 2").language == "en"


def test_the_draft_page_guesses_span_columns_and_counts_entity_labels(span_project, alice, login, htmx):
    client = login(alice)
    client.post(reverse("projects:upload", args=[span_project.pk]),
                {"file": SimpleUploadedFile("sec.jsonl", (NER / "sec_filings_tokens_tags.jsonl").read_bytes())})
    dataset = Dataset.objects.get(project=span_project)
    url = reverse("projects:dataset", args=[span_project.pk, dataset.pk])
    page = client.get(url)
    assert page.context["form"].initial["text_column"] == "tokens"
    assert page.context["form"].initial["label_column"] == "tags"
    html = page.content.decode()
    assert "Entities column" in html and "Entity labels in column" in html
    rows_with = {name: sum(1 for text, spans in expected_spans(sec_rows()).items() if name in {s[2] for s in spans})
                 for name in ("ORG", "PER")}
    assert page.context["labels_found"]["ORG"] == rows_with["ORG"] and page.context["labels_found"]["PER"] == (
        rows_with["PER"])
    # Choosing the spans column over HTMX re-reads the file the same way.
    partial = client.post(url, {"text_column": "tokens", "label_column": "tags", "action": "preview"}, **htmx)
    assert partial.status_code == 200 and "Entity labels" in partial.content.decode()
    dataset.refresh_from_db()
    assert dataset.status == DatasetStatus.DRAFT


def test_the_file_upload_api_guesses_span_columns(span_project, alice, run_jobs, api_client):
    with run_jobs():
        response = api_client(alice).post(
            reverse("api-file-import", args=[span_project.pk]),
            {"file": SimpleUploadedFile("sec.jsonl", (NER / "sec_filings_spans.jsonl").read_bytes()),
             "add_unknown_labels": True}, format="multipart")
    assert response.status_code == 202, response.content
    status = api_client(alice).get(response["Location"]).json()
    assert status["status"] == "done", status["errors"]
    assert (status["text_column"], status["label_column"]) == ("text", "spans")
    assert stored_spans(span_project) == expected_spans(sec_rows())

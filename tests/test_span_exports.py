"""Exports of span projects (issue 14): JSONL with char spans, CoNLL IOB2, spaCy DocBin entities and the Hugging Face
token-classification layout, each parsed back; which formats each task type offers on the page, the API and the CLI;
the annotation modes for spans; and the round trip export -> import into a new project -> the same spans."""
from __future__ import annotations

import io
import json
import zipfile
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command
from django.urls import reverse

from annotation.models import Annotation, AnnotationSource, ExampleScore
from learning import exports
from projects import taxonomy
from projects.importing import content_hash
from projects.models import Example, Project
from projects.spanformats import parse_conll, spans_from_tags, tokenize

pytestmark = pytest.mark.django_db

TEXTS = [
    ("Angela Merkel met Emmanuel Macron in Paris.", "doc-1", {"source": "wire"}),
    ("Apple Inc. opened an office in  Berlin\non Monday.", "doc-2", {"source": "filing", "page": 3}),
    ("Nothing to tag here.", "doc-3", {}),
    ("Unlabelled text about Siemens.", "", {}),
]


def _span(text: str, fragment: str, label: str, *, nth: int = 0) -> dict[str, Any]:
    start = -1
    for _ in range(nth + 1):
        start = text.index(fragment, start + 1)
    return {"start": start, "end": start + len(fragment), "label": label}


@pytest.fixture
def span_project(team: Any, alice: User) -> Project:
    return taxonomy.create_project(team, name="Contracts NER", task_type="span", created_by=alice,
                                   labels=[taxonomy.LabelSpec(n) for n in ("PER", "ORG", "LOC")])


def _keys(project: Project) -> dict[str, str]:
    return dict(project.current_taxonomy().labels.values_list("name", "key"))


def _annotate(project: Project, user: Any, example: Example, spans: list[dict[str, Any]]) -> Annotation:
    keys = _keys(project)
    stored = [{"start": s["start"], "end": s["end"], "label": keys[s["label"]]} for s in spans]
    return Annotation.objects.create(example=example, annotator=user, taxonomy_version=project.current_taxonomy(),
                                     label_keys=sorted({s["label"] for s in stored}), spans=stored,
                                     source=AnnotationSource.UI)


GOLD = {
    "doc-1": [("Angela Merkel", "PER"), ("Emmanuel Macron", "PER"), ("Paris", "LOC")],
    "doc-2": [("Apple Inc.", "ORG"), ("Berlin", "LOC")],
    "doc-3": [],
}


@pytest.fixture
def labelled(span_project: Project, alice: User) -> list[Example]:
    """Four examples: two with entities, one labelled 'no entity' (spans []), one unlabelled."""
    examples = list(Example.objects.bulk_create(
        Example(project=span_project, text=text, external_id=ext, metadata=meta, content_hash=content_hash(text),
                tokens=[list(t) for t in tokenize(text, "en")])
        for text, ext, meta in TEXTS))
    for example in examples[:3]:
        _annotate(span_project, alice, example,
                  [_span(example.text, fragment, label) for fragment, label in GOLD[example.external_id]])
    return examples


def _export(project: Project, **options: Any) -> bytes:
    plan = exports.plan_export(project, exports.parse_options(options))
    return b"".join(exports.stream_export(plan))


def _jsonl(payload: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in payload.decode("utf-8").splitlines()]


def _fragments(text: str, spans: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(text[s["start"]:s["end"]], s["label"]) for s in spans]


# --- Each format, parsed back ------------------------------------------------------------------------------------


def test_spans_jsonl_has_char_spans_by_label_name_and_null_for_unlabelled(span_project, labelled):
    rows = _jsonl(_export(span_project, format="spans-jsonl"))
    assert [r["id"] for r in rows] == ["doc-1", "doc-2", "doc-3", str(labelled[3].pk)]
    for row in rows[:3]:
        assert _fragments(row["text"], row["spans"]) == GOLD[row["id"]]
        assert set(row) == {"id", "text", "spans", "source", "page"}
    assert rows[2]["spans"] == []  # labelled "no entity": an answer, not a missing one
    assert rows[3]["spans"] is None
    assert rows[1]["page"] == 3 and rows[0]["page"] is None
    assert len(_jsonl(_export(span_project, format="spans-jsonl", labelled_only="true"))) == 3


def test_conll_is_a_token_and_its_iob2_tag_per_line_with_a_blank_line_between_examples(span_project, labelled):
    text = _export(span_project, format="conll").decode("utf-8")
    blocks = text.split("\n\n")
    assert blocks[-1] == "" and len(blocks) == 4  # three labelled examples, the unlabelled one left out
    assert blocks[0].splitlines()[:3] == ["Angela\tB-PER", "Merkel\tI-PER", "met\tO"]
    sentences = list(parse_conll(text.splitlines()))
    assert len(sentences) == 3
    for (tokens, tags), (example_text, ext, _) in zip(sentences, TEXTS, strict=False):
        assert tokens == [example_text[a:b] for a, b in tokenize(example_text, "en")]
        _, _, spans = spans_from_tags(tokens, tags)
        assert [s["label"] for s in spans] == [label for _, label in GOLD[ext]]
    assert sentences[2][1] == ["O"] * 5


def test_spacy_docbin_has_doc_ents_and_keeps_the_exact_text(span_project, labelled):
    import spacy
    from spacy.tokens import DocBin

    payload = _export(span_project, format="spacy-ner")
    docs = list(DocBin().from_bytes(payload).get_docs(spacy.blank("en").vocab))
    assert [d.text for d in docs] == [t for t, _, _ in TEXTS]  # double space and newline kept
    for doc, (_, ext, meta) in zip(docs[:3], TEXTS, strict=False):
        assert [(e.text, e.label_) for e in doc.ents] == GOLD[ext]
        assert doc.user_data["id"] == ext
        assert doc.user_data.get("metadata", {}) == meta
    assert all(t.ent_iob_ == "O" for t in docs[2])  # labelled, no entity: outside
    assert all(t.ent_iob_ == "" for t in docs[3])  # unlabelled: missing, which spacy train skips
    # Tokens are LabelHub's: "Inc." stays one token, as in Example.tokens.
    assert [t.text for t in docs[1] if not t.is_space][:3] == ["Apple", "Inc.", "opened"]


def test_hf_ner_zip_has_tokens_ner_tag_indices_and_the_tag_names(span_project, labelled):
    archive = zipfile.ZipFile(io.BytesIO(_export(span_project, format="hf-ner-jsonl")))
    assert sorted(archive.namelist()) == ["README.md", "dataset_info.json", "train.jsonl"]
    info = json.loads(archive.read("dataset_info.json"))
    names = info["features"]["ner_tags"]["feature"]["names"]
    assert names == ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC"]
    assert info["features"]["tokens"] == {"feature": {"dtype": "string", "_type": "Value"}, "_type": "Sequence"}
    rows = _jsonl(archive.read("train.jsonl"))
    first = rows[0]
    assert first["tokens"][:4] == ["Angela", "Merkel", "met", "Emmanuel"]
    assert [names[i] for i in first["ner_tags"]][:5] == ["B-PER", "I-PER", "O", "B-PER", "I-PER"]
    _, _, spans = spans_from_tags(first["tokens"], [names[i] for i in first["ner_tags"]])
    assert [s["label"] for s in spans] == ["PER", "PER", "LOC"]
    assert rows[3]["ner_tags"] is None and len(rows[3]["tokens"]) == 5
    assert "ner_tags" in archive.read("README.md").decode() and "class_label" in archive.read("README.md").decode()


# --- Which formats a task type offers ------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "hf-jsonl", "hf-parquet", "spacy", "label-studio"])
def test_a_classification_format_on_a_span_project_is_a_clear_400(span_project, labelled, fmt):
    with pytest.raises(exports.ActionError, match=f"The {fmt} format is for classification projects; this is a "
                       "span project: export it as one of spans-jsonl, conll, spacy-ner, hf-ner-jsonl") as caught:
        _export(span_project, format=fmt)
    assert caught.value.status == 400


@pytest.mark.parametrize("fmt", ["spans-jsonl", "conll", "spacy-ner", "hf-ner-jsonl"])
def test_a_span_format_on_a_classification_project_is_a_clear_400(project, fmt):
    with pytest.raises(exports.ActionError, match=f"The {fmt} format is for span projects; this is a "
                       "classification project: export it as one of csv, jsonl"):
        _export(project, format=fmt)


def test_conll_refuses_what_it_cannot_hold(span_project, labelled):
    with pytest.raises(exports.ActionError, match="CoNLL has no place for the annotator"):
        _export(span_project, format="conll", annotations="each")
    with pytest.raises(exports.ActionError, match="CoNLL has one tag column"):
        _export(span_project, format="conll", predictions="true")


def test_the_page_offers_the_span_formats_and_downloads(span_project, labelled, alice, login):
    client = login(alice)
    page = client.get(reverse("learning:export", args=[span_project.pk]))
    assert page.status_code == 200
    for fmt in ("spans-jsonl", "conll", "spacy-ner", "hf-ner-jsonl"):
        assert f'value="{fmt}"' in page.text
    assert 'value="csv"' not in page.text and 'value="label-studio"' not in page.text
    assert 'value="spans-jsonl" checked' in page.text
    assert "--format spans-jsonl" in page.text and "same start, end and label" in page.text
    response = client.get(reverse("learning:export-download", args=[span_project.pk]), {"format": "conll"})
    assert response.status_code == 200
    assert b"".join(response.streaming_content).decode().startswith("Angela\tB-PER\n")
    assert response["Content-Disposition"] == 'attachment; filename="contracts-ner-v1.conll"'
    bad = client.get(reverse("learning:export-download", args=[span_project.pk]), {"format": "csv"})
    assert bad.status_code == 400 and "is for classification projects" in bad.text


def test_the_classification_page_does_not_offer_span_formats(project, alice, login):
    page = login(alice).get(reverse("learning:export", args=[project.pk]))
    assert 'value="csv" checked' in page.text and 'value="conll"' not in page.text


def test_the_api_exports_spans_and_refuses_the_wrong_task_type(span_project, labelled, alice, bob, api_client):
    url = reverse("api-export", args=[span_project.pk])
    response = api_client(alice).get(url, {"format": "spans-jsonl", "labelled_only": "true"})
    assert response.status_code == 200
    assert len(_jsonl(b"".join(response.streaming_content))) == 3
    bad = api_client(alice).get(url, {"format": "hf-parquet"})
    assert bad.status_code == 400 and "spans-jsonl, conll, spacy-ner, hf-ner-jsonl" in bad.json()["detail"]
    assert api_client(bob).get(url, {"format": "conll"}).status_code == 403


def test_the_cli_writes_span_formats_and_refuses_the_wrong_one(span_project, labelled, tmp_path, capsys):
    out = tmp_path / "ner.conll"
    call_command("export", span_project.pk, "--format", "conll", "--out", str(out))
    assert len(list(parse_conll(out.read_text(encoding="utf-8").splitlines()))) == 3
    assert "Wrote" in capsys.readouterr().err
    with pytest.raises(CommandError, match="The csv format is for classification projects"):
        call_command("export", span_project.pk, "--format", "csv", "--out", str(tmp_path / "x.csv"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ner.conll"]


# --- Annotation modes, taxonomy versions, predictions ----------------------------------------------------------------


def test_latest_majority_and_each_for_spans(span_project, labelled, alice, bob, team):
    from django.contrib.auth.models import User as UserModel

    from projects.models import Membership, Role

    carol = UserModel.objects.create_user(username="carol", password="carol-password-123")
    Membership.objects.create(team=team, user=carol, role=Role.ANNOTATOR)
    example = labelled[0]
    text = example.text
    merkel, macron, paris = (_span(text, f, label) for f, label in GOLD["doc-1"])
    emmanuel = _span(text, "Emmanuel", "PER")
    _annotate(span_project, bob, example, [merkel, emmanuel])
    _annotate(span_project, carol, example, [merkel, macron, {**paris, "label": "ORG"}])
    # alice (first): Merkel, Macron, Paris/LOC; bob: Merkel, Emmanuel; carol (latest): Merkel, Macron, Paris/ORG.
    latest = _jsonl(_export(span_project, format="spans-jsonl", labelled_only="true"))[0]
    assert _fragments(text, latest["spans"]) == [("Angela Merkel", "PER"), ("Emmanuel Macron", "PER"),
                                                 ("Paris", "ORG")]
    majority = _jsonl(_export(span_project, format="spans-jsonl", labelled_only="true", annotations="majority"))[0]
    assert _fragments(text, majority["spans"]) == [("Angela Merkel", "PER"), ("Emmanuel Macron", "PER")]
    each = [r for r in _jsonl(_export(span_project, format="spans-jsonl", annotations="each")) if r["id"] == "doc-1"]
    assert [(r["annotator"], len(r["spans"])) for r in each] == [("carol", 3), ("bob", 2), ("alice", 3)]


def test_majority_of_two_keeps_agreed_spans_and_the_latest_on_a_tie(span_project, labelled, bob):
    example = labelled[1]
    apple, berlin = (_span(example.text, f, label) for f, label in GOLD["doc-2"])
    _annotate(span_project, bob, example, [apple])  # bob is newest: Apple (both), Berlin only alice's
    rows = _jsonl(_export(span_project, format="spans-jsonl", annotations="majority", labelled_only="true"))
    assert _fragments(example.text, rows[1]["spans"]) == [("Apple Inc.", "ORG")]


def test_spans_are_named_as_in_the_chosen_taxonomy_version(span_project, labelled, alice):
    keys = _keys(span_project)
    taxonomy.edit_label(span_project, key=keys["LOC"], name="Place", user=alice)
    now = _jsonl(_export(span_project, format="spans-jsonl", labelled_only="true"))
    assert [s["label"] for s in now[0]["spans"]] == ["PER", "PER", "Place"]
    before = _jsonl(_export(span_project, format="spans-jsonl", labelled_only="true", taxonomy_version="1"))
    assert [s["label"] for s in before[0]["spans"]] == ["PER", "PER", "LOC"]
    conll = _export(span_project, format="conll").decode()
    assert "Paris\tB-Place" in conll


def test_predictions_are_the_suggested_spans_with_confidence(span_project, labelled):
    example = labelled[3]
    siemens = _span(example.text, "Siemens", "ORG")
    key = _keys(span_project)["ORG"]
    ExampleScore.objects.create(example=example, project=span_project, model_version_number=2, confidence=0.7,
                                suggested_spans=[{**siemens, "label": key, "confidence": 0.83}])
    row = _jsonl(_export(span_project, format="spans-jsonl", predictions="true"))[3]
    assert row["predicted_spans"] == [{**siemens, "confidence": 0.83}]
    assert row["model_version"] == 2 and row["confidence"] == 0.7 and row["spans"] is None
    archive = zipfile.ZipFile(io.BytesIO(_export(span_project, format="hf-ner-jsonl", predictions="true")))
    names = json.loads(archive.read("dataset_info.json"))["features"]["pred_ner_tags"]["feature"]["names"]
    hf = _jsonl(archive.read("train.jsonl"))[3]
    assert [names[i] for i in hf["pred_ner_tags"]] == ["O", "O", "O", "B-ORG", "O"]


# --- Round trip: export, import into a new project, the same spans -------------------------------------------------


def _spans_by_text(project: Project) -> dict[str, list[tuple[int, int, str]]]:
    names = dict(project.current_taxonomy().labels.values_list("key", "name"))
    out = {}
    for annotation in Annotation.objects.filter(example__project=project).select_related("example"):
        out[annotation.example.text] = sorted((s["start"], s["end"], names[s["label"]]) for s in annotation.spans)
    return out


@pytest.mark.parametrize("fmt, suffix", [("spans-jsonl", "jsonl"), ("conll", "conll")])
def test_an_export_imports_back_into_a_new_project_with_the_same_spans(span_project, labelled, alice, team, tmp_path,
                                                                        fmt, suffix):
    path = tmp_path / f"export.{suffix}"
    call_command("export", span_project.pk, "--format", fmt, "--out", str(path), "--labelled-only")
    new = taxonomy.create_project(team, name=f"Round trip {fmt}", task_type="span", created_by=alice,
                                  labels=[taxonomy.LabelSpec(n) for n in ("PER", "ORG", "LOC")])
    call_command("import_examples", new.pk, str(path), "--user", "alice")
    before = _spans_by_text(span_project)
    after = _spans_by_text(new)
    if fmt == "conll":  # CoNLL carries tokens, not the text: the text comes back as the tokens joined by spaces
        before = {" ".join(t[a:b] for a, b in tokenize(t, "en")): _respace(t, s) for t, s in before.items()}
    assert after == before
    assert sum(len(s) for s in after.values()) == 5


def _respace(text: str, spans: list[tuple[int, int, str]]) -> list[tuple[int, int, str]]:
    """The spans' offsets in the text rebuilt from its tokens joined by single spaces."""
    tokens = tokenize(text, "en")
    new_start, position = {}, 0
    for a, b in tokens:
        new_start[a] = position
        position += (b - a) + 1
    ends = {b: new_start[a] + (b - a) for a, b in tokens}
    return sorted((new_start[s], ends[e], label) for s, e, label in spans)


def test_the_export_is_in_the_openapi_schema_with_the_span_formats(client):
    schema = client.get(reverse("api-schema"), HTTP_ACCEPT="application/json").json()
    parameters = {p["name"]: p for p in schema["paths"]["/api/v1/projects/{id}/export/"]["get"]["parameters"]}
    assert {"spans-jsonl", "conll", "spacy-ner", "hf-ner-jsonl"} <= set(parameters["format"]["schema"]["enum"])
    assert "Span projects" in parameters["format"]["description"]

"""The prediction API of span projects (issue 14): spans with confidence, routing from the span precision-vs-coverage
curve, the person's spans back on GET …/predictions/{id}/ and the webhook, bad input, and who may ask."""
from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from django.contrib.auth.models import User
from django.urls import reverse
from rest_framework.test import APIClient

from annotation.models import Annotation, AnnotationSource, ExampleScore
from learning import actions as learning_actions
from learning import loop_base
from learning import spans as spanml
from learning.models import EmbeddingChunk, ModelVersion
from projects import taxonomy
from projects.importing import content_hash
from projects.models import Example, Membership, Project, Role
from projects.spanformats import tokenize
from serving import keys, predictions, served
from serving.models import Prediction, WebhookDelivery
from serving.webhooks import register_endpoint

pytestmark = pytest.mark.django_db

DIM = 12
# Each word's tag is readable from its vector alone (the fake encoder has no context): first names begin a
# person, surnames continue one, company words begin / continue an organisation; anything else is outside.
WORDS = {"Alice": 1, "Bruno": 1, "Chen": 1, "Smith": 2, "Jones": 2, "Okafor": 2, "Acme": 3, "Globex": 3,
         "Corp": 4, "Holdings": 4}
_rng = np.random.default_rng(3)
CENTRES = _rng.normal(size=(5, DIM)) * 3


class FakeTokenEncoder:
    """Token vectors near the centre of the word's tag (WORDS), "Maybe" half way between O and B-PER."""

    name = "fake-token-encoder-12"
    dim = DIM

    def encode(self, texts: list[str]) -> np.ndarray:
        return np.stack([v.mean(axis=0) if len(v) else np.zeros(DIM, np.float32) for v in self.encode_tokens(
            texts, [tokenize(t, "en") for t in texts])]).astype(np.float32)

    def encode_tokens(self, texts: list[str], offsets: list[list[tuple[int, int]]]) -> list[np.ndarray]:
        out = []
        for text, tokens in zip(texts, offsets, strict=True):
            rows = []
            for start, end in tokens:
                word = text[start:end]
                seed = int(hashlib.sha1(word.encode()).hexdigest()[:8], 16)
                noise = np.random.default_rng(seed).normal(size=DIM) * 0.3
                centre = (CENTRES[0] + CENTRES[1]) / 2 if word == "Maybe" else CENTRES[WORDS.get(word, 0)]
                rows.append(centre + noise)
            out.append(np.array(rows, dtype=np.float32).reshape(len(tokens), DIM))
        return out


@pytest.fixture
def token_encoder(monkeypatch: Any) -> Iterator[FakeTokenEncoder]:
    encoder = FakeTokenEncoder()
    monkeypatch.setattr(learning_actions, "current_encoder", lambda: encoder)
    monkeypatch.setattr(loop_base, "current_encoder", lambda: encoder)
    served.forget()
    yield encoder
    served.forget()


SENTENCES = [
    "Alice Smith joined Acme Corp in May .",
    "Bruno Jones left Globex Holdings .",
    "The board met on Monday .",
    "Chen Okafor signed for Acme Corp .",
    "Shares of Globex Corp fell .",
    "Alice Jones and Bruno Smith spoke .",
]


def _gold(text: str) -> list[dict[str, Any]]:
    """Spans by the WORDS rule: a begin word and the continue words after it."""
    spans, tokens = [], tokenize(text, "en")
    i = 0
    while i < len(tokens):
        kind = WORDS.get(text[tokens[i][0]:tokens[i][1]])
        if kind in (1, 3):
            j = i + 1
            while j < len(tokens) and WORDS.get(text[tokens[j][0]:tokens[j][1]]) == kind + 1:
                j += 1
            spans.append({"start": tokens[i][0], "end": tokens[j - 1][1], "label": "PER" if kind == 1 else "ORG"})
            i = j
        else:
            i += 1
    return spans


CURVE = [  # span precision vs coverage, as learning.span_quality writes it (cross-validated)
    {"threshold": 0.2, "coverage": 1.0, "accuracy": 0.80},
    {"threshold": 0.6, "coverage": 0.9, "accuracy": 0.90},
    {"threshold": 0.9, "coverage": 0.7, "accuracy": 0.97},
]


@pytest.fixture
def span_project(team: Any, alice: User) -> Project:
    return taxonomy.create_project(team, name="Deals NER", task_type="span", created_by=alice,
                                   labels=[taxonomy.LabelSpec("PER"), taxonomy.LabelSpec("ORG")])


@pytest.fixture
def served_spans(span_project: Project, alice: User, token_encoder: FakeTokenEncoder) -> Project:
    """`span_project` with its six sentences labelled and span model v1 saved as the learning loop saves it
    (learning.spans.SpanModel.to_npz, the entity label keys in tag order), with a span precision curve."""
    keys = dict(span_project.current_taxonomy().labels.values_list("name", "key"))
    texts = SENTENCES * 3
    examples = Example.objects.bulk_create(
        Example(project=span_project, text=f"{t} ({n})", content_hash=content_hash(f"{t} ({n})"),
                tokens=[list(o) for o in tokenize(f"{t} ({n})", "en")]) for n, t in enumerate(texts))
    version = span_project.current_taxonomy()
    Annotation.objects.bulk_create(
        Annotation(example=e, annotator=alice, taxonomy_version=version,
                   spans=[{**s, "label": keys[s["label"]]} for s in _gold(e.text)],
                   label_keys=sorted({keys[s["label"]] for s in _gold(e.text)}), source=AnnotationSource.UI)
        for e in examples)
    label_keys = [keys["PER"], keys["ORG"]]
    tagset = spanml.TagSet(label_keys)
    offsets = [[tuple(o) for o in e.tokens] for e in examples]
    vectors = token_encoder.encode_tokens([e.text for e in examples], offsets)
    targets = [spanml.tag_ids(o, [{**s, "label": keys[s["label"]]} for s in _gold(e.text)], tagset)
               for o, e in zip(offsets, examples, strict=True)]
    model = spanml.SpanModel.fit(vectors, targets, tagset)
    ModelVersion.objects.create(project=span_project, number=1, taxonomy_version=version, label_keys=label_keys,
                                encoder=token_encoder.name, strategy="bald", n_labels=len(examples),
                                artifact=model.to_npz(), metrics={"task": "span", "span_precision_coverage": CURVE})
    return span_project


def key_client(project: Project, user: User, scopes: tuple[str, ...] = ("predict",)) -> APIClient:
    key = keys.create_api_key(project, name="t", scopes=list(scopes), user=user)[1]
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Api-Key {key}")
    return client


def post(client: APIClient, project: Project, body: Any) -> Any:
    return client.post(reverse("api-predict", args=[project.pk]), data=json.dumps(body),
                       content_type="application/json")


def test_it_answers_spans_with_text_label_confidence_version_and_id(served_spans, alice):
    served.set_threshold(served_spans, mode="confidence", confidence_threshold=0.0)
    text = "Yesterday Chen Smith bought Globex Holdings ."
    response = post(key_client(served_spans, alice), served_spans, {"texts": [text, "Nothing here ."]})
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["model_version"] == 1
    first, second = body["predictions"]
    assert [(s["text"], s["label"]) for s in first["spans"]] == [("Chen Smith", "PER"), ("Globex Holdings", "ORG")]
    for span in first["spans"]:
        assert text[span["start"]:span["end"]] == span["text"]
        assert 0 < span["confidence"] <= 1 and span["label_key"]
    assert first["labels"] == ["PER", "ORG"] or sorted(first["labels"]) == ["ORG", "PER"]
    assert first["confidence"] == pytest.approx(min([first["token_confidence"]] +
                                                    [s["confidence"] for s in first["spans"]]))
    assert first["label"] is None and first["probabilities"] == {}
    assert second["spans"] == [] and not second["is_routed"]  # a model that finds nothing: empty spans
    stored = Prediction.objects.get(pk=first["prediction_id"])
    assert stored.spans[0]["label"] in ModelVersion.objects.get().label_keys and stored.embedding is not None
    assert not Example.objects.filter(metadata__source="api").exists()


def test_the_threshold_comes_from_the_span_precision_curve(served_spans, alice):
    served.set_threshold(served_spans, mode="target", target_accuracy=0.95)
    summary = key_client(served_spans, alice, ("read",)).get(reverse("api-serving", args=[served_spans.pk])).json()
    assert summary["threshold"] == 0.9 and summary["expected_automation_rate"] == 0.7
    assert summary["expected_accuracy"] == 0.97 and "per predicted span" in summary["note"]
    assert summary["accuracy_coverage"][0]["accuracy"] == 0.80
    body = post(key_client(served_spans, alice), served_spans, {"texts": ["Alice Jones met Bruno ."],
                                                                 "route": False}).json()
    assert body["threshold"] == 0.9 and body["predictions"][0]["threshold"] == 0.9
    served.set_threshold(served_spans, mode="target", target_accuracy=0.99)
    assert post(key_client(served_spans, alice), served_spans, {"texts": ["Acme Corp ."], "route": False}
                ).json()["predictions"][0]["is_uncertain"]  # no threshold reaches 99 %: everything to people


def test_an_uncertain_input_is_routed_with_its_tokens_and_suggestions_and_the_persons_spans_come_back(
        served_spans, alice, bob, settings, django_capture_on_commit_callbacks):
    from annotation import actions as annotation_actions

    settings.WEBHOOK_ALLOWED_HOSTS = ["127.0.0.1"]
    register_endpoint(served_spans, url="http://127.0.0.1:9/hook", events=["prediction.routed", "prediction.labelled"],
                      user=alice)
    served.set_threshold(served_spans, mode="confidence", confidence_threshold=0.6)
    client = key_client(served_spans, alice)
    text = "Maybe Okafor runs Acme Corp ."  # "Maybe": half a first name, the token the model is unsure of
    routed = post(client, served_spans, {"texts": [text, "Alice Smith ."]}).json()["predictions"]
    assert routed[0]["is_uncertain"] and routed[0]["is_routed"] and routed[0]["confidence"] < 0.6
    assert min(s["confidence"] for s in routed[1]["spans"]) >= 0.6 and routed[1]["token_confidence"] >= 0.6
    assert not routed[1]["is_routed"]
    example = Example.objects.get(pk=routed[0]["example_id"])
    assert example.tokens == [list(t) for t in tokenize(text, "en")] and example.metadata["source"] == "api"
    score = ExampleScore.objects.get(example=example)
    assert score.is_routed and [(s["start"], s["end"]) for s in score.suggested_spans] == \
        [(s["start"], s["end"]) for s in routed[0]["spans"]]
    assert EmbeddingChunk.objects.filter(project=served_spans, encoder="fake-token-encoder-12").exists()
    routed_hook = WebhookDelivery.objects.get(event="prediction.routed")
    assert routed_hook.payload["data"]["predictions"][0]["spans"] == routed[0]["spans"]
    detail_url = reverse("api-prediction-detail", args=[served_spans.pk, routed[0]["prediction_id"]])
    assert client.get(detail_url).json()["human"] is None
    # The person gets it first on the labelling queue and tags it.
    item = annotation_actions.next_item(served_spans, user=bob)
    assert item is not None and item.example.pk == example.pk
    keys = dict(served_spans.current_taxonomy().labels.values_list("name", "key"))
    okafor = {"start": 0, "end": len("Maybe Okafor"), "label": keys["PER"]}
    acme = {"start": text.index("Acme"), "end": text.index("Acme") + len("Acme Corp"), "label": keys["ORG"]}
    with django_capture_on_commit_callbacks(execute=True):
        annotation_actions.submit_annotation(served_spans, ticket=item.ticket, user=bob,
                                             label_keys=[keys["PER"], keys["ORG"]], spans=[okafor, acme])
    human = client.get(detail_url).json()["human"]
    assert [(s["text"], s["label"]) for s in human["spans"]] == [("Maybe Okafor", "PER"), ("Acme Corp", "ORG")]
    assert human["label"] is None and sorted(human["labels"]) == ["ORG", "PER"]
    labelled = WebhookDelivery.objects.get(event="prediction.labelled")
    assert labelled.payload["data"]["predictions"][0]["human"]["spans"] == human["spans"]
    assert Prediction.objects.get(pk=routed[0]["prediction_id"]).human_labelled_at is not None


def test_no_entity_is_an_answer_too(served_spans, alice, bob):
    served.set_threshold(served_spans, mode="confidence", confidence_threshold=1.0)
    client = key_client(served_spans, alice)
    routed = post(client, served_spans, {"texts": ["Maybe not ."]}).json()["predictions"][0]
    example = Example.objects.get(pk=routed["example_id"])
    Annotation.objects.create(example=example, annotator=bob, taxonomy_version=served_spans.current_taxonomy(),
                              label_keys=[], spans=[], source=AnnotationSource.UI)
    predictions.human_labels_given(served_spans.pk, [example.pk])
    url = reverse("api-prediction-detail", args=[served_spans.pk, routed["prediction_id"]])
    human = client.get(url).json()["human"]
    assert human["spans"] == [] and human["labels"] == []


@pytest.mark.parametrize("body, status, fragment", [
    ({"texts": [""]}, 400, "texts"),
    ({"texts": ["   "]}, 400, "Empty text"),
    ({"texts": []}, 400, "texts"),
    ({"texts": "Alice Smith"}, 400, "texts"),
])
def test_bad_input_is_a_clear_400(served_spans, alice, body, status, fragment):
    response = post(key_client(served_spans, alice), served_spans, body)
    assert response.status_code == status and fragment in response.content.decode()


def test_a_text_over_the_limit_is_a_400_and_punctuation_alone_gets_its_spans(served_spans, alice, settings):
    settings.MAX_TEXT_CHARS = 50
    client = key_client(served_spans, alice)
    response = post(client, served_spans, {"texts": ["Alice Smith " * 10]})
    assert response.status_code == 400 and "Longer than 50 characters" in response.content.decode()
    served.set_threshold(served_spans, mode="confidence", confidence_threshold=0.0)
    body = post(client, served_spans, {"texts": ["?!", "…"]}).json()
    assert [p["spans"] for p in body["predictions"]] == [[], []]


def test_before_any_model_it_is_a_409_and_a_broken_artifact_is_a_409_too(span_project, alice, token_encoder):
    client = key_client(span_project, alice)
    response = post(client, span_project, {"texts": ["Alice Smith ."]})
    assert response.status_code == 409 and "no model yet" in response.json()["detail"]
    ModelVersion.objects.create(project=span_project, number=1, taxonomy_version=span_project.current_taxonomy(),
                                label_keys=["x"], encoder=token_encoder.name, strategy="bald", n_labels=1,
                                artifact=b"not a model")
    response = post(client, span_project, {"texts": ["Alice Smith ."]})
    assert response.status_code == 409 and "could not be loaded" in response.json()["detail"]


def test_who_may_predict_on_a_span_project(served_spans, alice, bob, charlie, team, api_client):
    served.set_threshold(served_spans, mode="confidence", confidence_threshold=1.0)
    viewer = User.objects.create_user(username="vera", password="vera-password-123")
    Membership.objects.create(team=team, user=viewer, role=Role.VIEWER)
    texts = {"texts": ["Alice Smith ."]}
    assert post(APIClient(), served_spans, texts).status_code == 401
    assert post(key_client(served_spans, alice, ("read",)), served_spans, texts).status_code == 403
    assert post(api_client(charlie), served_spans, texts).status_code == 404
    seen = post(api_client(viewer), served_spans, texts)  # a viewer predicts, routes nothing
    assert seen.status_code == 200 and not seen.json()["predictions"][0]["is_routed"]
    assert post(api_client(viewer), served_spans, {**texts, "route": True}).status_code == 403
    assert post(api_client(bob), served_spans, texts).json()["predictions"][0]["is_routed"]
    pid = seen.json()["predictions"][0]["prediction_id"]
    url = reverse("api-prediction-detail", args=[served_spans.pk, pid])
    assert key_client(served_spans, alice, ("read",)).get(url).json()["spans"] == seen.json()["predictions"][0]["spans"]
    assert api_client(charlie).get(url).status_code == 404
    log = key_client(served_spans, alice, ("read",)).get(reverse("api-prediction-list", args=[served_spans.pk]))
    assert all("spans" in p for p in log.json())


def test_the_openapi_schema_documents_span_predictions(client):
    schema = client.get(reverse("api-schema"), HTTP_ACCEPT="application/json").json()
    prediction = schema["components"]["schemas"]["Prediction"]["properties"]
    assert {"spans", "token_confidence"} <= prediction.keys()
    span = schema["components"]["schemas"]["Span"]["properties"]
    assert {"start", "end", "text", "label", "label_key", "confidence"} <= span.keys()
    human = schema["components"]["schemas"]["HumanLabel"]["properties"]
    assert "spans" in human
    assert "Span (NER) projects" in schema["paths"]["/api/v1/projects/{id}/predict"]["post"]["description"]

"""The prediction API: answers, bad input, API keys and scopes, human fallback and the human label."""
from __future__ import annotations

import json
import uuid

import numpy as np
import pytest
from django.urls import reverse
from rest_framework.test import APIClient

from annotation.models import Annotation, ExampleScore
from labelhub.errors import ActionError
from learning import actions, store
from learning.models import EmbeddingChunk
from projects.models import Example
from serving import keys, predictions, served
from serving.models import ApiKey, Prediction, WebhookDelivery
from serving.webhooks import register_endpoint

pytestmark = pytest.mark.django_db


def key_client(key: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Api-Key {key}")
    return client


def predict_url(project) -> str:
    return reverse("api-predict", args=[project.pk])


def make_key(project, alice, scopes=("predict",)) -> str:
    return keys.create_api_key(project, name="router", scopes=list(scopes), user=alice)[1]


def post(client: APIClient, project, body) -> object:
    return client.post(predict_url(project), data=json.dumps(body), content_type="application/json")


def test_it_predicts_with_a_key_and_answers_every_field(trained, alice):
    served.set_threshold(trained, mode="confidence", confidence_threshold=0.0)
    response = post(key_client(make_key(trained, alice)), trained, {"texts": ["we overrule case 7", "we affirm it"]})
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["model_version"] == 1
    first, second = body["predictions"]
    assert first["label"] == "Yes" and second["label"] == "No"
    assert first["labels"] == ["Yes"]
    assert set(first["probabilities"]) == {"Yes", "No"}
    assert abs(sum(first["probabilities"].values()) - 1) < 1e-4
    assert first["confidence"] == pytest.approx(max(first["probabilities"].values()), abs=1e-5)
    assert first["is_uncertain"] is False and first["is_routed"] is False
    assert first["model_version"] == 1
    stored = Prediction.objects.get(pk=first["prediction_id"])
    assert stored.api_key is not None and stored.embedding is not None
    assert not Example.objects.filter(metadata__source="api").exists()


def test_it_answers_409_before_any_model(project, alice, fake_encoder):
    response = post(key_client(make_key(project, alice)), project, {"texts": ["hello"]})
    assert response.status_code == 409
    assert "no model yet" in response.json()["detail"]


@pytest.mark.parametrize("body, fragment", [
    ({"texts": []}, "texts"),
    ({"texts": "one text"}, "texts"),
    ({"texts": [1, 2]}, "texts"),
    ({"texts": [None]}, "texts"),
    ({"texts": [{"text": "x"}]}, "texts"),
    ({"texts": ["   "]}, "Empty"),
    ({}, "texts"),
    ([], ""),
])
def test_it_refuses_bad_input_with_400(trained, alice, body, fragment):
    response = post(key_client(make_key(trained, alice)), trained, body)
    assert response.status_code == 400, response.content
    assert fragment in response.content.decode()
    assert not Prediction.objects.exists()


def test_it_refuses_an_oversized_batch_and_a_text_too_long(trained, alice, settings):
    settings.PREDICT_BATCH_LIMIT = 3
    client = key_client(make_key(trained, alice))
    response = post(client, trained, {"texts": ["a"] * 4})
    assert response.status_code == 400 and "At most 3" in response.content.decode()
    settings.MAX_TEXT_CHARS = 10
    assert post(client, trained, {"texts": ["x" * 11]}).status_code == 400


def test_it_refuses_a_body_that_is_not_json(trained, alice):
    client = key_client(make_key(trained, alice))
    response = client.post(predict_url(trained), data="texts=hello", content_type="application/x-www-form-urlencoded")
    assert response.status_code == 415
    response = client.post(predict_url(trained), data="{not json", content_type="application/json")
    assert response.status_code == 400


def test_it_refuses_missing_invalid_and_revoked_keys(trained, alice):
    assert post(APIClient(), trained, {"texts": ["x"]}).status_code == 401
    assert post(key_client("lh_nothere_secret"), trained, {"texts": ["x"]}).status_code == 401
    assert post(key_client("garbage"), trained, {"texts": ["x"]}).status_code == 401
    key = make_key(trained, alice)
    tampered = key[:-2] + ("aa" if not key.endswith("aa") else "bb")
    assert post(key_client(tampered), trained, {"texts": ["x"]}).status_code == 401
    ApiKey.objects.get().revoke()
    response = post(key_client(key), trained, {"texts": ["x"]})
    assert response.status_code == 401 and "revoked" in response.json()["detail"]


def test_a_key_reaches_only_its_project_and_scopes(trained, alice, multi_project):
    key = make_key(trained, alice, scopes=["read"])
    client = key_client(key)
    assert post(client, trained, {"texts": ["x"]}).status_code == 403  # no predict scope
    other = make_key(multi_project, alice)
    assert post(key_client(other), trained, {"texts": ["x"]}).status_code == 404  # another project's key
    assert client.get(reverse("api-project-detail", args=[trained.pk])).status_code == 200
    assert client.get(reverse("api-project-detail", args=[multi_project.pk])).status_code == 404
    assert [p["id"] for p in client.get(reverse("api-project-list")).json()] == [trained.pk]
    assert client.get(reverse("api-dataset-list", args=[trained.pk])).status_code == 200
    assert client.get(reverse("api-serving", args=[trained.pk])).status_code == 200
    # Writes: import needs the import scope; promotion needs a manager's own token.
    bulk = reverse("api-bulk-import", args=[trained.pk])
    rows = {"examples": [{"text": "we overrule smith v. jones"}]}
    assert client.post(bulk, rows, format="json").status_code == 403
    assert key_client(make_key(trained, alice, ["import"])).post(bulk, rows, format="json").status_code == 201
    assert client.post(reverse("api-model-version-promote", args=[trained.pk, 1])).status_code == 403


def test_it_stores_only_a_hash_of_the_key(trained, alice):
    row, key = keys.create_api_key(trained, name="ci", scopes=["predict", "read"], user=alice)
    assert key.startswith(f"lh_{row.prefix}_")
    assert row.hashed_key == keys.hash_key(key) and key not in row.hashed_key
    assert not ApiKey.objects.filter(hashed_key__contains=key.split("_", 2)[2]).exists()
    assert keys.find_key(key) == row
    with pytest.raises(ActionError):
        keys.create_api_key(trained, name="x", scopes=["admin"], user=alice)


def test_user_tokens_keep_working_with_roles(trained, alice, bob, charlie, api_client):
    assert post(api_client(alice), trained, {"texts": ["we overrule x"]}).status_code == 200
    assert post(api_client(bob), trained, {"texts": ["we overrule x"]}).status_code == 200
    assert post(api_client(charlie), trained, {"texts": ["we overrule x"]}).status_code == 404


def test_it_limits_the_rate_per_key(trained, alice, settings):
    settings.API_KEY_RATE = "2/min"
    first, second = key_client(make_key(trained, alice)), key_client(make_key(trained, alice))
    url = reverse("api-serving", args=[trained.pk])
    # Counted before the scope check: a key hammering an endpoint it may not use is limited too.
    assert [first.get(url).status_code for _ in range(3)] == [403, 403, 429]
    assert second.get(url).status_code == 403  # its own count
    readers = key_client(make_key(trained, alice, ["read"]))
    codes = [readers.get(url).status_code for _ in range(3)]
    assert codes == [200, 200, 429]


def test_it_routes_uncertain_inputs_to_the_head_of_the_queue(trained, alice):
    served.set_threshold(trained, mode="confidence", confidence_threshold=1.0)
    chunks_before = EmbeddingChunk.objects.filter(project=trained).count()
    client = key_client(make_key(trained, alice))
    texts = ["a brand new sentence", "a brand new sentence", "we overrule case 3"]  # the last one is labelled
    body = post(client, trained, {"texts": texts}).json()["predictions"]
    assert all(p["is_uncertain"] for p in body)
    assert [p["is_routed"] for p in body] == [True, True, False]
    example = Example.objects.get(pk=body[0]["example_id"])
    assert body[1]["example_id"] == example.pk  # one example per text
    assert example.metadata["source"] == "api" and example.text == "a brand new sentence"
    score = ExampleScore.objects.get(example=example)
    assert score.is_routed and score.model_version_number == 1 and score.predicted_keys == body[0]["label_keys"]
    assert EmbeddingChunk.objects.filter(project=trained).count() == chunks_before + 1
    # The annotation queue's order puts it first.
    first = ExampleScore.objects.filter(project=trained).order_by("-is_routed", "-is_seed", "-priority").first()
    assert first.example_id == example.pk
    # Asking again reuses the example.
    again = post(client, trained, {"texts": ["a brand new sentence"]}).json()["predictions"][0]
    assert again["example_id"] == example.pk and again["is_routed"]
    assert Example.objects.filter(text="a brand new sentence").count() == 1


def test_it_does_not_route_when_the_client_says_so(trained, alice):
    served.set_threshold(trained, mode="confidence", confidence_threshold=1.0)
    body = post(key_client(make_key(trained, alice)), trained, {"texts": ["new text"], "route": False}).json()
    assert body["predictions"][0]["is_uncertain"] and not body["predictions"][0]["is_routed"]
    assert not Example.objects.filter(text="new text").exists()


def test_a_routed_input_comes_back_with_its_human_label_and_trains_the_model(trained, alice, label_examples, train,
                                                                            settings):
    settings.WEBHOOK_ALLOWED_HOSTS = ["127.0.0.1"]
    served.set_threshold(trained, mode="confidence", confidence_threshold=1.0)
    register_endpoint(trained, url="http://127.0.0.1:9/hook", events=["prediction.labelled"], user=alice)
    client = key_client(make_key(trained, alice, ["predict"]))
    routed = post(client, trained, {"texts": ["overrule, in a new way"]}).json()["predictions"][0]
    url = reverse("api-prediction-detail", args=[trained.pk, routed["prediction_id"]])
    assert client.get(url).json()["human"] is None
    example = Example.objects.get(pk=routed["example_id"])
    label_examples(trained, alice, [example], ["Yes"])
    predictions.human_labels_given(trained.pk, [example.pk])
    detail = client.get(url).json()
    assert detail["human"]["label"] == "Yes" and detail["prediction_id"] == routed["prediction_id"]
    assert Prediction.objects.get(pk=routed["prediction_id"]).human_labelled_at is not None
    delivery = WebhookDelivery.objects.get(event="prediction.labelled")
    assert delivery.payload["data"]["predictions"][0]["human"]["label"] == "Yes"
    # A second call for the same examples sends nothing new.
    predictions.human_labels_given(trained.pk, [example.pk])
    assert WebhookDelivery.objects.filter(event="prediction.labelled").count() == 1
    # The next model trains on it: its embedding is in the store and its label in the training set.
    version = train(trained)
    assert version.n_labels == 41
    emb = store.load(trained.pk, "fake-encoder-16")
    assert emb.has(np.array([example.pk]))[0]
    assert example.pk in actions.training_set(trained).example_ids
    assert not ExampleScore.objects.filter(example=example).exists()  # labelled: out of the queue


def test_human_labels_given_is_one_query_when_nothing_was_predicted(trained, django_assert_num_queries):
    ids = list(Example.objects.filter(project=trained).values_list("id", flat=True)[:50])
    with django_assert_num_queries(1):
        predictions.human_labels_given(trained.pk, ids)


def test_it_reads_a_prediction_and_the_log_by_scope(trained, alice, charlie, api_client):
    served.set_threshold(trained, mode="confidence", confidence_threshold=0.0)
    body = post(key_client(make_key(trained, alice)), trained, {"texts": ["we affirm"]}).json()
    pid = body["predictions"][0]["prediction_id"]
    url = reverse("api-prediction-detail", args=[trained.pk, pid])
    assert key_client(make_key(trained, alice, ["read"])).get(url).status_code == 200
    assert key_client(make_key(trained, alice, ["import"])).get(url).status_code == 403
    assert api_client(charlie).get(url).status_code == 404
    assert api_client(alice).get(reverse("api-prediction-detail", args=[trained.pk, uuid.uuid4()])).status_code == 404
    log = api_client(alice).get(reverse("api-prediction-list", args=[trained.pk])).json()
    assert [p["prediction_id"] for p in log] == [pid]


def test_it_answers_a_multi_label_project_with_every_label(
        multi_project, alice, fake_encoder, add_examples, api_client, train):
    examples = add_examples(multi_project, [f"we overrule case {i}" for i in range(15)] +
                            [f"we affirm case {i}" for i in range(15)])
    taxonomy = multi_project.current_taxonomy()
    keys_by_name = dict(taxonomy.labels.values_list("name", "key"))
    Annotation.objects.bulk_create(
        Annotation(example=e, annotator=alice, taxonomy_version=taxonomy,
                   label_keys=[keys_by_name["Hardware"]] if i < 15
                   else [keys_by_name["Access"], keys_by_name["Billing"]])
        for i, e in enumerate(examples))
    train(multi_project)
    served.set_threshold(multi_project, mode="confidence", confidence_threshold=0.0)
    body = post(api_client(alice), multi_project, {"texts": ["we affirm this"]}).json()["predictions"][0]
    assert body["label"] is None and sorted(body["labels"]) == ["Access", "Billing"]
    assert set(body["probabilities"]) == {"Hardware", "Access", "Billing"}


def test_a_routed_input_is_served_first_on_the_labelling_queue_and_its_label_comes_back(
        trained, alice, bob, django_capture_on_commit_callbacks):
    from annotation import actions as annotation_actions

    served.set_threshold(trained, mode="confidence", confidence_threshold=1.0)
    client = key_client(make_key(trained, alice))
    routed = post(client, trained, {"texts": ["does this overrule anything?"]}).json()["predictions"][0]
    assert routed["is_routed"]
    item = annotation_actions.next_item(trained, user=bob)
    assert item is not None and item.example.pk == routed["example_id"]  # ahead of the pool and the seed
    yes = trained.current_taxonomy().labels.get(name="Yes").key
    with django_capture_on_commit_callbacks(execute=True):
        annotation_actions.submit_annotation(trained, ticket=item.ticket, user=bob, label_keys=[yes])
    detail = client.get(reverse("api-prediction-detail", args=[trained.pk, routed["prediction_id"]])).json()
    assert detail["human"]["labels"] == ["Yes"] and detail["label_keys"] == routed["label_keys"]
    assert Prediction.objects.get(pk=routed["prediction_id"]).human_labelled_at is not None


def test_a_prediction_request_runs_three_statements_whatever_the_batch(trained, alice, django_assert_max_num_queries):
    """The API key (with its project), which version serves, and one INSERT of the log rows: no more per request,
    and no more for ten texts than for one."""
    served.set_threshold(trained, mode="confidence", confidence_threshold=0.0)
    client = key_client(make_key(trained, alice))
    assert post(client, trained, {"texts": ["warm-up: the model loads, last_used_at is stamped"]}).status_code == 200
    for texts in (["we overrule case 3"], [f"we affirm case {i}" for i in range(10)]):
        with django_assert_max_num_queries(3):
            response = post(client, trained, {"texts": texts})
        assert response.status_code == 200
        ids = [p["prediction_id"] for p in response.json()["predictions"]]
        assert Prediction.objects.filter(pk__in=ids).count() == len(texts)  # logged before the answer


def test_a_promotion_and_a_revoked_key_apply_on_the_very_next_request(trained, alice, train, add_examples,
                                                                       label_examples):
    """Nothing of a key or of the serving state is remembered between requests beyond the model itself."""
    served.set_threshold(trained, mode="confidence", confidence_threshold=0.0)
    key = make_key(trained, alice)
    client = key_client(key)
    assert post(client, trained, {"texts": ["we overrule case 1"]}).json()["model_version"] == 1
    examples = add_examples(trained, [f"we overrule again {i}" for i in range(4)])
    label_examples(trained, alice, examples, ["Yes"] * 4)
    train(trained)
    assert post(client, trained, {"texts": ["we overrule case 1"]}).json()["model_version"] == 2
    served.promote_version(trained, version=trained.model_versions.get(number=1), user=alice)
    assert post(client, trained, {"texts": ["we overrule case 1"]}).json()["model_version"] == 1
    served.set_threshold(trained, mode="confidence", confidence_threshold=0.5)
    assert post(client, trained, {"texts": ["we overrule case 1"]}).json()["threshold"] == 0.5
    ApiKey.objects.get().revoke()
    assert post(client, trained, {"texts": ["we overrule case 1"]}).status_code == 401


def test_predict_answers_with_a_trailing_slash_too(trained, alice):
    """Every other endpoint ends in a slash, so clients write one here too: same answer, not an HTML 404."""
    served.set_threshold(trained, mode="confidence", confidence_threshold=0.0)
    client = key_client(make_key(trained, alice))
    url = predict_url(trained)
    assert not url.endswith("/")
    body = json.dumps({"texts": ["we overrule case 7"]})
    plain = client.post(url, data=body, content_type="application/json")
    slashed = client.post(url + "/", data=body, content_type="application/json")
    assert plain.status_code == slashed.status_code == 200, slashed.content
    assert slashed["Content-Type"] == "application/json"
    assert slashed.json()["predictions"][0]["label"] == plain.json()["predictions"][0]["label"] == "Yes"
    assert client.post(url + "/", data="{}", content_type="application/json").status_code == 400  # same checks
    assert APIClient().post(url + "/", data=body, content_type="application/json").status_code == 401

"""The data-quality review queue: candidates written from a quality report on real data (TREC questions with
injected label flips), decisions recorded, a correction retrains and leaves the list, and who may see and
decide, on every page and endpoint."""
from __future__ import annotations

import csv
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from django.contrib.auth.models import User
from django.urls import reverse
from sklearn.decomposition import TruncatedSVD  # type: ignore[import-untyped]
from sklearn.feature_extraction.text import TfidfVectorizer  # type: ignore[import-untyped]

from annotation import review_queue
from annotation.models import (
    Adjudication,
    Annotation,
    AnnotationSource,
    Comment,
    Relabel,
    ReviewCandidate,
    ReviewDecision,
    ReviewKind,
)
from learning import actions as learning_actions
from learning import bayes, review_candidates
from learning.models import EmbeddingChunk, ModelVersion, RunStatus, TrainingRun
from projects import taxonomy
from projects.models import Example, Membership, Project, Role

TREC = Path(__file__).resolve().parents[2] / "shared" / "data" / "trec" / "train.csv"
N_LABELLED, N_POOL, FLIP_RATE = 500, 200, 0.08

pytestmark = pytest.mark.skipif(not TREC.exists(), reason="needs ../shared/data/trec")


def _rows(n: int) -> list[tuple[str, str]]:
    with TREC.open(newline="", encoding="utf-8") as handle:
        rows = [(row["text"], row["label"]) for row in csv.DictReader(handle)]
    rng = np.random.default_rng(0)
    # ABBR has 79 items in 5,452: a slice keeps a handful of them.
    picked = rng.choice(len(rows), n, replace=False)
    return [rows[i] for i in picked]


def _vectors(texts: list[str]) -> np.ndarray:
    """A cheap embedding of the real texts (no encoder download or run): word uni- and bigram TF-IDF, reduced to 96
    dimensions, unit length. The model reaches about 66% accuracy on these 500 labels (a sentence encoder about
    72%): a hard, realistic setting for the finder."""
    tfidf = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True).fit_transform(texts)
    reduced = TruncatedSVD(96, random_state=0).fit_transform(tfidf)
    return (reduced / np.linalg.norm(reduced, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture
def viewer(team) -> User:
    user = User.objects.create_user(username="vera", password="vera-password-123")
    Membership.objects.create(team=team, user=user, role=Role.VIEWER)
    return user


@pytest.fixture
def trec(team, alice, bob, stored_vectors, settings) -> SimpleTrec:
    """A project of 700 TREC questions (6 coarse classes), 500 labelled by bob with 8% of them flipped to another
    class at random, 200 unlabelled; trained, and its quality report run (which writes the candidates)."""
    settings.TRAIN_DEBOUNCE_SECONDS = 0
    rows = _rows(N_LABELLED + N_POOL)
    names = sorted({label for _, label in rows})
    project = taxonomy.create_project(team, name="TREC", task_type="single_label", created_by=alice,
                                      labels=[taxonomy.LabelSpec(name) for name in names])
    keys = dict(project.current_taxonomy().labels.values_list("name", "key"))
    examples = Example.objects.bulk_create(
        Example(project=project, text=text, content_hash=f"trec-{i}") for i, (text, _) in enumerate(rows))
    ids = np.array([e.pk for e in examples], dtype=np.int64)
    EmbeddingChunk.objects.create(project=project, encoder=stored_vectors.name, dim=96, count=len(ids),
                                  example_ids=ids.tobytes(),
                                  vectors=_vectors([t for t, _ in rows]).astype(np.float16).tobytes())
    rng = np.random.default_rng(1)
    flipped = set(rng.choice(N_LABELLED, int(FLIP_RATE * N_LABELLED), replace=False).tolist())
    given = []
    for i in range(N_LABELLED):
        truth = rows[i][1]
        label = rng.choice([n for n in names if n != truth]) if i in flipped else truth
        given.append(label)
    version = project.current_taxonomy()
    Annotation.objects.bulk_create(
        Annotation(example=examples[i], annotator=bob, taxonomy_version=version, label_keys=[keys[given[i]]],
                   source=AnnotationSource.UI) for i in range(N_LABELLED))
    TrainingRun.objects.create(project=project)
    run = learning_actions.run_training(project.pk)
    assert run is not None and run.status == RunStatus.SUCCEEDED, run and run.error
    assert learning_actions.report_project(project.pk) is not None
    return SimpleTrec(project=project, examples=examples, flipped={examples[i].pk for i in flipped},
                      truth={examples[i].pk: keys[rows[i][1]] for i in range(len(rows))}, keys=keys)


class SimpleTrec:
    def __init__(self, **kw: Any) -> None:
        self.__dict__.update(kw)
        self.project: Project = kw["project"]
        self.flipped: set[int] = kw["flipped"]
        self.truth: dict[int, str] = kw["truth"]
        self.keys: dict[str, str] = kw["keys"]


def first(project: Project, kind: str) -> ReviewCandidate:
    candidate = review_queue.open_candidates(project, kind).first()
    assert candidate is not None, f"no {kind} candidate"
    return candidate


def review_url(project: Project, tab: str = "mislabel") -> str:
    return f"{reverse('annotation:review', args=[project.pk])}?tab={tab}"


def decide_url(candidate: ReviewCandidate) -> str:
    return reverse("annotation:review-decide", args=[candidate.project_id, candidate.pk])


# --- Candidates from a report on real data ------------------------------------------------------------------------


def test_the_report_writes_likely_mislabels_that_are_mostly_the_injected_flips(trec):
    mislabels = list(ReviewCandidate.objects.filter(project=trec.project, kind=ReviewKind.MISLABEL))
    assert mislabels, "no likely mislabel found"
    flagged = {c.example_id for c in mislabels}
    true_hits = flagged & trec.flipped
    precision, recall = len(true_hits) / len(flagged), len(true_hits) / len(trec.flipped)
    # 8% flips: a random pick of labelled items would be right 8% of the time. Measured: precision 0.27,
    # recall 0.80, and 45% of the queue's first k (k = the number of flips) are flips.
    k = len(trec.flipped)
    first_k = {c.example_id for c in review_queue.open_candidates(trec.project, ReviewKind.MISLABEL)[:k]}
    assert precision >= 0.2 and recall >= 0.5, (precision, recall, len(flagged))
    assert len(first_k & trec.flipped) / k >= 0.3
    for c in mislabels:
        assert c.given_keys != c.model_keys and c.model_version_number == 1
        assert c.reason.startswith("Out of fold") and "%" in c.reason
        assert c.model_confidence is not None and 0.0 < c.model_confidence <= 1.0
    # Where a flip was found, the model's label is most often the true one.
    agree = [c.model_keys == [trec.truth[c.example_id]] for c in mislabels if c.example_id in trec.flipped]
    assert np.mean(agree) >= 0.6


def test_ambiguous_items_have_high_entropy_and_low_bald_by_the_pools_own_quantiles(trec):
    ambiguous = list(ReviewCandidate.objects.filter(project=trec.project, kind=ReviewKind.AMBIGUOUS))
    assert ambiguous
    labelled = set(Annotation.objects.in_project(trec.project).values_list("example_id", flat=True))
    # Both labelled items (out-of-fold) and pool items (the model) are judged.
    assert {c.example_id in labelled for c in ambiguous} == {True, False}
    assert all(c.score > 0 and "BALD" in c.reason and "entropy" in c.reason for c in ambiguous)
    # The thresholds are quantiles: far fewer than the share above the entropy quantile are chosen.
    assert len(ambiguous) <= (1 - review_candidates.AMBIGUOUS_ENTROPY_QUANTILE) * (N_LABELLED + N_POOL) + 1
    pool_item = next(c for c in ambiguous if c.example_id not in labelled)
    assert pool_item.given_keys == [] and pool_item.model_keys


def test_low_precision_cleaning_puts_items_of_other_classes_first():
    """Class 2 is a catch-all: half its items come from class 0's and class 1's regions. A model trained without
    class 2 puts those confidently in 0 or 1, so they lead its list."""
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(3, 12)) * 4
    n = 60
    y = np.repeat([0, 1, 2], n)
    source = y.copy()
    stray = np.flatnonzero(y == 2)[: n // 2]
    source[stray] = rng.integers(0, 2, len(stray))
    X = centres[source] + rng.normal(size=(len(y), 12))
    # The catch-all also takes 40 class 0 and 1 items' predictions: its precision is 60 / 100.
    proba = np.full((len(y), 3), 0.05)
    predicted = y.copy()
    predicted[rng.choice(np.flatnonzero(y != 2), 40, replace=False)] = 2
    proba[np.arange(len(y)), predicted] = 0.9
    inputs = review_candidates.Inputs(
        label_keys=["a", "b", "c"], label_names=["A", "B", "Catch-all"], multi_label=False,
        ids=np.arange(len(y)) + 1000, X=X, targets=y, posterior=bayes.fit(X, y, n_classes=3))
    assert [k for k, _ in review_candidates.low_precision_classes(y, proba, 3)] == [2]
    found = review_candidates.find_low_precision_candidates(inputs, proba)
    assert {f.given_keys[0] for f in found} == {"c"} and len(stray) <= len(found) <= n
    assert all(f.score >= review_candidates.LOW_PRECISION_CONFIDENCE for f in found)
    top = {f.example_id - 1000 for f in found[: len(stray)]}
    assert len(top & set(stray.tolist())) >= 0.9 * len(stray)
    assert found[0].model_keys[0] in {"a", "b"} and "Catch-all" in found[0].reason
    assert found[0].score >= found[-1].score


def test_a_refresh_does_not_put_back_what_was_decided(trec, alice):
    candidate = first(trec.project, ReviewKind.MISLABEL)
    review_queue.decide(trec.project, candidate.pk, user=alice, action="keep")
    version = ModelVersion.objects.get(project=trec.project)
    review_candidates.refresh(version)
    assert not ReviewCandidate.objects.filter(example_id=candidate.example_id).exists()
    assert ReviewCandidate.objects.filter(project=trec.project, kind=ReviewKind.MISLABEL).exists()


def test_a_new_annotation_hides_the_items_candidates(trec, bob):
    candidate = first(trec.project, ReviewKind.MISLABEL)
    before = review_queue.counts(trec.project)[ReviewKind.MISLABEL]
    later = candidate.created_at + timedelta(seconds=1)
    Annotation.objects.filter(example_id=candidate.example_id).update(created_at=later)
    assert review_queue.counts(trec.project)[ReviewKind.MISLABEL] == before - 1
    assert candidate.pk not in set(review_queue.open_candidates(trec.project).values_list("pk", flat=True))


# --- Decisions through the page -----------------------------------------------------------------------------------


def test_keep_records_the_decision_and_drops_the_item(trec, alice, login, htmx):
    candidate = first(trec.project, ReviewKind.MISLABEL)
    response = login(alice).post(decide_url(candidate), {"action": "keep", "tab": "mislabel"}, **htmx)
    assert response.status_code == 200
    body = response.content.decode()
    assert body.lstrip().startswith('<section id="review-queue"') and "Kept the label." in body
    assert f'id="review-item-{candidate.pk}"' not in body
    decision = ReviewDecision.objects.get(example_id=candidate.example_id)
    assert (decision.action, decision.kind, decision.decided_by) == ("keep", "mislabel", alice)
    assert decision.previous_keys == decision.new_keys == candidate.given_keys
    assert not ReviewCandidate.objects.filter(example_id=candidate.example_id).exists()


def test_a_correction_is_the_reviewers_annotation_retrains_and_leaves_the_list(trec, alice, login, htmx, run_jobs):
    candidate = first(trec.project, ReviewKind.MISLABEL)
    new_key = candidate.model_keys[0]
    with run_jobs():
        response = login(alice).post(decide_url(candidate),
                                     {"action": "change", "label": new_key, "tab": "mislabel"}, **htmx)
    assert response.status_code == 200 and "the model retrains" in response.content.decode()
    mine = Annotation.objects.get(example_id=candidate.example_id, annotator=alice)
    assert mine.label_keys == [new_key]
    assert learning_actions.training_set(trec.project).targets is not None
    decision = ReviewDecision.objects.get(example_id=candidate.example_id)
    assert (decision.action, decision.previous_keys, decision.new_keys) == ("change", candidate.given_keys, [new_key])
    # The model retrained with the correction (the run the decision asked for is done: version 2).
    assert ModelVersion.objects.filter(project=trec.project, number=2).exists()
    data = learning_actions.training_set(trec.project)
    row = int(np.flatnonzero(data.example_ids == candidate.example_id)[0])
    assert data.label_keys[int(data.targets[row])] == new_key
    # Two people labelled it now: the reviewer's label is the adjudicated one.
    assert Adjudication.objects.get(example_id=candidate.example_id).label_keys == [new_key]
    # Version 2's report refreshed the list: the corrected item is not in it.
    assert candidate.example_id not in set(review_queue.open_candidates(trec.project).values_list("example_id",
                                                                                                  flat=True))


def test_send_back_makes_a_relabel_row(trec, alice, login):
    candidate = first(trec.project, ReviewKind.AMBIGUOUS)
    response = login(alice).post(decide_url(candidate), {"action": "relabel", "tab": "ambiguous"})
    assert response.status_code == 302 and response["Location"].endswith("?tab=ambiguous")
    relabel = Relabel.objects.get(example_id=candidate.example_id, done_at__isnull=True)
    assert relabel.reason.startswith("Review (ambiguous item)")
    assert ReviewDecision.objects.get(example_id=candidate.example_id).action == "relabel"


def test_a_comment_opens_the_thread_and_the_item_stays(trec, alice, login, htmx):
    candidate = first(trec.project, ReviewKind.MISLABEL)
    client = login(alice)
    response = client.post(decide_url(candidate), {"action": "comment", "note": "Is a 'what' question about a "
                                                   "person HUM or ENTY?", "tab": "mislabel"}, **htmx)
    body = response.content.decode()
    assert f'id="review-item-{candidate.pk}"' in body and "HUM or ENTY" in body
    assert Comment.objects.get(example_id=candidate.example_id).author == alice
    assert ReviewDecision.objects.get(example_id=candidate.example_id).action == "comment"
    empty = client.post(decide_url(candidate), {"action": "comment", "note": " ", "tab": "mislabel"}, **htmx)
    assert "The comment is empty." in empty.content.decode()
    assert ReviewDecision.objects.filter(example_id=candidate.example_id).count() == 1


def test_bad_decisions_change_nothing(trec, alice, login, htmx):
    candidate = first(trec.project, ReviewKind.MISLABEL)
    client = login(alice)
    for data, message in [({"action": "change", "label": "nope"}, "not a label of this project"),
                          ({"action": "change"}, "Choose a label first."),
                          ({"action": "explode"}, "Unknown decision")]:
        body = client.post(decide_url(candidate), {**data, "tab": "mislabel"}, **htmx).content.decode()
        assert message in body
    assert not ReviewDecision.objects.exists()
    client.post(decide_url(candidate), {"action": "keep"}, **htmx)
    again = client.post(decide_url(candidate), {"action": "keep", "tab": "mislabel"}, **htmx).content.decode()
    assert "no longer in the review queue" in again
    assert ReviewDecision.objects.count() == 1


def test_the_page_shows_text_labels_who_gave_them_model_and_reason(trec, alice, login):
    page = login(alice).get(review_url(trec.project)).content.decode()
    candidate = first(trec.project, ReviewKind.MISLABEL)
    example = Example.objects.get(pk=candidate.example_id)
    item = page[page.index(f'id="review-item-{candidate.pk}"'):]
    item = item[:item.index("</article>")]
    assert "bob" in item and candidate.reason.split("“")[0][:20] in item.replace("&quot;", '"')
    assert example.text[:20].replace("'", "&#x27;").replace('"', "&quot;") in item
    assert f"{round((candidate.model_confidence or 0) * 100)}%" in item
    counts = review_queue.counts(trec.project)
    assert f"Likely mislabels <span class=\"count\">{counts['mislabel']}</span>" in page
    assert 'data-shortcut="1"' in item and 'data-action="keep"' in item and 'data-action="relabel"' in item


def test_the_dashboard_shows_the_counts_with_links(trec, alice, viewer, login):
    dashboard = login(alice).get(reverse("learning:dashboard", args=[trec.project.pk])).content.decode()
    summary_url = reverse("annotation:review-summary", args=[trec.project.pk])
    assert summary_url in dashboard
    body = login(alice).get(summary_url).content.decode()
    counts = review_queue.counts(trec.project)
    assert f"<b>{counts['mislabel']}</b> likely mislabels" in body and f"{review_url(trec.project)}" in body
    assert f"<b>{counts['ambiguous']}</b> ambiguous items" in body
    assert "conflict" in body
    # A viewer sees the figures, without links to a queue they may not open.
    seen = login(viewer).get(summary_url)
    assert seen.status_code == 200 and "?tab=mislabel" not in seen.content.decode()


def test_conflicts_count_disagreements_nobody_adjudicated(project, alice, bob, make_pool):
    examples = make_pool(project, 3, scored=False)
    version = project.current_taxonomy()
    yes, no = [label.key for label in version.labels.order_by("position")]
    for example, (a, b) in zip(examples, [(yes, no), (yes, yes), (no, yes)], strict=True):
        Annotation.objects.create(example=example, annotator=alice, taxonomy_version=version, label_keys=[a])
        Annotation.objects.create(example=example, annotator=bob, taxonomy_version=version, label_keys=[b])
    assert review_queue.conflict_count(project) == 2
    Adjudication.objects.create(example=examples[0], project=project, taxonomy_version=version, label_keys=[yes])
    assert review_queue.conflict_count(project) == 1


# --- Who may see and decide --------------------------------------------------------------------------------------


def test_pages_are_for_managers_only(trec, alice, bob, charlie, viewer, login, htmx):
    candidate = first(trec.project, ReviewKind.MISLABEL)
    for tab in ("mislabel", "low_precision", "ambiguous", "flags"):
        assert login(charlie).get(review_url(trec.project, tab)).status_code == 404
        assert login(bob).get(review_url(trec.project, tab)).status_code == 403
        assert login(viewer).get(review_url(trec.project, tab)).status_code == 403
        assert login(alice).get(review_url(trec.project, tab)).status_code == 200
    for user, code in ((charlie, 404), (bob, 403), (viewer, 403)):
        assert login(user).post(decide_url(candidate), {"action": "keep"}, **htmx).status_code == code
    assert login(alice).get(decide_url(candidate)).status_code == 405
    assert not ReviewDecision.objects.exists()
    summary = reverse("annotation:review-summary", args=[trec.project.pk])
    assert login(charlie).get(summary).status_code == 404
    assert login(bob).get(summary).status_code == 200
    assert review_url(trec.project) not in login(bob).get(summary).content.decode()


def test_a_candidate_of_another_project_is_not_reachable(trec, team, alice, login, htmx):
    other = taxonomy.create_project(team, name="Other", task_type="single_label", created_by=alice,
                                    labels=[taxonomy.LabelSpec("A"), taxonomy.LabelSpec("B")])
    candidate = first(trec.project, ReviewKind.MISLABEL)
    url = reverse("annotation:review-decide", args=[other.pk, candidate.pk])
    body = login(alice).post(url, {"action": "keep", "tab": "mislabel"}, **htmx).content.decode()
    assert "no longer in the review queue" in body and not ReviewDecision.objects.exists()


# --- API ----------------------------------------------------------------------------------------------------------


def test_the_api_lists_candidates_by_kind_and_takes_decisions(trec, alice, api_client):
    client = api_client(alice)
    url = reverse("api-review-candidates", args=[trec.project.pk])
    data = client.get(url, {"kind": "mislabel", "limit": 5}).json()
    assert data["kind"] == "mislabel" and data["count"] == data["counts"]["mislabel"] and len(data["results"]) == 5
    first = data["results"][0]
    assert first["given"][0]["annotator"] == "bob" and first["reason"] and first["text"]
    assert first["current_keys"] == first["given"][0]["label_keys"]
    scores = [row["score"] for row in data["results"]]
    assert scores == sorted(scores, reverse=True)
    assert client.get(url, {"kind": "nonsense"}).status_code == 400
    assert client.get(url, {"kind": "mislabel", "limit": "0"}).status_code == 400

    decisions = reverse("api-review-decisions", args=[trec.project.pk])
    new = first["model_keys"][0]
    response = client.post(decisions, {"candidate": first["id"], "action": "change", "label_keys": [new]},
                           format="json")
    assert response.status_code == 201, response.content
    body = response.json()
    assert (body["action"], body["previous_keys"], body["new_keys"], body["decided_by"]) == (
        "change", first["current_keys"], [new], "alice")
    assert client.post(decisions, {"candidate": first["id"], "action": "keep"}, format="json").status_code == 409
    assert client.post(decisions, {"candidate": data["results"][1]["id"], "action": "change"},
                       format="json").status_code == 400
    assert client.post(decisions, {"candidate": "x", "action": "keep"}, format="json").status_code == 400
    assert client.get(decisions).json()[0]["id"] == body["id"]
    assert client.get(url, {"kind": "mislabel"}).json()["count"] == data["count"] - 1


def test_the_api_is_for_managers_with_a_personal_token(trec, alice, bob, charlie, viewer, api_client):
    candidates = reverse("api-review-candidates", args=[trec.project.pk])
    decisions = reverse("api-review-decisions", args=[trec.project.pk])
    candidate = first(trec.project, ReviewKind.MISLABEL)
    for user, code in ((charlie, 404), (bob, 403), (viewer, 403)):
        client = api_client(user)
        assert client.get(candidates, {"kind": "mislabel"}).status_code == code
        assert client.post(decisions, {"candidate": candidate.pk, "action": "keep"}, format="json").status_code == code
        assert client.get(decisions).status_code == code
    anonymous = api_client(None)
    assert anonymous.get(candidates, {"kind": "mislabel"}).status_code in (401, 403)
    assert not ReviewDecision.objects.exists()


def test_the_schema_documents_the_review_endpoints(client):
    schema = client.get("/api/schema/", HTTP_ACCEPT="application/json").json()
    paths = schema["paths"]
    assert "get" in paths["/api/v1/projects/{id}/review/candidates/"]
    assert {"get", "post"} <= set(paths["/api/v1/projects/{id}/review/decisions/"])


def test_multi_label_items_are_judged_per_label():
    """Three independent labels; 5 items lost their label 0 and 5 got label 1 they do not have. The finder names the
    label in question, and the ambiguous items are judged on the summed Bernoulli entropies."""
    rng = np.random.default_rng(5)
    n, dim = 240, 10
    truth = (rng.random((n, 3)) < 0.4).astype(np.int8)
    directions = rng.normal(size=(3, dim)) * 2.5
    X = truth @ directions + rng.normal(size=(n, dim))
    given = truth.copy()
    lost = np.flatnonzero(truth[:, 0] == 1)[:5]
    added = np.flatnonzero(truth[:, 1] == 0)[:5]
    given[lost, 0] = 0
    given[added, 1] = 1
    pool = rng.random((60, 3)) < 0.4
    inputs = review_candidates.Inputs(
        label_keys=["x", "y", "z"], label_names=["Access", "Billing", "Hardware"], multi_label=True,
        ids=np.arange(n) + 1, X=X, targets=given, posterior=bayes.fit_multilabel(X, given),
        pool_ids=np.arange(60) + 1000, X_pool=pool.astype(np.int8) @ directions + rng.normal(size=(60, dim)))
    found = review_candidates.find_candidates(inputs)
    mislabels = [f for f in found if f.kind == ReviewKind.MISLABEL]
    hits = {f.example_id - 1 for f in mislabels} & set(lost.tolist() + added.tolist())
    assert len(hits) >= 7, (len(hits), len(mislabels))
    assert any("Access" in f.reason for f in mislabels) and any("Billing" in f.reason for f in mislabels)
    assert all(len(f.reason) <= 500 for f in found)
    # No low-precision cleaning for multi-label sets (no class to train without).
    assert not [f for f in found if f.kind == ReviewKind.LOW_PRECISION]


def test_span_projects_get_no_classification_inputs(team, alice):
    """Span projects' candidates come from their own token model (tests/test_span_review.py)."""
    project = taxonomy.create_project(team, name="NER", task_type="span", created_by=alice,
                                      labels=[taxonomy.LabelSpec("PER"), taxonomy.LabelSpec("ORG")])
    version = ModelVersion(project=project, number=1, label_keys=[], encoder="x", strategy="bald", n_labels=0,
                           artifact=b"")
    assert review_candidates.inputs_for(version) is None


def test_after_a_fine_tune_the_finder_judges_with_the_encoder_that_never_saw_the_labels(trec, monkeypatch):
    # A fine-tuned encoder that learnt its 400 training labels, flips included: their vectors sit on the centre of
    # the class they were given. Judged with those vectors the flips it learnt look right; the review judges with
    # the configured encoder's vectors instead (and a model fitted on them), so it still finds them.
    from types import SimpleNamespace

    from learning import store
    from learning.models import FinetuneRun

    project = trec.project
    base = store.load(project.pk, learning_actions.current_encoder().name)
    labelled = np.array(sorted(Annotation.objects.in_project(project).labelled_ids()), dtype=np.int64)
    given = dict(Annotation.objects.filter(example__project=project).values_list("example_id", "label_keys"))
    trained = np.random.default_rng(2).choice(labelled, 400, replace=False)
    vectors = base.vectors.copy()
    rows = base.rows_of(trained)
    classes = np.array([given[i][0] for i in trained.tolist()])
    rng = np.random.default_rng(3)
    for key in set(classes.tolist()):
        centre = vectors[rows[classes == key]].mean(axis=0)
        vectors[rows[classes == key]] = centre + 0.01 * rng.standard_normal((int((classes == key).sum()),
                                                                              vectors.shape[1]))
    tuned = SimpleNamespace(name="finetuned-memorised")
    EmbeddingChunk.objects.create(project=project, encoder=tuned.name, dim=vectors.shape[1],
                                  count=len(base.example_ids), example_ids=base.example_ids.tobytes(),
                                  vectors=vectors.astype(np.float16).tobytes())
    FinetuneRun.objects.create(project=project, number=1, status="succeeded", encoder=tuned.name, encoder_path="v1",
                               base_encoder=base_name(), n_train=400, trained_ids=trained.tolist())
    monkeypatch.setattr(learning_actions, "project_encoder", lambda project_id: tuned)
    TrainingRun.objects.create(project=project)
    run = learning_actions.run_training(project.pk)
    assert run is not None and run.model_version is not None and run.model_version.encoder == tuned.name
    version = learning_actions.report_project(project.pk)
    assert version is not None and version.metrics["unseen_only"] is True and version.metrics["n_eval"] == 100

    def found_among_trained() -> float:
        flagged = set(ReviewCandidate.objects.filter(project=project, kind=ReviewKind.MISLABEL)
                      .values_list("example_id", flat=True))
        flips = trec.flipped & set(trained.tolist())
        return len(flagged & flips) / len(flips)

    judged_apart = found_among_trained()
    # The same review on the fine-tuned vectors, as before: the flips it learnt go unflagged (measured: 81 % of the
    # 26 flips among the 400 found judged apart, none on the fine-tuned vectors).
    monkeypatch.setattr(review_candidates, "trained_example_ids", lambda *args: None)
    assert review_candidates.refresh(version) is not None
    judged_by_tuned = found_among_trained()
    assert judged_apart >= 0.5 and judged_by_tuned <= judged_apart - 0.3, (judged_apart, judged_by_tuned)


def base_name() -> str:
    return learning_actions.current_encoder().name

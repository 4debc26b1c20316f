"""Likely mislabels of span (NER) projects: the finder on synthetic tags with known type flips, then real
CoNLL-2003 sentences with flipped entity types through the report and the review queue (page, decisions, API),
who may see it, and a reviewer fixing a span's type by keyboard in a real browser."""
from __future__ import annotations

import hashlib
import json
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from django.conf import settings as django_settings
from django.contrib.auth.models import User
from django.urls import reverse

from annotation import review_queue
from annotation.models import Annotation, AnnotationSource, Relabel, ReviewCandidate, ReviewDecision, ReviewKind
from learning import actions, loop_base, review_candidates, span_loop, span_mislabels
from learning import spans as spanml
from learning.models import ModelVersion, RunStatus, TrainingRun
from projects import taxonomy
from projects.models import Example, Membership, Project, Role
from projects.spanformats import spans_from_tags
from tests.browser import log_in, screenshot_dir

CONLL = Path(django_settings.BASE_DIR).parent / "shared" / "data" / "conll2003" / "train.jsonl"
ENTITY_TYPES = ("PER", "ORG", "LOC", "MISC")
N_SENTENCES, FLIP_RATE = 400, 0.08


# --- The finder on synthetic tags ------------------------------------------------------------------------------------


def synthetic(separation: float, *, n: int = 300, dim: int = 16, flip: float = 0.1, seed: int = 0
              ) -> tuple[list[np.ndarray], list[np.ndarray], spanml.TagSet, set[int]]:
    """Sentences of 6-13 tokens with entities of three types (1-2 tokens); a token's vector is its type's centre
    times ``separation`` plus unit noise (and a strong inside-of-entity marker, so boundaries are easy and the
    type is what separation controls). In a ``flip`` share of the sentences one entity's type is flipped."""
    rng = np.random.default_rng(seed)
    keys = ["PER", "ORG", "LOC"]
    tagset = spanml.TagSet(keys)
    centres = rng.normal(size=(len(keys) + 1, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    vectors, given, flipped = [], [], set()
    for i in range(n):
        length = int(rng.integers(6, 14))
        tags = np.zeros(length, dtype=np.int64)
        at = 0
        while at < length - 1:
            if rng.random() < 0.25:
                x, size = int(rng.integers(0, 3)), min(int(rng.integers(1, 3)), length - at)
                tags[at], tags[at + 1:at + size] = 1 + 2 * x, 2 + 2 * x
                at += size + 1
            else:
                at += 1
        kind = np.where(tags == 0, 0, (tags - 1) // 2 + 1)
        v = separation * centres[kind] + rng.normal(size=(length, dim))
        v[:, 0] = 3.0 * ((tags % 2 == 0) & (tags > 0)) + 0.3 * rng.normal(size=length)
        labelled = tags.copy()
        entities = spanml.token_spans(tags, tagset)
        if entities and rng.random() < flip:
            a, b, label = entities[int(rng.integers(len(entities)))]
            other = str(rng.choice([k for k in keys if k != label]))
            labelled[a], labelled[a + 1:b] = tagset.begin(other), tagset.inside(other)
            flipped.add(i)
        vectors.append(v.astype(np.float32))
        given.append(labelled)
    return vectors, given, tagset, flipped


def precision_at_k(separation: float, score: str = span_mislabels.DEFAULT_SCORE) -> tuple[float, int]:
    vectors, given, tagset, flipped = synthetic(separation)
    model = spanml.SpanModel.fit(vectors, given, tagset)
    oof = span_mislabels.out_of_fold_marginals(vectors, given, tagset, model=model, seed=0)
    found, _ = span_mislabels.find_span_issues(oof.marginals, given, tagset, use=oof.fitted,
                                               problems=("wrong_type",), score=score)
    k = len(flipped)
    return len({f.index for f in found[:k]} & flipped) / k, len(found)


def test_the_finder_finds_more_flipped_types_the_more_separable_the_types():
    # Measured (seed 0, 300 sentences, 25 flips): precision@k 0.08, 0.12, 0.36, 0.76 at separation 0.5, 1, 2, 4.
    precision = [precision_at_k(s)[0] for s in (0.5, 2.0, 4.0)]
    assert precision[0] < precision[1] < precision[2], precision
    assert precision[2] >= 0.6 and precision[0] <= 0.25, precision


def test_per_type_thresholds_are_the_confidence_where_the_model_agrees():
    tagset = spanml.TagSet(["A", "B"])
    # One sentence: "A" at token 0 (the model agrees, 0.9 exactly-this-span), "A" at token 2 that the model types
    # B with 0.8, and token 4, given O, that the model calls a B entity with 0.7.
    m = np.array([[0.05, 0.9, 0.0, 0.05, 0.0],
                  [0.98, 0.01, 0.0, 0.01, 0.0],
                  [0.05, 0.15, 0.0, 0.8, 0.0],
                  [0.97, 0.01, 0.01, 0.01, 0.0],
                  [0.3, 0.0, 0.0, 0.7, 0.0]], dtype=np.float32)
    given = np.array([1, 0, 1, 0, 0])
    # A second sentence where the model agrees on a B entity with 0.6: B's threshold.
    m2 = np.array([[0.4, 0.0, 0.0, 0.6, 0.0], [0.99, 0.0, 0.0, 0.01, 0.0]], dtype=np.float32)
    found, limits = span_mislabels.find_span_issues([m, m2], [given, np.array([3, 0])], tagset)
    assert limits.per_type == pytest.approx([0.9 * (1 - 0.0), 0.6 * 1.0], abs=1e-6)
    assert [f.index for f in found] == [0]
    issues = {(s.first, s.problem): s for s in found[0].issues}
    assert issues[(2, "wrong_type")].model_label == "B" and issues[(2, "wrong_type")].label == "A"
    assert issues[(2, "wrong_type")].confidence == pytest.approx(0.8)
    assert issues[(4, "missed")].model_label == "B" and issues[(4, "missed")].confidence == pytest.approx(0.7)
    # Its score is the margin over the given reading (A exactly there: 0.15 x 0.99).
    assert found[0].score == pytest.approx(0.8 - 0.15 * 0.99) and found[0].issues[0].problem == "wrong_type"
    # With B's threshold above 0.8 (a type the model is sure of where it agrees), neither clears it.
    m2[0] = [0.05, 0.0, 0.0, 0.95, 0.0]
    found, limits = span_mislabels.find_span_issues([m, m2], [given, np.array([3, 0])], tagset)
    assert limits.per_type[1] == pytest.approx(0.95) and found == []
    text = "Acme rose and Acme fell ."
    offsets = [(0, 4), (5, 9), (10, 13), (14, 18), (19, 23)]
    issue = span_mislabels.SpanIssue(0, 1, "A", "B", 0.94, 0.81, "wrong_type", 0.94)
    assert span_mislabels.describe(issue, text[0:4], {"A": "PER", "B": "ORG"}) == (
        "“Acme” tagged PER, the model says ORG 0.94 (ORG spans it agrees on average 0.81)")
    finding = span_mislabels.SentenceFinding(0, 0.94, [issue])
    assert span_mislabels.char_spans(finding, offsets) == [
        {"start": 0, "end": 4, "label": "A", "model_label": "B", "confidence": 0.94, "problem": "wrong_type"}]


def test_bad_inputs_are_refused_clearly():
    tagset = spanml.TagSet(["A"])
    with pytest.raises(ValueError, match="score must be one of"):
        span_mislabels.find_span_issues([], [], tagset, score="nope")
    with pytest.raises(ValueError, match="unknown problems"):
        span_mislabels.find_span_issues([], [], tagset, problems=("typo",))
    with pytest.raises(ValueError, match="2 tokens of marginals but 3 tags"):
        span_mislabels.find_span_issues([np.full((2, 3), 1 / 3)], [np.zeros(3, dtype=np.int64)], tagset)


# --- Real CoNLL-2003 sentences with flipped entity types -------------------------------------------------------------


def conll_sentences(n: int) -> list[dict[str, Any]]:
    if not CONLL.exists():
        pytest.skip(f"{CONLL} is not there (../shared/data)")
    out = []
    with CONLL.open(encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            if row["tokens"] and row["tokens"][0] != "-DOCSTART-":
                out.append(row)
            if len(out) == n:
                break
    return out


class FakeTokenEncoder:
    """Per token: a fixed random vector of the lower-cased word plus its shape (capitalised, all caps, digits,
    first in the sentence). Deterministic and fast: what a type depends on is which word it is, as with a
    real encoder's vectors of frequent names."""

    name = "fake-token-encoder-24"
    dim = 24

    def encode_tokens(self, texts: list[str], offsets: list[list[tuple[int, int]]]) -> list[np.ndarray]:
        out = []
        for text, spans in zip(texts, offsets, strict=True):
            rows = np.empty((len(spans), self.dim), dtype=np.float32)
            for i, (start, end) in enumerate(spans):
                word = text[start:end]
                seed = int(hashlib.sha1(word.lower().encode()).hexdigest()[:8], 16)
                rows[i, :20] = np.random.default_rng(seed).normal(size=20) * 0.5
                rows[i, 20:] = [word[:1].isupper(), word.isupper() and len(word) > 1,
                                any(c.isdigit() for c in word), i == 0]
            out.append(rows)
        return out


pytestmark = pytest.mark.usefixtures("span_data_dir")


@pytest.fixture
def token_encoder(monkeypatch: Any) -> FakeTokenEncoder:
    encoder = FakeTokenEncoder()
    monkeypatch.setattr(actions, "current_encoder", lambda: encoder)
    monkeypatch.setattr(loop_base, "current_encoder", lambda: encoder)
    return encoder


class Flipped:
    def __init__(self, project: Project, examples: list[Example], flipped: dict[int, tuple[int, int, str, str]]
                 ) -> None:
        self.project = project
        self.examples = examples
        # example id -> (start, end, given key, true key) of its flipped span
        self.flipped = flipped


def build_flipped(project: Project, annotator: Any, n: int, *, labelled: int, flip_rate: float = FLIP_RATE,
                  seed: int = 0) -> Flipped:
    """n CoNLL-2003 sentences, the first `labelled` annotated with their gold entities except that in a
    `flip_rate` share of the sentences with an entity, one entity's type is flipped to another at random."""
    keys = dict(project.current_taxonomy().labels.values_list("name", "key"))
    rng = np.random.default_rng(seed)
    built = [spans_from_tags(row["tokens"], row["tags"]) for row in conll_sentences(n)]
    examples = Example.objects.bulk_create(
        Example(project=project, text=text, tokens=[list(o) for o in offsets],
                content_hash=hashlib.sha1(f"{i}-{text}".encode()).hexdigest())
        for i, (text, offsets, _) in enumerate(built))
    with_entities = [i for i in range(labelled) if built[i][2]]
    chosen = set(rng.choice(with_entities, int(flip_rate * len(with_entities)), replace=False).tolist())
    version = project.current_taxonomy()
    annotations: list[Annotation] = []
    flipped: dict[int, tuple[int, int, str, str]] = {}
    for i, (example, (_, _, spans)) in enumerate(zip(examples[:labelled], built[:labelled], strict=True)):
        mine: list[dict[str, Any]] = [{"start": s["start"], "end": s["end"], "label": keys[s["label"]]} for s in spans]
        if i in chosen:
            j = int(rng.integers(len(mine)))
            truth = mine[j]["label"]
            other = str(rng.choice([keys[t] for t in ENTITY_TYPES if keys[t] != truth]))
            mine[j] = {**mine[j], "label": other}
            flipped[example.pk] = (int(mine[j]["start"]), int(mine[j]["end"]), other, str(truth))
        annotations.append(Annotation(example=example, annotator=annotator, taxonomy_version=version, spans=mine,
                                      label_keys=sorted({s["label"] for s in mine}), source=AnnotationSource.UI))
    Annotation.objects.bulk_create(annotations)
    return Flipped(project, examples, flipped)


def train_and_report(project: Project) -> ModelVersion:
    actions.embed_project(project.pk)
    if not TrainingRun.objects.filter(project=project, status=RunStatus.QUEUED).exists():
        TrainingRun.objects.create(project=project)
    run = actions.run_training(project.pk)
    assert run is not None and run.status == RunStatus.SUCCEEDED, run and run.error
    version = actions.report_project(project.pk)
    assert version is not None
    return version


@pytest.fixture
def ner(team: Any, alice: Any, bob: Any, token_encoder: FakeTokenEncoder) -> Flipped:
    """400 CoNLL-2003 sentences labelled by bob (8% of those with an entity have one entity's type flipped), 40 more
    unlabelled; trained, and its quality report run (which writes the candidates)."""
    project = taxonomy.create_project(team, name="News NER", task_type="span", created_by=alice,
                                      labels=[taxonomy.LabelSpec(label) for label in ENTITY_TYPES])
    data = build_flipped(project, bob, N_SENTENCES + 40, labelled=N_SENTENCES)
    train_and_report(project)
    return data


def test_the_report_writes_well_formed_span_candidates(ner):
    candidates = list(review_queue.open_candidates(ner.project, ReviewKind.MISLABEL))
    assert candidates, "no span candidate"
    k = len(ner.flipped)
    top = [c.example_id for c in candidates[:k]]
    hits = set(top) & set(ner.flipped)
    # The word-hash vectors know a word's type only from other sentences with the same word, so how well the flips
    # rank here is at the level of chance and moves with the run's database ids (3, 4 or 2 of 24 hits, against 1.9
    # expected at random): the ranking is checked with MiniLM token vectors in the slow test below (precision@k 0.48
    # on 1,000 sentences). Here: candidates are written, well formed, and a questioned flip names the true type.
    print(f"span mislabels: {len(candidates)} flagged, k={k}, hits in the top k {len(hits)}")
    names = dict(ner.project.current_taxonomy().labels.values_list("key", "name"))
    right = 0
    for c in candidates:
        assert c.spans and c.reason.startswith("Out of fold") and c.model_version_number == 1
        assert c.model_confidence == pytest.approx(c.spans[0]["confidence"], abs=1e-4) and c.score > 0
        text = Example.objects.get(pk=c.example_id).text
        for s in c.spans:
            assert set(s) == {"start", "end", "label", "model_label", "confidence", "problem"}
            assert s["problem"] in span_mislabels.PROBLEMS and 0 < s["confidence"] <= 1
            assert text[s["start"]:s["end"]].strip()
        if c.example_id in ner.flipped:
            start, end, given, truth = ner.flipped[c.example_id]
            question = next((s for s in c.spans if (s["start"], s["end"]) == (start, end)), None)
            if question is not None and question["problem"] == "wrong_type":
                assert question["label"] == given
                right += question["model_label"] == truth
                assert f"tagged {names[given]}, the model says {names[question['model_label']]}" in c.reason
    # Where the flipped span is questioned for its type, the model's type is mostly the true one.
    assert right >= 0.6 * len(hits)


def test_the_refresh_of_1000_sentences_takes_seconds(team, alice, bob, token_encoder):
    project = taxonomy.create_project(team, name="Big NER", task_type="span", created_by=alice,
                                      labels=[taxonomy.LabelSpec(label) for label in ENTITY_TYPES])
    data = build_flipped(project, bob, 1000, labelled=1000)
    version = train_and_report(project)
    started, cpu = time.perf_counter(), time.process_time()
    written = review_candidates.refresh(version)
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    ranked = list(review_queue.open_candidates(project, ReviewKind.MISLABEL).values_list("example_id", flat=True))
    k = len(data.flipped)
    print(f"refresh of 1000 sentences: {cpu:.2f} s CPU, {wall:.2f} s wall, {written} candidates, "
          f"precision@k={len(set(ranked[:k]) & set(data.flipped)) / k:.2f} (k={k})")
    assert written and cpu < 60


@pytest.mark.slow
def test_with_the_real_encoder_the_flipped_types_of_1000_sentences_rank_first(team, alice, bob):
    """The figures of the README's review section: MiniLM token vectors of 1,000 CoNLL-2003 sentences (a few minutes
    on two cores: encoding, the model, its report, then the refresh timed on its own)."""
    project = taxonomy.create_project(team, name="Real NER", task_type="span", created_by=alice,
                                      labels=[taxonomy.LabelSpec(label) for label in ENTITY_TYPES])
    data = build_flipped(project, bob, 1000, labelled=1000)
    version = train_and_report(project)
    started, cpu = time.perf_counter(), time.process_time()
    written = review_candidates.refresh(version)
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    ranked = list(review_queue.open_candidates(project, ReviewKind.MISLABEL).values_list("example_id", flat=True))
    k = len(data.flipped)
    precision = len(set(ranked[:k]) & set(data.flipped)) / k
    recall = len(set(ranked) & set(data.flipped)) / k
    print(f"real encoder, refresh of 1000 sentences: {cpu:.1f} s CPU, {wall:.1f} s wall, {written} candidates, "
          f"k={k}, precision@k={precision:.2f}, recall={recall:.2f}")
    # A random ranking: about 0.08.
    assert precision >= 0.3, (precision, recall, written)


# --- The queue: page, decisions, API, who may use it ------------------------------------------------------------------


def first(project: Project) -> ReviewCandidate:
    candidate = review_queue.open_candidates(project, ReviewKind.MISLABEL).first()
    assert candidate is not None, "no span candidate"
    return candidate


def review_url(project: Project) -> str:
    return f"{reverse('annotation:review', args=[project.pk])}?tab=mislabel"


def decide_url(candidate: ReviewCandidate) -> str:
    return reverse("annotation:review-decide", args=[candidate.project_id, candidate.pk])


def given_spans(example_id: int) -> list[dict[str, Any]]:
    return list(Annotation.objects.filter(example_id=example_id).order_by("-created_at", "-id")[0].spans)


def test_the_page_shows_the_sentence_with_given_and_questioned_spans(ner, alice, login):
    page = login(alice).get(review_url(ner.project)).content.decode()
    candidate = first(ner.project)
    item = page[page.index(f'id="review-item-{candidate.pk}"'):]
    item = item[:item.index("</article>")]
    assert "review-span-item" in item and "Tagged by bob" in item and "span-review.js" in page
    names = dict(ner.project.current_taxonomy().labels.values_list("key", "name"))
    question = candidate.spans[0]
    text = Example.objects.get(pk=candidate.example_id).text
    assert 'data-q="0"' in item and f"{round(100 * question['confidence'])}%" in item
    model = names[question["model_label"]] if question["model_label"] else "no entity"
    assert f"→ {model}" in item and text[question["start"]:question["end"]].replace("'", "&#x27;") in item
    # Given spans are drawn in their label's colour, with their names.
    for span in given_spans(candidate.example_id):
        assert f'data-start="{span["start"]}" data-end="{span["end"]}"' in item
    # Span projects have likely mislabels and flags: no low-precision or ambiguous tab.
    assert 'data-tab="mislabel"' in page and 'data-tab="ambiguous"' not in page and 'data-tab="flags"' in page
    assert 'data-action="accept-all"' in item and 'data-action="keep"' in item and 'data-action="relabel"' in item


def test_accepting_the_models_reading_corrects_the_spans_and_retrains(ner, alice, login, htmx, run_jobs):
    candidate = first(ner.project)
    before = given_spans(candidate.example_id)
    question = candidate.spans[0]
    with run_jobs():
        response = login(alice).post(decide_url(candidate), {"action": "change", "accept": "0", "tab": "mislabel",
                                                             "taxonomy_version": "1"}, **htmx)
    assert response.status_code == 200 and "the model retrains" in response.content.decode()
    mine = Annotation.objects.get(example_id=candidate.example_id, annotator=alice)
    expected = review_queue.accept_model_spans(before, candidate.spans, [0])
    assert mine.spans == expected and mine.label_keys == sorted({s["label"] for s in expected})
    if question["model_label"]:
        assert {"start": question["start"], "end": question["end"], "label": question["model_label"]} in mine.spans
    decision = ReviewDecision.objects.get(example_id=candidate.example_id)
    assert (decision.action, decision.decided_by, decision.previous_spans, decision.new_spans) == (
        "change", alice, before, expected)
    # The model learnt from the correction (version 2), and its report did not put the sentence back.
    assert ModelVersion.objects.filter(project=ner.project, number=2).exists()
    row = list(span_loop.span_training_set(ner.project).example_ids).index(candidate.example_id)
    assert span_loop.span_training_set(ner.project).spans[row] == expected
    assert candidate.example_id not in set(
        review_queue.open_candidates(ner.project).values_list("example_id", flat=True))


def test_a_span_fixed_by_hand_is_saved_and_bad_spans_change_nothing(ner, alice, login, htmx):
    candidate = first(ner.project)
    before = given_spans(candidate.example_id)
    keys = [label.key for label in ner.project.current_taxonomy().labels.order_by("position")]
    client = login(alice)
    text = Example.objects.get(pk=candidate.example_id).text
    bad = [("not json", "not readable JSON"),
           (json.dumps([{"start": 0, "end": 1_000_000, "label": keys[0]}]), "outside the text"),
           (json.dumps([{"start": 0, "end": len(text.split()[0]), "label": "nope"}]), "not a label of this project")]
    for raw, message in bad:
        body = client.post(decide_url(candidate), {"action": "change", "spans": raw, "tab": "mislabel"},
                           **htmx).content.decode()
        assert message in body, body[:2000]
    body = client.post(decide_url(candidate), {"action": "change", "accept": "99", "tab": "mislabel"},
                       **htmx).content.decode()
    assert "is not a span in question here" in body
    assert not ReviewDecision.objects.exists() and not Annotation.objects.filter(annotator=alice).exists()
    fixed = [{**s, "label": keys[0] if s["label"] != keys[0] else keys[1]} if i == 0 else s
             for i, s in enumerate(before)] or [{"start": 0, "end": len(text.split()[0]), "label": keys[0]}]
    response = client.post(decide_url(candidate), {"action": "change", "spans": json.dumps(fixed),
                                                   "tab": "mislabel"})
    assert response.status_code == 302
    assert Annotation.objects.get(example_id=candidate.example_id, annotator=alice).spans == fixed
    decision = ReviewDecision.objects.get()
    assert (decision.previous_spans, decision.new_spans) == (before, fixed)


def test_keep_relabel_and_comment_record_the_spans_as_they_stand(ner, alice, login, htmx):
    client = login(alice)
    kept = first(ner.project)
    client.post(decide_url(kept), {"action": "keep", "tab": "mislabel"}, **htmx)
    decision = ReviewDecision.objects.get(example_id=kept.example_id)
    assert decision.action == "keep" and decision.previous_spans == decision.new_spans == given_spans(kept.example_id)
    # The same spans sent back as a "change" are a keep.
    same = first(ner.project)
    client.post(decide_url(same), {"action": "change", "spans": json.dumps(given_spans(same.example_id)),
                                   "tab": "mislabel"}, **htmx)
    assert ReviewDecision.objects.get(example_id=same.example_id).action == "keep"
    sent = first(ner.project)
    client.post(decide_url(sent), {"action": "relabel", "tab": "mislabel"}, **htmx)
    assert Relabel.objects.filter(example_id=sent.example_id, done_at__isnull=True).exists()
    talk = first(ner.project)
    body = client.post(decide_url(talk), {"action": "comment", "note": "Is a club a LOC or an ORG?",
                                          "tab": "mislabel"}, **htmx).content.decode()
    assert f'id="review-item-{talk.pk}"' in body and "LOC or an ORG" in body
    # A refresh does not put back what was decided.
    review_candidates.refresh(ModelVersion.objects.get(project=ner.project))
    decided = {kept.example_id, same.example_id, sent.example_id}
    assert not ReviewCandidate.objects.filter(example_id__in=decided).exists()


def test_the_dashboard_counts_span_candidates_and_links_to_the_queue(ner, alice, bob, login):
    summary = reverse("annotation:review-summary", args=[ner.project.pk])
    count = review_queue.counts(ner.project)[ReviewKind.MISLABEL]
    assert count == ReviewCandidate.objects.filter(project=ner.project).count() > 0
    body = login(alice).get(summary).content.decode()
    assert f"<b>{count}</b> likely mislabels" in body and review_url(ner.project) in body
    assert "ambiguous items" not in body and "spans the model confidently reads otherwise" in body
    assert review_url(ner.project) not in login(bob).get(summary).content.decode()


def test_the_api_lists_span_candidates_with_their_spans_and_takes_decisions(ner, alice, api_client):
    client = api_client(alice)
    url = reverse("api-review-candidates", args=[ner.project.pk])
    data = client.get(url, {"kind": "mislabel", "limit": 3}).json()
    assert data["count"] == data["counts"]["mislabel"] > 0 and len(data["results"]) == 3
    row = data["results"][0]
    assert row["spans"] and set(row["spans"][0]) == {"start", "end", "label", "model_label", "confidence", "problem"}
    assert row["current_spans"] == given_spans(row["example_id"]) and row["given"][0]["annotator"] == "bob"
    decisions = reverse("api-review-decisions", args=[ner.project.pk])
    assert client.post(decisions, {"candidate": row["id"], "action": "change"}, format="json").status_code == 400
    assert client.post(decisions, {"candidate": row["id"], "action": "change", "spans": [{"start": "x"}]},
                       format="json").status_code == 400
    response = client.post(decisions, {"candidate": row["id"], "action": "change", "accept": [0]}, format="json")
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["previous_spans"] == row["current_spans"] and body["new_spans"] == review_queue.accept_model_spans(
        row["current_spans"], row["spans"], [0])
    assert client.post(decisions, {"candidate": row["id"], "action": "keep"}, format="json").status_code == 409
    schema = client.get("/api/schema/", HTTP_ACCEPT="application/json").json()
    components = schema["components"]["schemas"]
    assert "problem" in components["SpanQuestion"]["properties"] and "spans" in components["Candidate"]["properties"]
    assert {"spans", "accept"} <= set(components["DecisionInputRequest"]["properties"])


def test_only_managers_see_and_decide(ner, alice, bob, charlie, login, htmx, client, api_client):
    viewer = User.objects.create_user(username="vera", password="vera-password-123")
    Membership.objects.create(team=ner.project.team, user=viewer, role=Role.VIEWER)
    candidate = first(ner.project)
    for user, code in ((charlie, 404), (bob, 403), (viewer, 403)):
        assert login(user).get(review_url(ner.project)).status_code == code
        assert login(user).post(decide_url(candidate), {"action": "change", "accept": "0"}, **htmx).status_code == code
        listed = api_client(user).get(reverse("api-review-candidates", args=[ner.project.pk]), {"kind": "mislabel"})
        assert listed.status_code == code
    for response in (client.get(review_url(ner.project)), client.post(decide_url(candidate), {"action": "keep"})):
        assert response.status_code == 302 and "/accounts/login/" in response["Location"]
    anonymous = api_client(None).get(reverse("api-review-candidates", args=[ner.project.pk]), {"kind": "mislabel"})
    assert anonymous.status_code in (401, 403)
    assert not ReviewDecision.objects.exists() and not Annotation.objects.filter(annotator__in=[alice, viewer]).exists()


# --- In a real browser ----------------------------------------------------------------------------------------------


@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_reviewer_fixes_a_span_type_by_keyboard(live_server, browser, ner, alice):
    queued = list(review_queue.open_candidates(ner.project, ReviewKind.MISLABEL)[:20])
    at = next(i for i, c in enumerate(queued) if any(q["problem"] == "wrong_type" for q in c.spans))
    candidate = queued[at]
    j = next(n for n, q in enumerate(candidate.spans) if q["problem"] == "wrong_type")
    question = candidate.spans[j]
    label = ner.project.current_taxonomy().labels.get(key=question["model_label"])
    before = given_spans(candidate.example_id)

    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.set_default_timeout(60_000)
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    page.on("console", lambda msg: problems.append(msg.text) if "Content Security Policy" in msg.text else None)
    log_in(page, live_server, "alice")
    shots = screenshot_dir()
    # From the dashboard's count to the queue.
    page.goto(f"{live_server.url}/projects/{ner.project.pk}/dashboard/")
    summary = page.locator("section#review-summary")
    summary.wait_for()
    assert re.search(rf"\b{review_queue.counts(ner.project)['mislabel']}\b\s+likely mislabels", summary.inner_text())
    summary.get_by_role("link", name=re.compile("likely mislabels")).click()
    page.wait_for_selector("#review-queue .review-span-item.current")
    for _ in range(at):
        page.keyboard.press("ArrowDown")
    item = page.locator(f"#review-item-{candidate.pk}")
    assert "current" in (item.get_attribute("class") or "")
    for _ in range(j):
        page.keyboard.press("ArrowRight")
    mark = item.locator(f'mark[data-q="{j}"]')
    assert "qcur" in (mark.get_attribute("class") or "")
    page.screenshot(path=str(shots / "span-review-queue.png"))
    # The label's key gives the span under the cursor that label; Enter saves.
    page.keyboard.press(label.shortcut)
    assert "fixed" in (mark.get_attribute("class") or "") and mark.locator(".rs-tag").inner_text() == label.name
    page.screenshot(path=str(shots / "span-review-fixed.png"), full_page=True)
    item.screenshot(path=str(shots / "span-review-item-fixed.png"))
    page.keyboard.press("Enter")
    page.wait_for_selector(f"#review-item-{candidate.pk}", state="detached")
    assert "the model retrains" in page.locator("#review-queue .msg.success").inner_text()
    expected = review_queue.accept_model_spans(before, candidate.spans, [j])
    assert Annotation.objects.get(example_id=candidate.example_id, annotator=alice).spans == expected
    decision = ReviewDecision.objects.get(example_id=candidate.example_id)
    assert (decision.action, decision.previous_spans, decision.new_spans) == ("change", before, expected)
    assert TrainingRun.objects.filter(project=ner.project, status=RunStatus.QUEUED).exists()

    # A takes the model's version of every span in question of the (new) current sentence; k keeps the next one.
    nxt = page.locator("#review-queue .review-item.current").get_attribute("data-candidate")
    page.keyboard.press("A")
    page.wait_for_selector(f"#review-item-{nxt}", state="detached")
    decided = ReviewDecision.objects.get(example_id=next(c.example_id for c in queued if str(c.pk) == nxt))
    assert decided.action == "change" and decided.new_spans != decided.previous_spans
    third = page.locator("#review-queue .review-item.current").get_attribute("data-candidate")
    page.keyboard.press("k")
    page.wait_for_selector(f"#review-item-{third}", state="detached")
    assert list(ReviewDecision.objects.order_by("decided_at").values_list("action", flat=True)) == [
        "change", "change", "keep"]
    page.screenshot(path=str(shots / "span-review-after.png"), full_page=True)
    assert not problems, problems


class MemorisedTokenEncoder(FakeTokenEncoder):
    """A fine-tuned encoder that learnt its training sentences' given types, flips included: each token of a given
    span gets a strong feature of the type it was given on top of the configured encoder's vector."""

    name = "finetuned-ner-memorised"
    dim = FakeTokenEncoder.dim + len(ENTITY_TYPES)

    def __init__(self, given: dict[str, list[tuple[int, int, int]]]) -> None:
        self.given = given  # text -> (start, end, type index) of its given spans

    def encode_tokens(self, texts: list[str], offsets: list[list[tuple[int, int]]]) -> list[np.ndarray]:
        out = []
        for text, spans, base in zip(texts, offsets, FakeTokenEncoder().encode_tokens(texts, offsets), strict=True):
            rows = np.zeros((len(spans), self.dim), dtype=np.float32)
            rows[:, :FakeTokenEncoder.dim] = base
            for start, end, kind in self.given.get(text, []):
                for i, (a, b) in enumerate(spans):
                    if a >= start and b <= end:
                        rows[i, FakeTokenEncoder.dim + kind] = 4.0
            out.append(rows)
        return out


def test_after_a_fine_tune_span_labels_are_judged_with_the_encoder_that_never_saw_them(ner, monkeypatch,
                                                                                         token_encoder):
    """A span project whose fast loop runs on a fine-tuned encoder trained on its labels: the review judges the
    spans with the configured encoder's token vectors and a model fitted on them; with the fine-tuned vectors, which
    learnt the flipped types, the flips would look right."""
    from learning.models import FinetuneRun

    project = ner.project
    types = {key: i for i, key in enumerate(
        project.current_taxonomy().labels.order_by("name").values_list("key", flat=True))}
    labelled = Annotation.objects.filter(example__project=project).select_related("example")
    given = {a.example.text: [(s["start"], s["end"], types[s["label"]]) for s in a.spans] for a in labelled}
    tuned = MemorisedTokenEncoder(given)
    FinetuneRun.objects.create(project=project, number=1, status="succeeded", encoder=tuned.name, encoder_path="v1",
                               base_encoder=token_encoder.name, n_train=len(given),
                               trained_ids=[a.example_id for a in labelled])
    monkeypatch.setattr(actions, "project_encoder", lambda project_id: tuned)
    real_named = loop_base.encoder_named
    monkeypatch.setattr(loop_base, "encoder_named", lambda name: tuned if name == tuned.name else real_named(name))
    version = train_and_report(project)
    assert version.encoder == tuned.name

    inputs = review_candidates.span_inputs_for(version)
    assert inputs is not None
    assert {v.shape[1] for v in inputs.vectors} == {token_encoder.dim}  # the configured encoder's vectors
    first = inputs.offsets[0]
    # Stored as float16.
    assert np.allclose(inputs.vectors[0], token_encoder.encode_tokens([inputs.texts[0]], [first])[0], atol=2e-3)

    def flips_questioned() -> int:
        questioned = 0
        for c in review_queue.open_candidates(project, ReviewKind.MISLABEL):
            if c.example_id in ner.flipped:
                start, end, _, _ = ner.flipped[c.example_id]
                questioned += any((s["start"], s["end"]) == (start, end) for s in c.spans)
        return questioned

    apart = flips_questioned()
    # As before this change: judged with the fine-tuned vectors, whose model agrees with every given type.
    monkeypatch.setattr(review_candidates, "trained_example_ids", lambda *args: None)
    by_tuned = review_candidates.span_inputs_for(version)
    assert by_tuned is not None and {v.shape[1] for v in by_tuned.vectors} == {tuned.dim}
    assert review_candidates.refresh(version) is not None
    judged_by_tuned = flips_questioned()
    print(f"flipped spans questioned: {apart} judged apart, {judged_by_tuned} on the fine-tuned vectors")
    assert apart >= 3 and judged_by_tuned <= apart // 3, (apart, judged_by_tuned)

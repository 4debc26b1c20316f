"""Fine-tuning the encoder of span (NER) projects: token classification through the word vectors the span model
reads (learning.finetune_spans), and the app's job for span projects (learning.finetuning): held-out sentences,
entity-F1 comparison, promotion, the fast loop following the promoted encoder. Real CoNLL-2003 sentences and the
real encoder throughout."""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from django.conf import settings as django_settings
from django.test import Client
from django.urls import reverse

from annotation.models import Annotation, AnnotationSource, ExampleScore
from labelhub.errors import ActionError
from learning import actions as learning_actions
from learning import finetuning, span_loop
from learning import spans as spanml
from learning.encoder import default_model_path, get_encoder
from learning.finetune import FinetuneCancelled, FinetuneConfig
from learning.finetune_spans import METHOD, finetune_tokens
from learning.models import EmbeddingChunk, FinetuneRun, FinetuneStatus, ModelVersion, ProjectEncoder, TrainingRun
from projects import taxonomy
from projects.models import Example, Project
from projects.spanformats import spans_from_tags
from serving import served
from tests.test_finetune_app import (  # noqa: F401
    finetune_env,
    shoot,
    start_finetune,
    start_worker,
    status_of,
    with_model,
)

CONLL = Path(django_settings.BASE_DIR).parent / "shared" / "data" / "conll2003" / "train.jsonl"
ENTITY_TYPES = ["LOC", "MISC", "ORG", "PER"]


def conll(n: int, *, skip: int = 0) -> list[tuple[str, list[tuple[int, int]], list[dict[str, Any]]]]:
    """(text, token offsets, gold spans) of n CoNLL-2003 training sentences after the first `skip`, in file order."""
    if not CONLL.exists():
        pytest.skip(f"{CONLL} is not there (../shared/data)")
    out = []
    with CONLL.open(encoding="utf-8") as handle:
        for i, line in enumerate(handle):
            row = json.loads(line)
            if i < skip or not row["tokens"] or row["tokens"][0] == "-DOCSTART-":
                continue
            text, offsets, spans = spans_from_tags(row["tokens"], row["tags"])
            out.append((text, [tuple(o) for o in offsets], spans))
            if len(out) == n:
                break
    return out


def tagged(rows: list[tuple[str, list[tuple[int, int]], list[dict[str, Any]]]], tagset: spanml.TagSet
           ) -> tuple[list[str], list[list[tuple[int, int]]], list[np.ndarray]]:
    return ([r[0] for r in rows], [r[1] for r in rows], [spanml.tag_ids(r[1], r[2], tagset) for r in rows])


def separation(vectors: list[np.ndarray], tags: list[np.ndarray]) -> float:
    """Over the tokens: mean cosine to tokens of the same entity type (O being one) minus mean cosine to the
    others'."""
    X = np.concatenate(vectors)
    X = X / np.linalg.norm(X, axis=1, keepdims=True)
    y = (np.concatenate(tags) + 1) // 2  # B-x and I-x are type x
    S = X @ X.T
    same = y[:, None] == y[None, :]
    np.fill_diagonal(same, False)
    other = y[:, None] != y[None, :]
    return float(S[same].mean() - S[other].mean())


# --- learning.finetune_spans ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_fine_tuned_token_features_separate_entity_types_better(tmp_path: Path) -> None:
    tagset = spanml.TagSet(ENTITY_TYPES)
    texts, offsets, tags = tagged(conll(20), tagset)  # about 470 tokens, 70 of them in entities
    assert 300 < sum(len(t) for t in tags) < 700
    held_texts, held_offsets, held_tags = tagged(conll(40, skip=60), tagset)
    config = FinetuneConfig.for_device("cpu", epochs=1, min_steps=12, batch_size=8, learning_rate=1e-4)
    seen: list[tuple[int, int, float]] = []
    result = finetune_tokens(default_model_path(), texts, offsets, tags, n_tags=len(tagset), out=tmp_path / "tuned",
                             config=config, progress=lambda step, total, loss: seen.append((step, total, loss)))
    assert result.method == METHOD and result.config["method"] == METHOD
    assert result.steps == len(seen) == seen[-1][1] >= 12 and [s for s, _, _ in seen] == list(range(1, 13))
    assert seen[-1][2] < seen[0][2]  # the tagging loss went down
    frozen = get_encoder(backend="torch", threads=1)
    tuned = get_encoder(result.path, backend="torch", threads=1)
    assert tuned.name != frozen.name and tuned.dim == frozen.dim
    # The folder is an encoder the span loop reads: one vector per word, as encode_tokens gives the frozen one.
    before, after = frozen.encode_tokens(texts, offsets), tuned.encode_tokens(texts, offsets)
    assert [v.shape for v in after] == [v.shape for v in before]
    assert separation(after, tags) > separation(before, tags) + 0.08
    # On sentences it never saw as well.
    held_before = frozen.encode_tokens(held_texts, held_offsets)
    held_after = tuned.encode_tokens(held_texts, held_offsets)
    assert separation(held_after, held_tags) > separation(held_before, held_tags) + 0.03


@pytest.mark.slow
def test_a_cancelled_token_fine_tune_writes_nothing(tmp_path: Path) -> None:
    tagset = spanml.TagSet(ENTITY_TYPES)
    texts, offsets, tags = tagged(conll(8), tagset)
    calls = iter(range(100))
    with pytest.raises(FinetuneCancelled):
        finetune_tokens(default_model_path(), texts, offsets, tags, n_tags=len(tagset), out=tmp_path / "tuned",
                        config=FinetuneConfig.for_device("cpu", min_steps=10, batch_size=2),
                        should_stop=lambda: next(calls) >= 2)
    assert not (tmp_path / "tuned").exists()


@pytest.mark.parametrize("tags, message", [
    ([[0, 0], [0]], "at least one tagged entity"),
    ([[1, 2], [3]], "plain \\(O\\) tokens"),
    ([[0, 1], [0, 0]], "1 tokens but 2 tags"),
    ([[0, 9], [0]], "tag ids must lie in \\[0, 5\\)"),
])
def test_it_refuses_tags_it_cannot_learn_from(tmp_path: Path, tags: list[list[int]], message: str) -> None:
    texts, offsets = ["Peter Blackburn", "BRUSSELS"], [[(0, 5), (6, 15)], [(0, 8)]]
    with pytest.raises(ValueError, match=message):
        finetune_tokens(default_model_path(), texts, offsets, tags, n_tags=5, out=tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_long_texts_are_cut_into_windows_and_every_whole_word_keeps_its_tag() -> None:
    from learning.finetune_spans import IGNORE, _windows

    tagset = spanml.TagSet(ENTITY_TYPES)
    texts, offsets, tags = tagged(conll(3, skip=3), tagset)  # a 30-word sentence among them
    windows = _windows(default_model_path(), texts, offsets, tags, max_length=16)
    assert len(windows) > len(texts)
    assert all(len(w.ids) <= 16 and np.allclose(w.pool[w.tags != IGNORE].sum(axis=1), 1.0) for w in windows)
    kept = np.concatenate([w.tags for w in windows])
    # A word is trained on once at most; only words cut by a window's edge are left out.
    assert (kept != IGNORE).sum() <= sum(len(t) for t in tags) and (kept == IGNORE).sum() < len(windows)
    whole = _windows(default_model_path(), texts, offsets, tags, max_length=128)
    assert len(whole) == 3 and np.array_equal(np.concatenate([w.tags for w in whole]), np.concatenate(tags))


def test_the_span_comparison_promotes_only_a_higher_entity_f1_on_the_same_sentences() -> None:
    tagset = spanml.TagSet(["PER", "LOC"])
    gold = [np.array([1, 2, 0]), np.array([0, 3]), np.array([0, 0]), np.array([3, 0, 1])]

    def prediction(tags: list[int]) -> spanml.SpanPrediction:
        ids = np.array(tags)
        spans = [{"start": a, "end": b, "label": label, "confidence": 0.9}
                 for label, a, b in spanml.entities_from_ids(ids, tagset)]
        return spanml.SpanPrediction(tags=ids, marginals=np.zeros((len(tags), 5), np.float32), spans=spans)

    perfect = [prediction(list(g)) for g in gold]
    weak = [prediction([1, 0, 0]), prediction([0, 0]), prediction([0, 0]), prediction([3, 0, 0])]
    result = finetuning.compare_spans(gold, weak, perfect, tagset, seed=0)
    assert result["metric"] == "entity_f1" and result["n_heldout"] == 4 and result["n_gold_entities"] == 4
    assert result["candidate"]["entity_f1"]["value"] == 1.0 and result["candidate"]["accuracy"]["value"] == 1.0
    assert result["current"]["entity_f1"]["value"] == pytest.approx(2 * (1 / 2 * 1 / 4) / (1 / 2 + 1 / 4))
    assert result["candidate_wins"] and result["difference"]["value"] > 0
    for side in ("current", "candidate"):
        f1 = result[side]["entity_f1"]
        assert 0 <= f1["low"] <= f1["value"] <= f1["high"] <= 1
    assert not finetuning.compare_spans(gold, perfect, perfect, tagset, seed=0)["candidate_wins"]  # a tie keeps
    assert not finetuning.compare_spans(gold, perfect, weak, tagset, seed=0)["candidate_wins"]


# --- The app's job -------------------------------------------------------------------------------------------------


def span_project(team: Any, alice: Any, name: str = "News NER") -> Project:
    return taxonomy.create_project(team, name=name, task_type="span", created_by=alice,
                                   labels=[taxonomy.LabelSpec(label) for label in ENTITY_TYPES])


def add_sentences(project: Project, user: Any, n: int, *, labelled: int) -> list[Example]:
    """n CoNLL-2003 sentences with their tokens, the first `labelled` annotated with their gold entities."""
    keys = dict(project.current_taxonomy().labels.values_list("name", "key"))
    rows = conll(n)
    examples = Example.objects.bulk_create(
        Example(project=project, text=text, tokens=[list(o) for o in offsets],
                content_hash=hashlib.sha1(f"{i}-{text}".encode()).hexdigest())
        for i, (text, offsets, _) in enumerate(rows))
    version = project.current_taxonomy()
    annotations = []
    for example, (_, _, spans) in zip(examples[:labelled], rows[:labelled], strict=True):
        mine = [{"start": s["start"], "end": s["end"], "label": keys[s["label"]]} for s in spans]
        annotations.append(Annotation(example=example, annotator=user, taxonomy_version=version, spans=mine,
                                      label_keys=sorted({s["label"] for s in mine}), source=AnnotationSource.UI))
    Annotation.objects.bulk_create(annotations)
    return examples


@pytest.mark.django_db
def test_a_span_project_is_refused_only_for_too_few_labels_or_entities(
        team: Any, alice: Any, login: Callable[[Any], Client], settings: Any, span_data_dir: None) -> None:
    settings.FINETUNE_MIN_LABELS = 6
    project = span_project(team, alice)
    add_sentences(project, alice, 8, labelled=4)
    response = login(alice).post(reverse("learning:finetune-start", args=[project.pk]))
    body = response.content.decode()
    assert response.status_code == 400 and "at least 6 labelled examples" in body and "has 4 usable" in body
    # Enough labels, but a single one with an entity: neither the fine-tune nor the held-out part would see one.
    settings.FINETUNE_MIN_LABELS = 3
    for annotation in Annotation.objects.filter(example__project=project).order_by("example_id")[1:]:
        annotation.spans, annotation.label_keys = [], []
        annotation.save()
    with pytest.raises(ActionError, match="at least two labelled examples with a tagged entity"):
        finetuning.check_can_finetune(project)
    assert not FinetuneRun.objects.exists()


@pytest.mark.django_db
def test_span_projects_fine_tune_by_themselves_when_the_labels_have_grown(
        team: Any, alice: Any, settings: Any, span_data_dir: None) -> None:
    settings.FINETUNE_AUTO, settings.FINETUNE_MIN_LABELS = True, 6
    project = span_project(team, alice)
    add_sentences(project, alice, 10, labelled=8)
    version: Any = type("Version", (), {"project": project, "n_labels": 8})()
    run = finetuning.finetune_when_labels_grew(version)
    assert run is not None and run.method == METHOD and run.n_labels == 8 and run.reason == "Automatic: 8 labels"


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_span_fine_tune_compares_on_held_out_sentences_promotes_and_the_loop_follows(
        team: Any, alice: Any, login: Callable[[Any], Client], finetune_env: dict[str, str],  # noqa: F811
        settings: Any, span_data_dir: None, monkeypatch: Any) -> None:
    settings.FINETUNE_DEVICE, settings.FINETUNE_EPOCHS, settings.FINETUNE_MIN_STEPS = "cpu", 1, 8
    settings.FINETUNE_BATCH_SIZE, settings.FINETUNE_MAX_LENGTH = 8, 64
    settings.FINETUNE_MIN_LABELS = 30
    project = span_project(team, alice)
    add_sentences(project, alice, 50, labelled=40)
    learning_actions.embed_project(project.pk)
    if not TrainingRun.objects.filter(project=project, status="queued").exists():
        TrainingRun.objects.create(project=project)
    learning_actions.run_training(project.pk)
    current = ModelVersion.objects.get(project=project, number=1)
    assert served.serving_state(project.pk).version_id == current.pk
    # Whether 8 steps beat the frozen encoder depends on the sentences; the promotion path must not.
    real = finetuning.compare_spans
    seen: dict[str, Any] = {}

    def forced(*args: Any, **kwargs: Any) -> dict[str, Any]:
        seen.update(real(*args, **kwargs))
        return {**seen, "candidate_wins": True}

    monkeypatch.setattr(finetuning, "compare_spans", forced)
    run = finetuning.request_finetune(project, user=alice, reason="a test")
    assert run.method == METHOD
    finetuning.run_finetune(run.pk)
    run.refresh_from_db()
    assert run.status == FinetuneStatus.SUCCEEDED and run.is_promoted, run.error
    assert run.n_train + run.n_heldout == run.n_labels == 40 and run.n_heldout == len(run.heldout_ids) == 8
    assert run.config["method"] == METHOD and run.step == run.total_steps >= 8

    # The comparison: entity figures of both span models on the same held-out sentences.
    comparison = run.comparison
    assert comparison["metric"] == "entity_f1" and comparison["n_heldout"] == 8
    for side in ("current", "candidate"):
        f1 = comparison[side]["entity_f1"]
        assert 0 <= f1["low"] <= f1["value"] <= f1["high"] <= 1
    assert comparison["current"]["entity_f1"]["value"] == seen["current"]["entity_f1"]["value"]

    # The pool re-embedded with the fine-tuned encoder: sentence vectors and token vectors under its own name.
    encoder = learning_actions.project_encoder(project.pk)  # the promoted one
    assert encoder.name == run.encoder != run.base_encoder == current.encoder
    assert sum(EmbeddingChunk.objects.filter(project=project, encoder=run.encoder)
               .values_list("count", flat=True)) == 50
    tokens = span_loop.open_tokens(project.pk, encoder)
    assert len(tokens.example_ids) == 50 and len(tokens.missing(tokens.example_ids)) == 0

    # The candidate version: a span model on the new token vectors, serving and scoring the queue with suggestions.
    candidate = run.candidate_version
    assert candidate is not None and candidate.encoder == run.encoder and candidate.n_labels == 40
    assert ProjectEncoder.objects.get(project=project).finetune_run_id == run.pk
    assert served.serving_state(project.pk).version_id == candidate.pk
    assert span_loop.load_span_model(candidate).tagset.keys == candidate.label_keys
    # Serving predicts spans with the fine-tuned encoder's token vectors (found by name, loaded from its folder).
    from serving.predictions import predict

    outcome = predict(project, texts=["Peter Blackburn flew to Brussels ."], route=False)
    assert outcome.model.version_id == candidate.pk and outcome.model.encoder == run.encoder
    scores = ExampleScore.objects.filter(project=project)
    assert scores.count() == 10 and set(scores.values_list("model_version_number", flat=True)) == {candidate.number}
    card = (Path(settings.FINETUNE_DIR) / run.encoder_path / "README.md").read_text()
    assert "token classification" in card and "entity F1" in card and "promoted" in card

    # The Versions page's region says entity F1.
    panel = login(alice).get(reverse("learning:finetune", args=[project.pk]), HTTP_HX_REQUEST="true").content.decode()
    assert "Held-out entity F1" in panel and "Promoted" in panel and "entity F1" in panel
    assert f"{comparison['candidate']['entity_f1']['value']:.3f}" in panel

    # The next model update fits on the fine-tuned encoder's token vectors, warm-started from the candidate.
    TrainingRun.objects.create(project=project)
    update = learning_actions.run_training(project.pk)
    assert update is not None and update.model_version is not None, update and update.error
    assert update.model_version.encoder == run.encoder and update.timings["warm_start"] == 1.0


@pytest.mark.slow
@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_a_real_worker_fine_tunes_a_span_project_and_a_cancelled_one_leaves_nothing(
        team: Any, alice: Any, login: Callable[[Any], Client], start_worker: Any,  # noqa: F811
        wait_for: Callable[..., None], span_data_dir: None, settings: Any,
        shoot: Callable[..., bool]) -> None:  # noqa: F811
    project = span_project(team, alice)
    add_sentences(project, alice, 80, labelled=70)
    worker = start_worker()

    current = with_model(project, worker, wait_for)
    run = start_finetune(login(alice), project)
    wait_for(lambda: status_of(run) not in ("queued", "running"), timeout=600, process=worker)
    assert run.status == FinetuneStatus.SUCCEEDED, run.error
    comparison = run.comparison
    wins = comparison["candidate"]["entity_f1"]["value"] > comparison["current"]["entity_f1"]["value"]
    assert comparison["candidate_wins"] is wins and run.is_promoted is wins
    assert run.candidate_version is not None and run.candidate_version.encoder == run.encoder != current.encoder
    # The worker announces a winner after the run's row is written: serving promotes it a moment later.
    expected = run.candidate_version.pk if wins else current.pk
    wait_for(lambda: served.serving_state(project.pk).version_id == expected, timeout=60, process=worker)
    serving_now = expected
    # The Versions page compares the two on held-out entity F1 (looked at: var/screenshots/span-finetune-compared.png).
    shoot(project, "span-finetune-compared.png", wait_for_text="entity F1")

    # A second one, cancelled while it fine-tunes: no folder, no vectors of its encoder, nothing serving changed.
    second = start_finetune(login(alice), project)
    wait_for(lambda: FinetuneRun.objects.filter(pk=second.pk, phase="fine-tuning").exists(), timeout=300,
             process=worker)
    assert login(alice).post(reverse("learning:finetune-cancel", args=[project.pk])).status_code == 302
    wait_for(lambda: status_of(second) == "cancelled", timeout=120, process=worker)
    assert not (Path(settings.FINETUNE_DIR) / finetuning.relative_folder(project.pk, second.number)).exists()
    assert served.serving_state(project.pk).version_id == serving_now

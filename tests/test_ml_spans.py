"""Span tagging maths (learning/spans.py), token vectors (Encoder.encode_tokens) and the NER harness.

No database: like tests/test_ml_simulation.py these exercise the plain modules.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from learning import spans as S

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CONLL = DATA / "conll2003"
TAGSET = S.TagSet(["PER", "ORG", "LOC"])


def offsets_of(tokens: list[str]) -> list[tuple[int, int]]:
    out, position = [], 0
    for token in tokens:
        out.append((position, position + len(token)))
        position += len(token) + 1
    return out


# ---- tags -------------------------------------------------------------------------------------
def test_the_tag_set_numbers_tags_as_the_design_says() -> None:
    assert TAGSET.names == ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC"]
    assert TAGSET.begin("ORG") == 3 and TAGSET.inside("ORG") == 4 and len(TAGSET) == 7
    with pytest.raises(ValueError, match="at least one"):
        S.TagSet([])


@st.composite
def token_spans(draw: st.DrawFn) -> tuple[list[tuple[int, int]], list[dict[str, object]]]:
    n = draw(st.integers(0, 30))
    lengths = draw(st.lists(st.integers(1, 8), min_size=n, max_size=n))
    offsets, position = [], 0
    for length in lengths:
        offsets.append((position, position + length))
        position += length + 1
    spans: list[dict[str, object]] = []
    i = 0
    while i < n:
        if draw(st.booleans()):
            j = draw(st.integers(i + 1, min(n, i + 4)))
            label = draw(st.sampled_from(TAGSET.keys))
            spans.append({"start": offsets[i][0], "end": offsets[j - 1][1], "label": label})
            i = j
        else:
            i += 1
    return offsets, spans


@given(token_spans())
@settings(max_examples=200, deadline=None)
def test_spans_and_tag_ids_round_trip(case: tuple[list[tuple[int, int]], list[dict[str, object]]]) -> None:
    offsets, spans = case
    ids = S.tag_ids(offsets, spans, TAGSET)
    assert S.is_valid_iob2(ids)
    assert S.spans_from_tag_ids(offsets, ids, TAGSET) == spans


def test_tag_ids_name_a_bad_label() -> None:
    with pytest.raises(ValueError, match="'DATE' is not in the tag set"):
        S.tag_ids([(0, 3)], [{"start": 0, "end": 3, "label": "DATE"}], TAGSET)


@given(st.lists(st.lists(st.floats(-30, 0), min_size=7, max_size=7), min_size=0, max_size=25),
       st.integers(0, 2**32 - 1))
@settings(max_examples=200, deadline=None)
def test_viterbi_always_emits_valid_iob2_and_finds_the_best_valid_path(rows: list[list[float]], seed: int) -> None:
    logp = np.array(rows, dtype=np.float64).reshape(-1, 7)
    (path,) = S.viterbi([logp], 3)
    assert len(path) == len(rows)
    assert S.is_valid_iob2(path)
    if 0 < len(rows) <= 4:
        # Exhaustive check on short sentences: no valid sequence scores higher.
        import itertools

        best = max((sum(logp[t, s] for t, s in enumerate(seq)), seq)
                   for seq in itertools.product(range(7), repeat=len(rows)) if S.is_valid_iob2(seq))
        assert np.isclose(sum(logp[t, s] for t, s in enumerate(path)), best[0])


def test_viterbi_decodes_many_sentences_of_mixed_lengths_like_one_at_a_time() -> None:
    rng = np.random.default_rng(0)
    batch = [np.log(rng.dirichlet(np.ones(7), size=n)) for n in (3, 0, 7, 3, 12, 1)]
    together = S.viterbi(batch, 3)
    alone = [S.viterbi([b], 3)[0] for b in batch]
    assert all(np.array_equal(a, b) for a, b in zip(together, alone, strict=True))


@given(st.lists(st.lists(st.integers(0, 6), min_size=0, max_size=12), min_size=1, max_size=8),
       st.integers(0, 2**32 - 1))
@settings(max_examples=200, deadline=None)
def test_the_packed_span_pass_finds_each_sentences_spans_and_confidences(sentences: list[list[int]],
                                                                        seed: int) -> None:
    # Any tag ids, stray I-x included, packed end to end: the same spans as token_spans one sentence at a time,
    # and the confidence the definition gives (product of the decoded tags' marginals, times 1 - p(I-x) after).
    rng = np.random.default_rng(seed)
    tags = [np.array(t, dtype=np.int64) for t in sentences]
    marginals = [rng.dirichlet(np.ones(7), size=len(t)).astype(np.float32) for t in tags]
    flat_m, bounds = S.pack(marginals, np.float32)
    flat_t = np.concatenate(tags) if sum(map(len, tags)) else np.zeros(0, np.int64)
    sentence, first, stop, label, confidence = S.flat_span_confidences(flat_m.reshape(-1, 7), flat_t, bounds)
    expected = []
    for i, (m, t) in enumerate(zip(marginals, tags, strict=True)):
        for a, b, name in S.token_spans(t, TAGSET):
            p = float(np.prod(m[np.arange(a, b), t[a:b]], dtype=np.float64))
            if b < len(t):
                p *= 1.0 - float(m[b, TAGSET.inside(name)])
            expected.append((i, a, b, name, p))
    got = [(i, a, b, TAGSET.keys[x], c) for i, a, b, x, c in
           zip(sentence.tolist(), first.tolist(), stop.tolist(), label.tolist(), confidence.tolist(), strict=True)]
    assert [g[:4] for g in got] == [e[:4] for e in expected]
    assert np.allclose([g[4] for g in got], [e[4] for e in expected], rtol=1e-12, atol=0)


def test_predict_decodes_many_sentences_like_one_at_a_time() -> None:
    # The rescore decodes whole chunks at once; each sentence must come out as when it is decoded alone.
    rng = np.random.default_rng(1)
    X = rng.normal(size=(200, 8)).astype(np.float32)
    y = rng.integers(0, 7, size=200)
    y[:3] = (0, 1, 2)
    model = S.SpanModel.fit([X], [y], TAGSET)
    vectors = [rng.normal(size=(n, 8)).astype(np.float32) for n in (5, 1, 17, 5, 40, 2, 9)]
    offsets = [offsets_of(["tok"] * len(v)) for v in vectors]
    together = model.predict(vectors, offsets)
    for v, o, both in zip(vectors, offsets, together, strict=True):
        (alone,) = model.predict([v], [o])
        assert np.array_equal(alone.tags, both.tags) and alone.spans == both.spans
    assert sum(len(p.spans) for p in together) > 3


# ---- metrics against seqeval ----------------------------------------------------------------
TAGS = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC"]


@given(st.lists(st.lists(st.tuples(st.sampled_from(TAGS), st.sampled_from(TAGS)), min_size=1, max_size=15),
                min_size=1, max_size=8))
@settings(max_examples=300, deadline=None)
@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # seqeval averages over no labels on all-O cases
def test_entity_scores_equal_seqeval_strict_iob2(sentences: list[list[tuple[str, str]]]) -> None:
    from seqeval.metrics import classification_report, f1_score
    from seqeval.scheme import IOB2

    gold = [[g for g, _ in s] for s in sentences]
    pred = [[p for _, p in s] for s in sentences]
    ours_g = [S.entities_from_tags(t) for t in gold]
    ours_p = [S.entities_from_tags(t) for t in pred]
    assert S.entity_f1(ours_g, ours_p) == pytest.approx(
        f1_score(gold, pred, mode="strict", scheme=IOB2, zero_division=0), abs=1e-12)
    report = S.entity_report(ours_g, ours_p, n_boot=0)
    theirs = classification_report(gold, pred, mode="strict", scheme=IOB2, output_dict=True, zero_division=0)
    for row in report["per_label"]:
        if row["support"] or row["predicted"]:
            ref = theirs.get(row["label"], {"precision": 0.0, "recall": 0.0, "f1-score": 0.0})
            assert row["precision"] == pytest.approx(ref["precision"], abs=1e-12)
            assert row["recall"] == pytest.approx(ref["recall"], abs=1e-12)
            assert row["f1"] == pytest.approx(ref["f1-score"], abs=1e-12)


def test_the_report_gives_intervals_around_the_value_and_an_error_breakdown() -> None:
    gold = [{("PER", 0, 2), ("LOC", 4, 5)}, {("ORG", 1, 3)}, {("PER", 0, 1)}, set()] * 10
    pred = [{("PER", 0, 2), ("ORG", 4, 5)}, {("ORG", 1, 2)}, set(), {("LOC", 2, 3)}] * 10
    report = S.entity_report(gold, pred, rng=np.random.default_rng(0))
    f1 = report["f1"]
    assert f1["low"] <= f1["value"] <= f1["high"] and f1["low"] < f1["high"]
    assert report["errors"] == {"correct": 10, "wrong_type": 10, "wrong_boundary": 10, "wrong_boundary_and_type": 0,
                                "missed": 10, "spurious": 10}
    per = {row["label"]: row for row in report["per_label"]}
    assert per["PER"]["support"] == 20 and per["PER"]["precision"] == 1.0 and per["PER"]["recall"] == 0.5


def test_aggregations() -> None:
    scores = np.array([1.0, 3.0, 2.0, 4.0])
    bounds = np.array([0, 2, 2, 4])
    assert list(S.aggregate(scores, bounds, "sum")) == [4.0, 0.0, 6.0]
    assert list(S.aggregate(scores, bounds, "mean")) == [2.0, 0.0, 3.0]
    assert list(S.aggregate(scores, bounds, "max")) == [3.0, 0.0, 4.0]
    assert np.allclose(S.aggregate(scores, bounds, "sqrt"), [4 / np.sqrt(2), 0.0, 6 / np.sqrt(2)])


# ---- the model on real sentences --------------------------------------------------------------
def conll_rows(n: int, split: str = "train") -> list[dict[str, list[str]]]:
    rows = []
    with open(CONLL / f"{split}.jsonl", encoding="utf-8") as handle:
        for line in handle:
            rows.append(json.loads(line))
            if len(rows) == n:
                break
    return rows


@pytest.fixture(scope="module")
def encoder():  # type: ignore[no-untyped-def]
    from learning.encoder import get_encoder

    return get_encoder(backend="torch", threads=1)


def test_token_vectors_align_with_our_tokens(encoder) -> None:  # type: ignore[no-untyped-def]
    text = "Mr. Blackburn's 1996-08-22 naïve réponse ,and  spaces"
    offsets = [(0, 3), (4, 13), (13, 15), (16, 26), (27, 32), (33, 40), (41, 42), (42, 45), (47, 53)]
    first, mean = (encoder.encode_tokens([text], [offsets], pooling=p)[0] for p in ("first", "mean"))
    assert first.shape == mean.shape == (len(offsets), encoder.dim) and first.dtype == np.float32
    assert np.isfinite(first).all() and np.abs(first).sum(axis=1).min() > 0
    # "Mr." is one word of two sub-words (mr, .): mean and first differ there.
    assert not np.allclose(first[0], mean[0])
    # A text longer than the model's window is encoded whole, in windows, nothing truncated.
    long_tokens = ["court"] * 700
    (vectors,) = encoder.encode_tokens([" ".join(long_tokens)], [offsets_of(long_tokens)])
    assert vectors.shape == (700, encoder.dim) and np.isfinite(vectors).all()
    assert encoder.encode_tokens(["", "x"], [[], [(0, 1)]])[0].shape == (0, encoder.dim)


def test_the_model_learns_a_separable_mapping_on_real_sentences(encoder) -> None:  # type: ignore[no-untyped-def]
    # Entities: runs of tokens with a digit (NUM) and the words "Monday".."Sunday" (DAY), on real news text.
    days = {"Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"}
    rows = conll_rows(500)
    tagset = S.TagSet(["NUM", "DAY"])
    texts, offsets, ids = [], [], []
    for row in rows:
        tokens = row["tokens"]
        kinds = ["NUM" if any(c.isdigit() for c in t) else "DAY" if t in days else None for t in tokens]
        tags = []
        for i, kind in enumerate(kinds):
            tags.append(0 if kind is None else (tagset.inside(kind) if i and kinds[i - 1] == kind
                                                 else tagset.begin(kind)))
        texts.append(" ".join(tokens))
        offsets.append(offsets_of(tokens))
        ids.append(np.array(tags))
    vectors = encoder.encode_tokens(texts, offsets)
    model = S.SpanModel.fit(vectors[:350], ids[:350], tagset).calibrate(vectors[:350], ids[:350])
    predictions = model.predict(vectors[350:], offsets[350:])
    gold = [S.entities_from_ids(t, tagset) for t in ids[350:]]
    pred = [S.entities_from_ids(p.tags, tagset) for p in predictions]
    assert S.entity_f1(gold, pred) > 0.7  # all-O scores 0; 0.77 with mean pooling, 0.8+ with first
    assert all(S.is_valid_iob2(p.tags) for p in predictions)
    spans = [s for p in predictions for s in p.spans]
    assert spans and all(0.0 <= s["confidence"] <= 1.0 for s in spans)
    # Round trip through storage, predictions unchanged.
    again = S.SpanModel.from_npz(model.to_npz())
    assert again.tagset == tagset
    assert [p.spans for p in again.predict(vectors[350:], offsets[350:])] == [p.spans for p in predictions]
    # Acquisition: one score per example, and the diverse batch picks distinct examples.
    flat, bounds = S.pack(vectors[350:])
    _, scores = model.example_scores(flat, bounds, rng=np.random.default_rng(0))
    assert scores.shape == (150,) and (scores >= 0).all()
    picked = S.select_examples(scores, S.sentence_vectors(flat, bounds), 10, rng=np.random.default_rng(0))
    assert len(set(picked.tolist())) == 10


def test_the_model_refuses_examples_without_any_entity_clearly() -> None:
    vectors = [np.ones((3, 4), np.float32), np.zeros((2, 4), np.float32)]
    with pytest.raises(S.SpanModelError, match="none of the 2 labelled examples has an entity"):
        S.SpanModel.fit(vectors, [np.zeros(3, int), np.zeros(2, int)], TAGSET)


# ---- the NER harness --------------------------------------------------------------------------
def slice_file(tmp_path: Path, split: str, n: int) -> Path:
    path = tmp_path / f"{split}.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in conll_rows(n, split)))
    return path


def test_the_ner_harness_keeps_the_classification_contract(tmp_path: Path) -> None:
    from django.core.management import call_command

    out = tmp_path / "ner.json"
    call_command("simulate", task="ner", train=str(slice_file(tmp_path, "train", 80)),
                 test=str(slice_file(tmp_path, "test", 30)), budget=30, seed_size=10, batch_size=10, repeats=2,
                 out=str(out), plot=str(tmp_path / "curve.png"), cache_dir=str(tmp_path / "cache"))
    result = json.loads(out.read_text())
    assert set(result) == {"strategies", "config"}
    assert result["config"]["task"] == "ner" and result["config"]["label_names"] == ["LOC", "MISC", "ORG", "PER"]
    assert set(result["strategies"]) == {"random", "bald_density_diversity"}
    for entry in result["strategies"].values():
        assert [run["seed"] for run in entry["runs"]] == [0, 1]
        points = entry["runs"][0]["points"]
        assert [p["n_labels"] for p in points] == [10, 20, 30]
        assert {"n_labels", "n_tokens", "accuracy", "macro_f1", "entity_f1", "ece", "update_seconds",
                "report_seconds"} <= set(points[0])
        assert points[0]["n_tokens"] < points[-1]["n_tokens"]
        assert all(0.0 <= p["entity_f1"] <= 1.0 for p in points)
        assert {"auc_macro_f1", "auc_entity_f1", "labels_to_reach_random_final", "ratio_to_random",
                "tokens_to_reach_random_final", "token_ratio_to_random"} <= set(entry["summary"])
    random = result["strategies"]["random"]["summary"]
    assert random["ratio_to_random"] == 1.0 and random["target_entity_f1"] > 0.0
    assert (tmp_path / "curve.png").stat().st_size > 1000
    # The token vectors are cached per (encoder, file).
    cached = list((tmp_path / "cache").rglob("*.npz"))
    assert len(cached) == 2


def test_the_ner_harness_says_which_row_is_bad(tmp_path: Path) -> None:
    from django.core.management import call_command
    from django.core.management.base import CommandError

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"tokens": ["a", "b"], "tags": ["O", "B-PER"]}\n{"tokens": ["a", "b"], "tags": ["O"]}\n')
    with pytest.raises(CommandError, match=r"bad.jsonl:2: 2 tokens but 1 tags"):
        call_command("simulate", task="ner", train=str(bad), test=str(bad), out=str(tmp_path / "x.json"))
    assert not (tmp_path / "x.json").exists()
    # Fine-tuning during a span replay is not offered: refused, not ignored.
    with pytest.raises(CommandError, match=r"--finetune-at replays classification only"):
        call_command("simulate", task="ner", train=str(bad), test=str(bad), out=str(tmp_path / "x.json"),
                     finetune_at="500")
    assert not (tmp_path / "x.json").exists()


def test_the_span_replay_updates_as_the_app_does(monkeypatch: pytest.MonkeyPatch, encoder) -> None:  # type: ignore[no-untyped-def]
    # Warm refits from the previous model after the first, one calibration per report, one BLAS thread.
    from threadpoolctl import threadpool_info

    from learning import simulation

    rows = conll_rows(60)
    tagset = S.TagSet(["LOC", "MISC", "ORG", "PER"])
    offsets = [offsets_of(r["tokens"]) for r in rows]
    vectors = encoder.encode_tokens([" ".join(r["tokens"]) for r in rows], offsets)
    tags = [np.array([tagset.names.index(t) for t in r["tags"]]) for r in rows]
    warm_starts: list[bool] = []
    threads: list[int] = []
    calibrations: list[int] = []
    fit, calibrate = S.SpanModel.fit.__func__, S.SpanModel.calibrate  # type: ignore[attr-defined]

    def spy_fit(cls, vecs, targets, ts, warm=None, **kwargs):  # type: ignore[no-untyped-def]
        if kwargs.get("prior_precision") is None:  # calibration folds fix it; the update does not
            warm_starts.append(warm is not None)
            threads.extend(p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas")
        return fit(cls, vecs, targets, ts, warm, **kwargs)

    def spy_calibrate(self, vecs, targets, **kwargs):  # type: ignore[no-untyped-def]
        calibrations.append(len(vecs))
        return calibrate(self, vecs, targets, **kwargs)

    monkeypatch.setattr(S.SpanModel, "fit", classmethod(spy_fit))
    monkeypatch.setattr(S.SpanModel, "calibrate", spy_calibrate)
    result = simulation.simulate_spans(train_vectors=vectors[:45], train_tags=tags[:45], test_vectors=vectors[45:],
                                       test_tags=tags[45:], label_names=tagset.keys, strategies=["bald"],
                                       seed_size=15, batch_size=15, budget=45, repeats=1)
    assert [p["n_labels"] for p in result["strategies"]["bald"]["runs"][0]["points"]] == [15, 30, 45]
    assert warm_starts == [False, True, True]
    assert calibrations == [15, 30, 45]
    assert threads and set(threads) == {1}


# ---- the token store ----------------------------------------------------------------------------
@given(st.lists(st.lists(st.integers(0, 6), min_size=1, max_size=6), min_size=1, max_size=4), st.integers(0, 2**32 - 1))
@settings(max_examples=40, deadline=None)
def test_the_token_store_reads_back_what_was_written_in_any_order(chunks: list[list[int]], seed: int) -> None:
    # Chunks of examples with 0-6 tokens; an id written again later (re-encoded) reads from its newest chunk.
    import tempfile

    from learning import token_store

    rng = np.random.default_rng(seed)
    written: dict[int, np.ndarray] = {}
    with tempfile.TemporaryDirectory() as root:
        store = token_store.TokenStore(root, 1, "enc")
        for lengths in chunks:
            ids = rng.choice(12, size=len(lengths), replace=False) + 1
            vectors = [rng.normal(size=(n, 5)).astype(np.float16) for n in lengths]
            store.append(ids, vectors, dim=5)
            written.update({int(i): v for i, v in zip(ids, vectors, strict=True)})
        order = rng.permutation(sorted(written))
        got = token_store.TokenStore(root, 1, "enc").get(order)
        assert [g.shape for g in got] == [(len(written[int(i)]), 5) for i in order]
        assert all(np.array_equal(g, written[int(i)].astype(np.float32)) for g, i in zip(got, order, strict=True))
        flat, bounds = store.get_flat(order[:0])
        assert flat.shape[0] == 0 and bounds.tolist() == [0]
        # A pass over the pool in slices of about 4 tokens (one reused buffer): every id once, in order, each
        # slice's vectors right when it is handed out.
        seen = []
        for part, flat, bounds in token_store.TokenStore(root, 1, "enc").iter_chunks(order, tokens_per_chunk=4):
            assert len(bounds) == len(part) + 1 and flat.shape == (bounds[-1], 5)
            for k, i in enumerate(part.tolist()):
                assert np.array_equal(flat[bounds[k]:bounds[k + 1]], written[i].astype(np.float32))
            seen += part.tolist()
        assert seen == order.tolist()
        with pytest.raises(KeyError):
            store.get([99])

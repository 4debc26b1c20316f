"""The span report after a fine-tune: measured on the sentences its encoder never saw (learning.span_quality)."""

from __future__ import annotations

import numpy as np

from learning import quality, span_quality
from learning import spans as spanml


def sentences(n: int, *, seen: int, seed: int = 0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Six-token sentences with one two-token PER entity; its tokens carry a weak signal, except in the first
    ``seen`` sentences, whose tokens sit on their tag's centre (as a fine-tuned encoder puts the tokens it was
    trained on)."""
    rng = np.random.default_rng(seed)
    d = 8
    centre = rng.standard_normal((3, d))
    vectors, targets = [], []
    for i in range(n):
        tags = np.zeros(6, dtype=np.int64)
        start = int(rng.integers(0, 5))
        tags[start], tags[start + 1] = 1, 2
        noise = 0.05 if i < seen else 1.6
        vectors.append((centre[tags] + noise * rng.standard_normal((6, d))).astype(np.float32))
        targets.append(tags)
    return vectors, targets


def test_the_span_report_measures_only_the_sentences_the_encoder_never_saw() -> None:
    every, every_target = sentences(920, seen=160)
    vectors, targets = every[:320], every_target[:320]
    fresh, fresh_targets = every[320:], every_target[320:]  # new text: noisy like the unseen ones
    tagset = spanml.TagSet(["PER"])
    model = spanml.SpanModel.fit(vectors, targets, tagset)
    unseen = np.arange(320) >= 160
    flattering = span_quality.evaluate(vectors, targets, tagset, label_names=["Person"], seed=1, model=model)
    honest = span_quality.evaluate(vectors, targets, tagset, label_names=["Person"], seed=1, model=model,
                                   unseen=unseen)
    assert flattering["n_eval"] == 320 and "unseen_only" not in flattering
    assert honest["n_eval"] == 160 and honest["unseen_only"] is True and honest["trained_on"] == 0
    assert honest["n_gold_entities"] == 160
    # On new text the model scores about what the unseen ones say, well under the rest.
    out = model.predict(fresh)
    gold = [spanml.entities_from_ids(t, tagset) for t in fresh_targets]
    predicted = [spanml.entities_from_ids(o.tags, tagset) for o in out]
    truth = spanml.entity_report(gold, predicted, ["PER"], rng=np.random.default_rng(0))["f1"]["value"]
    assert flattering["entity_f1"]["value"] > truth + 0.1
    assert abs(honest["entity_f1"]["value"] - truth) < abs(flattering["entity_f1"]["value"] - truth)


def test_with_too_few_unseen_sentences_the_span_report_uses_all_and_counts_the_seen_ones() -> None:
    vectors, targets = sentences(60, seen=60 - quality.MIN_UNSEEN + 1)
    tagset = spanml.TagSet(["PER"])
    model = spanml.SpanModel.fit(vectors, targets, tagset)
    report = span_quality.evaluate(vectors, targets, tagset, label_names=["Person"], seed=2, model=model,
                                   unseen=np.arange(60) >= 60 - quality.MIN_UNSEEN + 1)
    assert report["n_eval"] == 60 and report["unseen_only"] is False
    assert report["trained_on"] == 60 - quality.MIN_UNSEEN + 1

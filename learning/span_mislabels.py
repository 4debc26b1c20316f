"""Likely mislabels of span (NER) projects: given spans the model confidently reads otherwise, and confident
entities nobody tagged.

Plain module (numpy only plus learning.spans), like ``learning.mislabels`` for classification, so the review
refresh (``learning.review_candidates``) and the tests share one implementation.

Out of fold
-----------
Each labelled sentence is judged by a span model that never saw it: ``FOLDS`` folds over sentences, each fold's
``SpanModel`` fitted on the other sentences at the report model's prior precision (warm-started from it, so it
also carries its calibration), giving every sentence its token tag marginals. Those are decoded with the
constrained Viterbi of ``learning.spans``.

Three problems
--------------
With ``M`` a sentence's (tokens x tags) marginals, the probability that tokens [a, b) form exactly one entity of
type X is ``P(a, b, X) = M[a, B-X] * prod M[a+1:b, I-X] * (1 - M[b, I-X])`` (the last factor: the entity ends
there), the definition of a decoded span's confidence in ``learning.spans.span_confidences``.

- ``wrong_type``: a given span [a, b) of type L whose boundaries the model finds with another type X:
  ``P(a, b, X)`` is the largest of the other types', above ``P(a, b, L)`` and at or above X's threshold.
- ``missed``: a decoded entity (a, b, X) overlapping no given span, its confidence at or above X's threshold.
- ``not_entity``: a given span whose tokens the model puts all outside any entity:
  ``prod M[a:b, O]`` at or above the no-entity threshold raised to the span's length.

Thresholds (confident learning, per type, so a hard type is not flooded): the threshold of type X is the
average confidence of the decoded spans of type X that match a given span exactly (where the model agrees);
a type the model never agrees on falls back to the average ``P(a, b, X)`` over the given spans of X (the
confident-learning self-confidence), and a type nobody tagged to 1. The no-entity threshold is the average
``M[t, O]`` over the tokens given O that the model also decodes O.

A sentence's score is its strongest problem's confidence; its issues are listed strongest first.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from learning import spans as spanml

FOLDS = 5
PROBLEMS = ("wrong_type", "missed", "not_entity")
# Ranking keys of a sentence's issues: "confidence" (the model's probability of its own reading) or "margin" (that
# minus its probability of the given reading: the given type's exact-span probability for a wrong type or a span
# that is no entity, the tokens' product of O for a missed entity). Measured on 1,000 CoNLL-2003 sentences with 8%
# of those with an entity given one flipped type (k = 65), MiniLM token vectors: precision@k 0.48 (margin) against
# 0.46 (confidence), recall of the flagged set 0.51 either way; with the tests' word-hash vectors on 400 sentences
# 0.17 against 0.12.
SCORES = ("confidence", "margin")
DEFAULT_SCORE = "margin"


@dataclass
class OutOfFold:
    marginals: list[np.ndarray]  # per sentence, (n_tokens, n_tags) float32
    fitted: np.ndarray  # (N,) bool: False where the sentence's fold could not be fitted (no entity left in it)


@dataclass(frozen=True)
class SpanIssue:
    """One span in question: token range [first, stop), given and model labels (keys; None for "no entity")."""

    first: int
    stop: int
    label: str | None  # the given type; None for a missed entity
    model_label: str | None  # the model's type; None when the model says "no entity"
    confidence: float  # the model's probability of its reading
    threshold: float  # the threshold it cleared
    problem: str  # one of PROBLEMS
    score: float


@dataclass
class SentenceFinding:
    index: int  # row of the inputs
    score: float
    issues: list[SpanIssue] = field(default_factory=list)


def out_of_fold_marginals(vectors: Sequence[np.ndarray], targets: Sequence[np.ndarray], tagset: spanml.TagSet, *,
                          model: spanml.SpanModel, folds: int = FOLDS, seed: int = 0) -> OutOfFold:
    """Each sentence's tag marginals from a model fitted without its fold (folds over sentences, at ``model``'s
    prior precision, warm-started from it). A fold whose training part has no entity leaves its sentences
    unfitted (uniform marginals, ``fitted`` False)."""
    n = len(vectors)
    rng = np.random.default_rng(seed)
    assignment = rng.permutation(n) % max(1, min(folds, n))
    out = [np.full((len(v), tagset.size), 1.0 / tagset.size, dtype=np.float32) for v in vectors]
    fitted = np.zeros(n, dtype=bool)
    for fold in range(int(assignment.max()) + 1 if n else 0):
        held = np.flatnonzero(assignment == fold).tolist()
        train = np.flatnonzero(assignment != fold).tolist()
        if not len(train):
            continue
        try:
            part = spanml.SpanModel.fit([vectors[i] for i in train], [targets[i] for i in train], tagset, warm=model,
                                        prior_precision=model.posterior.prior_precision)
        except spanml.bayes.ModelFitError:
            continue
        for i, m in zip(held, part.marginals([vectors[i] for i in held]), strict=True):
            out[i] = m
            fitted[i] = True
    return OutOfFold(out, fitted)


def exact_span_proba(marginals: np.ndarray, first: int, stop: int, n_labels: int) -> np.ndarray:
    """(n_labels,) probability that tokens [first, stop) form exactly one entity of each type."""
    m = np.asarray(marginals, dtype=np.float64)
    begins = 1 + 2 * np.arange(n_labels)
    insides = begins + 1
    p = m[first, begins].copy()
    if stop - first > 1:
        p *= np.prod(m[first + 1:stop][:, insides], axis=0)
    if stop < len(m):
        p *= 1.0 - m[stop, insides]
    return p


@dataclass
class Thresholds:
    per_type: np.ndarray  # (n_labels,)
    no_entity: float  # per token
    agreed: np.ndarray  # (n_labels,) how many decoded spans matched a given span exactly


def thresholds(marginals: Sequence[np.ndarray], targets: Sequence[np.ndarray], decoded: Sequence[np.ndarray],
               tagset: spanml.TagSet, use: np.ndarray | None = None) -> Thresholds:
    """Per-type thresholds (see the module docstring) over the sentences ``use`` marks (all by default)."""
    k = len(tagset.keys)
    agree_sum, agree_n = np.zeros(k), np.zeros(k)
    self_sum, self_n = np.zeros(k), np.zeros(k)
    o_sum = o_n = 0.0
    for i, (m, given, tags) in enumerate(zip(marginals, targets, decoded, strict=True)):
        if use is not None and not use[i]:
            continue
        predicted = {(a, b): (label, c) for a, b, label, c in spanml.span_confidences(m, tags, tagset)}
        for a, b, label in spanml.token_spans(given, tagset):
            x = tagset.index[label]
            found = predicted.get((a, b))
            if found is not None and found[0] == label:
                agree_sum[x] += found[1]
                agree_n[x] += 1
            self_sum[x] += exact_span_proba(m, a, b, k)[x]
            self_n[x] += 1
        outside = (np.asarray(given) == 0) & (np.asarray(tags) == 0)
        if outside.any():
            o_sum += float(np.asarray(m)[outside, 0].sum())
            o_n += int(outside.sum())
    per_type = np.where(agree_n > 0, agree_sum / np.maximum(agree_n, 1),
                        np.where(self_n > 0, self_sum / np.maximum(self_n, 1), 1.0))
    return Thresholds(per_type, o_sum / o_n if o_n else 1.0, agree_n)


def find_span_issues(marginals: Sequence[np.ndarray], targets: Sequence[np.ndarray], tagset: spanml.TagSet, *,
                     use: np.ndarray | None = None, problems: Sequence[str] = PROBLEMS,
                     score: str = DEFAULT_SCORE) -> tuple[list[SentenceFinding], Thresholds]:
    """Sentences with at least one span in question, strongest first, and the thresholds used.

    ``marginals``: each sentence's out-of-fold tag marginals; ``targets``: its given IOB2 tag ids; ``use``: the
    sentences to judge (those with out-of-fold marginals)."""
    if score not in SCORES:
        raise ValueError(f"score must be one of {SCORES}, got {score!r}")
    unknown = set(problems) - set(PROBLEMS)
    if unknown:
        raise ValueError(f"unknown problems {sorted(unknown)}; use {PROBLEMS}")
    if len(marginals) != len(targets):
        raise ValueError(f"{len(marginals)} marginal arrays but {len(targets)} tag arrays")
    for i, (m, given) in enumerate(zip(marginals, targets, strict=True)):
        if len(m) != len(given):
            raise ValueError(f"sentence {i}: {len(m)} tokens of marginals but {len(given)} tags")
    k = len(tagset.keys)
    decoded = spanml.viterbi([np.log(np.clip(m, 1e-12, 1.0)) for m in marginals], k)
    limits = thresholds(marginals, targets, decoded, tagset, use)
    found: list[SentenceFinding] = []
    for i, (m, given, tags) in enumerate(zip(marginals, targets, decoded, strict=True)):
        if use is not None and not use[i]:
            continue
        m = np.asarray(m, dtype=np.float64)
        given = np.asarray(given)
        issues: list[SpanIssue] = []
        for a, b, label in spanml.token_spans(given, tagset):
            x = tagset.index[label]
            p = exact_span_proba(m, a, b, k)
            outside = float(np.prod(m[a:b, 0]))
            if "wrong_type" in problems and k > 1:
                others = p.copy()
                others[x] = -1.0
                y = int(others.argmax())
                if p[y] > p[x] and p[y] >= limits.per_type[y]:
                    value = float(p[y]) if score == "confidence" else float(p[y] - p[x])
                    issues.append(SpanIssue(a, b, label, tagset.keys[y], float(p[y]), float(limits.per_type[y]),
                                            "wrong_type", value))
                    continue
            if "not_entity" in problems:
                bar = limits.no_entity ** (b - a)
                if outside >= bar and outside > float(p.max()):
                    value = outside if score == "confidence" else outside - float(p[x])
                    issues.append(SpanIssue(a, b, label, None, outside, bar, "not_entity", value))
        if "missed" in problems:
            for a, b, label, c in spanml.span_confidences(m, tags, tagset):
                if (given[a:b] != 0).any():
                    continue
                x = tagset.index[label]
                none = float(np.prod(m[a:b, 0]))
                # Like the other two problems: the model's reading must beat the given one (no entity here).
                if c >= limits.per_type[x] and c > none:
                    value = c if score == "confidence" else c - none
                    issues.append(SpanIssue(a, b, None, label, float(c), float(limits.per_type[x]), "missed",
                                            float(value)))
        if issues:
            issues.sort(key=lambda s: -s.score)
            found.append(SentenceFinding(i, issues[0].score, issues))
    found.sort(key=lambda f: -f.score)
    return found, limits


def _quote(text: str) -> str:
    return f"“{text if len(text) <= 40 else text[:39] + '…'}”"


def describe(issue: SpanIssue, words: str, names: dict[str, str]) -> str:
    """One issue in words: "“Acme Corp” tagged PER, the model says ORG 0.94 (ORG spans it agrees on average 0.81)"."""
    if issue.problem == "wrong_type":
        assert issue.label is not None and issue.model_label is not None
        model = names.get(issue.model_label, issue.model_label)
        return (f"{_quote(words)} tagged {names.get(issue.label, issue.label)}, the model says {model} "
                f"{issue.confidence:.2f} ({model} spans it agrees on average {issue.threshold:.2f})")
    if issue.problem == "missed":
        assert issue.model_label is not None
        model = names.get(issue.model_label, issue.model_label)
        return (f"{_quote(words)} not tagged, the model says {model} {issue.confidence:.2f} "
                f"({model} spans it agrees on average {issue.threshold:.2f})")
    assert issue.label is not None
    return (f"{_quote(words)} tagged {names.get(issue.label, issue.label)}, the model says no entity "
            f"{issue.confidence:.2f} (threshold {issue.threshold:.2f})")


def char_spans(finding: SentenceFinding, offsets: Sequence[Sequence[int]]) -> list[dict[str, Any]]:
    """The finding's spans in ``ReviewCandidate.spans``' shape: char offsets, given and model label, confidence,
    problem (strongest first)."""
    return [{"start": int(offsets[s.first][0]), "end": int(offsets[s.stop - 1][1]), "label": s.label,
             "model_label": s.model_label, "confidence": round(s.confidence, 4), "problem": s.problem}
            for s in finding.issues]


def reason(finding: SentenceFinding, text: str, offsets: Sequence[Sequence[int]], names: dict[str, str]) -> str:
    parts = [describe(s, text[int(offsets[s.first][0]):int(offsets[s.stop - 1][1])], names) for s in finding.issues]
    return "Out of fold (models that never saw this sentence): " + "; ".join(parts)

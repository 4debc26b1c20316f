"""Span tagging (NER) on frozen token vectors: BIO tags, a Bayesian last layer, constrained decoding,
active learning and entity-level metrics.

Plain module (numpy/scipy, no Django), like learning/bayes.py, so the app's jobs, the harness
(learning/simulation.py) and the benchmarks run the same code.

Model
-----
Each word token's vector (``Encoder.encode_tokens``: the encoder's last hidden state at the token)
goes through the same Bayesian last layer as classification (``bayes.fit``: softmax regression,
Kronecker-factored Laplace posterior, evidence-chosen prior precision, warm refits), over the
1 + 2K BIO tags of K entity labels. The posterior's probit predictive gives each token's tag
marginals; decoding is a Viterbi search over those marginals restricted to valid IOB2 sequences
(I-x only after B-x or I-x), so a prediction is always a set of well-formed, non-overlapping
spans. Calibration (temperature and variance scale, learning/calibration.py) is fitted on
out-of-fold token logits with folds drawn by sentence, so a sentence's tokens never inform
their own held-out predictions.

A span's confidence is the product of its tokens' marginal probabilities of the decoded tags
(B-x, then I-x ...) times the probability that the token after it does not continue it
(1 - p(I-x)): the probability of exactly that span under independent token marginals.

Active learning
---------------
Per-token BALD (mutual information between a token's tag and the weights) from the posterior's
logit moments and antithetic samples (``acquisition.score_pool``), aggregated per example (the
acquisition unit; see AGGREGATIONS and DEFAULT_AGGREGATION), then, as the classification
default: weighted by information density and picked as a score-weighted diverse batch on
sentence vectors (the mean of the example's token vectors), with a k-means diverse seed.

Metrics
-------
Entity precision / recall / F1 with seqeval's strict IOB2 definition (an entity is correct
only if its type and both boundaries match; tests/test_ml_spans.py checks equality with
seqeval), overall (micro) and per label, bootstrap intervals over sentences, and an error
breakdown.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from learning import acquisition, bayes
from learning.calibration import fit_calibration

FORMAT_VERSION = 1


class SpanModelError(bayes.ModelFitError):
    """The labelled data cannot give a span model (no entity labelled, bad tag ids, ...)."""


# ---- tag set ----------------------------------------------------------------------------------
class TagSet:
    """IOB2 tags of entity label keys: id 0 = "O", B-keys[i] = 1 + 2i, I-keys[i] = 2 + 2i."""

    def __init__(self, keys: Sequence[str]) -> None:
        keys = [str(k) for k in keys]
        if not keys:
            raise ValueError("a span tag set needs at least one entity label")
        if len(set(keys)) != len(keys):
            raise ValueError(f"duplicate entity labels in {keys}")
        self.keys: list[str] = keys
        self.index = {k: i for i, k in enumerate(keys)}

    def __len__(self) -> int:
        return 1 + 2 * len(self.keys)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TagSet) and other.keys == self.keys

    def __repr__(self) -> str:
        return f"TagSet({self.keys!r})"

    @property
    def size(self) -> int:
        return len(self)

    @property
    def names(self) -> list[str]:
        """Tag strings by id: ["O", "B-k0", "I-k0", "B-k1", ...]."""
        out = ["O"]
        for k in self.keys:
            out += [f"B-{k}", f"I-{k}"]
        return out

    def begin(self, key: str) -> int:
        return 1 + 2 * self.index[key]

    def inside(self, key: str) -> int:
        return 2 + 2 * self.index[key]

    def label_of(self, tag_id: int) -> str | None:
        return None if tag_id == 0 else self.keys[(tag_id - 1) // 2]


def tag_ids(offsets: Sequence[Sequence[int]], spans: Iterable[dict[str, Any]], tagset: TagSet) -> np.ndarray:
    """IOB2 tag ids (n_tokens,) int64 of char ``spans`` ({"start", "end", "label"}) over tokens ``offsets``.

    A token belongs to a span when their character ranges overlap (spans are on token boundaries
    in the app; this keeps a stray off-by-one from dropping a token). Raises ValueError on an
    unknown label or a span that covers no token; overlapping spans are the caller's error
    (``projects.spanformats.check_spans``), the later one wins here.
    """
    n = len(offsets)
    ids = np.zeros(n, dtype=np.int64)
    if n == 0:
        return ids
    arr = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    for span in spans:
        label = str(span["label"])
        if label not in tagset.index:
            raise ValueError(f"span label {label!r} is not in the tag set {tagset.keys}")
        start, end = int(span["start"]), int(span["end"])
        covered = np.flatnonzero((arr[:, 0] < end) & (arr[:, 1] > start))
        if len(covered) == 0:
            raise ValueError(f"span [{start}, {end}) {label!r} covers no token")
        ids[covered[0]] = tagset.begin(label)
        ids[covered[1:]] = tagset.inside(label)
    return ids


def spans_from_tag_ids(
    offsets: Sequence[Sequence[int]], ids: Sequence[int] | np.ndarray, tagset: TagSet
) -> list[dict[str, Any]]:
    """Char spans [{"start", "end", "label"}] of IOB2 tag ids. An I-x that does not continue an x
    entity starts one (Viterbi output never has one; this only makes the function total)."""
    return [{"start": int(offsets[a][0]), "end": int(offsets[b - 1][1]), "label": label}
            for a, b, label in token_spans(ids, tagset)]


def token_spans(ids: Sequence[int] | np.ndarray, tagset: TagSet) -> list[tuple[int, int, str]]:
    """(first token, stop token, label) of each entity in tag ids (lenient for a stray I-x, see above)."""
    out: list[tuple[int, int, str]] = []
    open_label: str | None = None
    open_start = 0
    for i, t in enumerate([int(t) for t in ids]):
        label = tagset.label_of(t)
        continues = t != 0 and t % 2 == 0 and label == open_label
        if open_label is not None and not continues:
            out.append((open_start, i, open_label))
            open_label = None
        if t != 0 and not continues:
            open_label, open_start = label, i
    if open_label is not None:
        out.append((open_start, len(ids), open_label))
    return out


# ---- constrained decoding ---------------------------------------------------------------------
def viterbi(log_probs: Sequence[np.ndarray], n_labels: int) -> list[np.ndarray]:
    """Most probable valid IOB2 tag sequence of each sentence given per-token tag log-probabilities.

    ``log_probs``: one (n_tokens, 1 + 2 * n_labels) array per sentence. A sequence is valid when
    every I-x follows B-x or I-x (so no sentence starts with I-x). The score of a sequence is the
    sum of its tokens' log-probabilities; the search is exact (``viterbi_flat`` on the sentences
    packed end to end).
    """
    n_tags = 1 + 2 * n_labels
    for lp in log_probs:
        if len(lp) and np.shape(lp)[1] != n_tags:
            raise ValueError(f"expected {n_tags} tag columns, got {np.shape(lp)[1]}")
    flat, bounds = pack(log_probs, np.float64)
    if not len(flat):
        flat = np.zeros((0, n_tags))
    return unpack(viterbi_flat(flat, bounds, n_labels), bounds)


def viterbi_flat(log_probs: np.ndarray, bounds: np.ndarray, n_labels: int) -> np.ndarray:
    """``viterbi`` on packed sentences: ``log_probs`` (n_tokens, 1 + 2 * n_labels), sentence i owning rows
    [bounds[i], bounds[i + 1]); returns the tag ids (n_tokens,) int64.

    All sentences advance together, longest first: step t works on the sentences longer than t (a prefix
    of the length-sorted order), so the work is O(tokens x tags) in a number of numpy steps equal to the
    longest sentence, whatever the mix of lengths (O and B-y may follow anything, I-x only B-x or I-x).
    Ties go to the lowest tag id, as ``np.argmax`` breaks them.
    """
    n_tags = 1 + 2 * n_labels
    log_probs = np.asarray(log_probs, dtype=np.float64)
    if log_probs.ndim != 2 or log_probs.shape[1] != n_tags:
        raise ValueError(f"expected {n_tags} tag columns, got shape {log_probs.shape}")
    bounds = np.asarray(bounds, dtype=np.int64)
    out = np.zeros(len(log_probs), dtype=np.int64)
    lengths = np.diff(bounds)
    order = np.argsort(-lengths, kind="stable")
    order = order[lengths[order] > 0]
    if not len(order):
        return out
    starts = bounds[:-1][order]
    sorted_lengths = lengths[order]
    longest = int(sorted_lengths[0])
    # active[t]: how many sentences (a prefix of ``order``) are longer than t.
    active = np.searchsorted(-sorted_lengths, -np.arange(longest), side="left")
    begins = np.arange(1, n_tags, 2)
    insides = begins + 1
    delta = log_probs[starts].copy()
    delta[:, insides] = -np.inf
    final = np.zeros(len(order), dtype=np.int64)  # each sentence's best last tag
    back: list[np.ndarray] = [np.zeros((0, n_tags), dtype=np.int64)]
    for t in range(1, longest):
        n = int(active[t])
        if n < len(delta):  # the sentences of length t end here
            final[n:len(delta)] = np.argmax(delta[n:], axis=1)
            delta = delta[:n]
        rows = np.arange(n)
        best_prev = np.argmax(delta, axis=1)
        best = delta[rows, best_prev]
        new = np.empty_like(delta)
        new[:, 0] = best
        new[:, begins] = best[:, None]
        step = np.empty((n, n_tags), dtype=np.int64)
        step[:, 0] = best_prev
        step[:, begins] = best_prev[:, None]
        from_inside = delta[:, insides] >= delta[:, begins]
        new[:, insides] = np.maximum(delta[:, insides], delta[:, begins])
        step[:, insides] = np.where(from_inside, insides[None, :], begins[None, :])
        back.append(step)
        delta = new + log_probs[starts[:n] + t]
    final[:len(delta)] = np.argmax(delta, axis=1)
    # Back from the last step: a sentence joins when its last token is reached.
    current = final.copy()
    for t in range(longest - 1, -1, -1):
        n = int(active[t])
        out[starts[:n] + t] = current[:n]
        if t:
            current[:n] = back[t][np.arange(n), current[:n]]
    return out


def flat_spans(tags: np.ndarray, bounds: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(sentence, first token, stop token, label index) arrays of every entity in packed tag ids; the token
    positions are within the sentence. The same spans as ``token_spans`` sentence by sentence (a stray I-x
    starts an entity), found with array operations over all sentences at once."""
    t = np.asarray(tags, dtype=np.int64)
    bounds = np.asarray(bounds, dtype=np.int64)
    n = len(t)
    label = np.where(t > 0, (t - 1) // 2, -1)
    first = np.zeros(n, dtype=bool)
    lengths = np.diff(bounds)
    first[bounds[:-1][lengths > 0]] = True
    previous = np.empty(n, dtype=np.int64)
    if n:
        previous[0] = -1
        previous[1:] = label[:-1]
    continues = (t > 0) & (t % 2 == 0) & (label == previous) & ~first
    begin = np.flatnonzero((t > 0) & ~continues)
    breaks = np.append(np.flatnonzero(~continues), n)
    stop = breaks[np.searchsorted(breaks, begin, side="right")]
    sentence = np.searchsorted(bounds, begin, side="right") - 1
    offset = bounds[sentence]
    return sentence, begin - offset, stop - offset, label[begin]


def flat_span_confidences(marginals: np.ndarray, tags: np.ndarray, bounds: np.ndarray
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``flat_spans`` plus each span's confidence (as ``span_confidences``) from packed tag marginals."""
    sentence, a, b, label = flat_spans(tags, bounds)
    if not len(a):
        return sentence, a, b, label, np.zeros(0)
    offset = bounds[sentence]
    t = np.asarray(tags, dtype=np.int64)
    picked = np.append(np.asarray(marginals, dtype=np.float64)[np.arange(len(t)), t], 1.0)
    edges = np.empty(2 * len(a), dtype=np.int64)
    edges[0::2], edges[1::2] = offset + a, offset + b
    confidence = np.multiply.reduceat(picked, edges)[0::2]
    inside = b < bounds[sentence + 1] - offset
    after = (offset + b)[inside]
    confidence[inside] *= 1.0 - np.asarray(marginals, dtype=np.float64)[after, 2 + 2 * label[inside]]
    return sentence, a, b, label, confidence


def is_valid_iob2(ids: Sequence[int] | np.ndarray) -> bool:
    """Whether every I-x (even id > 0) follows B-x or I-x of the same label."""
    previous = 0
    for t in (int(x) for x in ids):
        if t and t % 2 == 0 and previous not in (t - 1, t):
            return False
        previous = t
    return True


# ---- model ------------------------------------------------------------------------------------
# Per-example aggregation of per-token acquisition scores. "sum" favours long examples (more
# tokens, more cost), "mean" short ones; "sqrt" (sum / sqrt(n_tokens)) sits between; "max" takes
# the example's most uncertain token.
AGGREGATIONS = ("sum", "mean", "max", "sqrt")
# Measured on conll2003 and sec_filings_ner, seed 0 (benchmarks/README.md, *Span tagging*): "sum" picked
# sentences of 25 tokens (conll2003 averages 14.5) and never reached random's entity F1 at 1,000 sentences;
# "sqrt" reached it at 850 sentences with fewer tokens (12,178 against 14,309) and led "sum" on
# sec_filings_ner at every size; "mean" is the cheapest per token but the worst per sentence.
DEFAULT_AGGREGATION = "sqrt"


def aggregate(token_scores: np.ndarray, bounds: np.ndarray, how: str = DEFAULT_AGGREGATION) -> np.ndarray:
    """Per-example scores from concatenated per-token scores; example i owns [bounds[i], bounds[i+1])."""
    if how not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {how!r}; use one of {', '.join(AGGREGATIONS)}")
    lengths = np.diff(bounds)
    n = len(lengths)
    out = np.zeros(n, dtype=np.float64)
    nonempty = lengths > 0
    if not nonempty.any():
        return out
    starts = bounds[:-1][nonempty]
    if how == "max":
        out[nonempty] = np.maximum.reduceat(token_scores, starts)
        return out
    sums = np.add.reduceat(np.asarray(token_scores, dtype=np.float64), starts)
    if how == "sum":
        out[nonempty] = sums
    elif how == "mean":
        out[nonempty] = sums / lengths[nonempty]
    else:
        out[nonempty] = sums / np.sqrt(lengths[nonempty])
    return out


def pack(vectors: Sequence[np.ndarray], dtype: Any = np.float16) -> tuple[np.ndarray, np.ndarray]:
    """(flat (n_tokens_total, dim) array, bounds (n + 1,) int64) of per-example token vectors.

    The pool's storage form: float16 halves float32's memory (100k sentences of 25 tokens x 384
    dims: 1.9 GB against 3.8 GB) and moves no tag probability by more than about 1e-3.
    """
    lengths = np.array([len(v) for v in vectors], dtype=np.int64)
    bounds = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    dim = next((v.shape[1] for v in vectors if np.ndim(v) == 2), 0)
    flat = np.empty((int(bounds[-1]), dim), dtype=dtype)
    for v, a, b in zip(vectors, bounds[:-1], bounds[1:], strict=True):
        if b > a:
            flat[a:b] = v
    return flat, bounds


def unpack(flat: np.ndarray, bounds: np.ndarray) -> list[np.ndarray]:
    return [flat[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def sentence_vectors(flat: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """Unit-norm mean of each example's token vectors (float32 (n, dim)): the example's vector for
    the seed, density and diversity (an empty example gets zeros)."""
    lengths = np.diff(bounds)
    out = np.zeros((len(lengths), flat.shape[1]), dtype=np.float32)
    nonempty = lengths > 0
    if nonempty.any():
        sums = np.add.reduceat(np.asarray(flat, dtype=np.float32), bounds[:-1][nonempty], axis=0)
        out[nonempty] = sums / lengths[nonempty, None]
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return out / np.maximum(norms, 1e-12)


@dataclass
class SpanPrediction:
    """One example's decoding: tag ids, per-token tag marginals, spans with confidence."""

    tags: np.ndarray  # (n_tokens,) int64, valid IOB2
    marginals: np.ndarray  # (n_tokens, n_tags) float32
    spans: list[dict[str, Any]]  # [{"start", "end", "label", "confidence"}] (char offsets)


@dataclass
class SpanModel:
    """Bayesian last layer over IOB2 tags (``bayes.Posterior``) and its tag set."""

    posterior: bayes.Posterior
    tagset: TagSet
    info: dict[str, Any] = field(default_factory=dict)

    # ---- fitting ---------------------------------------------------------------------------
    @classmethod
    def fit(
        cls,
        token_vectors: Sequence[np.ndarray],
        tag_ids: Sequence[np.ndarray],
        tagset: TagSet,
        warm: SpanModel | None = None,
        *,
        prior_precision: float | None = None,
        defer_search: bool = False,
        searched: tuple[float, int] | None = None,
        search: bool = False,
    ) -> SpanModel:
        """Fit on labelled examples: one (n_tokens, dim) vector array and one (n_tokens,) tag id array each.

        ``warm``: the previous model (same tag set), whose posterior warm-starts ``bayes.fit`` (same
        optimum, fewer steps; the prior precision is kept until the token count has grown by half)
        and whose calibration is carried over until ``calibrate`` runs. A model of another tag set
        is ignored. ``defer_search`` and ``searched`` as in ``bayes.fit`` (label counts are token
        counts here; ``search_prior`` makes ``searched``); ``search``: run the prior-precision
        search now (``bayes.search_prior``), whatever the warm start's. Raises SpanModelError when no token carries
        an entity tag (every labelled example says "no entity": nothing to learn yet) or the inputs do
        not match.
        """
        if len(token_vectors) != len(tag_ids):
            raise SpanModelError(f"{len(token_vectors)} vector arrays but {len(tag_ids)} tag arrays")
        for i, (v, t) in enumerate(zip(token_vectors, tag_ids, strict=True)):
            if len(v) != len(t):
                raise SpanModelError(f"example {i}: {len(v)} token vectors but {len(t)} tags")
        X, _ = pack(token_vectors, np.float32)
        y = np.concatenate([np.asarray(t, dtype=np.int64) for t in tag_ids]) if tag_ids else np.zeros(0, np.int64)
        if len(y) == 0:
            raise SpanModelError("no labelled token to fit on")
        if y.min() < 0 or y.max() >= tagset.size:
            raise SpanModelError(f"tag ids must lie in [0, {tagset.size}), got {int(y.min())}..{int(y.max())}")
        if not (y > 0).any():
            raise SpanModelError(
                f"none of the {len(tag_ids)} labelled examples has an entity yet; tag at least one span"
            )
        if not (y == 0).any():
            raise SpanModelError("every labelled token is inside an entity; label an example with plain text too")
        previous = warm.posterior if warm is not None and warm.tagset == tagset else None
        started = time.process_time()
        if search:
            posterior = bayes.search_prior(X, y, n_classes=tagset.size, warm_start=previous)
        else:
            posterior = bayes.fit(X, y, n_classes=tagset.size, warm_start=previous, prior_precision=prior_precision,
                                  defer_search=defer_search, searched=searched)
        if previous is not None:
            posterior.temperature, posterior.variance_scale = previous.temperature, previous.variance_scale
            posterior.info["calibration_from"] = "previous"
        info = {"n_examples": len(tag_ids), "n_tokens": int(len(y)), "fit_cpu_seconds": time.process_time() - started}
        return cls(posterior=posterior, tagset=tagset, info=info)

    def search_prior(self, token_vectors: Sequence[np.ndarray], tag_ids: Sequence[np.ndarray]) -> SpanModel:
        """The refit on these labels with the prior-precision search (``bayes.search_prior``), warm-started from
        this model, whose calibration it carries until ``calibrate`` runs. ``bayes.searched_of`` of its posterior
        is a later ``fit``'s ``searched`` (label counts are token counts)."""
        return SpanModel.fit(token_vectors, tag_ids, self.tagset, warm=self, search=True)

    def calibrate(
        self, token_vectors: Sequence[np.ndarray], tag_ids: Sequence[np.ndarray], *, folds: int = 3,
        rng: np.random.Generator | None = None, max_examples: int = 2000,
    ) -> SpanModel:
        """Fit temperature and variance scale on out-of-fold token logits, folds drawn by example.

        Each fold refits at this model's prior precision, warm-started from it (``folds`` cheap
        fits). At most ``max_examples`` examples (a random subset) take part, so the cost stays
        bounded on a large labelled set. With fewer than 2 x ``folds`` examples, or folds left
        without an entity, the model keeps its calibration. Returns self.
        """
        rng = rng or np.random.default_rng(0)
        n = len(token_vectors)
        if n < 2 * folds:
            return self
        keep = np.sort(rng.choice(n, max_examples, replace=False)) if n > max_examples else np.arange(n)
        assignment = rng.permutation(len(keep)) % folds
        mus, variances, ys = [], [], []
        for fold in range(folds):
            train = [int(keep[j]) for j in np.flatnonzero(assignment != fold)]
            held = [int(keep[j]) for j in np.flatnonzero(assignment == fold)]
            try:
                part = SpanModel.fit([token_vectors[i] for i in train], [tag_ids[i] for i in train], self.tagset,
                                     warm=self, prior_precision=self.posterior.prior_precision)
            except bayes.ModelFitError:
                continue
            X_held, _ = pack([token_vectors[i] for i in held], np.float32)
            if len(X_held) == 0:
                continue
            mu, var = part.posterior.logit_mean_var(X_held)
            mus.append(mu)
            variances.append(var)
            ys.append(np.concatenate([np.asarray(tag_ids[i], dtype=np.int64) for i in held]))
        if not mus or sum(len(y) for y in ys) < 10:
            return self
        t, c = fit_calibration(np.concatenate(mus), np.concatenate(variances), np.concatenate(ys))
        self.posterior.temperature, self.posterior.variance_scale = t, c
        self.posterior.info["calibration_folds"] = folds
        self.posterior.info.pop("calibration_from", None)
        return self

    # ---- prediction ------------------------------------------------------------------------
    def marginals(self, token_vectors: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Per example, the (n_tokens, n_tags) float32 predictive tag probabilities (rows sum to 1)."""
        flat, bounds = pack(token_vectors, np.float32)
        if len(flat) == 0:
            return [np.zeros((0, self.tagset.size), np.float32) for _ in token_vectors]
        proba = self.posterior.predict_proba(flat).astype(np.float32)
        return unpack(proba, bounds)

    def decode(self, marginals: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Constrained Viterbi tag ids of each example from its tag marginals."""
        flat, bounds = pack(marginals, np.float32)
        return unpack(self.decode_flat(flat, bounds), bounds)

    def decode_flat(self, proba: np.ndarray, bounds: np.ndarray) -> np.ndarray:
        """``decode`` on packed marginals (n_tokens, n_tags): packed tag ids (n_tokens,)."""
        if not len(proba):
            return np.zeros(0, dtype=np.int64)
        return viterbi_flat(np.log(np.clip(proba, 1e-12, 1.0)), bounds, len(self.tagset.keys))

    def predict(
        self, token_vectors: Sequence[np.ndarray], offsets: Sequence[Sequence[Sequence[int]]] | None = None,
        *, marginals: Sequence[np.ndarray] | None = None,
    ) -> list[SpanPrediction]:
        """Decoded spans with confidence for each example.

        ``offsets`` (per example, [start, end) char offsets of its tokens) turn token spans into char
        spans; without them "start"/"end" are token indices (end exclusive). ``marginals`` may be
        passed when already computed (``marginals``) to save the product.
        """
        if marginals is None:
            flat, bounds = pack(token_vectors, np.float32)
            proba = self.posterior.predict_proba(flat).astype(np.float32) if len(flat) else \
                np.zeros((0, self.tagset.size), np.float32)
        else:
            proba, bounds = pack(marginals, np.float32)
            if not len(proba):
                proba = np.zeros((0, self.tagset.size), np.float32)
        tags, spans = self.predict_flat(proba, bounds, offsets)
        return [SpanPrediction(tags=tags[a:b], marginals=proba[a:b], spans=found)
                for a, b, found in zip(bounds[:-1], bounds[1:], spans, strict=True)]

    def predict_flat(
        self, proba: np.ndarray, bounds: np.ndarray, offsets: Sequence[Sequence[Sequence[int]]] | None = None,
        *, digits: int | None = None,
    ) -> tuple[np.ndarray, list[list[dict[str, Any]]]]:
        """(packed decoded tag ids, each example's spans) from packed marginals: ``predict``'s work with one
        Viterbi pass and one span pass over every example (the rescore's path). ``digits``: round the
        confidences (what the queue stores)."""
        tags = self.decode_flat(proba, bounds)
        spans: list[list[dict[str, Any]]] = [[] for _ in range(len(bounds) - 1)]
        sentence, first, stop, label, confidence = flat_span_confidences(proba, tags, bounds)
        keys = self.tagset.keys
        for i, a, b, x, c in zip(sentence.tolist(), first.tolist(), stop.tolist(), label.tolist(),
                                 confidence.tolist(), strict=True):
            if offsets is not None:
                start, end = int(offsets[i][a][0]), int(offsets[i][b - 1][1])
            else:
                start, end = a, b
            spans[i].append({"start": start, "end": end, "label": keys[x],
                             "confidence": c if digits is None else round(c, digits)})
        return tags, spans

    # ---- acquisition -----------------------------------------------------------------------
    def token_scores(
        self, flat: np.ndarray, *, strategy: str = acquisition.DEFAULT_STRATEGY, n_samples: int = 16,
        rng: np.random.Generator | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(tag marginals (n_tokens, n_tags) float32, per-token uncertainty (n_tokens,)) of packed token vectors.

        BALD strategies: the mutual information between each token's tag and the weights, from the
        posterior's logit moments and ``n_samples`` antithetic logit samples (``acquisition.score_pool``,
        the classification code, common random numbers across tokens). Others: the strategy's own
        measure on the marginals (entropy, margin, least confidence); random: uniform noise.
        """
        rng = rng or np.random.default_rng()
        spec = acquisition.get_strategy(strategy)
        if len(flat) == 0:
            return np.zeros((0, self.tagset.size), np.float32), np.zeros(0)
        token_strategy = "bald" if spec.needs_samples else spec.name
        scored = acquisition.score_pool(self.posterior, flat, strategy=token_strategy, n_samples=n_samples, rng=rng)
        return scored.proba, scored.scores

    def example_scores(
        self, flat: np.ndarray, bounds: np.ndarray, *, strategy: str = acquisition.DEFAULT_STRATEGY,
        aggregation: str = DEFAULT_AGGREGATION, density: np.ndarray | None = None,
        rng: np.random.Generator | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(per-token marginals (n_tokens, n_tags), per-example acquisition scores (n,)): token scores
        aggregated per example, times ``density`` (per example) for strategies that weight by it."""
        spec = acquisition.get_strategy(strategy)
        proba, scores = self.token_scores(flat, strategy=strategy, rng=rng)
        per_example = aggregate(scores, bounds, aggregation)
        if spec.density and density is not None:
            per_example = per_example * density
        return proba, per_example

    # ---- storage ---------------------------------------------------------------------------
    def to_npz(self) -> bytes:
        meta = {"format": FORMAT_VERSION, "keys": self.tagset.keys, "info": self.info}
        buffer = io.BytesIO()
        np.savez_compressed(
            buffer,
            posterior=np.frombuffer(self.posterior.to_bytes(), dtype=np.uint8),
            meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
        )
        return buffer.getvalue()

    @classmethod
    def from_npz(cls, data: bytes) -> SpanModel:
        with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
            meta = json.loads(arrays["meta"].tobytes().decode())
            if meta.get("format") != FORMAT_VERSION:
                raise ValueError(f"unsupported span model format {meta.get('format')!r}")
            posterior = bayes.Posterior.from_bytes(arrays["posterior"].tobytes())
        return cls(posterior=posterior, tagset=TagSet(meta["keys"]), info=dict(meta.get("info", {})))


def span_confidences(
    marginals: np.ndarray, tags: np.ndarray, tagset: TagSet
) -> list[tuple[int, int, str, float]]:
    """(first token, stop token, label, confidence) of each decoded span.

    Confidence: product over the span's tokens of the marginal probability of its decoded tag
    (B-x, I-x, ...) times 1 - p(I-x) at the token after it (the span ends there): the
    probability of exactly this span under independent token marginals (``flat_span_confidences``
    for one sentence).
    """
    if not len(tags):
        return []
    _, first, stop, label, confidence = flat_span_confidences(marginals, tags, np.array([0, len(tags)]))
    return [(a, b, tagset.keys[x], c) for a, b, x, c in
            zip(first.tolist(), stop.tolist(), label.tolist(), confidence.tolist(), strict=True)]


# ---- selection (the classification default's batch on example vectors) -----------------------
def select_examples(
    scores: np.ndarray, example_vectors: np.ndarray, batch_size: int, *,
    strategy: str = acquisition.DEFAULT_STRATEGY, rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Indices of the next batch: ``acquisition.select_batch`` (score-weighted farthest-first for
    diversity strategies) on the examples' vectors (``sentence_vectors``)."""
    return acquisition.select_batch(strategy, scores=scores, embeddings=example_vectors, batch_size=batch_size,
                                    rng=rng)


def select_seed(example_vectors: np.ndarray, size: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """The diverse cold-start batch of the classification default (k-means nearest items) on example vectors."""
    return acquisition.select_seed(example_vectors, size, rng)


# ---- metrics ----------------------------------------------------------------------------------
Entity = tuple[str, int, int]  # (label, first token, stop token)


def entities_from_tags(tags: Sequence[str]) -> set[Entity]:
    """Entities of a tag-string sequence under seqeval's strict IOB2 mode.

    An entity is B-x followed by any number of I-x; an I-x that does not continue it is not part
    of any entity (strict mode drops it), nor is anything after a malformed tag of another type.
    """
    out: set[Entity] = set()
    open_label: str | None = None
    start = 0
    for i, tag in enumerate(list(tags) + ["O"]):
        prefix, _, label = tag.partition("-")
        if prefix not in ("B", "I"):
            prefix, label = "O", ""
        if open_label is not None and not (prefix == "I" and label == open_label):
            out.add((open_label, start, i))
            open_label = None
        if prefix == "B":
            open_label, start = label, i
    return out


def entities_from_ids(ids: Sequence[int] | np.ndarray, tagset: TagSet) -> set[Entity]:
    """Strict entities of tag ids (the same definition as ``entities_from_tags``)."""
    return entities_from_tags([tagset.names[int(t)] for t in ids])


def _prf(tp: np.ndarray, n_pred: np.ndarray, n_gold: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(n_pred > 0, tp / np.maximum(n_pred, 1), 0.0)
        recall = np.where(n_gold > 0, tp / np.maximum(n_gold, 1), 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-300), 0.0)
    return precision, recall, f1


def entity_counts(gold: Sequence[set[Entity]], pred: Sequence[set[Entity]], labels: Sequence[str]) -> np.ndarray:
    """(n_sentences, n_labels, 3) int64 counts: true positives, predicted, gold entities per label."""
    index = {label: j for j, label in enumerate(labels)}
    counts = np.zeros((len(gold), len(labels), 3), dtype=np.int64)
    for s, (g, p) in enumerate(zip(gold, pred, strict=True)):
        for label, *_ in g & p:
            counts[s, index[label], 0] += 1
        for label, *_ in p:
            counts[s, index[label], 1] += 1
        for label, *_ in g:
            counts[s, index[label], 2] += 1
    return counts


def entity_f1(gold: Sequence[set[Entity]], pred: Sequence[set[Entity]]) -> float:
    """Micro entity F1 (seqeval's headline f1_score, strict)."""
    tp = sum(len(g & p) for g, p in zip(gold, pred, strict=True))
    n_pred = sum(len(p) for p in pred)
    n_gold = sum(len(g) for g in gold)
    return float(_prf(np.array(tp), np.array(n_pred), np.array(n_gold))[2])


def entity_report(
    gold: Sequence[set[Entity]], pred: Sequence[set[Entity]], labels: Sequence[str] | None = None, *,
    level: float = 0.9, n_boot: int = 1000, rng: np.random.Generator | None = None,
) -> dict[str, Any]:
    """Entity precision / recall / F1 (strict), overall (micro, as seqeval's f1_score) and per label
    (with support), and macro F1 over labels, each with a bootstrap ``level`` interval from
    resampling sentences (``n_boot`` resamples; ``n_boot=0`` gives no intervals), and the error
    breakdown (``error_breakdown``)."""
    rng = rng or np.random.default_rng(0)
    if labels is None:
        labels = sorted({e[0] for s in list(gold) + list(pred) for e in s})
    labels = list(labels)
    counts = entity_counts(gold, pred, labels)
    totals = counts.sum(axis=0)  # (L, 3)
    p, r, f = _prf(totals[:, 0], totals[:, 1], totals[:, 2])
    micro = totals.sum(axis=0)
    mp, mr, mf = _prf(micro[0], micro[1], micro[2])
    present = totals[:, 2] > 0
    macro = float(f[present].mean()) if present.any() else 0.0
    intervals: dict[str, Any] = {}
    if n_boot > 0 and len(gold) > 1:
        weights = rng.multinomial(len(gold), np.full(len(gold), 1.0 / len(gold)), size=n_boot).astype(np.float64)
        boot = np.einsum("bs,slc->blc", weights, counts.astype(np.float64))  # (B, L, 3)
        bp, br, bf = _prf(boot[..., 0], boot[..., 1], boot[..., 2])
        micro_b = boot.sum(axis=1)
        mbp, mbr, mbf = _prf(micro_b[:, 0], micro_b[:, 1], micro_b[:, 2])
        lo, hi = (1 - level) / 2, 1 - (1 - level) / 2
        macro_b = bf[:, present].mean(axis=1) if present.any() else np.zeros(n_boot)

        def band(values: np.ndarray) -> list[float]:
            return [float(np.quantile(values, lo)), float(np.quantile(values, hi))]

        intervals = {"precision": band(mbp), "recall": band(mbr), "f1": band(mbf), "macro_f1": band(macro_b),
                     "per_label": {label: {"precision": band(bp[:, j]), "recall": band(br[:, j]), "f1": band(bf[:, j])}
                                   for j, label in enumerate(labels)}}
    per_label = []
    for j, label in enumerate(labels):
        row: dict[str, Any] = {"label": label, "precision": float(p[j]), "recall": float(r[j]), "f1": float(f[j]),
                               "support": int(totals[j, 2]), "predicted": int(totals[j, 1])}
        if intervals:
            band_j = intervals["per_label"][label]
            row.update(precision_low=band_j["precision"][0], precision_high=band_j["precision"][1],
                       recall_low=band_j["recall"][0], recall_high=band_j["recall"][1],
                       f1_low=band_j["f1"][0], f1_high=band_j["f1"][1])
        per_label.append(row)

    def value(v: Any, key: str) -> dict[str, float | None]:
        band_v = intervals.get(key) if intervals else None
        return {"value": float(v), "low": band_v[0] if band_v else None, "high": band_v[1] if band_v else None}

    return {
        "n_sentences": len(gold),
        "precision": value(mp, "precision"),
        "recall": value(mr, "recall"),
        "f1": value(mf, "f1"),
        "macro_f1": value(macro, "macro_f1"),
        "per_label": per_label,
        "errors": error_breakdown(gold, pred),
        "level": level,
    }


ERROR_KINDS = ("wrong_type", "wrong_boundary", "missed", "spurious")


def error_breakdown(gold: Sequence[set[Entity]], pred: Sequence[set[Entity]]) -> dict[str, int]:
    """Counts of span errors, each wrong prediction or missed gold entity counted once:

    - ``wrong_type``: a prediction with exactly a gold entity's boundaries and another label;
    - ``wrong_boundary``: a prediction overlapping a gold entity with other boundaries (its label
      may be wrong too; ``wrong_boundary_and_type`` counts those among them);
    - ``spurious``: a prediction overlapping no gold entity;
    - ``missed``: a gold entity that no prediction overlaps.
    Also ``correct`` (exact matches), so every prediction and gold entity is accounted for.
    """
    out = {"correct": 0, "wrong_type": 0, "wrong_boundary": 0, "wrong_boundary_and_type": 0, "missed": 0,
           "spurious": 0}
    for g, p in zip(gold, pred, strict=True):
        exact = g & p
        out["correct"] += len(exact)
        gold_bounds = {(a, b): label for label, a, b in g}
        for label, a, b in p - exact:
            if (a, b) in gold_bounds:
                out["wrong_type"] += 1
                continue
            overlapping = [gl for gl, ga, gb in g if ga < b and a < gb]
            if overlapping:
                out["wrong_boundary"] += 1
                if label not in overlapping:
                    out["wrong_boundary_and_type"] += 1
            else:
                out["spurious"] += 1
        for _label, a, b in g - exact:
            if not any(pa < b and a < pb for _pl, pa, pb in p):
                out["missed"] += 1
    return out


def token_accuracy(gold_ids: Sequence[np.ndarray], pred_ids: Sequence[np.ndarray]) -> float:
    total = sum(len(g) for g in gold_ids)
    if total == 0:
        return float("nan")
    return float(sum(int(np.sum(np.asarray(g) == np.asarray(p))) for g, p in zip(gold_ids, pred_ids, strict=True))
                 / total)


def span_calibration_error(confidences: np.ndarray, correct: np.ndarray, *, n_bins: int = 15) -> float:
    """Expected calibration error of span confidences against exact-match correctness."""
    confidences = np.asarray(confidences, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    if len(confidences) == 0:
        return float("nan")
    bins = np.minimum((confidences * n_bins).astype(int), n_bins - 1)
    total = 0.0
    for k in range(n_bins):
        member = bins == k
        if member.any():
            total += member.sum() * abs(confidences[member].mean() - correct[member].mean())
    return float(total / len(confidences))

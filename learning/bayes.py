"""Bayesian last layer on frozen sentence embeddings (Laplace approximation).

Plain module (numpy/scipy only, no Django) so it can be tested and benchmarked alone.

Model
-----
Single-label: multinomial (softmax) logistic regression, logits f = W^T [x, 1].
Multi-label: one independent sigmoid logistic regression per label.
Prior: w ~ N(0, lambda^-1 I) on every weight, bias included (embeddings are unit norm, so
the bias feature has the same scale as the others).

Posterior
---------
The MAP is found with L-BFGS. The Gaussian posterior uses the generalised Gauss-Newton
Hessian at the MAP, kept block-diagonal over outputs: class k's block is
X^T diag(p_k (1 - p_k)) X + lambda I. For the multi-label sigmoid model this is the exact GGN;
for softmax it drops the cross-class blocks, which turns the cost from K^2 N D^2 into
K N D^2 and still keeps the part BALD needs (how much data constrains each direction of each
class's weight vector). Each block is stored as its Cholesky factor.

Prior precision
---------------
Chosen with MacKay's evidence fixed point lambda <- gamma / |w_MAP|^2,
gamma = sum_i e_i / (e_i + lambda), e_i the eigenvalues of the data Hessian at the first MAP
(lambda = 1), at most ``max_evidence_iterations`` steps. Nothing dataset-specific: the data
decide. Known limits, kept on purpose because the label-efficiency figures rest on them: with
the eigenvalues frozen the iteration oscillates and often stops on its step budget, and its
answer is not the maximum of the Laplace evidence this module reports (``log_evidence``).
Maximising that directly was tried and rejected: on small binary sets its maximum lies far
higher (sms_spam, 200 labels: lambda 3,000, test accuracy 0.84 instead of 0.96). Why was not
pinned down; the block-diagonal softmax GGN, which also counts the redundant second class, is
the first suspect. ``fit(..., prior_precision=p)`` fixes lambda; ``init_prior_precision``
starts the search there.

Warm refits
-----------
The app refits after every few labels. ``fit(..., warm_start=previous_posterior)`` starts the
MAP at the previous mean, preconditions L-BFGS with the previous precision factors and keeps
the previous prior precision until the label count has grown or shrunk by half since it was
searched for (``SEARCH_GROWTH``); then it runs the cold search, from the cold start, so the
two agree. The posterior equals a cold fit's within the optimiser's tolerance whenever lambda
is the same (tests/test_ml_bayes.py), and a refit costs about one Hessian (K N D^2, float32)
plus a few L-BFGS steps.

Predictive
----------
``predict_proba`` integrates over the posterior with the probit / mean-field approximation
p = softmax(mu / sqrt(1 + pi/8 * var)) using each logit's exact posterior variance.
``sample_logits`` draws antithetic posterior weight samples and pushes the whole batch of
samples through one matrix product; ``learning.acquisition.score_pool`` pushes only the
mean and one half of each antithetic pair (the other half is mean - deviation), which is how a
100k pool is scored in a few hundred milliseconds.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass, field

import numpy as np
import scipy.linalg
import scipy.optimize

PI_OVER_8 = math.pi / 8.0
MIN_PRIOR_PRECISION = 1e-4
MAX_PRIOR_PRECISION = 1e4
FORMAT_VERSION = 1


class ModelFitError(ValueError):
    """The data cannot give a model (too few classes, non-finite values, failed optimisation)."""


def _with_bias(X: np.ndarray) -> np.ndarray:
    return np.concatenate([X, np.ones((X.shape[0], 1), dtype=X.dtype)], axis=1)


def _check_X(X: np.ndarray) -> np.ndarray:
    X = np.asarray(X)
    if X.ndim != 2:
        raise ModelFitError(f"embeddings must be a 2-D array, got shape {X.shape}")
    if X.shape[0] == 0:
        raise ModelFitError("no labelled examples to fit on")
    if not np.isfinite(X).all():
        bad = int((~np.isfinite(X)).any(axis=1).sum())
        raise ModelFitError(f"{bad} embedding row(s) contain NaN or infinity")
    return X


def log_softmax(F: np.ndarray) -> np.ndarray:
    F = F - F.max(axis=1, keepdims=True)
    return F - np.log(np.exp(F).sum(axis=1, keepdims=True))


def softmax(F: np.ndarray) -> np.ndarray:
    F = F - F.max(axis=-1, keepdims=True)
    E = np.exp(F)
    return E / E.sum(axis=-1, keepdims=True)


def sigmoid(F: np.ndarray) -> np.ndarray:
    # Written via exp of a non-positive number so large |F| neither overflows nor warns.
    E = np.exp(-np.abs(F))
    return np.where(F >= 0, 1.0 / (1.0 + E), E / (1.0 + E))


def log_sigmoid(F: np.ndarray) -> np.ndarray:
    return np.minimum(F, 0.0) - np.log1p(np.exp(-np.abs(F)))


@dataclass
class Posterior:
    """Gaussian posterior over last-layer weights: mean (D+1, K) and per-output precision factors."""

    mean: np.ndarray  # (D+1, K) in standardised coordinates; last row is the bias
    chol: np.ndarray  # (K, D+1, D+1): lower Cholesky factors of each output's precision
    prior_precision: float
    shift: np.ndarray  # (D,) feature centre the weights are expressed around
    scale: float  # one scalar, so the isotropic prior stays isotropic
    multi_label: bool = False
    temperature: float = 1.0
    variance_scale: float = 1.0
    log_evidence: float = float("nan")
    n_train: int = 0
    info: dict[str, float | int | str] = field(default_factory=dict)
    _inverse_factors: np.ndarray | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def n_classes(self) -> int:
        return int(self.mean.shape[1])

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0] - 1)

    def design(self, X: np.ndarray) -> np.ndarray:
        """Standardised features with the bias column, float64 (N, D+1)."""
        return _with_bias((np.asarray(X, dtype=np.float64) - self.shift) / self.scale)

    def raw_weights(self, W: np.ndarray) -> np.ndarray:
        """Fold the standardisation into weights (..., D+1, K) so raw X @ W[:D] + W[D] gives logits."""
        linear = W[..., :-1, :] / self.scale
        bias = W[..., -1:, :] - np.einsum("d,...dk->...k", self.shift, linear)[..., None, :]
        return np.concatenate([linear, bias], axis=-2)

    def mean_for(self, shift: np.ndarray, scale: float) -> np.ndarray:
        """The posterior mean (D+1, K) re-expressed around another feature centre and scale.

        Same function of raw embeddings, so a refit whose standardisation moved a little (a few
        more labels) can start from the previous MAP.
        """
        raw = self.raw_weights(self.mean)
        linear = raw[:-1] * scale
        bias = raw[-1:] + np.asarray(shift, dtype=np.float64) @ raw[:-1]
        return np.concatenate([linear, bias], axis=0)

    def inverse_factors(self) -> np.ndarray:
        """L_k^-1 for every output, (K, D+1, D+1), computed once per object.

        The preconditioner of refits warm-started from this posterior; cross-validation runs
        five of them from the same one.
        """
        if self._inverse_factors is None:
            inverses = np.empty_like(self.chol)
            for k, L in enumerate(self.chol):
                inverses[k], info = scipy.linalg.lapack.dtrtri(L, lower=1)
                if info != 0:
                    raise ModelFitError("posterior precision factor is singular")
            self._inverse_factors = inverses
        return self._inverse_factors

    # ---- predictive -------------------------------------------------------------------
    def logit_mean_var(self, X: np.ndarray, *, chunk_size: int = 8192) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and exact variance of every logit, each (N, K)."""
        X = np.asarray(X)
        n = X.shape[0]
        mu = np.empty((n, self.n_classes))
        var = np.empty((n, self.n_classes))
        for start in range(0, n, chunk_size):
            Xb = self.design(X[start : start + chunk_size])
            mu[start : start + len(Xb)] = Xb @ self.mean
            for k in range(self.n_classes):
                # x^T H_k^-1 x = |L_k^-1 x|^2 with H_k = L_k L_k^T.
                Z = scipy.linalg.solve_triangular(self.chol[k], Xb.T, lower=True, check_finite=False)
                var[start : start + len(Xb), k] = np.einsum("ij,ij->j", Z, Z)
        return mu, var

    def proba_from_moments(self, mu: np.ndarray, var: np.ndarray) -> np.ndarray:
        """Probit (mean-field) approximation of E[softmax(f / T)] under f ~ N(mu, c * var).

        ``var`` is the unscaled Laplace variance; T (temperature) and c (variance_scale) come
        from ``calibrate``.
        """
        scaled = mu / np.sqrt(self.temperature**2 + PI_OVER_8 * self.variance_scale * var)
        if self.multi_label:
            return sigmoid(scaled)
        return softmax(scaled)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Predictive probabilities (N, K) integrated over the posterior; rows sum to 1 if single-label."""
        mu, var = self.logit_mean_var(X)
        return self.proba_from_moments(mu, var)

    def predict(self, X: np.ndarray) -> np.ndarray:
        proba = self.predict_proba(X)
        if self.multi_label:
            return (proba >= 0.5).astype(np.int8)
        return proba.argmax(axis=1)

    def weight_samples(self, n_samples: int, rng: np.random.Generator) -> np.ndarray:
        """Antithetic posterior weight deviations (n_samples, D+1, K); add ``mean`` for samples.

        Pairs (+d, -d) keep the sample mean exactly at the MAP, so Monte Carlo noise only
        touches the spread, never the centre of the predictive.
        """
        half = max(1, (n_samples + 1) // 2)
        d1 = self.dim + 1
        dev = np.empty((half, d1, self.n_classes))
        for k in range(self.n_classes):
            eps = rng.standard_normal((d1, half))
            # H = L L^T, so L^-T eps ~ N(0, H^-1).
            dev[:, :, k] = scipy.linalg.solve_triangular(self.chol[k], eps, lower=True, trans="T", check_finite=False).T
        dev *= math.sqrt(self.variance_scale)
        both = np.concatenate([dev, -dev], axis=0)[:n_samples]
        return both

    def raw_sample_weights(self, deviations: np.ndarray) -> np.ndarray:
        """float32 (D+1, (S+1)*K) weights [mean, mean+dev_1, ...] acting on raw embeddings."""
        S = deviations.shape[0]
        W = self.raw_weights(np.concatenate([self.mean[None], self.mean[None] + deviations], axis=0))
        # float32 for the big product: it halves the cost and the memory, and logits need no
        # more than 7 significant digits.
        return W.transpose(1, 0, 2).reshape(self.dim + 1, (S + 1) * self.n_classes).astype(np.float32)

    def chunk_logits(self, X: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """Logits (N, S+1, K) for raw X under ``raw_sample_weights``; [:, 0] is the mean."""
        X = np.asarray(X, dtype=np.float32)
        F = X @ weights[:-1]
        F += weights[-1]
        return F.reshape(X.shape[0], -1, self.n_classes)

    def sample_logits(
        self, X: np.ndarray, n_samples: int, rng: np.random.Generator, *, deviations: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(mean logits (N, K), sampled logits (S, N, K)) from one matrix product over X."""
        dev = self.weight_samples(n_samples, rng) if deviations is None else deviations
        F = self.chunk_logits(X, self.raw_sample_weights(dev))
        return F[:, 0, :], F[:, 1:, :].transpose(1, 0, 2)

    def proba_from_logit_samples(self, samples: np.ndarray) -> np.ndarray:
        scaled = samples / self.temperature
        return sigmoid(scaled) if self.multi_label else softmax(scaled)

    def sample_proba(self, X: np.ndarray, n_samples: int, rng: np.random.Generator) -> np.ndarray:
        """Probabilities under ``n_samples`` posterior weight samples, shape (S, N, K) (for BALD)."""
        _, samples = self.sample_logits(X, n_samples, rng)
        return self.proba_from_logit_samples(samples)

    def covariance_trace(self) -> float:
        """Total posterior variance of the weights (shrinks as data accumulates)."""
        total = 0.0
        for k in range(self.n_classes):
            Linv = scipy.linalg.solve_triangular(self.chol[k], np.eye(self.dim + 1), lower=True)
            total += float(np.sum(Linv * Linv))
        return total

    # ---- storage ----------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        meta = {
            "format": FORMAT_VERSION,
            "prior_precision": self.prior_precision,
            "multi_label": self.multi_label,
            "temperature": self.temperature,
            "variance_scale": self.variance_scale,
            "log_evidence": self.log_evidence,
            "n_train": self.n_train,
            "info": self.info,
        }
        buffer = io.BytesIO()
        np.savez_compressed(
            buffer,
            mean=self.mean,
            chol=self.chol.astype(np.float32),
            shift=self.shift,
            scale=np.array(self.scale),
            meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
        )
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> Posterior:
        with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
            meta = json.loads(arrays["meta"].tobytes().decode())
            if meta.get("format") != FORMAT_VERSION:
                raise ValueError(f"unsupported posterior format {meta.get('format')!r}")
            return cls(
                mean=arrays["mean"].astype(np.float64),
                chol=arrays["chol"].astype(np.float64),
                shift=arrays["shift"].astype(np.float64),
                scale=float(arrays["scale"]),
                prior_precision=float(meta["prior_precision"]),
                multi_label=bool(meta["multi_label"]),
                temperature=float(meta["temperature"]),
                variance_scale=float(meta.get("variance_scale", 1.0)),
                log_evidence=float(meta["log_evidence"]),
                n_train=int(meta["n_train"]),
                info=dict(meta.get("info", {})),
            )


# ---- fitting ------------------------------------------------------------------------------
# 10% in lambda changes predictions far less than calibration later corrects.
EVIDENCE_TOLERANCE = 0.1
# A warm refit keeps the previous prior precision until the label count has grown (or shrunk)
# by half since it was searched for: lambda moves slowly with N, and a search costs several
# MAPs, K eigen-decompositions and a second Hessian.
SEARCH_GROWTH = 1.5
# Label-count ratio (new / previous) within which a warm start also reuses the previous
# precision factors as the L-BFGS preconditioner; outside it only the previous mean is reused.
PRECONDITION_RANGE = (0.75, 1.5)


class _Objective:
    """Negative log joint (likelihood + Gaussian prior) and gradient, in preconditioned coordinates.

    Output k's weights are w_k = L_k^-T v_k, where L_k L_k^T approximates that output's
    posterior precision. A cold fit shares L = chol(X^T X / 4 + lambda I) across outputs:
    since p(1-p) <= 1/4 the preconditioned Hessian has eigenvalues in (0, 1], so L-BFGS
    converges in tens of iterations instead of hundreds. A warm refit uses the previous model's
    own factors, the GGN precision at a nearby MAP, which makes the preconditioned Hessian
    close to the identity, so a refit after a few new labels takes a handful of steps. The
    optimum is the same either way; the preconditioner only changes how fast L-BFGS gets there.
    """

    def __init__(self, Xb: np.ndarray, targets: np.ndarray, multi_label: bool, warm: Posterior | None = None) -> None:
        self.Xb = Xb
        self.targets = targets  # (N, K) one-hot or 0/1
        self.multi_label = multi_label
        self.n = Xb.shape[0]
        self.shape = (Xb.shape[1], targets.shape[1])
        self.gram: np.ndarray | None = None
        self.inverses: np.ndarray | None = None
        if warm is None:
            # float32 is plenty for a preconditioner and halves the N D^2 product.
            X32 = Xb.astype(np.float32)
            self.gram = (X32.T @ X32).astype(np.float64)
            self.factors: np.ndarray = np.eye(Xb.shape[1])[None]  # (1, D+1, D+1): shared by every output
        else:
            # Per output, applied as products with the inverse factors (computed once per warm
            # posterior): one batched matmul per evaluation instead of 2 K triangular solves.
            self.factors = warm.chol
            self.inverses = warm.inverse_factors()
        self.prior_precision = 1.0

    def set_prior_precision(self, lam: float) -> None:
        self.prior_precision = lam
        if self.gram is not None:
            A = self.gram / 4.0
            A[np.diag_indices_from(A)] += lam
            self.factors = np.linalg.cholesky(A)[None]

    def _solve(self, B: np.ndarray, *, trans: str) -> np.ndarray:
        """L_k^-T b_k (trans="T": coordinates to weights) or L_k^-1 b_k (trans="N": gradients)."""
        if self.inverses is None:
            return scipy.linalg.solve_triangular(self.factors[0], B, lower=True, trans=trans, check_finite=False)
        M = self.inverses.transpose(0, 2, 1) if trans == "T" else self.inverses
        return np.matmul(M, B.T[:, :, None])[:, :, 0].T

    def to_weights(self, V: np.ndarray) -> np.ndarray:
        return self._solve(V, trans="T")

    def to_coords(self, W: np.ndarray) -> np.ndarray:
        if len(self.factors) == 1:
            return self.factors[0].T @ W
        return np.einsum("kji,jk->ik", self.factors, W)

    def nll_and_probs(self, W: np.ndarray) -> tuple[float, np.ndarray]:
        return self._nll(self.Xb @ W)

    def _nll(self, F: np.ndarray) -> tuple[float, np.ndarray]:
        if self.multi_label:
            nll = -float(np.sum(self.targets * log_sigmoid(F) + (1 - self.targets) * log_sigmoid(-F)))
            return nll, sigmoid(F)
        logp = log_softmax(F)
        return -float(np.sum(self.targets * logp)), np.exp(logp)

    def __call__(self, v: np.ndarray) -> tuple[float, np.ndarray]:
        W = self.to_weights(v.reshape(self.shape))
        nll, P = self._nll(self.Xb @ W)
        lam = self.prior_precision
        value = (nll + 0.5 * lam * float(np.sum(W * W))) / self.n
        grad = self.Xb.T @ (P - self.targets) + lam * W
        return value, self._solve(grad, trans="N").ravel() / self.n


def _map(objective: _Objective, W0: np.ndarray) -> tuple[np.ndarray, int]:
    """MAP weights from ``W0`` and the number of L-BFGS iterations it took."""
    result = scipy.optimize.minimize(
        objective,
        objective.to_coords(W0).ravel(),
        jac=True,
        method="L-BFGS-B",
        options={"maxiter": 1000, "gtol": 1e-7, "ftol": 1e-11, "maxcor": 20},
    )
    W = objective.to_weights(result.x.reshape(objective.shape))
    if not np.isfinite(W).all() or not np.isfinite(result.fun):
        raise ModelFitError(f"optimisation diverged ({result.message})")
    return W, int(result.nit)


def _data_hessian_blocks(Xb: np.ndarray, P: np.ndarray) -> np.ndarray:
    """Per-output GGN blocks X^T diag(p_k (1 - p_k)) X, shape (K, D+1, D+1)."""
    root = np.sqrt(P * (1.0 - P)).astype(np.float32)
    # float32 and a symmetric rank-N update (half the flops of a general product): this is the
    # dominant cost of a refit (K N D^2) and the Hessian needs no more precision than the
    # embeddings have. Fortran order, because BLAS would otherwise get a transposed copy of
    # the N x D operand for every output.
    X32 = np.asfortranarray(Xb, dtype=np.float32)
    scaled = np.empty_like(X32)
    blocks = np.empty((P.shape[1], Xb.shape[1], Xb.shape[1]))
    for k in range(P.shape[1]):
        np.multiply(X32, root[:, k : k + 1], out=scaled)
        S = scipy.linalg.blas.ssyrk(1.0, scaled, trans=1, lower=1)  # lower triangle, upper left 0
        blocks[k] = S
        blocks[k] += np.tril(S, -1).T
    return blocks


def _precision_factors(blocks: np.ndarray, lam: float) -> np.ndarray:
    """Lower Cholesky factors of each output's posterior precision, data blocks + lambda I.

    Adds lambda to ``blocks`` in place (callers hand over a fresh array).
    """
    diagonal = np.arange(blocks.shape[1])
    blocks[:, diagonal, diagonal] += lam
    try:
        chol = np.linalg.cholesky(blocks)
    except np.linalg.LinAlgError as exc:
        raise ModelFitError(f"posterior precision is not positive definite: {exc}") from exc
    return chol


def _log_evidence(nll: float, W: np.ndarray, chol: np.ndarray, lam: float) -> float:
    # log det(H) from the Cholesky factors the posterior needs anyway: no eigen-decomposition.
    logdet = 2.0 * float(np.sum(np.log(np.diagonal(chol, axis1=1, axis2=2))))
    return float(-nll - 0.5 * lam * np.sum(W * W) + 0.5 * W.size * math.log(lam) - 0.5 * logdet)


def _searched_at(posterior: Posterior) -> int:
    """Label count at the posterior's last prior-precision search (older artifacts: its own)."""
    return int(posterior.info.get("evidence_n", posterior.n_train))


def _compatible(warm: Posterior | None, dim: int, n_outputs: int, multi_label: bool) -> Posterior | None:
    if warm is None or warm.dim != dim or warm.n_classes != n_outputs or warm.multi_label != multi_label:
        return None
    if warm.chol.shape != (n_outputs, dim + 1, dim + 1) or not np.isfinite(warm.chol).all():
        return None
    if not (np.isfinite(warm.prior_precision) and warm.prior_precision > 0):
        return None
    return warm


def _fit(
    X: np.ndarray,
    targets: np.ndarray,
    *,
    multi_label: bool,
    prior_precision: float | None,
    init_prior_precision: float | None,
    init_mean: np.ndarray | None,
    max_evidence_iterations: int,
    warm_start: Posterior | None,
) -> Posterior:
    # Centre and scale (one scalar) before the isotropic prior: sentence embeddings share a
    # large common direction, and without centring the prior fights the bias for it, which
    # costs a lot of accuracy with few labels.
    shift = X.mean(axis=0).astype(np.float64)
    # One float64 design matrix, built in place: at 10k labels every extra N x D copy costs
    # as much as a few L-BFGS steps.
    Xb = np.empty((X.shape[0], X.shape[1] + 1))
    centred = Xb[:, :-1]
    np.subtract(X, shift, out=centred)
    scale = float(np.sqrt(np.einsum("ij,ij->", centred, centred) / centred.size))
    if not np.isfinite(scale) or scale < 1e-12:
        scale = 1.0
    centred *= 1.0 / scale
    Xb[:, -1] = 1.0
    warm = _compatible(warm_start, X.shape[1], targets.shape[1], multi_label)
    # The previous factors precondition only a fit on about as many labels: a cross-validation
    # fold on a subsample has far less curvature than the model it starts from, and there the
    # shared data-bound preconditioner converges faster (trec, 5k labels: 112 steps against 178).
    similar = warm is not None and PRECONDITION_RANGE[0] <= X.shape[0] / max(warm.n_train, 1) <= PRECONDITION_RANGE[1]
    objective = _Objective(Xb, targets.astype(np.float64), multi_label, warm if similar else None)
    if init_mean is not None and init_mean.shape == objective.shape:
        W = init_mean.copy()
    elif warm is not None:
        W = warm.mean_for(shift, scale)
    else:
        W = np.zeros(objective.shape)
    n = int(X.shape[0])
    searched_at = n
    if prior_precision is not None:
        lam, search = float(prior_precision), False
    elif init_prior_precision is not None:
        lam, search = float(init_prior_precision), True
    elif warm is not None and n < SEARCH_GROWTH * _searched_at(warm) <= SEARCH_GROWTH**2 * n:
        lam, search = warm.prior_precision, False
        searched_at = _searched_at(warm)
    else:
        # Cold, or the labels grew (or shrank) a lot since the last search: the same search a
        # cold fit runs, from the same start, so warm and cold fits agree on lambda.
        lam, search = 1.0, True
    if not (np.isfinite(lam) and lam > 0):
        raise ModelFitError(f"prior precision must be a positive number, got {lam}")
    objective.set_prior_precision(lam)
    W, steps = _map(objective, W)
    maps = 1
    if search and max_evidence_iterations > 0:
        # Eigenvalues of the data Hessian at the first MAP; later steps reuse them, which
        # costs little accuracy (the fixed point moves lambda, the curvature moves less)
        # and saves a K N D^2 Gram plus eigen-decompositions per step.
        _, P = objective.nll_and_probs(W)
        eigs = np.clip(np.concatenate([np.linalg.eigvalsh(b) for b in _data_hessian_blocks(Xb, P)]), 0.0, None)
        for _ in range(max_evidence_iterations):
            gamma = float(np.sum(eigs / (eigs + lam)))
            new_lam = float(np.clip(gamma / max(float(np.sum(W * W)), 1e-12), MIN_PRIOR_PRECISION, MAX_PRIOR_PRECISION))
            converged = abs(math.log(new_lam) - math.log(lam)) < EVIDENCE_TOLERANCE
            lam = new_lam
            objective.set_prior_precision(lam)
            W, more = _map(objective, W)
            steps += more
            maps += 1
            if converged:
                break
    nll, P = objective.nll_and_probs(W)
    chol = _precision_factors(_data_hessian_blocks(Xb, P), lam)
    if not np.isfinite(chol).all() or not np.isfinite(W).all():
        raise ModelFitError("fit produced non-finite values")
    return Posterior(
        mean=W,
        chol=chol,
        prior_precision=lam,
        shift=shift,
        scale=scale,
        multi_label=multi_label,
        log_evidence=_log_evidence(nll, W, chol, lam),
        n_train=n,
        info={"evidence_iterations": maps, "evidence_n": searched_at, "lbfgs_iterations": steps,
              "warm_start": int(warm is not None)},
    )


def fit(
    X: np.ndarray,
    y: np.ndarray,
    *,
    n_classes: int,
    prior_precision: float | None = None,
    init_prior_precision: float | None = None,
    init_mean: np.ndarray | None = None,
    max_evidence_iterations: int = 6,
    warm_start: Posterior | None = None,
) -> Posterior:
    """Laplace posterior of softmax regression on embeddings ``X`` (N, D) and labels ``y`` in [0, n_classes).

    Classes of the taxonomy without any example yet are allowed (the prior covers them); at
    least two distinct classes must be present. A class with a single example is fine.

    ``warm_start``: the previous model of the same outputs (e.g. the last ModelVersion's
    artifact). Its mean starts the MAP, its precision factors precondition it, and its prior
    precision is kept (no evidence search) until the labels have grown or shrunk by half since
    it was searched for. Same optimum as a cold fit at that prior precision; an incompatible
    warm start (other dimension or outputs) is ignored.
    """
    X = _check_X(X)
    y = np.asarray(y)
    if y.ndim != 1 or y.shape[0] != X.shape[0]:
        raise ModelFitError(f"labels must be a vector of length {X.shape[0]}, got shape {y.shape}")
    if n_classes < 2:
        raise ModelFitError("a classifier needs at least two classes")
    if not np.issubdtype(y.dtype, np.integer):
        if not np.all(np.isfinite(y.astype(float))) or not np.all(np.equal(np.mod(y, 1), 0)):
            raise ModelFitError("labels must be integer class indices")
        y = y.astype(np.int64)
    if y.min() < 0 or y.max() >= n_classes:
        raise ModelFitError(f"labels must lie in [0, {n_classes}), got {int(y.min())}..{int(y.max())}")
    present = np.unique(y)
    if present.size < 2:
        raise ModelFitError(
            f"all {len(y)} labelled examples have the same class ({int(present[0])}); label at least one other class"
        )
    targets = np.zeros((len(y), n_classes))
    targets[np.arange(len(y)), y] = 1.0
    return _fit(
        X,
        targets,
        multi_label=False,
        prior_precision=prior_precision,
        init_prior_precision=init_prior_precision,
        init_mean=init_mean,
        max_evidence_iterations=max_evidence_iterations,
        warm_start=warm_start,
    )


def fit_multilabel(
    X: np.ndarray,
    Y: np.ndarray,
    *,
    prior_precision: float | None = None,
    init_prior_precision: float | None = None,
    init_mean: np.ndarray | None = None,
    max_evidence_iterations: int = 6,
    warm_start: Posterior | None = None,
) -> Posterior:
    """Laplace posterior of independent per-label sigmoid regressions; ``Y`` is a 0/1 (N, L) matrix.

    ``warm_start`` as in ``fit``.
    """
    X = _check_X(X)
    Y = np.asarray(Y)
    if Y.ndim != 2 or Y.shape[0] != X.shape[0]:
        raise ModelFitError(f"label matrix must have shape ({X.shape[0]}, L), got {Y.shape}")
    if Y.shape[1] < 1:
        raise ModelFitError("a multi-label classifier needs at least one label")
    if not np.isin(Y, (0, 1)).all():
        raise ModelFitError("multi-label targets must be 0 or 1")
    if Y.sum() == 0:
        raise ModelFitError("no example carries any label yet")
    return _fit(
        X,
        Y.astype(np.float64),
        multi_label=True,
        prior_precision=prior_precision,
        init_prior_precision=init_prior_precision,
        init_mean=init_mean,
        max_evidence_iterations=max_evidence_iterations,
        warm_start=warm_start,
    )

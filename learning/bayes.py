"""Bayesian last layer on frozen sentence embeddings (Kronecker-factored Laplace approximation).

Plain module (numpy/scipy only, no Django) so it can be tested and benchmarked alone.

Model
-----
Single-label: multinomial (softmax) logistic regression, logits f = W^T [x, 1].
Multi-label: one independent sigmoid logistic regression per label.
Prior: w ~ N(0, lambda^-1 I) on every weight of the centred, scaled features; the bias column
is ``BIAS_FEATURE`` (3), not 1, so the bias's own prior is 9 times weaker and class
frequencies far from uniform are not shrunk towards uniform as hard (``fit``'s ``bias_feature``
sets another column; the mislabel finder uses 10).

Posterior
---------
The MAP is found with L-BFGS. The Gaussian posterior approximates output k's generalised
Gauss-Newton block X^T diag(h_k) X (h_k = p_k (1 - p_k)) by g_k A: one (D+1) x (D+1) input factor
A shared by every output and one scalar g_k per output (a Kronecker factorisation, as in KFAC
Laplace, with a diagonal output factor). A = X^T diag(w) X weights each example by its
curvature summed over outputs (w_n = sum_k g0_k h_nk / |g0|^2 with g0_k = tr of block k, one
step of the nearest-Kronecker-product alternation), then g_k = tr(block k) / tr(A), so each
output keeps its total curvature. A is eigen-decomposed once, A = U diag(a) U^T, and every
output's precision g_k A + lambda I shares that basis: its eigenvalues are a_i g_k + lambda.
The cost of a posterior is one N D^2 product and one D^3 eigen-decomposition, whatever the
number of outputs K: the block-diagonal Laplace it replaces needed K of each, which made a
64-label project's update take seconds.

Exact where it matters for checking it: with one output (one sigmoid) or two softmax classes
(h_1 = h_2) the blocks are proportional to A and the factorisation is the per-output GGN the
previous model used, so binary projects get the same posterior and prior precision as before.
With K > 2 outputs it keeps what BALD needs (how much data constrain each direction of each
output's weights, through a_i g_k) but not which examples constrained which output.

Predictive logit variance of x: var_k = sum_i z_i^2 / (a_i g_k + lambda) with z = U^T [x, 1]:
one (N, D+1) projection and one (N, D+1) x (D+1, K) product. ``pool_moments`` keeps only the
``rank`` directions with the most curvature exactly and averages the rest (which the prior
dominates), so a 100k pool costs about one extra product of ``rank`` columns. Weight samples
are U (eps * (a g + lambda)^-1/2), one (D+1) x (D+1) product per sample.

A full K x K output factor (cross-class curvature) was not taken: softmax is invariant to
adding a constant to every logit, so that factor is singular along the all-ones direction,
which changes the prior precision the evidence finds (it counts K - 1 outputs, not K) and
would have moved every label-efficiency figure for reasons unrelated to the update's cost.

Prior precision
---------------
Chosen with MacKay's evidence fixed point lambda <- gamma / |w_MAP|^2,
gamma = sum_ik e_ik / (e_ik + lambda), e_ik = a_i g_k the eigenvalues of the (factored) data
Hessian at the first MAP (lambda = 1), at most ``max_evidence_iterations`` steps. Nothing
dataset-specific: the data decide. Known limits, kept on purpose because the label-efficiency
figures rest on them: with the eigenvalues frozen the iteration oscillates and often stops on
its step budget, and its answer is not the maximum of the Laplace evidence this module reports
(``log_evidence``, whose log-determinant is sum_ik log(a_i g_k + lambda)). Maximising that
directly was tried and rejected: on small binary sets its maximum lies far higher (sms_spam,
200 labels: lambda 3,000, test accuracy 0.84 instead of 0.96). ``fit(..., prior_precision=p)``
fixes lambda; ``init_prior_precision`` starts the search there.

Warm refits
-----------
The app refits after every few labels. ``fit(..., warm_start=previous_posterior)`` starts the
MAP at the previous mean, preconditions L-BFGS with the previous posterior's factors
(w = U diag((a g + lambda)^-1/2) v per output: two (D+1) x (D+1) x K products per step) and keeps
the previous prior precision until the label count has grown or shrunk by half since it was
searched for (``SEARCH_GROWTH``); then it runs the cold search, from the cold start, so the
two agree. The posterior equals a cold fit's within the optimiser's tolerance whenever lambda
is the same (tests/test_ml_bayes.py). That search costs several MAPs (3-6 s on a span project of
300-400 sentences), so the app's updates pass ``defer_search``: the refit keeps lambda and marks
the search due, the report job runs it (``search_prior``), serves that refit in place of the
deferred one and hands its lambda to the next refit (``searched``): lambda arrives one report
later, the same lambda a search in the update would have found.

Predictive
----------
``predict_proba`` integrates over the posterior with the probit / mean-field approximation
p = softmax(mu / sqrt(1 + pi/8 * var)) using each logit's posterior variance.
``sample_logits`` draws antithetic posterior weight samples and pushes the whole batch of
samples through one matrix product. ``learning.acquisition.score_pool`` samples logits instead:
under this posterior an item's logits are independent Gaussians N(mu_k, var_k), so sampling
them directly has the same distribution per item as sampling weights, at the cost of the
moments (about two products) instead of one product per sample.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass, field, replace

import numpy as np
import scipy.linalg
import scipy.optimize

PI_OVER_8 = math.pi / 8.0
MIN_PRIOR_PRECISION = 1e-4
MAX_PRIOR_PRECISION = 1e4
# 2: Kronecker factors (in_basis, in_eig, out_eig) instead of per-output Cholesky factors.
FORMAT_VERSION = 2
# The design's bias column c (see ``Posterior.bias_feature``): the bias's prior precision is
# lambda / c^2, 9 times weaker than the weights'. With c = 1 the evidence's lambda (hundreds on a
# binary set) held the bias near 0 around the centred embeddings, so a set with skewed classes was
# modelled as if balanced and the evidence lowered lambda to let the bias grow, which let the weights
# fit noise. A free intercept (c = 10) is what the mislabel finder uses (``mislabels.FINDER_BIAS_FEATURE``:
# it judges the labelled items themselves); for the active loop, whose labels' class frequencies are
# what the acquisition picked, not the pool's, 3 needed fewer labels than 1 and 10 on the label-efficiency
# sets measured (benchmarks/README.md, "Bias prior"). Either keeps the column on the scale of the
# standardised features (|z| is about sqrt(D)), so L-BFGS's conditioning is unchanged.
BIAS_FEATURE = 3.0
# Input directions kept exact by ``Posterior.pool_moments`` (the rest share one average variance).
POOL_RANK = 64


class ModelFitError(ValueError):
    """The data cannot give a model (too few classes, non-finite values, failed optimisation)."""


def _with_bias(X: np.ndarray, bias_feature: float = 1.0) -> np.ndarray:
    return np.concatenate([X, np.full((X.shape[0], 1), bias_feature, dtype=X.dtype)], axis=1)


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
    """Gaussian posterior over last-layer weights: mean (D+1, K) and Kronecker precision factors.

    Output k's precision is g_k A + lambda I with A = U diag(a) U^T: ``in_basis`` U, ``in_eig`` a,
    ``out_eig`` g.
    """

    mean: np.ndarray  # (D+1, K) in standardised coordinates; last row is the bias
    in_basis: np.ndarray  # (D+1, D+1) orthonormal eigenvectors of the input factor A, by column
    in_eig: np.ndarray  # (D+1,) eigenvalues of A, >= 0
    out_eig: np.ndarray  # (K,) output factors g_k, >= 0
    prior_precision: float
    shift: np.ndarray  # (D,) feature centre the weights are expressed around
    scale: float  # one scalar, so the isotropic prior stays isotropic
    multi_label: bool = False
    temperature: float = 1.0
    variance_scale: float = 1.0
    log_evidence: float = float("nan")
    n_train: int = 0
    info: dict[str, float | int | str] = field(default_factory=dict)
    # The bias column's value c in the design [z, c]: the bias weight is c * mean[-1], so its prior
    # precision is lambda / c^2 (1 in artifacts written before BIAS_FEATURE existed).
    bias_feature: float = 1.0

    @property
    def n_classes(self) -> int:
        return int(self.mean.shape[1])

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0] - 1)

    def precision_eigenvalues(self) -> np.ndarray:
        """(D+1, K): a_i g_k + lambda, the precision of output k along input direction i."""
        return np.outer(self.in_eig, self.out_eig) + self.prior_precision

    def design(self, X: np.ndarray) -> np.ndarray:
        """Standardised features with the bias column, float64 (N, D+1)."""
        return _with_bias((np.asarray(X, dtype=np.float64) - self.shift) / self.scale, self.bias_feature)

    def raw_weights(self, W: np.ndarray) -> np.ndarray:
        """Fold the standardisation into weights (..., D+1, K) so raw X @ W[:D] + W[D] gives logits."""
        linear = W[..., :-1, :] / self.scale
        bias = self.bias_feature * W[..., -1:, :] - np.einsum("d,...dk->...k", self.shift, linear)[..., None, :]
        return np.concatenate([linear, bias], axis=-2)

    def mean_for(self, shift: np.ndarray, scale: float, bias_feature: float = 1.0) -> np.ndarray:
        """The posterior mean (D+1, K) re-expressed around another feature centre and scale.

        Same function of raw embeddings, so a refit whose standardisation moved a little (a few
        more labels) can start from the previous MAP.
        """
        raw = self.raw_weights(self.mean)
        linear = raw[:-1] * scale
        bias = (raw[-1:] + np.asarray(shift, dtype=np.float64) @ raw[:-1]) / bias_feature
        return np.concatenate([linear, bias], axis=0)

    # ---- predictive -------------------------------------------------------------------
    def logit_mean_var(self, X: np.ndarray, *, chunk_size: int = 8192) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and variance of every logit, each (N, K)."""
        X = np.asarray(X)
        n = X.shape[0]
        mu = np.empty((n, self.n_classes))
        var = np.empty((n, self.n_classes))
        inverse = 1.0 / self.precision_eigenvalues()
        for start in range(0, n, chunk_size):
            Xb = self.design(X[start : start + chunk_size])
            mu[start : start + len(Xb)] = Xb @ self.mean
            Z = Xb @ self.in_basis
            var[start : start + len(Xb)] = (Z * Z) @ inverse
        return mu, var

    def pool_moments(self, *, rank: int = POOL_RANK) -> PoolMoments:
        """Logit means and variances of raw embeddings for a whole pool, see ``PoolMoments``."""
        return PoolMoments(self, rank)

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
        eps = rng.standard_normal((half, self.dim + 1, self.n_classes))
        eps /= np.sqrt(self.precision_eigenvalues())
        # Precision g_k A + lambda I = U diag(a g_k + lambda) U^T, so U (eps / sqrt(.)) ~ N(0, its inverse).
        dev = np.matmul(self.in_basis, eps)
        dev *= math.sqrt(self.variance_scale)
        return np.concatenate([dev, -dev], axis=0)[:n_samples]

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
        return float(np.sum(1.0 / self.precision_eigenvalues()))

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
            "bias_feature": self.bias_feature,
        }
        buffer = io.BytesIO()
        np.savez_compressed(
            buffer,
            mean=self.mean,
            in_basis=self.in_basis,
            in_eig=self.in_eig,
            out_eig=self.out_eig,
            shift=self.shift,
            scale=np.array(self.scale),
            meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
        )
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> Posterior:
        """Load an artifact; a format-1 one (per-output Cholesky factors) is converted on the way."""
        with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
            meta = json.loads(arrays["meta"].tobytes().decode())
            version = meta.get("format")
            if version == 1:
                factors = _factors_from_cholesky(arrays["chol"].astype(np.float64), float(meta["prior_precision"]))
            elif version == FORMAT_VERSION:
                factors = (arrays["in_basis"].astype(np.float64), arrays["in_eig"].astype(np.float64),
                           arrays["out_eig"].astype(np.float64))
            else:
                raise ValueError(f"unsupported posterior format {version!r}")
            return cls(
                mean=arrays["mean"].astype(np.float64),
                in_basis=factors[0],
                in_eig=factors[1],
                out_eig=factors[2],
                shift=arrays["shift"].astype(np.float64),
                scale=float(arrays["scale"]),
                prior_precision=float(meta["prior_precision"]),
                multi_label=bool(meta["multi_label"]),
                temperature=float(meta["temperature"]),
                variance_scale=float(meta.get("variance_scale", 1.0)),
                log_evidence=float(meta["log_evidence"]),
                n_train=int(meta["n_train"]),
                info=dict(meta.get("info", {})),
                bias_feature=float(meta.get("bias_feature", 1.0)),
            )


def _factors_from_cholesky(chol: np.ndarray, lam: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Kronecker factors (U, a, g) closest to format-1 per-output precisions L_k L_k^T.

    The same construction ``fit`` uses, on the data blocks H_k = L_k L_k^T - lambda I: A = sum_k
    g0_k H_k / |g0|^2 with g0_k = tr H_k, then g_k = tr H_k / tr A. Lets a model version stored
    before the factorisation keep serving and warm-start the next fit.
    """
    blocks = np.matmul(chol, chol.transpose(0, 2, 1))
    diagonal = np.arange(blocks.shape[1])
    blocks[:, diagonal, diagonal] -= lam
    traces = np.clip(np.trace(blocks, axis1=1, axis2=2), 0.0, None)
    weight = traces / max(float(traces @ traces), 1e-300)
    A = np.einsum("k,kij->ij", weight, blocks)
    a, U = np.linalg.eigh(A)
    a = np.clip(a, 0.0, None)
    return U, a, traces / max(float(a.sum()), 1e-300)


class PoolMoments:
    """Logit means and variances of raw embeddings, for scoring a whole pool chunk by chunk.

    One float32 product per chunk against [W (K columns) | U_r (``rank`` columns) | shift] gives
    the mean logits, the coordinates along the ``rank`` input directions with the most
    curvature, and what the squared norm of the standardised item needs. Variance along those
    directions is exact; along the others each output gets the mean of its inverse precisions
    there times the item's remaining squared norm (those directions have the least curvature,
    so the prior dominates them and their inverse precisions are nearly equal). With
    ``rank`` >= D+1 this is ``logit_mean_var`` exactly.
    """

    def __init__(self, posterior: Posterior, rank: int) -> None:
        self.k = posterior.n_classes
        d1 = posterior.dim + 1
        order = np.argsort(-posterior.in_eig, kind="stable")
        kept = order[: min(rank, d1)]
        rest = order[min(rank, d1) :]
        inverse = 1.0 / posterior.precision_eigenvalues()
        self.rank = len(kept)
        self.inverse_kept = np.ascontiguousarray(inverse[kept], dtype=np.float32)  # (r, K)
        self.inverse_rest = (inverse[rest].mean(axis=0) if len(rest) else np.zeros(self.k)).astype(np.float32)
        standardised = np.concatenate([posterior.mean, posterior.in_basis[:, kept]], axis=1)
        raw = posterior.raw_weights(standardised)  # (D+1, K + r) acting on raw embeddings
        shift = posterior.shift.astype(np.float64)
        linear = np.concatenate([raw[:-1], shift[:, None]], axis=1)
        self.linear_t = np.ascontiguousarray(linear.T, dtype=np.float32)  # (K + r + 1, D)
        self.bias = np.concatenate([raw[-1], [0.0]]).astype(np.float32)[:, None]
        self.shift_norm2 = float(shift @ shift)
        self.inv_scale2 = 1.0 / posterior.scale**2
        self.bias2 = posterior.bias_feature**2

    def __call__(self, chunk: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(mean (K, B), variance (K, B)) float32, class-major, for raw embeddings ``chunk`` (B, D)."""
        chunk = np.asarray(chunk, dtype=np.float32)
        F = self.linear_t @ chunk.T
        F += self.bias
        k, r = self.k, self.rank
        mean = F[:k]
        Z = F[k : k + r]
        Z *= Z
        # |[(x - shift) / scale, c]|^2, from |x|^2 and x . shift (the product's last row).
        norm2 = (np.einsum("bd,bd->b", chunk, chunk) - 2.0 * F[-1] + self.shift_norm2) * self.inv_scale2 + self.bias2
        rest = np.maximum(norm2 - Z.sum(axis=0), 0.0).astype(np.float32)
        var = self.inverse_kept.T @ Z
        var += self.inverse_rest[:, None] * rest[None, :]
        return mean, var


# ---- fitting ------------------------------------------------------------------------------
# 10% in lambda changes predictions far less than calibration later corrects.
EVIDENCE_TOLERANCE = 0.1
# A warm refit keeps the previous prior precision until the label count has grown (or shrunk)
# by half since it was searched for: lambda moves slowly with N, and a search costs several
# MAPs and a second curvature (N D^2 plus a D^3 eigen-decomposition).
SEARCH_GROWTH = 1.5
# With ``defer_search`` a warm refit keeps the previous prior precision up to this growth (or
# shrinkage) and only marks the search due (``info["search_due"]``): the search then runs off the
# update's path (``search_prior``, the app's report job) and the next refit takes its result
# (``searched``). Past this growth the refit searches itself, so a search that never comes
# (reports always interrupted) cannot leave lambda stale for long.
DEFERRED_SEARCH_GROWTH = SEARCH_GROWTH**2
# Label-count ratio (new / previous) within which a warm start also reuses the previous
# precision factors as the L-BFGS preconditioner; outside it only the previous mean is reused.
PRECONDITION_RANGE = (0.75, 1.5)


class _Objective:
    """Negative log joint (likelihood + Gaussian prior) and gradient, in preconditioned coordinates.

    Weights are W = T(V), where T^-T T^-1 approximates the posterior precision. A cold fit
    shares w_k = L^-T v_k with L = chol(X^T X / 4 + lambda I) across outputs: since p(1-p) <= 1/4
    the preconditioned Hessian has eigenvalues in (0, 1], so L-BFGS converges in tens of
    iterations instead of hundreds. A warm refit uses the previous model's own Kronecker
    factors, w_k = U diag((a g_k + lambda)^-1/2) v_k, the GGN precision at a nearby MAP, which
    makes the preconditioned Hessian close to the identity, so a refit after a few new labels
    takes a handful of steps. The optimum is the same either way; the preconditioner only
    changes how fast L-BFGS gets there.

    ``single`` evaluates in float32 (products and elementwise work; sums accumulate in float64):
    about half the cost of a step, but the value and gradient then carry float32 rounding, so
    ``_map`` only uses it to get close and finishes in float64.
    """

    def __init__(self, Xb: np.ndarray, targets: np.ndarray, multi_label: bool, warm: Posterior | None = None) -> None:
        self.Xb = Xb
        self.targets = targets  # (N, K) one-hot or 0/1
        self.multi_label = multi_label
        # Single-label targets are one-hot: the likelihood reads each row's label logit.
        self.labels = None if multi_label else np.argmax(targets, axis=1)
        self.n = Xb.shape[0]
        self.shape = (Xb.shape[1], targets.shape[1])
        self.gram: np.ndarray | None = None
        self.factor: np.ndarray | None = None  # cold: the shared Cholesky factor L
        self.basis: np.ndarray | None = None  # warm: U and the per-(direction, output) scales
        self.scales: np.ndarray | None = None
        self.single = False
        self.stay_single = False  # evaluate in float32 however small the gradient (warm refits, see _map)
        self.final: np.ndarray | None = None  # the coordinates _map returned the weights of
        self._float32: dict[str, np.ndarray] = {}
        if warm is None:
            # float32 is plenty for a preconditioner and halves the N D^2 product.
            X32 = Xb.astype(np.float32)
            self.gram = (X32.T @ X32).astype(np.float64)
            self.factor = np.eye(Xb.shape[1])
        else:
            self.basis = warm.in_basis
            self.scales = 1.0 / np.sqrt(warm.precision_eigenvalues())
        self.prior_precision = 1.0
        self.last_gradient = math.inf  # largest entry of the last gradient returned (of the mean objective)
        # The last evaluation's point (coordinates), negative log likelihood and probabilities minus targets
        # (``final_nll_and_probs``): a warm refit ends at its last evaluation, so its curvature needs no more products.
        self._last: tuple[np.ndarray, float, np.ndarray] | None = None

    def set_prior_precision(self, lam: float) -> None:
        self.prior_precision = lam
        self._float32.pop("factor", None)
        if self.gram is not None:
            A = self.gram / 4.0
            A[np.diag_indices_from(A)] += lam
            self.factor = np.linalg.cholesky(A)

    def _operand(self, name: str) -> np.ndarray:
        """The named array in the precision of the current evaluation (float32 copies made once)."""
        value = getattr(self, name)
        if not self.single:
            return value
        if name not in self._float32:
            self._float32[name] = np.asarray(value, dtype=np.float32)
        return self._float32[name]

    def to_weights(self, V: np.ndarray) -> np.ndarray:
        if self.basis is None:
            return scipy.linalg.solve_triangular(self._operand("factor"), V, lower=True, trans="T", check_finite=False)
        return self._operand("basis") @ (V * self._operand("scales"))

    def _gradient_coords(self, G: np.ndarray) -> np.ndarray:
        """The gradient in V from the gradient in W: T^T G."""
        if self.basis is None:
            return scipy.linalg.solve_triangular(self._operand("factor"), G, lower=True, trans="N", check_finite=False)
        return (self._operand("basis").T @ G) * self._operand("scales")

    def to_coords(self, W: np.ndarray) -> np.ndarray:
        if self.basis is None:
            assert self.factor is not None
            return self.factor.T @ W
        assert self.scales is not None
        return (self.basis.T @ W) / self.scales

    def nll_and_probs(self, W: np.ndarray) -> tuple[float, np.ndarray]:
        return self._nll(self.Xb @ W)

    def final_nll_and_probs(self, W: np.ndarray) -> tuple[float, np.ndarray]:
        """``nll_and_probs`` at ``W``, the weights ``_map`` returned: the last evaluation's own (handed over, once)
        when it was at that point, as a warm refit's is, else one product."""
        last, self._last = self._last, None
        if last is None or self.final is None or not np.array_equal(last[0], self.final):
            return self.nll_and_probs(W)
        _, nll, residual = last
        residual += self._operand("targets")
        return nll, residual

    def _nll(self, F: np.ndarray) -> tuple[float, np.ndarray]:
        """Negative log likelihood (float64) and probabilities of logits F (N, K), which it overwrites."""
        if self.multi_label:
            targets = self._operand("targets")
            ll = targets * log_sigmoid(F) + (1 - targets) * log_sigmoid(-F)
            return -float(np.sum(ll, dtype=np.float64)), sigmoid(F)
        # log softmax with one exp: nll = sum_n (log sum_k e^(F_nk - m_n) - (F_ny - m_n)).
        F -= F.max(axis=1, keepdims=True)
        picked = float(np.sum(F[np.arange(self.n), self.labels], dtype=np.float64))
        np.exp(F, out=F)
        total = F.sum(axis=1, keepdims=True)
        nll = float(np.sum(np.log(total), dtype=np.float64)) - picked
        F /= total
        return nll, F

    def __call__(self, v: np.ndarray) -> tuple[float, np.ndarray]:
        value, grad = self._evaluate(v.reshape(self.shape))
        if self.single and not self.stay_single and np.abs(grad).max() < SINGLE_UNTIL:
            # Close to the optimum float32 rounding would stall the line searches: from here on,
            # float64 (L-BFGS keeps its memory; only this step compares a float32 value with a
            # float64 one).
            self.single = False
            value, grad = self._evaluate(v.reshape(self.shape))
        self.last_gradient = float(np.abs(grad).max())
        return value, grad

    def _evaluate(self, V: np.ndarray) -> tuple[float, np.ndarray]:
        W = self.to_weights(V.astype(np.float32) if self.single else V)
        X = self._operand("Xb")
        nll, P = self._nll(X @ W)
        lam = self.prior_precision
        value = (nll + 0.5 * lam * float(np.sum(W * W, dtype=np.float64))) / self.n
        P -= self._operand("targets")
        grad = X.T @ P
        grad += lam * W
        self._last = (np.array(V, dtype=np.float64).ravel(), nll, P)
        return value, self._gradient_coords(grad).ravel().astype(np.float64) / self.n


LBFGS_OPTIONS = {"maxiter": 1000, "gtol": 1e-7, "ftol": 1e-11, "maxcor": 20}
# Largest preconditioned gradient entry below which the objective switches from float32 to float64.
# Float32 rounding puts its gradient's noise floor a little below this; lower, the float32 line
# searches stall (then _map restarts in float64), higher, a 10k-label refit makes most of its
# steps in float64 (K = 64: 7 of 10 evaluations in float32 at 1e-6, 4 of 10 at 3e-6).
SINGLE_UNTIL = 1e-6


# A warm refit runs in the previous posterior's coordinates (``_Objective`` with ``warm``: a unit step there is about
# one posterior standard deviation of the weights, and the preconditioned Hessian is near the identity). It stops
# once both the last L-BFGS step and the gradient of the summed objective are below this many standard deviations
# in every coordinate, instead of creeping on to LBFGS_OPTIONS's tolerance for a change no prediction shows (the
# step test is for directions where the curvature changed, in which a small gradient can still be far from the
# optimum). Measured against the tight optimum on 20k-item pools, 8 cases (hwu64 at 1,000 and 8,894 labels, trec's
# 50 fine labels at 1,000 and 5,000, trec, sms_spam, 64 synthetic classes at 1,000, 150 at 10,000): logit means
# within 0.0035 posterior sd on average and 0.033 at most, probabilities within 0.003, the same top class for 99.93 %
# of items or more, BALD scores correlated 0.9987 or more (top 200: 192-200 shared), against 0.30-0.97 (top 200:
# 0-95 shared) between two draws of BALD's own samples on one model. The refit took 1.09 -> 0.42 s CPU on hwu64 at
# 8,894 labels, 0.40 -> 0.15 s on trec's fine labels at 5,000, 0.64 -> 0.35 s on the 150 classes. Where the
# curvature moved a lot (a near-separable multi-label test set at lambda 0.03) it ends up to 0.2 sd away, its
# probabilities within 0.002. Cold fits and the evidence search keep LBFGS_OPTIONS's tolerance.
WARM_WITHIN_SD = 0.01


def _map(objective: _Objective, W0: np.ndarray, *, within_sd: float | None = None) -> tuple[np.ndarray, int]:
    """MAP weights from ``W0`` and the number of L-BFGS iterations it took.

    Steps far from the optimum evaluate in float32 (half the cost); near it (``SINGLE_UNTIL``)
    in float64, to the same tolerance as an all-float64 run, so the optimum is unchanged. If
    L-BFGS stopped before the switch (a float32 line search that could not make progress), a
    float64 run finishes from there. ``within_sd`` (warm refits, ``WARM_WITHIN_SD``): also stop once the last
    step and the summed objective's gradient are both below it in every coordinate. Such a refit stays in float32
    to the end: its stopping point is orders of magnitude coarser than float32's rounding, and the switch cost one
    float64 evaluation (about two float32 ones) at the end of every refit measured.
    """
    callback = None
    if within_sd is not None and within_sd > 0:
        objective.stay_single = True
        last: list[np.ndarray] = []

        def callback(intermediate_result: scipy.optimize.OptimizeResult) -> None:
            x = np.array(intermediate_result.x)
            step = float(np.abs(x - last[0]).max()) if last else math.inf
            last[:] = [x]
            if step < within_sd and objective.n * objective.last_gradient < within_sd:
                raise StopIteration

    objective.single = True
    try:
        result = scipy.optimize.minimize(objective, objective.to_coords(W0).ravel(), jac=True, method="L-BFGS-B",
                                         options=LBFGS_OPTIONS, callback=callback)
        steps = int(result.nit)
        if objective.single and result.status != 99:  # 99: our callback stopped it, close enough
            objective.single = objective.stay_single = False
            start = result.x if np.isfinite(result.x).all() else objective.to_coords(W0).ravel()
            result = scipy.optimize.minimize(objective, start, jac=True, method="L-BFGS-B", options=LBFGS_OPTIONS,
                                             callback=callback)
            steps += int(result.nit)
    finally:
        objective.single = objective.stay_single = False
    W = objective.to_weights(result.x.reshape(objective.shape))
    if not np.isfinite(W).all() or not np.isfinite(result.fun):
        raise ModelFitError(f"optimisation diverged ({result.message})")
    objective.final = result.x
    return W, steps


def _kronecker_factors(Xb: np.ndarray, P: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(U, a, g): the input factor's eigenvectors and eigenvalues and the output factors.

    Output k's GGN block H_k = X^T diag(h_k) X, h_k = p_k (1 - p_k) (the diagonal of the softmax
    Hessian, or each sigmoid's own), is approximated by g_k A. A = X^T diag(w) X with
    w_n = sum_k g0_k h_nk / |g0|^2 and g0_k = tr H_k is one step of the alternating least-squares
    fit of sum_k |H_k - g_k A|_F^2 from A = I; g_k = tr H_k / tr A keeps each output's total
    curvature. Cost: one N D^2 product and one D^3 eigen-decomposition, whatever K is.
    """
    h = P * (1.0 - P)
    norms = np.einsum("nd,nd->n", Xb, Xb)
    traces = norms @ h  # (K,) tr H_k = sum_n h_nk |x_n|^2
    denominator = float(traces @ traces)
    if denominator <= 0.0:
        # Every probability is 0 or 1 (to double precision): no curvature anywhere.
        d1 = Xb.shape[1]
        return np.eye(d1), np.zeros(d1), np.zeros(P.shape[1])
    weight = (h @ traces) / denominator  # (N,)
    # float32 and a symmetric rank-N update (half the flops of a general product). The row-major
    # N x D operand is a column-major D x N one as it is, so BLAS reads it without a copy (a
    # column-major N x D copy cost a third of a 10k-label refit's curvature step).
    scaled = Xb.astype(np.float32)
    scaled *= np.sqrt(weight).astype(np.float32)[:, None]
    S = scipy.linalg.blas.ssyrk(1.0, scaled.T, trans=0, lower=1).astype(np.float64)  # lower triangle
    A = S + np.tril(S, -1).T
    a, U = np.linalg.eigh(A)
    a = np.clip(a, 0.0, None)
    return U, a, traces / max(float(np.dot(weight, norms)), 1e-300)


def _log_evidence(nll: float, W: np.ndarray, a: np.ndarray, g: np.ndarray, lam: float) -> float:
    # log det of the precision: a sum over the (direction, output) eigenvalue pairs.
    logdet = float(np.sum(np.log(np.outer(a, g) + lam)))
    return float(-nll - 0.5 * lam * np.sum(W * W) + 0.5 * W.size * math.log(lam) - 0.5 * logdet)


def _searched_at(posterior: Posterior) -> int:
    """Label count at the posterior's last prior-precision search (older artifacts: its own)."""
    return int(posterior.info.get("evidence_n", posterior.n_train))


def _within(n: int, searched_at: int, growth: float) -> bool:
    """The label count ``n`` has grown (or shrunk) by less than ``growth`` since ``searched_at``."""
    return n < growth * searched_at <= growth**2 * n


def _with_searched(warm: Posterior, searched: tuple[float, int], n: int) -> Posterior:
    """``warm`` with the prior precision searched off the update's path, if that search was made at a label count
    nearer to ``n`` than the warm start's own (in ratio); else ``warm`` unchanged."""
    lam, at = float(searched[0]), int(searched[1])
    if not (np.isfinite(lam) and lam > 0 and at > 0):
        return warm
    if abs(math.log(n / at)) >= abs(math.log(n / max(_searched_at(warm), 1))):
        return warm
    return replace(warm, prior_precision=lam, info={**warm.info, "evidence_n": at})


def search_due(posterior: Posterior) -> bool:
    """A ``defer_search`` refit kept a prior precision searched at too different a label count: run
    ``search_prior`` off the update's path and hand its result to the next refit (``searched``)."""
    return bool(posterior.info.get("search_due", 0))


def search_prior(X: np.ndarray, y: np.ndarray, *, n_classes: int | None = None, multi_label: bool = False,
                 warm_start: Posterior | None = None) -> Posterior:
    """The refit with the evidence search a refit would have run on these labels (from the same start: the warm
    mean, lambda 1). Costs what the search costs in ``fit``. ``searched_of`` of it is a later refit's
    ``searched``; the app's report job also serves it in place of the deferred refit (same labels, fresh lambda)."""
    if multi_label:
        return fit_multilabel(X, y, init_prior_precision=1.0, warm_start=warm_start)
    if n_classes is None:
        raise ModelFitError("search_prior needs n_classes for a single-label model")
    return fit(X, y, n_classes=n_classes, init_prior_precision=1.0, warm_start=warm_start)


def searched_of(posterior: Posterior) -> tuple[float, int]:
    """``(prior precision, label count)`` of a ``search_prior`` result, as ``fit``'s ``searched`` takes it."""
    return float(posterior.prior_precision), int(posterior.n_train)


def _compatible(warm: Posterior | None, dim: int, n_outputs: int, multi_label: bool) -> Posterior | None:
    if warm is None or warm.dim != dim or warm.n_classes != n_outputs or warm.multi_label != multi_label:
        return None
    if warm.in_basis.shape != (dim + 1, dim + 1) or warm.out_eig.shape != (n_outputs,):
        return None
    if not (np.isfinite(warm.in_basis).all() and np.isfinite(warm.in_eig).all() and np.isfinite(warm.out_eig).all()):
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
    bias_feature: float | None = None,
    defer_search: bool = False,
    searched: tuple[float, int] | None = None,
) -> Posterior:
    c = BIAS_FEATURE if bias_feature is None else float(bias_feature)
    if not (np.isfinite(c) and c > 0):
        raise ModelFitError(f"bias feature must be a positive number, got {bias_feature}")
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
    Xb[:, -1] = c
    warm = _compatible(warm_start, X.shape[1], targets.shape[1], multi_label)
    n = int(X.shape[0])
    if warm is not None and searched is not None:
        warm = _with_searched(warm, searched, n)
    # The previous factors precondition only a fit on about as many labels: a cross-validation
    # fold on a subsample has far less curvature than the model it starts from, and there the
    # shared data-bound preconditioner converges faster (trec, 5k labels: 112 steps against 178).
    similar = warm is not None and PRECONDITION_RANGE[0] <= X.shape[0] / max(warm.n_train, 1) <= PRECONDITION_RANGE[1]
    objective = _Objective(Xb, targets.astype(np.float64), multi_label, warm if similar else None)
    if init_mean is not None and init_mean.shape == objective.shape:
        W = init_mean.copy()
    elif warm is not None:
        W = warm.mean_for(shift, scale, c)
    else:
        W = np.zeros(objective.shape)
    searched_at = n
    due = False
    if prior_precision is not None:
        lam, search = float(prior_precision), False
    elif init_prior_precision is not None:
        lam, search = float(init_prior_precision), True
    elif warm is not None and _within(n, _searched_at(warm), SEARCH_GROWTH):
        lam, search = warm.prior_precision, False
        searched_at = _searched_at(warm)
    elif warm is not None and defer_search and _within(n, _searched_at(warm), DEFERRED_SEARCH_GROWTH):
        lam, search, due = warm.prior_precision, False, True
        searched_at = _searched_at(warm)
    else:
        # Cold, or the labels grew (or shrank) a lot since the last search: the same search a
        # cold fit runs, from the same start, so warm and cold fits agree on lambda.
        lam, search = 1.0, True
    if not (np.isfinite(lam) and lam > 0):
        raise ModelFitError(f"prior precision must be a positive number, got {lam}")
    objective.set_prior_precision(lam)
    W, steps = _map(objective, W, within_sd=WARM_WITHIN_SD if similar and not search else None)
    maps = 1
    if search and max_evidence_iterations > 0:
        # Eigenvalues of the data Hessian at the first MAP; later steps reuse them, which
        # costs little accuracy (the fixed point moves lambda, the curvature moves less)
        # and saves an N D^2 product and an eigen-decomposition per step.
        _, P = objective.nll_and_probs(W)
        _, a, g = _kronecker_factors(Xb, P)
        eigs = np.outer(a, g).ravel()
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
    nll, P = objective.final_nll_and_probs(W)
    U, a, g = _kronecker_factors(Xb, P)
    if not (np.isfinite(U).all() and np.isfinite(a).all() and np.isfinite(g).all() and np.isfinite(W).all()):
        raise ModelFitError("fit produced non-finite values")
    return Posterior(
        mean=W,
        in_basis=U,
        in_eig=a,
        out_eig=g,
        prior_precision=lam,
        shift=shift,
        scale=scale,
        multi_label=multi_label,
        log_evidence=_log_evidence(nll, W, a, g, lam),
        n_train=n,
        bias_feature=c,
        info={"evidence_iterations": maps, "evidence_n": searched_at, "lbfgs_iterations": steps,
              "warm_start": int(warm is not None), "search_due": int(due)},
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
    bias_feature: float | None = None,
    defer_search: bool = False,
    searched: tuple[float, int] | None = None,
) -> Posterior:
    """Laplace posterior of softmax regression on embeddings ``X`` (N, D) and labels ``y`` in [0, n_classes).

    Classes of the taxonomy without any example yet are allowed (the prior covers them); at
    least two distinct classes must be present. A class with a single example is fine.

    ``warm_start``: the previous model of the same outputs (e.g. the last ModelVersion's
    artifact). Its mean starts the MAP, its precision factors precondition it, and its prior
    precision is kept (no evidence search) until the labels have grown or shrunk by half since
    it was searched for. Same optimum as a cold fit at that prior precision; an incompatible
    warm start (other dimension or outputs) is ignored.

    ``bias_feature``: the design's bias column (default ``BIAS_FEATURE``); a warm start made with
    another one is re-expressed in this one.

    ``defer_search``: a warm refit whose labels grew past ``SEARCH_GROWTH`` keeps the prior
    precision anyway (up to ``DEFERRED_SEARCH_GROWTH``) and marks the search due (``search_due``);
    ``searched``: a ``search_prior`` result made off the path, taken in place of the warm start's
    prior precision when it was searched at a label count nearer this one. The app's model updates
    use both, so no update waits for a search.
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
        bias_feature=bias_feature,
        defer_search=defer_search,
        searched=searched,
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
    bias_feature: float | None = None,
    defer_search: bool = False,
    searched: tuple[float, int] | None = None,
) -> Posterior:
    """Laplace posterior of independent per-label sigmoid regressions; ``Y`` is a 0/1 (N, L) matrix.

    ``warm_start``, ``defer_search`` and ``searched`` as in ``fit``.
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
        bias_feature=bias_feature,
        defer_search=defer_search,
        searched=searched,
    )

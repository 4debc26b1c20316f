"""Calibration of a fitted posterior: a temperature on the logits and a scale on the covariance,
fitted on cross-validated predictions. Pure math on arrays (no Django).
"""
from __future__ import annotations

import math

import numpy as np
import scipy.optimize

from learning import bayes
from learning.folds import stratified_folds

# Bounds keep a calibration fitted on a few dozen held-out predictions from going wild.
TEMPERATURE_BOUNDS = (0.25, 10.0)
VARIANCE_SCALE_BOUNDS = (1e-3, 3.0)


def fit_calibration(
    mu: np.ndarray, var: np.ndarray, y: np.ndarray, *, multi_label: bool = False
) -> tuple[float, float]:
    """(temperature, variance_scale) minimising the log loss of held-out (cross-validated) logits.

    Why it exists: with an isotropic prior over 385 weights per class, the evidence-optimal
    Laplace posterior is far too wide in directions the data never touched, and the plain
    probit predictive is under-confident (ECE 0.1-0.3 on our sets), while the posterior mean
    alone is close to calibrated. Scaling the posterior covariance by c (a tempered posterior)
    and the logits by 1/T, both fitted on cross-validated predictions, brings ECE under 0.05.
    The same c scales the weight samples used by BALD, so the two stay consistent.
    """
    y = np.asarray(y)
    mu = np.asarray(mu, dtype=np.float64)
    var = np.asarray(var, dtype=np.float64)
    if multi_label:
        residual_base = y.astype(np.float64)
        scale = 1.0 / y.size
    else:
        residual_base = np.zeros_like(mu)
        residual_base[np.arange(len(y)), y] = 1.0
        scale = 1.0 / len(y)

    def loss_and_grad(theta: np.ndarray) -> tuple[float, np.ndarray]:
        # Analytic gradient in (log T, log c): L-BFGS-B needs ~15 evaluations where Nelder-Mead
        # needed ~100, and this runs on every model update.
        t2, c = math.exp(2 * theta[0]), math.exp(theta[1])
        s = t2 + bayes.PI_OVER_8 * c * var
        z = mu / np.sqrt(s)
        if multi_label:
            log_lik = residual_base * bayes.log_sigmoid(z) + (1 - residual_base) * bayes.log_sigmoid(-z)
            value = -float(np.sum(log_lik)) * scale
            dz = (bayes.sigmoid(z) - residual_base) * scale
        else:
            logp = bayes.log_softmax(z)
            value = -float(np.sum(logp * residual_base)) * scale
            dz = (np.exp(logp) - residual_base) * scale
        dz_ds = dz * (-0.5 * z / s)
        return value, np.array([float(np.sum(dz_ds)) * 2 * t2, float(np.sum(dz_ds * var)) * bayes.PI_OVER_8 * c])

    bounds = [(math.log(lo), math.log(hi)) for lo, hi in (TEMPERATURE_BOUNDS, VARIANCE_SCALE_BOUNDS)]
    best = min(
        (scipy.optimize.minimize(loss_and_grad, np.array(start), jac=True, method="L-BFGS-B", bounds=bounds,
                                 options={"ftol": 1e-10, "gtol": 1e-7})
         for start in ([0.0, math.log(0.1)], [0.0, math.log(1.0)])),
        key=lambda r: r.fun,
    )
    return math.exp(float(best.x[0])), math.exp(float(best.x[1]))


def calibrate(
    posterior: bayes.Posterior,
    X: np.ndarray,
    y: np.ndarray,
    *,
    folds: int = 3,
    rng: np.random.Generator | None = None,
) -> bayes.Posterior:
    """Set ``posterior``'s temperature and variance scale from ``folds``-fold cross-validated logits.

    Refits reuse the posterior's prior precision (no evidence search), so this costs about
    ``folds`` fixed-prior fits. With too few examples to hold any out, the posterior is left
    as it is. Returns the same object for chaining.
    """
    rng = rng or np.random.default_rng(0)
    X = np.asarray(X)
    y = np.asarray(y)
    n = X.shape[0]
    if n < 2 * folds:
        return posterior
    assignment = stratified_folds(y, folds, rng, multi_label=posterior.multi_label)
    mus, vars_, ys = [], [], []
    for fold in range(folds):
        held = assignment == fold
        try:
            # The full model starts each fold's MAP and preconditions it: same optimum, fewer steps.
            if posterior.multi_label:
                part = bayes.fit_multilabel(X[~held], y[~held], prior_precision=posterior.prior_precision,
                                            warm_start=posterior)
            else:
                part = bayes.fit(X[~held], y[~held], n_classes=posterior.n_classes,
                                 prior_precision=posterior.prior_precision, warm_start=posterior)
        except bayes.ModelFitError:
            continue  # a fold left with one class: skip it, the others still inform T and c
        mu, var = part.logit_mean_var(X[held])
        mus.append(mu)
        vars_.append(var)
        ys.append(y[held])
    if not mus or sum(len(v) for v in ys) < 10:
        return posterior
    t, c = fit_calibration(
        np.concatenate(mus), np.concatenate(vars_), np.concatenate(ys), multi_label=posterior.multi_label
    )
    posterior.temperature = t
    posterior.variance_scale = c
    posterior.info["calibration_folds"] = folds
    return posterior

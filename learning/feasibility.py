"""Know sooner: where the learning curve is heading, and when more labels stop paying.

Pure math on arrays (no Django). The learning curve (each model version's cross-validated
macro-F1 against the number of labels it was trained on) is fitted with an inverse power law,

    f(n) = a - b * (n / n_max) ** (-c),     0 <= a <= 1, b >= 0, c > 0,

the usual shape of learning curves (Figueroa et al. 2012, "Predicting sample size required for
classification performance"): rising, ever more slowly, towards a ceiling `a`. Scaling n by the
largest n seen keeps `b` on the scale of the remaining gap, so one set of bounds fits every project.

The interval is a bootstrap over the curve's points (pairs resampled with replacement, refitted
from the full fit): dropping the last points or the first changes the extrapolation, which is
exactly the uncertainty of a projection. Each bootstrap prediction also gets one draw of the
fit's own scatter, since what the curve will show later is a measured, noisy value too.
`benchmarks/projection_bench.py` measures how often the interval holds the later value.
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import scipy.optimize

# Bounds of (a, b, c): a ceiling within [0, 1]; c in a range that covers learning curves from
# nearly flat (log-like growth) to ones that saturate within a few doublings.
LOWER = np.array([0.0, 0.0, 0.05])
UPPER = np.array([1.0, 10.0, 3.0])

MIN_POINTS = 4  # fewer points than this cannot tell a ceiling from a slope
MIN_SPREAD = 1.5  # the largest n must be at least this many times the smallest
LEVEL = 0.8  # the interval's nominal coverage
N_BOOTSTRAP = 200
GAIN_STEP = 100  # the "when to stop" signal is the gain per this many more labels


@dataclass(frozen=True)
class Estimate:
    """A projected value with its interval (macro-F1 units, 0-1)."""

    value: float
    low: float
    high: float


@dataclass(frozen=True)
class Projection:
    """The fitted curve, the projection at multiples of the labels now, and the gain per 100 labels."""

    n_now: int
    ceiling: float
    params: tuple[float, float, float]
    level: float
    at: dict[int, Estimate]  # number of labels -> projected macro-F1
    gain_per_step: Estimate  # expected macro-F1 gain from GAIN_STEP more labels (0-1 units)
    band: list[dict[str, float]] = field(default_factory=list)  # {n, value, low, high} to draw

    def gain_points(self) -> float:
        """The gain per GAIN_STEP labels in macro-F1 points (percentage points)."""
        return 100.0 * self.gain_per_step.value

    def should_stop(self, threshold_points: float) -> bool:
        """More labels are expected to add less than `threshold_points` macro-F1 points per GAIN_STEP."""
        return self.gain_points() < threshold_points


class NotEnoughCurve(ValueError):
    """The curve is too short to fit; the message says what is missing."""


def power_law(n: np.ndarray, a: float, b: float, c: float, *, scale: float) -> np.ndarray:
    return a - b * np.power(np.asarray(n, dtype=np.float64) / scale, -c)


def _fit(x: np.ndarray, y: np.ndarray, sigma: np.ndarray | None, p0: np.ndarray) -> np.ndarray:
    """Least-squares (a, b, c) on x = n / n_max; raises RuntimeError when it does not converge."""

    def f(x: np.ndarray, a: float, b: float, c: float) -> np.ndarray:
        return a - b * np.power(x, -c)

    def jac(x: np.ndarray, a: float, b: float, c: float) -> np.ndarray:
        p = np.power(x, -c)
        return np.stack([np.ones_like(x), -p, b * p * np.log(x)], axis=1)

    def at_ceiling(x: np.ndarray, b: float, c: float) -> np.ndarray:
        return 1.0 - b * np.power(x, -c)

    def at_ceiling_jac(x: np.ndarray, b: float, c: float) -> np.ndarray:
        p = np.power(x, -c)
        return np.stack([-p, b * p * np.log(x)], axis=1)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # covariance warnings: only the point estimate is used
        # Levenberg-Marquardt (MINPACK) first, ten times faster than the bounded solver. A free fit
        # that leaves the bounds mostly wants a ceiling above 1 (a curve still rising steadily): then
        # the ceiling is 1 and only (b, c) are fitted. The bounded solver is the last resort.
        try:
            params, _ = scipy.optimize.curve_fit(f, x, y, p0=p0, sigma=sigma, jac=jac, method="lm", maxfev=100)
        except RuntimeError:
            params = LOWER - 1.0
        if np.all(params >= LOWER) and np.all(params <= UPPER):
            return np.asarray(params, dtype=np.float64)
        try:
            bc, _ = scipy.optimize.curve_fit(at_ceiling, x, y, p0=np.clip(p0[1:], LOWER[1:] + 1e-3, UPPER[1:]),
                                             sigma=sigma, jac=at_ceiling_jac, method="lm", maxfev=100)
            params = np.array([1.0, *bc])
        except RuntimeError:
            params = LOWER - 1.0
        if np.all(params >= LOWER) and np.all(params <= UPPER):
            return np.asarray(params, dtype=np.float64)
        params, _ = scipy.optimize.curve_fit(f, x, y, p0=np.clip(p0, LOWER + 1e-9, UPPER - 1e-9), sigma=sigma,
                                             bounds=(LOWER, UPPER), jac=jac, method="trf", max_nfev=200)
    return np.asarray(params, dtype=np.float64)


def _starts(y: np.ndarray) -> list[np.ndarray]:
    top = float(np.max(y))
    return [np.array([min(top + 0.05, 1.0), 0.05, 0.5]), np.array([1.0, max(1.0 - top, 0.01), 0.2]),
            np.array([min(top + 0.01, 1.0), 0.02, 1.5])]


def _best_fit(x: np.ndarray, y: np.ndarray, sigma: np.ndarray | None) -> np.ndarray:
    best, best_cost = None, np.inf
    weights = 1.0 if sigma is None else 1.0 / sigma**2
    for p0 in _starts(y):
        try:
            params = _fit(x, y, sigma, p0)
        except (RuntimeError, ValueError):
            continue
        cost = float(np.sum(weights * (y - (params[0] - params[1] * np.power(x, -params[2]))) ** 2))
        if cost < best_cost:
            best, best_cost = params, cost
    if best is None:
        raise NotEnoughCurve("the learning curve could not be fitted")
    return best


def check_curve(n_labels: Sequence[float], values: Sequence[float]) -> np.ndarray:
    """Which points of the curve can be used (a mask), or NotEnoughCurve saying why it cannot be projected yet."""
    n = np.asarray(n_labels, dtype=np.float64)
    y = np.asarray(values, dtype=np.float64)
    keep = np.isfinite(n) & np.isfinite(y) & (n > 0)
    n = n[keep]
    distinct = np.unique(n)
    if len(n) < MIN_POINTS or len(distinct) < 3:
        raise NotEnoughCurve(f"{MIN_POINTS} model versions with a quality report are needed "
                             f"(this curve has {len(distinct)})")
    if distinct[-1] < MIN_SPREAD * distinct[0]:
        raise NotEnoughCurve(f"the curve spans {int(distinct[0])}–{int(distinct[-1])} labels; a projection needs "
                             f"the largest to be {MIN_SPREAD:g}× the smallest")
    return keep


def project(
    n_labels: Sequence[float],
    values: Sequence[float],
    *,
    n_now: int | None = None,
    multiples: Sequence[float] = (2.0, 5.0),
    sigma: Sequence[float] | None = None,
    level: float = LEVEL,
    n_bootstrap: int = N_BOOTSTRAP,
    band_points: int = 40,
    seed: int = 0,
) -> Projection:
    """Fit the curve and project macro-F1 at `multiples` of `n_now` (default: the largest n of the curve).

    `sigma` (optional, one per point) weighs the fit, e.g. the width of each point's own
    confidence interval, so a version evaluated on few labels counts for less.
    Raises NotEnoughCurve when the curve is too short to say anything.
    """
    keep = check_curve(n_labels, values)
    n = np.asarray(n_labels, dtype=np.float64)[keep]
    y = np.asarray(values, dtype=np.float64)[keep]
    s: np.ndarray | None = None
    if sigma is not None:
        s = np.asarray(sigma, dtype=np.float64)[keep]
        if not np.all(np.isfinite(s)) or np.any(s <= 0):
            s = None  # a point without its own interval: weigh them all alike
    scale = float(n.max())
    x = n / scale
    params = _best_fit(x, y, s)
    now = int(n_now if n_now is not None else scale)
    targets = [int(round(now * m)) for m in multiples]
    grid = np.unique(np.concatenate([
        np.geomspace(n.min(), max(targets + [now]), band_points), [now, now + GAIN_STEP], targets]))

    def curve(p: np.ndarray) -> np.ndarray:
        return p[0] - p[1] * np.power(grid / scale, -p[2])

    fitted = curve(params)
    residual = y - (params[0] - params[1] * np.power(x, -params[2]))
    spread = float(np.sqrt(np.sum(residual**2) / max(len(y) - 3, 1)))
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(n_bootstrap):
        idx = rng.integers(0, len(n), size=len(n))
        if len(np.unique(n[idx])) < 3:
            continue
        try:
            p = _fit(x[idx], y[idx], None if s is None else s[idx], params)
        except (RuntimeError, ValueError):
            continue
        draws.append(curve(p))
    samples = np.array(draws) if draws else fitted[None, :]
    noisy = samples + rng.normal(0.0, spread, size=samples.shape)
    tail = (1.0 - level) / 2.0
    low = np.clip(np.quantile(noisy, tail, axis=0), 0.0, 1.0)
    high = np.clip(np.quantile(noisy, 1.0 - tail, axis=0), 0.0, 1.0)
    value = np.clip(fitted, 0.0, 1.0)
    where = {int(round(g)): i for i, g in enumerate(grid)}
    at = {t: Estimate(float(value[where[t]]), float(low[where[t]]), float(high[where[t]])) for t in targets}
    # The gain is a difference along one curve: each bootstrap curve's own step, no added scatter.
    steps = samples[:, where[now + GAIN_STEP]] - samples[:, where[now]]
    gain = Estimate(float(fitted[where[now + GAIN_STEP]] - fitted[where[now]]),
                    float(np.quantile(steps, tail)), float(np.quantile(steps, 1.0 - tail)))
    band = [{"n": float(g), "value": float(value[i]), "low": float(low[i]), "high": float(high[i])}
            for i, g in enumerate(grid)]
    return Projection(n_now=now, ceiling=float(params[0]), params=(float(params[0]), float(params[1]),
                      float(params[2])), level=level, at=at, gain_per_step=gain, band=band)

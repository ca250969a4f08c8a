"""The pointwise reference mapping a U-Net must beat (issue item 6) and the residual correction of
Ribeiro (2025, appendix C).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from dustjax.polaris.metrics import mse


def _quantile_bins(x, num_bins):
    edges = np.unique(np.quantile(x, np.linspace(0.0, 1.0, num_bins + 1)))
    index = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, len(edges) - 2)
    return edges, index


def _isotonic(y, weights):
    """Pool-adjacent-violators: the non-decreasing fit minimising sum w (fit - y)^2."""
    values, sizes, counts = [], [], []
    for v, w in zip(y, weights, strict=True):
        values.append(v)
        sizes.append(w)
        counts.append(1)
        while len(values) > 1 and values[-2] > values[-1]:
            w_sum = sizes[-2] + sizes[-1]
            merged = (values[-2] * sizes[-2] + values[-1] * sizes[-1]) / w_sum
            c = counts[-2] + counts[-1]
            del values[-1], sizes[-1], counts[-1]
            values[-1], sizes[-1], counts[-1] = merged, w_sum, c
    return np.repeat(values, counts)


@dataclasses.dataclass(frozen=True)
class PointwiseReference:
    """A lookup table y = f(x) from log10 N to log10 n, linear between knots, flat outside.

    A map from each pixel's own column density to its target ignores all spatial context: the
    U-Net must beat it (issue item 6). `fit` offers the binned mean (the empirical conditional
    mean, MSE-optimal for a pointwise map given enough data), the binned median and an isotonic
    (monotone least-squares) fit over fine bins. For <n>_V = N / L the target is an exact
    function of N, so the reference is (nearly) perfect there; compare on <n>_M or max n.
    """

    knots_x: np.ndarray
    knots_y: np.ndarray
    method: str

    @classmethod
    def fit(cls, log10_column, log10_target, method: str = "binned_mean", num_bins: int = 256):
        x = np.asarray(log10_column, np.float64).ravel()
        y = np.asarray(log10_target, np.float64).ravel()
        keep = np.isfinite(x) & np.isfinite(y)
        x, y = x[keep], y[keep]
        if len(x) < 2:
            raise ValueError("need at least two finite pixels to fit the pointwise reference")
        edges, index = _quantile_bins(x, num_bins)
        count = np.bincount(index, minlength=len(edges) - 1)
        used = count > 0
        centres = np.bincount(index, weights=x, minlength=len(count))[used] / count[used]
        if method == "binned_mean":
            knots = np.bincount(index, weights=y, minlength=len(count))[used] / count[used]
        elif method == "binned_median":
            knots = np.array([np.median(y[index == b]) for b in np.flatnonzero(used)])
        elif method == "isotonic":
            means = np.bincount(index, weights=y, minlength=len(count))[used] / count[used]
            knots = _isotonic(means, count[used].astype(np.float64))
        else:
            raise ValueError(
                f"unknown method {method!r}: use binned_mean, binned_median or isotonic"
            )
        return cls(np.asarray(centres), np.asarray(knots, np.float64), method)

    def __call__(self, log10_column):
        return np.interp(np.asarray(log10_column, np.float64), self.knots_x, self.knots_y)

    def to_dict(self) -> dict:
        return {"method": self.method, "knots_x": self.knots_x, "knots_y": self.knots_y}

    @classmethod
    def from_dict(cls, d: dict) -> PointwiseReference:
        return cls(np.asarray(d["knots_x"]), np.asarray(d["knots_y"]), d["method"])


def best_pointwise_reference(
    train_log10_column, train_log10_target, val_log10_column, val_log10_target, num_bins=256
) -> tuple[PointwiseReference, dict[str, float]]:
    """Fit every reference method on the training pixels; return the one with the lowest
    validation MSE (the strongest baseline) and the validation MSE of each."""
    scores, fits = {}, {}
    for method in ("binned_mean", "binned_median", "isotonic"):
        fits[method] = PointwiseReference.fit(
            train_log10_column, train_log10_target, method, num_bins
        )
        scores[method] = mse(fits[method](val_log10_column), val_log10_target)
    best = min(scores, key=scores.get)
    return fits[best], scores


def _moving_average(values, window):
    if window <= 1:
        return values
    kernel = np.ones(window)
    pad = window // 2
    padded = np.pad(values, (pad, window - 1 - pad), mode="edge")
    return np.convolve(padded, kernel, mode="valid") / window


@dataclasses.dataclass(frozen=True)
class ResidualCorrection:
    """Appendix C: remove the mean residual as a function of the predicted value.

    Fitted on validation predictions: residuals r = pred - true are sorted by pred, averaged in
    groups of `values_per_bin` (equal-count bins), smoothed by a moving average of `window` bins;
    at inference the baseline is interpolated linearly at each prediction and subtracted.
    """

    knots_pred: np.ndarray
    baseline: np.ndarray

    @classmethod
    def fit(
        cls, pred, true, values_per_bin: int | None = None, num_bins: int = 100, window: int = 5
    ):
        pred = np.asarray(pred, np.float64).ravel()
        true = np.asarray(true, np.float64).ravel()
        keep = np.isfinite(pred) & np.isfinite(true)
        pred, true = pred[keep], true[keep]
        if len(pred) < 2:
            raise ValueError("need at least two finite pixels to fit the residual correction")
        if values_per_bin is not None:
            num_bins = max(1, len(pred) // values_per_bin)
        order = np.argsort(pred, kind="stable")
        groups = np.array_split(order, min(num_bins, len(pred)))
        centres = np.array([pred[g].mean() for g in groups])
        residual = np.array([(pred[g] - true[g]).mean() for g in groups])
        return cls(centres, _moving_average(residual, window))

    def __call__(self, pred):
        pred = np.asarray(pred, np.float64)
        return pred - np.interp(pred, self.knots_pred, self.baseline)

    def to_dict(self) -> dict:
        return {"knots_pred": self.knots_pred, "baseline": self.baseline}

    @classmethod
    def from_dict(cls, d: dict) -> ResidualCorrection:
        return cls(np.asarray(d["knots_pred"]), np.asarray(d["baseline"]))

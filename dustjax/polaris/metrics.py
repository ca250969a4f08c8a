"""POLARIS metrics (Ribeiro 2025, sect. 3.1): eq. 4 MSE, accuracy (eqs. 5-6), residuals per density
bin; all in log10 density.
"""

from __future__ import annotations

import numpy as np


def _masked(pred, true, mask):
    pred = np.asarray(pred, np.float64)
    true = np.asarray(true, np.float64)
    if pred.shape != true.shape:
        raise ValueError(f"prediction shape {pred.shape} != target shape {true.shape}")
    if mask is None:
        mask = np.isfinite(pred) & np.isfinite(true)
    return pred, true, np.asarray(mask, bool)


def mse(pred, true, mask=None) -> float:
    """Mean squared error (eq. 4) over valid pixels; inputs are log10 densities."""
    pred, true, mask = _masked(pred, true, mask)
    return float(np.mean((pred[mask] - true[mask]) ** 2))


def accuracy_per_image(pred, true, sigma: float, mask=None):
    """Acc_i = fraction of pixels of image i with |target - prediction| < sigma (eq. 5).

    pred, true: (B, H, W) log10 densities. Returns (B,).
    """
    pred, true, mask = _masked(pred, true, mask)
    if pred.ndim != 3:
        raise ValueError(f"expected (B, H, W) images, got shape {pred.shape}")
    hits = (np.abs(true - pred) < sigma) & mask
    return hits.sum(axis=(1, 2)) / np.maximum(mask.sum(axis=(1, 2)), 1)


def accuracy_curve(pred, true, sigmas, mask=None) -> dict:
    """Acc(sigma) = <Acc_i>_batch (eq. 6) and its standard deviation over images, per sigma."""
    per_image = np.stack([accuracy_per_image(pred, true, s, mask) for s in sigmas])
    return {
        "sigma": np.asarray(sigmas, np.float64),
        "mean": per_image.mean(axis=1),
        "std": per_image.std(axis=1),
    }


def residuals_per_bin(pred, true, bin_edges, mask=None) -> dict:
    """Statistics of residuals pred - true in bins of the true log10 density (fig. 11)."""
    pred, true, mask = _masked(pred, true, mask)
    residual = (pred - true)[mask]
    value = true[mask]
    index = np.digitize(value, bin_edges) - 1
    stats = {k: [] for k in ("count", "mean", "median", "std", "min", "max", "p16", "p84")}
    for b in range(len(bin_edges) - 1):
        r = residual[index == b]
        stats["count"].append(len(r))
        if len(r) == 0:
            for k in stats:
                if k != "count":
                    stats[k].append(np.nan)
            continue
        stats["mean"].append(r.mean())
        stats["median"].append(np.median(r))
        stats["std"].append(r.std())
        stats["min"].append(r.min())
        stats["max"].append(r.max())
        stats["p16"].append(np.percentile(r, 16))
        stats["p84"].append(np.percentile(r, 84))
    edges = np.asarray(bin_edges, np.float64)
    return {"bin_edges": edges, "bin_centres": 0.5 * (edges[1:] + edges[:-1])} | {
        k: np.asarray(v, np.float64) for k, v in stats.items()
    }

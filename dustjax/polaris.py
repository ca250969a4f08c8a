"""POLARIS part II: column density maps to mean volume density maps (Ribeiro 2025).

Everything between the simulator (`dustjax.sims.clouds`) and the U-Net: projections and targets
(eqs. 2-3), crop scores and acceptance (appendix B, eqs. 11-14), crop datasets, metrics (eq. 4,
accuracy eqs. 5-6, residuals per density bin), the pointwise reference mapping that a U-Net must
beat, residual correction (appendix C) and tiled prediction on large maps (appendix D).

Units: number densities n in cm^-3, column densities N in cm^-2, lengths in pc. Networks see
log10 quantities shifted by fixed constants (`model_input`, `model_target`); metrics are in log10.
Pure numpy/JAX: no tensorflow or astropy (those live at the I/O boundary in `experiments/`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np

PC_CM = 3.0856775814913673e18  # one parsec in cm

#: Names of the column density feature and the three targets in datasets and batches.
COLUMN = "column_density"
TARGETS = {
    "mass_weighted": "density_mass_weighted",  # <n>_M = sum n^2 / sum n (eq. 3)
    "volume_weighted": "density_volume_weighted",  # <n>_V = N / L (eq. 2)
    "max": "density_max",  # max_z n
}
FEATURE_NAMES = (COLUMN, *TARGETS.values())

#: Shifts that centre the network's log10 inputs and outputs near zero.
LOG10_COLUMN_SHIFT = 21.5  # log10(N / cm^-2)
LOG10_DENSITY_SHIFT = 2.5  # log10(n / cm^-3)


# --------------------------------------------------------------------------------------------
# Projections and targets (section 2.1, eqs. 2-3)
# --------------------------------------------------------------------------------------------


def project(density, axis: int, cell_size_pc: float) -> dict:
    """Column density and the three line-of-sight targets of a cube along one axis.

    Args:
      density: (nx, ny, nz) number density, cm^-3.
      axis: line-of-sight axis (0, 1 or 2); the image keeps the other two axes in order.
      cell_size_pc: cell size (pc); dz in cm = cell_size_pc * PC_CM.

    Returns:
      dict of 2D maps: column_density N = sum n dz (cm^-2); density_mass_weighted
      <n>_M = sum n^2 / sum n (eq. 3); density_volume_weighted <n>_V = mean n = N / L (eq. 2);
      density_max = max n (all cm^-3).
    """
    density = jnp.asarray(density)
    if density.ndim != 3:
        raise ValueError(f"density must be a 3D cube, got shape {density.shape}")
    if axis not in (0, 1, 2):
        raise ValueError(f"axis must be 0, 1 or 2, got {axis}")
    total = jnp.sum(density, axis=axis)
    return {
        COLUMN: total * (cell_size_pc * PC_CM),
        TARGETS["mass_weighted"]: jnp.sum(density**2, axis=axis) / total,
        TARGETS["volume_weighted"]: total / density.shape[axis],
        TARGETS["max"]: jnp.max(density, axis=axis),
    }


def model_input(column_density):
    """Network input: log10(N / cm^-2) - LOG10_COLUMN_SHIFT."""
    return jnp.log10(column_density) - LOG10_COLUMN_SHIFT


def model_target(density):
    """Network target: log10(n / cm^-3) - LOG10_DENSITY_SHIFT."""
    return jnp.log10(density) - LOG10_DENSITY_SHIFT


def log10_density_from_output(output):
    """Inverse of `model_target`'s shift: log10(n / cm^-3)."""
    return output + LOG10_DENSITY_SHIFT


# --------------------------------------------------------------------------------------------
# Crop scores and acceptance (appendix B)
# --------------------------------------------------------------------------------------------


def laplacian(image):
    """5-point discrete Laplacian on the interior (shape shrinks by 2 on each axis)."""
    image = np.asarray(image, np.float64)
    return (
        image[:-2, 1:-1]
        + image[2:, 1:-1]
        + image[1:-1, :-2]
        + image[1:-1, 2:]
        - 4.0 * image[1:-1, 1:-1]
    )


def smoothness_score(image) -> float:
    """s_Lambda = Var[Laplacian(log(1 + x) - min log(1 + x))] (eq. 12; natural log)."""
    log_image = np.log1p(np.asarray(image, np.float64))
    return float(np.var(laplacian(log_image - log_image.min())))


def _min_max(image):
    image = np.asarray(image, np.float64)
    span = image.max() - image.min()
    return (image - image.min()) / span if span > 0 else np.zeros_like(image)


def difference_score(column_density, density) -> float:
    """s_res = Var[minmax(N) - minmax(n)] (eq. 13)."""
    return float(np.var(_min_max(column_density) - _min_max(density)))


def acceptance_probability(score, steepness, offset):
    """Filter function f(s) = 1 / (1 + exp(-A (s - B))) (eq. 14): A steepness, B offset."""
    return 1.0 / (1.0 + np.exp(-steepness * (np.asarray(score, np.float64) - offset)))


@dataclasses.dataclass(frozen=True)
class CropSelection:
    """How crops are drawn from a projected face (section 2.1, appendix B).

    Attributes:
      crop_size: side of the square crops in pixels (paper: 128 = 6.4 pc at 0.05 pc).
      attempts_per_face: random candidate positions tried per face.
      smoothness_weight, difference_weight: w_i of the combined score s = sum w_i s_i (eq. 11);
        the difference score uses the dataset's target.
      steepness: A of eq. 14, in units of 1 / (robust spread of the candidate scores), so the
        same value works at any resolution (the paper chose A and B empirically per dataset).
      offset_quantile: B of eq. 14 as this quantile of the candidate scores of the face.
      max_diffuse_fraction: reject crops whose fraction of pixels below `diffuse_column_cm2` is
        larger than this (the paper's "disproportionately large fraction of very low-density
        regions"); 1 disables.
      diffuse_column_cm2: column density regarded as very diffuse, cm^-2.
    """

    crop_size: int = 128
    attempts_per_face: int = 400
    smoothness_weight: float = 1.0
    difference_weight: float = 0.0
    steepness: float = 4.0
    offset_quantile: float = 0.5
    max_diffuse_fraction: float = 0.9
    diffuse_column_cm2: float = 1e21


def crop_score(column, target, selection: CropSelection) -> float:
    """Combined score s = w_smooth s_Lambda(N) + w_diff s_res(N, n) (eqs. 11-13)."""
    score = 0.0
    if selection.smoothness_weight:
        score += selection.smoothness_weight * smoothness_score(column)
    if selection.difference_weight:
        score += selection.difference_weight * difference_score(column, target)
    return score


def _overlaps(row, col, accepted, size):
    return any(abs(row - r) < size and abs(col - c) < size for r, c in accepted)


def select_crops(
    rng: np.random.Generator, column, target, selection: CropSelection
) -> list[tuple[int, int]]:
    """Top-left corners of accepted, mutually non-overlapping crops of one face.

    Candidates are drawn uniformly; a candidate overlapping an earlier accepted crop or too
    diffuse is skipped; otherwise it is kept with probability f(s) (eq. 14), with B the
    `offset_quantile` of the scores of all candidates of the face and A = steepness / spread.
    """
    column = np.asarray(column)
    target = np.asarray(target)
    size = selection.crop_size
    height, width = column.shape
    if height < size or width < size:
        raise ValueError(f"face {column.shape} is smaller than crop_size={size}")
    rows = rng.integers(0, height - size + 1, selection.attempts_per_face)
    cols = rng.integers(0, width - size + 1, selection.attempts_per_face)
    scores = np.array(
        [
            crop_score(
                column[r : r + size, c : c + size], target[r : r + size, c : c + size], selection
            )
            for r, c in zip(rows, cols, strict=True)
        ]
    )
    offset = np.quantile(scores, selection.offset_quantile)
    spread = np.subtract(*np.quantile(scores, [0.75, 0.25])) or (np.std(scores) or 1.0)
    probability = acceptance_probability(scores, selection.steepness / spread, offset)
    draws = rng.uniform(size=len(scores))
    accepted: list[tuple[int, int]] = []
    for r, c, p, u in zip(rows, cols, probability, draws, strict=True):
        if u >= p or _overlaps(r, c, accepted, size):
            continue
        crop = column[r : r + size, c : c + size]
        if np.mean(crop < selection.diffuse_column_cm2) > selection.max_diffuse_fraction:
            continue
        accepted.append((int(r), int(c)))
    return accepted


def cube_crops(
    rng: np.random.Generator,
    density,
    cell_size_pc: float,
    selection: CropSelection,
    score_target: str = "mass_weighted",
) -> dict[str, np.ndarray]:
    """Project a cube along its three axes and cut the accepted crops of every face.

    Returns float32 arrays (num_crops, crop, crop) keyed by FEATURE_NAMES (possibly empty).
    """
    size = selection.crop_size
    out = {name: [] for name in FEATURE_NAMES}
    for axis in range(3):
        maps = {k: np.asarray(v) for k, v in project(density, axis, cell_size_pc).items()}
        for r, c in select_crops(rng, maps[COLUMN], maps[TARGETS[score_target]], selection):
            for name in FEATURE_NAMES:
                out[name].append(maps[name][r : r + size, c : c + size])
    return {name: np.asarray(v, np.float32).reshape(-1, size, size) for name, v in out.items()}


def simulate_crop_dataset(
    seed: int,
    num_crops: int,
    grid,
    selection: CropSelection,
    *,
    param_sampler: Callable | None = None,
    score_target: str = "mass_weighted",
    max_cubes: int = 10_000,
    progress: bool = False,
) -> tuple[dict[str, np.ndarray], dict]:
    """Simulate cloud cubes until `num_crops` accepted crops exist (in physical units).

    Runs wherever JAX runs (the cubes are made on the default device, the crops cut on the host),
    so the same function backs `data_gen/make_clouds.py` and on-device training without
    tensorflow. Returns (features dict of (num_crops, crop, crop) float32, info dict).
    """
    from dustjax.sims import clouds

    sampler = param_sampler or (lambda key: clouds.sample_cloud_params(key))
    rng = np.random.default_rng(seed)
    key = jax.random.key(seed)
    chunks, total, cubes = [], 0, 0
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=num_crops, desc="cloud crops", unit="crop")
    while total < num_crops:
        if cubes >= max_cubes:
            raise RuntimeError(
                f"only {total} of {num_crops} crops accepted from {cubes} cubes: loosen the crop "
                "selection or enlarge the cubes"
            )
        key, k_params, k_cube = jax.random.split(key, 3)
        density = clouds.simulate_cloud(k_cube, grid, sampler(k_params))
        crops = cube_crops(rng, density, grid.cell_size_pc, selection, score_target)
        count = len(crops[COLUMN])
        cubes += 1
        if count:
            chunks.append(crops)
            total += count
            if bar is not None:
                bar.update(min(count, num_crops - (total - count)))
    if bar is not None:
        bar.close()
    features = {
        name: np.concatenate([c[name] for c in chunks])[:num_crops] for name in FEATURE_NAMES
    }
    order = rng.permutation(num_crops)  # the paper shuffles before the 80/20 split
    features = {name: v[order] for name, v in features.items()}
    return features, {"num_cubes": cubes, "crops_per_cube": total / cubes}


# --------------------------------------------------------------------------------------------
# Metrics (section 3.1)
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# The pointwise reference (issue item 6) and residual correction (appendix C)
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Tiled prediction on large maps (appendix D)
# --------------------------------------------------------------------------------------------


def tile_starts(length: int, tile: int, stride: int) -> list[int]:
    """Start indices of tiles of size `tile` every `stride` pixels, the last flush with the end."""
    if length < tile:
        raise ValueError(f"length {length} < tile {tile}: pad the map first")
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    starts = list(range(0, length - tile + 1, stride))
    if starts[-1] != length - tile:
        starts.append(length - tile)
    return starts


def tiles_per_axis(predictions_per_pixel: int) -> tuple[int, int]:
    """Split predictions per pixel p into overlap factors (k_rows, k_cols), k_rows k_cols = p,
    as square as possible (p = 4: 2 x 2, stride tile/2 on both axes; p = 2: 2 x 1)."""
    if predictions_per_pixel < 1:
        raise ValueError(f"predictions_per_pixel must be >= 1, got {predictions_per_pixel}")
    k = int(math.isqrt(predictions_per_pixel))
    while predictions_per_pixel % k:
        k -= 1
    return predictions_per_pixel // k, k


def fill_invalid(image, mask):
    """Copy of `image` with pixels outside `mask` set to the lowest valid value (diffuse gas)."""
    image = np.asarray(image, np.float64)
    if not mask.any():
        raise ValueError("the map has no valid (finite, positive) pixel")
    return np.where(mask, image, image[mask].min())


def predict_tiled(
    predict_fn: Callable[[np.ndarray], np.ndarray],
    image,
    tile: int,
    predictions_per_pixel: int = 4,
    batch_size: int = 16,
    mask=None,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Apply a tile-to-tile model to a map of any size by overlapping tiles, averaged per pixel.

    Args:
      predict_fn: (T, tile, tile) -> (T, tile, tile) arrays (e.g. the jitted U-Net on log10 N).
      image: (H, W) map in the model's input units; pixels outside `mask` are filled with the
        lowest valid value before prediction and set to NaN after (masked, not propagated).
      tile: tile side in pixels (the model's training crop size).
      predictions_per_pixel: interior pixels get at least this many overlapping predictions
        (more where the last tile of a row or column is shifted flush with the edge).
      mask: (H, W) bool of valid pixels; default: finite pixels.

    Returns:
      (prediction (H, W) with NaN outside the mask, number of predictions per pixel (H, W)).
      Maps smaller than a tile are reflect-padded to one tile and cropped back.
    """
    image = np.asarray(image, np.float64)
    if image.ndim != 2:
        raise ValueError(f"expected a 2D map, got shape {image.shape}")
    mask = np.isfinite(image) if mask is None else (np.asarray(mask, bool) & np.isfinite(image))
    filled = fill_invalid(image, mask)
    height, width = filled.shape
    pad_h, pad_w = max(0, tile - height), max(0, tile - width)
    if pad_h or pad_w:
        filled = np.pad(filled, ((0, pad_h), (0, pad_w)), mode="reflect")
    k_rows, k_cols = tiles_per_axis(predictions_per_pixel)
    rows = tile_starts(filled.shape[0], tile, max(1, tile // k_rows))
    cols = tile_starts(filled.shape[1], tile, max(1, tile // k_cols))
    corners = [(r, c) for r in rows for c in cols]
    total = np.zeros(filled.shape)
    count = np.zeros(filled.shape)
    batches = range(0, len(corners), batch_size)
    if progress:
        from tqdm import tqdm

        batches = tqdm(batches, desc="tiles", unit="batch")
    for start in batches:
        chunk = corners[start : start + batch_size]
        tiles = np.stack([filled[r : r + tile, c : c + tile] for r, c in chunk])
        out = np.asarray(predict_fn(tiles.astype(np.float32)), np.float64)
        if out.shape != tiles.shape:
            raise ValueError(f"predict_fn returned shape {out.shape}, expected {tiles.shape}")
        for (r, c), o in zip(chunk, out, strict=True):
            total[r : r + tile, c : c + tile] += o
            count[r : r + tile, c : c + tile] += 1
    prediction = (total / count)[:height, :width]
    return np.where(mask, prediction, np.nan), count[:height, :width]


def resample(image, shape: tuple[int, int], mask=None) -> tuple[np.ndarray, np.ndarray]:
    """Resample a map to `shape` (linear, antialiased when shrinking), ignoring invalid pixels.

    Normalised convolution: resample image * mask and mask, divide. Returns (image, valid) with
    valid where at least half of the resampled footprint was valid.
    """
    image = np.asarray(image, np.float64)
    mask = np.isfinite(image) if mask is None else (np.asarray(mask, bool) & np.isfinite(image))
    weights = jax.image.resize(jnp.asarray(mask, jnp.float32), shape, "linear", antialias=True)
    values = jax.image.resize(
        jnp.asarray(np.where(mask, image, 0.0), jnp.float32), shape, "linear", antialias=True
    )
    weights = np.asarray(weights, np.float64)
    valid = weights >= 0.5
    out = np.where(valid, np.asarray(values, np.float64) / np.maximum(weights, 1e-12), np.nan)
    return out, valid


def iterate_minibatches(
    arrays: dict[str, np.ndarray], batch_size: int, rng: np.random.Generator
) -> Iterator[dict[str, np.ndarray]]:
    """Endless shuffled minibatches (drop remainder) of an in-memory dataset."""
    n = len(next(iter(arrays.values())))
    if n < batch_size:
        raise ValueError(f"dataset of {n} examples is smaller than batch_size={batch_size}")
    while True:
        order = rng.permutation(n)
        for start in range(0, n - batch_size + 1, batch_size):
            idx = np.sort(order[start : start + batch_size])
            yield {k: v[idx] for k, v in arrays.items()}


# --------------------------------------------------------------------------------------------
# Glue to the shared training engine (dustjax.train): task, on-device augmentation, data sources
# --------------------------------------------------------------------------------------------

INPUT_KEY = "column_hat"  # model_input(N), (B, H, W, 1)
TARGET_KEY = "density_hat"  # model_target(n), (B, H, W, 1)


def dihedral_augment(batch: dict, rng) -> dict:
    """Random rotation by a multiple of 90 degrees and random flip, per example, on the device
    (sect. 2.3), applied identically to every (B, H, W, C) image of the batch."""
    keys = [k for k in (INPUT_KEY, TARGET_KEY) if k in batch]
    images = jnp.concatenate([batch[k] for k in keys], axis=-1)
    if images.shape[1] != images.shape[2]:
        raise ValueError(f"rotations need square images, got {images.shape[1:3]}")

    def one(image, rng):
        k_rot, k_flip = jax.random.split(rng)
        choice = jax.random.randint(k_rot, (), 0, 4)
        image = jax.lax.switch(
            choice, [lambda a, k=k: jnp.rot90(a, k, axes=(0, 1)) for k in range(4)], image
        )
        return jnp.where(jax.random.bernoulli(k_flip), image[:, ::-1], image)

    images = jax.vmap(one)(images, jax.random.split(rng, images.shape[0]))
    out = dict(batch)
    start = 0
    for k in keys:
        width = batch[k].shape[-1]
        out[k] = images[..., start : start + width]
        start += width
    return out


def to_model_batch(features: dict[str, np.ndarray], target: str) -> dict[str, np.ndarray]:
    """Physical-unit crops -> the engine's batch: shifted log10 input and target, (B, H, W, 1)."""
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; use one of {sorted(TARGETS)}")
    column = np.asarray(features[COLUMN], np.float64)  # log10 in float64: N ~ 1e22
    density = np.asarray(features[TARGETS[target]], np.float64)
    return {
        INPUT_KEY: (np.log10(column) - LOG10_COLUMN_SHIFT)[..., None].astype(np.float32),
        TARGET_KEY: (np.log10(density) - LOG10_DENSITY_SHIFT)[..., None].astype(np.float32),
    }


def grid_from_config(data_config):
    from dustjax.sims import clouds

    return clouds.CloudGrid(**dict(data_config.grid))


def selection_from_config(data_config) -> CropSelection:
    return CropSelection(**dict(data_config.crop))


def param_sampler_from_config(data_config):
    from dustjax.sims import clouds

    ranges = {k: tuple(v) for k, v in dict(data_config.get("cloud_ranges") or {}).items()}
    return lambda key: clouds.sample_cloud_params(key, **ranges)


def split_counts(num: int, validation_fraction: float = 0.2) -> dict[str, int]:
    """The paper's 80/20 train/validation split of `num` crops."""
    validation = int(round(validation_fraction * num))
    if num - validation < 1 or validation < 1:
        raise ValueError(
            f"{num} crops cannot be split {1 - validation_fraction:.0%}/"
            f"{validation_fraction:.0%} into non-empty train and validation sets"
        )
    return {"train": num - validation, "validation": validation}


_CROP_CACHE: dict[str, dict[str, dict[str, np.ndarray]]] = {}


def _cache_key(data_config, seed) -> str:
    import json

    d = data_config.to_dict() if hasattr(data_config, "to_dict") else dict(data_config)
    d = {k: v for k, v in d.items() if k not in ("steps_per_epoch", "eval_steps", "augment")}
    return json.dumps(d, sort_keys=True, default=str) + f"|{seed}"


def simulated_splits(data_config, seed: int) -> dict[str, dict[str, np.ndarray]]:
    """The crop dataset of a config simulated in memory (cached per process), split 80/20."""
    key = _cache_key(data_config, seed)
    if key not in _CROP_CACHE:
        num = int(data_config.num_crops)
        counts = split_counts(num, float(data_config.get("validation_fraction", 0.2)))
        features, _ = simulate_crop_dataset(
            seed,
            num,
            grid_from_config(data_config),
            selection_from_config(data_config),
            param_sampler=param_sampler_from_config(data_config),
            score_target=data_config.get("target", "mass_weighted"),
            progress=True,
        )
        n_train = counts["train"]
        _CROP_CACHE[key] = {
            "train": {k: v[:n_train] for k, v in features.items()},
            "validation": {k: v[n_train:] for k, v in features.items()},
        }
    return _CROP_CACHE[key]


def tfrecord_splits(data_dir: str) -> dict[str, dict[str, np.ndarray]]:
    """A cloud dataset written by data_gen/make_clouds.py, read into memory (needs tensorflow)."""
    from dustjax import io as dio

    key = f"tfrecord|{data_dir}"
    if key not in _CROP_CACHE:
        try:
            info = dio.read_dataset_info(data_dir)
        except dio.DatasetError as err:
            raise dio.DatasetError(
                f"{err}; make it with `python -m data_gen.make_clouds --out={data_dir}`"
            ) from err
        if info.get("metadata", {}).get("kind") != "polaris_clouds":
            raise dio.DatasetError(f"{data_dir} is not a POLARIS cloud dataset (make_clouds)")
        splits = {}
        for split in ("train", "validation"):
            arrays = {name: [] for name in FEATURE_NAMES}
            for example in dio.tfrecord_dataset(data_dir, split).as_numpy_iterator():
                for name in FEATURE_NAMES:
                    arrays[name].append(example[name])
            splits[split] = {k: np.stack(v) for k, v in arrays.items()}
        _CROP_CACHE[key] = splits
    return _CROP_CACHE[key]


def load_splits(config) -> dict[str, dict[str, np.ndarray]]:
    """Physical-unit crops of the train and validation splits named by a U-Net config."""
    source = config.data.source
    if source == "polaris_simulate":
        return simulated_splits(config.data, int(config.data.get("seed", config.seed)))
    if source == "polaris_tfrecord":
        return tfrecord_splits(config.data.data_dir)
    raise ValueError(f"not a POLARIS data source: {source!r}")


class _SizedBatches:
    def __init__(self, make, length):
        self._make, self._length = make, length

    def __iter__(self):
        return self._make()

    def __len__(self):
        return self._length


def _crop_source(config, split, *, batch_size, seed, epoch, train):
    """Engine data source over the in-memory crops: shuffled full batches for training (a pure
    function of (seed, epoch), so a resumed run sees the same data), one ordered pass for eval."""
    if split not in ("train", "validation"):
        raise ValueError(f"POLARIS datasets have train and validation splits, not {split!r}")
    batch = to_model_batch(load_splits(config)[split], config.data.get("target", "mass_weighted"))
    n = len(batch[INPUT_KEY])
    if train:
        steps = n // batch_size
        if steps < 1:
            raise ValueError(f"{n} training crops give no full batch of {batch_size}")

        def make():
            order = np.random.default_rng([seed, 7, epoch]).permutation(n)
            for s in range(steps):
                idx = np.sort(order[s * batch_size : (s + 1) * batch_size])
                yield {k: v[idx] for k, v in batch.items()}

        return _SizedBatches(make, steps)

    def make_eval():
        for start in range(0, n, batch_size):
            yield {k: v[start : start + batch_size] for k, v in batch.items()}

    return _SizedBatches(make_eval, math.ceil(n / batch_size))


def register_with_engine() -> None:
    """Register the U-Net models, the "polaris" task and the "polaris_simulate" and
    "polaris_tfrecord" data sources with `dustjax.train` (idempotent; configs call it)."""
    from dustjax import train
    from dustjax.models import unet  # noqa: F401  (registers unet, knet, ukan, unet_kan_branch)

    train.register_task(
        "polaris",
        train.Task(input_key=INPUT_KEY, target_key=TARGET_KEY, augment=dihedral_augment),
        overwrite=True,
    )
    train.register_task(
        "polaris_no_augment",
        train.Task(input_key=INPUT_KEY, target_key=TARGET_KEY, augment=None),
        overwrite=True,
    )
    train.register_data_source("polaris_simulate", _crop_source)
    train.register_data_source("polaris_tfrecord", _crop_source)


# --------------------------------------------------------------------------------------------
# Evaluation of a trained U-Net against the pointwise reference (item 6), figures 8-13
# --------------------------------------------------------------------------------------------


def predict_log10(predict_fn, column_density, batch_size: int = 32) -> np.ndarray:
    """log10 density predicted from column density crops (B, H, W) in cm^-2 (batched)."""
    column_hat = np.asarray(model_input(column_density), np.float32)[..., None]
    out = []
    for start in range(0, len(column_hat), batch_size):
        chunk = column_hat[start : start + batch_size]
        n = len(chunk)
        if n < batch_size:  # keep one compiled shape
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - n, axis=0)])
        out.append(np.asarray(predict_fn(chunk))[:n, ..., 0])
    return np.asarray(log10_density_from_output(np.concatenate(out)), np.float64)


def evaluate_predictions(
    train_crops: dict, val_crops: dict, val_pred_log10: np.ndarray, target: str, eval_config
) -> tuple[dict, dict]:
    """Item 6 and figs. 10-13 numbers: U-Net vs the best pointwise reference on validation.

    Returns (metrics dict, arrays for the figures).
    """
    key = TARGETS[target]
    train_x = np.log10(train_crops[COLUMN])
    train_y = np.log10(train_crops[key])
    val_x = np.log10(val_crops[COLUMN])
    val_y = np.log10(val_crops[key])
    reference, reference_mses = best_pointwise_reference(
        train_x, train_y, val_x, val_y, int(eval_config.reference_bins)
    )
    ref_pred = reference(val_x)
    mse_model, mse_ref = mse(val_pred_log10, val_y), mse(ref_pred, val_y)
    sigmas = tuple(eval_config.sigmas)
    edges = np.linspace(val_y.min(), val_y.max() + 1e-9, int(eval_config.density_bins) + 1)
    # Appendix C: fit the baseline on one half of the validation crops, measure on the other.
    half = len(val_y) // 2
    correction = ResidualCorrection.fit(
        val_pred_log10[:half], val_y[:half], num_bins=int(eval_config.residual_bins),
        window=int(eval_config.residual_window),
    )  # fmt: skip
    corrected = correction(val_pred_log10[half:])
    full_correction = ResidualCorrection.fit(
        val_pred_log10, val_y, num_bins=int(eval_config.residual_bins),
        window=int(eval_config.residual_window),
    )  # fmt: skip
    metrics = {
        "target": target,
        "num_train_crops": len(train_y),
        "num_validation_crops": len(val_y),
        "val_mse_model": mse_model,
        "val_mse_reference": mse_ref,
        "mse_ratio_model_over_reference": mse_model / mse_ref,
        "ratio_target": 0.75,
        "passes_ratio_target": bool(mse_model / mse_ref <= 0.75),
        "reference_method": reference.method,
        "reference_val_mse_by_method": reference_mses,
        "val_mse_constant_mean": mse(np.full_like(val_y, train_y.mean()), val_y),
        "accuracy_model": accuracy_curve(val_pred_log10, val_y, sigmas),
        "accuracy_reference": accuracy_curve(ref_pred, val_y, sigmas),
        "residuals_model": residuals_per_bin(val_pred_log10, val_y, edges),
        "residuals_reference": residuals_per_bin(ref_pred, val_y, edges),
        "residual_correction": {
            "fit_on": "first half of the validation crops",
            "val_mse_second_half_before": mse(val_pred_log10[half:], val_y[half:]),
            "val_mse_second_half_after": mse(corrected, val_y[half:]),
            "baseline_fitted_on_all_validation": full_correction.to_dict(),
        },
        "reference": reference.to_dict(),
    }
    arrays = dict(val_x=val_x, val_y=val_y, pred=val_pred_log10, ref=ref_pred,
                  corrected=corrected, half=half)  # fmt: skip
    return metrics, arrays


def _save(fig, path):
    from dustjax import io as dio

    with dio.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")


def plot_examples(arrays, path, num: int = 4, title: str = "") -> None:
    """Fig. 8 analogue: column density, true, predicted, reference and error per crop."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    val_y = arrays["val_y"]
    num = min(num, len(val_y))
    order = np.argsort(val_y.mean(axis=(1, 2)))  # from diffuse to dense crops
    picks = order[np.linspace(0, len(order) - 1, num).astype(int)]
    rows = [("log10 N [cm$^{-2}$]", arrays["val_x"], "cividis"),
            ("true log10 n", val_y, "magma"), ("U-Net log10 n", arrays["pred"], "magma"),
            ("reference log10 n", arrays["ref"], "magma"),
            ("U-Net - true [dex]", arrays["pred"] - val_y, "RdBu_r")]  # fmt: skip
    fig, axes = plt.subplots(len(rows), num, figsize=(2.6 * num, 2.4 * len(rows)), squeeze=False)
    for j, i in enumerate(picks):
        lo, hi = np.percentile(val_y[i], [1, 99.5])
        for r, (label, data, cmap) in enumerate(rows):
            ax = axes[r, j]
            if cmap == "RdBu_r":
                im = ax.imshow(data[i], cmap=cmap, vmin=-0.5, vmax=0.5, origin="lower")
            elif r == 0:
                im = ax.imshow(data[i], cmap=cmap, origin="lower")
            else:
                im = ax.imshow(data[i], cmap=cmap, vmin=lo, vmax=hi, origin="lower")
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(label, fontsize=8)
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    fig.suptitle(title or "validation crops: prediction vs truth (fig. 8)")
    _save(fig, path)
    plt.close(fig)


def plot_diagnostics(metrics, arrays, out_dir, title: str = "") -> list[str]:
    """Figs. 10-13 analogues: correlation, residuals per bin, spatial errors, accuracy(sigma),
    and the residual correction of appendix C. Returns the written file names."""
    import matplotlib

    matplotlib.use("Agg")
    from pathlib import Path

    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    val_y, pred, ref = arrays["val_y"], arrays["pred"], arrays["ref"]
    written = []

    # Fig. 10: correlation of prediction and truth.
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.4))
    lo, hi = np.percentile(val_y, [0.1, 99.9])
    for ax, p, name in ((axes[0], pred, "U-Net"), (axes[1], ref, "pointwise reference")):
        ax.hist2d(val_y.ravel(), p.ravel(), bins=120, range=[[lo, hi], [lo, hi]], cmin=1,
                  norm=matplotlib.colors.LogNorm(), cmap="viridis")  # fmt: skip
        ax.plot([lo, hi], [lo, hi], "k--", lw=1)
        ax.set_xlabel("true log10 n [cm$^{-3}$]")
        ax.set_ylabel("predicted log10 n")
        ax.set_title(f"{name}: MSE {mse(p, val_y):.4f}")
    fig.suptitle(title or "prediction correlation (fig. 10)")
    _save(fig, out_dir / "correlation.png")
    plt.close(fig)
    written.append("correlation.png")

    # Fig. 11: residuals per density bin.
    fig, ax = plt.subplots(figsize=(7, 4.4))
    for key, colour, name in (("residuals_model", "C0", "U-Net"),
                              ("residuals_reference", "C1", "reference")):  # fmt: skip
        r = metrics[key]
        x = r["bin_centres"]
        ax.fill_between(x, r["p16"], r["p84"], color=colour, alpha=0.25)
        ax.plot(x, r["mean"], color=colour, label=f"{name}: mean, 16-84%")
        ax.plot(x, r["min"], color=colour, lw=0.6, ls=":")
        ax.plot(x, r["max"], color=colour, lw=0.6, ls=":")
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xlabel("true log10 n [cm$^{-3}$]")
    ax.set_ylabel("residual pred - true [dex]")
    ax.legend()
    ax.set_title("residuals per density bin (fig. 11); dotted: min/max")
    _save(fig, out_dir / "residuals.png")
    plt.close(fig)
    written.append("residuals.png")

    # Fig. 12: spatial error maps (mean and rms error over the validation crops).
    err = pred - val_y
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    for ax, data, name, cmap in ((axes[0], err.mean(0), "mean error [dex]", "RdBu_r"),
                                 (axes[1], np.sqrt((err**2).mean(0)), "rms error [dex]",
                                  "viridis"),
                                 (axes[2], err[np.argmax((err**2).mean((1, 2)))],
                                  "worst crop error [dex]", "RdBu_r")):  # fmt: skip
        vmax = np.abs(data).max() if cmap == "RdBu_r" else None
        vmin = -vmax if vmax is not None else None
        im = ax.imshow(data, cmap=cmap, origin="lower", vmin=vmin, vmax=vmax)
        ax.set_title(name)
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.suptitle("U-Net validation spatial errors (fig. 12)")
    _save(fig, out_dir / "spatial_errors.png")
    plt.close(fig)
    written.append("spatial_errors.png")

    # Fig. 13: accuracy(sigma) with the spread over images.
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for key, colour, name in (("accuracy_model", "C0", "U-Net"),
                              ("accuracy_reference", "C1", "reference")):  # fmt: skip
        a = metrics[key]
        ax.plot(a["sigma"], a["mean"], "o-", color=colour, label=name)
        ax.fill_between(a["sigma"], a["mean"] - a["std"], np.minimum(a["mean"] + a["std"], 1),
                        color=colour, alpha=0.2)  # fmt: skip
    ax.set_xlabel(r"$\sigma$ [dex]")
    ax.set_ylabel("accuracy (eqs. 5-6)")
    ax.set_ylim(0, 1.02)
    ax.legend()
    ax.set_title("accuracy; band: std over validation images (fig. 13)")
    _save(fig, out_dir / "accuracy.png")
    plt.close(fig)
    written.append("accuracy.png")

    # Appendix C: residual baseline and its effect on the held-out half.
    half = arrays["half"]
    rc = metrics["residual_correction"]
    base = rc["baseline_fitted_on_all_validation"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    sample = np.random.default_rng(0).choice(pred.size, min(pred.size, 20000), replace=False)
    axes[0].scatter(pred.ravel()[sample], (pred - val_y).ravel()[sample], s=1, alpha=0.2)
    axes[0].plot(base["knots_pred"], base["baseline"], "r-", label="baseline (moving average)")
    axes[0].set_xlabel("predicted log10 n")
    axes[0].set_ylabel("residual [dex]")
    axes[0].legend()
    edges = np.linspace(val_y.min(), val_y.max() + 1e-9, 25)
    before = residuals_per_bin(pred[half:], val_y[half:], edges)
    after = residuals_per_bin(arrays["corrected"], val_y[half:], edges)
    axes[1].plot(before["bin_centres"], before["mean"], label="before")
    axes[1].plot(after["bin_centres"], after["mean"], label="after correction")
    axes[1].axhline(0, color="k", lw=0.8)
    axes[1].set_xlabel("true log10 n")
    axes[1].set_ylabel("mean residual [dex]")
    axes[1].legend()
    axes[1].set_title(
        f"held-out half: MSE {rc['val_mse_second_half_before']:.4f} -> "
        f"{rc['val_mse_second_half_after']:.4f}"
    )
    fig.suptitle("residual correction (appendix C, figs. 47-48)")
    _save(fig, out_dir / "residual_correction.png")
    plt.close(fig)
    written.append("residual_correction.png")
    return written


def evaluate_workdir(workdir, out_dir=None, which: str = "best") -> dict:
    """Evaluate a trained U-Net workdir on its validation crops; write JSON + figures.

    Writes ``<out_dir>/polaris_metrics.json`` (item 6 ratio, accuracy curves, residual bins,
    residual correction, the reference table), ``examples.png``, ``correlation.png``,
    ``residuals.png``, ``spatial_errors.png``, ``accuracy.png``, ``residual_correction.png`` and
    ``residual_correction.json`` (for predict_map). Returns the metrics.
    """
    import time
    from pathlib import Path

    from dustjax import io as dio
    from dustjax import train

    register_with_engine()
    start = time.perf_counter()
    workdir = Path(workdir)
    out_dir = dio.ensure_writable_dir(out_dir or workdir / "validation")
    model, variables, config = train.load_trained(workdir, which)
    splits = load_splits(config)
    target = config.data.get("target", "mass_weighted")
    predict_fn = train.make_predict_fn(model, variables)
    batch = int(config.get("eval_batch_size") or config.batch_size)
    pred = predict_log10(predict_fn, splits["validation"][COLUMN], batch)
    metrics, arrays = evaluate_predictions(splits["train"], splits["validation"], pred, target,
                                           config.eval)  # fmt: skip
    summary_path = workdir / train.SUMMARY_FILE
    if summary_path.exists():
        metrics["training"] = dio.read_json(summary_path)
    metrics["workdir"] = str(workdir)
    metrics["checkpoint"] = which
    dio.write_json(out_dir / "polaris_metrics.json", metrics)
    dio.write_json(
        out_dir / "residual_correction.json",
        metrics["residual_correction"]["baseline_fitted_on_all_validation"],
    )
    dio.write_json(out_dir / "reference.json", metrics["reference"])  # fmt: skip
    plot_examples(arrays, out_dir / "examples.png", title=f"{config.get('name', '')}: fig. 8")
    metrics["figures"] = ["examples.png", *plot_diagnostics(metrics, arrays, out_dir)]
    metrics["eval_time_s"] = time.perf_counter() - start
    dio.write_json(out_dir / "polaris_metrics.json", metrics)
    return metrics

"""Crop scores and acceptance (Ribeiro 2025, appendix B, eqs. 11-14) and crop datasets simulated
from cloud cubes (`dustjax.sims.clouds`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import numpy as np

from dustjax.polaris.projection import COLUMN, FEATURE_NAMES, TARGETS, project


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


def accumulate_crops(
    seed: int,
    num_crops: int,
    cut_cube: Callable,
    names,
    *,
    max_cubes: int = 10_000,
    progress: bool = False,
    desc: str = "cloud crops",
) -> tuple[dict[str, np.ndarray], dict]:
    """The loop of every simulated crop dataset: new cubes until `num_crops` crops are accepted.

    ``cut_cube(rng, key_params, key_cube, index)`` simulates cube number `index` from its two
    keys (split from ``jax.random.key(seed)``) and returns the crops it accepted, a dict of
    sequences (k, ...) keyed by `names` (k may be 0); `rng` (``default_rng(seed)``) chooses the
    crops. Returns ({name: float32 (num_crops, ...)}, shuffled as the paper shuffles before its
    80/20 split; {"num_cubes", "crops_per_cube"}).
    """
    rng = np.random.default_rng(seed)
    key = jax.random.key(seed)
    chunks: dict[str, list] = {name: [] for name in names}
    total = cubes = 0
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=num_crops, desc=desc, unit="crop")
    while total < num_crops:
        if cubes >= max_cubes:
            raise RuntimeError(
                f"only {total} of {num_crops} crops accepted from {cubes} cubes: loosen the crop "
                "selection or enlarge the cubes"
            )
        key, k_params, k_cube = jax.random.split(key, 3)
        crops = cut_cube(rng, k_params, k_cube, cubes)
        cubes += 1
        count = len(crops[names[0]])
        if count:
            for name in names:
                chunks[name].append(np.asarray(crops[name], np.float32))
            total += count
            if bar is not None:
                bar.update(min(count, num_crops - (total - count)))
    if bar is not None:
        bar.close()
    features = {name: np.concatenate(chunks[name])[:num_crops] for name in names}
    order = rng.permutation(num_crops)
    features = {name: v[order] for name, v in features.items()}
    return features, {"num_cubes": cubes, "crops_per_cube": total / cubes}


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

    def cut_cube(rng, k_params, k_cube, index):
        density = clouds.simulate_cloud(k_cube, grid, sampler(k_params))
        return cube_crops(rng, density, grid.cell_size_pc, selection, score_target)

    return accumulate_crops(seed, num_crops, cut_cube, FEATURE_NAMES, max_cubes=max_cubes,
                            progress=progress)  # fmt: skip

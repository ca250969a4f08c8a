r"""Column density plus 13CO emission as the U-Net's input (Ribeiro 2025, part III, sect. 6-8).

Part III proposes to enrich the column density with molecular emission, 13CO position-position-
velocity (PPV) cubes, to predict the mass-weighted mean density <n>_M (sect. 8.1) and the maximum
density along the line of sight (sect. 8.2). This module makes those datasets and the engine's
task and data source:

- **Crops** (`simulate_emission_crops`): clouds from `dustjax.sims.clouds` with velocities and
  temperatures from `dustjax.sims.kinematics`; each face is projected (`project`) and ray traced
  in 13CO (`dustjax.polaris.emission.cloud_ppv`, LTE, CMB background, thermal + subgrid Larson
  width); crops are chosen by the same score and acceptance as the column-only datasets
  (appendix B), and every crop keeps its column density, its three targets, its PPV cube
  (crop, crop, channels) in K and its four moment maps. One dataset thus serves all input
  variants, so a comparison between them is on the same crops.
- **Inputs** (``config.data.emission.inputs``): "column" (log10 N only: the column-only U-Net on
  these crops), "moments" (log10 N plus four moment maps: log10 W, centroid, dispersion, peak
  T_B) or "ppv" (log10 N plus every velocity channel). The model input is (B, H, W, 1 + C),
  channel 0 the column density in the usual shifted log10 units (`model_input`).
- **Task** "polaris_emission" (`TASK`): MSE in shifted log10 (eq. 4), random rotations and flips
  of the sky plane (they leave the velocity axis untouched), the model's ``input_channels`` and
  input shape derived from the config; **data source** "polaris_emission_simulate".

Normalisations of the emission channels (fixed constants, so a trained model applies to new
data): T_B -> asinh(T_B / 0.3 K) / 2; W -> log10(W / K km/s + 0.01); centroid / 2 km/s;
dispersion / 1 km/s.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from dustjax.polaris import data as pdata
from dustjax.polaris import emission as em
from dustjax.polaris.crops import CropSelection, accumulate_crops, select_crops
from dustjax.polaris.projection import (
    COLUMN,
    FEATURE_NAMES,
    LOG10_COLUMN_SHIFT,
    LOG10_DENSITY_SHIFT,
    TARGETS,
    project,
)
from dustjax.training.tasks import Task

PPV = "ppv_tb"  # (N, H, W, channels) brightness temperature, K
MOMENTS = "moments"  # (N, H, W, 4): emission.MOMENT_NAMES
INPUT_KEY = "inputs_hat"  # (B, H, W, 1 + C)
TARGET_KEY = pdata.TARGET_KEY
INPUT_KINDS = ("column", "moments", "ppv")

TB_SCALE_K = 0.3
CENTROID_SCALE_KMS = 2.0
DISPERSION_SCALE_KMS = 1.0
W_FLOOR_K_KMS = 0.01


@dataclasses.dataclass(frozen=True)
class EmissionSettings:
    """How the 13CO cubes of a dataset are made (``config.data.emission``).

    Attributes:
      inputs: "column", "moments" or "ppv" (the model's input; the dataset holds all).
      num_channels, half_width_kms: the velocity axis, channels spanning +-half_width.
      oversample: sub-channels per channel in the ray tracing (`emission.ppv_cube`).
      subgrid: add the unresolved Larson dispersion at the cell scale to each cell's width.
      linewidth_index_range, linewidth_1pc_range_kms, temperature_range_k: per-cloud draws
        (`dustjax.sims.kinematics.sample_kinematics`).
      temperature_index: q of T = T_0 (n / 1e3)^q (0: isothermal, the paper's case).
      solenoidal_weight, driving_scale_pc: `KinematicsParams` of every cloud.
    """

    inputs: str = "ppv"
    num_channels: int = 32
    half_width_kms: float = 10.0
    oversample: int = 2
    subgrid: bool = True
    linewidth_index_range: tuple[float, float] = (0.38, 0.5)
    linewidth_1pc_range_kms: tuple[float, float] = (0.6, 1.1)
    temperature_range_k: tuple[float, float] = (8.0, 15.0)
    temperature_index: float = 0.0
    solenoidal_weight: float = 0.5
    driving_scale_pc: float = 20.0

    def __post_init__(self):
        if self.inputs not in INPUT_KINDS:
            raise ValueError(f"emission inputs must be one of {INPUT_KINDS}, got {self.inputs!r}")

    @property
    def spectral(self) -> em.SpectralAxis:
        return em.SpectralAxis.centred(self.half_width_kms, self.num_channels)

    @property
    def emission_channels(self) -> int:
        return {"column": 0, "moments": len(em.MOMENT_NAMES), "ppv": self.num_channels}[self.inputs]

    def sample_kinematics(self, key):
        from dustjax.sims import kinematics

        base = kinematics.KinematicsParams(
            temperature_index=self.temperature_index,
            solenoidal_weight=self.solenoidal_weight,
            driving_scale_pc=self.driving_scale_pc,
        )
        return kinematics.sample_kinematics(
            key,
            linewidth_index_range=tuple(self.linewidth_index_range),
            linewidth_1pc_range_kms=tuple(self.linewidth_1pc_range_kms),
            temperature_range_k=tuple(self.temperature_range_k),
            base=base,
        )


def settings_from_config(data_config) -> EmissionSettings:
    d = dict(data_config.get("emission") or {})
    for key in ("linewidth_index_range", "linewidth_1pc_range_kms", "temperature_range_k"):
        if key in d:
            d[key] = tuple(d[key])
    return EmissionSettings(**d)


def simulate_emission_crops(
    seed: int,
    num_crops: int,
    grid,
    selection: CropSelection,
    settings: EmissionSettings,
    *,
    param_sampler=None,
    score_target: str = "mass_weighted",
    max_cubes: int = 10_000,
    cubes_dir=None,
    progress: bool = False,
) -> tuple[dict[str, np.ndarray], dict]:
    """Simulate clouds with kinematics until `num_crops` crops are accepted (physical units).

    Returns (features, info): features hold FEATURE_NAMES (N, crop, crop), ``ppv_tb``
    (N, crop, crop, channels) in K and ``moments`` (N, crop, crop, 4); shuffled (the paper
    shuffles before its 80/20 split). With `cubes_dir`, every cloud (density, velocity,
    temperature) is saved there as ``cloud_<i>.npz`` (`dustjax.sims.kinematics.save_cloud`).
    """
    from dustjax.sims import clouds, kinematics

    sampler = param_sampler or (lambda key: clouds.sample_cloud_params(key))
    spectral = settings.spectral
    size = selection.crop_size
    names = (*FEATURE_NAMES, PPV, MOMENTS)

    def cut_cube(rng, k_params, k_cube, index):
        kin = settings.sample_kinematics(jax.random.fold_in(k_params, 1))
        state = kinematics.simulate_cloud_state(k_cube, grid, sampler(k_params), kin)
        subgrid = kinematics.subgrid_dispersion_kms(grid, kin) if settings.subgrid else 0.0
        if cubes_dir is not None:
            kinematics.save_cloud(
                f"{cubes_dir}/cloud_{index:05d}.npz", state, grid.cell_size_pc,
                {"seed": seed, "index": index, "kinematics": {k: float(v) for k, v in
                                                              kin._asdict().items()}},
            )  # fmt: skip
        crops: dict[str, list] = {name: [] for name in names}
        for axis in range(3):
            maps = {k: np.asarray(v) for k, v in project(state["density"], axis,
                                                         grid.cell_size_pc).items()}  # fmt: skip
            corners = select_crops(rng, maps[COLUMN], maps[TARGETS[score_target]], selection)
            if not corners:
                continue  # no ray tracing for a face without crops
            ppv = em.cloud_ppv(
                state, axis, grid.cell_size_pc, spectral, subgrid_sigma_kms=subgrid,
                oversample=settings.oversample,
            )  # fmt: skip
            moments = em.moment_maps(ppv, spectral)
            moments = np.stack([np.asarray(moments[m]) for m in em.MOMENT_NAMES], -1)
            ppv = np.asarray(ppv)
            for r, c in corners:
                window = (slice(r, r + size), slice(c, c + size))
                for name in FEATURE_NAMES:
                    crops[name].append(maps[name][window])
                crops[PPV].append(ppv[window])
                crops[MOMENTS].append(moments[window])
        return crops

    return accumulate_crops(seed, num_crops, cut_cube, names, max_cubes=max_cubes,
                            progress=progress, desc="emission crops")  # fmt: skip


def emission_channels(features: dict, inputs: str) -> np.ndarray:
    """The normalised emission channels (N, H, W, C) of crops for an input kind (C may be 0)."""
    if inputs not in INPUT_KINDS:
        raise ValueError(f"emission inputs must be one of {INPUT_KINDS}, got {inputs!r}")
    n, h, w = np.shape(features[COLUMN])
    if inputs == "column":
        return np.zeros((n, h, w, 0), np.float32)
    if inputs == "ppv":
        return (np.arcsinh(np.asarray(features[PPV], np.float64) / TB_SCALE_K) / 2).astype(
            np.float32
        )
    m = np.asarray(features[MOMENTS], np.float64)
    return np.stack(
        [
            np.log10(np.maximum(m[..., 0], 0.0) + W_FLOOR_K_KMS),
            m[..., 1] / CENTROID_SCALE_KMS,
            m[..., 2] / DISPERSION_SCALE_KMS,
            np.arcsinh(m[..., 3] / TB_SCALE_K) / 2,
        ],
        -1,
    ).astype(np.float32)


def to_model_batch(features: dict, target: str, inputs: str) -> dict[str, np.ndarray]:
    """Physical-unit crops -> the engine's batch: (B, H, W, 1 + C) input, (B, H, W, 1) target."""
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; use one of {sorted(TARGETS)}")
    column = (np.log10(np.asarray(features[COLUMN], np.float64)) - LOG10_COLUMN_SHIFT)[..., None]
    density = np.log10(np.asarray(features[TARGETS[target]], np.float64)) - LOG10_DENSITY_SHIFT
    return {
        INPUT_KEY: np.concatenate(
            [column.astype(np.float32), emission_channels(features, inputs)], -1
        ),
        TARGET_KEY: density[..., None].astype(np.float32),
    }


_CACHE: dict[str, dict] = {}
# data keys that do not change the simulated crops (how they are batched or used, where kept)
_NOT_IN_DATA_KEY = ("steps_per_epoch", "passes_per_epoch", "target", "crops_file")


def _data_key(config) -> str:
    """What the crops of a config depend on (its data block but batching, target and input
    kind, and the dataset seed), as a string."""
    import json

    data = config.data
    d = data.to_dict() if hasattr(data, "to_dict") else dict(data)
    d = {k: v for k, v in d.items() if k not in _NOT_IN_DATA_KEY}
    d["emission"] = {k: v for k, v in dict(d.get("emission") or {}).items() if k != "inputs"}
    seed = int(data.get("seed", config.get("seed", 0)))
    return json.dumps(d, sort_keys=True, default=str) + f"|{seed}"


def _fingerprint(key: str) -> str:
    import hashlib

    return hashlib.sha256(key.encode()).hexdigest()[:16]


def _simulate_splits(config) -> dict[str, dict[str, np.ndarray]]:
    data = config.data
    seed = int(data.get("seed", config.get("seed", 0)))
    num = int(data.num_crops)
    counts = pdata.split_counts(num, float(data.get("validation_fraction", 0.2)))
    features, _ = simulate_emission_crops(
        seed, num, pdata.grid_from_config(data), pdata.selection_from_config(data),
        settings_from_config(data), param_sampler=pdata.param_sampler_from_config(data),
        score_target=data.get("score_target", "mass_weighted"),
        progress=bool(config.get("progress_bar", False)),
    )  # fmt: skip
    n_train = counts["train"]
    return {
        "train": {k: v[:n_train] for k, v in features.items()},
        "validation": {k: v[n_train:] for k, v in features.items()},
    }


def _load_crops_file(path, key: str) -> dict[str, dict[str, np.ndarray]]:
    from pathlib import Path

    from dustjax import io as dio

    path = Path(path)
    meta = path.with_suffix(".json")
    if not path.is_file() or not meta.is_file():
        raise FileNotFoundError(
            f"config.data.crops_file: no {path} (and {meta.name}); make it with "
            "multi_input.save_emission_crops(config, path)"
        )
    saved = dio.read_json(meta).get("fingerprint")
    if saved != _fingerprint(key):
        raise ValueError(
            f"config.data.crops_file {path} holds crops of another data config (fingerprint "
            f"{saved}, this config's {_fingerprint(key)}): simulate them again"
        )
    with np.load(path) as f:
        return {split: {k.split("/", 1)[1]: f[k] for k in f.files if k.startswith(split + "/")}
                for split in ("train", "validation")}  # fmt: skip


def emission_splits(config) -> dict[str, dict[str, np.ndarray]]:
    """The emission crop dataset of a config, split 80/20: simulated in memory (cached per
    process, shared by configs that differ only in the input kind, the target or the batching),
    or, with ``config.data.crops_file``, read from the file `save_emission_crops` wrote for the
    same data config (several processes then train on one simulation)."""
    key = _data_key(config)
    if key not in _CACHE:
        crops_file = config.data.get("crops_file")
        if crops_file:
            _CACHE[key] = _load_crops_file(crops_file, key)
        else:
            _CACHE[key] = _simulate_splits(config)
    return _CACHE[key]


def save_emission_crops(config, path) -> dict:
    """Simulate (or take from this process's cache) the crops of `config` and write them to
    `path` (.npz, atomically) with ``<path>.json`` (the data fingerprint and split sizes), for
    ``config.data.crops_file``. Returns the json's content."""
    from pathlib import Path

    from dustjax import io as dio

    path = Path(path)
    key = _data_key(config)
    if key not in _CACHE:
        _CACHE[key] = _simulate_splits(config)
    splits = _CACHE[key]
    dio.ensure_writable_dir(path.parent)
    path.with_suffix(".json").unlink(missing_ok=True)  # the npz is complete once this is back
    arrays = {f"{split}/{k}": v for split, d in splits.items() for k, v in d.items()}
    with dio.atomic_path(path) as tmp, tmp.open("wb") as f:
        np.savez(f, **arrays)
    info = {
        "fingerprint": _fingerprint(key),
        "crops": {split: int(len(d[COLUMN])) for split, d in splits.items()},
        "bytes": path.stat().st_size,
    }
    dio.write_json(path.with_suffix(".json"), info)
    return info


def emission_source(config, split, *, batch_size, seed, epoch, train):
    """Engine data source "polaris_emission_simulate" (`data.batch_source`, as the column-only
    source; ``config.data.passes_per_epoch`` passes over the training crops an epoch)."""
    if split not in ("train", "validation"):
        raise ValueError(f"POLARIS datasets have train and validation splits, not {split!r}")
    settings = settings_from_config(config.data)
    batch = to_model_batch(
        emission_splits(config)[split], config.data.get("target", "mass_weighted"),
        settings.inputs,
    )  # fmt: skip
    return pdata.batch_source(
        batch, INPUT_KEY, batch_size=batch_size, seed=seed, epoch=epoch, train=train,
        passes=config.data.get("passes_per_epoch", 1),
    )  # fmt: skip


def dihedral_augment(batch: dict, rng) -> dict:
    """`data.dihedral_augment` on the multi-channel input and the target (the same rotation and
    flip for all channels: the velocity axis is not a sky axis)."""
    inner = pdata.dihedral_augment(
        {pdata.INPUT_KEY: batch[INPUT_KEY], pdata.TARGET_KEY: batch[TARGET_KEY]}, rng
    )
    return dict(batch, **{INPUT_KEY: inner[pdata.INPUT_KEY], TARGET_KEY: inner[pdata.TARGET_KEY]})


def input_channels(config) -> int:
    return 1 + settings_from_config(config.data).emission_channels


def _model_kwargs(config) -> dict:
    return {"input_channels": input_channels(config)}


def _input_shape(config) -> tuple[int, ...]:
    size = int(config.data.crop.crop_size)
    return (1, size, size, input_channels(config))


#: "polaris_emission" in `dustjax.training.tasks`.
TASK = Task(
    input_key=INPUT_KEY,
    target_key=TARGET_KEY,
    augment=dihedral_augment,
    model_kwargs=_model_kwargs,
    input_shape=_input_shape,
)


# ---- evaluation: does emission help, where, by how much ---------------------------------------


def predict_log10(predict_fn, inputs: np.ndarray, batch_size: int) -> np.ndarray:
    """log10 density from (N, H, W, 1 + C) model inputs, batched with one compiled shape."""
    from dustjax.polaris.projection import log10_density_from_output

    out = []
    for start in range(0, len(inputs), batch_size):
        chunk = inputs[start : start + batch_size]
        n = len(chunk)
        if n < batch_size:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - n, axis=0)])
        out.append(np.asarray(predict_fn(jnp.asarray(chunk)))[:n, ..., 0])
    return np.asarray(log10_density_from_output(np.concatenate(out)), np.float64)


def evaluate_emission_workdir(workdir, which: str = "best", bin_edges=None) -> dict:
    """Validation metrics of a trained "polaris_emission" run: MSE (eq. 4), accuracy at 0.1 and
    0.2 dex (eqs. 5-6), MSE and mean residual per bin of true log10 density, and the pointwise
    N -> n reference of the same crops (the column-only floor a U-Net must beat)."""
    from dustjax import training as train
    from dustjax.polaris.metrics import accuracy_curve, mse, residuals_per_bin
    from dustjax.polaris.reference import best_pointwise_reference

    model, variables, config = train.load_trained(workdir, which)
    splits = emission_splits(config)
    target = config.data.get("target", "mass_weighted")
    settings = settings_from_config(config.data)
    val = to_model_batch(splits["validation"], target, settings.inputs)
    batch = int(config.get("eval_batch_size") or config.batch_size)
    pred = predict_log10(train.make_predict_fn(model, variables), val[INPUT_KEY], batch)
    true = np.log10(np.asarray(splits["validation"][TARGETS[target]], np.float64))
    train_x = np.log10(splits["train"][COLUMN])
    train_y = np.log10(splits["train"][TARGETS[target]])
    val_x = np.log10(splits["validation"][COLUMN])
    reference, _ = best_pointwise_reference(train_x, train_y, val_x, true, 64)
    if bin_edges is None:
        bin_edges = np.arange(np.floor(true.min() * 2) / 2, true.max() + 0.5, 0.5)
    per_bin = residuals_per_bin(pred, true, bin_edges)
    index = np.digitize(true, bin_edges) - 1
    sq = (pred - true) ** 2
    ref_sq = (reference(val_x) - true) ** 2
    nb = len(bin_edges) - 1
    mse_bins = [float(sq[index == b].mean()) if (index == b).any() else None for b in range(nb)]
    ref_bins = [float(ref_sq[index == b].mean()) if (index == b).any() else None
                for b in range(nb)]  # fmt: skip
    acc = accuracy_curve(pred, true, (0.1, 0.2))
    # squared errors summed per (validation crop, density bin): the paired bootstrap of
    # `paired_ratio` resamples crops, the independent units (pixels of a crop are correlated)
    n = len(true)
    inside = (index >= 0) & (index < nb)
    flat = (np.arange(n)[:, None, None] * nb + index)[inside]
    crop_sse = np.bincount(flat, weights=sq[inside], minlength=n * nb).reshape(n, nb)
    crop_count = np.bincount(flat, minlength=n * nb).reshape(n, nb)
    return {
        "inputs": settings.inputs,
        "model": config.model.name,
        "num_params": int(sum(np.size(x) for x in jax.tree_util.tree_leaves(variables["params"]))),
        "target": target,
        "input_channels": input_channels(config),
        "num_validation_crops": int(len(true)),
        "val_mse": mse(pred, true),
        "val_mse_reference": float(ref_sq.mean()),
        "accuracy_0.1dex": float(acc["mean"][0]),
        "accuracy_0.2dex": float(acc["mean"][1]),
        "bins": {
            "edges_log10_cm3": [float(e) for e in bin_edges],
            "count": [int(c) for c in per_bin["count"]],
            "mse": mse_bins,
            "mse_reference": ref_bins,
            "mean_residual": [None if not np.isfinite(m) else float(m) for m in per_bin["mean"]],
        },
        "per_crop": {
            "sse": [[float(f"{v:.6g}") for v in row] for row in crop_sse],
            "count": crop_count.astype(int).tolist(),
        },
    }


MIN_CROPS = 5  # a bin's bootstrap interval is shown only when this many crops have pixels in it


def paired_ratio(run: dict, baseline: dict, num_boot: int = 2000, seed: int = 0) -> dict:
    """MSE(run) / MSE(baseline), overall and per density bin, with the 2.5-97.5 % interval of
    a bootstrap over validation crops: the same resampled crops for both runs (paired), so the
    interval is that of the difference the input makes, not of which crops were drawn. Both
    runs must be evaluations (`evaluate_emission_workdir`) of the same crops and bins."""
    import warnings

    a = np.asarray(run["per_crop"]["sse"], np.float64)
    b = np.asarray(baseline["per_crop"]["sse"], np.float64)
    if a.shape != b.shape or run["per_crop"]["count"] != baseline["per_crop"]["count"]:
        raise ValueError("paired_ratio needs two evaluations of the same crops and density bins")
    n = len(a)
    rng = np.random.default_rng(seed)
    weights = np.zeros((num_boot, n))
    np.add.at(weights, (np.repeat(np.arange(num_boot), n), rng.integers(0, n, num_boot * n)), 1)

    def ratio(sa, sb):
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(sb > 0, sa / np.where(sb > 0, sb, 1.0), np.nan)

    boot_a, boot_b = weights @ a, weights @ b  # (num_boot, bins)
    overall = ratio(boot_a.sum(-1), boot_b.sum(-1))
    bins = ratio(boot_a, boot_b)

    def clean(x):
        return [None if not np.isfinite(v) else float(v) for v in np.atleast_1d(x)]

    with warnings.catch_warnings():  # a bin empty in every resample: no interval (None)
        warnings.simplefilter("ignore", RuntimeWarning)
        lo, hi = np.nanpercentile(bins, [2.5, 97.5], axis=0)
    return {
        "ratio": float(ratio(a.sum(), b.sum())),
        "low": float(np.percentile(overall, 2.5)),
        "high": float(np.percentile(overall, 97.5)),
        "bins": {
            "ratio": clean(ratio(a.sum(0), b.sum(0))),
            "low": clean(lo),
            "high": clean(hi),
            "crops": [int(c) for c in (np.asarray(run["per_crop"]["count"]) > 0).sum(0)],
        },
        "num_crops": n,
        "num_boot": num_boot,
    }


EVAL_FILE = "emission_eval.json"


KAN_MODELS = ("knet", "ukan", "unet_kan_branch")


def run_name(target: str, kind: str, model: str | None = None, seed: int | None = None) -> str:
    """``<target>_<kind>``, ``+<model>`` for a KAN variant in place of the U-Net and ``@<seed>``
    for a training seed other than the config's (`parse_run_name` reads it back)."""
    return (
        f"{target}_{kind}" + (f"+{model}" if model else "") + ("" if seed is None else f"@{seed}")
    )


def parse_run_name(name: str) -> tuple[str, str, str | None, int | None]:
    """(target, kind, model, seed) of a `run_name`."""
    rest, at, seed = name.partition("@")
    base, plus, model = rest.partition("+")
    target, _, kind = base.rpartition("_")
    return target, kind, model or None, int(seed) if at else None


def run_config(config, target: str, kind: str, model: str | None = None, seed: int | None = None):
    """`config` set to train on `target` from the input kind `kind` (named `run_name`); with
    `model` one of the KAN variants of part II sect. 3.3 at the config's size instead of the
    U-Net: "knet" (KAN output layer), "ukan" (KAN convolutions in all levels but the first)
    or "unet_kan_branch" (a parallel per-pixel KAN 1-10-10-10-1 on the column density); with
    `seed` another training seed (initialisation, batches, augmentation; the crops stay)."""
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; use one of {sorted(TARGETS)}")
    if kind not in INPUT_KINDS:
        raise ValueError(f"emission inputs must be one of {INPUT_KINDS}, got {kind!r}")
    if model is not None and model not in KAN_MODELS:
        raise ValueError(f"model must be one of {KAN_MODELS} (or none: the U-Net), got {model!r}")
    c = config.copy_and_resolve_references()
    with c.unlocked():
        c.data.target = target
        c.data.emission.inputs = kind
        c.name = f"{config.get('name', 'emission')}_{run_name(target, kind, model, seed)}"
        if seed is not None:
            c.seed = int(seed)
        if model:
            c.model.name = model
            if model == "ukan":  # the model's default is the paper's 5 levels
                c.model.kwargs.kan_levels = int(c.model.kwargs.levels) - 1
    return c


def train_input(config, workdir, target: str, kind: str, model: str | None = None) -> dict:
    """Train (or resume) the model of one (target, input kind) in ``<workdir>/<run_name>``
    and evaluate its best checkpoint (`write_evaluation`)."""
    import time
    from pathlib import Path

    from dustjax import training as train

    run_dir = Path(workdir) / run_name(target, kind, model)
    t0 = time.perf_counter()
    summary = train.train_and_evaluate(run_config(config, target, kind, model), run_dir)
    return write_evaluation(run_dir, summary, time.perf_counter() - t0)


def write_evaluation(run_dir, summary: dict | None, train_wall_s: float) -> dict:
    """`evaluate_emission_workdir` of a run's best checkpoint with the training's epochs, stop
    reason (`summary`: the engine's; None for a run stopped from outside, e.g. by a deadline)
    and wall time, written as ``<run_dir>/emission_eval.json``; returns it."""
    import json
    from pathlib import Path

    from dustjax import io as dio
    from dustjax import training as train

    summary = summary or {}
    metrics = evaluate_emission_workdir(run_dir)
    metrics["train_wall_s"] = train_wall_s
    for k in ("epochs_run", "best_epoch", "stop_reason"):
        metrics[k] = summary.get(k)
    config = train.load_config(run_dir)
    if not summary:  # stopped from outside: the epochs its metrics.jsonl recorded
        rows = [
            json.loads(line)
            for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
            if line.strip()
        ]
        if rows:
            best = min(rows, key=lambda r: r["val_loss"])
            metrics.update(epochs_run=rows[-1]["epoch"], best_epoch=best["epoch"])
        metrics["stop_reason"] = "stopped from outside (deadline)"
    n_train = len(emission_splits(config)["train"][COLUMN])
    passes = int(config.data.get("passes_per_epoch", 1) or 1)
    metrics["steps_per_epoch"] = n_train // int(config.batch_size) * passes
    dio.write_json(Path(run_dir) / EVAL_FILE, metrics)
    return metrics


def collect_comparison(workdir, names, extra: dict | None = None) -> dict:
    """The comparison of runs trained separately (e.g. one process each): every
    ``<workdir>/<name>/emission_eval.json`` that exists, the others marked not finished; writes
    ``<workdir>/comparison.{json,md}`` and returns the results."""
    from pathlib import Path

    from dustjax import io as dio

    results = {**(extra or {}), "runs": {}}
    for name in names:
        path = Path(workdir) / name / EVAL_FILE
        done = path.is_file()
        results["runs"][name] = dio.read_json(path) if done else {"skipped": "not finished"}
    _write_comparison(workdir, results)
    return results


def compare_inputs(
    config,
    workdir,
    *,
    inputs=INPUT_KINDS,
    targets=("mass_weighted", "max"),
    deadline_s: float | None = None,
    models=(None,),
) -> dict:
    """Train one U-Net per (target, input kind) on the same crops and compare them.

    Each run lives in ``<workdir>/<target>_<inputs>`` (resumed if interrupted; a finished run is
    evaluated, not retrained). With `deadline_s` (seconds from the call) a run not started in
    time is recorded as skipped. `models`: None (the U-Net) and/or KAN variants (`run_config`),
    each trained on every (target, input kind). Writes ``<workdir>/comparison.json`` and
    ``comparison.md`` (the per-bin table) and returns the results.
    """
    import itertools
    import time

    from dustjax import io as dio

    start = time.perf_counter()
    workdir = dio.ensure_writable_dir(workdir)
    results = {"config": config.get("name", ""), "runs": {}}
    for target in targets:
        if target not in TARGETS:
            raise ValueError(f"unknown target {target!r}; use one of {sorted(TARGETS)}")
        for kind, model in itertools.product(inputs, models):
            name = run_name(target, kind, model)
            if deadline_s is not None and time.perf_counter() - start > deadline_s:
                results["runs"][name] = {"skipped": "time budget"}
                continue
            results["runs"][name] = train_input(config, workdir, target, kind, model)
            _write_comparison(workdir, results)  # after every run: a cut batch keeps its rows
    results["wall_s"] = time.perf_counter() - start
    _write_comparison(workdir, results)
    return results


def _write_comparison(workdir, results: dict) -> None:
    from pathlib import Path

    from dustjax import io as dio

    dio.write_json(Path(workdir) / "comparison.json", results)
    with dio.atomic_path(Path(workdir) / "comparison.md") as tmp:
        tmp.write_text(comparison_table(results))


def comparison_table(results: dict) -> str:
    """Markdown: per target, one row per input kind (MSE, accuracy, MSE per density bin)."""
    lines = []
    runs = results["runs"]

    def split(name):  # run_name -> (target, its row's label: <kind>[+<model>][@<seed>])
        target = parse_run_name(name)[0]
        return target, name[len(target) + 1 :]

    def baseline(label):  # the column-only U-Net of the same training seed
        seed = parse_run_name("t_" + label)[3]
        return "column" + ("" if seed is None else f"@{seed}")

    for target in dict.fromkeys(split(n)[0] for n in runs):
        done = {split(n)[1]: r for n, r in runs.items()
                if split(n)[0] == target and "val_mse" in r}  # fmt: skip
        if not done:
            continue
        edges = next(iter(done.values()))["bins"]["edges_log10_cm3"]
        counts = next(iter(done.values()))["bins"]["count"]
        bins = [f"{edges[i]:.1f}-{edges[i + 1]:.1f}" for i in range(len(edges) - 1)]
        lines.append(f"target {target}: validation MSE [dex^2] per bin of true log10 n")
        lines.append("")
        lines.append("| input | MSE | acc(0.1 dex) | acc(0.2 dex) | " + " | ".join(bins) + " |")
        lines.append("|" + "---|" * (4 + len(bins)))
        lines.append("| (pixels) | | | | " + " | ".join(str(c) for c in counts) + " |")
        ref = next(iter(done.values()))
        lines.append(
            f"| pointwise N->n | {ref['val_mse_reference']:.4f} | | | "
            + " | ".join("" if m is None else f"{m:.3f}" for m in ref["bins"]["mse_reference"])
            + " |"
        )
        for kind, r in done.items():
            lines.append(
                f"| {kind} ({r['input_channels']} ch) | {r['val_mse']:.4f} | "
                f"{r['accuracy_0.1dex']:.3f} | {r['accuracy_0.2dex']:.3f} | "
                + " | ".join("" if m is None else f"{m:.3f}" for m in r["bins"]["mse"])
                + " |"
            )
        lines.append("")
        pairs = [(k, baseline(k)) for k, r in done.items() if "per_crop" in r]
        pairs = [(k, b) for k, b in pairs if k != b and "per_crop" in done.get(b, {})]
        if not pairs:
            continue
        lines.append(
            f"target {target}: MSE / column-only MSE (same training seed), overall and per bin, "
            f"[95 % interval of a paired bootstrap over the validation crops]"
        )
        lines.append("")
        lines.append("| input | MSE ratio | " + " | ".join(bins) + " |")
        lines.append("|" + "---|" * (2 + len(bins)))
        for kind, base in pairs:
            try:
                q = paired_ratio(done[kind], done[base])
            except ValueError:
                continue
            cells = [  # no interval from fewer than MIN_CROPS crops: "(k crops)"
                "" if m is None else f"{m:.2f} ({k} crops)" if lo is None or k < MIN_CROPS
                else f"{m:.2f} [{lo:.2f}, {hi:.2f}]"
                for m, lo, hi, k in zip(q["bins"]["ratio"], q["bins"]["low"], q["bins"]["high"],
                                        q["bins"]["crops"], strict=True)
            ]  # fmt: skip
            lines.append(
                f"| {kind} | **{q['ratio']:.3f}** [{q['low']:.3f}, {q['high']:.3f}] | "
                + " | ".join(cells)
                + " |"
            )
        lines.append("")
    return "\n".join(lines)


def write_cloud_cubes(data_config, out, num: int, seed: int = 0) -> list:
    """Simulate `num` clouds of a config (its grid, cloud ranges and ``emission`` kinematics)
    and save each with its velocity and temperature as ``<out>/cloud_<i>.npz``
    (`dustjax.sims.kinematics.save_cloud`; an existing file is kept, so a re-run resumes).
    Returns the paths. `data_gen/make_cloud_cubes.py` is its command line."""
    from pathlib import Path

    from dustjax import io as dio
    from dustjax.sims import kinematics

    if num < 1:
        raise ValueError(f"num must be >= 1, got {num}")
    out = dio.ensure_writable_dir(out)
    grid = pdata.grid_from_config(data_config)
    sampler = pdata.param_sampler_from_config(data_config)
    settings = settings_from_config(data_config)
    key = jax.random.key(seed)
    paths = []
    for index in range(num):
        key, k_params, k_cube = jax.random.split(key, 3)
        path = Path(out) / f"cloud_{index:05d}.npz"
        paths.append(path)
        if path.exists():
            continue
        kin = settings.sample_kinematics(jax.random.fold_in(k_params, 1))
        params = sampler(k_params)
        state = kinematics.simulate_cloud_state(k_cube, grid, params, kin)
        kinematics.save_cloud(path, state, grid.cell_size_pc, {
            "seed": seed, "index": index,
            "cloud": {k: float(v) for k, v in params._asdict().items()},
            "kinematics": {k: float(v) for k, v in kin._asdict().items()},
            "subgrid_dispersion_kms": float(kinematics.subgrid_dispersion_kms(grid, kin)),
        })  # fmt: skip
    return paths

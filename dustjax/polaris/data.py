"""The U-Net's data for the shared training engine: batches, on-device augmentation, the crop
splits (simulated in memory or read from a data_gen/make_clouds.py dataset) and the engine's
task and data source.

`dustjax.training.tasks` resolves the names of a config lazily to the objects here: the tasks
"polaris" (`TASK`) and "polaris_no_augment" (`TASK_NO_AUGMENT`), the data sources
"polaris_simulate" and "polaris_tfrecord" (`crop_source`). Nothing registers itself on import.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from dustjax.polaris.crops import CropSelection, simulate_crop_dataset
from dustjax.polaris.projection import (
    COLUMN,
    FEATURE_NAMES,
    LOG10_COLUMN_SHIFT,
    LOG10_DENSITY_SHIFT,
    TARGETS,
)
from dustjax.training.tasks import SizedBatches, Task

INPUT_KEY = "column_hat"  # model_input(N), (B, H, W, 1)
TARGET_KEY = "density_hat"  # log10(n) - LOG10_DENSITY_SHIFT, (B, H, W, 1)


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
# data keys that choose among the simulated crops or batch them, not what is simulated
_NOT_IN_CACHE_KEY = ("steps_per_epoch", "eval_steps", "augment", "num_train_crops",
                     "passes_per_epoch")  # fmt: skip


def _cache_key(data_config, seed) -> str:
    import json

    d = data_config.to_dict() if hasattr(data_config, "to_dict") else dict(data_config)
    d = {k: v for k, v in d.items() if k not in _NOT_IN_CACHE_KEY}
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


def preload_splits(data_config, seed: int, splits) -> None:
    """Give `simulated_splits` crops it would simulate for (`data_config`, `seed`), e.g. saved by
    an earlier process (`dustjax.polaris.studies` keeps a study's crops on disk)."""
    _CROP_CACHE[_cache_key(data_config, seed)] = splits


def load_splits(config) -> dict[str, dict[str, np.ndarray]]:
    """Physical-unit crops of the train and validation splits named by a U-Net config.

    ``config.data.num_train_crops`` (0 or absent: all) keeps the first that many training crops
    (the crops are shuffled before the split, so a random subset; the training-set-size study).
    """
    source = config.data.source
    if source == "polaris_simulate":
        splits = simulated_splits(config.data, int(config.data.get("seed", config.seed)))
    elif source == "polaris_tfrecord":
        splits = tfrecord_splits(config.data.data_dir)
    else:
        raise ValueError(f"not a POLARIS data source: {source!r}")
    keep = int(config.data.get("num_train_crops", 0) or 0)
    if keep:
        have = len(splits["train"][COLUMN])
        if not 0 < keep <= have:
            raise ValueError(f"config.data.num_train_crops = {keep}: the train split has {have}")
        splits = {**splits, "train": {k: v[:keep] for k, v in splits["train"].items()}}
    return splits


def batch_source(batch: dict, input_key: str, *, batch_size, seed, epoch, train, passes=1):
    """The engine's batches over in-memory arrays (`crop_source`, and the emission source of
    `dustjax.polaris.multi_input`): shuffled full batches for training (a pure function of
    (seed, epoch), so a resumed run sees the same data), one ordered pass for evaluation.

    A training epoch is `passes` passes, each a fresh permutation cut into the full batches it
    holds: the last ``n % batch_size`` crops of each pass are not seen in it (the paper's
    "virtual batch", sect. 3.5).
    """
    n = len(batch[input_key])
    if train:
        steps = n // batch_size
        if steps < 1:
            raise ValueError(f"{n} training crops give no full batch of {batch_size}")
        passes = int(passes or 1)

        def make():
            for p in range(passes):
                rng = np.random.default_rng([seed, 7, epoch] + ([p] if p else []))
                order = rng.permutation(n)
                for s in range(steps):
                    idx = np.sort(order[s * batch_size : (s + 1) * batch_size])
                    yield {k: v[idx] for k, v in batch.items()}

        return SizedBatches(make, steps * passes)

    def make_eval():
        for start in range(0, n, batch_size):
            yield {k: v[start : start + batch_size] for k, v in batch.items()}

    return SizedBatches(make_eval, math.ceil(n / batch_size))


def crop_source(config, split, *, batch_size, seed, epoch, train):
    """Engine data source over the in-memory crops (`batch_source`); a training epoch is
    ``config.data.passes_per_epoch`` (default 1) passes over the training crops."""
    if split not in ("train", "validation"):
        raise ValueError(f"POLARIS datasets have train and validation splits, not {split!r}")
    batch = to_model_batch(load_splits(config)[split], config.data.get("target", "mass_weighted"))
    return batch_source(
        batch, INPUT_KEY, batch_size=batch_size, seed=seed, epoch=epoch, train=train,
        passes=config.data.get("passes_per_epoch", 1),
    )  # fmt: skip


#: The engine's tasks (`dustjax.training.tasks` names them "polaris" and "polaris_no_augment").
TASK = Task(input_key=INPUT_KEY, target_key=TARGET_KEY, augment=dihedral_augment)
TASK_NO_AUGMENT = Task(input_key=INPUT_KEY, target_key=TARGET_KEY, augment=None)

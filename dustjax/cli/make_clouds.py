r"""Simulate a POLARIS training set: column density crops and their three density targets.

    dustjax-make-clouds --out=data/clouds --num=3000 \
        [--config=unet]
    dustjax-make-clouds --out=data/clouds_cpu --config=unet_cpu

Cloud cubes (`dustjax.sims.clouds`, grid and parameter ranges from the U-Net config's ``data``
section) are projected along their three axes; random non-overlapping crops are kept with
probability sigmoid(A (s - B)) of their score (appendix B); the crops are shuffled and split
80/20 into train and validation (sect. 2.1). Features, float32 in physical units, shape
(crop, crop): ``column_density`` (cm^-2), ``density_mass_weighted`` <n>_M (eq. 3),
``density_volume_weighted`` <n>_V (eq. 2), ``density_max`` (cm^-3). Written as TFRecord shards
with `dustjax.io.write_sharded_dataset` (dustjax_dataset.json last, so an interrupted run never
looks complete; re-running the same command resumes, and the same seed gives the same bytes).
Train on it with ``--config.data.source=polaris_tfrecord --config.data.data_dir=<out>``.
"""

from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Define the command-line flags (only when run as a program, so that importing this module
    for its library function never collides with the flags of other entry points)."""
    from dustjax.configs import config_path

    config_flags.DEFINE_config_file(
        "config", config_path("unet"), "U-Net config (name or file) whose data section is used."
    )
    flags.DEFINE_string("out", None, "Output directory.")
    flags.DEFINE_integer("num", None, "Number of crops (default: config.data.num_crops).")
    flags.DEFINE_integer("seed", None, "Random seed (default: config.data.seed).")
    flags.DEFINE_bool("overwrite", False, "Replace an existing dataset in --out.")
    flags.DEFINE_integer("examples_per_shard", 256, "Crops per TFRecord shard.")


def make_clouds(data_config, out: str, num: int, seed: int, *, overwrite: bool = False,
                examples_per_shard: int = 256):  # fmt: skip
    """Library entry point: simulate `num` crops for `data_config` and write them to `out`."""
    import dataclasses

    import dustjax
    from dustjax import io as dio
    from dustjax.polaris import crops as pcrops
    from dustjax.polaris import data as pdata
    from dustjax.polaris import projection

    grid = pdata.grid_from_config(data_config)
    selection = pdata.selection_from_config(data_config)
    splits = pdata.split_counts(num, float(data_config.get("validation_fraction", 0.2)))
    target = data_config.get("target", "mass_weighted")
    features, info = pcrops.simulate_crop_dataset(
        seed, num, grid, selection,
        param_sampler=pdata.param_sampler_from_config(data_config),
        score_target=target, progress=True,
    )  # fmt: skip
    size = selection.crop_size
    metadata = dict(
        kind="polaris_clouds",
        grid=dataclasses.asdict(grid),
        crop=dataclasses.asdict(selection),
        cloud_ranges={k: list(v) for k, v in dict(data_config.get("cloud_ranges") or {}).items()},
        score_target=target,
        seed=seed,
        pixel_size_pc=grid.cell_size_pc,
        units=dict(column_density="cm^-2", density="cm^-3"),
        simulated=info,
        dustjax_version=dustjax.__version__,
    )

    def make_examples(start, count):
        return {k: v[start : start + count] for k, v in features.items()}

    return dio.write_sharded_dataset(
        out,
        splits=splits,
        features={name: (size, size) for name in projection.FEATURE_NAMES},
        make_examples=make_examples,
        metadata=metadata,
        examples_per_shard=examples_per_shard,
        overwrite=overwrite,
        desc="cloud crops",
    )


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from dustjax.runtime import configure_xla, quiet_library_logs

    configure_xla()  # before anything starts JAX's backend
    quiet_library_logs()
    if not FLAGS.out:
        raise app.UsageError("--out is required")
    from dustjax.io import DatasetError, OutputError

    data = FLAGS.config.data
    num = FLAGS.num if FLAGS.num is not None else int(data.num_crops)
    seed = FLAGS.seed if FLAGS.seed is not None else int(data.get("seed", 0))
    try:
        out = make_clouds(data, FLAGS.out, num, seed, overwrite=FLAGS.overwrite,
                          examples_per_shard=FLAGS.examples_per_shard)  # fmt: skip
    except (ValueError, DatasetError, OutputError, RuntimeError) as err:
        sys.exit(f"error: {err}")
    logging.info("wrote %d crops to %s", num, out)
    print(out)


if __name__ == "__main__":
    import dustjax.cli

    dustjax.cli.run(sys.modules[__name__])

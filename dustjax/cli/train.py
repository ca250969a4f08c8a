r"""Train a model (V-net or U-Net) with `dustjax.training.train_and_evaluate` (thin entry point).

    dustjax-train --config=vnet_sr [--workdir=...]
        [--config.optimizer.learning_rate=3e-4 ...] [--data_dir=data/SR]
    make train REGION=LR            # = --region=LR --model=vnet --data_dir=data/LR
                                    #   --make_data_if_missing, no --config

Without --config the region's paper config is used when an accelerator is present
(config <model>_<region>), else its CPU variant (<model>_<region>_cpu); the
first log lines say which. The default workdir is workdirs/<config name>. A run restarted on its
workdir resumes from the last checkpoint.
"""

from __future__ import annotations

import sys
from pathlib import Path

import jax
from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS


#: `dustjax.cli.run` adds the runtime flags (several processes, compilation cache).
USES_RUNTIME_FLAGS = True


def define_flags() -> None:
    """Define the command-line flags (only when run as a program, so importing this module
    from a test or notebook never collides with another entry point's flags)."""
    config_flags.DEFINE_config_file(
        "config", None, "Config name (vnet_sr, vnet_lr, unet, ...) or file.", lock_config=True
    )
    flags.DEFINE_string("workdir", None, "Run directory (default workdirs/<config name>).")
    flags.DEFINE_string(
        "region", "SR", "Region (SR or LR): picks the config when --config is absent."
    )
    flags.DEFINE_enum("model", "vnet", ["vnet", "unet"], "Model family (picks the config).")
    flags.DEFINE_string(
        "data_dir", None, "TFRecord dataset directory (overrides config.data.data_dir)."
    )
    flags.DEFINE_bool(
        "make_data_if_missing", False, "Simulate the dataset with data_gen.make_dataset if absent."
    )


def resolve_data_dir(config, region_flag: str, region_flag_given: bool) -> None:
    """Apply --data_dir, keeping a Makefile default (data/<REGION>) from pointing a config of
    another region at the wrong dataset."""
    if not FLAGS.data_dir or config.data.get("source") != "tfrecord":
        return
    data_dir = FLAGS.data_dir
    config_region = str(config.data.get("region", "")).upper()
    if (
        region_flag_given
        and config_region
        and region_flag.upper() != config_region
        and Path(data_dir) == Path("data") / region_flag
    ):
        logging.warning(
            "--region=%s but the config trains on %s: ignoring --data_dir=%s, using %s",
            region_flag, config_region, data_dir, config.data.data_dir,
        )  # fmt: skip
        return
    config.data.data_dir = data_dir


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from dustjax.cli.runtime_flags import start_runtime

    start_runtime()  # XLA flags, compilation cache, several processes: before any JAX work
    from dustjax import training
    from dustjax.cli.make_dataset import ensure_dataset
    from dustjax.configs import choose_config
    from dustjax.io import DatasetError, OutputError, check_can_write_dir

    if FLAGS.config is not None:
        config = FLAGS.config
        logging.info("config %s from --config", config.get("name", "?"))
    else:
        try:
            config = choose_config(FLAGS.model, FLAGS.region)
        except ValueError as err:
            raise app.UsageError(str(err)) from None
    with config.unlocked():
        resolve_data_dir(config, FLAGS.region, FLAGS["region"].present)
    workdir = FLAGS.workdir or str(Path("workdirs") / config.get("name", "run"))
    try:  # before any data is simulated or any step is run
        check_can_write_dir(workdir)
    except OutputError as err:
        sys.exit(f"error: {err}")
    if FLAGS.make_data_if_missing:
        ensure_dataset(config)
    logging.info("workdir %s; %d device(s): %s", workdir, jax.device_count(), jax.devices())
    try:
        summary = training.train_and_evaluate(config, workdir)
    except (training.NonFiniteLossError, ValueError, OSError, DatasetError) as err:
        logging.error("%s", err)
        sys.exit(f"error: {err}")
    logging.info("summary: %s", summary)
    if (config.get("eval") or {}).get("after_training"):  # the test split, figures, next step
        from dustjax.vnet.report import after_training

        print(after_training(config, workdir, summary), flush=True)


if __name__ == "__main__":
    import dustjax.cli

    dustjax.cli.run(sys.modules[__name__])

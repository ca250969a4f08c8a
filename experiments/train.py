r"""Train a model (V-net or U-Net) with `dustjax.train.train_and_evaluate` (thin entry point).

    python -m experiments.train --config=experiments/configs/vnet_sr.py [--workdir=...]
        [--config.optimizer.learning_rate=3e-4 ...] [--data_dir=data/SR]
    make train REGION=LR            # = --region=LR --model=vnet --data_dir=data/LR
                                    #   --make_data_if_missing, no --config

Without --config the region's paper config is used when an accelerator is present
(experiments/configs/<model>_<region>.py), else its CPU variant (<model>_<region>_cpu.py); the
first log lines say which. The default workdir is workdirs/<config name>. A run restarted on its
workdir resumes from the last checkpoint.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from dustjax import train
from dustjax.io import DatasetError

CONFIG_DIR = Path(__file__).resolve().parent / "configs"

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Define the command-line flags (only when run as a program, so importing this module
    from a test or notebook never collides with another entry point's flags)."""
    config_flags.DEFINE_config_file(
        "config", None, "Config file, e.g. experiments/configs/vnet_sr.py.", lock_config=True
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


def has_accelerator() -> bool:
    return jax.default_backend() != "cpu"


def default_config_names(model: str, region: str, accelerator: bool) -> list[str]:
    """Config names tried, in order, when --config is absent."""
    region = region.lower()
    paper = [f"{model}_{region}"] + (["unet"] if model == "unet" else [])
    cpu = [f"{model}_{region}_cpu"] + (["unet_cpu"] if model == "unet" else [])
    return paper if accelerator else cpu


def load_config_module(name: str):
    path = CONFIG_DIR / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"experiments.configs.{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def choose_config(model: str, region: str):
    accelerator = has_accelerator()
    names = default_config_names(model, region, accelerator)
    for name in names:
        if (CONFIG_DIR / f"{name}.py").exists():
            device = jax.default_backend()
            why = (
                f"accelerator found ({device}): the paper's config"
                if accelerator
                else "no accelerator (CPU only): the small CPU variant"
            )
            logging.info("no --config given; %s -> experiments/configs/%s.py", why, name)
            return load_config_module(name)
    raise app.UsageError(
        f"no config for --model={model} --region={region}: looked for "
        + ", ".join(f"experiments/configs/{n}.py" for n in names)
        + (" (the U-Net configs come with issue 5)" if model == "unet" else "")
        + "; pass --config=..."
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


def ensure_dataset(config) -> None:
    """Make the TFRecord dataset with data_gen.make_dataset if it is missing."""
    if config.data.get("source") != "tfrecord":
        return
    from dustjax.io import DATASET_INFO

    data_dir = Path(config.data.data_dir)
    if (data_dir / DATASET_INFO).exists():
        return
    simulator = config.data.get("simulator") or None
    logging.info(
        "no dataset in %s: simulating %d %s cubes (%s) with data_gen.make_dataset",
        data_dir, config.data.num_examples, config.data.region, simulator or "default simulator",
    )  # fmt: skip
    try:
        from data_gen.make_dataset import make_dataset
    except flags.DuplicateFlagError:
        make_dataset = None
    if make_dataset is None:
        # data_gen.make_dataset defines its absl flags at import, which collides with ours
        # (--region): run it as its own program instead.
        cmd = [
            sys.executable, "-m", "data_gen.make_dataset", f"--region={config.data.region}",
            f"--num={int(config.data.num_examples)}", f"--out={data_dir}",
            f"--seed={int(config.seed)}",
        ] + ([f"--simulator={simulator}"] if simulator else [])  # fmt: skip
        logging.info("running %s", " ".join(cmd))
        proc = subprocess.run(cmd)
        if proc.returncode != 0:
            raise ValueError(f"making the dataset failed (exit {proc.returncode}): {' '.join(cmd)}")
        return
    make_dataset(
        config.data.region, int(config.data.num_examples), str(data_dir), int(config.seed),
        simulator=simulator,
    )  # fmt: skip


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from dustjax.accel import configure_xla
    from dustjax.train import quiet_library_logs

    configure_xla()  # before anything starts JAX's backend
    quiet_library_logs()
    if FLAGS.config is not None:
        config = FLAGS.config
        logging.info("config %s from --config", config.get("name", "?"))
    else:
        config = choose_config(FLAGS.model, FLAGS.region)
    with config.unlocked():
        resolve_data_dir(config, FLAGS.region, FLAGS["region"].present)
    if FLAGS.make_data_if_missing:
        ensure_dataset(config)
    workdir = FLAGS.workdir or str(Path("workdirs") / config.get("name", "run"))
    logging.info("workdir %s; %d device(s): %s", workdir, jax.device_count(), jax.devices())
    try:
        summary = train.train_and_evaluate(config, workdir)
    except (train.NonFiniteLossError, ValueError, FileNotFoundError, DatasetError) as err:
        logging.error("%s", err)
        sys.exit(f"error: {err}")
    logging.info("summary: %s", summary)


if __name__ == "__main__":
    define_flags()
    app.run(main)

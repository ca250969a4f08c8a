r"""Train (or resume) a POLARIS U-Net and measure it against the pointwise reference (item 6).

    dustjax-polaris-validate --config=unet \
        --workdir=workdirs/unet --out=workdirs/unet/validation
    dustjax-polaris-validate --workdir=workdirs/unet_cpu --skip_training

One command for a validation run (`dustjax.polaris.evaluate.train_and_validate`):
`dustjax.training.train_and_evaluate` on the config (resuming a workdir that holds a checkpoint),
then `dustjax.polaris.evaluate.evaluate_workdir`: the validation MSE of
the U-Net in log10, that of the best pointwise N -> n lookup table fitted on the training crops,
their ratio (target <= 0.75), accuracy(sigma) (eqs. 5-6), residuals per density bin, spatial
errors, the appendix-C residual correction, JSON and PNGs (figs. 8-13) in --out. Needs neither
tensorflow nor astropy with the default "polaris_simulate" source. Prints a table at the end.
"""

from __future__ import annotations

import sys
from pathlib import Path

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Define the command-line flags (only when run as a program, so that importing this module
    for its library function never collides with the flags of other entry points)."""
    config_flags.DEFINE_config_file("config", None, "U-Net config file.", lock_config=True)
    flags.DEFINE_string("workdir", None, "Training workdir (default workdirs/<config name>).")
    flags.DEFINE_string("out", None, "Output directory (default <workdir>/validation).")
    flags.DEFINE_bool("skip_training", False, "Only evaluate the workdir's best checkpoint.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from dustjax import runtime
    from dustjax.polaris import evaluate
    from dustjax.training import NonFiniteLossError

    runtime.configure_xla()
    runtime.quiet_library_logs()
    config = FLAGS.config
    if FLAGS.workdir is None and config is None:
        raise app.UsageError("pass --config (to train) or --workdir (to evaluate)")
    if config is None and not FLAGS.skip_training:
        raise app.UsageError("training needs --config (or pass --skip_training)")
    workdir = FLAGS.workdir or str(Path("workdirs") / config.get("name", "unet"))
    try:
        metrics = evaluate.train_and_validate(
            config, workdir, FLAGS.out, skip_training=FLAGS.skip_training
        )
    except (ValueError, FileNotFoundError, NonFiniteLossError) as err:
        logging.error("%s", err)
        sys.exit(f"error: {err}")
    print("\n" + evaluate.summary_table(metrics))
    print(f"results in {FLAGS.out or Path(workdir) / 'validation'}")


if __name__ == "__main__":
    import dustjax.cli

    dustjax.cli.run(sys.modules[__name__])

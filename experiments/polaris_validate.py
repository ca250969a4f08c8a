r"""Train (or resume) a POLARIS U-Net and measure it against the pointwise reference (item 6).

    python -m experiments.polaris_validate --config=experiments/configs/unet.py \
        --workdir=workdirs/unet --out=workdirs/unet/validation
    python -m experiments.polaris_validate --workdir=workdirs/unet_cpu --skip_training

One command for a validation run: `dustjax.train.train_and_evaluate` on the config (resuming a
workdir that holds a checkpoint), then `dustjax.polaris.evaluate_workdir`: the validation MSE of
the U-Net in log10, that of the best pointwise N -> n lookup table fitted on the training crops,
their ratio (target <= 0.75), accuracy(sigma) (eqs. 5-6), residuals per density bin, spatial
errors, the appendix-C residual correction, JSON and PNGs (figs. 8-13) in --out. Needs neither
tensorflow nor astropy with the default "polaris_simulate" source. Prints a table at the end.
"""

from __future__ import annotations

import sys
import time
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
    from dustjax import polaris, train

    train.quiet_library_logs()
    start = time.perf_counter()
    config = FLAGS.config
    if FLAGS.workdir is None and config is None:
        raise app.UsageError("pass --config (to train) or --workdir (to evaluate)")
    workdir = FLAGS.workdir or str(Path("workdirs") / config.get("name", "unet"))
    try:
        if not FLAGS.skip_training:
            if config is None:
                raise app.UsageError("training needs --config (or pass --skip_training)")
            polaris.register_with_engine()
            train.train_and_evaluate(config, workdir)
        train_s = time.perf_counter() - start
        metrics = polaris.evaluate_workdir(workdir, FLAGS.out)
    except (ValueError, FileNotFoundError, train.NonFiniteLossError) as err:
        logging.error("%s", err)
        sys.exit(f"error: {err}")
    t = metrics.get("training", {})
    rows = [
        ("target", metrics["target"]),
        ("train / validation crops",
         f"{metrics['num_train_crops']} / {metrics['num_validation_crops']}"),
        ("epochs (best)", f"{t.get('epochs_run', '?')} ({t.get('best_epoch', '?')})"),
        ("backend, dtype", f"{t.get('backend', '?')}, {t.get('compute_dtype', '?')}"),
        ("val MSE U-Net [dex^2]", f"{metrics['val_mse_model']:.5f}"),
        (f"val MSE reference ({metrics['reference_method']})",
         f"{metrics['val_mse_reference']:.5f}"),
        ("val MSE constant mean", f"{metrics['val_mse_constant_mean']:.5f}"),
        ("ratio U-Net / reference (target <= 0.75)",
         f"{metrics['mse_ratio_model_over_reference']:.3f} "
         f"({'PASS' if metrics['passes_ratio_target'] else 'FAIL'})"),
        ("accuracy(0.1 dex) U-Net / reference",
         _acc(metrics, 0.1)),
        ("residual correction MSE (held-out half)",
         f"{metrics['residual_correction']['val_mse_second_half_before']:.5f} -> "
         f"{metrics['residual_correction']['val_mse_second_half_after']:.5f}"),
        ("train+simulate / total wall time [s]",
         f"{train_s:.0f} / {time.perf_counter() - start:.0f}"),
    ]  # fmt: skip
    width = max(len(r[0]) for r in rows)
    print("\n" + "\n".join(f"{k:<{width}}  {v}" for k, v in rows))
    print(f"results in {FLAGS.out or Path(workdir) / 'validation'}")


def _acc(metrics, sigma):
    import numpy as np

    a, r = metrics["accuracy_model"], metrics["accuracy_reference"]
    i = int(np.argmin(np.abs(np.asarray(a["sigma"]) - sigma)))
    return f"{a['mean'][i]:.3f} / {r['mean'][i]:.3f} (sigma = {a['sigma'][i]:g})"


if __name__ == "__main__":
    define_flags()
    app.run(main)

r"""Evaluate a trained V-net as in the paper (Chen, Qin & Li sect. 3.3) on the test split.

    dustjax-evaluate --workdir=workdirs/vnet_sr [--data_dir=data/SR] [--max_cubes=0]
    make evaluate WORKDIR=workdirs/vnet_sr

A thin entry point: the flags go to `dustjax.vnet.evaluate.evaluate`, which says what is
computed and written (``<workdir>/eval*/test_metrics.json`` and the paper's figures 7-9).
"""

from __future__ import annotations

import sys

from absl import app, flags

FLAGS = flags.FLAGS


#: `dustjax.cli.run` adds the runtime flags (several processes, compilation cache).
USES_RUNTIME_FLAGS = True


def define_flags() -> None:
    """Define the command-line flags (only when run as a program, so importing this module
    from a test or notebook never collides with another entry point's flags)."""
    flags.DEFINE_string("workdir", None, "Training workdir (holds config.json and checkpoints/).")
    flags.DEFINE_string("data_dir", None, "TFRecord dataset (default: the one in config.json).")
    flags.DEFINE_enum("which", "best", ["best", "latest"], "Which checkpoint to evaluate.")
    flags.DEFINE_integer("max_cubes", 0, "Evaluate at most this many test cubes (0 = all).")
    flags.DEFINE_string("split", "test", "Split to evaluate.")
    from dustjax.vnet.symmetry import GROUPS

    flags.DEFINE_enum(
        "symmetry", None, list(GROUPS),
        "Average the prediction over the region's symmetries: SR's Levy flights have all 8 "
        "(dihedral), LR's log-normal field the Y reflection (flip_y); dustjax.vnet.symmetry "
        "(default: config.eval.symmetry, else none); results go to "
        "eval_<symmetry>/ instead of eval/.",
    )  # fmt: skip
    flags.DEFINE_enum(
        "bn_stats", "running", ["running", "population"],
        "Batch-norm statistics: the running averages saved in training, or recomputed as the mean "
        "over --bn_batches training batches (results in eval*_popbn/).",
    )  # fmt: skip
    flags.DEFINE_integer("bn_batches", 64, "Training batches for --bn_stats=population.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from dustjax.cli.runtime_flags import start_runtime

    start_runtime()  # XLA flags, compilation cache, several processes: before any JAX work
    from dustjax.vnet.evaluate import evaluate

    if not FLAGS.workdir:
        raise app.UsageError("--workdir is required (a directory written by experiments.train)")
    try:
        evaluate(FLAGS.workdir, FLAGS.data_dir, which=FLAGS.which, max_cubes=FLAGS.max_cubes,
                 split=FLAGS.split, symmetry=FLAGS.symmetry, bn_stats=FLAGS.bn_stats,
                 bn_batches=FLAGS.bn_batches)  # fmt: skip
    except (FileNotFoundError, ValueError) as err:  # RegionError is a ValueError
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    import dustjax.cli

    dustjax.cli.run(sys.modules[__name__])

r"""Does 13CO emission help the U-Net? Column-only vs column + moments vs column + PPV.

    python -m tools.polaris_emission_compare \
        --config=experiments/configs/unet_emission_cpu.py --workdir=workdirs/emission_cpu
    python -m tools.polaris_emission_compare --config=experiments/configs/unet_emission_test.py \
        --workdir=/tmp/emission_test --targets=mass_weighted

Trains one U-Net per target (<n>_M, max n; part III sect. 8.1-8.2) and input kind on the same
simulated crops (`dustjax.polaris.multi_input.compare_inputs`) and prints the table of validation
MSE per bin of true density (also written as <workdir>/comparison.{json,md}). Resumable: a
finished run is evaluated, not retrained. With --models=unet,knet,ukan,unet_kan_branch the KAN
variants (part II sect. 3.3) train on the same crops beside the U-Net.
"""

from __future__ import annotations

import sys

from absl import app, flags
from ml_collections import config_flags

FLAGS = flags.FLAGS


def define_flags() -> None:
    from dustjax.configs import config_path

    config_flags.DEFINE_config_file(
        "config", config_path("unet_emission_cpu"), "Multi-input U-Net config (name or file)."
    )
    flags.DEFINE_string("workdir", None, "Root of the runs (one sub-directory per run).")
    flags.DEFINE_list("inputs", ["column", "moments", "ppv"], "Input kinds to compare.")
    flags.DEFINE_list("targets", ["mass_weighted", "max"], "Targets.")
    flags.DEFINE_float("deadline_s", None, "Start no run after this many seconds.")
    flags.DEFINE_list(
        "models", ["unet"], "unet and/or the KAN variants knet, ukan, unet_kan_branch."
    )


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not FLAGS.workdir:
        raise app.UsageError("--workdir is required")
    from dustjax import runtime
    from dustjax.polaris.multi_input import compare_inputs, comparison_table

    runtime.quiet_library_logs()
    results = compare_inputs(
        FLAGS.config, FLAGS.workdir, inputs=tuple(FLAGS.inputs), targets=tuple(FLAGS.targets),
        deadline_s=FLAGS.deadline_s,
        models=tuple(None if m == "unet" else m for m in FLAGS.models),
    )  # fmt: skip
    print(comparison_table(results))


if __name__ == "__main__":
    import dustjax.cli

    dustjax.cli.run(sys.modules[__name__])  # --config takes a packaged name or the old spelling

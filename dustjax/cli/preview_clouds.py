r"""Preview one simulated cloud: column density along 3 axes and the targets (paper figs. 5-7).

    dustjax-preview-clouds --out=clouds_preview.png \
        [--config=unet_cpu] [--seed=0]

Top row: column density N along x, y and z (fig. 5). Middle row, for the projection along z:
<n>_M (eq. 3), <n>_V = N / L (eq. 2) and max n. Bottom row: the N - <n>_M correlation of all
pixels (fig. 6) and a dense and a diffuse accepted crop (fig. 7). Also prints the density range.
The figure is `dustjax.polaris.plots.preview_cloud`.
"""

from __future__ import annotations

import sys

from absl import app, flags
from ml_collections import config_flags

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Define the command-line flags (only when run as a program, so that importing this module
    for its library function never collides with the flags of other entry points)."""
    from dustjax.configs import config_path

    config_flags.DEFINE_config_file(
        "config", config_path("unet_cpu"), "U-Net config (name or file) whose data section is used."
    )
    flags.DEFINE_string("out", "clouds_preview.png", "Output PNG.")
    flags.DEFINE_integer("seed", 0, "Seed of the cube.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from dustjax.runtime import configure_xla, quiet_library_logs

    configure_xla()  # before anything starts JAX's backend
    quiet_library_logs()
    from dustjax.polaris.plots import preview_cloud

    summary = preview_cloud(FLAGS.config.data, FLAGS.out, FLAGS.seed)
    for key, value in summary.items():
        print(f"{key:>16}: {value:.4g}")
    print(f"wrote {FLAGS.out}")


if __name__ == "__main__":
    import dustjax.cli

    dustjax.cli.run(sys.modules[__name__])

r"""Simulate cloud cubes with their gas velocities and temperatures (issue 21, part III).

    dustjax-make-cloud-cubes --config=unet_emission_cpu --out=data/cloud_cubes --num=10
    python -m data_gen.make_cloud_cubes --config=experiments/configs/unet_emission_cpu.py \
        --out=data/cloud_cubes --num=10 [--seed=0]

Each cloud (`dustjax.sims.clouds` density, cm^-3; `dustjax.sims.kinematics` turbulent velocity
(3, n, n, n) in km/s with a Larson-like size-linewidth relation and temperature in K; the ranges
of the config's ``data`` and ``data.emission`` sections) is written as ``cloud_<i>.npz`` with its
parameters as JSON metadata; read with `dustjax.sims.kinematics.load_cloud`. Files are written
atomically and an existing one is kept, so re-running the command resumes. The 13CO cubes of a
saved cloud: `dustjax.polaris.emission.cloud_ppv(state, axis, cell_size_pc, ...)`.
"""

from __future__ import annotations

import sys

from absl import app, flags
from ml_collections import config_flags

FLAGS = flags.FLAGS


def define_flags() -> None:
    config_flags.DEFINE_config_file(
        "config", "experiments/configs/unet_emission_cpu.py", "Config whose data section is used."
    )
    flags.DEFINE_string("out", None, "Output directory.")
    flags.DEFINE_integer("num", 1, "Number of clouds.")
    flags.DEFINE_integer("seed", 0, "Random seed.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not FLAGS.out:
        raise app.UsageError("--out is required")
    from dustjax.io import OutputError
    from dustjax.polaris.multi_input import write_cloud_cubes

    try:
        paths = write_cloud_cubes(FLAGS.config.data, FLAGS.out, FLAGS.num, FLAGS.seed)
    except (ValueError, OutputError) as err:
        sys.exit(f"error: {err}")
    print(f"{len(paths)} clouds in {FLAGS.out}")


if __name__ == "__main__":
    import dustjax.cli

    dustjax.cli.run(sys.modules[__name__])

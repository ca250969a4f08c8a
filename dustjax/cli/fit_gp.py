r"""Fit the latent log-density GP (Dharmawardena et al. 2022) to a star catalogue.

    dustjax-fit-gp --config=gp_paper_sim --workdir=DIR \
        [--config.fit.max_iterations=500 --config.data.simulation.num_stars=20000 ...]
    make gp CONFIG=gp_test

Writes into the workdir: summary.json (hyperparameters, ELBO history, masses, timings, and for
simulations the paper-comparison metrics), final_state.npz, density/extinction FITS cubes with
(GLON, GLAT, distance) WCS, and figs. 2-5 and B.1 as PNGs. All logic lives in
`dustjax.gp.pipeline.fit_and_predict`, which notebooks call directly.
"""

from __future__ import annotations

import json
import sys

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS


#: `dustjax.cli.run` adds the runtime flags (several processes, compilation cache).
USES_RUNTIME_FLAGS = True


def define_flags() -> None:
    """Command-line flags, defined only when run as a program (importing defines none)."""
    config_flags.DEFINE_config_file(
        "config", None, "Config name (gp_test, gp_paper_sim, ...) or file.", lock_config=True
    )
    flags.DEFINE_string("workdir", None, "Output directory (default workdirs/<config name>).")
    flags.DEFINE_bool("progress", True, "Show a progress bar with the ELBO.")


def configure_jax(config) -> None:
    """The entry point, not the library, sets process-wide JAX flags: 64-bit for float64 runs."""
    if str(config.get("dtype", "float32")) == "float64":
        import jax

        jax.config.update("jax_enable_x64", True)


def main(argv):
    del argv
    if FLAGS.config is None:
        raise app.UsageError("--config is required, e.g. --config=gp_test")
    config = FLAGS.config
    workdir = FLAGS.workdir or f"workdirs/{config.get('name', 'gp')}"
    from dustjax.cli.runtime_flags import start_runtime

    configure_jax(config)
    start_runtime()  # XLA flags, compilation cache, several processes: before any JAX work
    from dustjax.catalog import CatalogError
    from dustjax.gp.pipeline import fit_and_predict
    from dustjax.io import OutputError

    try:
        summary = fit_and_predict(config, workdir, progress=FLAGS.progress)
    except (CatalogError, FileNotFoundError, OutputError, ValueError, FloatingPointError) as err:
        logging.error("%s", err)
        print(f"fit_gp: error: {err}", file=sys.stderr)
        sys.exit(1)
    from dustjax import distributed

    if not distributed.is_primary():  # process 0 predicts, writes and reports
        return
    brief = dict(
        status=summary["status"],
        iterations=summary["iterations"],
        hyperparameters=summary["hyperparameters"],
        dust_mass_eq9_msun=summary["dust_mass_eq9_msun"],
        dust_mass_in_box_msun=summary["dust_mass_in_box_msun"],
        timings=summary["timings"],
    )
    if "simulation" in summary:
        metrics = dict(summary["simulation"]["metrics"])
        metrics.pop("clumps", None)
        brief["metrics"] = metrics
    print(json.dumps(brief, indent=2))
    print(f"outputs in {workdir}")


if __name__ == "__main__":
    import dustjax.cli

    dustjax.cli.run(sys.modules[__name__])

r"""Why the latent GP's 16-84 % star-extinction bands hold the truth less than 68 % of the time.

    python -m tools.gp_coverage_check --workdir=/tmp/gp_cov     # ~1 min on 2 CPU cores

Fits the CPU-sized simulated test (`experiments/configs/gp_paper_sim_cpu.py`: 20,000 stars,
12 x 12 x 20 grid, 300 inducing points), then compares each star's predicted 16-84 % band with
two truths: the simulated (noise-free) extinction, and the extinction the training grid itself
can represent (the true density at the grid's cell centres, integrated by the same eqs. 7-8
operator as the model). The gap between the two coverages is what the grid's discretisation
costs; what stays below 68 % against the representable truth is the variational posterior's
own narrowness.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from absl import app, flags

from dustjax.gp import fit as gpfit
from dustjax.gp import pipeline, predict
from dustjax.gp.grid import LBDGrid
from dustjax.los import apply_star_operator
from experiments.configs.gp_paper_sim_cpu import get_config

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", "/tmp/gp_coverage_check", "Where the fit writes its outputs.")
flags.DEFINE_integer("star_samples", 256, "Posterior samples for the star percentiles.")


def main(argv):
    del argv
    config = get_config()
    config.fit.calibration_fraction = 0.0  # every star in the fit: the model's own bands
    pipeline.fit_and_predict(config, FLAGS.workdir, progress=True)
    grid = LBDGrid.from_dict(dict(config.grid))
    catalog, _, truth = pipeline.load_stars(config, grid)
    stars = gpfit.make_star_data(catalog, grid, num_shards=1)
    state = f"{FLAGS.workdir}/final_state.npz"
    params = {k: jnp.asarray(v) for k, v in gpfit.load_params(state).items()}
    with np.load(state) as data:
        jitter = float(data["meta_jitter"])
    n = len(catalog)
    flat_index = np.asarray(stars.flat_index)[:n]
    partial_pc = np.asarray(stars.partial_pc)[:n]
    p16, p50, p84 = predict.predict_star_extinctions(
        params, grid, flat_index, partial_pc, jitter=jitter, num_samples=FLAGS.star_samples
    )
    true_ext = truth["extinction"]
    density = truth["field"].density(grid.cell_centres_xyz()).reshape(grid.full_shape)
    representable = np.asarray(
        apply_star_operator(
            jnp.asarray(density, jnp.float32),
            jnp.asarray(flat_index),
            jnp.asarray(partial_pc, jnp.float32),
            jnp.asarray(grid.d_widths_pc(), jnp.float32),
        )
    )

    def coverage(t):
        return float(np.mean((p16 <= t) & (t <= p84)))

    def median_rel(a, b):
        return float(np.median(np.abs(a - b) / b))

    rows = [
        ("16-84 % band holds the simulated extinction", f"{coverage(true_ext):.3f}"),
        ("16-84 % band holds the grid-representable extinction", f"{coverage(representable):.3f}"),
        ("median |representable - simulated| / simulated", f"{median_rel(representable, true_ext):.4f}"),  # noqa: E501
        ("median band half-width / median", f"{float(np.median((p84 - p16) / 2 / p50)):.4f}"),
        ("median |median - simulated| / simulated", f"{median_rel(p50, true_ext):.4f}"),
    ]  # fmt: skip
    print(f"{n} stars")
    for label, value in rows:
        print(f"{label:<55} {value}")


if __name__ == "__main__":
    app.run(main)

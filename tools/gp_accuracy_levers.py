r"""Which lever closes the GP's accuracy gap to the nearest neighbours on the real sky (issue 18).

    python -m tools.gp_accuracy_levers --cube=../shared/data/real/bayestar19_LR_anticentre.fits \
        --label=base_m250 --num_inducing=250 --out=/tmp/levers.jsonl

A reduced copy of the paper-size real-sky test (`dustjax.gp.realsky`, Taurus-Perseus, 120,000
stars in l 150-180, b -25..-5, d 100-600 pc, grid 60 x 40 x 100 + 2 ghost cells, M = 1,000-1,500):
by default a 10 x 10 deg part of the same field (l 160-170, b -20..-10, a sixth of its solid
angle) with a sixth of the stars (20,000), the same cells (0.5 deg x 0.5 deg x 5 pc: 20 x 20 x
100 + 2 ghost) and a sixth of the inducing points (167 ~ 1,000, 250 ~ 1,500). The stars' density,
the cells and the inducing points' spacing are those of the paper-size test, so the GP works in
the same regime, and the kNN baseline sees the same neighbour distances.

One fit per call (the real-sky test's fit settings: plateau rule, learned model error, annealing
at 0.1 x), then the held-out stars scored against their true extinctions (as
`realsky.run_test`: median relative error of the P50 of the diagonal samples on the training
grid), beside the 10-nearest-neighbour median on the *same* stars; the number to compare is the
ratio GP / kNN. Also scored from the same fit: the posterior-median map's extinction (no
sampling) and the GP plus the kNN median of the fitted stars' residuals
(`realsky.knn_residual_correction`, several k). Appends one JSON line to --out.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from absl import app, flags

from dustjax import sharding
from dustjax.geometry import galactic_to_cartesian_np
from dustjax.gp import fit as gpfit
from dustjax.gp import realsky, svgp
from dustjax.gp.coords import KernelCoords
from dustjax.los import apply_star_operator

FLAGS = flags.FLAGS
flags.DEFINE_string("cube", "../shared/data/real/bayestar19_LR_anticentre.fits", "Truth cube.")
flags.DEFINE_string("label", "run", "Name of this run in the output.")
flags.DEFINE_list("field", ["160", "170", "-20", "-10", "100", "600"], "l0,l1,b0,b1,d0,d1.")
flags.DEFINE_integer("num_stars", 20_000, "Stars fitted.")
flags.DEFINE_integer("num_holdout", 2_000, "Held-out stars scored.")
flags.DEFINE_list("shape", ["20", "20", "100"], "Training grid (nl, nb, nd).")
flags.DEFINE_integer("ghost_cells", 2, "Foreground ghost cells.")
flags.DEFINE_integer("num_inducing", 250, "Inducing points.")
flags.DEFINE_enum("kernel_coords", "log_spherical", ["xyz", "log_spherical"], "Kernel coords.")
flags.DEFINE_enum("kernel", "rbf", list(svgp.KERNELS), "Kernel family (`svgp.KERNELS`).")
flags.DEFINE_enum("mean", "constant", list(svgp.MEAN_FUNCTIONS), "Prior mean of phi.")
flags.DEFINE_boolean("model_error", True, "Learn the model-error term.")
flags.DEFINE_list("inducing_metric", ["1", "1", "0.25"], "Axis weights of the inducing spread.")
flags.DEFINE_float("scale_lengths", 20.0, "Initial scale lengths (kernel units).")
flags.DEFINE_float("learning_rate", 0.03, "Full learning rate.")
flags.DEFINE_float("max_fit_seconds", 300.0, "Bound on the fit (annealing included).")
flags.DEFINE_integer("max_iterations", 3000, "Iteration bound.")
flags.DEFINE_integer("anneal_iterations", 300, "Annealing steps.")
flags.DEFINE_float("anneal_factor", 0.1, "Annealing step factor.")
flags.DEFINE_integer("num_samples", 32, "Monte Carlo samples per ELBO.")
flags.DEFINE_integer("star_samples", 64, "Samples of the stars' extinctions.")
flags.DEFINE_integer("seed", 0, "Star draw and fit seed.")
flags.DEFINE_string("out", "/tmp/gp_accuracy_levers.jsonl", "JSON-lines file to append to.")


def main(argv):
    del argv
    t0 = time.perf_counter()
    field = tuple(float(v) for v in FLAGS.field)
    truth = realsky.make_truth(FLAGS.cube, field)
    settings = realsky.TestSettings(
        field=field, num_stars=FLAGS.num_stars, num_holdout=FLAGS.num_holdout, num_validation=0,
        shape=tuple(int(v) for v in FLAGS.shape), ghost_cells=FLAGS.ghost_cells,
        num_inducing=FLAGS.num_inducing, kernel_coords=FLAGS.kernel_coords, seed=FLAGS.seed,
    )  # fmt: skip
    grid = settings.grid()
    stars, (fit_sl, _, hold_sl) = realsky.draw_test_stars(truth, settings)  # no validation
    true_hold = stars["true"][hold_sl]
    catalog = realsky.to_catalog(stars, fit_sl)
    mesh = sharding.make_mesh(axis=gpfit.STAR_AXIS)
    star_data = gpfit.make_star_data(catalog, grid, num_shards=mesh.devices.size)
    coords = KernelCoords.for_grid(grid, FLAGS.kernel_coords)
    model = dict(
        num_inducing=FLAGS.num_inducing, scale_lengths_pc=FLAGS.scale_lengths, amplitude_dex=0.5,
        mean_dex=None, q_std=0.1, init="spread",
        spread_metric=tuple(float(v) for v in FLAGS.inducing_metric) or None,
        kernel=FLAGS.kernel, mean_function=FLAGS.mean,
    )  # fmt: skip
    params0 = gpfit.initial_params(
        catalog, model, seed=FLAGS.seed, kernel_coords=coords, ghost_grid=grid
    )
    fit_settings = gpfit.FitSettings(
        learning_rate=FLAGS.learning_rate, max_iterations=FLAGS.max_iterations,
        min_iterations=300, stop_rule="plateau", plateau_window=100,
        model_error=FLAGS.model_error, jitter=1e-4, max_jitter=1e-1,
        kernel_coords=FLAGS.kernel_coords, max_fit_seconds=FLAGS.max_fit_seconds,
        anneal_iterations=FLAGS.anneal_iterations, anneal_factor=FLAGS.anneal_factor,
        num_samples=FLAGS.num_samples,
    )  # fmt: skip
    with gpfit.full_float32_matmuls():
        res = gpfit.fit(params0, star_data, grid, fit_settings, mesh=mesh, progress=False)
    if res.status == "nan_elbo":
        raise FloatingPointError(res.message)
    t_fit = time.perf_counter() - t0

    xyz = galactic_to_cartesian_np(stars["l"], stars["b"], stars["d"])
    knn_pct = realsky.knn_predict(xyz[fit_sl], stars["observed"][fit_sl], xyz[hold_sl])
    knn = realsky.star_scores(knn_pct, true_hold)

    def samples(p, sl):
        return realsky.star_samples(
            p, grid, stars["l"][sl], stars["b"][sl], stars["d"][sl], jitter=res.jitter,
            num_samples=FLAGS.star_samples, kernel_coords=FLAGS.kernel_coords,
        )  # fmt: skip

    scores = {}
    hold_pct = realsky.percentiles(samples(res.params, hold_sl))
    scores["diagonal"] = realsky.star_scores(hold_pct, true_hold)
    if res.params_before_anneal is not None:
        before = realsky.percentiles(samples(res.params_before_anneal, hold_sl))
        scores["diagonal_before_anneal"] = realsky.star_scores(before, true_hold)
    # the same fit's extinctions through finer grids (the fitted GP evaluated at more cells of
    # the region of interest; the ghost cells kept: split, their centres would move towards the
    # Sun, where log-spherical coordinates put them far from every inducing point)
    # ("_ghost_split": as `predict.prediction_grid` builds the pipeline's prediction grid)
    for name, factor, ghost in (
        ("predict_d2x", (1, 1, 2), 1),
        ("predict_2x", (2, 2, 2), 1),
        ("predict_lb2x", (2, 2, 1), 1),
        ("predict_lb3x", (3, 3, 1), 1),
        ("predict_d2x_ghost_split", (1, 1, 2), 2),
    ):
        fine = grid.with_shape(
            tuple(a * b for a, b in zip(grid.shape, factor, strict=True)),
            ghost_cells=grid.ghost_cells * ghost,
        )
        fine_pct = realsky.percentiles(
            realsky.star_samples(
                res.params, fine, stars["l"][hold_sl], stars["b"][hold_sl], stars["d"][hold_sl],
                jitter=res.jitter, num_samples=FLAGS.star_samples,
                kernel_coords=FLAGS.kernel_coords,
            )
        )  # fmt: skip
        scores["diagonal_" + name] = realsky.star_scores(fine_pct, true_hold)
    # the posterior-median map 10^mu through the grid (no sampling)
    med, _ = realsky.gp_density_moments(
        res.params, grid, jitter=res.jitter, kernel_coords=FLAGS.kernel_coords
    )
    op = grid.star_operator(stars["l"][hold_sl], stars["b"][hold_sl], stars["d"][hold_sl])
    a_med = np.asarray(
        apply_star_operator(jnp.asarray(med, jnp.float32), op.flat_index, op.partial_pc,
                            op.d_widths_pc), np.float64,
    )  # fmt: skip
    scores["median_map"] = realsky.star_scores(np.stack([a_med] * 3), true_hold)
    # the GP plus the kNN median of the fitted stars' residuals
    fit_p50 = realsky.percentiles(samples(res.params, fit_sl))[1]
    for k in (10, 30, 100):
        corr = realsky.knn_residual_correction(
            xyz[fit_sl], stars["observed"][fit_sl] - fit_p50, xyz[hold_sl], k
        )
        scores[f"diagonal+knn_resid_k{k}"] = realsky.star_scores(hold_pct + corr, true_hold)
    ratios = {k: v["median_rel_error"] / knn["median_rel_error"] for k, v in scores.items()}
    hyper = svgp.hyperparameters(res.params)
    row = dict(
        label=FLAGS.label,
        flags={k: FLAGS[k].value for k in (
            "field", "num_stars", "num_holdout", "shape", "ghost_cells", "num_inducing",
            "kernel_coords", "kernel", "mean", "model_error", "inducing_metric",
            "scale_lengths", "learning_rate", "max_fit_seconds", "anneal_iterations",
            "anneal_factor", "num_samples", "seed")},
        fit=dict(status=res.status, iterations=res.iterations, anneal_start=res.anneal_start,
                 elbo_last_50=float(np.mean(res.elbo_history[-50:])),
                 per_iteration_ms=res.timings.get("per_iteration_ms"), fit_s=t_fit,
                 scale_lengths=[float(x) for x in np.asarray(hyper["scale_lengths_pc"])],
                 amplitude_dex=float(hyper["amplitude_dex"]),
                 mean_dex=float(hyper["mean_dex"]),
                 model_error=None if svgp.model_error_scales(res.params) is None else
                 [float(x) for x in svgp.model_error_scales(res.params)]),
        knn=knn,
        gp=scores,
        ratio_to_knn=ratios,
        total_s=time.perf_counter() - t0,
    )  # fmt: skip
    print(json.dumps(row), flush=True)
    with open(Path(FLAGS.out), "a") as f:
        f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    app.run(main)

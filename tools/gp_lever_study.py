r"""Which lever moves the GP's held-out error on the real sky: annealing length and step, M.

    python -m tools.gp_lever_study --cube=../shared/data/real/bayestar19_LR_anticentre.fits \
        --num_inducing=300 --out=/tmp/levers_m300

One process, one set of stars (the real-sky test's draw, `dustjax.gp.realsky.draw_stars`): a fit
at the full learning rate to the plateau rule with the first stage's annealing steps
(``--stages=0.1:200,0.1:600,0.01:400``: 200 steps at 0.1 x the rate), then further *stages*
continued from its last iterate, each a fresh AdamW at ``factor x`` the rate for ``steps``
iterations (what longer or lower annealing would add). After every stage the held-out median
relative error of the diagonal samples' median (as `realsky.run_test` scores it) of the last
iterate, of the average over the stage's second half (`FitSettings.anneal_average`) and of the
average of those averages (weighted by their calls); the ELBO; and the kNN baseline's error on
the same stars. Restarting AdamW between stages differs from one long anneal by the moments'
warm-up (one call of 10 steps at the stage's own rate, not averaged). Writes ``levers.json``
to --out.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from absl import app, flags

from dustjax import sharding
from dustjax.geometry import galactic_to_cartesian_np
from dustjax.gp import fit as gpfit
from dustjax.gp import realsky
from dustjax.gp.coords import KernelCoords

FLAGS = flags.FLAGS
flags.DEFINE_string("cube", "../shared/data/real/bayestar19_LR_anticentre.fits", "Truth cube.")
flags.DEFINE_integer("num_stars", 20_000, "Stars fitted.")
flags.DEFINE_integer("num_holdout", 2_000, "Held-out stars scored.")
flags.DEFINE_list("shape", ["30", "20", "50"], "Training grid.")
flags.DEFINE_integer("num_inducing", 300, "Inducing points.")
flags.DEFINE_enum("kernel_coords", "log_spherical", ["xyz", "log_spherical"], "Kernel coords.")
flags.DEFINE_float("learning_rate", 0.03, "Full learning rate.")
flags.DEFINE_integer("max_iterations", 3000, "Iterations of the first (full-rate) fit.")
flags.DEFINE_integer("plateau_window", 100, "Plateau rule window of the first fit.")
flags.DEFINE_list("stages", ["0.1:200", "0.1:600", "0.01:400"], "factor:steps annealing stages.")
flags.DEFINE_float("max_fit_seconds", 0.0, "Bound on the first fit (0: none).")
flags.DEFINE_integer("star_samples", 64, "Samples of the held-out stars' extinctions.")
flags.DEFINE_string("out", "/tmp/gp_levers", "Output directory.")


def main(argv):
    del argv
    out = Path(FLAGS.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    truth = realsky.make_truth(FLAGS.cube)
    settings = realsky.TestSettings(
        num_stars=FLAGS.num_stars, num_holdout=FLAGS.num_holdout, num_validation=0,
        shape=tuple(int(v) for v in FLAGS.shape), num_inducing=FLAGS.num_inducing,
        kernel_coords=FLAGS.kernel_coords, scale_lengths_pc=20.0,
    )  # fmt: skip
    grid = settings.grid()
    stars, (fit_sl, _, hold_sl) = realsky.draw_test_stars(truth, settings)  # no validation
    true_hold = stars["true"][hold_sl]
    catalog = realsky.to_catalog(stars, fit_sl)
    mesh = sharding.make_mesh(axis=gpfit.STAR_AXIS)
    star_data = gpfit.make_star_data(catalog, grid, num_shards=mesh.devices.size)
    coords = KernelCoords.for_grid(grid, settings.kernel_coords)
    params = gpfit.initial_params(
        catalog, dict(num_inducing=settings.num_inducing, scale_lengths_pc=20.0,
                      amplitude_dex=0.5, mean_dex=None, q_std=0.1, init="spread"),
        seed=settings.seed, kernel_coords=coords, ghost_grid=grid,
    )  # fmt: skip
    xyz = galactic_to_cartesian_np(stars["l"], stars["b"], stars["d"])
    knn = realsky.star_scores(
        realsky.knn_predict(xyz[fit_sl], stars["observed"][fit_sl], xyz[hold_sl]), true_hold
    )
    base = dict(
        learning_rate=FLAGS.learning_rate, max_iterations=FLAGS.max_iterations,
        min_iterations=300, stop_rule="plateau", plateau_window=FLAGS.plateau_window,
        model_error=True, jitter=1e-4, max_jitter=1e-1, kernel_coords=settings.kernel_coords,
        max_fit_seconds=FLAGS.max_fit_seconds or None,
    )  # fmt: skip
    rows = []

    def score(label, p, res, iterations):
        samples = realsky.star_samples(
            p, grid, stars["l"][hold_sl], stars["b"][hold_sl], stars["d"][hold_sl],
            jitter=res.jitter, num_samples=FLAGS.star_samples,
            kernel_coords=settings.kernel_coords,
        )  # fmt: skip
        s = realsky.star_scores(realsky.percentiles(samples), true_hold)
        row = dict(stage=label, iterations=iterations, status=res.status,
                   elbo_last_50=float(np.mean(res.elbo_history[-50:])),
                   per_iteration_ms=res.timings.get("per_iteration_ms"),
                   elapsed_s=time.perf_counter() - t0, **s)  # fmt: skip
        rows.append(row)
        print(json.dumps(row), flush=True)
        (out / "levers.json").write_text(
            json.dumps(dict(flags={k: str(getattr(FLAGS, k)) for k in (
                "num_stars", "shape", "num_inducing", "kernel_coords", "learning_rate",
                "plateau_window", "stages")}, knn=knn, rows=rows), indent=1) + "\n"
        )  # fmt: skip

    print("knn", json.dumps(knn), flush=True)
    factor, steps = FLAGS.stages[0].split(":")
    first = base | dict(anneal_iterations=int(steps), anneal_factor=float(factor),
                        anneal_average=True)  # fmt: skip
    with gpfit.full_float32_matmuls():
        res = gpfit.fit(params, star_data, grid, gpfit.FitSettings(**first), mesh=mesh,
                        progress=False)  # fmt: skip
    done = res.iterations
    score("before annealing", res.params_before_anneal, res, res.anneal_start)
    score(f"+{steps} at {factor}: last iterate", res.params_last_iterate, res, done)
    score(f"+{steps} at {factor}: average", res.params, res, done)
    # the average of the stages' averages (weights: calls averaged)
    count = int(steps) // 20  # calls averaged: the annealing's second half
    cumulative = res.params
    last = res.params_last_iterate
    for stage in FLAGS.stages[1:]:
        factor, steps = stage.split(":")
        # a fresh AdamW at the stage's rate; its first call is not averaged
        st = base | dict(learning_rate=FLAGS.learning_rate * float(factor), jitter=res.jitter,
                         max_iterations=int(steps) + 10, min_iterations=int(steps) + 10,
                         anneal_iterations=int(steps), anneal_factor=1.0, anneal_average=True,
                         stop_rule="paper", max_fit_seconds=None)  # fmt: skip
        with gpfit.full_float32_matmuls():
            res = gpfit.fit(last, star_data, grid, gpfit.FitSettings(**st), mesh=mesh,
                            progress=False)  # fmt: skip
        done += res.iterations
        n = int(steps) // 20
        cumulative = {k: (count * cumulative[k] + n * res.params[k]) / (count + n)
                      for k in cumulative}  # fmt: skip
        count += n
        last = res.params_last_iterate
        score(f"{stage}: last iterate", last, res, done)
        score(f"{stage}: stage average", res.params, res, done)
        score(f"{stage}: average of the stage averages", cumulative, res, done)


if __name__ == "__main__":
    app.run(main)

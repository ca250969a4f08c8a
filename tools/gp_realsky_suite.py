r"""Issue 18's table in one process: the real-sky test and three simulated fields, GP and kNN.

    python -m tools.gp_realsky_suite --suite=cpu --out=/tmp/realsky_suite     # slow on 2 cores
    python -m tools.gp_realsky_suite --suite=device \
        --cube=.device_carry/real/bayestar19_LR_anticentre.npy --out=$OUT            # one H200

Each test is `dustjax.gp.realsky.run_test` (stars drawn in the truth, exact extinctions, noise
sigma = max(0.1 A, 0.02), validation and held-out stars, the GP fit, the GP's bands scored several
ways and the 10-nearest-neighbour median scored the same way). Suites:

* ``cpu``: the paper's box (l 50-90, b -10..10, d 180-500 pc) with the project's clump simulator
  (seeds 1, 2) and a log-normal random field (seed 3), at the size of `gp_paper_sim_cpu` (20,000
  stars, 12 x 12 x 20, 300 inducing points); and the real sky (Bayestar19, Taurus-Perseus,
  20,000 stars, 20 x 15 x 35, 300 inducing points).
* ``device``: the same simulated fields and CPU-size real sky, then the real sky at the paper's
  size (120,000 stars, 1,000+ inducing points, finer grids), each fit bounded in time.
* ``smoke``: one tiny real-sky test (seconds); ``smoke_paper``: the device suite's two paper-size
  real-sky tests at that tiny size (a CPU check of `tools/device/issue18.sh`).
* ``grids``: no fit: for several training grids, the error of the extinction the grid can
  represent (the cube averaged over each cell, eqs. 7-8) on the real sky, and the kNN baseline
  with 20,000 and 120,000 stars (`realsky.representation_errors`; ~1 min on a CPU).

Writes ``suite.json`` (every result) to --out after each test, and prints one table row per test.
"""

from __future__ import annotations

import json
import time
import traceback
from pathlib import Path

from absl import app, flags

from dustjax.gp import realsky

FLAGS = flags.FLAGS
flags.DEFINE_enum(
    "suite", "cpu", ["cpu", "device", "smoke", "smoke_paper", "grids"], "Which tests."
)
flags.DEFINE_string("cube", "../shared/data/real/bayestar19_LR_anticentre.fits", "Real cube.")
flags.DEFINE_string("out", "/tmp/gp_realsky_suite", "Output directory (suite.json).")
flags.DEFINE_list("only", [], "Run only the tests of these names.")
flags.DEFINE_float("max_fit_seconds", 0.0, "Bound every fit (0: the suite's own bounds).")
flags.DEFINE_integer("anneal_iterations", -1, "Annealing steps of every fit (-1: the suite's).")
flags.DEFINE_float("anneal_factor", 0.0, "Annealing step factor of every fit (0: the suite's).")
flags.DEFINE_boolean("anneal_average", False, "Average the annealing iterates in every fit.")
flags.DEFINE_integer("num_inducing", 0, "Inducing points of every test (0: the suite's).")
flags.DEFINE_list("inducing_metric", [], "Axis weights of the inducing spread, e.g. 1,1,0.25.")
flags.DEFINE_list("scale_lengths", [], "Initial scale lengths of every test (kernel units).")
flags.DEFINE_string(
    "kernel", "", "Kernel of every test (rbf, matern32, matern52; '': the suite's)."
)
flags.DEFINE_string("mean_function", "", "Prior mean of every test (constant, linear, shells).")
flags.DEFINE_integer("mean_shells", 0, "Knots of the shell mean (0: the suite's).")
flags.DEFINE_integer("seed", -1, "Seed of every test's star draw and fit (-1: the suite's).")
flags.DEFINE_list("knn_residual_k", [], "Also score P50 + the kNN median of fitted residuals.")
flags.DEFINE_multi_string(
    "star_grid_factor", [], "FL,FB,FD: also score the stars through the grid refined by it."
)

PAPER_BOX = (50.0, 90.0, -10.0, 10.0, 180.0, 500.0)


def _fit(**kw):
    base = dict(
        learning_rate=0.03,
        max_iterations=3000,
        min_iterations=300,
        stop_rule="plateau",
        plateau_window=100,
        model_error=True,
        jitter=1e-4,
        max_jitter=1e-1,
    )
    return base | kw


def _sim(name, spec, **kw):
    settings = dict(
        field=PAPER_BOX, num_stars=20_000, shape=(12, 12, 20), ghost_cells=0, num_inducing=300,
        scale_lengths_pc=20.0, predict_factor=(2, 2, 2), fit=_fit(),
    )  # fmt: skip
    settings.update(kw)
    return name, spec, settings


def _real(name, **kw):
    settings = dict(
        field=realsky.TAURUS_PERSEUS, num_stars=20_000, shape=(20, 15, 35), ghost_cells=2,
        num_inducing=300, scale_lengths_pc=30.0, predict_factor=(2, 2, 2), fit=_fit(),
    )  # fmt: skip
    settings.update(kw)
    return name, "CUBE", settings


def suite(name):
    sims = [
        _sim("clumps1", "clumps:1"),
        _sim("clumps2", "clumps:2"),
        _sim("lognormal3", "lognormal:3"),
    ]
    smoke = _real(
        "smoke", num_stars=3000, num_validation=300, num_holdout=300, shape=(8, 6, 12),
        num_inducing=50, star_samples=16, kernel_coords="log_spherical",
        fit=_fit(max_iterations=30, min_iterations=10, num_samples=4, anneal_iterations=10),
    )  # fmt: skip
    if name == "smoke":
        return [smoke]
    if (
        name == "smoke_paper"
    ):  # the device suite's paper tests at smoke size (tools/device/issue18.sh)
        tiny = {k: v for k, v in smoke[2].items() if k != "kernel_coords"}
        return [
            ("real_paper_logsph", "CUBE", tiny | dict(kernel_coords="log_spherical")),
            ("real_paper_xyz", "CUBE", tiny),
        ]
    if name == "cpu":
        return [*sims, _real("real_cpu"), _real("real_cpu_logsph", kernel_coords="log_spherical")]
    paper = dict(num_stars=120_000, num_validation=5_000, num_holdout=5_000, star_samples=64)
    fine = dict(shape=(60, 40, 100), num_inducing=1000, scale_lengths_pc=20.0,
                predict_factor=(1, 1, 1))  # fmt: skip
    return [
        smoke,
        *[(n, s, kw | dict(star_samples=64, fit=_fit(max_fit_seconds=6.0))) for n, s, kw in sims],
        _real("real_paper_logsph", kernel_coords="log_spherical",
              fit=_fit(max_iterations=8000, max_fit_seconds=45.0, anneal_iterations=200),
              **paper, **fine),
        _real("real_paper_xyz",
              fit=_fit(max_iterations=8000, max_fit_seconds=30.0, anneal_iterations=200),
              **paper, **fine),
    ]  # fmt: skip


def main(argv):
    del argv
    out = Path(FLAGS.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    if FLAGS.suite == "grids":
        truth = realsky.make_truth(FLAGS.cube)
        shapes = [(20, 15, 35), (30, 20, 50), (40, 30, 60), (60, 40, 100), (90, 60, 100)]
        for n in (20_000, 120_000):
            res = realsky.representation_errors(
                truth, realsky.TAURUS_PERSEUS, shapes if n == 120_000 else [], num_stars=n
            )
            results[f"{n}_stars"] = res
            print(json.dumps(res, indent=1), flush=True)
        (out / "grids.json").write_text(json.dumps(results, indent=1) + "\n")
        return
    for name, spec, kw in suite(FLAGS.suite):
        if FLAGS.only and name not in FLAGS.only:
            continue
        if FLAGS.max_fit_seconds:
            kw = kw | dict(fit=kw["fit"] | dict(max_fit_seconds=FLAGS.max_fit_seconds))
        if FLAGS.anneal_iterations >= 0:
            kw = kw | dict(fit=kw["fit"] | dict(anneal_iterations=FLAGS.anneal_iterations))
        if FLAGS.anneal_factor:
            kw = kw | dict(fit=kw["fit"] | dict(anneal_factor=FLAGS.anneal_factor))
        if FLAGS.anneal_average:
            kw = kw | dict(fit=kw["fit"] | dict(anneal_average=True))
        if FLAGS.num_inducing:
            kw = kw | dict(num_inducing=FLAGS.num_inducing)
        if FLAGS.inducing_metric:
            kw = kw | dict(inducing_metric=tuple(float(v) for v in FLAGS.inducing_metric))
        if FLAGS.scale_lengths:
            kw = kw | dict(scale_lengths_pc=tuple(float(v) for v in FLAGS.scale_lengths))
        if FLAGS.kernel:
            kw = kw | dict(kernel=FLAGS.kernel)
        if FLAGS.mean_function:
            kw = kw | dict(mean_function=FLAGS.mean_function)
        if FLAGS.mean_shells:
            kw = kw | dict(mean_shells=FLAGS.mean_shells)
        if FLAGS.seed >= 0:
            kw = kw | dict(seed=FLAGS.seed)
        if FLAGS.knn_residual_k:
            kw = kw | dict(knn_residual_k=tuple(int(v) for v in FLAGS.knn_residual_k))
        if FLAGS.star_grid_factor:
            kw = kw | dict(
                star_grid_factors=tuple(
                    tuple(int(v) for v in f.split(",")) for f in FLAGS.star_grid_factor
                )
            )
        t0 = time.perf_counter()
        try:
            truth = realsky.make_truth(FLAGS.cube if spec == "CUBE" else spec, kw["field"])
            result = realsky.run_test(truth, realsky.TestSettings(**kw))
        except Exception as err:  # keep going: one failed test must not cost the others
            traceback.print_exc()
            if name == "smoke":
                raise SystemExit(3) from err
            results[name] = dict(error=repr(err))
            continue
        arrays = result.pop("star_arrays", None)
        if arrays is not None:
            import numpy as np

            arrays = {k: np.asarray(v, np.float32) for k, v in arrays.items()}
            np.savez_compressed(out / f"{name}_stars.npz", **arrays)
        results[name] = result
        row = realsky.summary_row(result)
        fit = result["fit"]
        ms = fit["timings"].get("per_iteration_ms", float("nan"))
        cells = ", ".join(
            f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()
        )
        print(
            f"{name}: {time.perf_counter() - t0:.0f} s, fit {fit['status']} at {fit['iterations']}"
            f" ({ms:.1f} ms/it), {cells}",
            flush=True,
        )
        for band, s in result["gp"]["stars"].items():
            print(f"   {band:<24} " + ", ".join(f"{k} {v:.3f}" for k, v in s.items()), flush=True)
        print(f"   discretisation {result['discretisation']}", flush=True)
        print(f"   calibration {result['gp']['calibration']}", flush=True)
        (out / "suite.json").write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    app.run(main)

r"""The GP's band calibration replayed on the stars of a `fit_gp` run, without refitting.

    python -m tools.gp_calibration_replay --seed=0 --star_grid_factor=3,3,1 --workdir=DIR
    python -m tools.gp_calibration_replay --inputs=DIR/calibration_inputs.npz[,...] [--out=J]

The first form fits `gp_paper_sim_cpu` through `pipeline.fit_and_predict` (what ``fit_gp`` runs;
``--seed`` is the config's seed, ``--star_grid_factor`` ``predict.star_grid_factor``, no plots or
FITS) and saves what the calibration saw into ``DIR/calibration_inputs.npz``: the held-out
(validation) stars' model bands, observed extinctions, noise and true extinctions, and the
same for the fitted stars. Both forms then score, on the validation stars' true extinctions
(and the fitted stars'), the calibrations of `calibration.calibrate_bands`: "deconvolved" on
the validation stars alone, "deconvolved" pooled with the fitted stars (what the pipeline
does), and "observed" (target 60-76 %). The truth is used only to score.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from absl import app, flags

from dustjax.gp import calibration
from dustjax.io import write_json

FLAGS = flags.FLAGS
flags.DEFINE_list("inputs", [], "calibration_inputs.npz files to score (no fit).")
flags.DEFINE_string("workdir", "", "Fit gp_paper_sim_cpu here first and save its inputs.")
flags.DEFINE_integer("seed", 0, "config.seed of the fit.")
flags.DEFINE_list("star_grid_factor", ["1", "1", "1"], "predict.star_grid_factor of the fit.")
flags.DEFINE_string("out", "", "JSON to write (empty: print only).")


def fit_and_save(workdir: str, seed: int, star_grid_factor) -> Path:
    """Fit as ``fit_gp --config=gp_paper_sim_cpu`` does and save the calibration's inputs."""
    from dustjax.configs.gp_paper_sim_cpu import get_config
    from dustjax.gp import fit as gpfit
    from dustjax.gp import pipeline
    from dustjax.gp.grid import LBDGrid

    config = get_config()
    config.seed = seed
    config.output.plots = False
    config.output.fits = False
    config.predict.star_grid_factor = tuple(int(v) for v in star_grid_factor)
    seen: dict = {}
    calibrate, run_calibration = calibration.calibrate_bands, pipeline._calibrate

    def recording_calibrate(pct, observed, sigma, **kwargs):
        seen.update(pct=pct, observed=observed, sigma=sigma, fitted=kwargs.get("fitted"))
        return calibrate(pct, observed, sigma, **kwargs)

    def recording_run(*args, **kwargs):
        seen["true"] = args[5]["true"]  # calib: the held-out stars (their truth, for scoring)
        return run_calibration(*args, **kwargs)

    calibration.calibrate_bands, pipeline._calibrate = recording_calibrate, recording_run
    try:
        pipeline.fit_and_predict(config, workdir, progress=False)
    finally:
        calibration.calibrate_bands, pipeline._calibrate = calibrate, run_calibration
    # the fitted stars' truth: the same catalogue and split as the pipeline's
    grid = LBDGrid.from_dict(dict(config.grid))
    catalog, _, truth = pipeline.load_stars(config, grid)
    fraction = gpfit.FitSettings(**dict(config.fit)).calibration_fraction
    held = pipeline.calibration_split(len(catalog), fraction, seed=int(config.seed))
    fit_pct, fit_observed, fit_sigma = seen["fitted"]
    path = Path(workdir) / "calibration_inputs.npz"
    np.savez_compressed(
        path,
        pct=seen["pct"], observed=seen["observed"], sigma=seen["sigma"], true=seen["true"],
        fit_pct=fit_pct, fit_observed=fit_observed, fit_sigma=fit_sigma,
        fit_true=truth["extinction"][~held],
    )  # fmt: skip
    return path


def score(path) -> dict:
    d = {k: np.asarray(v, np.float64) for k, v in np.load(path).items()}
    val = (d["pct"], d["observed"], d["sigma"])
    fitted = (d["fit_pct"], d["fit_observed"], d["fit_sigma"])
    out: dict = dict(inputs=str(path), num_validation=int(d["true"].size),
                     num_fitted=int(d["fit_true"].size))  # fmt: skip
    for name, kwargs in (
        ("deconvolved_validation_only", dict(method="deconvolved")),
        ("deconvolved_pooled", dict(method="deconvolved", fitted=fitted)),
        ("observed", dict(method="observed")),
    ):
        info: dict = {}
        if kwargs["method"] == "deconvolved":
            kwargs["info"] = info
        c, f, s = calibration.calibrate_bands(*val, **kwargs)
        val_bands = calibration.widen_bands(d["pct"], f, s, c)
        fit_bands = calibration.widen_bands(d["fit_pct"], f, s, c)
        out[name] = dict(
            band_scale=c, frac=f, floor_mag=s,
            coverage_true=calibration.coverage(val_bands, d["true"]),
            coverage_true_fitted_stars=calibration.coverage(fit_bands, d["fit_true"]),
            **{k: (v if isinstance(v, (bool, int)) else float(v)) for k, v in info.items()},
        )  # fmt: skip
    return out


def main(argv):
    del argv
    paths = list(FLAGS.inputs)
    if FLAGS.workdir:
        paths.append(fit_and_save(FLAGS.workdir, FLAGS.seed, FLAGS.star_grid_factor))
    if not paths:
        raise app.UsageError("give --workdir=DIR (fit first) or --inputs=FILE[,...]")
    results = [score(p) for p in paths]
    print(json.dumps(results, indent=1))
    if FLAGS.out:
        Path(FLAGS.out).parent.mkdir(parents=True, exist_ok=True)
        write_json(FLAGS.out, results)  # atomic


if __name__ == "__main__":
    app.run(main)

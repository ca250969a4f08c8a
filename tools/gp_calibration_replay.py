r"""The GP's band calibration replayed on the stars of a `fit_gp` run, without refitting.

    python -m tools.gp_calibration_replay --seed=0 --star_grid_factor=3,3,1 --workdir=DIR
    python -m tools.gp_calibration_replay --inputs=DIR/calibration_inputs.npz[,...] [--out=J]
    python -m tools.gp_calibration_replay --synthetic=0.15,0.09,0.025 --draws=6
    python -m tools.gp_calibration_replay --state=RUN/final_state.npz --config=gp_paper_sim \
        --seed=0 --star_grid_factor=2,2,1 [--save=INPUTS.npz] [--out=J]

The first form fits `gp_paper_sim_cpu` through `pipeline.fit_and_predict` (what ``fit_gp`` runs;
``--seed`` is the config's seed, ``--star_grid_factor`` ``predict.star_grid_factor``, no plots or
FITS) and saves what the calibration saw into ``DIR/calibration_inputs.npz``: the held-out
(validation) stars' model bands, observed extinctions, noise and true extinctions, and the
same for the fitted stars. Both forms then score, on the validation stars' true extinctions
(and the fitted stars'), the calibrations of `calibration.calibrate_bands`: "deconvolved" on
the validation stars alone, "deconvolved" pooled with the fitted stars (what the pipeline
does), and "observed" (target 60-76 %). The truth is used only to score.

``--state``: a finished ``fit_gp`` run (e.g. the paper-size H200 fit) is replayed on the
CPU without refitting: its validation and fitted stars' bands are predicted from its saved
parameters with the run's catalogue, split and seeds (`inputs_from_state`; ``--config``, a
module of ``dustjax.configs``, ``--seed`` and ``--star_grid_factor`` must be the run's).

``--synthetic=FRAC,BAD,GOOD``: instead, ``--draws`` synthetic sets (seeds 0, 1, ...) of 2,000
validation, 18,000 fitted and 20,000 scored stars as in `tests/test_gp_calibration.py`: true
A uniform in 0.2-2 mag, a model error of sd BAD A for a fraction FRAC of the stars and GOOD A
for the rest (GOOD alone with FRAC = 0: Gaussian), bands of 1.3 % of A, 10 % noise.
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
flags.DEFINE_string("state", "", "A fit's final_state.npz: predict its inputs, no fit.")
flags.DEFINE_string("config", "gp_paper_sim", "--state: the config (dustjax.configs) it fitted.")
flags.DEFINE_string("save", "", "--state: where to save its calibration_inputs.npz.")
flags.DEFINE_integer("seed", 0, "config.seed of the fit.")
flags.DEFINE_list("star_grid_factor", ["1", "1", "1"], "predict.star_grid_factor of the fit.")
flags.DEFINE_list("synthetic", [], "FRAC,BAD,GOOD: score synthetic draws instead.")
flags.DEFINE_integer("draws", 6, "Synthetic draws (seeds 0 .. draws-1).")
flags.DEFINE_string("out", "", "JSON to write (empty: print only).")


def fit_and_save(workdir: str, seed: int, star_grid_factor, config=None) -> Path:
    """Fit as ``fit_gp --config=gp_paper_sim_cpu`` (or ``config``) does and save the
    calibration's inputs."""
    from dustjax.gp import fit as gpfit
    from dustjax.gp import pipeline
    from dustjax.gp.grid import LBDGrid

    if config is None:
        from dustjax.configs.gp_paper_sim_cpu import get_config

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


def inputs_from_state(state, config, *, save: str = "") -> dict:
    """The calibration's inputs of a finished ``fit_gp`` run, predicted from its saved
    parameters (``final_state.npz``) without refitting: the same catalogue, split, star grid
    and sampling seeds as `pipeline._fit_and_predict` and `pipeline._calibrate` (so, up to the
    device's float32 rounding, the bands the run calibrated on). ``config``: the run's config
    (its seed and ``predict.star_grid_factor`` included); ``save``: an .npz to write them to."""
    import jax.numpy as jnp

    from dustjax.gp import fit as gpfit
    from dustjax.gp import pipeline, predict
    from dustjax.gp.coords import KernelCoords
    from dustjax.gp.grid import LBDGrid

    seed = int(config.seed)
    settings = gpfit.FitSettings(**dict(config.fit))
    grid = LBDGrid.from_dict(dict(config.grid))
    catalog, _, truth = pipeline.load_stars(config, grid)
    sigma = catalog.sigma_extinction
    if config.data.get("inflate_sigma", True) and catalog.sigma_distance is not None:
        sigma = gpfit.inflate_sigma_for_distance(catalog, grid)
    sigma = np.asarray(sigma, np.float64)
    fraction = pipeline._calibration_fraction(settings.calibration_fraction)
    held = pipeline.calibration_split(len(catalog), fraction, seed=seed)
    with np.load(state) as d:
        jitter = float(d["meta_jitter"])
    dtype = pipeline._dtype(config)
    params = {k: jnp.asarray(v, dtype) for k, v in gpfit.load_params(state).items()}
    coords = KernelCoords.for_grid(grid, settings.kernel_coords)

    def bands(mask, seed_offset):
        cat = catalog.select(mask)
        stars = gpfit.make_star_data(cat, grid, num_shards=1, dtype=dtype, sigma=sigma[mask])
        sgrid, index, partial = pipeline._star_operator(
            grid, config, cat, np.asarray(stars.flat_index), np.asarray(stars.partial_pc)
        )
        pct = predict.predict_star_extinctions(
            params, sgrid, index, partial, link=settings.link, jitter=jitter,
            num_samples=int(config.predict.star_samples), seed=seed + seed_offset,
            kernel_coords=coords,
        )  # fmt: skip
        return np.asarray(pct, np.float64), np.asarray(cat.extinction, np.float64), sigma[mask]

    val, fit = bands(held, 3), bands(~held, 1)  # the seeds of _calibrate and the star bands
    out = dict(pct=val[0], observed=val[1], sigma=val[2], true=truth["extinction"][held],
               fit_pct=fit[0], fit_observed=fit[1], fit_sigma=fit[2],
               fit_true=truth["extinction"][~held])  # fmt: skip
    if save:
        from dustjax.io import atomic_path

        Path(save).parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(save) as tmp, open(tmp, "wb") as fh:
            np.savez_compressed(fh, **out)
    return out


def synthetic(seed: int, frac: float, bad: float, good: float) -> dict:
    """Arrays as `fit_and_save` saves them, for a synthetic set-up (module docstring)."""
    rng = np.random.default_rng(seed)

    def stars(n):  # the draws in the order of the tests' `_two_population_stars`
        sd = np.where(rng.uniform(size=n) < frac, bad, good)
        a = rng.uniform(0.2, 2.0, n)
        p50 = a + sd * a * rng.standard_normal(n)
        pct = np.stack([p50 - 0.013 * a, p50, p50 + 0.013 * a])
        return pct, a + 0.1 * a * rng.standard_normal(n), 0.1 * a, a

    val, fit, scored = stars(2000), stars(18000), stars(20000)
    return dict(pct=val[0], observed=val[1], sigma=val[2], true=val[3], fit_pct=fit[0],
                fit_observed=fit[1], fit_sigma=fit[2], fit_true=fit[3], score_pct=scored[0],
                score_true=scored[3])  # fmt: skip


def _truth_diagnostics(d: dict, f0: float, s0: float) -> dict:
    """What the truth says about the model's error, for the record (no calibration uses it):
    on the validation stars, the error's size against the noise (median tau / sigma), its
    variance and 68 % quantile in units of tau (the band scale a perfect calibration would
    take), and a two-part scale mixture fitted to the noise-free errors; on both sets the
    correlation of a star's model error with its own noise (negative: the fit followed it)."""
    out: dict = {}
    for key, pre in (("validation", ""), ("fitted", "fit_")):
        pct, true, observed = d[pre + "pct"], d[pre + "true"], d[pre + "observed"]
        tau2 = ((pct[2] - pct[0]) / 2) ** 2 + (f0 * pct[1]) ** 2 + s0**2
        err = true - pct[1]
        out[f"truth_error_noise_correlation_{key}"] = float(np.corrcoef(err, observed - true)[0, 1])
        if key == "validation":
            z = err / np.sqrt(tau2)
            _, a, wide, p = calibration._mixture_fit(err**2, tau2, np.zeros_like(tau2))
            out.update(
                truth_median_tau_over_sigma=float(np.median(np.sqrt(tau2) / d["sigma"])),
                truth_error_variance_over_tau2=float(np.mean(z**2)),
                truth_band_scale_for_68=float(np.quantile(np.abs(z), 0.68)),
                truth_noise_free_mixture=dict(a=a, K=wide, p=p),
            )
    return out


def score(d: dict, label: str) -> dict:
    """Each calibration fitted on the validation (and fitted) stars of ``d``, scored on the
    true extinctions of the validation and fitted stars, or of ``d``'s own fresh stars
    (``score_pct``, ``score_true``: the synthetic sets)."""
    d = {k: np.asarray(v, np.float64) for k, v in d.items()}
    val = (d["pct"], d["observed"], d["sigma"])
    fitted = (d["fit_pct"], d["fit_observed"], d["fit_sigma"])
    scored = {"true": (d["pct"], d["true"]), "true_fitted_stars": (d["fit_pct"], d["fit_true"])}
    if "score_true" in d:
        scored = {"true_fresh_stars": (d["score_pct"], d["score_true"])}
    f0, s0 = calibration._maximum_likelihood(*val)  # the model error's shape, as calibrated
    tau = np.sqrt(((d["pct"][2] - d["pct"][0]) / 2) ** 2 + (f0 * d["pct"][1]) ** 2 + s0**2)
    z = (d["true"] - d["pct"][1]) / tau  # the standardised error (truth: for the record only)
    out: dict = dict(
        inputs=label,
        num_validation=int(d["true"].size),
        num_fitted=int(d["fit_true"].size),
        standardised_error_kurtosis=float(np.mean(z**4) / np.mean(z**2) ** 2),
        **_truth_diagnostics(d, f0, s0),
    )
    for name, kwargs in (
        ("deconvolved_validation_only", dict(method="deconvolved")),
        ("deconvolved_pooled", dict(method="deconvolved", fitted=fitted)),
        ("observed", dict(method="observed")),
    ):
        info: dict = {}
        if kwargs["method"] == "deconvolved":
            kwargs["info"] = info
        c, f, s = calibration.calibrate_bands(*val, **kwargs)
        out[name] = dict(
            band_scale=c, frac=f, floor_mag=s,
            **{f"coverage_{key}": calibration.coverage(calibration.widen_bands(pct, f, s, c), true)
               for key, (pct, true) in scored.items()},
            **{k: (v if isinstance(v, (bool, int)) or v is None else float(v))
               for k, v in info.items()},
        )  # fmt: skip
    return out


def main(argv):
    del argv
    sets = [(dict(np.load(p)), str(p)) for p in FLAGS.inputs]
    if FLAGS.workdir:
        path = fit_and_save(FLAGS.workdir, FLAGS.seed, FLAGS.star_grid_factor)
        sets.append((dict(np.load(path)), str(path)))
    if FLAGS.state:
        import importlib

        config = importlib.import_module(f"dustjax.configs.{FLAGS.config}").get_config()
        config.seed = FLAGS.seed
        config.predict.star_grid_factor = tuple(int(v) for v in FLAGS.star_grid_factor)
        d = inputs_from_state(FLAGS.state, config, save=FLAGS.save)
        sets.append((d, FLAGS.state))
    if FLAGS.synthetic:
        frac, bad, good = (float(v) for v in FLAGS.synthetic)
        for seed in range(FLAGS.draws):
            sets.append((synthetic(seed, frac, bad, good), f"synthetic {FLAGS.synthetic} {seed}"))
    if not sets:
        raise app.UsageError("give --workdir=DIR (fit first), --inputs=FILE[,...] or --synthetic")
    results = [score(d, label) for d, label in sets]
    print(json.dumps(results, indent=1))
    if FLAGS.out:
        write_json(FLAGS.out, results)  # atomic; creates the directory


if __name__ == "__main__":
    app.run(main)

r"""A prototype for the GP's band calibration where the model error is small against the noise
(issue 18, docs/validation.md, "The paper-size simulation's over-coverage"): the error's
*shape* from neighbour-averaged residuals, its *scale* from the validation stars' own.

    python -m tools.gp_calibration_neighbours --config=gp_paper_sim --seed=0 \
        --inputs=INPUTS.npz --neighbours=4,8,16,32 [--core=fit,guarded,upper] [--out=J]
    python -m tools.gp_calibration_neighbours --block_draws=6 --blocks=12000 --neighbours=4

``INPUTS.npz``: `gp_calibration_replay`'s saved inputs of a run of ``--config`` / ``--seed``
(``--save`` or ``calibration_inputs.npz``); the stars' positions are rebuilt from the config
(the same catalogue and split). A model error is spatially coherent and the noise is not: the
mean residual of a validation star and its ``n`` nearest neighbours (among all stars, fitted
ones included) keeps much of the error while its noise variance falls by n + 1, so the scale
mixture of `calibration` resolves the error's tail there where single residuals do not. Its
68 % quantile over its standard deviation (the shape) times the validation stars' one-Gaussian
variance (the scale, which single residuals do measure) gives the band: k = a_val (q68 / sd)^2
(one Gaussian's (q68 / sd)^2 = 0.989 where the mixture does not pass the gate). Scored on the
validation stars' truth. Not used by `calibrate_bands`: averaging partially coherent errors
changes their shape, and Gaussian controls with spatial structure are still to be run.
"""

from __future__ import annotations

import importlib
import json

import numpy as np
from absl import app, flags

from dustjax.gp import calibration
from dustjax.io import write_json

FLAGS = flags.FLAGS


def _define_flags():
    """The command line's flags, defined only when run as a program (tests import this module
    beside other tools that define flags of the same names)."""
    flags.DEFINE_string("config", "gp_paper_sim", "The run's config (a module of dustjax.configs).")
    flags.DEFINE_integer("seed", 0, "The run's config.seed.")
    flags.DEFINE_string("inputs", "", "The run's calibration inputs (.npz, gp_calibration_replay).")
    flags.DEFINE_list("neighbours", ["4", "8", "16", "32"], "Neighbours averaged with each star.")
    flags.DEFINE_list("core", ["fit"], "Narrow-part rules: fit, guarded, upper.")
    flags.DEFINE_integer(
        "blocks", 12000, "Synthetic: blocks of 5 stars (one validation star each)."
    )
    flags.DEFINE_integer("block_draws", 0, "Synthetic block-coherent draws (seeds 0 ..).")
    flags.DEFINE_string("out", "", "JSON to write (empty: print only).")


def positions(config_name: str, seed: int, inputs: dict):
    """Cartesian positions (pc) of the validation and fitted stars, in the inputs' order."""
    from dustjax.gp import fit as gpfit
    from dustjax.gp import pipeline
    from dustjax.gp.grid import LBDGrid

    config = importlib.import_module(f"dustjax.configs.{config_name}").get_config()
    config.seed = seed
    grid = LBDGrid.from_dict(dict(config.grid))
    catalog, _, truth = pipeline.load_stars(config, grid)
    fraction = pipeline._calibration_fraction(
        gpfit.FitSettings(**dict(config.fit)).calibration_fraction
    )
    held = pipeline.calibration_split(len(catalog), fraction, seed=seed)
    for key, mask in (("true", held), ("fit_true", ~held)):
        if not np.allclose(truth["extinction"][mask], inputs[key]):
            raise ValueError(f"{key}: the inputs are not this config's and seed's stars")
    lon, lat = np.radians(catalog.l_deg), np.radians(catalog.b_deg)
    dist = np.asarray(catalog.distance_pc)
    xyz = np.stack([dist * np.cos(lat) * np.cos(lon), dist * np.cos(lat) * np.sin(lon),
                    dist * np.sin(lat)], axis=1)  # fmt: skip
    return xyz[held], xyz[~held]


def shape_from_neighbours(r2_terms, xyz_val, xyz_all, n: int, core: str = "fit") -> dict:
    """(q68 / sd)^2 of the scale mixture fitted to the validation stars' neighbour-averaged
    residuals (each star with its ``n`` nearest among ``xyz_all``, itself included).
    ``core``: "fit" (the maximum-likelihood narrow part), "guarded" (raised to its
    profile-likelihood upper limit where below a tenth of the means' noise sd, as
    `calibration.calibrate_bands` does) or "upper" (always at that upper limit)."""
    from scipy.spatial import cKDTree
    from scipy.special import erf

    resid, tau2, noise2 = r2_terms
    _, nb = cKDTree(xyz_all).query(xyz_val, k=n + 1)
    rm, t2 = resid[nb].mean(1), tau2[nb].mean(1)
    n2 = noise2[nb].sum(1) / (n + 1) ** 2
    nll_g, _, _ = calibration._gauss_fit(rm**2, t2, n2)
    nll_m, a, wide, p = calibration._mixture_fit(rm**2, t2, n2)
    gain = nll_g - nll_m
    raised = False
    if gain > calibration._MIXTURE_GATE and core != "fit":
        raised = core == "upper" or a < 0.01 * np.median(n2) / np.median(t2)
        if raised:
            _, a_g, _ = calibration._gauss_fit(rm**2, t2, n2)
            a, wide, p = calibration._core_upper_limit((rm**2, t2, n2), nll_m, a, a_g)
    if gain > calibration._MIXTURE_GATE:

        def cov(k):
            return (1 - p) * erf(np.sqrt(k / (2 * a))) + p * erf(np.sqrt(k / (2 * a * wide)))

        q2 = calibration._smallest_scale_reaching(cov, 0.68) / (a * (1 - p + p * wide))
    else:
        q2 = calibration._smallest_scale_reaching(lambda k: erf(np.sqrt(k / 2)), 0.68)
    return dict(neighbours=n, gain=gain, mixture=dict(a=a, K=wide, p=p), core=core,
                core_raised=bool(raised), q68_over_sd_squared=q2)  # fmt: skip


def blocks(seed: int, num_blocks: int, tail_frac=0.35, tail=0.046, core=0.008) -> dict:
    """A synthetic set with a spatially coherent model error: tight blocks of 5 stars (1 km
    apart) share one true A (uniform 0.2-2 mag) and one error, sd ``tail`` A for a fraction
    ``tail_frac`` of the blocks and ``core`` A for the rest (the paper-size simulation's
    noise-free mixture in units of its 10 % noise: 0.46 and 0.08), bands 1.3 % of A, 10 %
    noise per star; one star a block is a validation star, the other four fitted; scored on a
    fresh set of the same size."""
    rng = np.random.default_rng(seed)

    def draw():
        a = np.repeat(rng.uniform(0.2, 2.0, num_blocks), 5)
        sd = np.repeat(np.where(rng.uniform(size=num_blocks) < tail_frac, tail, core), 5)
        p50 = a + np.repeat(rng.standard_normal(num_blocks), 5) * sd * a
        pct = np.stack([p50 - 0.013 * a, p50, p50 + 0.013 * a])
        observed = a + 0.1 * a * rng.standard_normal(a.size)
        xyz = np.repeat(rng.uniform(0.0, 1000.0, (num_blocks, 3)), 5, axis=0)
        return pct, observed, 0.1 * a, a, xyz + 0.01 * rng.standard_normal(xyz.shape)

    pct, observed, sigma, a, xyz = draw()
    val = np.zeros(a.size, bool)
    val[::5] = True
    fresh = draw()
    return dict(pct=pct[:, val], observed=observed[val], sigma=sigma[val], true=a[val],
                fit_pct=pct[:, ~val], fit_observed=observed[~val], fit_sigma=sigma[~val],
                fit_true=a[~val], xyz=xyz[val], fit_xyz=xyz[~val], score_pct=fresh[0],
                score_true=fresh[3])  # fmt: skip


def score(d: dict, label: str, counts, cores) -> dict:
    """The pipeline's calibration (pooled) and, for each neighbour count and core rule, the
    band k = a_val (q68 / sd)^2 of the neighbour means, alone and where the pooled residuals
    leave one Gaussian ("where_unresolved": the pipeline's band kept where its mixture is
    resolved); scored on ``score_*`` (synthetic) or the validation stars' truth."""
    d = {k: np.asarray(v, np.float64) for k, v in d.items()}
    val3 = (d["pct"], d["observed"], d["sigma"])
    fit3 = (d["fit_pct"], d["fit_observed"], d["fit_sigma"])
    f0, s0 = calibration._maximum_likelihood(*val3)
    scored = (d["score_pct"], d["score_true"]) if "score_true" in d else (d["pct"], d["true"])
    s_tau2 = ((scored[0][2] - scored[0][0]) / 2) ** 2 + (f0 * scored[0][1]) ** 2 + s0**2

    def cover(k):
        return float(np.mean((scored[1] - scored[0][1]) ** 2 <= k * s_tau2))

    info: dict = {}
    c, f, s = calibration.calibrate_bands(*val3, fitted=fit3, info=info)
    now = calibration.coverage(calibration.widen_bands(scored[0], f, s, c), scored[1])

    def terms(pre):
        pct = d[pre + "pct"]
        tau2 = ((pct[2] - pct[0]) / 2) ** 2 + (f0 * pct[1]) ** 2 + s0**2
        return d[pre + "observed"] - pct[1], tau2, d[pre + "sigma"] ** 2

    val, fit = terms(""), terms("fit_")
    _, a_val, _ = calibration._gauss_fit(val[0] ** 2, val[1], val[2])
    both = tuple(np.concatenate(v) for v in zip(val, fit, strict=True))
    xyz_all = np.concatenate([d["xyz"], d["fit_xyz"]])
    out = dict(inputs=label, a_validation=a_val, pipeline_coverage_true=now,
               pipeline_mixture=bool(info["mixture"]), rows=[])  # fmt: skip
    for n in counts:
        for core in cores:
            row = shape_from_neighbours(both, d["xyz"], xyz_all, n, core=core)
            k = a_val * row["q68_over_sd_squared"]
            row.update(band_scale=float(np.sqrt(k)), coverage_true=cover(k))
            row["coverage_true_where_unresolved"] = now if info["mixture"] else cover(k)
            out["rows"].append(row)
    return out


def main(argv):
    del argv
    counts = [int(v) for v in FLAGS.neighbours]
    sets = []
    if FLAGS.inputs:
        d = dict(np.load(FLAGS.inputs))
        d["xyz"], d["fit_xyz"] = positions(FLAGS.config, FLAGS.seed, d)
        sets.append((d, FLAGS.inputs))
    for seed in range(FLAGS.block_draws):
        sets.append((blocks(seed, FLAGS.blocks), f"blocks {FLAGS.blocks} seed {seed}"))
    if not sets:
        raise app.UsageError("give --inputs=FILE (gp_calibration_replay's inputs) or --block_draws")
    results = [score(d, label, counts, FLAGS.core) for d, label in sets]
    print(json.dumps(results, indent=1))
    if FLAGS.out:
        write_json(FLAGS.out, results)


if __name__ == "__main__":
    _define_flags()
    app.run(main)

r"""A prototype for the GP's band calibration where the model error is small against the noise
(issue 18, docs/validation.md, "The paper-size simulation's over-coverage"): the error's
*shape* from neighbour-averaged residuals, its *scale* from the validation stars' own.

    python -m tools.gp_calibration_neighbours --config=gp_paper_sim --seed=0 \
        --inputs=INPUTS.npz --neighbours=4,8,16,32 [--out=J]

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
flags.DEFINE_string("config", "gp_paper_sim", "The run's config (a module of dustjax.configs).")
flags.DEFINE_integer("seed", 0, "The run's config.seed.")
flags.DEFINE_string("inputs", "", "The run's calibration inputs (.npz, gp_calibration_replay).")
flags.DEFINE_list("neighbours", ["4", "8", "16", "32"], "Neighbours averaged with each star.")
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


def shape_from_neighbours(r2_terms, xyz_val, xyz_all, n: int) -> dict:
    """(q68 / sd)^2 of the scale mixture fitted to the validation stars' neighbour-averaged
    residuals (each star with its ``n`` nearest among ``xyz_all``, itself included)."""
    from scipy.spatial import cKDTree
    from scipy.special import erf

    resid, tau2, noise2 = r2_terms
    _, nb = cKDTree(xyz_all).query(xyz_val, k=n + 1)
    rm, t2 = resid[nb].mean(1), tau2[nb].mean(1)
    n2 = noise2[nb].sum(1) / (n + 1) ** 2
    nll_g, _, _ = calibration._gauss_fit(rm**2, t2, n2)
    nll_m, a, wide, p = calibration._mixture_fit(rm**2, t2, n2)
    gain = nll_g - nll_m
    if gain > calibration._MIXTURE_GATE:

        def cov(k):
            return (1 - p) * erf(np.sqrt(k / (2 * a))) + p * erf(np.sqrt(k / (2 * a * wide)))

        q2 = calibration._smallest_scale_reaching(cov, 0.68) / (a * (1 - p + p * wide))
    else:
        q2 = calibration._smallest_scale_reaching(lambda k: erf(np.sqrt(k / 2)), 0.68)
    return dict(neighbours=n, gain=gain, mixture=dict(a=a, K=wide, p=p), q68_over_sd_squared=q2)


def run(config_name: str, seed: int, path: str, counts) -> dict:
    d = {k: np.asarray(v, np.float64) for k, v in np.load(path).items()}
    xyz_val, xyz_fit = positions(config_name, seed, d)
    f0, s0 = calibration._maximum_likelihood(d["pct"], d["observed"], d["sigma"])

    def terms(pre):
        pct = d[pre + "pct"]
        tau2 = ((pct[2] - pct[0]) / 2) ** 2 + (f0 * pct[1]) ** 2 + s0**2
        return d[pre + "observed"] - pct[1], tau2, d[pre + "sigma"] ** 2

    val, fit = terms(""), terms("fit_")
    _, a_val, _ = calibration._gauss_fit(val[0] ** 2, val[1], val[2])
    both = tuple(np.concatenate(v) for v in zip(val, fit, strict=True))
    xyz_all = np.concatenate([xyz_val, xyz_fit])
    out = dict(inputs=path, config=config_name, seed=seed, a_validation=a_val, rows=[])
    for n in counts:
        row = shape_from_neighbours(both, xyz_val, xyz_all, n)
        k = a_val * row["q68_over_sd_squared"]
        inside = (d["true"] - d["pct"][1]) ** 2 <= k * val[1]
        row.update(band_scale=float(np.sqrt(k)), coverage_true=float(np.mean(inside)))
        out["rows"].append(row)
    return out


def main(argv):
    del argv
    if not FLAGS.inputs:
        raise app.UsageError("give --inputs=FILE (gp_calibration_replay's saved inputs)")
    result = run(FLAGS.config, FLAGS.seed, FLAGS.inputs, [int(v) for v in FLAGS.neighbours])
    print(json.dumps(result, indent=1))
    if FLAGS.out:
        write_json(FLAGS.out, result)


if __name__ == "__main__":
    app.run(main)

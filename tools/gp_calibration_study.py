r"""Every calibration of the GP's star bands on stored per-star arrays, without refitting.

    python -m tools.gp_calibration_study --stars=DIR/real/real_paper_logsph_stars.npz \
        --out=docs/results/gp_calibration_study.json

Reads the ``NAME_stars.npz`` that `tools.gp_realsky_suite` writes (the model's bands of the
validation and held-out stars, their observed and true extinctions, noise and learned model
error) and, for the earlier rule (`calibration.calibrate_model_error`) and each method of
`calibration.calibrate_bands`, fits the calibration on the validation stars and scores the
held-out stars' coverage of their true extinctions (target 60-76 %), with the standardised
error's kurtosis (heavy tails: the reason matching the observed coverage over-covers).
"""

from __future__ import annotations

import json

import numpy as np
from absl import app, flags

from dustjax.gp import calibration
from dustjax.io import write_json

FLAGS = flags.FLAGS
flags.DEFINE_list("stars", [], "NAME_stars.npz files of tools.gp_realsky_suite.")
flags.DEFINE_string("out", "", "JSON to write (empty: print only).")


def study(path: str) -> dict:
    d = np.load(path)
    learned = tuple(float(v) for v in d["learned_model_error"])
    shape = None if learned == (0.0, 0.0) else learned
    val = [np.asarray(d[k], np.float64) for k in ("val_pct", "val_observed", "val_sigma")]
    hold_pct, hold_true = np.asarray(d["hold_pct"], np.float64), np.asarray(d["hold_true"])
    f, s = calibration.calibrate_model_error(*val, learned=shape)
    out = dict(
        stars=path,
        num_validation=int(val[1].size),
        num_holdout=int(hold_true.size),
        learned_model_error=learned,
        before=dict(frac=f, floor_mag=s, coverage_true=calibration.coverage(
            calibration.widen_bands(hold_pct, f, s), hold_true)),
    )  # fmt: skip
    for method in calibration.CALIBRATION_METHODS:
        c, f, s = calibration.calibrate_bands(*val, shape=shape, method=method)
        out[method] = dict(band_scale=c, frac=f, floor_mag=s, coverage_true=calibration.coverage(
            calibration.widen_bands(hold_pct, f, s, c), hold_true))  # fmt: skip
    dec = out["deconvolved"]
    f0, s0 = dec["frac"] / dec["band_scale"], dec["floor_mag"] / dec["band_scale"]
    tau = np.sqrt(((hold_pct[2] - hold_pct[0]) / 2) ** 2 + (f0 * hold_pct[1]) ** 2 + s0**2)
    z = (hold_true - hold_pct[1]) / tau
    out["standardised_error_kurtosis"] = float(np.mean(z**4) / np.mean(z**2) ** 2)
    return out


def main(argv):
    del argv
    if not FLAGS.stars:
        raise app.UsageError("give --stars=NAME_stars.npz[,...]")
    results = [study(p) for p in FLAGS.stars]
    print(json.dumps(results, indent=1))
    if FLAGS.out:
        write_json(FLAGS.out, results)  # atomic; creates the directory


if __name__ == "__main__":
    app.run(main)

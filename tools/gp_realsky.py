r"""The latent GP on a field it did not make, scored against a 10-nearest-neighbour median.

    python -m tools.gp_realsky --cube=../shared/data/real/bayestar19_LR_anticentre.fits \
        --field=150,180,-25,-5,100,600 --num_stars=20000 --out=/tmp/realsky
    python -m tools.gp_realsky --truth=clumps:1 --field=50,90,-10,10,180,500 --out=/tmp/sim1
    python -m tools.gp_realsky --truth=lognormal:3 --field=50,90,-10,10,180,500 --out=/tmp/sim3

Draws stars in the cube (uniform in l, b, d^3, or ``--distribution=catalog``), integrates their
extinctions exactly through it, adds noise sigma = max(0.1 A, 0.02), keeps a validation and a
held-out set, fits the GP (`dustjax.gp.realsky.run_test`) and writes ``realsky.json`` to --out
with the scores of the GP (each band variant) and of the kNN baseline (and ``realsky_stars.npz``:
the validation and held-out stars' bands and extinctions), and prints the table row.
A ``.npy`` cube needs its ``.header.json`` beside it (no astropy needed).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from absl import app, flags

from dustjax.gp import realsky

FLAGS = flags.FLAGS
flags.DEFINE_string("cube", "../shared/data/real/bayestar19_LR_anticentre.fits", "Truth cube.")
flags.DEFINE_string("truth", "", "Instead of --cube: clumps:SEED or lognormal:SEED.")
flags.DEFINE_list("field", [str(v) for v in realsky.TAURUS_PERSEUS], "l0,l1,b0,b1,d0,d1.")
flags.DEFINE_integer("num_stars", 20_000, "Stars the GP is fitted to.")
flags.DEFINE_integer("num_validation", 2_000, "Stars for the post-hoc calibration.")
flags.DEFINE_integer("num_holdout", 2_000, "Held-out stars for the scores.")
flags.DEFINE_enum("distribution", "uniform", ["uniform", "catalog"], "Star positions.")
flags.DEFINE_integer("seed", 0, "Seed of the stars and the fit.")
flags.DEFINE_list("shape", ["20", "15", "35"], "Training grid nl,nb,nd.")
flags.DEFINE_integer("ghost_cells", 2, "Foreground cells in [0, d_min].")
flags.DEFINE_integer("background_cells", 0, "Cells beyond d_max (with stars).")
flags.DEFINE_list("predict_factor", ["2", "2", "2"], "Prediction grid = training grid x these.")
flags.DEFINE_integer("num_inducing", 300, "Inducing points.")
flags.DEFINE_float("scale_length", 30.0, "Initial scale length (pc).")
flags.DEFINE_enum("inducing_init", "spread", ["spread", "random"], "Inducing-point start.")
flags.DEFINE_integer("max_iterations", 1500, "Most fit iterations.")
flags.DEFINE_integer("min_iterations", 300, "Fewest fit iterations.")
flags.DEFINE_enum("stop_rule", "plateau", ["paper", "plateau"], "Stopping rule.")
flags.DEFINE_integer("plateau_window", 100, "Window of the plateau rule.")
flags.DEFINE_float("learning_rate", 0.03, "AdamW learning rate.")
flags.DEFINE_bool("model_error", True, "Learn a model-error term (f A)^2 + s^2 in the ELBO.")
flags.DEFINE_integer("star_samples", 128, "Posterior samples for the star bands.")
flags.DEFINE_string("out", "/tmp/gp_realsky", "Output directory (realsky.json).")


def main(argv):
    del argv
    field = tuple(float(v) for v in FLAGS.field)
    truth = realsky.make_truth(FLAGS.truth or FLAGS.cube, field)
    settings = realsky.TestSettings(
        field=field,
        num_stars=FLAGS.num_stars,
        num_validation=FLAGS.num_validation,
        num_holdout=FLAGS.num_holdout,
        distribution=FLAGS.distribution,
        seed=FLAGS.seed,
        shape=tuple(int(v) for v in FLAGS.shape),
        ghost_cells=FLAGS.ghost_cells,
        background_cells=FLAGS.background_cells,
        predict_factor=tuple(int(v) for v in FLAGS.predict_factor),
        num_inducing=FLAGS.num_inducing,
        scale_lengths_pc=FLAGS.scale_length,
        inducing_init=FLAGS.inducing_init,
        star_samples=FLAGS.star_samples,
        fit=dict(
            learning_rate=FLAGS.learning_rate,
            max_iterations=FLAGS.max_iterations,
            min_iterations=FLAGS.min_iterations,
            stop_rule=FLAGS.stop_rule,
            plateau_window=FLAGS.plateau_window,
            model_error=FLAGS.model_error,
            jitter=1e-4,
            max_jitter=1e-1,
        ),
    )
    result = realsky.run_test(truth, settings, progress=False)
    out = Path(FLAGS.out)
    out.mkdir(parents=True, exist_ok=True)
    arrays = result.pop("star_arrays")
    np.savez_compressed(out / "realsky_stars.npz", **{k: np.asarray(v) for k, v in arrays.items()})
    (out / "realsky.json").write_text(json.dumps(result, indent=1) + "\n")
    row = realsky.summary_row(result)
    print(json.dumps(dict(fit=result["fit"] | {"elbo_every_50": None}, row=row), indent=1))
    print(json.dumps(dict(bands=result["gp"]["stars"], discretisation=result["discretisation"],
                          calibration=result["gp"]["calibration"]), indent=1))  # fmt: skip


if __name__ == "__main__":
    app.run(main)

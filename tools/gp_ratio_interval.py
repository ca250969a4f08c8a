r"""The GP-to-kNN error ratio of a real-sky test with a bootstrap interval, from its saved files.

    python -m tools.gp_ratio_interval --suite=DIR/suite.json --test=real_paper_logsph \
        --cube=../shared/data/real/bayestar19_LR_anticentre.fits --out=DIR/ratio.json
    # the H200 run of docs/validation.md ("2,000 inducing points"), from the files kept there:
    python -m tools.gp_ratio_interval --suite=docs/results/gp_realsky_h200_s5_m2000.json \
        --stars=docs/results/gp_realsky_h200_s5_m2000_stars.npz \
        --cube=../shared/data/real/bayestar19_LR_anticentre.fits

`dustjax.gp.realsky.run_test` now saves the kNN's held-out bands (``hold_knn_pct``) and reports
the interval itself. For runs saved before that, this tool redraws the test's stars from its
settings and seed (`realsky.draw_stars`: the same stars; checked against the saved true
extinctions) and recomputes the kNN on the CPU (~1 min for 120,000 stars). The interval is
`realsky.ratio_interval`: a paired bootstrap over the held-out stars (issue 18's 0.9x target).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from absl import app, flags

from dustjax.geometry import galactic_to_cartesian_np
from dustjax.gp import realsky

FLAGS = flags.FLAGS
flags.DEFINE_string("suite", None, "suite.json of tools.gp_realsky_suite.")
flags.DEFINE_string("test", "real_paper_logsph", "Test name in the suite (its NAME_stars.npz).")
flags.DEFINE_string(
    "stars", "", "The test's saved star arrays (default: SUITE's folder/TEST_stars.npz)."
)
flags.DEFINE_string("cube", "../shared/data/real/bayestar19_LR_anticentre.fits", "Real cube.")
flags.DEFINE_integer("num_boot", 4000, "Bootstrap rounds.")
flags.DEFINE_string("out", "", "Output JSON (default: print only).")


def knn_of_saved_test(settings: dict, cube: str, hold_true: np.ndarray) -> np.ndarray:
    """The kNN's held-out 16/50/84 % bands of a saved test, its stars redrawn from its seed."""
    fields = realsky.TestSettings.__dataclass_fields__
    kw = {k: tuple(v) if isinstance(v, list) else v for k, v in settings.items() if k in fields}
    st = realsky.TestSettings(**kw)
    stars, (fit, _, hold) = realsky.draw_test_stars(realsky.make_truth(cube, st.field), st)
    off = float(np.max(np.abs(stars["true"][hold] - hold_true) / np.maximum(hold_true, 0.02)))
    if off > 1e-3:
        raise SystemExit(
            f"the redrawn held-out stars differ from the saved ones (max relative {off:.2g}): "
            "another cube, field or seed than the run's?"
        )
    fit_xyz, hold_xyz = (
        galactic_to_cartesian_np(stars["l"][s], stars["b"][s], stars["d"][s]) for s in (fit, hold)
    )
    return realsky.knn_predict(fit_xyz, stars["observed"][fit], hold_xyz, st.knn_k)


def main(argv):
    del argv
    suite = Path(FLAGS.suite)
    result = json.loads(suite.read_text())[FLAGS.test]
    arrays = np.load(FLAGS.stars or suite.parent / f"{FLAGS.test}_stars.npz")
    true = arrays["hold_true"].astype(np.float64)
    if "hold_knn_pct" in arrays.files:
        knn, source = arrays["hold_knn_pct"], "saved"
    else:
        knn, source = knn_of_saved_test(result["settings"], FLAGS.cube, true), "redrawn"
    res = realsky.ratio_interval(arrays["hold_pct"][1], knn[1], true, num_boot=FLAGS.num_boot)
    res.update(test=FLAGS.test, knn_source=source, num_holdout=int(len(true)),
               reported_ratio=realsky.summary_row(result)["ratio_to_knn"])  # fmt: skip
    print(json.dumps(res, indent=1))
    if FLAGS.out:
        Path(FLAGS.out).write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    flags.mark_flag_as_required("suite")
    app.run(main)

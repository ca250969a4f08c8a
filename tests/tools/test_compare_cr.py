"""tools.compare_cr: several evaluations on one c_r figure, with checked input."""

import json

import numpy as np
import pytest

from tools import compare_cr


def _write(path, k, c_r, loss=1e-4):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dict(
        loss_eq3=loss, residual_mag_per_pc=dict(dispersion=7e-4), paper_checks={"min": 0.8},
        region=dict(name="SR"), c_r_table=dict(k=list(k), c_r=list(c_r)),
    )))  # fmt: skip
    return path


def test_table_and_figure(tmp_path):
    from dustjax.vnet import plots

    k = np.geomspace(0.03, 0.9, 12)
    a = _write(tmp_path / "run/eval/test_metrics.json", k, np.linspace(1, 0.80, 12))
    b = _write(tmp_path / "run/eval_dihedral/test_metrics.json", k, np.linspace(1, 0.85, 12))
    runs = compare_cr.load([a, b])
    assert list(runs) == ["run/eval", "run/eval_dihedral"]
    rows = compare_cr.table(runs).splitlines()
    assert len(rows) == 4 and rows[-1].endswith("/ 0.850 |")  # c_r at the last k, 0.88 pc^-1
    plots.cross_correlation(k, {n: d["c_r_table"]["c_r"] for n, d in runs.items()},
                            tmp_path / "cr.png", paper_range=(0.046, 0.893))  # fmt: skip
    assert (tmp_path / "cr.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="has shape"):
        plots.cross_correlation(k, {"short": [1.0, 0.9]}, tmp_path / "bad.png")


def test_bad_input_is_named(tmp_path):
    k = np.geomspace(0.03, 0.9, 12)
    a = _write(tmp_path / "a/eval/test_metrics.json", k, np.ones(12))
    b = _write(tmp_path / "b/eval/test_metrics.json", k[:-1], np.ones(11))
    with pytest.raises(ValueError, match="k bins differ"):
        compare_cr.load([a, b])
    with pytest.raises(ValueError, match="1 labels for 2"):
        compare_cr.load([a, a], ["x"])
    with pytest.raises(FileNotFoundError, match="run experiments.evaluate"):
        compare_cr.load([tmp_path / "missing.json"])
    (tmp_path / "other.json").write_text("{}")
    with pytest.raises(ValueError, match="no c_r_table"):
        compare_cr.load([tmp_path / "other.json"])

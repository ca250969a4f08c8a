"""tools.ensemble_arrays and dustjax.vnet.refine.ensemble_prior: the mean of several networks'
maps of one real cube, scored; their prior for the refinement."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dustjax.geometry import Region
from dustjax.vnet import refine
from tools import ensemble_arrays

REGION = Region((-48.0, -48.0, -48.0), (48.0, 48.0, 48.0), (8, 8, 8), name="toy")


def _write(path, truth, density, **extra):
    meta = dict(region=REGION.to_dict())
    np.savez(path, truth=truth, density=density, extinction=np.ones_like(truth),
             meta=np.asarray(json.dumps(meta)), **extra)  # fmt: skip
    return str(path)


def test_ensemble_prior_is_the_mixtures_mean_and_spread():
    m, s = refine.ensemble_prior([np.full(4, 1.0), np.full(4, 3.0)], [np.full(4, 1.0)] * 2)
    np.testing.assert_allclose(m, 2.0)
    np.testing.assert_allclose(s, np.sqrt(1.0 + 1.0), rtol=1e-6)  # mean s^2 + var of the means
    one_m, one_s = refine.ensemble_prior([np.full(4, 2.0)], [np.full(4, 0.5)])
    np.testing.assert_allclose(one_m, 2.0)
    np.testing.assert_allclose(one_s, 0.5)
    with pytest.raises(ValueError, match="equal shape"):
        refine.ensemble_prior([np.ones(4)], [np.ones(3)])


def test_opposite_errors_cancel_in_the_ensemble_and_every_subset_is_scored(tmp_path):
    """Two members off by +-30 % of the truth average to the truth (skill 1, dust 1) while each
    alone is worse; a third member gives all four subsets; a file of another cube is refused
    (one that differs by float32 rounding is not)."""
    rng = np.random.default_rng(0)
    truth = rng.lognormal(-8, 1, REGION.shape).astype(np.float32)
    a = _write(tmp_path / "a.npz", truth, 1.3 * truth)
    b = _write(tmp_path / "b.npz", truth, 0.7 * truth)
    out = ensemble_arrays.main([f"--arrays={a},{b}", "--names=a,b", f"--out={tmp_path / 'e.json'}"])
    assert out["members"]["a"]["skill"] < 0.95 and out["members"]["b"]["skill"] < 0.95
    both = out["subsets"]["a + b"]
    assert both["skill"] == pytest.approx(1.0, abs=1e-6)
    assert both["dust_recovered"] == pytest.approx(1.0, abs=1e-6)
    c = _write(tmp_path / "c.npz", truth, truth)
    out = ensemble_arrays.main([f"--arrays={a},{b},{c}", f"--out={tmp_path / 'e3.json'}"])
    assert len(out["subsets"]) == 4  # three pairs and the triple
    rounded = _write(tmp_path / "r.npz", truth * np.float32(1 + 1e-7), truth)  # another GPU
    ensemble_arrays.main([f"--arrays={a},{rounded}", f"--out={tmp_path / 'r.json'}"])
    other = _write(tmp_path / "d.npz", 1.001 * truth, truth)
    with pytest.raises(ValueError, match="differ in 'truth'"):
        ensemble_arrays.main([f"--arrays={a},{other}", f"--out={tmp_path / 'x.json'}"])
    with pytest.raises(ValueError, match="two or more"):
        ensemble_arrays.main([f"--arrays={a}", f"--out={tmp_path / 'x.json'}"])

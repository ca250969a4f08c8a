"""tools.refine_heldout --cv: the refinement chosen by held-out stars, from a saved real file."""

import json

import numpy as np
import pytest

from dustjax.geometry import Region

REGION = Region((-48.0, -48.0, -48.0), (48.0, 48.0, 48.0), (8, 8, 8))


def _real_file(path, seed=0, n=2000):
    """A `tools.realsky_vnet --save_arrays` file: a prior of 0.4 x the truth (in asinh units of
    1e-4 mag/pc), precise stars of the truth."""
    from dustjax.los import integrate_to_points

    rng = np.random.default_rng(seed)
    truth = rng.lognormal(-6.0, 1.0, REGION.shape) * (rng.random(REGION.shape) < 0.8)
    xyz = rng.uniform(np.asarray(REGION.lower_pc) + 0.5, np.asarray(REGION.upper_pc) - 0.5, (n, 3))
    edges = tuple(REGION.edges_pc(a) for a in range(3))
    e = np.asarray(integrate_to_points(truth.astype(np.float32), edges, xyz), np.float64)
    sigma = np.hypot(0.005, 0.02 * e)
    meta = dict(region=REGION.to_dict(), normalisation=dict(name="asinh", e0=0.05, rho0=1e-4))
    np.savez(
        path, truth=truth, extinction=np.zeros(REGION.shape), mu_hat=np.arcsinh(0.4 * truth / 1e-4),
        sigma_hat=np.full(REGION.shape, 0.5), star_xyz_pc=xyz,
        star_extinction=e + sigma * rng.standard_normal(n), star_sigma_extinction=sigma,
        meta=np.asarray(json.dumps(meta)),
    )  # fmt: skip
    return truth


def test_cv_row_is_the_chosen_variant_and_the_table_is_recorded(tmp_path):
    from tools import refine_heldout

    _real_file(tmp_path / "real.npz")
    res = refine_heldout.main([
        f"--real={tmp_path / 'real.npz'}", "--variants=vnet,corr:1:0.3", "--cv=1:0.3,2:0.3:auto",
        "--num_steps=200", "--cv_score_truth", f"--out={tmp_path / 'r.json'}",
    ])  # fmt: skip
    (rep,) = res["cv"]
    assert [r["name"] for r in rep["table"]] == ["none", "1:0.3", "2:0.3:auto"]
    assert rep["chosen"] != "none" and rep["num_heldout"] == 300
    got = res["per_cube"]["cv"][0]
    assert got["cv_chosen"] == rep["chosen"]
    if rep["chosen"] == "1:0.3":  # the variant's own map, reused
        assert got["skill"] == res["per_cube"]["corr:1:0.3"][0]["skill"]
    # "none"'s CV fit is the V-net's map: its truth skill is the vnet row's
    assert rep["table"][0]["truth_skill_cv_fit"] == pytest.approx(
        res["per_cube"]["vnet"][0]["skill"], rel=1e-9
    )
    assert got["skill"] > res["per_cube"]["vnet"][0]["skill"]
    # the truth, scored on the same held-out stars, is listed apart and never chosen
    (truth,) = rep["extra"]
    assert truth["name"] == "extra:truth" and truth["chi2"] < rep["table"][0]["chi2"]
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["cv"][0]["chosen"] == rep["chosen"]

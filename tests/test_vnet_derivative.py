"""The V-net's line-of-sight derivative channel (issue 17): a physics estimate of the density
from the extinction cube, checked against an analytic answer and an independent interpolation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dustjax.geometry import Region
from dustjax.los import los_operator
from dustjax.models.vnet import VNet, los_derivative


def _frame(region):
    return tuple(region.lower_pc) + tuple(region.cell_size_pc)


@pytest.mark.parametrize("name", ["SR", "LR"])
def test_derivative_of_a_uniform_cube_is_its_density(name):
    """E = rho r for a uniform cube: the finite difference along the line of sight gives rho
    back."""
    region = Region.named(name).with_shape((16, 16, 16))
    rho = 2e-3
    e = jnp.asarray(los_operator(region)(np.full(region.shape, rho, np.float32)))[None]
    r = np.linalg.norm(region.cell_centres_pc(), axis=-1)
    far = r > 4 * min(region.cell_size_pc)
    for h in (1.0, 2.0):
        d = np.asarray(los_derivative(e, region.shape, _frame(region), h))[0]
        # trilinear interpolation overestimates the convex r by ~cell^2 / 8r (a few %), and
        # the outer half-cell clamps it
        err = np.abs(d[far] / rho - 1)
        assert np.quantile(err, 0.9) < 0.05 and err.max() < 0.1, (np.quantile(err, 0.9), err.max())
        assert abs(np.median(d / rho) - 1) < 0.03


def test_derivative_equals_scipy_interpolation():
    """The static trilinear weights equal scipy's map_coordinates (order 1, nearest)."""
    from scipy.ndimage import map_coordinates

    region = Region.named("SR").with_shape((8, 16, 8))
    rng = np.random.default_rng(0)
    e = rng.uniform(0, 2, region.shape).astype(np.float32)
    c = region.cell_centres_pc().reshape(-1, 3)
    r = np.linalg.norm(c, axis=1)
    h = 2.0 * min(region.cell_size_pc)
    step = np.minimum(h, r)
    back = c - (step / r)[:, None] * c
    u = (back - np.asarray(region.lower_pc)) / np.asarray(region.cell_size_pc) - 0.5
    e_back = np.where(r <= h, 0.0, map_coordinates(e, u.T, order=1, mode="nearest"))
    want = ((e.ravel() - e_back) / step).reshape(region.shape)
    got = np.asarray(los_derivative(jnp.asarray(e)[None], region.shape, _frame(region), 2.0))[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_vnet_derivative_channel_adds_two_inputs_and_needs_geometry():
    region = Region.named("SR").with_shape((8, 8, 8))
    x = jnp.ones((1, 8, 8, 8, 1))
    kw = dict(features=(4, 8), num_outputs=2, output_head="linear", los_frame_pc=_frame(region))
    plain = VNet(**kw).init(jax.random.key(0), x)
    with_d = VNet(**kw, derivative_channel=(0.05, 1e-4))
    params = with_d.init(jax.random.key(0), x)

    def size(tree):
        return sum(a.size for a in jax.tree.leaves(tree["params"]))

    assert size(params) - size(plain) == 27 * 2 * 4  # two more input channels of the first conv
    assert with_d.apply(params, x).shape == (1, 8, 8, 8, 2)
    with pytest.raises(ValueError, match="los_frame_pc"):
        VNet(features=(4, 8), derivative_channel=(0.05, 1e-4)).init(jax.random.key(0), x)


def test_derivative_channel_needs_asinh():
    from dustjax.vnet.data import model_kwargs
    from dustjax.vnet.normalisation import Normalisation
    from experiments.configs.vnet_sky_test import get_config

    c = get_config()
    c.model.derivative_channel = True
    assert model_kwargs(c)["derivative_channel"] == (0.05, 1e-4)
    c.data.normalisation_params = None  # the defaults are the normalisation's own
    default = Normalisation("asinh")
    assert model_kwargs(c)["derivative_channel"] == (default.e0, default.rho0)
    c.data.normalisation = "eq12"
    with pytest.raises(ValueError, match="asinh"):
        model_kwargs(c)


def test_heldout_summary_pools_skill_over_cubes():
    """tools/sky_heldout.summarise: the pooled skill is 1 - sum MSE / sum Var, the medians are
    the cubes' medians (a perfect cube and one at zero skill pool to 1 - v2 / (v1 + v2))."""
    from tools.sky_heldout import summarise

    rows = [
        dict(skill=1.0, dust_recovered=1.0, log_r=1.0, rmse=0.0, truth_std=1.0),
        dict(skill=0.0, dust_recovered=0.5, log_r=0.5, rmse=2.0, truth_std=2.0),
        dict(skill=0.5, dust_recovered=2.0, log_r=0.9, rmse=1.0, truth_std=np.sqrt(2.0)),
    ]
    s = summarise(rows)
    assert s["median_skill"] == 0.5 and s["median_dust_recovered"] == 1.0
    assert np.isclose(s["pooled_skill"], 1.0 - (0 + 4 + 1) / (1 + 4 + 2))
    assert s["num_cubes"] == 3

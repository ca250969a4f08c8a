"""Regions and coordinate transforms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dustjax.geometry import (
    Region,
    RegionError,
    cartesian_to_galactic,
    cartesian_to_galactic_astropy,
    galactic_to_cartesian,
    galactic_to_cartesian_astropy,
)


def test_named_regions_match_the_paper():
    sr, lr = Region.named("SR"), Region.named("lr")
    assert sr.lower_pc == (-192.0, -96.0, -96.0) and sr.upper_pc == (0.0, 96.0, 96.0)
    assert lr.lower_pc == (-1920.0, -960.0, -960.0) and lr.upper_pc == (0.0, 960.0, 960.0)
    assert sr.shape == lr.shape == (32, 32, 32)
    assert sr.cell_size_pc == (6.0, 6.0, 6.0) and lr.cell_size_pc == (60.0, 60.0, 60.0)
    assert sr.contains_sun and lr.contains_sun


def test_cell_centres_and_edges():
    sr = Region.named("SR")
    centres = sr.cell_centres_pc()
    assert centres.shape == (32, 32, 32, 3)
    np.testing.assert_allclose(centres[0, 0, 0], [-189.0, -93.0, -93.0])
    np.testing.assert_allclose(centres[-1, -1, -1], [-3.0, 93.0, 93.0])
    np.testing.assert_allclose(np.diff(sr.edges_pc(0)), 6.0)
    idx = sr.cell_index(centres.reshape(-1, 3))
    np.testing.assert_array_equal(idx.reshape(32, 32, 32, 3)[3, 4, 5], [3, 4, 5])
    assert (sr.cell_index(np.array([[10.0, 0.0, 0.0]])) == -1).any()


@pytest.mark.parametrize("n", [64, 128])
def test_custom_shapes(n):
    r = Region.named("SR").with_shape((n, n, n))
    assert r.shape == (n, n, n)
    assert r.cell_size_pc == pytest.approx((192 / n,) * 3)
    assert r.cell_centres_pc().shape == (n, n, n, 3)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(lower_pc=(0, 0, 0), upper_pc=(0, 1, 1), shape=(2, 2, 2)), "empty or inverted"),
        (dict(lower_pc=(5, 0, 0), upper_pc=(1, 1, 1), shape=(2, 2, 2)), "empty or inverted"),
        (dict(lower_pc=(0, 0, 0), upper_pc=(1, 1, 1), shape=(2, 0, 2)), "positive cell count"),
        (dict(lower_pc=(0, 0), upper_pc=(1, 1, 1), shape=(2, 2, 2)), "three numbers"),
        (dict(lower_pc=(0, 0, 0), upper_pc=(1, 1, np.inf), shape=(2, 2, 2)), "finite"),
        (dict(lower_pc=(0, 0, 0), upper_pc=(1, 1, 1), shape=(2, 2.5, 2)), "whole numbers"),
    ],
)
def test_bad_regions_get_clear_errors(kwargs, message):
    with pytest.raises(RegionError, match=message):
        Region(**kwargs)


def test_unknown_region_names_the_known_ones():
    with pytest.raises(RegionError, match=r"unknown region 'XR'.*LR.*SR"):
        Region.named("XR")


def test_region_dict_round_trip():
    r = Region((-10, -20, -30), (10, 20, 30), (4, 5, 6), name="box")
    assert Region.from_dict(r.to_dict()) == r


def test_jnp_transforms_match_astropy():
    rng = np.random.default_rng(0)
    l_deg = rng.uniform(0, 360, 500)
    b_deg = rng.uniform(-89, 89, 500)
    d_pc = rng.uniform(1, 5000, 500)
    xyz_astropy = galactic_to_cartesian_astropy(l_deg, b_deg, d_pc)
    xyz_jax = np.asarray(jax.jit(galactic_to_cartesian)(l_deg, b_deg, d_pc))
    np.testing.assert_allclose(xyz_jax, xyz_astropy, rtol=1e-5, atol=1e-3)
    l2, b2, d2 = cartesian_to_galactic_astropy(xyz_astropy)
    l3, b3, d3 = (np.asarray(v) for v in jax.jit(cartesian_to_galactic)(jnp.asarray(xyz_astropy)))
    np.testing.assert_allclose(l2, l_deg, atol=1e-8)
    np.testing.assert_allclose(np.cos(np.deg2rad(l3 - l_deg)), 1.0, atol=1e-9)
    np.testing.assert_allclose(b3, b2, atol=1e-3)
    np.testing.assert_allclose(d3, d2, rtol=1e-5)


def test_axes_point_where_the_convention_says():
    xyz = np.asarray(
        galactic_to_cartesian(jnp.array([0.0, 90.0, 0.0]), jnp.array([0.0, 0, 90]), 1.0)
    )
    np.testing.assert_allclose(xyz, np.eye(3), atol=1e-6)


def test_numpy_transforms_round_trip_and_match_jnp():
    from dustjax.geometry import cartesian_to_galactic_np, galactic_to_cartesian_np

    rng = np.random.default_rng(3)
    l_deg, b_deg = rng.uniform(0, 360, 50), rng.uniform(-89, 89, 50)
    d_pc = rng.uniform(10, 3000, 50)
    xyz = galactic_to_cartesian_np(l_deg, b_deg, d_pc)
    assert xyz.dtype == np.float64
    np.testing.assert_allclose(xyz, galactic_to_cartesian_astropy(l_deg, b_deg, d_pc), atol=1e-9)
    l2, b2, d2 = cartesian_to_galactic_np(xyz)
    np.testing.assert_allclose(np.stack([l2, b2, d2]), np.stack([l_deg, b_deg, d_pc]), atol=1e-9)


def test_pc_cm_is_astropys_parsec():
    astropy_constants = pytest.importorskip("astropy.constants")
    from dustjax.geometry import PC_CM

    assert PC_CM == astropy_constants.pc.cgs.value

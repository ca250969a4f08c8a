"""Eq. 5 gridding of a star catalogue (dustjax.vnet.gridding): weights, neighbours, identities."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from dustjax import catalog as cat
from dustjax.geometry import Region
from dustjax.vnet import gridding


def _random_catalog(region, n, seed=0):
    rng = np.random.default_rng(seed)
    lo, hi = np.asarray(region.lower_pc), np.asarray(region.upper_pc)
    xyz = rng.uniform(lo, hi, (n, 3))
    return cat.StarCatalog.from_arrays(
        xyz_pc=xyz,
        extinction=rng.uniform(0, 3, n),
        sigma_extinction=rng.uniform(0.01, 0.3, n),
    )


def test_eq5_weights_analytic():
    d = np.array([[1.0, 2.0, 2.0]])
    s = np.array([[0.1, 0.1, 0.2]])
    raw = np.array([(1 - 0.75 / 4) / 0.0101, 0.25 / 0.0101, 0.25 / 0.0401])
    np.testing.assert_allclose(gridding.eq5_weights(d, s)[0], raw / raw.sum())
    # All stars on the cell centre: weights by sigma only.
    w = gridding.eq5_weights(np.zeros((1, 2)), np.array([[0.0, 0.1]]))
    np.testing.assert_allclose(w[0], np.array([1e4, 1 / 0.0101]) / (1e4 + 1 / 0.0101))


def test_kdtree_and_brute_force_agree_with_a_full_sort():
    region = Region((-60.0, -30.0, -30.0), (0.0, 30.0, 30.0), (4, 4, 4), name="tiny")
    catalog = _random_catalog(region, 700)
    a = gridding.knn_weights(region, catalog, k=5, backend="kdtree")
    b = gridding.knn_weights(region, catalog, k=5, backend="brute", chunk_elements=700 * 7)
    centres = region.cell_centres_pc().reshape(-1, 3)
    full = np.linalg.norm(centres[:, None] - catalog.xyz_pc[None], axis=-1)
    ref = np.argsort(full, axis=1)[:, :5]
    np.testing.assert_array_equal(a.indices, ref)
    np.testing.assert_array_equal(b.indices, ref)
    np.testing.assert_allclose(a.distances_pc, np.take_along_axis(full, ref, 1), rtol=1e-6)
    np.testing.assert_allclose(a.weights, b.weights, rtol=1e-6)
    cube_a = a.apply(catalog.extinction)
    cube_b = np.asarray(b.apply(jnp.asarray(catalog.extinction)))
    assert cube_a.shape == region.shape
    np.testing.assert_allclose(cube_a, cube_b, rtol=1e-5)
    # By hand for one cell: eq. 5 weighted mean of its 5 nearest stars.
    d = full[0, ref[0]]
    w = (1 - 0.75 * (d / d.max()) ** 2) / (catalog.sigma_extinction[ref[0]] ** 2 + 1e-4)
    expect = np.sum(w * catalog.extinction[ref[0]]) / w.sum()
    np.testing.assert_allclose(cube_a.reshape(-1)[0], expect, rtol=1e-6)


def test_gridding_identities():
    region = Region.named("SR").with_shape((8, 8, 8))
    catalog = _random_catalog(region, 4000, seed=2)
    # A constant extinction grids to the same constant (weights are normalised).
    const = catalog.with_extinction(np.full(len(catalog), 1.7))
    np.testing.assert_allclose(gridding.grid_extinction(region, const), 1.7, rtol=1e-6)
    # k = 1 with a star on every cell centre reproduces the stars.
    centres = region.cell_centres_pc().reshape(-1, 3)
    values = np.arange(len(centres), dtype=float)
    on_centres = cat.StarCatalog.from_arrays(
        xyz_pc=centres, extinction=values, sigma_extinction=np.full(len(centres), 0.1)
    )
    np.testing.assert_allclose(
        gridding.grid_extinction(region, on_centres, k=1).reshape(-1), values
    )
    # compact() draws only the stars that are used, with the same cube.
    knn = gridding.knn_weights(region, catalog)  # SR@... -> k = 3
    assert knn.k == 3
    used, small = knn.compact()
    assert len(used) < len(catalog)
    np.testing.assert_allclose(
        small.apply(catalog.extinction[used]), knn.apply(catalog.extinction), rtol=1e-6
    )


def test_gridding_errors():
    region = Region((-10.0, -10.0, -10.0), (0.0, 10.0, 10.0), (2, 2, 2))
    catalog = _random_catalog(region, 4)
    with pytest.raises(gridding.GriddingError, match="no default k"):
        gridding.knn_weights(region, catalog)
    with pytest.raises(gridding.GriddingError, match="4 star.*k = 5"):
        gridding.knn_weights(region, catalog, k=5)
    with pytest.raises(gridding.GriddingError, match="backend"):
        gridding.knn_weights(region, catalog, k=2, backend="gpu")

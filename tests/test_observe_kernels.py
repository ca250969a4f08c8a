"""The faster observation kernels (dustjax.vnet.observe_kernels, issue 17 item 2) against
independent routes: analytic integrals, the project's sorted LOS kernel, a brute-force k-nearest
eq. 5, and the observation loop's former path."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dustjax import los
from dustjax.geometry import Region
from dustjax.vnet import observe as ob
from dustjax.vnet import observe_kernels as kn
from dustjax.vnet.gridding import SIGMA_FLOOR_MAG2


def _points(region, n, seed):
    rng = np.random.default_rng(seed)
    lo, hi = np.asarray(region.lower_pc), np.asarray(region.upper_pc)
    xyz = lo + rng.uniform(size=(n, 3)) * (hi - lo)
    cell = np.asarray(region.cell_size_pc)
    # degenerate rays: on the Sun's planes, on cell planes, through cell corners, on an axis
    xyz[:20, 1] = 0.0
    xyz[20:40, 2] = 3 * cell[2]
    shape = np.asarray(region.shape)
    xyz[40:60] = lo + cell * rng.integers(1, shape, (20, 3))  # interior cell corners
    xyz[60:70, 1:] = 0.0
    xyz[70:80] = lo + cell * (rng.integers(0, shape, (10, 3)) + 0.5)  # cell centres
    return xyz.astype(np.float32)


def _pieces(density, region, xyz, chunk=512):
    fn = jax.jit(lambda d, x: kn.integrate_pieces(d, region, x, chunk))
    return np.asarray(fn(jnp.asarray(density, jnp.float32), jnp.asarray(xyz)), np.float64)


@pytest.mark.parametrize("name", ["LR", "SR"])
def test_pieces_uniform_density_is_distance_times_density(name):
    region = Region.named(name).with_shape((12, 10, 8))
    xyz = _points(region, 3000, seed=1)
    got = _pieces(np.full(region.shape, 0.02), region, xyz)
    want = 0.02 * np.linalg.norm(xyz.astype(np.float64), axis=-1)
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-9)


def test_pieces_density_varying_along_each_axis_matches_the_analytic_integral():
    """rho(x, y, z) = f(cell index along one axis): E = |x| / |x_a| x integral of f from 0 to
    x_a, computed in float64 from the cell edges (no ray tracing)."""
    region = Region.named("LR").with_shape((16, 12, 10))
    xyz = _points(region, 4000, seed=2).astype(np.float64)
    rng = np.random.default_rng(3)
    for axis in range(3):
        n = region.shape[axis]
        f = rng.lognormal(-6, 2, n)
        shape = [1, 1, 1]
        shape[axis] = n
        density = np.broadcast_to(f.reshape(shape), region.shape)
        got = _pieces(density, region, xyz.astype(np.float32))
        edges = region.edges_pc(axis)
        c = xyz[:, axis]
        lo, hi = np.minimum(c, 0.0)[:, None], np.maximum(c, 0.0)[:, None]
        overlap = np.clip(np.minimum(edges[1:], hi) - np.maximum(edges[:-1], lo), 0.0, None)
        ok = np.abs(c) > 1e-3 * region.cell_size_pc[axis]  # rays (nearly) in the plane: skip
        want = np.linalg.norm(xyz, axis=-1)[ok] / np.abs(c[ok]) * (overlap[ok] @ f)
        np.testing.assert_allclose(got[ok], want, rtol=3e-5, atol=1e-9)


def test_pieces_equals_the_sorted_kernel_on_a_lognormal_cube():
    for name in ("LR", "SR"):
        region = Region.named(name).with_shape((16, 16, 16))
        rng = np.random.default_rng(4)
        density = rng.lognormal(-7, 2.0, region.shape).astype(np.float32)
        xyz = _points(region, 5000, seed=5)
        got = _pieces(density, region, xyz)
        want = np.asarray(los.integrate_to_points(density, region, xyz), np.float64)
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-8)
        # and through integrate_stars, jitted and vmapped over two cubes
        fn = jax.vmap(lambda d, r=region, x=xyz: ob.integrate_stars(d, r, x, 1000, "pieces"))
        both = jax.jit(fn)(jnp.stack([density, 2 * density]))
        np.testing.assert_allclose(np.asarray(both[1]), 2 * np.asarray(both[0]), rtol=1e-6)


def test_pieces_on_planes_that_are_not_whole_numbers():
    """Cells of 0.7 pc (planes not exact in float32: the plane table's path) and an off-centre
    Sun: still the sorted kernel's integrals."""
    region = Region((-7.7, -4.2, -2.8), (2.8, 4.2, 7.7), (15, 12, 15))
    assert not kn._planes_are_exact(kn._edges32(region)[0])
    rng = np.random.default_rng(11)
    density = rng.lognormal(-3, 1.5, region.shape).astype(np.float32)
    xyz = _points(region, 3000, seed=12)
    got = _pieces(density, region, xyz)
    want = np.asarray(los.integrate_to_points(density, region, xyz), np.float64)
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-7)


def test_pieces_limit_integrates_the_first_chunks_only():
    region = Region.named("LR").with_shape((8, 8, 8))
    xyz = _points(region, 1000, seed=13)
    density = jnp.asarray(np.random.default_rng(14).lognormal(-7, 1, region.shape), jnp.float32)
    full = np.asarray(kn.integrate_pieces(density, region, jnp.asarray(xyz), 128))
    fn = jax.jit(lambda lim: kn.integrate_pieces(density, region, jnp.asarray(xyz), 128, lim))
    part = np.asarray(fn(300))  # chunks of 128: the first 384 points
    np.testing.assert_allclose(part[:384], full[:384], rtol=1e-6)
    assert np.all(part[384:] == 0.0)
    np.testing.assert_allclose(np.asarray(fn(5000)), full, rtol=1e-6)


@pytest.mark.parametrize("batch, group", [(4, 2), (4, 0)])
def test_observe_batch_trimmed_gives_the_untrimmed_cubes(batch, group):
    """Cubes sorted by catalogue size into groups, each integrating only the chunks its largest
    catalogue fills: the same cubes and diagnostics, in input order."""
    region = Region.named("LR").with_shape((8, 8, 8))
    params = ob.ObservationParams(
        num_stars_range=(4000, 16000), distance_error_range=(0.0, 0.05), k=30, star_chunk=1000
    )
    density = jnp.asarray(
        np.random.default_rng(15).lognormal(-7, 1.5, (batch, *region.shape)), jnp.float32
    )
    keys = jax.random.split(jax.random.key(16), batch)
    out = [
        jax.tree.map(
            np.asarray,
            jax.jit(lambda k, d, p=p: ob.observe_batch(k, d, region, p, group, catalogue=True))(
                keys, density
            ),
        )
        for p in (params, dataclasses.replace(params, trim=False))
    ]
    np.testing.assert_allclose(out[0][0], out[1][0], rtol=1e-5, atol=1e-6)
    for key in out[1][1]:
        if key != "catalogue":
            np.testing.assert_array_equal(out[0][1][key], out[1][1][key])
    # the stars handed back (sky_heldout --save_arrays) are the same draw on both paths
    trimmed, full = out[0][1]["catalogue"], out[1][1]["catalogue"]
    valid = full["valid"]
    np.testing.assert_array_equal(trimmed["valid"], valid)
    np.testing.assert_array_equal(trimmed["xyz_obs"], full["xyz_obs"])
    np.testing.assert_allclose(trimmed["extinction"][valid], full["extinction"][valid], rtol=1e-5,
                               atol=1e-6)  # fmt: skip
    counts = np.asarray(jax.vmap(lambda k: ob.catalogue_size(k, params))(keys))
    assert np.all(out[0][1]["num_stars"] <= counts) and len(set(counts)) == batch


def test_pieces_slots_cover_only_the_stars_side_of_the_sun():
    # LR: the Sun on the x = 0 face, in the middle of y and z: 32 + 16 + 16 slots + the start
    assert kn.num_pieces(Region.named("LR")) == 65
    assert kn.num_pieces(Region.named("LR").with_shape((8, 8, 8))) == 1 + 8 + 4 + 4


def _brute_eq5(region, xyz, e, sig, k):
    """Eq. 5 with the exact k nearest by brute force (float64)."""
    centres = region.cell_centres_pc().reshape(-1, 3)
    d = np.linalg.norm(centres[:, None, :] - xyz[None, :, :].astype(np.float64), axis=-1)
    idx = np.argpartition(d, k - 1, axis=1)[:, :k]
    dk = np.take_along_axis(d, idx, axis=1)
    w = (1 - 0.75 * (dk / dk.max(axis=1, keepdims=True)) ** 2) / (sig[idx] ** 2 + SIGMA_FLOOR_MAG2)
    return (np.sum(w * e[idx], axis=1) / w.sum(axis=1)).reshape(region.shape), dk.max(axis=1)


def _runs(region, xyz, e, sig, valid, k, lam, max_fallback, select="bisect"):
    fn = jax.jit(
        lambda *a: kn.grid_eq5_runs(
            *a,
            region,
            k,
            cap=kn.runs_cap(lam, 2),
            cap_fallback=kn.runs_cap(lam, 3),
            max_fallback=max_fallback,
            select=select,
        )  # fmt: skip
    )
    cube, not_exact = fn(
        jnp.asarray(xyz, jnp.float32), jnp.asarray(e, jnp.float32),
        jnp.asarray(sig, jnp.float32), jnp.asarray(valid),
    )  # fmt: skip
    return np.asarray(cube), np.asarray(not_exact)


@pytest.mark.parametrize("select", ["bisect", "top_k"])
def test_runs_gridding_equals_brute_force_k_nearest(select):
    """LR-like density (k = 30, ~40 stars a cell) on an 8^3 box, a third of the star slots
    invalid: every cell exact and equal to the brute-force eq. 5 of the valid stars."""
    region = Region.named("LR").with_shape((8, 8, 8))
    rng = np.random.default_rng(6)
    n = 30000
    lo, hi = np.asarray(region.lower_pc), np.asarray(region.upper_pc)
    xyz = lo + rng.uniform(size=(n, 3)) * (hi - lo)
    e, sig = rng.uniform(0, 2, n), rng.uniform(0.01, 0.2, n)
    valid = np.arange(n) < 20000
    cube, not_exact = _runs(region, xyz, e, sig, valid, 30, n / region.num_cells, 64, select)
    ref, _ = _brute_eq5(region, xyz[valid], e[valid], sig[valid], 30)
    assert not not_exact.any()
    np.testing.assert_allclose(cube, ref, rtol=2e-5, atol=2e-6)


def test_runs_fallback_redoes_the_cells_pass_one_cannot_guarantee():
    """A star-free slab makes the k-th neighbour of the cells beside it lie beyond one cell:
    pass 1 flags them, pass 2 (the 3^3 block) gets them right; with too small a fallback budget
    the cells left over stay flagged, and every unflagged cell is still exact."""
    region = Region.named("LR").with_shape((8, 8, 8))
    rng = np.random.default_rng(7)
    n = 20000
    lo, hi = np.asarray(region.lower_pc), np.asarray(region.upper_pc)
    xyz = lo + rng.uniform(size=(n, 3)) * (hi - lo)
    cell = region.cell_size_pc[0]
    gap = (xyz[:, 0] > lo[0] + 2.6 * cell) & (xyz[:, 0] < lo[0] + 4.9 * cell)
    xyz, e, sig = xyz[~gap], rng.uniform(0, 2, (~gap).sum()), rng.uniform(0.01, 0.2, (~gap).sum())
    valid = np.ones(len(e), bool)
    ref, dk = _brute_eq5(region, xyz, e, sig, 30)
    hard = (dk > cell).reshape(region.shape)  # pass 1 cannot be exact there
    assert hard.sum() > 20
    cube, not_exact = _runs(region, xyz, e, sig, valid, 30, n / region.num_cells, 256)
    assert not not_exact.any()
    np.testing.assert_allclose(cube, ref, rtol=2e-5, atol=2e-6)
    cube, not_exact = _runs(region, xyz, e, sig, valid, 30, n / region.num_cells, 8)
    assert not_exact.sum() >= hard.sum() - 8
    np.testing.assert_allclose(cube[~not_exact], ref[~not_exact], rtol=2e-5, atol=2e-6)


def test_observe_one_new_kernels_reproduce_the_former_path():
    """The defaults (pieces + runs on an LR-like catalogue) against integrator="sort",
    search="block": the same catalogue (same key) gives the same cube to float32 rounding."""
    region = Region.named("LR").with_shape((8, 8, 8))
    new = ob.ObservationParams(
        num_stars_range=(12000, 18000), sigma_a_range=(0.02, 0.1), sigma_b_range=(0.02, 0.1),
        distance_error_range=(0.0, 0.08), k=30,
    )  # fmt: skip
    assert new.search_for(region) == "runs"
    old = dataclasses.replace(new, integrator="sort", search="block")
    rng = np.random.default_rng(8)
    density = jnp.asarray(rng.lognormal(-7, 1.5, (2, *region.shape)), jnp.float32)
    keys = jax.random.split(jax.random.key(9), 2)
    out = {}
    for name, params, group in (("new", new, 0), ("old", old, 1)):  # vmapped, then mapped
        fn = jax.jit(lambda k, d, p=params, g=group: ob.observe_batch(k, d, region, p, group=g))
        out[name] = jax.tree.map(np.asarray, fn(keys, density))
    assert out["new"][1]["not_exact_fraction"].max() == 0.0
    np.testing.assert_allclose(out["new"][0], out["old"][0], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(out["new"][1]["num_stars"], out["old"][1]["num_stars"])


def test_runs_budget_covers_sparse_catalogues_with_distance_errors():
    """The LR recipe's sparsest corner (~15 stars a cell, 8 % distance errors thinning the stars
    near the far faces): pass 1 flags many cells, the default fallback budget redoes them all, and
    the cube is the 3^3-block search's."""
    region = Region.named("LR").with_shape((16, 16, 16))
    n = 15 * region.num_cells
    new = ob.ObservationParams(num_stars_range=(n, n), distance_error_range=(0.08, 0.08))
    assert new.search_for(region) == "runs"
    stars = jax.jit(lambda k: ob.draw_stars(k, region, new))(jax.random.key(12))
    e = jnp.linalg.norm(stars["xyz_true"], axis=-1) * 1e-3
    sigma = jnp.hypot(0.05, 0.05 * e)
    args = (stars["xyz_obs"], e, sigma, stars["valid"], region)
    out = {}
    for name, params in (
        ("pass1", dataclasses.replace(new, max_fallback=1)),
        ("runs", new),
        ("block", dataclasses.replace(new, search="block")),
    ):
        fn = jax.jit(lambda *a, p=params: ob.grid_catalogue(*a, region, p))
        out[name] = [np.asarray(v) for v in fn(*args[:4])]
    assert out["pass1"][1].sum() > 50  # the fallback is needed ...
    assert not out["runs"][1].any() and not out["block"][1].any()  # ... and suffices
    np.testing.assert_allclose(out["runs"][0], out["block"][0], rtol=1e-5, atol=1e-6)


def test_observe_one_redraws_with_the_new_kernels_reproduce_the_former_path():
    """The calibration's Monte Carlo redraws (lax.map over the redraws' gridding)."""
    region = Region.named("LR").with_shape((8, 8, 8))
    new = ob.ObservationParams(num_stars_range=(12000, 18000), k=30)
    old = dataclasses.replace(new, integrator="sort", search="block")
    density = jnp.asarray(np.random.default_rng(10).lognormal(-7, 1.5, region.shape), jnp.float32)
    key = jax.random.key(11)
    redraws = [
        np.asarray(jax.jit(lambda k, d, p=p: ob.observe_one(k, d, region, p, 2)[0])(key, density))
        for p in (new, old)
    ]
    assert redraws[0].shape == (3, *region.shape)
    np.testing.assert_allclose(redraws[0], redraws[1], rtol=1e-5, atol=1e-6)


def test_search_auto_and_bad_options():
    lr, sr = Region.named("LR"), Region.named("SR")
    p = ob.ObservationParams(num_stars_range=(5e5, 1.2e6))  # the LR recipe's catalogues
    assert p.search_for(lr) == "runs"
    assert ob.ObservationParams(num_stars_range=(15e3, 6e4)).search_for(sr) == "block"
    assert ob.ObservationParams(num_stars_range=(1e5, 1.2e6)).search_for(lr) == "block"
    with pytest.raises(ValueError, match="integrator"):
        ob.ObservationParams(integrator="dda")
    with pytest.raises(ValueError, match="search"):
        ob.ObservationParams(search="kdtree")
    assert dataclasses.replace(p, search="block").search_for(lr) == "block"

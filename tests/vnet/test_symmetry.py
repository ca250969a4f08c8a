"""Symmetries of the line-of-sight geometry and the group-averaged prediction."""

import itertools

import jax.numpy as jnp
import numpy as np
import pytest

from dustjax.geometry import Region, RegionError
from dustjax.los import los_operator
from dustjax.vnet import symmetry as sym

SR, LR = Region.named("SR"), Region.named("LR")


def _labelled(shape=(1, 4, 6, 6, 2)):
    """A cube whose every entry is distinct, so equal images mean equal maps."""
    return jnp.arange(np.prod(shape), dtype=jnp.float32).reshape(shape)


def test_groups_have_the_expected_distinct_elements_and_are_closed():
    x = _labelled()
    for region, group, order in ((SR, "dihedral", 8), (SR, "flips", 4), (LR, "flips", 4),
                                 (LR, "flip_y", 2), (SR, "none", 1)):  # fmt: skip
        gs = sym.region_symmetries(region, group)
        assert len(gs) == order and gs[0] == sym.Transform()
        images = {np.asarray(g.apply(x)).tobytes() for g in gs}
        assert len(images) == order  # distinct maps
        for g, h in itertools.product(gs, gs):  # closed under composition
            assert np.asarray(g.apply(h.apply(x))).tobytes() in images


def test_invert_undoes_apply():
    x = _labelled()
    for g in sym.region_symmetries(SR, "dihedral"):
        np.testing.assert_array_equal(g.invert(g.apply(x)), x)
        np.testing.assert_array_equal(g.apply(g.invert(x)), x)


def test_transforms_map_extinction_cubes_onto_extinction_cubes():
    """The physics: E(g rho) = g E(rho) through the exact LOS operator, so a transformed
    extinction cube is the extinction of the transformed density, in the same region."""
    region = Region((-48.0, -24.0, -24.0), (0.0, 24.0, 24.0), (8, 8, 8))
    los = los_operator(region)
    rho = jnp.asarray(np.random.default_rng(0).random((1, 8, 8, 8)), jnp.float32)
    for g in sym.region_symmetries(region, "dihedral"):
        np.testing.assert_allclose(los(g.apply(rho)), g.apply(los(rho)), rtol=1e-5, atol=1e-5)
    # a reflection of X is no symmetry: X spans [-48, 0] pc, its image would start at the Sun
    flipped_x = jnp.flip(rho, axis=1)
    assert not np.allclose(los(flipped_x), jnp.flip(los(rho), axis=1), rtol=1e-3)


def test_symmetrised_prediction_is_equivariant():
    w = jnp.asarray(np.random.default_rng(1).normal(size=(4, 6, 6, 2)), jnp.float32)

    def predict(x):  # deliberately orientation-dependent
        return jnp.cumsum(x * w, axis=2) + jnp.tanh(x)[:, :, ::-1] * w

    x = jnp.asarray(np.random.default_rng(2).normal(size=(3, 4, 6, 6, 2)), jnp.float32)
    gs = sym.region_symmetries(SR, "dihedral")
    p = sym.symmetrised(predict, gs)
    for g in gs:
        np.testing.assert_allclose(p(g.apply(x)), g.apply(p(x)), rtol=1e-5, atol=1e-5)
    assert not np.allclose(predict(gs[5].apply(x)), gs[5].apply(predict(x)), atol=1e-3)
    # an already-equivariant map is left unchanged by the average
    np.testing.assert_allclose(sym.symmetrised(jnp.tanh, gs)(x), jnp.tanh(x), rtol=1e-6)
    assert sym.symmetrised(predict, [sym.Transform()]) is predict


def test_regions_without_the_symmetry_are_refused():
    with pytest.raises(RegionError, match="swapping"):
        sym.region_symmetries(LR.with_shape((32, 32, 16)), "dihedral")
    with pytest.raises(RegionError, match="not symmetric about the Sun along Y"):
        sym.region_symmetries(Region((-10.0, -5.0, -8.0), (0.0, 10.0, 8.0), (4, 4, 4)), "flips")
    with pytest.raises(ValueError, match="unknown symmetry group"):
        sym.region_symmetries(SR, "rotations")


def test_the_training_data_must_have_the_symmetry():
    sym.check_simulator("dihedral", "levy")  # isotropic Levy flights: all eight
    sym.check_simulator("flip_y", "lognormal")
    sym.check_simulator("flips", "levy_lr")
    sym.check_simulator("none", "anything")
    with pytest.raises(ValueError, match="symmetric under 'flip_y' only, not 'flips'"):
        sym.check_simulator("flips", "lognormal")  # its densest layer sits at Z = -30 pc
    with pytest.raises(ValueError, match="no known symmetry for simulator 'mine'"):
        sym.check_simulator("flips", "mine")

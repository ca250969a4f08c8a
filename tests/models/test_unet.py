"""Tests of the POLARIS attention U-Net and the RBF KAN layers."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dustjax.models import get_model, kan
from dustjax.models.unet import AttentionGate, AttentionUNet


def test_rbf_basis_is_one_at_each_centre_and_gaussian_between():
    x = jnp.array([[-2.0], [0.5]])
    basis = kan.rbf_expand(x, num_grids=5, grid_range=(-2.0, 2.0))  # centres -2..2, h = 1
    assert basis.shape == (2, 5)
    assert float(basis[0, 0]) == pytest.approx(1.0)
    np.testing.assert_allclose(basis[1], np.exp(-((0.5 - np.linspace(-2, 2, 5)) ** 2)), rtol=1e-6)


def _edge(params, o, i, tap, x, grid, base_params=None):
    """phi_{o,i,tap}(x) computed explicitly from the layer's weights."""
    w = params["spline"]["kernel"]
    centres = np.linspace(-2, 2, grid)
    h = 4 / (grid - 1)
    value = sum(
        w[tap + (i * grid + g, o)] * np.exp(-(((x - c) / h) ** 2)) for g, c in enumerate(centres)
    )
    value += params["base"]["kernel"][tap + (i, o)] * x / (1 + np.exp(-x))
    return value


def test_kan_conv_is_a_sum_of_learned_edge_functions_over_taps_and_channels():
    layer = kan.KANConv(2, (3, 3), padding="VALID", num_grids=4)
    x = jax.random.normal(jax.random.key(0), (1, 3, 3, 2))
    params = layer.init(jax.random.key(1), x)["params"]
    y = np.asarray(layer.apply({"params": params}, x))[0, 0, 0]
    p = jax.tree.map(np.asarray, params)
    xn = np.asarray(x)[0]
    for o in range(2):
        expected = p["base"]["bias"][o] + sum(
            _edge(p, o, i, (a, b), xn[a, b, i], 4)
            for a in range(3)
            for b in range(3)
            for i in range(2)
        )
        assert y[o] == pytest.approx(expected, rel=1e-4, abs=1e-5)


def test_kan_dense_equals_a_1x1_kan_conv_with_the_same_weights():
    x = jax.random.normal(jax.random.key(2), (2, 4, 4, 3))
    dense = kan.KANDense(5, num_grids=6)
    conv = kan.KANConv(5, (1, 1), num_grids=6)
    pd = dense.init(jax.random.key(3), x)["params"]
    pc = jax.tree.map(lambda a: a.reshape(1, 1, *a.shape) if a.ndim == 2 else a, pd)
    np.testing.assert_allclose(
        dense.apply({"params": pd}, x), conv.apply({"params": pc}, x), rtol=1e-5, atol=1e-5
    )


def test_kan_mlp_has_the_papers_1_10_10_10_1_shape():
    mlp = kan.KANMLP((10, 10, 10, 1), num_grids=8)
    params = jax.eval_shape(mlp.init, jax.random.key(0), jnp.zeros((7, 1)))["params"]
    assert params["kan0"]["spline"]["kernel"].shape == (8, 10)
    assert params["kan3"]["spline"]["kernel"].shape == (80, 1)


def test_attention_gate_with_zero_psi_weights_halves_the_skip():
    gate = AttentionGate(4)
    skip = jax.random.normal(jax.random.key(0), (1, 8, 8, 6))
    gating = jax.random.normal(jax.random.key(1), (1, 8, 8, 6))
    variables = gate.init(jax.random.key(2), skip, gating, train=False)
    params = jax.tree_util.tree_map_with_path(
        lambda path, a: jnp.zeros_like(a) if "psi" in jax.tree_util.keystr(path) else a,
        variables["params"],
    )
    out = gate.apply({**variables, "params": params}, skip, gating, train=False)
    # psi = BN(0) = 0 in eval mode with fresh statistics, sigmoid(0) = 1/2
    np.testing.assert_allclose(out, 0.5 * skip, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("unet", dict(levels=2, base_features=4)),
        ("unet", dict(levels=2, base_features=4, convs_per_block=2, attention=False)),
        ("knet", dict(levels=2, base_features=4)),
        ("ukan", dict(levels=2, base_features=4, kan_levels=1)),
        ("unet_kan_branch", dict(levels=2, base_features=4)),
    ],
)
def test_registered_variants_map_images_to_images_and_update_batch_stats(name, kwargs):
    model = get_model(name)(**kwargs, dtype=jnp.float32)
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 1))
    variables = model.init(jax.random.key(1), x, train=False)
    y, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
    assert y.shape == x.shape and y.dtype == jnp.float32
    changed = jax.tree.map(
        lambda a, b: bool(jnp.any(a != b)), variables["batch_stats"], updates["batch_stats"]
    )
    assert any(jax.tree.leaves(changed))


def test_variants_put_kan_layers_where_the_paper_does():
    x = jnp.zeros((1, 16, 16, 1))

    def names(**kw):
        model = AttentionUNet(levels=3, base_features=4, **kw)
        params = jax.eval_shape(model.init, jax.random.key(0), x)["params"]
        return {jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)}

    plain = names()
    assert not any("kan" in n for n in plain) and any("['head']" in n for n in plain)
    assert any("head_kan" in n for n in names(kan_output=True))
    ukan = names(kan_levels=2)
    assert any("['enc2']['kanconv0']" in n for n in ukan)
    assert any("['enc1']['kanconv0']" in n for n in ukan)
    assert any("['enc0']['conv0']" in n for n in ukan)
    assert any("kan_branch" in n for n in names(kan_branch=(10, 10, 10, 1)))


def test_paper_default_is_four_levels_of_64_to_512_filters():
    model = AttentionUNet()
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 128, 128, 1))))
    params = shapes["params"]
    assert params["enc0"]["conv0"]["kernel"].shape == (3, 3, 1, 64)
    assert params["enc3"]["conv0"]["kernel"].shape == (3, 3, 256, 512)
    assert "conv1" not in params["enc0"]  # one conv per block


def test_bfloat16_compute_keeps_float32_params_and_output():
    model = AttentionUNet(levels=2, base_features=4, dtype=jnp.bfloat16)
    x = jnp.ones((1, 8, 8, 1))
    variables = model.init(jax.random.key(0), x)
    assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(variables["params"]))
    assert model.apply(variables, x).dtype == jnp.float32


def test_bad_inputs_get_clear_errors():
    model = AttentionUNet(levels=3, base_features=4)
    with pytest.raises(ValueError, match="divisible by 4"):
        model.init(jax.random.key(0), jnp.zeros((1, 18, 16, 1)))
    with pytest.raises(ValueError, match=r"\(batch, H, W, 1\)"):
        model.init(jax.random.key(0), jnp.zeros((1, 16, 16)))


def test_jit_equals_eager():
    model = AttentionUNet(levels=2, base_features=4, kan_branch=(4, 1))
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 1))
    variables = model.init(jax.random.key(1), x)
    eager = model.apply(variables, x)
    jitted = jax.jit(lambda v, a: model.apply(v, a))(variables, x)
    np.testing.assert_allclose(eager, jitted, rtol=1e-5, atol=1e-6)
    assert isinstance(model, nn.Module)

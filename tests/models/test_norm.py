"""GroupedBatchNorm: flax's BatchNorm at one group, per-slice statistics at several."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dustjax.models.norm import GroupedBatchNorm


def _x(shape=(8, 4, 4, 4, 3)):
    return jax.random.normal(jax.random.key(0), shape) * 2.0 + 1.0


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_one_group_is_flax_batch_norm(dtype):
    x = _x().astype(dtype)
    kw = dict(momentum=0.9, epsilon=1e-3, dtype=dtype)
    ref, new = nn.BatchNorm(use_running_average=False, **kw), GroupedBatchNorm(groups=1, **kw)
    variables = ref.init(jax.random.key(1), x)
    assert jax.tree.map(jnp.shape, variables) == jax.tree.map(
        jnp.shape, new.init(jax.random.key(1), x)
    )
    variables = jax.tree.map(lambda v: v + 0.3, variables)  # not the initial values
    y_ref, up_ref = ref.apply(variables, x, mutable=["batch_stats"])
    y_new, up_new = new.apply(variables, x, mutable=["batch_stats"])
    assert y_new.dtype == y_ref.dtype
    np.testing.assert_array_equal(np.asarray(y_new, np.float32), np.asarray(y_ref, np.float32))
    for a, b in zip(jax.tree.leaves(up_ref), jax.tree.leaves(up_new), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    eval_ref = nn.BatchNorm(use_running_average=True, **kw).apply(variables, x)
    eval_new = GroupedBatchNorm(use_running_average=True, **kw).apply(variables, x)
    np.testing.assert_array_equal(
        np.asarray(eval_new, np.float32), np.asarray(eval_ref, np.float32)
    )


def test_groups_normalise_each_slice_on_its_own():
    x = _x()
    x = x.at[4:].multiply(5.0).at[4:].add(-3.0)  # the two halves differ in mean and spread
    bn = GroupedBatchNorm(groups=2, momentum=0.8, epsilon=1e-3)
    variables = bn.init(jax.random.key(1), x)
    y, updates = bn.apply(variables, x, mutable=["batch_stats"])
    one = nn.BatchNorm(use_running_average=False, momentum=0.8, epsilon=1e-3)
    halves = [one.apply(variables, x[s], mutable=["batch_stats"]) for s in (np.s_[:4], np.s_[4:])]
    np.testing.assert_allclose(y, jnp.concatenate([h[0] for h in halves]), rtol=1e-5, atol=1e-5)
    # each slice has zero mean and unit variance per channel (up to epsilon)
    np.testing.assert_allclose(y[4:].mean((0, 1, 2, 3)), 0.0, atol=1e-5)
    # running averages: the mean over groups of each group's statistics
    for name in ("mean", "var"):
        expected = np.mean([h[1]["batch_stats"][name] for h in halves], axis=0)
        np.testing.assert_allclose(updates["batch_stats"][name], expected, rtol=1e-5)


def test_batch_not_divisible_by_groups_is_an_error():
    with pytest.raises(ValueError, match="divisible by 3"):
        GroupedBatchNorm(groups=3).init(jax.random.key(0), _x((8, 2, 3)))


def test_vnet_with_groups_is_the_vnet_on_each_slice():
    """A V-net with bn_groups=2 maps a batch as the plain V-net maps each half on its own."""
    from dustjax.models import VNet

    x = jax.random.uniform(jax.random.key(0), (4, 8, 8, 8, 1))
    x = x.at[2:].multiply(3.0)
    plain, grouped = VNet(features=(2, 4)), VNet(features=(2, 4), bn_groups=2)
    variables = plain.init(jax.random.key(1), x[:1])
    head = variables["params"]["head_out"]
    variables["params"]["head_out"] = jax.tree.map(  # the zero-init head would hide the body
        lambda v: jax.random.normal(jax.random.key(2), v.shape) * 0.3, head
    )

    def run(model, inputs):
        return model.apply(variables, inputs, train=True, mutable=["batch_stats"])[0]

    halves = jnp.concatenate([run(plain, x[:2]), run(plain, x[2:])])
    np.testing.assert_allclose(run(grouped, x), halves, rtol=1e-4, atol=2e-4)
    assert float(jnp.abs(run(plain, x) - halves).max()) > 0.1

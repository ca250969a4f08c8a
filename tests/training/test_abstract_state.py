"""`abstract_train_state`: a checkpoint's restore target from shapes alone (issue 22)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from dustjax.sharding import make_mesh
from dustjax.training.steps import abstract_train_state, create_train_state


class _Tiny(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Dense(3)(x)
        return nn.BatchNorm(use_running_average=not train)(x)


def test_the_abstract_state_is_the_created_states_shapes_dtypes_and_shardings():
    model, tx, mesh = _Tiny(), optax.adam(1e-3), make_mesh(1)
    example = jnp.zeros((2, 5), jnp.float32)
    state = create_train_state(model, tx, example, jax.random.key(0), mesh)
    abstract = abstract_train_state(model, tx, jax.ShapeDtypeStruct((2, 5), jnp.float32), mesh)
    leaves, tree = jax.tree.flatten(state)
    a_leaves, a_tree = jax.tree.flatten(abstract)
    assert tree == a_tree and len(leaves) == len(a_leaves) > 0
    for x, a in zip(leaves, a_leaves, strict=True):
        assert isinstance(a, jax.ShapeDtypeStruct)
        assert (a.shape, a.dtype, a.sharding) == (x.shape, x.dtype, x.sharding)

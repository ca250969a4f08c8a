"""Tests of dustjax.polaris.data: augmentation and model batches."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dustjax.polaris import data


def test_dihedral_augment_moves_input_and_target_together():
    x = jax.random.normal(jax.random.key(0), (6, 8, 8, 1))
    batch = {data.INPUT_KEY: x, data.TARGET_KEY: 2 * x + 1}
    out = jax.jit(data.dihedral_augment)(batch, jax.random.key(1))
    np.testing.assert_allclose(out[data.TARGET_KEY], 2 * out[data.INPUT_KEY] + 1, rtol=1e-6)
    for i in range(6):
        variants = [jnp.rot90(x[i], k) for k in range(4)]
        variants += [v[:, ::-1] for v in variants]
        assert any(bool(jnp.all(v == out[data.INPUT_KEY][i])) for v in variants)


def test_model_batch_is_the_shifted_log10():
    crops = {"column_density": np.full((2, 4, 4), 10**21.5), "density_mass_weighted":
             np.full((2, 4, 4), 10**3.5)}  # fmt: skip
    batch = data.to_model_batch(crops, "mass_weighted")
    np.testing.assert_allclose(batch[data.INPUT_KEY], 0.0, atol=1e-6)
    np.testing.assert_allclose(batch[data.TARGET_KEY], 1.0, atol=1e-6)
    assert batch[data.INPUT_KEY].shape == (2, 4, 4, 1)
    with pytest.raises(ValueError, match="unknown target"):
        data.to_model_batch(crops, "mean")

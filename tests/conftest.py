"""Fixtures shared by several test modules."""

import jax
import pytest


@pytest.fixture(scope="module")
def shared_compilation_cache(tmp_path_factory):
    """One persistent compilation cache for a module's trainings (each run re-jits its step, so
    the second and later runs load it instead of compiling); the old settings come back after."""
    old = (
        jax.config.jax_compilation_cache_dir,
        jax.config.jax_persistent_cache_min_compile_time_secs,
    )
    jax.config.update("jax_compilation_cache_dir", str(tmp_path_factory.mktemp("jax_cache")))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    yield
    jax.config.update("jax_compilation_cache_dir", old[0])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", old[1])

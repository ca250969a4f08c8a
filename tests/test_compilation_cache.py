"""The persistent compilation cache of the entry points (`dustjax.runtime`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import pytest

from dustjax import runtime

ROOT = Path(__file__).resolve().parents[1]

_PROGRAM = """
import jax, jax.numpy as jnp
from dustjax.runtime import configure_compilation_cache, report_compile_times_at_exit
configure_compilation_cache()
report_compile_times_at_exit()
f = jax.jit(lambda x: jnp.sin(x) @ jnp.cos(x).T + 1.0)
print(float(f(jnp.ones((64, 64))).sum()))
"""


@pytest.fixture
def restore_jax_cache_config():
    keys = ("jax_enable_compilation_cache", "jax_compilation_cache_dir",
            "jax_persistent_cache_min_compile_time_secs")  # fmt: skip
    before = {k: getattr(jax.config, k) for k in keys}
    yield
    for k, v in before.items():
        jax.config.update(k, v)


def test_configure_picks_the_flag_then_the_environment_and_can_be_off(
    tmp_path, monkeypatch, restore_jax_cache_config
):
    monkeypatch.setenv(runtime.CACHE_ENV, str(tmp_path / "env"))
    assert runtime.configure_compilation_cache() == str(tmp_path / "env")
    assert (tmp_path / "env").is_dir() and jax.config.jax_compilation_cache_dir == str(
        tmp_path / "env"
    )
    assert runtime.configure_compilation_cache(str(tmp_path / "flag")) == str(tmp_path / "flag")
    for off in ("off", "0", "", "None"):
        assert runtime.configure_compilation_cache(off) is None
        assert not jax.config.jax_enable_compilation_cache
    monkeypatch.delenv(runtime.CACHE_ENV)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    assert runtime.configure_compilation_cache() == str(tmp_path / "home/.cache/dustjax/jax")


def test_a_second_process_loads_its_programs_from_the_cache(tmp_path):
    rows = []
    for run in (1, 2):
        times = tmp_path / f"times{run}.json"
        env = dict(os.environ, JAX_PLATFORMS="cpu", DUSTJAX_COMPILE_TIMES=str(times))
        env[runtime.CACHE_ENV] = str(tmp_path / "cache")
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
        proc = subprocess.run([sys.executable, "-c", _PROGRAM], env=env, cwd=ROOT,
                              capture_output=True, text=True, timeout=300)  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-2000:]
        rows.append(json.loads(times.read_text()))
    first, second = rows
    assert first["programs"] >= 1 and first["cache_hits"] == 0
    assert second["programs"] == first["programs"]
    assert second["cache_hits"] == second["programs"]  # every program came from the cache
    # the costliest functions by name: the lambda's trace, its lowering and compilation
    assert {"<lambda>", "jit(<lambda>)"} <= set(second["by_function"])
    assert sum(second["by_function"].values()) <= second["compile_s"] + 1e-3  # 4 decimals
    assert any((tmp_path / "cache").iterdir())

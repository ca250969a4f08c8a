import pytest

from dustjax import runtime


@pytest.fixture
def backend_not_started(monkeypatch):
    from jax._src import xla_bridge

    monkeypatch.setattr(xla_bridge, "backends_are_initialized", lambda: False)


def test_flags_are_appended_once_and_user_flags_win(monkeypatch, backend_not_started):
    monkeypatch.setenv("XLA_FLAGS", "--xla_dump_to=/tmp/x")
    assert runtime.configure_xla() == ["--xla_gpu_force_conv_nhwc=true"]
    assert runtime.configure_xla() == []  # already there
    import os

    assert os.environ["XLA_FLAGS"] == "--xla_dump_to=/tmp/x --xla_gpu_force_conv_nhwc=true"
    monkeypatch.setenv("XLA_FLAGS", "--xla_gpu_force_conv_nhwc=false")
    assert runtime.configure_xla() == []  # the user's own choice is kept


def test_opt_out_and_started_backend(monkeypatch):
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    monkeypatch.setenv("DUSTJAX_XLA_DEFAULTS", "0")
    assert runtime.configure_xla() == []
    monkeypatch.delenv("DUSTJAX_XLA_DEFAULTS")
    import jax

    jax.numpy.zeros(1).block_until_ready()  # the backend is running now
    assert runtime.configure_xla() == []
    import os

    assert "XLA_FLAGS" not in os.environ

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


QUIET_RUN = """
import numpy as np
from absl import app, logging

def main(argv):
    from dustjax.runtime import configure_xla, quiet_library_logs

    configure_xla()
    quiet_library_logs()
    import jax
    import orbax.checkpoint as ocp
    import tensorflow  # noqa: F401  (the TFRecord path imports it)

    jax.devices()
    path = argv[1] + "/ckpt"
    with ocp.StandardCheckpointer() as ckpt:
        ckpt.save(path, {"w": np.ones(3)})
    with ocp.StandardCheckpointer() as ckpt:
        ckpt.restore(path)
    logging.info("the run's own line")
    logging.warning("the run's own warning")

app.run(main)
"""


def test_entry_point_logs_hold_only_the_runs_own_lines(tmp_path):
    """An entry point that saves and restores an orbax checkpoint, starts JAX on a machine
    without a TPU and imports TensorFlow shows its own lines, not the libraries' chatter."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("TF_")}
    env["JAX_PLATFORMS"] = ""  # let JAX look for a TPU, as on a user's machine
    proc = subprocess.run(
        [sys.executable, "-c", QUIET_RUN, str(tmp_path)], capture_output=True, text=True,
        env=env, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "the run's own line" in proc.stderr and "the run's own warning" in proc.stderr
    for noise in ("orbax", "Unable to initialize backend", "oneDNN", "rebuild TensorFlow",
                  "CheckpointManager", "checkpointer.py"):  # fmt: skip
        assert noise not in proc.stderr, (noise, proc.stderr[-2000:])
    assert len(proc.stderr.strip().splitlines()) <= 4, proc.stderr


def test_every_entry_point_quiets_the_libraries():
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    entry_points = [p for p in (repo / "experiments").glob("*.py") if p.name != "__init__.py"]
    entry_points += [p for p in (repo / "data_gen").glob("*.py") if p.name != "__init__.py"]
    missing = [p.name for p in entry_points if "quiet_library_logs()" not in p.read_text()]
    assert not missing


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--config=experiments/configs/vnet_test.py", "--config.num_epoch=3"],
         "error: --config.num_epoch: no key 'num_epoch' in the config. Did you mean"),
        (["--config=experiments/configs/vnet_test.py", "--config.optimizer.learning_rat=3"],
         'Did you mean "learning_rate" instead of "learning_rat"?'),
        (["--config=experiments/configs/vnet_tset.py"],
         "error: no config file 'experiments/configs/vnet_tset.py' and no packaged config of "
         "that name. Did you mean 'vnet_test'?"),
    ],
)  # fmt: skip
def test_a_config_typo_is_one_line_with_the_suggestion(args, expected):
    """ml_collections raised 34-55 lines of traceback for these (issue 19)."""
    import subprocess
    import sys
    from pathlib import Path

    proc = subprocess.run(
        [sys.executable, "-m", "experiments.train", "--workdir=/nonexistent/never", *args],
        capture_output=True, text=True, timeout=120, cwd=Path(__file__).resolve().parents[1],
    )  # fmt: skip
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()], proc.stderr
    assert expected in proc.stderr

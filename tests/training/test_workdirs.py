"""A workdir's config.json alone is enough: a fresh Python process that imports only
`dustjax.training` resumes, loads and evaluates a V-net and a U-Net run (the task, model and data
source resolve lazily from the engine's own tables, no registration), and a config.json naming a
module is refused without importing it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dustjax import training
from dustjax.training import steps, tasks

REPO = Path(__file__).resolve().parents[2]

# Run in a fresh process on a workdir: resume one more epoch, load the latest checkpoint, and
# recompute the validation loss of that epoch from the batches of the config's data source.
FRESH = """
import json, sys
import numpy as np
before = sorted(m for m in sys.modules if m.startswith("dustjax"))
from dustjax import training
from dustjax.sharding import pad_batch

workdir = sys.argv[1]
config = training.load_config(workdir)
config.num_epochs = int(config.num_epochs) + 1
summary = training.train_and_evaluate(config, workdir)
rows = [json.loads(line) for line in open(workdir + "/metrics.jsonl")]
model, variables, config = training.load_trained(workdir, "latest")
task = training.get_task(config.task)
source = training.get_data_source(config.data.source)
size = int(config.get("eval_batch_size") or config.batch_size)
predict = training.make_predict_fn(model, variables)
total, count = 0.0, 0
for batch in source(config, "validation", batch_size=size, seed=int(config.seed), epoch=0,
                    train=False):
    batch = {k: np.asarray(v) for k, v in batch.items()}
    n = len(batch[task.input_key])
    predictions = predict(pad_batch(batch, size)[task.input_key])[:n]
    total += float(np.sum(task.per_example_loss(predictions, batch[task.target_key])))
    count += n
print("RESULT " + json.dumps(dict(
    before=before, epochs_run=summary["epochs_run"], rows=len(rows), recorded=rows[-1]["val_loss"],
    recomputed=total / count, model=type(model).__name__,
    modules=sorted(m for m in sys.modules if m.startswith("dustjax.")))))
"""


def _fresh(workdir: Path) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, "-c", FRESH, str(workdir)], capture_output=True, text=True, env=env,
        cwd=workdir.parent, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


def _check(result: dict, method: str, model: str) -> None:
    assert result["before"] == []  # the fresh process had imported nothing of dustjax
    assert result["epochs_run"] == 2 and result["rows"] == 2  # resumed at epoch 1
    assert result["model"] == model
    assert result["recomputed"] == pytest.approx(result["recorded"], rel=1e-5)
    assert f"dustjax.{method}.data" in result["modules"]  # found through the table


@pytest.mark.slow  # ~1 min of CPU: a training, then a resume in a fresh process
def test_vnet_workdir_resumes_loads_and_evaluates_in_a_fresh_process(tmp_path):
    from experiments.configs import vnet_test

    config = vnet_test.get_config()
    config.num_epochs, config.data.steps_per_epoch, config.progress_bar = 1, 2, False
    training.train_and_evaluate(config, tmp_path / "vnet")
    _check(_fresh(tmp_path / "vnet"), "vnet", "VNet")


@pytest.mark.slow  # ~1 min of CPU: a training, then a resume in a fresh process
def test_unet_workdir_resumes_loads_and_evaluates_in_a_fresh_process(tmp_path):
    from experiments.configs import unet_test

    config = unet_test.get_config()
    with config.unlocked():
        config.num_epochs, config.progress_bar = 1, False
    training.train_and_evaluate(config, tmp_path / "unet")
    _check(_fresh(tmp_path / "unet"), "polaris", "AttentionUNet")


@pytest.mark.parametrize("name", ["os:system", "spy_module:thing", "spy_module"])
def test_a_config_naming_a_module_is_refused_without_importing_it(name, tmp_path, monkeypatch):
    (tmp_path / "spy_module.py").write_text(
        "from pathlib import Path\nPath(__file__).with_name('imported').touch()\nthing = dict\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    from experiments.configs import vnet_test

    config = vnet_test.get_config()
    with config.unlocked():
        config.model.name = name
    with pytest.raises(ValueError, match=r"unknown model .*known models: \[.*'unet'.*'vnet'"):
        steps.build_model(config)
    with pytest.raises(ValueError, match=r"unknown task .*known tasks: \[.*'polaris'"):
        tasks.get_task(name)
    known_sources = r"unknown data source .*known data sources: \[.*'simulate'"
    with pytest.raises(ValueError, match=known_sources):
        tasks.get_data_source(name)
    config.task = name  # and the engine stops before it writes anything
    with pytest.raises(ValueError, match="unknown task"):
        training.train_and_evaluate(config, tmp_path / "run")
    assert not (tmp_path / "run" / "config.json").exists()
    assert not (tmp_path / "imported").exists() and "spy_module" not in sys.modules


def test_register_task_adds_a_name_but_cannot_replace_a_built_in():
    """`register_task` adds a name in-process; a built-in cannot be silently replaced."""
    task = training.Task(input_key="x", target_key="y")
    training.register_task("test_only_task", task)
    assert training.get_task("test_only_task") is task
    with pytest.raises(ValueError, match="already registered"):
        training.register_task("polaris", task)
    assert training.get_task("density_from_extinction").input_key == "extinction"

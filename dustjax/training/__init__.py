"""The training engine, model-agnostic: a config names the model, task and data source.

- `tasks`: `Task`, the per-example losses, task and data-source names (resolved lazily);
- `optim`: the optimiser and its learning-rate schedules;
- `steps`: the train state, the model, the jitted train and eval steps;
- `workdir`: config.json, metrics.jsonl, checkpoints;
- `guard`: the collapse guard; `inference`: loading and applying a trained model;
- `loop`: `train_and_evaluate(config, workdir)`.

The names most callers need are here too: ``from dustjax import training;
training.train_and_evaluate(config, workdir)``.
"""

from dustjax.training.inference import (
    checkpoint_step,
    load_trained,
    make_predict_fn,
    population_batch_stats,
    read_population_stats,
    write_population_stats,
)
from dustjax.training.loop import NonFiniteLossError, train_and_evaluate
from dustjax.training.tasks import (
    Task,
    get_data_source,
    get_task,
    register_data_source,
    register_task,
)
from dustjax.training.workdir import WrongMethodError, load_config, require_method

__all__ = [
    "NonFiniteLossError",
    "WrongMethodError",
    "Task",
    "get_data_source",
    "get_task",
    "load_config",
    "load_trained",
    "make_predict_fn",
    "population_batch_stats",
    "read_population_stats",
    "write_population_stats",
    "checkpoint_step",
    "register_data_source",
    "register_task",
    "require_method",
    "train_and_evaluate",
]

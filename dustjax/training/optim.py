"""The optimiser (Adam, paper sect. 3.1, or AdamW) and its learning-rate schedules, by name.

``config.schedule.name`` is one of "constant", "warmup_constant", "cosine", "warmup_cosine",
"reduce_on_plateau" (optax.contrib.reduce_on_plateau on the per-epoch mean training loss), or a
name added with `register_schedule`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import optax

_SCHEDULES: dict[str, Callable[..., tuple[Any, optax.GradientTransformation | None]]] = {}


def register_schedule(name: str, make: Callable[..., tuple[Any, Any]]) -> None:
    """Register ``make(config, steps_per_epoch) -> (learning_rate, tail_transform or None)``.

    ``learning_rate`` is a float or an optax schedule given to the optimiser; ``tail_transform``
    is chained after it (e.g. reduce_on_plateau, which scales the updates and reads the loss).
    """
    _SCHEDULES[name] = make


def _constant(config, steps_per_epoch):
    return config.optimizer.learning_rate, None


def _cosine(config, steps_per_epoch):
    total = max(1, config.num_epochs * steps_per_epoch)
    return optax.cosine_decay_schedule(config.optimizer.learning_rate, total), None


def _warmup_cosine(config, steps_per_epoch):
    total = max(2, config.num_epochs * steps_per_epoch)
    warmup = int(config.schedule.get("warmup_epochs", 1) * steps_per_epoch)
    return optax.warmup_cosine_decay_schedule(
        0.0, config.optimizer.learning_rate, min(warmup, total - 1), total
    ), None


def _warmup_constant(config, steps_per_epoch):
    """Linear warm-up from 0 over `warmup_epochs`, then the constant learning rate (the paper's
    constant-rate Adam). Unlike the cosine schedules it does not depend on `num_epochs`, so a run
    resumed with a larger `num_epochs` continues exactly."""
    warmup = max(1, int(config.schedule.get("warmup_epochs", 1) * steps_per_epoch))
    lr = config.optimizer.learning_rate
    return optax.join_schedules(
        [optax.linear_schedule(0.0, lr, warmup), optax.constant_schedule(lr)], [warmup]
    ), None


def _reduce_on_plateau(config, steps_per_epoch):
    s = config.schedule
    tail = optax.contrib.reduce_on_plateau(
        factor=s.get("factor", 0.5),
        patience=s.get("patience", 5),
        rtol=s.get("rtol", 1e-4),
        atol=s.get("atol", 0.0),
        cooldown=s.get("cooldown", 0),
        # patience counts evaluations of the mean loss over this many steps: one epoch.
        accumulation_size=s.get("accumulation_size", 0) or steps_per_epoch,
        min_scale=s.get("min_scale", 0.0),
    )
    return config.optimizer.learning_rate, tail


register_schedule("constant", _constant)
register_schedule("cosine", _cosine)
register_schedule("warmup_cosine", _warmup_cosine)
register_schedule("warmup_constant", _warmup_constant)
register_schedule("reduce_on_plateau", _reduce_on_plateau)


def make_optimizer(config, steps_per_epoch: int) -> optax.GradientTransformationExtraArgs:
    """Adam (paper sect. 3.1) or AdamW, with the configured schedule; accepts ``value=loss``."""
    name = config.schedule.get("name", "constant") if "schedule" in config else "constant"
    if name not in _SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; registered: {sorted(_SCHEDULES)}")
    learning_rate, tail = _SCHEDULES[name](config, steps_per_epoch)
    opt = config.optimizer
    kind = opt.get("name", "adam")
    if kind == "adam":
        base = optax.adam(learning_rate, b1=opt.get("b1", 0.9), b2=opt.get("b2", 0.999))
    elif kind == "adamw":
        base = optax.adamw(
            learning_rate,
            b1=opt.get("b1", 0.9),
            b2=opt.get("b2", 0.999),
            weight_decay=opt.get("weight_decay", 1e-4),
        )
    else:
        raise ValueError(f"unknown optimizer {kind!r}; use 'adam' or 'adamw'")
    parts = []
    if opt.get("grad_clip_norm", 0.0):
        parts.append(optax.clip_by_global_norm(opt.grad_clip_norm))
    parts.append(base)
    if tail is not None:
        parts.append(tail)
    return optax.chain(*parts)

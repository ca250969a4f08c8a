"""The optimiser (Adam, paper sect. 3.1, or AdamW) and its learning-rate schedules, by name.

``config.schedule.name`` is one of "constant", "warmup_constant", "cosine", "warmup_cosine",
"reduce_on_plateau" (optax.contrib.reduce_on_plateau on the per-epoch mean training loss), or a
name added with `register_schedule`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
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


class ParamsEmaState(NamedTuple):
    """`params_ema`'s state: the update count and the averaged parameters."""

    count: jax.Array
    ema_params: Any


def params_ema(decay: float) -> optax.GradientTransformationExtraArgs:
    """An exponential moving average of the parameters, kept in the optimiser state.

    Chained last, it sees the final updates and averages the parameters *after* each step,
    ``ema = d_t ema + (1 - d_t) (params + updates)``, with ``d_t = min(decay, (1 + t) / (10 + t))``
    so that the first steps are not dominated by the initial weights (the warm-up of TF's
    ExponentialMovingAverage). The updates pass unchanged. Evaluation and inference use the
    average when it exists (`ema_params`, `dustjax.training.steps.inference_params`): with a
    noisy step (e.g. the sky recipes' echoed observed batches) the weights at an epoch's end are
    one draw from a cloud, the average its centre. Its state travels with the checkpoints.
    """
    if not 0.0 < decay < 1.0:
        raise ValueError(f"ema_decay must lie in (0, 1), got {decay}")

    def init(params):
        return ParamsEmaState(jnp.zeros([], jnp.int32), jax.tree.map(jnp.asarray, params))

    def update(updates, state, params=None, **extra_args):
        del extra_args
        if params is None:
            raise ValueError("params_ema needs the parameters (tx.update(grads, state, params))")
        d = jnp.minimum(decay, (1.0 + state.count) / (10.0 + state.count))
        new = optax.apply_updates(params, updates)
        ema = jax.tree.map(
            lambda e, p: (d * e + (1.0 - d) * p.astype(jnp.float32)).astype(e.dtype),
            state.ema_params,
            new,
        )
        return updates, ParamsEmaState(state.count + 1, ema)

    return optax.GradientTransformationExtraArgs(init, update)


def ema_params(opt_state) -> Any | None:
    """The averaged parameters of `params_ema` in an optimiser state, or None without one."""
    found = list(_ema_states(opt_state))
    return found[0].ema_params if found else None


def _ema_states(tree):
    """Every `ParamsEmaState` in a nested optimiser state (chains are tuples), depth first."""
    if isinstance(tree, ParamsEmaState):
        yield tree
    elif isinstance(tree, tuple | list):
        for x in tree:
            yield from _ema_states(x)


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
    if opt.get("ema_decay", 0.0):  # last: it averages the parameters after the whole update
        parts.append(params_ema(float(opt.ema_decay)))
    return optax.chain(*parts)

"""The collapse guard (``config.collapse_guard``): roll back to the best epoch's weights when the
validation loss spikes together with the training loss (docs/validation.md)."""

from __future__ import annotations

import logging
import math

import jax
import jax.numpy as jnp

from dustjax.training.workdir import restore_checkpoint

log = logging.getLogger(__name__)


def collapse_verdict(
    guard, *, val_loss: float, best_val_loss: float, train_loss: float, best_train_loss: float
) -> str:
    """What the collapse guard (``config.collapse_guard``) makes of an epoch: "" (nothing),
    "collapse" (roll back) or "validation" (a spike of the validation loss alone).

    A spike is a validation loss above ``factor`` x the best so far. It is a collapse only if the
    epoch's training loss rose too, above ``train_factor`` x the lowest epoch training loss so far
    (``train_factor`` 0: every spike is a collapse). "Above f x the best" is measured as a rise
    of more than (f - 1) |best| over the best (`_risen`): the same for positive losses, and
    meaningful for losses that can be negative (the Gaussian NLL of a variance head), where
    f x best lies *below* the best and every epoch short of a new best would be a "collapse".
    A spike with a normal training loss comes from the batch-norm running statistics that
    evaluation uses (an outlier batch among the last ~100 steps shifts them; the next epoch's
    usually undo it): the weights are fine, rolling them back only loses epochs, and the best
    checkpoint is chosen by validation loss anyway.
    """
    factor = float(guard.get("factor", 0.0) or 0.0)
    if not factor or not math.isfinite(best_val_loss):
        return ""
    if not _risen(val_loss, best_val_loss, factor):
        return ""
    train_factor = float(guard.get("train_factor", 0.0) or 0.0)
    if train_factor and math.isfinite(best_train_loss):
        if not _risen(train_loss, best_train_loss, train_factor):
            return "validation"
    return "collapse"


def _risen(loss: float, best: float, factor: float) -> bool:
    """loss - best > (factor - 1) |best|: ``loss`` above ``factor`` x ``best`` if best > 0."""
    return loss - best > (factor - 1.0) * abs(best)


def replay_collapse_guard(rows: list[dict], guard) -> list[dict]:
    """The guard's verdicts on a recorded ``metrics.jsonl`` (rows in epoch order), as the engine
    would give them: one dict (epoch, verdict, val_ratio, train_ratio, after_collapse) per epoch
    with a verdict. After the first "collapse" a guarded run would have restored older weights,
    so later rows (``after_collapse`` True) are no longer the curve that run would have seen."""
    best_val, best_train, collapsed, out = math.inf, math.inf, False, []
    for row in rows:
        val, tr = float(row["val_loss"]), float(row["train_loss"])
        verdict = collapse_verdict(
            guard, val_loss=val, best_val_loss=best_val, train_loss=tr, best_train_loss=best_train
        )
        if verdict:
            out.append(dict(epoch=int(row["epoch"]), verdict=verdict, val_ratio=val / best_val,
                            train_ratio=tr / best_train, after_collapse=collapsed))  # fmt: skip
            collapsed = collapsed or verdict == "collapse"
        best_val, best_train = min(best_val, val), min(best_train, tr)
    return out


def guard_verdict(config, loop, history, train_loss: float, val_loss: float, epoch: int) -> str:
    """`collapse_verdict` for this epoch, logged, and capped at ``max_rollbacks`` collapses."""
    guard = config.get("collapse_guard") or {}
    best_train = min((float(r["train_loss"]) for r in history), default=math.inf)
    verdict = collapse_verdict(
        guard, val_loss=val_loss, best_val_loss=loop["best_val_loss"], train_loss=train_loss,
        best_train_loss=best_train,
    )  # fmt: skip
    if verdict == "validation":
        log.warning(
            "epoch %d: validation loss %.5g is above %g x the best (%.5g) but the training loss "
            "%.5g is normal (lowest %.5g): a spike of the batch-norm running statistics, not a "
            "collapse; training on (the best checkpoint stays epoch %d)",
            epoch, val_loss, float(guard.get("factor")), loop["best_val_loss"], train_loss,
            best_train, loop["best_epoch"],
        )  # fmt: skip
    if verdict != "collapse":
        return verdict
    done, allowed = int(loop.get("rollbacks", 0)), int(guard.get("max_rollbacks", 5))
    if done >= allowed:
        log.warning(
            "validation loss %.5g is above %g x the best (%.5g), but the collapse guard has "
            "already rolled back %d times (max_rollbacks): training on",
            val_loss, float(guard.get("factor")), loop["best_val_loss"], done,
        )  # fmt: skip
        return ""
    return verdict


def roll_back(manager, state, loop: dict, val_loss: float, epoch: int):
    """`state` with the best checkpoint's weights, statistics and optimiser moments, but its own
    integer leaves (the step and the optimiser's counts, which drive the rate schedule)."""
    manager.wait_until_finished()
    best_step = manager.best_step()
    best, _ = restore_checkpoint(manager, best_step, state)

    def pick(current, restored):
        return current if jnp.issubdtype(current.dtype, jnp.integer) else restored

    loop["rollbacks"] = int(loop.get("rollbacks", 0)) + 1
    log.warning(
        "epoch %d: validation loss %.5g is %.1f x the best (%.5g, epoch %d): the network "
        "collapsed; restored the weights and Adam moments of epoch %d and go on at step %d "
        "(rollback %d)",
        epoch, val_loss, val_loss / loop["best_val_loss"], loop["best_val_loss"],
        loop["best_epoch"], best_step, int(state.step), loop["rollbacks"],
    )  # fmt: skip
    return jax.tree.map(pick, state, best)

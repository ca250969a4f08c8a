"""A run's workdir: config.json, metrics.jsonl, train_summary.json and the orbax checkpoints.

One checkpoint per epoch; the manager keeps the latest (to resume) and the one of minimum
validation loss (the paper's "optimal model"). Everything that decides the rest of a run (state,
epoch, best loss, patience counter) is in the checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import ml_collections

from dustjax import io as dio
from dustjax import provenance

CHECKPOINT_DIR = "checkpoints"
METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.json"
SUMMARY_FILE = "train_summary.json"
LOSS_CURVE_FILE = "loss_curve.png"


def config_to_dict(config) -> dict:
    return (
        json.loads(config.to_json_best_effort())
        if hasattr(config, "to_json_best_effort")
        else dict(config)
    )


def load_config(workdir: str | Path) -> ml_collections.ConfigDict:
    """The resolved config a run saved in its workdir."""
    path = Path(workdir) / CONFIG_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: {workdir} is not a training workdir")
    return ml_collections.ConfigDict(provenance.strip(dio.read_json(path)))  # config alone


# What each method's runs are for, named in the refusal when a workdir of one method is given to
# another's tool (the method is the package of the run's task in the engine's table).
METHOD_USES = {
    "vnet": "a V-net run (star extinctions -> 3D density): use it with experiments.apply or "
    "experiments.evaluate",
    "polaris": "a POLARIS U-Net run (column density map -> volume density): use it with "
    "experiments.predict_map or experiments.polaris_validate",
}


class WrongMethodError(ValueError):
    """A training workdir of another method than the tool's (a U-Net run given to apply, ...)."""


def method_of(config) -> str | None:
    """The method package (``"vnet"``, ``"polaris"``) of a run's task, or None if unknown."""
    from dustjax.training.tasks import BUILTIN_TASKS, DEFAULT_TASK

    spec = BUILTIN_TASKS.get(str(config.get("task", DEFAULT_TASK)), "")
    parts = spec.split(":")[0].split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "dustjax" else None


def require_method(workdir: str | Path, method: str, tool: str) -> ml_collections.ConfigDict:
    """The config of the run in `workdir`, or one-line `WrongMethodError` naming both methods
    when the run is not of `method` (what `tool`, e.g. "apply", needs)."""
    config = load_config(workdir)
    have = method_of(config)
    if have is not None and have != method:
        raise WrongMethodError(
            f"{workdir} holds {METHOD_USES.get(have, have)}; {tool} needs "
            f"{METHOD_USES[method].split(':')[0]}"
        )
    return config


def read_metrics(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_metrics(path: Path, rows: list[dict]) -> None:
    with dio.atomic_path(path) as tmp:
        tmp.write_text("".join(dio.dumps_json(r) + "\n" for r in rows))


def checkpoint_manager(workdir: str | Path, *, read_only: bool = False):
    """Keeps the latest checkpoint and the one of minimum ``val_loss`` (maybe the same)."""
    import orbax.checkpoint as ocp
    from orbax.checkpoint import checkpoint_managers as cm

    def val_loss(metrics):
        return float(metrics["val_loss"])

    options = ocp.CheckpointManagerOptions(
        best_fn=val_loss,
        best_mode="min",
        keep_checkpoints_without_metrics=False,
        preservation_policy=cm.AnyPreservationPolicy(
            [cm.LatestN(n=1), cm.BestN(get_metric_fn=val_loss, reverse=True, n=1)]
        ),
        create=not read_only,
        read_only=read_only,
        enable_async_checkpointing=not read_only,
    )
    directory = Path(workdir).absolute() / CHECKPOINT_DIR
    return ocp.CheckpointManager(directory, options=options, item_names=("state", "loop"))


def _abstract(state):
    return jax.tree.map(
        lambda x: (
            jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
            if isinstance(x, jax.Array)
            else x
        ),
        state,
    )


def restore_checkpoint(manager, step: int, target_state, hint: str = ""):
    """Restore (state, loop dict) of `step` into the structure/shardings of `target_state`.

    ``hint`` (the task's ``restore_hint``) ends the error when the checkpoint does not fit.
    """
    import orbax.checkpoint as ocp

    abstract = _abstract(target_state)
    # Shapes first, from the checkpoint's metadata: a restore that fails half-way leaves orbax's
    # asyncio callbacks running, which spill "Event loop is closed" tracebacks at exit.
    mismatch = _shape_mismatches(Path(manager.directory) / str(step) / "state", abstract)
    if mismatch:
        (name, stored, wanted), more = mismatch[0], len(mismatch) - 1
        raise ValueError(
            f"checkpoint {step} in {manager.directory} does not fit this model: {name} is stored "
            f"with shape {stored}, the model wants {wanted}"
            + (f" ({more} more arrays differ)" if more else "")
            + (f"\n{hint}" if hint else "")
        )
    try:
        restored = manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract), loop=ocp.args.JsonRestore()
            ),
        )
    except ValueError as err:
        if "not compatible with the stored shape" not in str(err):
            raise
        raise ValueError(
            f"checkpoint {step} in {manager.directory} does not fit this model: {err}"
            + (f"\n{hint}" if hint else "")
        ) from err
    return restored["state"], dict(restored["loop"])


def _shape_mismatches(state_dir: Path, abstract) -> list[tuple[str, tuple, tuple]]:
    """``(name, stored shape, wanted shape)`` of the parameters and batch statistics whose
    shapes differ between a saved state and `abstract`; [] when equal or unreadable."""
    import orbax.checkpoint as ocp

    def name(entry):  # DictKey.key, GetAttrKey.name, SequenceKey.idx
        for attr in ("key", "name", "idx"):
            if getattr(entry, attr, None) is not None:
                return str(getattr(entry, attr))
        return str(entry)

    def names(path):
        return tuple(name(k) for k in path)

    try:
        meta = ocp.StandardCheckpointer().metadata(state_dir)
        # orbax >= 0.11.2x: StepMetadata.item_metadata; older: TreeMetadata.tree
        tree = meta.item_metadata if hasattr(meta, "item_metadata") else meta.tree
        stored = {
            names(p): tuple(m.shape)
            for p, m in jax.tree_util.tree_leaves_with_path(tree)
            if getattr(m, "shape", None) is not None
        }
    except Exception:  # noqa: BLE001 (metadata unreadable: the restore itself will say why)
        return []
    out = []
    for path, leaf in jax.tree_util.tree_leaves_with_path(abstract):
        key = names(path)
        if key[0] in ("params", "batch_stats") and key in stored:
            if stored[key] != tuple(leaf.shape):
                out.append(("/".join(key), stored[key], tuple(leaf.shape)))
    return out


def save_checkpoint(manager, step: int, state, loop: dict, val_loss: float) -> None:
    import orbax.checkpoint as ocp

    manager.save(
        step,
        args=ocp.args.Composite(state=ocp.args.StandardSave(state), loop=ocp.args.JsonSave(loop)),
        metrics={"val_loss": float(val_loss)},
    )

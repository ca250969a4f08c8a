r"""What the collapse guard would have done on recorded training runs: a markdown table.

    python -m tools.guard_replay --factor=3 --train_factor=1.3 \
        --metrics=docs/results/vnet_sr_lr5e-4_h200_metrics.jsonl,docs/results/vnet_sr_x4_b32_125ep_metrics.jsonl

Reads each run's ``metrics.jsonl`` (written by `dustjax.training.train_and_evaluate`) and prints,
for every epoch where the guard (`dustjax.training.guard.collapse_verdict`) would have spoken, the
ratio of the validation loss to the best before it, the ratio of the training loss to the lowest
before it, and the verdict: "collapse" (roll back) or "validation" (a validation-only spike, left
alone). Epochs after a run's first collapse are marked: a guarded run would have gone on from older
weights, so the recorded curve is no longer what it would have seen. A run that was itself guarded
(rows with ``rolled_back_to_epoch``) is replayed as recorded.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from absl import app, flags

FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_list("metrics", None, "metrics.jsonl files of training runs.")
    flags.DEFINE_list("labels", None, "One label per file (default: the file's name).")
    flags.DEFINE_float("factor", 3.0, "Validation loss above factor x the best is a spike.")
    flags.DEFINE_float(
        "train_factor", 1.3, "A spike is a collapse only with the training loss above "
        "train_factor x its lowest (0: every spike)."
    )  # fmt: skip


def read_rows(path: Path) -> list[dict]:
    """The rows of one metrics.jsonl, checked: epochs in order, with train and validation loss."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{n}: not JSON ({err})") from None
        missing = {"epoch", "train_loss", "val_loss"} - set(row)
        if missing:
            raise ValueError(f"{path}:{n}: no {sorted(missing)}: not a training metrics.jsonl")
        rows.append(row)
    epochs = [int(r["epoch"]) for r in rows]
    if not rows or epochs != sorted(set(epochs)):
        raise ValueError(f"{path}: no rows, or epochs out of order")
    return rows


def table(runs: dict[str, list[dict]], guard: dict) -> str:
    from dustjax.training.guard import replay_collapse_guard

    lines = [
        "| run | epoch | val / best val | train / lowest train | verdict |",
        "| --- | --- | --- | --- | --- |",
    ]
    for label, rows in runs.items():
        events = replay_collapse_guard(rows, guard)
        if not events:
            lines.append(f"| {label} | - | - | - | none |")
        for e in events:
            note = " (after a collapse)" if e["after_collapse"] else ""
            lines.append(
                f"| {label} | {e['epoch']} | {e['val_ratio']:.2f} | {e['train_ratio']:.2f} | "
                f"{e['verdict']}{note} |"
            )
    return "\n".join(lines)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not FLAGS.metrics:
        raise app.UsageError("--metrics is required")
    if FLAGS.factor <= 1 or FLAGS.train_factor < 0:
        raise app.UsageError("--factor must be > 1 and --train_factor >= 0")
    paths = [Path(p) for p in FLAGS.metrics]
    labels = FLAGS.labels or [p.name.removesuffix("_metrics.jsonl") for p in paths]
    if len(labels) != len(paths):
        raise app.UsageError(f"{len(labels)} labels for {len(paths)} files")
    try:
        runs = {label: read_rows(p) for label, p in zip(labels, paths, strict=True)}
    except (OSError, ValueError) as err:
        sys.exit(f"error: {err}")
    print(table(runs, dict(factor=FLAGS.factor, train_factor=FLAGS.train_factor)))


if __name__ == "__main__":
    define_flags()
    app.run(main)

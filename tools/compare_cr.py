r"""Plot c_r(k) (paper eq. 4, fig. 9) of several evaluations on one figure, and print a table.

    python -m tools.compare_cr --out=cr.png \
        --metrics=workdirs/run/eval/test_metrics.json,workdirs/run/eval_dihedral/test_metrics.json \
        --labels="plain,averaged over 8 symmetries"

Each ``test_metrics.json`` is written by `experiments.evaluate`; they must share the k bins (same
region and cube size). The table gives c_r at a few k (pc^-1), the eq. 3 loss, the residual
dispersion (mag/pc) and the paper's checks.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from absl import app, flags

FLAGS = flags.FLAGS
TABLE_K = (0.04, 0.10, 0.20, 0.30, 0.52, 0.88)


def define_flags() -> None:
    flags.DEFINE_list("metrics", None, "test_metrics.json files from experiments.evaluate.")
    flags.DEFINE_list("labels", None, "One label per file (default: the file's directory).")
    flags.DEFINE_string("out", None, "PNG to write.")
    flags.DEFINE_string("title", "", "Figure title.")


def load(paths, labels=None) -> dict[str, dict]:
    """``label -> metrics`` for `paths`, checked: readable, with a c_r table on common k bins."""
    paths = [Path(p) for p in paths]
    if not paths:
        raise ValueError("give at least one test_metrics.json")
    labels = list(labels) if labels else [f"{p.parent.parent.name}/{p.parent.name}" for p in paths]
    if len(labels) != len(paths):
        raise ValueError(f"{len(labels)} labels for {len(paths)} metrics files")
    if len(set(labels)) != len(labels):
        raise ValueError(f"labels must differ, got {labels}")
    runs, k_ref = {}, None
    for label, path in zip(labels, paths, strict=True):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file (run experiments.evaluate first)")
        data = json.loads(path.read_text())
        if "c_r_table" not in data:
            raise ValueError(f"{path} has no c_r_table: not written by experiments.evaluate")
        k = np.asarray(data["c_r_table"]["k"])
        if k_ref is None:
            k_ref = k
        elif k.shape != k_ref.shape or not np.allclose(k, k_ref):
            raise ValueError(f"{path}: its k bins differ from the first file's (other region?)")
        runs[label] = data
    return runs


def table(runs: dict[str, dict]) -> str:
    """A markdown table of the runs' numbers."""
    head = ("| run | loss, eq. 3 | dispersion (mag/pc) | paper checks | c_r at k = "
            + " / ".join(f"{k:g}" for k in TABLE_K) + " pc^-1 |")  # fmt: skip
    lines = [head, "| --- | --- | --- | --- | --- |"]
    for label, d in runs.items():
        k, c = np.asarray(d["c_r_table"]["k"]), np.asarray(d["c_r_table"]["c_r"])
        at = " / ".join(f"{c[np.argmin(abs(k - x))]:.3f}" for x in TABLE_K)
        checks = ", ".join(f"{n} {v:.3f}" for n, v in d.get("paper_checks", {}).items())
        lines.append(
            f"| {label} | {d['loss_eq3']:.3g} | "
            f"{d['residual_mag_per_pc']['dispersion']:.3g} | {checks} | {at} |"
        )
    return "\n".join(lines)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from dustjax.vnet import plots

    if not FLAGS.metrics or not FLAGS.out:
        raise app.UsageError("--metrics and --out are required")
    try:
        runs = load(FLAGS.metrics, FLAGS.labels)
    except (OSError, ValueError) as err:
        sys.exit(f"error: {err}")
    from dustjax.vnet.evaluate import PAPER

    first = next(iter(runs.values()))
    sr = first.get("region", {}).get("name") == "SR"
    plots.cross_correlation(
        np.asarray(first["c_r_table"]["k"]),
        {label: np.asarray(d["c_r_table"]["c_r"]) for label, d in runs.items()},
        FLAGS.out,
        FLAGS.title,
        paper_range=PAPER["SR"]["k_range"] if sr else None,
    )
    print(table(runs))
    print(f"wrote {FLAGS.out}")


if __name__ == "__main__":
    define_flags()
    app.run(main)

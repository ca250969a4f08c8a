"""The end of a V-net training run worth reading: the test split evaluated, its numbers against
predicting no dust at all, where the figures are, and the command to run next
(``config.eval.after_training``; the CPU configs that `make train` picks without an accelerator).
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)

EVAL_FIGURES = ("slices.png", "pdf.png", "scatter.png", "cross_correlation.png")


def after_training(config, workdir: str | Path, summary: dict) -> str:
    """Evaluate `workdir`'s best checkpoint on its test split (`dustjax.vnet.evaluate`) and
    return the closing lines for the user (also what `experiments.train` prints)."""
    from dustjax.vnet.evaluate import evaluate

    workdir = Path(workdir)
    metrics = evaluate(workdir, max_cubes=int(config.eval.get("max_cubes", 0) or 0))
    return closing_lines(config, workdir, summary, metrics)


def closing_lines(config, workdir: Path, summary: dict, metrics: dict) -> str:
    """The closing text from the training summary and the test metrics (pure: tested)."""
    region = str(config.data.region).upper()
    loss, zero = metrics["loss_eq3"], metrics.get("loss_eq3_zero_prediction")
    if zero:
        skill = 1.0 - loss / zero
        verdict = (
            f"{100 * skill:.0f} % below" if skill > 0 else f"{-100 * skill:.0f} % ABOVE (worse)"
        )
        versus = f"{verdict} predicting no dust ({zero:.3g})"
    else:
        versus = "no zero-prediction baseline"
    residual = metrics["residual_mag_per_pc"]
    cr = _cross_correlation_text(metrics.get("c_r_table") or {})
    eval_dir = workdir / "eval"
    figures = [workdir / "loss_curve.png"] + [eval_dir / name for name in EVAL_FIGURES]
    figures = [str(p) for p in figures if p.exists()]
    shape = "x".join(str(n) for n in metrics["region"]["shape"])
    model_arg = "" if _is_default_workdir(config, workdir) else f" MODEL={workdir}"
    lines = [
        f"== {config.get('name', 'run')}: {summary['epochs_run']} epochs on "
        f"{summary.get('backend', '?')}, best validation loss {summary['best_val_loss']:.3g} "
        f"(epoch {summary['best_epoch']}; {summary['stop_reason']})",
        f"test split ({metrics['num_cubes']} cubes of {shape}): eq. 3 loss {loss:.3g}, "
        f"{versus}; density residual dispersion {residual['dispersion']:.3g} mag/pc"
        + (f"; {cr}" if cr else ""),
        f"metrics: {eval_dir / 'test_metrics.json'}",
        "figures: " + ", ".join(figures),
        f"next: a 3D map from a star catalogue with this model: make apply REGION={region}"
        f"{model_arg} (a demo catalogue simulated from a cube, saved as demo_catalog.fits; "
        f"CATALOG=your.fits for yours; docs/apply.md)",
    ]
    if summary.get("backend") == "cpu":
        lines.append(
            "note: this CPU model is a demonstration of the pipeline, not a science-grade map: "
            f"{summary.get('num_params', 0) / 1e6:.1f} M parameters on {shape} cells, trained for "
            "minutes. The paper's model (make train on a GPU or TPU picks the region's paper "
            "config) is what to use for science; docs/validation.md has its numbers."
        )
    return "\n".join(lines)


def _cross_correlation_text(table: dict) -> str:
    """c_r (eq. 4) at the first wavenumber bin, a quarter and half-way along the table: e.g.
    ``c_r 0.81 / 0.37 / 0.20 at k = 0.04 / 0.13 / 0.23 pc^-1 (1: perfect)``."""
    k, c_r = list(table.get("k", [])), list(table.get("c_r", []))
    if len(k) < 3:
        return ""
    picks = sorted({0, round((len(k) - 1) / 4), round((len(k) - 1) / 2)})
    return (
        "c_r " + " / ".join(f"{c_r[i]:.2f}" for i in picks) + " at k = "
        + " / ".join(f"{k[i]:.2f}" for i in picks) + " pc^-1 (1: perfect)"
    )  # fmt: skip


def _is_default_workdir(config, workdir: Path) -> bool:
    """Whether `make apply` without MODEL= finds `workdir` (`default_model_workdir`)."""
    from dustjax.vnet.output import candidate_model_workdirs

    region = str(config.data.region)
    return any(workdir.resolve() == p.resolve() for p in candidate_model_workdirs(region))

"""Evaluation of a trained U-Net against the pointwise reference (issue item 6), figures 8-13.

`evaluate_workdir(workdir)` is what `experiments/polaris_validate.py` runs.
"""

from __future__ import annotations

import numpy as np

from dustjax import provenance
from dustjax.polaris.data import load_splits
from dustjax.polaris.metrics import accuracy_curve, mse, residuals_per_bin
from dustjax.polaris.plots import plot_diagnostics, plot_examples
from dustjax.polaris.projection import COLUMN, TARGETS, log10_density_from_output, model_input
from dustjax.polaris.reference import ResidualCorrection, best_pointwise_reference


def predict_log10(predict_fn, column_density, batch_size: int = 32) -> np.ndarray:
    """log10 density predicted from column density crops (B, H, W) in cm^-2 (batched)."""
    column_hat = np.asarray(model_input(column_density), np.float32)[..., None]
    out = []
    for start in range(0, len(column_hat), batch_size):
        chunk = column_hat[start : start + batch_size]
        n = len(chunk)
        if n < batch_size:  # keep one compiled shape
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - n, axis=0)])
        out.append(np.asarray(predict_fn(chunk))[:n, ..., 0])
    return np.asarray(log10_density_from_output(np.concatenate(out)), np.float64)


def evaluate_predictions(
    train_crops: dict, val_crops: dict, val_pred_log10: np.ndarray, target: str, eval_config
) -> tuple[dict, dict]:
    """Item 6 and figs. 10-13 numbers: U-Net vs the best pointwise reference on validation.

    Returns (metrics dict, arrays for the figures).
    """
    key = TARGETS[target]
    train_x = np.log10(train_crops[COLUMN])
    train_y = np.log10(train_crops[key])
    val_x = np.log10(val_crops[COLUMN])
    val_y = np.log10(val_crops[key])
    reference, reference_mses = best_pointwise_reference(
        train_x, train_y, val_x, val_y, int(eval_config.reference_bins)
    )
    ref_pred = reference(val_x)
    mse_model, mse_ref = mse(val_pred_log10, val_y), mse(ref_pred, val_y)
    sigmas = tuple(eval_config.sigmas)
    edges = np.linspace(val_y.min(), val_y.max() + 1e-9, int(eval_config.density_bins) + 1)
    # Appendix C: fit the baseline on one half of the validation crops, measure on the other.
    half = len(val_y) // 2
    correction = ResidualCorrection.fit(
        val_pred_log10[:half], val_y[:half], num_bins=int(eval_config.residual_bins),
        window=int(eval_config.residual_window),
    )  # fmt: skip
    corrected = correction(val_pred_log10[half:])
    full_correction = ResidualCorrection.fit(
        val_pred_log10, val_y, num_bins=int(eval_config.residual_bins),
        window=int(eval_config.residual_window),
    )  # fmt: skip
    metrics = {
        "target": target,
        "num_train_crops": len(train_y),
        "num_validation_crops": len(val_y),
        "val_mse_model": mse_model,
        "val_mse_reference": mse_ref,
        "mse_ratio_model_over_reference": mse_model / mse_ref,
        "ratio_target": 0.75,
        "passes_ratio_target": bool(mse_model / mse_ref <= 0.75),
        "reference_method": reference.method,
        "reference_val_mse_by_method": reference_mses,
        "val_mse_constant_mean": mse(np.full_like(val_y, train_y.mean()), val_y),
        "accuracy_model": accuracy_curve(val_pred_log10, val_y, sigmas),
        "accuracy_reference": accuracy_curve(ref_pred, val_y, sigmas),
        "residuals_model": residuals_per_bin(val_pred_log10, val_y, edges),
        "residuals_reference": residuals_per_bin(ref_pred, val_y, edges),
        "residual_correction": {
            "fit_on": "first half of the validation crops",
            "val_mse_second_half_before": mse(val_pred_log10[half:], val_y[half:]),
            "val_mse_second_half_after": mse(corrected, val_y[half:]),
            "baseline_fitted_on_all_validation": full_correction.to_dict(),
        },
        "reference": reference.to_dict(),
    }
    arrays = dict(val_x=val_x, val_y=val_y, pred=val_pred_log10, ref=ref_pred,
                  corrected=corrected, half=half)  # fmt: skip
    return metrics, arrays


def evaluate_workdir(workdir, out_dir=None, which: str = "best") -> dict:
    """Evaluate a trained U-Net workdir on its validation crops; write JSON + figures.

    Writes ``<out_dir>/polaris_metrics.json`` (item 6 ratio, accuracy curves, residual bins,
    residual correction, the reference table), ``examples.png``, ``correlation.png``,
    ``residuals.png``, ``spatial_errors.png``, ``accuracy.png``, ``residual_correction.png`` and
    ``residual_correction.json`` (for predict_map). Returns the metrics.
    """
    import time
    from pathlib import Path

    from dustjax import io as dio
    from dustjax import training as train
    from dustjax.training.workdir import SUMMARY_FILE

    start = time.perf_counter()
    workdir = Path(workdir)
    out_dir = dio.ensure_writable_dir(out_dir or workdir / "validation")
    model, variables, config = train.load_trained(workdir, which)
    splits = load_splits(config)
    target = config.data.get("target", "mass_weighted")
    predict_fn = train.make_predict_fn(model, variables)
    batch = int(config.get("eval_batch_size") or config.batch_size)
    pred = predict_log10(predict_fn, splits["validation"][COLUMN], batch)
    metrics, arrays = evaluate_predictions(splits["train"], splits["validation"], pred, target,
                                           config.eval)  # fmt: skip
    summary_path = workdir / SUMMARY_FILE
    if summary_path.exists():
        metrics["training"] = dio.read_json(summary_path)
    metrics["workdir"] = str(workdir)
    metrics["checkpoint"] = which
    metrics["provenance"] = provenance.record("polaris evaluate", config, inputs=[workdir])
    dio.write_json(out_dir / "polaris_metrics.json", metrics)
    dio.write_json(
        out_dir / "residual_correction.json",
        metrics["residual_correction"]["baseline_fitted_on_all_validation"],
    )
    dio.write_json(out_dir / "reference.json", metrics["reference"])  # fmt: skip
    plot_examples(arrays, out_dir / "examples.png", title=f"{config.get('name', '')}: fig. 8")
    metrics["figures"] = ["examples.png", *plot_diagnostics(metrics, arrays, out_dir)]
    metrics["eval_time_s"] = time.perf_counter() - start
    dio.write_json(out_dir / "polaris_metrics.json", metrics)
    return metrics


def train_and_validate(config, workdir, out_dir=None, *, skip_training: bool = False) -> dict:
    """One validation run: train (or resume) `config` in `workdir` unless ``skip_training``, then
    `evaluate_workdir`. Returns the metrics, with the wall times under ``"wall_s"`` (not written
    to the JSON)."""
    import time

    from dustjax import training as train

    start = time.perf_counter()
    if not skip_training:
        if config is None:
            raise ValueError("training needs a config (or skip the training)")
        train.train_and_evaluate(config, workdir)
    train_s = time.perf_counter() - start
    metrics = evaluate_workdir(workdir, out_dir)
    metrics["wall_s"] = {"train": train_s, "total": time.perf_counter() - start}
    return metrics


def summary_table(metrics: dict) -> str:
    """The end-of-run table of `experiments/polaris_validate.py`."""
    t = metrics.get("training", {})
    wall = metrics.get("wall_s", {})
    rows = [
        ("target", metrics["target"]),
        ("train / validation crops",
         f"{metrics['num_train_crops']} / {metrics['num_validation_crops']}"),
        ("epochs (best)", f"{t.get('epochs_run', '?')} ({t.get('best_epoch', '?')})"),
        ("backend, dtype", f"{t.get('backend', '?')}, {t.get('compute_dtype', '?')}"),
        ("val MSE U-Net [dex^2]", f"{metrics['val_mse_model']:.5f}"),
        (f"val MSE reference ({metrics['reference_method']})",
         f"{metrics['val_mse_reference']:.5f}"),
        ("val MSE constant mean", f"{metrics['val_mse_constant_mean']:.5f}"),
        ("ratio U-Net / reference (target <= 0.75)",
         f"{metrics['mse_ratio_model_over_reference']:.3f} "
         f"({'PASS' if metrics['passes_ratio_target'] else 'FAIL'})"),
        ("accuracy(0.1 dex) U-Net / reference",
         _accuracy_at(metrics, 0.1)),
        ("residual correction MSE (held-out half)",
         f"{metrics['residual_correction']['val_mse_second_half_before']:.5f} -> "
         f"{metrics['residual_correction']['val_mse_second_half_after']:.5f}"),
        ("train+simulate / total wall time [s]",
         f"{wall.get('train', 0.0):.0f} / {wall.get('total', 0.0):.0f}"),
    ]  # fmt: skip
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def _accuracy_at(metrics, sigma):
    a, r = metrics["accuracy_model"], metrics["accuracy_reference"]
    i = int(np.argmin(np.abs(np.asarray(a["sigma"]) - sigma)))
    return f"{a['mean'][i]:.3f} / {r['mean'][i]:.3f} (sigma = {a['sigma'][i]:g})"

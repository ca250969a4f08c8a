"""The paper's evaluation of a trained V-net (Chen, Qin & Li sect. 3.3) on a split of its data.

`evaluate(workdir)` loads the minimum-validation-loss checkpoint, predicts the test cubes (the
TFRecord test split, or, for ``source="simulate"``, the fixed-seed simulated test stream),
denormalises (inverse of eqs. 1-2) and writes into ``<workdir>/eval/`` (``eval_<symmetry>/``
with a symmetry: the prediction averaged over the region's reflections, and Y-Z swaps for
``dihedral``, `dustjax.vnet.symmetry`; a ``_popbn`` suffix with ``bn_stats="population"``: the
batch-norm statistics recomputed as the mean over ``bn_batches`` training batches instead of the
running averages saved in training, `dustjax.training.population_batch_stats`):

- ``test_metrics.json``: eq. 3 loss on the normalised test cubes, median and dispersion of
  rho_p - rho_t (mag/pc), the c_r(k) table (eq. 4, k in pc^-1, shells out to the cube corner)
  and the paper's checks (SR: min c_r for k in [0.046, 0.893] pc^-1; LR: min c_r overall and for
  r > 167.6 pc);
- ``pdf.png`` (fig. 7), ``scatter.png`` (fig. 8), ``cross_correlation.png`` (fig. 9) and
  ``slices.png`` (one test cube).
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

PAPER = {
    "SR": dict(dispersion=0.0003, c_r_min=0.90, k_range=(0.046, 0.893)),
    "LR": dict(dispersion=0.0004, c_r_min_all=0.60, c_r_min_large_r=0.90, r_min_pc=167.6),
}


def evaluate(
    workdir: str | Path,
    data_dir: str | None = None,
    *,
    which: str = "best",
    max_cubes: int = 0,
    split: str = "test",
    symmetry: str | None = None,
    bn_stats: str = "running",
    bn_batches: int = 64,
) -> dict:
    """Run the paper's evaluation of a training workdir; returns (and writes) the metrics.

    Several processes (`dustjax.distributed`): the mesh spans every process's devices, so each
    predicts its rows of every batch; the predictions are gathered to every process (the
    metrics' host-side sums are the same everywhere) and process 0 alone writes."""
    import jax

    from dustjax import distributed, provenance
    from dustjax import io as dio
    from dustjax import training as train
    from dustjax.sharding import make_mesh, pad_batch
    from dustjax.vnet import metrics, plots, transforms
    from dustjax.vnet import symmetry as sym
    from dustjax.vnet.data import region_of, simulator_name

    workdir = Path(workdir)
    # the symmetry is checked against the box and the training data before the slow load
    saved = train.require_method(workdir, "vnet", "evaluate")
    region = region_of(saved)
    symmetry = symmetry or saved.eval.get("symmetry") or "none"
    symmetries = sym.region_symmetries(region, symmetry, simulator_name(saved))
    if bn_stats not in ("running", "population"):
        raise ValueError(f"bn_stats must be 'running' or 'population', got {bn_stats!r}")
    if bn_stats == "population" and bn_batches < 1:
        raise ValueError(f"bn_batches must be >= 1, got {bn_batches}")
    model, variables, config = train.load_trained(workdir, which, bn_stats="running")
    if data_dir:
        config.data.data_dir = data_dir
    task = train.get_task(config.get("task", train.tasks.DEFAULT_TASK))
    source = train.get_data_source(config.data.source)
    # several processes: one mesh over all their devices (`num_devices` is for one process)
    mesh = make_mesh(None if jax.process_count() > 1 else config.get("num_devices") or None)
    batch_size = int(
        config.eval.get("batch_size") or config.get("eval_batch_size") or config.batch_size
    )
    batch_size = max(mesh.size, (batch_size // mesh.size) * mesh.size)
    if bn_stats == "population":
        train_batches = source(config, "train", batch_size=batch_size, seed=int(config.seed),
                               epoch=0, train=True)  # fmt: skip
        inputs = (distributed.to_host(b[task.input_key])
                  for b in itertools.islice(train_batches, bn_batches))  # fmt: skip
        variables = dict(variables, batch_stats=train.population_batch_stats(
            model, variables, inputs, mesh, rng=jax.random.key(int(config.seed))))  # fmt: skip
    predict = sym.symmetrised(train.make_predict_fn(model, variables, mesh), symmetries)
    max_cubes = max_cubes or int(config.eval.get("max_cubes") or 0)

    spectra = metrics.SpectrumAccumulator(region.shape, region.cell_size_pc)
    residuals = None
    loss_sum, zero_loss_sum, num_cubes, example = 0.0, 0.0, 0, None
    start = time.perf_counter()
    batches = source(
        config, split, batch_size=batch_size, seed=int(config.seed), epoch=0, train=False
    )
    for batch in batches:
        batch = {k: distributed.to_host(v) for k, v in batch.items()}  # all rows, any process
        n = len(batch[task.input_key])
        if max_cubes:
            n = min(n, max_cubes - num_cubes)
        padded = pad_batch({k: v[:n] for k, v in batch.items()}, batch_size)
        pred_hat = distributed.to_host(predict(padded[task.input_key]))[:n]
        true_hat = batch[task.target_key][:n]
        loss_sum += float(np.sum(np.mean((pred_hat - true_hat) ** 2, axis=(1, 2, 3, 4))))
        # the baseline a map must beat: no dust anywhere (rho_hat = 10 ln(1 + 0) = 0)
        zero_loss_sum += float(np.sum(np.mean(true_hat**2, axis=(1, 2, 3, 4))))
        # back to physical units: rho = exp(rho_hat / 10) - 1 (mag/pc), inverse of eq. 2
        rho_p = np.asarray(transforms.denormalise_density(pred_hat[..., 0]))
        rho_t = np.asarray(transforms.denormalise_density(true_hat[..., 0]))
        if residuals is None:
            top = float(np.quantile(rho_t, 0.9999)) * 1.5 or 1.0
            residuals = metrics.ResidualAccumulator(
                np.linspace(0.0, top, int(config.eval.get("density_bins", 100)) + 1)
            )
            extinction = np.asarray(
                transforms.denormalise_extinction(batch[task.input_key][0, ..., 0])
            )
            example = (rho_t[0], rho_p[0], extinction)
        residuals.add(rho_t, rho_p)
        spectra.add(rho_t, rho_p)
        num_cubes += n
        if max_cubes and num_cubes >= max_cubes:
            break
    if num_cubes == 0:
        raise ValueError(f"the {split} split yielded no cubes")
    elapsed = time.perf_counter() - start

    res = residuals.result()
    table = spectra.result()
    name = "eval" + ("" if symmetry == "none" else f"_{symmetry}")
    out_dir = workdir / (name + ("_popbn" if bn_stats == "population" else ""))
    if distributed.is_primary():
        dio.ensure_writable_dir(out_dir)
    region_key = str(config.data.region).upper()
    checks = {}
    if region_key == "SR":
        lo, hi = PAPER["SR"]["k_range"]
        checks["min_c_r_k_0.046_0.893"] = metrics.min_c_r_in_range(table, lo, hi)
    if region_key == "LR":
        checks["min_c_r_all"] = float(np.nanmin(table["c_r"]))
        k_max = 2 * math.pi / PAPER["LR"]["r_min_pc"]
        checks["min_c_r_r_gt_167.6pc"] = metrics.min_c_r_in_range(table, 0.0, k_max)
    summary = dict(
        workdir=str(workdir),
        checkpoint=which,
        split=split,
        symmetry=symmetry,
        bn_stats=bn_stats if bn_stats == "running" else f"population of {bn_batches} batches",
        source=config.data.source,
        region=region.to_dict(),
        num_cubes=num_cubes,
        loss_eq3=loss_sum / num_cubes,
        loss_eq3_zero_prediction=zero_loss_sum / num_cubes,
        residual_mag_per_pc={k: res[k] for k in
                             ("median", "dispersion", "robust_dispersion", "mean", "rms")},
        relative_rms=res["relative_rms"],
        paper_checks=checks,
        paper=PAPER.get(region_key, {}),
        c_r_table={k: np.asarray(v).tolist() for k, v in table.items()},
        seconds=elapsed,
        backend=jax.default_backend(),
    )  # fmt: skip
    if not distributed.is_primary():  # process 0 writes the metrics and the figures
        return summary
    prov = provenance.record("vnet evaluate", config, inputs=[workdir])
    dio.write_json(out_dir / "test_metrics.json", provenance.stamp(summary, prov))
    title = f"{config.get('name', '')} ({region_key}, {num_cubes} {split} cubes)"
    if symmetry != "none":
        title += f", {symmetry} average"
    if bn_stats == "population":
        title += ", recomputed batch-norm statistics"
    plots.density_pdfs(res["density_edges"], res["pdf_true"], res["pdf_pred"],
                       out_dir / "pdf.png", title)  # fmt: skip
    plots.density_scatter(res["density_edges"], res["hist_2d"], out_dir / "scatter.png", title)
    plots.cross_correlation(
        table["k"], table["c_r"], out_dir / "cross_correlation.png", title,
        paper_range=PAPER["SR"]["k_range"] if region_key == "SR" else None,
    )  # fmt: skip
    plots.slices(*example, out_dir / "slices.png", title)
    log.info(
        "%d %s cubes (symmetry %s): eq.3 loss %.4g; rho_p - rho_t median %.3g, dispersion %.3g "
        "mag/pc; %s",
        num_cubes, split, symmetry, summary["loss_eq3"], res["median"], res["dispersion"], checks,
    )  # fmt: skip
    return summary

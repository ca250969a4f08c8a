"""The U-Net studies of Ribeiro 2025 part II as batch runs: grids of trainings, a table, a figure.

`run_study(config, study, root)` trains every point of a study that is not finished yet, writes
one table of all points (``results.json`` and ``results.md``) and draws the paper's figure:

- ``filters_levels`` (sect. 3.2, fig. 14): base filters x levels, the accuracy map;
- ``convs_per_block`` (fig. 16): one against two convolutions per block, accuracy(sigma) and
  residuals per density bin;
- ``train_size`` (sect. 3.5, figs. 22-23): training-set size for each "virtual batch" size; each
  pass over the training set drops its last ``n % batch`` crops (`dustjax.polaris.data`), which
  is the paper's explanation of the dip at 59 images with batches of 32;
- ``kan`` (sect. 3.3): the KAN variants (K-Net, U-KAN, KAN branch) trained to convergence beside
  the U-Net.

The config (experiments/configs/polaris_study*.py) is a U-Net config (`unet_config`) plus a
``study`` block naming the grids; every point is that config with a few keys changed
(`study_points`). Layout under `root`:

    data/crops.npz, data/crops.json     the simulated crops, shared by every study and process
    <study>/points/<point>/             the point's training workdir (dustjax.training)
    <study>/points/<point>/result.json  written once the point is trained and evaluated
    <study>/results.json, results.md    the table (every point, finished or not)
    <study>/<figure>.png

A point is finished when its ``result.json`` holds the fingerprint of the point's config (the
config without its run-time keys: time budget, logging); a finished point is never retrained. An
interrupted point resumes from its last checkpoint (the engine's resume); a workdir left by a
different config, or whose checkpoint does not fit the model, is removed and the point restarts.
Several processes may share a root (``shard``: each takes every n-th point); every file is written
atomically and the table is rebuilt from the points' result files, so the last writer is complete
(``draw_only`` rebuilds it once all are done).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import logging
import shutil
import time
from pathlib import Path

import ml_collections
import numpy as np

from dustjax import io as dio
from dustjax.polaris.projection import COLUMN, TARGETS

log = logging.getLogger(__name__)

STUDIES = ("filters_levels", "convs_per_block", "train_size", "kan")
RESULT_FILE = "result.json"
# config keys that change how a run is carried out, not what it computes
RUNTIME_KEYS = ("max_train_seconds", "progress_bar", "log_every_steps", "plot_every_epochs",
                "study")  # fmt: skip
# the KAN variants of sect. 3.3 as in experiments/configs/{knet,ukan,unet_kan_branch}.py
KAN_MODELS = ("unet", "knet", "ukan", "unet_kan_branch")


@dataclasses.dataclass(frozen=True)
class Point:
    """One training of a study: `params` are what the figure plots (the varied settings),
    `overrides` the config keys (dotted) changed from the study's base config."""

    name: str
    params: dict
    overrides: dict


def _check_study(study: str) -> None:
    if study not in STUDIES:
        raise ValueError(f"unknown study {study!r}; use one of {', '.join(STUDIES)}")


def _ints(values, what: str) -> tuple[int, ...]:
    out = tuple(int(v) for v in values)
    if not out or any(v < 1 for v in out):
        raise ValueError(f"config.study.{what} = {tuple(values)!r}: need integers >= 1")
    return out


def study_points(config, study: str) -> list[Point]:
    """The points of `study` for a study config, in the order they are trained."""
    _check_study(study)
    s = config.study[study]
    seeds = tuple(int(v) for v in s.get("seeds", (0,)))
    common = {}
    for key, target in (("num_epochs", "num_epochs"), ("patience", "early_stopping.patience"),
                        ("passes_per_epoch", "data.passes_per_epoch")):  # fmt: skip
        if s.get(key):
            common[target] = int(s[key])
    points = []

    def architecture(name, filters, levels, convs, seed):
        model = dict(base_features=filters, levels=levels, convs_per_block=convs)
        overrides = {f"model.kwargs.{k}": v for k, v in model.items()}
        return Point(name, dict(model, seed=seed), {**common, **overrides, "seed": seed})

    if study == "filters_levels":
        convs = int(s.get("convs_per_block", 1))
        for levels in _ints(s.levels, f"{study}.levels"):
            for filters in _ints(s.base_features, f"{study}.base_features"):
                for seed in seeds:
                    name = f"f{filters}_l{levels}_s{seed}"
                    points.append(architecture(name, filters, levels, convs, seed))
    elif study == "convs_per_block":
        for levels in _ints(s.levels, f"{study}.levels"):
            for filters in _ints(s.base_features, f"{study}.base_features"):
                for convs in _ints(s.convs, f"{study}.convs"):
                    for seed in seeds:
                        name = f"f{filters}_l{levels}_c{convs}_s{seed}"
                        points.append(architecture(name, filters, levels, convs, seed))
    elif study == "train_size":
        eval_batch = int(config.get("eval_batch_size") or config.batch_size)
        for batch, sizes in s.series:
            batch = int(batch)
            for n in _ints(sizes, f"{study}.series sizes"):
                for seed in seeds:
                    used = min(batch, n)  # fewer crops than a batch: one batch of them all
                    points.append(Point(
                        f"b{batch}_n{n}_s{seed}",
                        dict(virtual_batch=batch, num_train_crops=n, batch_size=used,
                             unseen_per_pass=n % used, seed=seed),
                        {**common, "data.num_train_crops": n, "batch_size": used,
                         "eval_batch_size": eval_batch, "seed": seed},
                    ))  # fmt: skip
    else:  # kan
        for model in s.models:
            if model not in KAN_MODELS:
                raise ValueError(f"config.study.kan.models: {model!r} is not one of {KAN_MODELS}")
            over = {**common, "model.name": model}
            if model == "ukan":
                over["model.kwargs.levels"] = int(s.ukan_levels)
                over["model.kwargs.kan_levels"] = int(s.ukan_kan_levels)
            elif model == "unet_kan_branch":
                over["model.kwargs.kan_branch"] = tuple(int(v) for v in s.kan_branch)
            for seed in seeds:
                points.append(Point(f"{model}_s{seed}", dict(model=model, seed=seed),
                                    {**over, "seed": seed}))  # fmt: skip
    names = [p.name for p in points]
    if len(set(names)) != len(names):
        raise ValueError(f"config.study.{study} repeats a point: {names}")
    return points


def point_config(config, point: Point) -> ml_collections.ConfigDict:
    """The study's base config (without its ``study`` block) with the point's overrides."""
    d = config.to_dict() if hasattr(config, "to_dict") else copy.deepcopy(dict(config))
    d.pop("study", None)
    d["name"] = f"{d.get('name', 'study')}/{point.name}"
    for key, value in point.overrides.items():
        node = d
        *parents, leaf = key.split(".")
        for k in parents:
            node = node.setdefault(k, {})
        node[leaf] = value
    return ml_collections.ConfigDict(d)


def fingerprint(config) -> str:
    """A hash of what a config computes (its keys but the run-time ones, `RUNTIME_KEYS`)."""
    from dustjax.training.workdir import config_to_dict

    d = {k: v for k, v in config_to_dict(config).items() if k not in RUNTIME_KEYS}
    d.pop("name", None)
    return hashlib.sha256(dio.dumps_json(d).encode()).hexdigest()[:16]


# ---------------------------------------------------------------- data shared by all points


def _data_fingerprint(config) -> str:
    from dustjax.polaris import data

    d = config.data.to_dict()
    d = {k: v for k, v in d.items() if k not in data._NOT_IN_CACHE_KEY}
    seed = int(config.data.get("seed", config.seed))
    return hashlib.sha256(dio.dumps_json([d, seed]).encode()).hexdigest()[:16]


def prepare_data(config, root) -> dict:
    """Simulate the study's crops once and keep them in ``root/data`` (later processes load them).

    Only for the in-memory source "polaris_simulate"; returns {"source", "train", "validation"}
    counts and whether the crops were loaded from disk."""
    from dustjax.polaris import data

    source = config.data.source
    if source != "polaris_simulate":
        splits = data.load_splits(config)
        return dict(source=source, loaded=False, **_counts(splits))
    seed = int(config.data.get("seed", config.seed))
    data_dir = dio.ensure_writable_dir(Path(root) / "data")
    key = _data_fingerprint(config)
    npz, meta = data_dir / "crops.npz", data_dir / "crops.json"
    if meta.exists() and npz.exists() and dio.read_json(meta).get("fingerprint") == key:
        with np.load(npz) as f:
            splits = {split: {k.split("/", 1)[1]: f[k] for k in f.files if k.startswith(split)}
                      for split in ("train", "validation")}  # fmt: skip
        data.preload_splits(config.data, seed, splits)
        return dict(source=source, loaded=True, **_counts(splits))
    start = time.perf_counter()
    splits = data.simulated_splits(config.data, seed)
    arrays = {f"{split}/{k}": v for split, d in splits.items() for k, v in d.items()}
    with dio.atomic_path(npz) as tmp, tmp.open("wb") as f:
        np.savez(f, **arrays)
    info = dict(fingerprint=key, data=config.data.to_dict(), seed=seed,
                simulate_s=time.perf_counter() - start, **_counts(splits))  # fmt: skip
    dio.write_json(meta, info)
    return dict(source=source, loaded=False, **_counts(splits))


def _counts(splits) -> dict:
    return {split: int(len(d[COLUMN])) for split, d in splits.items()}


# ---------------------------------------------------------------- one point


def _read_result(path: Path) -> dict | None:
    try:
        return dio.read_json(path)
    except (OSError, ValueError):
        return None


def _clean_workdir(workdir: Path, fp: str) -> None:
    """Remove a workdir left by another config, so the point restarts from scratch."""
    from dustjax.training.workdir import CONFIG_FILE

    saved = workdir / CONFIG_FILE
    if not workdir.exists():
        return
    if saved.exists():
        try:
            same = fingerprint(ml_collections.ConfigDict(dio.read_json(saved))) == fp
        except (OSError, ValueError):
            same = False
        if same:
            return  # an interrupted run of this very point: the engine resumes it
        log.warning("%s holds a run of another config: removed, the point restarts", workdir)
    elif any(workdir.iterdir()):
        log.warning("%s holds no config.json: removed, the point restarts", workdir)
    shutil.rmtree(workdir)


def train_point(config, point: Point, study_dir) -> dict:
    """Train (or resume) one point, within its budget (`study_budget`), and evaluate its best
    checkpoint; writes and returns the point's result (``status`` "done")."""
    from dustjax import training as train

    cfg = point_config(config, point)
    fp = fingerprint(cfg)
    workdir = Path(study_dir) / "points" / point.name
    _clean_workdir(workdir, fp)
    cfg.max_train_seconds = study_budget(config, study_dir)
    start = time.perf_counter()
    try:
        summary = train.train_and_evaluate(cfg, workdir)
    except ValueError as err:
        if "does not fit this model" not in str(err):
            raise
        log.warning("%s: %s; the point restarts", point.name, err)
        shutil.rmtree(workdir)
        summary = train.train_and_evaluate(cfg, workdir)
    train_s = time.perf_counter() - start
    result = evaluate_point(workdir, float(config.study.sigma))
    steps = result.pop("_steps_per_epoch")
    result.update(
        name=point.name, params=point.params, fingerprint=fp, status="done",
        training={k: summary[k] for k in ("num_params", "epochs_run", "best_epoch",
                                          "best_val_loss", "stop_reason", "backend",
                                          "compute_dtype")},
        steps_per_epoch=steps, train_call_s=train_s,
        eval_s=time.perf_counter() - start - train_s,
    )  # fmt: skip
    dio.write_json(workdir / RESULT_FILE, result)
    return result


def study_budget(config, study_dir) -> float:
    """The training budget of one point in seconds after its first epoch (0 = none):
    ``study.<name>.max_train_seconds``, else ``study.max_train_seconds``."""
    name = Path(study_dir).name
    own = config.study[name].get("max_train_seconds", 0) if name in config.study else 0
    return float(own or config.study.get("max_train_seconds", 0) or 0)


def evaluate_point(workdir, sigma: float) -> dict:
    """Validation metrics of a point's best checkpoint, in log10 density: MSE (eq. 4), its ratio
    to the best pointwise N -> n reference fitted on the point's training crops
    (`dustjax.polaris.reference`), accuracy(sigma) (eqs. 5-6) and residuals per bin of true
    density (the bins span the validation set, the same for every point of a study)."""
    from dustjax import training as train
    from dustjax.polaris import data, evaluate
    from dustjax.polaris.metrics import accuracy_curve, mse, residuals_per_bin

    model, variables, cfg = train.load_trained(workdir, "best")
    splits = data.load_splits(cfg)
    batch = int(cfg.get("eval_batch_size") or cfg.batch_size)
    val = splits["validation"]
    pred = evaluate.predict_log10(train.make_predict_fn(model, variables), val[COLUMN], batch)
    target = cfg.data.get("target", "mass_weighted")
    val_y = np.log10(np.asarray(val[TARGETS[target]], np.float64))
    ref_mse = _reference_mse(splits, target, int(cfg.eval.reference_bins))
    sigmas = sorted({*(float(v) for v in cfg.eval.sigmas), float(sigma)})
    curve = accuracy_curve(pred, val_y, sigmas)
    at = sigmas.index(float(sigma))
    edges = np.linspace(val_y.min(), val_y.max() + 1e-9, int(cfg.eval.density_bins) + 1)
    residuals = residuals_per_bin(pred, val_y, edges)
    n_train = len(splits["train"][COLUMN])
    passes = int(cfg.data.get("passes_per_epoch", 1) or 1)
    val_mse = mse(pred, val_y)
    return dict(
        sigma=float(sigma),
        accuracy=float(curve["mean"][at]),
        accuracy_std=float(curve["std"][at]),
        val_mse=val_mse,
        val_mse_reference=ref_mse,
        mse_ratio=val_mse / ref_mse,
        accuracy_curve=curve,
        residuals={k: residuals[k] for k in ("bin_centres", "count", "mean", "p16", "p84")},
        num_train_crops=n_train,
        num_validation_crops=len(val[COLUMN]),
        target=target,
        _steps_per_epoch=passes * (n_train // int(cfg.batch_size)),
    )


_REFERENCE_MSE: dict[tuple, float] = {}


def _reference_mse(splits, target: str, bins: int) -> float:
    """Validation MSE of the best pointwise reference, once per training set (all the points of
    a study but the training-set-size one share theirs)."""
    from dustjax.polaris.reference import best_pointwise_reference

    train_n, val_n = splits["train"][COLUMN], splits["validation"][COLUMN]
    digest = hashlib.sha1(np.ascontiguousarray(train_n).tobytes())
    digest.update(np.ascontiguousarray(val_n).tobytes())
    key = (target, bins, train_n.shape, val_n.shape, digest.hexdigest())
    if key not in _REFERENCE_MSE:
        x = [np.log10(np.asarray(d[COLUMN], np.float64)) for d in (splits["train"],
             splits["validation"])]  # fmt: skip
        y = [np.log10(np.asarray(d[TARGETS[target]], np.float64)) for d in (splits["train"],
             splits["validation"])]  # fmt: skip
        reference, mses = best_pointwise_reference(x[0], y[0], x[1], y[1], bins)
        _REFERENCE_MSE[key] = float(mses[reference.method])
    return _REFERENCE_MSE[key]


# ---------------------------------------------------------------- the study


def run_study(
    config,
    study: str,
    root,
    *,
    shard: tuple[int, int] = (0, 1),
    deadline_s: float = 0.0,
    reserve_s: float = 30.0,
    min_point_s: float = 10.0,
    draw_only: bool = False,
) -> dict:
    """Train the unfinished points of `study` (this shard's), then write the table and figure.

    deadline_s (0 = none): seconds from the call after which no point starts. A point's
    training budget (`study_budget`, counted after its first epoch) is not cut: it starts only
    if that budget (`min_point_s` when it has none) plus `reserve_s` (compilation, first epoch,
    evaluation) is left, so every finished point had the same chance. Returns the table
    (`collect_results`) with ``"run"``: what this call did per point ("skipped: finished",
    "trained", "not started: deadline").
    """
    _check_study(study)
    index, count = shard
    if not 0 <= index < count:
        raise ValueError(f"shard {index}/{count}: need 0 <= index < count")
    points = study_points(config, study)
    study_dir = dio.ensure_writable_dir(Path(root) / study)
    start = time.monotonic()
    ran = {}
    if not draw_only:
        mine = points[index::count]
        todo = [p for p in mine if not is_finished(config, p, study_dir)]
        for p in mine:
            if p not in todo:
                ran[p.name] = "skipped: finished"
        if todo:
            info = prepare_data(config, root)
            log.info("%s: %d of %d points to train; data %s", study, len(todo), len(mine), info)
        need = max(min_point_s, study_budget(config, study_dir)) + reserve_s
        for p in todo:
            if deadline_s and deadline_s - (time.monotonic() - start) < need:
                ran[p.name] = "not started: deadline"
                continue
            log.info("%s: training %s (%s)", study, p.name, p.params)
            train_point(config, p, study_dir)
            ran[p.name] = "trained"
            write_table(config, study, root)
    table = write_table(config, study, root)
    table["figure"] = draw_figure(study, table, study_dir)
    table["run"] = ran
    return table


def seed_results(config, study: str, root, table_path) -> dict:
    """Take the finished points of an earlier run's table (a ``results.json``, e.g. one kept in
    docs/results/) as finished here: each done row whose fingerprint is that of a point of the
    current grid becomes that point's ``result.json`` (the points it does not finish yet
    are kept). A row of another config (another fingerprint: other settings, ``num_devices``
    included) is not taken. Returns {"seeded", "kept", "other_config"} point names."""
    _check_study(study)
    table = dio.read_json(table_path)
    if table.get("study") not in (None, study):
        raise ValueError(
            f"{table_path} is the table of study {table.get('study')!r}, not {study!r}"
        )
    study_dir = dio.ensure_writable_dir(Path(root) / study)
    points = {p.name: p for p in study_points(config, study)}
    out = {"seeded": [], "kept": [], "other_config": []}
    for row in table.get("points", []):
        if row.get("status") != "done":
            continue
        point = points.get(row.get("name"))
        if point is None or row.get("fingerprint") != fingerprint(point_config(config, point)):
            out["other_config"].append(row.get("name"))
        elif is_finished(config, point, study_dir):
            out["kept"].append(point.name)
        else:
            dio.write_json(study_dir / "points" / point.name / RESULT_FILE, row)
            out["seeded"].append(point.name)
    return out


def is_finished(config, point: Point, study_dir) -> bool:
    result = _read_result(Path(study_dir) / "points" / point.name / RESULT_FILE)
    fp = fingerprint(point_config(config, point))
    return bool(result and result.get("status") == "done" and result.get("fingerprint") == fp)


def collect_results(config, study: str, root) -> dict:
    """Every point of the study, finished (its result) or not (``status`` "pending")."""
    study_dir = Path(root) / study
    rows = []
    for p in study_points(config, study):
        result = _read_result(study_dir / "points" / p.name / RESULT_FILE)
        fp = fingerprint(point_config(config, p))
        if result and result.get("status") == "done" and result.get("fingerprint") == fp:
            rows.append(result)
        else:
            rows.append(dict(name=p.name, params=p.params, fingerprint=fp, status="pending"))
    done = sum(r["status"] == "done" for r in rows)
    return dict(study=study, sigma=float(config.study.sigma), num_points=len(rows),
                num_done=done, points=rows)  # fmt: skip


def write_table(config, study: str, root) -> dict:
    """Write ``<root>/<study>/results.json`` and ``results.md`` atomically; returns the table."""
    table = collect_results(config, study, root)
    study_dir = Path(root) / study
    dio.write_json(study_dir / "results.json", table)
    with dio.atomic_path(study_dir / "results.md") as tmp:
        tmp.write_text(markdown_table(table) + "\n")
    return table


def markdown_table(table: dict) -> str:
    """One row a point: its settings, parameters, epochs, why it stopped, the metrics."""
    rows = table["points"]
    keys = list(rows[0]["params"]) if rows else []
    sigma = table["sigma"]
    head = [*keys, "params", "epochs (best)", "steps/epoch", "stop", "val MSE [dex^2]",
            "MSE / reference", f"Acc({sigma:g} dex)", "train s"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in rows:
        cells = [str(r["params"][k]) for k in keys]
        if r["status"] != "done":
            cells += [r["status"]] + [""] * (len(head) - len(keys) - 1)
        else:
            t = r["training"]
            cells += [f"{t['num_params']:,}", f"{t['epochs_run']} ({t['best_epoch']})",
                      str(r["steps_per_epoch"]), _short_stop(t["stop_reason"]),
                      f"{r['val_mse']:.4f}", f"{r['mse_ratio']:.3f}",
                      f"{r['accuracy']:.3f} +- {r['accuracy_std']:.3f}",
                      f"{r['train_call_s']:.0f}"]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"{table['num_done']} of {table['num_points']} points done; Acc = mean over "
                 "validation images of the fraction of pixels within sigma (eqs. 5-6) +- its "
                 "standard deviation over images")  # fmt: skip
    return "\n".join(lines)


def _short_stop(reason: str) -> str:
    if reason.startswith("early stop"):
        return "early stop"
    if reason.startswith("time budget"):
        return "time budget"
    return reason.replace("reached ", "")


def draw_figure(study: str, table: dict, study_dir) -> str | None:
    """The study's figure from its table (None when no point is done yet)."""
    from dustjax.polaris import study_plots

    if not table["num_done"]:
        return None
    draw = {
        "filters_levels": study_plots.accuracy_map,
        "convs_per_block": study_plots.curves_and_residuals,
        "train_size": study_plots.accuracy_vs_train_size,
        "kan": study_plots.curves_and_residuals,
    }[study]
    path = Path(study_dir) / FIGURES[study]
    draw(table, path)
    return str(path)


FIGURES = {
    "filters_levels": "fig14_accuracy_map.png",
    "convs_per_block": "fig16_convs_per_block.png",
    "train_size": "fig22_23_train_size.png",
    "kan": "kan_variants.png",
}


def done_rows(table: dict) -> list[dict]:
    return [r for r in table["points"] if r["status"] == "done"]


def summary_lines(table: dict) -> list[str]:
    """A few lines per study for logs: the best point and the spread."""
    rows = done_rows(table)
    if not rows:
        return [f"{table['study']}: no point done"]
    best = max(rows, key=lambda r: r["accuracy"])
    accs = [r["accuracy"] for r in rows]
    return [
        f"{table['study']}: {len(rows)}/{table['num_points']} points; Acc({table['sigma']:g}) "
        f"from {min(accs):.3f} to {max(accs):.3f}; best {best['name']} "
        f"(val MSE {best['val_mse']:.4f})"
    ]


__all__ = [
    "FIGURES",
    "KAN_MODELS",
    "STUDIES",
    "Point",
    "collect_results",
    "fingerprint",
    "point_config",
    "prepare_data",
    "run_study",
    "study_points",
    "train_point",
    "write_table",
]

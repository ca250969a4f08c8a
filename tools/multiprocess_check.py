r"""Several processes compute what one does: training (`vnet_test`) and a GP fit (`gp_test`).

    # two processes of two CPU devices each against one process of four (issue 22)
    python -m tools.multiprocess_check --processes=2 --devices_per_process=2 --out=/tmp/mp
    # on a GPU host: one GPU per process against one process with all of them
    python -m tools.multiprocess_check --processes=2 --platform=gpu --out=/tmp/mp
    # one worker (what the launcher starts; also how to run it by hand on a cluster)
    python -m tools.multiprocess_check --worker --out=DIR --coordinator_address=localhost:1234 \
        --num_processes=2 --process_id=0

The launcher starts the reference (one process, all devices) and then the processes, each on a
free localhost port, and compares: the training losses and gradient norms of every epoch, the
validation losses, the gradient of the loss on the first training batch at the initial
parameters, the trained parameters (restored from the orbax checkpoint written by all processes,
by all processes), a resumed epoch, and the GP's ELBO history and fitted parameters. It writes
``report.json`` with the largest relative differences and ``ok``. Workers write ``result.npz``
(process 0 only) and their logs in ``--out``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from absl import app, flags

FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_string("out", "/tmp/multiprocess_check", "Output directory.")
    flags.DEFINE_bool("worker", False, "Run one worker (else: launch and compare).")
    flags.DEFINE_integer("processes", 2, "Launcher: processes.")
    flags.DEFINE_integer("devices_per_process", 2, "Launcher: devices each (CPU).")
    flags.DEFINE_enum("platform", "cpu", ["cpu", "gpu"], "Launcher: CPU devices or one GPU each.")
    flags.DEFINE_list("what", ["train", "gp"], "What to run: train, gp.")
    flags.DEFINE_integer("epochs", 2, "Training epochs (then one more, resumed).")
    flags.DEFINE_integer("gp_iterations", 20, "GP iterations.")
    flags.DEFINE_float("rtol", 2e-4, "Launcher: largest relative difference accepted.")
    flags.DEFINE_integer("timeout", 300, "Launcher: seconds for each run.")
    flags.DEFINE_bool("reuse_reference", False, "Launcher: keep an existing one-process result.")


# ==== the worker ==================================================================================
def _flat(tree) -> np.ndarray:
    import jax

    from dustjax.distributed import to_host

    leaves = jax.tree.leaves(tree)
    return np.concatenate([to_host(x).astype(np.float64).ravel() for x in leaves])


def train_part(out: Path) -> dict[str, np.ndarray]:
    import jax
    import jax.numpy as jnp

    from dustjax import training
    from dustjax.configs import vnet_test
    from dustjax.distributed import to_host
    from dustjax.sharding import make_mesh, replicated
    from dustjax.training.optim import make_optimizer
    from dustjax.training.steps import build_model, create_train_state, make_loss_and_grads
    from dustjax.training.tasks import get_data_source, get_task
    from dustjax.training.workdir import read_metrics

    config = vnet_test.get_config()
    config.num_epochs = FLAGS.epochs
    config.data.steps_per_epoch = 2
    config.progress_bar = False
    workdir = out / "train"
    res = {}

    # the gradient of the first training batch at the initial parameters
    mesh = make_mesh()
    task = get_task(config.task)
    model = build_model(config)
    tx = make_optimizer(config, config.data.steps_per_epoch)
    example = jnp.zeros((1, *config.data.shape, 1), jnp.float32)
    state = create_train_state(model, tx, example, jax.random.key(config.seed), mesh)
    source = get_data_source(config.data.source)
    batch = next(iter(source(config, "train", batch_size=config.batch_size, seed=config.seed,
                             epoch=0, train=True)))  # fmt: skip
    grads_fn = jax.jit(make_loss_and_grads(task), out_shardings=replicated(mesh))
    (loss, _), grads = grads_fn(state, batch, jax.random.key(1))
    res["initial_loss"] = np.asarray([float(to_host(loss))])
    res["initial_grads"] = _flat(grads)

    summary = training.train_and_evaluate(config, workdir)
    res["best_val_loss"] = np.asarray([summary["best_val_loss"]])
    # the trained parameters, restored by all processes from the checkpoint all of them wrote
    _, variables, _ = training.load_trained(workdir, which="latest", mesh=mesh)
    res["params"] = _flat(variables)
    # one more epoch, resumed from that checkpoint
    with config.unlocked():
        config.num_epochs = FLAGS.epochs + 1
    training.train_and_evaluate(config, workdir)
    if jax.process_index() == 0:
        rows = read_metrics(workdir / "metrics.jsonl")
        for key in ("train_loss", "grad_norm", "val_loss"):
            res[key] = np.asarray([r[key] for r in rows])
    return res


def gp_part(out: Path) -> dict[str, np.ndarray]:
    import jax

    from dustjax.configs import gp_test
    from dustjax.gp.fit import load_params
    from dustjax.gp.pipeline import fit_and_predict

    config = gp_test.get_config()
    config.data.simulation.num_stars = 800
    config.fit.max_iterations = FLAGS.gp_iterations
    config.fit.min_iterations = FLAGS.gp_iterations
    config.fit.steps_per_call = 5
    config.predict.num_samples = 4
    config.predict.star_samples = 4
    config.predict.posterior_samples = 0
    workdir = out / "gp"
    summary = fit_and_predict(config, workdir, progress=False)
    res = {"gp_elbo": np.asarray(summary["elbo_history"], np.float64)}
    if jax.process_index() == 0:
        params = load_params(workdir / "final_state.npz")
        res["gp_params"] = np.concatenate(
            [np.asarray(params[k], np.float64).ravel() for k in sorted(params)]
        )
    return res


def worker() -> None:
    from dustjax.cli.runtime_flags import start_runtime

    start_runtime()
    import jax

    out = Path(FLAGS.out)
    out.mkdir(parents=True, exist_ok=True)
    res = {}
    t0 = time.perf_counter()
    if "train" in FLAGS.what:
        res.update(train_part(out))
    if "gp" in FLAGS.what:
        res.update(gp_part(out))
    if jax.process_index() == 0:
        res["wall_s"] = np.asarray([time.perf_counter() - t0])
        res["device_count"] = np.asarray([jax.device_count()])
        res["process_count"] = np.asarray([jax.process_count()])
        tmp = out / "result.tmp.npz"
        np.savez(tmp, **res)
        os.replace(tmp, out / "result.npz")
    print(f"worker {jax.process_index()} done in {time.perf_counter() - t0:.1f} s", flush=True)


# ==== the launcher ================================================================================
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _env(devices: int | None, gpus: str | None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("DUSTJAX_COMPILATION_CACHE", "off")
    if devices is not None:  # CPU devices
        env["JAX_PLATFORMS"] = "cpu"
        flags_ = [f for f in env.get("XLA_FLAGS", "").split() if "device_count" not in f]
        env["XLA_FLAGS"] = " ".join([*flags_, f"--xla_force_host_platform_device_count={devices}"])
    if gpus is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpus
    return env


def launch(out: Path, num: int, devices: int | None, gpus: list[str] | None, what) -> float:
    """Run `num` worker processes into `out`; returns the wall time. Raises on failure."""
    out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    base = [sys.executable, "-m", "tools.multiprocess_check", "--worker", f"--out={out}",
            f"--what={','.join(what)}", f"--epochs={FLAGS.epochs}",
            f"--gp_iterations={FLAGS.gp_iterations}"]  # fmt: skip
    procs, logs = [], []
    t0 = time.perf_counter()
    for i in range(num):
        cmd = list(base)
        if num > 1:
            cmd += [f"--coordinator_address=localhost:{port}", f"--num_processes={num}",
                    f"--process_id={i}"]  # fmt: skip
        log = open(out / f"worker{i}.log", "w")  # noqa: SIM115 (closed below)
        logs.append(log)
        gpu = None if gpus is None else gpus[i] if num > 1 else ",".join(gpus)
        procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                      env=_env(devices, gpu)))  # fmt: skip
    try:
        codes = [p.wait(timeout=FLAGS.timeout) for p in procs]
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        raise RuntimeError(f"workers in {out} ran past {FLAGS.timeout} s") from None
    finally:
        for log in logs:
            log.close()
    if any(codes):
        tail = (out / f"worker{codes.index(next(c for c in codes if c))}.log").read_text()
        raise RuntimeError(f"a worker in {out} failed ({codes}):\n{tail[-3000:]}")
    return time.perf_counter() - t0


def compare(one: dict, many: dict, rtol: float) -> dict:
    report, ok = {}, True
    for key in sorted(set(one) - {"wall_s", "device_count", "process_count"}):
        a, b = np.asarray(one[key], np.float64), np.asarray(many.get(key), np.float64)
        if a.shape != b.shape:
            report[key] = dict(error=f"shape {a.shape} vs {b.shape}")
            ok = False
            continue
        scale = max(float(np.max(np.abs(a))), 1e-30)
        diff = float(np.max(np.abs(a - b))) / scale if a.size else 0.0
        report[key] = dict(max_rel_diff=diff, size=int(a.size))
        ok &= diff <= rtol
    report["ok"] = bool(ok)
    return report


def launcher() -> dict:
    out = Path(FLAGS.out)
    n = FLAGS.processes
    if FLAGS.platform == "cpu":
        devices, gpus = FLAGS.devices_per_process, None
        ref_devices = n * devices
    else:
        visible = [g for g in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if g.strip()]
        gpus = visible[:n] if visible else [str(i) for i in range(n)]  # the GPUs we were given
        if len(gpus) < n:
            raise app.UsageError(f"{n} processes need {n} GPUs, CUDA_VISIBLE_DEVICES={visible}")
        devices = None
        ref_devices = None
    times = {}
    if not (FLAGS.reuse_reference and (out / "one" / "result.npz").exists()):
        times["one_process_s"] = launch(out / "one", 1, ref_devices, gpus, FLAGS.what)
    times["processes_s"] = launch(out / "many", n, devices, gpus, FLAGS.what)
    one = dict(np.load(out / "one" / "result.npz"))
    many = dict(np.load(out / "many" / "result.npz"))
    report = compare(one, many, FLAGS.rtol)
    report.update(
        processes=n, devices=int(many["device_count"][0]), rtol=FLAGS.rtol,
        reference_devices=int(one["device_count"][0]), wall_s=times, what=list(FLAGS.what),
        date=time.strftime("%Y-%m-%d %H:%M:%S"),
    )  # fmt: skip
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return report


def main(argv):
    del argv
    if FLAGS.worker:
        worker()
    else:
        report = launcher()
        if not report["ok"]:
            sys.exit("several processes differ from one (report.json)")


if __name__ == "__main__":
    from dustjax.cli.runtime_flags import define_runtime_flags

    define_flags()
    define_runtime_flags()
    app.run(main)

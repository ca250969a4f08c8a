"""Several processes (`dustjax.distributed`): settings, and two CPU processes on localhost.

The slow test runs `tools.multiprocess_check`: training of the `vnet_test` config and a GP fit in
two processes of two CPU devices each against one process of four (losses, gradients, trained
parameters restored from the checkpoint both wrote, a resumed epoch, the GP's ELBOs and fit).
The fused Monte Carlo splits its redraws over two processes (fast); `experiments.apply` and
`experiments.evaluate` in two processes write once what one process writes (slow).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from dustjax import distributed

ROOT = Path(__file__).resolve().parents[1]


def test_incomplete_or_bad_settings_are_refused(monkeypatch):
    for name in (distributed.ENV_COORDINATOR, distributed.ENV_NUM_PROCESSES,
                 distributed.ENV_PROCESS_ID):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(distributed.DistributedError, match="all of --coordinator_address"):
        distributed.initialize("localhost:1234", 2, None)
    with pytest.raises(distributed.DistributedError, match="process_id=2"):
        distributed.initialize("localhost:1234", 2, 2)
    monkeypatch.setenv(distributed.ENV_NUM_PROCESSES, "2")
    with pytest.raises(distributed.DistributedError, match="coordinator_address=None"):
        distributed.initialize()
    # one process asked for explicitly: nothing to connect
    assert distributed.initialize("localhost:1234", 1, 0) is False


def test_cluster_detection(monkeypatch):
    for name in ("SLURM_NTASKS", "SLURM_NPROCS", "SLURM_STEP_ID", "SLURM_STEPID",
                 "TPU_WORKER_HOSTNAMES", distributed.ENV_SWITCH):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    assert distributed.detected_cluster() is None
    monkeypatch.setenv("SLURM_NTASKS", "4")
    assert distributed.detected_cluster() is None  # sbatch's shell, not an srun step
    monkeypatch.setenv("SLURM_STEP_ID", "0")
    assert distributed.detected_cluster() == "slurm"
    monkeypatch.setenv(distributed.ENV_SWITCH, "0")
    assert distributed.detected_cluster() is None
    monkeypatch.setenv(distributed.ENV_SWITCH, "1")
    assert distributed.detected_cluster() == "forced"
    monkeypatch.delenv(distributed.ENV_SWITCH)
    monkeypatch.setenv("SLURM_NTASKS", "1")
    monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "t1k-w-0,t1k-w-1")
    assert distributed.detected_cluster() == "tpu"
    monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "localhost")
    assert distributed.detected_cluster() is None


# Each process: the mesh spans both processes, a host batch goes over as each process's rows,
# and the GP's ELBO and gradient with the star data each process built for its own stars equal
# the plain one-device ELBO (computed on the process's own first device, no collectives).
_WORKER = textwrap.dedent(
    """
    import json, sys
    from dustjax import distributed
    distributed.initialize(sys.argv[1], 2, int(sys.argv[2]))
    import jax, jax.numpy as jnp, numpy as np
    jax.config.update("jax_enable_x64", True)
    from dustjax.catalog import StarCatalog
    from dustjax.gp import fit, svgp
    from dustjax.gp.grid import LBDGrid
    from dustjax.sharding import batch_sharding, make_mesh, replicated
    out = dict(process=jax.process_index(), devices=jax.device_count(),
               local=jax.local_device_count())
    mesh = make_mesh()
    batch = np.arange(8 * 3, dtype=np.float64).reshape(8, 3)
    split = batch_sharding(mesh)
    out["rows"] = [distributed.local_rows(8, split).start, distributed.local_rows(8, split).stop]
    x = distributed.put_batch({"x": batch}, split)["x"]
    total = jax.jit(lambda x: jnp.sum(x ** 2), out_shardings=replicated(mesh))(x)
    out["sum"], out["expect_sum"] = float(total), float(np.sum(batch ** 2))
    out["gathered_ok"] = bool(np.array_equal(distributed.to_host(x), batch))
    grid = LBDGrid((60, 70), (-5, 5), (100, 200), (3, 3, 4), ghost_cells=1)
    rng = np.random.default_rng(0)
    n = 41  # padded to 44 over the 4 devices
    cat = StarCatalog.from_arrays(l_deg=rng.uniform(60, 70, n), b_deg=rng.uniform(-5, 5, n),
        distance_pc=rng.uniform(100, 200, n), extinction=rng.uniform(0.1, 0.5, n),
        sigma_extinction=np.full(n, 0.05))
    params = fit.initial_params(cat, dict(num_inducing=7, scale_lengths_pc=30.0,
        amplitude_dex=0.4, mean_dex=-2.5, q_std=0.5), dtype=jnp.float64)
    model = svgp.SVGPModel(num_samples=4)
    smesh = make_mesh(axis=fit.STAR_AXIS)
    stars = fit.star_data_on_mesh(cat, grid, smesh, dtype=jnp.float64)
    f = fit.make_elbo_fn(smesh, grid, model, batch_size=None, num_stars_padded=44,
                         dtype=jnp.float64)
    val, grad = jax.jit(jax.value_and_grad(f))(fit.replicate(params, smesh),
                                               jax.random.key(3), stars, 1e-6)
    out["elbo"] = float(val)
    out["grad"] = {k: np.asarray(v).ravel().tolist() for k, v in grad.items()}
    with jax.default_device(jax.local_devices()[0]):
        plain_stars = fit.make_star_data(cat, grid, num_shards=4, dtype=jnp.float64)
        key_phi, _ = jax.random.split(jax.random.key(3))
        plain = lambda p: svgp.elbo(p, key_phi, jnp.asarray(grid.cell_centres_xyz()),
            plain_stars, jnp.asarray(grid.d_widths_pc()), grid.full_shape, model, 1e-6)
        pval, pgrad = jax.value_and_grad(plain)(params)
    out["plain_elbo"] = float(pval)
    out["plain_grad"] = {k: np.asarray(v).ravel().tolist() for k, v in pgrad.items()}
    print("RESULT" + json.dumps(out), flush=True)
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _env(devices: int) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu", DUSTJAX_COMPILATION_CACHE="off",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")  # fmt: skip
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return env


def _two_workers(worker: str, devices: int) -> list[dict]:
    """Run `worker` as processes 0 and 1 of one localhost job; their RESULT lines, parsed."""
    address = f"localhost:{_free_port()}"
    procs = [
        subprocess.Popen([sys.executable, "-c", worker, address, str(i)], cwd=ROOT,
                         env=_env(devices), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
        for i in range(2)
    ]  # fmt: skip
    results = []
    try:
        for p in procs:
            stdout, stderr = p.communicate(timeout=600)
            assert p.returncode == 0, stderr[-3000:]
            line = next(x for x in stdout.splitlines() if x.startswith("RESULT"))
            results.append(json.loads(line[len("RESULT") :]))
    finally:
        for p in procs:
            p.kill()
    return results


def test_two_processes_share_one_mesh_and_the_gp_elbo():
    results = _two_workers(_WORKER, 2)
    for i, out in enumerate(results):
        assert (out["process"], out["devices"], out["local"]) == (i, 4, 2)
        assert out["rows"] == [4 * i, 4 * i + 4]  # each process holds its own rows
        assert out["sum"] == out["expect_sum"] and out["gathered_ok"]
        assert out["elbo"] == pytest.approx(out["plain_elbo"], rel=1e-12)
        for k, g in out["plain_grad"].items():
            np.testing.assert_allclose(out["grad"][k], g, rtol=1e-9, atol=1e-9, err_msg=k)
    assert results[0]["elbo"] == results[1]["elbo"]


@pytest.mark.slow
def test_training_and_gp_fit_in_two_processes_equal_one_process(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "tools.multiprocess_check", "--processes=2",
         "--devices_per_process=2", f"--out={tmp_path}", "--timeout=1500"],
        cwd=ROOT, env=_env(1), capture_output=True, text=True, timeout=3200,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["ok"] and report["processes"] == 2 and report["devices"] == 4
    assert report["reference_devices"] == 4
    for key in ("train_loss", "val_loss", "grad_norm", "initial_grads", "params", "gp_elbo",
                "gp_params"):  # fmt: skip
        assert report[key]["max_rel_diff"] <= 2e-4, key
    assert report["train_loss"]["size"] == 3  # two epochs, then one resumed from the checkpoint


# Each process: the fused Monte Carlo split over the two processes (each its block of batches)
# against the same Monte Carlo in this process alone (over_processes=False).
_MC_WORKER = textwrap.dedent(
    """
    import json, sys
    from dustjax import distributed
    distributed.initialize(sys.argv[1], 2, int(sys.argv[2]))
    import jax, jax.numpy as jnp, numpy as np
    from dustjax import catalog as cat
    from dustjax.geometry import Region
    from dustjax.vnet import apply as ap, gridding, montecarlo
    region = Region.named("SR").with_shape((8, 8, 8))
    rng = np.random.default_rng(0)
    n = 1500
    catalog = cat.StarCatalog.from_arrays(
        xyz_pc=rng.uniform(region.lower_pc, region.upper_pc, (n, 3)),
        extinction=rng.uniform(0.0, 1.0, n), sigma_extinction=rng.uniform(0.05, 0.3, n))
    knn = gridding.knn_weights(region, catalog)
    kernel = jnp.asarray(rng.normal(0, 0.3, (3, 3, 3, 1, 2)), jnp.float32)
    mix = jnp.asarray([0.02, -0.01], jnp.float32)
    def predictor(e):
        y = jax.lax.conv_general_dilated(e[..., None], kernel, (1, 1, 1), "SAME",
            dimension_numbers=("NDHWC", "DHWIO", "NDHWC"))
        return jax.nn.softplus(jnp.tanh(y) @ mix + 0.01)
    nominal = ap.predict_one(predictor, np.maximum(knn.apply(catalog.extinction), 0.0))
    kw = dict(num_redraws=19, batch_size=4, seed=5, reference=nominal)  # 5 batches: 3 + 2
    split = montecarlo.monte_carlo(predictor, knn, catalog, region, **kw)
    alone = montecarlo.monte_carlo(predictor, knn, catalog, region, over_processes=False, **kw)
    # small output (a full pipe would block a process that its partner waits for at exit)
    from hashlib import sha256 as sha
    out = {k: dict(scale=float(np.max(np.abs(alone[k]))), finite=bool(np.isfinite(v).all()),
                   diff=float(np.max(np.abs(v - alone[k]))), hash=sha(v.tobytes()).hexdigest(),
                   alone_hash=sha(alone[k].tobytes()).hexdigest()) for k, v in split.items()}
    print("RESULT" + json.dumps(out), flush=True)
    """
)


def test_the_monte_carlo_splits_its_redraws_over_two_processes():
    results = _two_workers(_MC_WORKER, 1)
    for key in ("density_mean", "density_std", "extinction_std"):
        r0, r1 = results[0][key], results[1][key]
        assert r0["scale"] > 0 and r0["finite"]
        assert r0["diff"] <= 1e-5 * r0["scale"], (key, r0)  # float32 sums in another order
        assert r1["hash"] == r0["hash"]  # both processes hold the same combined moments
        assert r1["alone_hash"] == r0["alone_hash"]


@pytest.mark.slow  # ~20 s: three processes (the library-level split above is the fast check)
def test_apply_in_two_processes_writes_one_map_equal_to_one_process(tmp_path):
    """`experiments.apply` (the NNLS route: no trained model needed) as two processes: the Monte
    Carlo split between them, process 0 alone writes, the map equals one process's."""
    fits = pytest.importorskip("astropy.io.fits")
    common = [sys.executable, "-m", "experiments.apply", "--region=SR", "--catalog=demo",
              "--method=nnls", "--shape=8,8,8", "--nnls_steps=20", "--demo_stars=2000",
              "--num_redraws=6", "--batch_size=2", "--plots=false",
              "--knn_backend=kdtree"]  # fmt: skip
    several = [f"--workdir={tmp_path / 'two'}", "--num_processes=2",
               f"--coordinator_address=localhost:{_free_port()}"]  # fmt: skip
    procs = [
        subprocess.Popen([*common, *several, f"--process_id={i}"], cwd=ROOT, env=_env(1),
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for i in range(2)
    ]  # fmt: skip
    one = subprocess.run([*common, f"--workdir={tmp_path / 'one'}"], cwd=ROOT, env=_env(1),
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    assert one.returncode == 0, one.stderr[-3000:]
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=600)[0])
            assert p.returncode == 0, logs[-1][-3000:]
    finally:
        for p in procs:
            p.kill()
    assert "map written" in logs[0] and "map written" not in logs[1]  # process 0 wrote
    assert sorted(f.name for f in (tmp_path / "two").iterdir()) == sorted(
        f.name for f in (tmp_path / "one").iterdir()
    )
    with (
        fits.open(tmp_path / "one/density.fits") as a,
        fits.open(tmp_path / "two/density.fits") as b,
    ):
        for hdu in ("PRIMARY", "UNCERT", "EXTUNC"):
            x, y = np.asarray(a[hdu].data, np.float64), np.asarray(b[hdu].data, np.float64)
            assert np.max(np.abs(x)) > 0
            np.testing.assert_allclose(y, x, rtol=0, atol=1e-5 * np.max(np.abs(x)), err_msg=hdu)


def _random_vnet_test_workdir(path: Path) -> Path:
    """A training workdir of the `vnet_test` V-net with random weights (head included)."""
    import jax

    from dustjax import io as dio
    from dustjax.configs.vnet_test import get_config
    from dustjax.sharding import make_mesh
    from dustjax.training import steps
    from dustjax.training import workdir as wd
    from dustjax.training.optim import make_optimizer

    config = get_config()
    model, tx = steps.build_model(config), make_optimizer(config, 1)
    mesh = make_mesh(devices=jax.local_devices()[:1])
    example = np.zeros((1, *config.data.shape, 1), np.float32)
    state = steps.create_train_state(model, tx, example, jax.random.key(0), mesh)
    noise = lambda p: p + 0.05 * jax.random.normal(jax.random.key(1), p.shape)  # noqa: E731
    state = state.replace(params=jax.tree.map(noise, state.params))  # a head that is not zero
    dio.write_json(dio.ensure_writable_dir(path) / wd.CONFIG_FILE, wd.config_to_dict(config))
    manager = wd.checkpoint_manager(path)
    loop = dict(epoch=1, best_val_loss=1.0, best_epoch=1, epochs_since_best=0, stop_reason="")
    wd.save_checkpoint(manager, 1, state, loop, val_loss=1.0)
    manager.wait_until_finished()
    manager.close()
    return path


@pytest.mark.slow  # ~25 s each: three processes
@pytest.mark.parametrize("bn_stats", ["running", "population"])
def test_evaluate_in_two_processes_writes_once_what_one_process_writes(tmp_path, bn_stats):
    import shutil

    one = _random_vnet_test_workdir(tmp_path / "one")
    two = shutil.copytree(one, tmp_path / "two")
    cmd = [sys.executable, "-m", "experiments.evaluate", f"--bn_stats={bn_stats}", "--bn_batches=2"]
    several = ["--num_processes=2", f"--coordinator_address=localhost:{_free_port()}"]
    procs = [
        subprocess.Popen([*cmd, f"--workdir={two}", *several, f"--process_id={i}"], cwd=ROOT,
                         env=_env(1), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for i in range(2)
    ]  # fmt: skip
    alone = subprocess.run([*cmd, f"--workdir={one}"], cwd=ROOT, env=_env(1),
                           capture_output=True, text=True, timeout=600)  # fmt: skip
    assert alone.returncode == 0, alone.stderr[-3000:]
    try:
        for p in procs:
            log = p.communicate(timeout=600)[0]
            assert p.returncode == 0, log[-3000:]
    finally:
        for p in procs:
            p.kill()
    sub = "eval" if bn_stats == "running" else "eval_popbn"
    a = json.loads((one / sub / "test_metrics.json").read_text())
    b = json.loads((two / sub / "test_metrics.json").read_text())
    assert a["num_cubes"] == b["num_cubes"] > 0
    assert sorted(p.name for p in (one / sub).iterdir()) == sorted(
        p.name for p in (two / sub).iterdir()
    )
    for key in ("loss_eq3", "relative_rms"):
        assert b[key] == pytest.approx(a[key], rel=1e-6), key
    for key, value in a["residual_mag_per_pc"].items():
        assert b["residual_mag_per_pc"][key] == pytest.approx(value, rel=1e-6, abs=1e-9), key

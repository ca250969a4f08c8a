"""The training engine (dustjax.training) and its entry points: end to end on the `vnet_test` config
(train, checkpoint, resume, evaluate), sharding on fake devices, bad input."""

import functools
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import optax
import pytest

from dustjax import sharding
from dustjax import training as train
from dustjax.training import guard, loop, optim, steps, tasks, workdir
from experiments.configs import vnet_test

REPO = Path(__file__).resolve().parents[2]


# the module's trainings share one compilation cache (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("shared_compilation_cache")


def _random_source(config, split, *, batch_size, seed, epoch, train):
    """Cheap deterministic batches (a pure function of seed, split, epoch): density is a smooth
    function of extinction so there is something to learn."""
    rng = np.random.default_rng([seed, train, epoch if train else 0, len(split)])
    steps = config.data.steps_per_epoch if train else config.data.eval_steps
    shape = tuple(config.data.shape)
    for _ in range(steps):
        extinction = rng.uniform(0, 1, size=(batch_size, *shape, 1)).astype(np.float32)
        batch = {"extinction": extinction, "density": np.sqrt(extinction)}
        if config.data.get("nan_at_epoch", 0) == epoch + 1 and train:
            batch["extinction"][0, 0, 0, 0, 0] = np.nan
        yield batch


train.register_data_source("test_random", _random_source)


def _random_config(**data):
    c = vnet_test.get_config()
    c.data.source = "test_random"
    c.data.shape = (8, 8, 8)
    c.data.steps_per_epoch = 3
    c.data.eval_steps = 1
    c.model.kwargs.features = (2, 4)
    c.progress_bar = False
    with c.unlocked():
        for k, v in data.items():
            c.data[k] = v
    return c


def _latest_params(workdir):
    _, variables, _ = train.load_trained(workdir, "latest")
    return variables


def test_end_to_end_train_resume_evaluate(tmp_path):
    """vnet_test: an uninterrupted 2-epoch run equals 1 epoch + a restarted run to 2 epochs;
    then the paper's evaluation writes its metrics and figures."""
    config = vnet_test.get_config()
    config.num_epochs = 2
    config.progress_bar = False
    full = train.train_and_evaluate(config, tmp_path / "full")

    config.num_epochs = 1
    train.train_and_evaluate(config, tmp_path / "split")
    config.num_epochs = 2
    resumed = train.train_and_evaluate(config, tmp_path / "split")
    assert resumed["epochs_run"] == full["epochs_run"] == 2
    assert resumed["best_val_loss"] == full["best_val_loss"]
    a, b = _latest_params(tmp_path / "full"), _latest_params(tmp_path / "split")
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))

    rows = [
        json.loads(line) for line in (tmp_path / "split/metrics.jsonl").read_text().splitlines()
    ]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]  # it learns
    assert (tmp_path / "split/loss_curve.png").stat().st_size > 1000
    saved = json.loads((tmp_path / "split/config.json").read_text())
    assert saved["model"]["kwargs"]["features"] == [4, 8]
    assert saved["provenance"]["method"].startswith("train ")  # dustjax.provenance
    best = min(rows, key=lambda r: r["val_loss"])["epoch"]
    assert resumed["best_checkpoint_step"] == best
    # the map is worth checking: it beats predicting zero on the validation cubes (issue 19;
    # vnet_test used to predict exactly 0 everywhere, which no train -> apply test could catch)
    from dustjax.vnet.data import simulate_source

    model, variables, saved_config = train.load_trained(tmp_path / "full", "best")
    predict = train.make_predict_fn(model, variables)
    mse, zero = [], []
    seed = int(saved_config.seed)
    for batch in simulate_source(saved_config, "validation", batch_size=4, seed=seed, epoch=0,
                                 train=False):  # fmt: skip
        truth = np.asarray(batch["density"])
        mse.append(np.mean((np.asarray(predict(batch["extinction"])) - truth) ** 2))
        zero.append(np.mean(truth**2))
    assert np.mean(mse) < 0.9 * np.mean(zero), (np.mean(mse), np.mean(zero))

    from dustjax.vnet.evaluate import evaluate

    out = evaluate(tmp_path / "full")
    assert out["num_cubes"] == 8  # the simulated test split of vnet_test
    assert np.isfinite(out["residual_mag_per_pc"]["dispersion"])
    assert len(out["c_r_table"]["k"]) > 5
    for name in ("test_metrics.json", "pdf.png", "scatter.png", "cross_correlation.png"):
        assert (tmp_path / "full/eval" / name).exists()
    # the prediction averaged over the symmetries of the training data (lognormal, with its disc
    # along Z: the Y flip only; the dihedral group is refused): its own directory; a different
    # prediction (the network is not equivariant), but the same truth
    with pytest.raises(ValueError, match="symmetric under 'flip_y' only"):
        evaluate(tmp_path / "full", symmetry="dihedral")
    sym = evaluate(tmp_path / "full", symmetry="flip_y")
    assert sym["symmetry"] == "flip_y" and (tmp_path / "full/eval_flip_y/pdf.png").exists()
    assert sym["num_cubes"] == out["num_cubes"] and sym["loss_eq3"] != out["loss_eq3"]
    assert json.loads((tmp_path / "full/eval/test_metrics.json").read_text())["symmetry"] == "none"
    # batch-norm statistics recomputed from training batches: their own directory, and the same
    # numbers as the running averages only by accident
    pop = evaluate(tmp_path / "full", bn_stats="population", bn_batches=2)
    assert pop["bn_stats"] == "population of 2 batches" and out["bn_stats"] == "running"
    assert (tmp_path / "full/eval_popbn/test_metrics.json").exists()
    assert np.isfinite(pop["loss_eq3"]) and pop["loss_eq3"] != out["loss_eq3"]
    with pytest.raises(ValueError, match="bn_batches must be >= 1"):
        evaluate(tmp_path / "full", bn_stats="population", bn_batches=0)


def test_population_batch_stats_of_one_batch_give_the_training_mode_output():
    """Known answers: with the statistics of batch x, evaluation mode on x is training mode on x
    (every layer then normalises by exactly what it saw in training); over two batches each
    statistic is the mean of the two batches' (so the stale running averages play no part)."""
    from dustjax.models.vnet import VNet

    model = VNet(features=(2, 4))
    x = jax.random.uniform(jax.random.key(1), (4, 8, 8, 8, 1))
    y = jax.random.uniform(jax.random.key(2), (4, 8, 8, 8, 1)) ** 2
    v = model.init(jax.random.key(0), x)
    leaves, tree = jax.tree.flatten(v["params"])  # moved off the init
    keys = jax.random.split(jax.random.key(3), len(leaves))
    params = jax.tree.unflatten(
        tree, [p + 0.1 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys, strict=True)]
    )
    stale = jax.tree.map(lambda s: s * 0 + 7.0, v["batch_stats"])
    variables = {"params": params, "batch_stats": stale}
    trained, _ = model.apply(variables, x, train=True, mutable=["batch_stats"])
    stats_x = train.population_batch_stats(model, variables, [x])
    evaluated = model.apply({"params": params, "batch_stats": stats_x}, x, train=False)
    np.testing.assert_allclose(np.asarray(evaluated), np.asarray(trained), atol=1e-5)
    assert not np.allclose(np.asarray(model.apply(variables, x, train=False)), np.asarray(trained))
    stats_y = train.population_batch_stats(model, variables, [y])
    both = train.population_batch_stats(model, variables, [x, y])
    for a, b, ab in zip(*(jax.tree.leaves(t) for t in (stats_x, stats_y, both)), strict=True):
        np.testing.assert_allclose(np.asarray(ab), (np.asarray(a) + np.asarray(b)) / 2, rtol=1e-5)
    with pytest.raises(ValueError, match="at least one batch"):
        train.population_batch_stats(model, variables, [])


def test_early_stopping_and_finished_runs_do_not_retrain(tmp_path):
    config = _random_config()
    config.num_epochs = 30
    config.early_stopping.patience = 2
    config.early_stopping.min_delta = 1e3  # no later epoch counts as an improvement
    summary = train.train_and_evaluate(config, tmp_path)
    assert summary["epochs_run"] == 3 and summary["stop_reason"].startswith("early stop")
    again = train.train_and_evaluate(config, tmp_path)
    assert again["epochs_run"] == 3


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    config = _random_config(nan_at_epoch=2)
    config.num_epochs = 3
    config.log_every_steps = 1
    with pytest.raises(train.NonFiniteLossError, match=r"step 4 \(epoch 2\).*epoch 1"):
        train.train_and_evaluate(config, tmp_path)
    manager = workdir.checkpoint_manager(tmp_path, read_only=True)
    assert manager.latest_step() == 1
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1


def test_collapse_guard_rolls_back_to_the_best_weights_and_keeps_the_counters(
    tmp_path, monkeypatch
):
    """A validation loss above factor x the best restores the best epoch's weights and Adam
    moments, keeps the step and optimiser counts (the schedule goes on), and a run interrupted
    after the rollback resumes to the same end."""

    real = steps.evaluate_loss
    spike = {"epoch": 0}

    def spiking(eval_step, state, *args, **kwargs):
        loss = real(eval_step, state, *args, **kwargs)
        epoch = int(state.step) // 3  # the epoch that just ended (3 steps an epoch)
        return 100.0 * loss if epoch == spike["epoch"] else loss

    monkeypatch.setattr(loop, "evaluate_loss", spiking)
    config = _random_config()
    config.collapse_guard.factor = 3.0
    config.collapse_guard.train_factor = 0.0  # any validation spike counts as a collapse
    config.num_epochs = 1
    train.train_and_evaluate(config, tmp_path / "one")
    first = _latest_params(tmp_path / "one")

    spike["epoch"] = 2
    config.num_epochs = 2
    train.train_and_evaluate(config, tmp_path / "split")
    rows = [json.loads(x) for x in (tmp_path / "split/metrics.jsonl").read_text().splitlines()]
    assert rows[1]["rolled_back_to_epoch"] == 1 and "rolled_back_to_epoch" not in rows[0]
    _, rolled, _ = train.load_trained(tmp_path / "split", "latest")
    for x, y in zip(jax.tree.leaves(first), jax.tree.leaves(rolled), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))  # epoch 1's weights
    assert workdir.checkpoint_manager(tmp_path / "split", read_only=True).best_step() == 1

    model = steps.build_model(config)
    example = jax.numpy.zeros((1, *config.data.shape, 1))
    state = steps.create_train_state(model, optim.make_optimizer(config, 3), example,
                                     jax.random.key(0), sharding.make_mesh(1))  # fmt: skip
    manager = workdir.checkpoint_manager(tmp_path / "split", read_only=True)
    restored, loop_state = workdir.restore_checkpoint(manager, 2, state)
    assert int(restored.step) == 6 and loop_state["rollbacks"] == 1  # two epochs of steps, not one
    counts = [int(c) for c in jax.tree.leaves(restored.opt_state)
              if np.issubdtype(np.asarray(c).dtype, np.integer)]  # fmt: skip
    assert counts and all(c == 6 for c in counts), counts
    assert not isinstance(restored.opt_state, optax.EmptyState)

    config.num_epochs = 3
    train.train_and_evaluate(config, tmp_path / "split")  # resumed after the rollback
    train.train_and_evaluate(config, tmp_path / "full")  # the same, uninterrupted
    a, b = _latest_params(tmp_path / "split"), _latest_params(tmp_path / "full")
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_collapse_verdict_tells_a_collapse_from_a_validation_spike():
    """Known answers: below `factor` nothing; above it a collapse only if the training loss rose
    above `train_factor` x its lowest; train_factor 0 makes every spike a collapse; the replay
    of a recorded curve marks what follows the first collapse."""
    settings = dict(factor=3.0, train_factor=1.3)
    verdict = functools.partial(guard.collapse_verdict, settings, best_val_loss=1.0,
                                best_train_loss=1.0)  # fmt: skip
    assert verdict(val_loss=2.9, train_loss=5.0) == ""
    assert verdict(val_loss=3.1, train_loss=1.29) == "validation"
    assert verdict(val_loss=3.1, train_loss=1.31) == "collapse"
    every = functools.partial(guard.collapse_verdict, dict(factor=3.0, train_factor=0.0),
                              best_val_loss=1.0, best_train_loss=1.0)  # fmt: skip
    assert every(val_loss=3.1, train_loss=1.0) == "collapse"
    off = functools.partial(guard.collapse_verdict, dict(factor=0.0), best_val_loss=1.0,
                            best_train_loss=1.0)  # fmt: skip
    assert off(val_loss=1e9, train_loss=1e9) == ""
    # a loss that can be negative (beta-NLL): "3 x the best" is a rise of 2 |best| above it, so
    # an epoch slightly short of the best (-0.11 after -0.14) is no spike (it was: 3 x -0.14 <
    # -0.11 rolled run 8 back five times), a jump to +0.2 is
    negative = functools.partial(guard.collapse_verdict, settings, best_val_loss=-0.14,
                                 best_train_loss=-0.10)  # fmt: skip
    assert negative(val_loss=-0.11, train_loss=-0.09) == ""
    assert negative(val_loss=0.2, train_loss=-0.09) == "validation"  # train rose < 0.3 |best|
    assert negative(val_loss=0.2, train_loss=-0.06) == "collapse"
    losses = [(4.0, 5.0), (2.0, 2.0), (2.0, 7.0), (2.1, 1.9), (3.0, 6.5), (2.0, 1.8)]
    rows = [dict(epoch=e, train_loss=t, val_loss=v) for e, (t, v) in enumerate(losses, 1)]
    events = guard.replay_collapse_guard(rows, settings)
    assert [(e["epoch"], e["verdict"], e["after_collapse"]) for e in events] == [
        (3, "validation", False),  # val 7 > 3 x 2, train 2 = its lowest
        (5, "collapse", False),  # val 6.5 > 3 x 2, train 3 > 1.3 x 2
    ]
    assert events[1]["val_ratio"] == pytest.approx(6.5 / 1.9)
    assert events[1]["train_ratio"] == pytest.approx(3.0 / 2.0)


def test_a_validation_only_spike_is_not_rolled_back(tmp_path, monkeypatch):
    """With the default train_factor a validation spike whose training loss is normal is marked
    and left alone: no rollback, the weights train on, the best checkpoint stays."""
    real = steps.evaluate_loss

    def spiking(eval_step, state, *args, **kwargs):
        loss = real(eval_step, state, *args, **kwargs)
        return 100.0 * loss if int(state.step) // 3 == 2 else loss

    monkeypatch.setattr(loop, "evaluate_loss", spiking)
    config = _random_config()
    config.collapse_guard.factor = 3.0
    config.num_epochs = 1
    train.train_and_evaluate(config, tmp_path / "run")
    first = _latest_params(tmp_path / "run")
    config.num_epochs = 2
    train.train_and_evaluate(config, tmp_path / "run")
    rows = [json.loads(x) for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert rows[1].get("validation_spike") is True and "rolled_back_to_epoch" not in rows[1]
    second = _latest_params(tmp_path / "run")
    pairs = zip(jax.tree.leaves(first), jax.tree.leaves(second), strict=True)
    assert any(not np.array_equal(np.asarray(x), np.asarray(y)) for x, y in pairs)
    assert workdir.checkpoint_manager(tmp_path / "run", read_only=True).best_step() == 1


def _checker(shape, axes):
    """(-1)^(sum of the indices along `axes`) on a (1, *shape, 1) grid."""
    idx = np.indices(shape)
    return ((-1.0) ** sum(idx[a] for a in axes))[None, ..., None].astype(np.float32)


def test_gradient_mse_known_answers():
    zero = np.zeros((1, 6, 6, 6, 1), np.float32)
    a = 0.5
    # the corner mode: every difference is 2a on all three axes -> (2a)^2 / 2 = 2 a^2
    corner = a * _checker((6, 6, 6), (0, 1, 2))
    np.testing.assert_allclose(tasks.gradient_mse_per_example(corner, zero), [2 * a**2], rtol=1e-6)
    np.testing.assert_allclose(tasks.h1_per_example(corner, zero), [3 * a**2], rtol=1e-6)
    # the Nyquist mode of one axis: 2a^2 on that axis, 0 on the other two
    axis = a * _checker((6, 6, 6), (0,))
    got = tasks.gradient_mse_per_example(axis, zero)
    np.testing.assert_allclose(got, [2 * a**2 / 3], rtol=1e-6)
    # an error smooth on the cell scale costs nothing beyond the MSE
    offset = np.full_like(zero, a)
    np.testing.assert_allclose(tasks.gradient_mse_per_example(offset, zero), [0.0], atol=1e-12)
    np.testing.assert_allclose(
        tasks.h1_per_example(offset, zero, gradient_weight=5.0),
        tasks.mse_per_example(offset, zero),
        rtol=1e-6,
    )
    # white noise: its variance, as from the MSE (2-D images work too)
    noise = np.random.default_rng(0).normal(0.0, 0.3, size=(2, 256, 256, 1)).astype(np.float32)
    got = tasks.gradient_mse_per_example(noise, np.zeros_like(noise))
    np.testing.assert_allclose(got, [0.09, 0.09], rtol=0.02)
    with pytest.raises(ValueError, match="no spatial axes"):
        tasks.gradient_mse_per_example(np.zeros((3, 1)), np.zeros((3, 1)))


def test_h1_task_trains_through_the_engine(tmp_path):
    c = _random_config()
    c.task = "density_from_extinction_h1"
    c.num_epochs = 1
    summary = train.train_and_evaluate(c, tmp_path / "wd")
    assert summary["epochs_run"] == 1 and np.isfinite(summary["best_val_loss"])
    assert train.get_task(c.task).per_example_loss is tasks.h1_per_example


def test_old_layout_checkpoint_gets_a_hint(tmp_path):
    """A workdir written with flax's default kernel layouts (before 2026-11-22) is read by the
    current model only with up_transpose_kernel=False and conv_kernel_layout='DHWIO'; the error
    says so."""
    import json

    config = _random_config()
    config.num_epochs = 1
    config.model.kwargs.up_transpose_kernel = False
    config.model.kwargs.conv_kernel_layout = "DHWIO"
    train.train_and_evaluate(config, tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    kwargs = saved["model"]["kwargs"]
    for key, old, new in (
        ("up_transpose_kernel", False, True),
        ("conv_kernel_layout", "DHWIO", "ODHWI"),
    ):
        kwargs[key] = new  # as the current default would build
        (tmp_path / "config.json").write_text(json.dumps(saved))
        with pytest.raises(ValueError) as err:
            train.load_trained(tmp_path, "latest")
        # told from the stored shapes before the restore starts (a failed orbax restore leaves
        # asyncio callbacks that spill tracebacks at exit), naming an array and both shapes
        assert re.search(
            r"params/\S+/kernel is stored with shape \(.*\), the model wants", str(err.value)
        )
        assert re.search("up_transpose_kernel=False.*conv_kernel_layout='DHWIO'", str(err.value))
        kwargs[key] = old
    (tmp_path / "config.json").write_text(json.dumps(saved))
    train.load_trained(tmp_path, "latest")


def test_missing_dataset_names_the_make_command(tmp_path):
    config = _random_config()
    config.data.source = "tfrecord"
    config.data.data_dir = str(tmp_path / "nothing")
    with pytest.raises(Exception, match="make data REGION=SR"):
        train.train_and_evaluate(config, tmp_path / "run")


def test_reduce_on_plateau_schedule_accepts_the_loss():
    import jax.numpy as jnp

    config = _random_config()
    config.schedule.name = "reduce_on_plateau"
    tx = optim.make_optimizer(config, steps_per_epoch=3)
    params = {"w": jnp.ones(3)}
    state = tx.init(params)
    updates, state = tx.update({"w": jnp.ones(3)}, state, params, value=jnp.asarray(1.0))
    assert updates["w"].shape == (3,)


SHARDING_SCRIPT = textwrap.dedent(
    """
    import os
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P
    import optax
    from dustjax import sharding
    from dustjax import training as train
    from dustjax.training import steps
    from dustjax.models import VNet
    assert jax.device_count() == 4
    model = VNet(features=(2, 4))
    rng = np.random.default_rng(0)
    ext = rng.uniform(0, 1, (8, 8, 8, 8, 1)).astype(np.float32)
    batch = {"extinction": ext, "density": np.sqrt(ext) * 3}
    task = train.Task()
    out, hlo = {}, {}
    for n in (1, 4):
        mesh = sharding.make_mesh(n)
        tx = optax.adam(1e-3)
        state = steps.create_train_state(model, tx, jnp.asarray(ext[:1]), jax.random.key(0), mesh)
        rep = NamedSharding(mesh, P())
        data = NamedSharding(mesh, P("data"))
        fn = jax.jit(steps.make_loss_and_grads(task), in_shardings=(
            jax.tree.map(lambda _: rep, state), data, rep))
        sharded = jax.device_put(batch, data)
        assert len(sharded["extinction"].sharding.device_set) == n
        (loss, stats), grads = fn(state, sharded, jax.random.key(1))
        out[n] = (float(loss), jax.device_get(grads), jax.device_get(stats))
        step, _ = steps.jit_steps(task, state, mesh)
        compiled = step.lower(state, sharded, jax.random.key(1)).compile()  # compiled once
        hlo[n] = compiled.as_text()
        new_state, metrics = compiled(state, sharded, jax.random.key(1))
        new_state, metrics = compiled(new_state, sharded, jax.random.key(2))
        out[n] += (float(metrics["loss"]), jax.device_get(new_state.params))
    # ZeRO-1: Adam moments split over the 4 devices; two steps give the replicated result.
    mesh = sharding.make_mesh(4)
    state = steps.create_train_state(model, optax.adam(1e-3), jnp.asarray(ext[:1]),
                                     jax.random.key(0), mesh, shard_optimizer_state=True)
    mu = state.opt_state[0].mu
    split = [x for x in jax.tree.leaves(mu) if not x.sharding.is_fully_replicated]
    assert split and all(x.addressable_shards[0].data.size * 4 == x.size for x in split), mu
    assert jax.tree.leaves(state.params)[0].sharding.is_fully_replicated
    step, _ = steps.jit_steps(task, state, mesh)
    sharded = jax.device_put(batch, NamedSharding(mesh, P("data")))
    zstate, _ = step(state, sharded, jax.random.key(1))
    zstate, zmetrics = step(zstate, sharded, jax.random.key(2))
    assert all(x.sharding.is_fully_replicated for x in jax.tree.leaves(zstate.params))
    assert len(split) == sum(not x.sharding.is_fully_replicated
                             for x in jax.tree.leaves(zstate.opt_state[0].mu))
    np.testing.assert_allclose(float(zmetrics["loss"]), out[4][3], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(out[4][4]), jax.tree.leaves(jax.device_get(zstate.params))):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(out[1][0], out[4][0], rtol=1e-5)
    np.testing.assert_allclose(out[1][3], out[4][3], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(out[1][1]), jax.tree.leaves(out[4][1])):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-6)
    for a, b in zip(jax.tree.leaves(out[1][2]), jax.tree.leaves(out[4][2])):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    # Batch norm per device's shard (bn_groups=4): one device with 4 groups computes what 4
    # devices compute (that it differs from whole-batch statistics: tests/test_norm.py).
    grouped = {}
    for n in (1, 4):
        mesh = sharding.make_mesh(n)
        state = steps.create_train_state(VNet(features=(2, 4), bn_groups=4), optax.adam(1e-3),
                                         jnp.asarray(ext[:1]), jax.random.key(0), mesh)
        step, _ = steps.jit_steps(task, state, mesh)
        sharded = jax.device_put(batch, NamedSharding(mesh, P("data")))
        compiled = step.lower(state, sharded, jax.random.key(1)).compile()
        grouped_hlo = compiled.as_text()
        new_state, metrics = compiled(state, sharded, jax.random.key(1))
        grouped[n] = (float(metrics["loss"]), jax.device_get(new_state.params),
                      jax.device_get(new_state.batch_stats))
    # Synchronised batch norm all-reduces its statistics and their gradients in each of the 7
    # layers; per-device statistics leave one (combined) all-reduce of gradients and loss.
    from benchmarks.vnet_collectives import count_collectives
    synced = sum(count_collectives(hlo[4])["counts"]["all-reduce"].values())
    local = sum(count_collectives(grouped_hlo)["counts"]["all-reduce"].values())
    assert synced >= 14 and local <= 2, (synced, local)
    np.testing.assert_allclose(grouped[1][0], grouped[4][0], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(grouped[1][1:]), jax.tree.leaves(grouped[4][1:])):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    # On-device simulation: each device simulates its share, and the cubes do not depend on it.
    from experiments.configs import vnet_test
    config = vnet_test.get_config()
    sims = {}
    for n in (1, 4):
        config.num_devices = n
        source = train.get_data_source("simulate")
        sim = next(iter(source(config, "train", batch_size=4, seed=0, epoch=1, train=True)))
        assert len(sim["extinction"].sharding.device_set) == n
        assert sim["extinction"].addressable_shards[0].data.shape[0] == 4 // n
        sims[n] = jax.device_get(sim)
    for key in sims[1]:
        np.testing.assert_allclose(sims[1][key], sims[4][key], rtol=1e-6, atol=1e-9)
    assert float(np.std(sims[1]["density"])) > 0
    try:
        sharding.check_batch_size(6, sharding.make_mesh(4))
    except ValueError as err:
        assert "does not divide over the 4 devices" in str(err), err
    else:
        raise AssertionError("batch 6 on 4 devices accepted")
    print("SHARDING OK", out[1][0], out[4][0])
    """
)


def test_sharded_step_matches_one_device():
    """On 4 fake CPU devices the loss, gradients and batch statistics equal one device's;
    splitting the Adam moments over the devices (ZeRO-1) gives the replicated run's parameters;
    per-device batch norm (bn_groups=4) equals one device with 4 groups and drops the layers'
    all-reduces; the simulated batches are split over the devices and equal one device's."""
    env = dict(
        os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu"
    )
    proc = subprocess.run(
        [sys.executable, "-c", SHARDING_SCRIPT], capture_output=True, text=True, env=env,
        cwd=REPO, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "SHARDING OK" in proc.stdout


def test_cli_rejects_an_unknown_config_key(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.train", "--config=experiments/configs/vnet_test.py",
         "--config.optimizer.learnin_rate=0.1", f"--workdir={tmp_path}"],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "learnin_rate" in proc.stderr


def test_default_config_choice():
    from experiments.configs import CONFIG_DIR, default_config_names

    assert default_config_names("vnet", "LR", accelerator=True) == ["vnet_lr"]
    assert default_config_names("vnet", "LR", accelerator=False) == ["vnet_lr_cpu"]
    for region in ("sr", "lr"):
        for suffix in ("", "_cpu"):
            assert (CONFIG_DIR / f"vnet_{region}{suffix}.py").exists()


def test_config_values_no_run_can_use_are_refused_before_anything_is_written(tmp_path):
    """Issue 19 (4): num_epochs=-1 used to run, exit 0 and write "best_val_loss": Infinity."""
    for key, value in (
        ("num_epochs", -1),
        ("num_epochs", 0),
        ("batch_size", 0),
        ("eval_batch_size", -2),
        ("optimizer.learning_rate", 0.0),
        ("optimizer.learning_rate", -1e-3),
        ("optimizer.learning_rate", float("nan")),
    ):
        config = _random_config()
        parent, _, leaf = ("." + key).rpartition(".")
        (config if not parent else config[parent[1:]])[leaf] = value
        with pytest.raises(ValueError, match=rf"^config\.{re.escape(key)} = .*: must be") as err:
            train.train_and_evaluate(config, tmp_path / "wd")
        assert "\n" not in str(err.value)
        assert not (tmp_path / "wd").exists()
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.train", "--config=experiments/configs/vnet_test.py",
         "--config.num_epochs=-1", f"--workdir={tmp_path / 'cli'}"],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "error: config.num_epochs = -1: must be an integer >= 1" in proc.stderr
    assert not (tmp_path / "cli").exists()


def test_json_files_hold_strict_json():
    """NaN and infinities become null (json.dumps would write NaN / Infinity, not JSON)."""
    from dustjax import io as dio

    def strict(text):
        def refuse(name):
            raise ValueError(f"not JSON: {name}")

        return json.loads(text, parse_constant=refuse)

    obj = {"best": float("inf"), "x": np.float32("nan"), "v": [1.5, -np.inf], "a": np.ones(2)}
    assert strict(dio.dumps_json(obj)) == {"best": None, "x": None, "v": [1.5, None], "a": [1, 1]}


def test_a_refused_run_leaves_the_workdir_config_untouched(tmp_path):
    """Issue 19 (5): a run refused because the workdir's checkpoint is of another model size used
    to have replaced config.json already, so the old run no longer loaded."""
    config = _random_config()
    config.num_epochs = 1
    train.train_and_evaluate(config, tmp_path)
    before = (tmp_path / "config.json").read_bytes()
    metrics = (tmp_path / "metrics.jsonl").read_bytes()
    bigger = _random_config()
    bigger.num_epochs = 2
    bigger.model.kwargs.features = (4, 8)
    with pytest.raises(ValueError, match="does not fit this model"):
        train.train_and_evaluate(bigger, tmp_path)
    assert (tmp_path / "config.json").read_bytes() == before
    assert (tmp_path / "metrics.jsonl").read_bytes() == metrics
    train.load_trained(tmp_path, "latest")  # the old run still loads


def test_time_budget_stops_a_call_and_a_later_call_goes_on(tmp_path):
    config = _random_config()
    config.num_epochs = 3
    config.max_train_seconds = 1e-9  # counted from the end of epoch 1: spent by that of epoch 2
    config.plot_every_epochs = 0  # the loss curve only at the end
    summary = train.train_and_evaluate(config, tmp_path)
    assert summary["epochs_run"] == 2 and summary["stop_reason"].startswith("time budget")
    assert (tmp_path / "loss_curve.png").exists()
    config.max_train_seconds = 0.0  # the budget is per call, not kept in the checkpoint
    again = train.train_and_evaluate(config, tmp_path)
    assert again["epochs_run"] == 3 and again["stop_reason"] == "reached num_epochs=3"
    config.max_train_seconds = -1.0
    with pytest.raises(ValueError, match="max_train_seconds"):
        train.train_and_evaluate(config, tmp_path / "refused")


def test_a_deadline_stops_before_the_epoch_that_would_pass_it(tmp_path):
    import time

    config = _random_config()
    config.num_epochs = 3
    config.plot_every_epochs = 0
    config.stop_before_unix = time.time() + 1e-3  # epoch 1 runs; epoch 2 would end after it
    summary = train.train_and_evaluate(config, tmp_path)
    assert summary["epochs_run"] == 1 and "stop_before_unix" in summary["stop_reason"]
    config.stop_before_unix = time.time() + 3600.0  # a later call with room goes on to the end
    again = train.train_and_evaluate(config, tmp_path)
    assert again["epochs_run"] == 3 and again["stop_reason"] == "reached num_epochs=3"
    config.stop_before_unix = -5.0
    with pytest.raises(ValueError, match="stop_before_unix"):
        train.train_and_evaluate(config, tmp_path / "refused")


def test_params_ema_follows_the_warmed_up_recursion_and_leaves_the_updates_alone():
    """optim.params_ema against the recursion written out by hand on a quadratic with SGD."""
    tx = optax.chain(optax.sgd(0.1), optim.params_ema(0.9))
    params = {"w": np.array([1.0, -2.0], np.float32)}
    state = tx.init(params)
    ema = np.array(params["w"], np.float64)
    sgd = optax.sgd(0.1)
    plain_state = sgd.init(params)
    for t in range(30):
        grads = {"w": 2 * params["w"]}  # d/dw of |w|^2
        updates, state = tx.update(grads, state, params)
        plain, plain_state = sgd.update(grads, plain_state, params)
        np.testing.assert_array_equal(updates["w"], plain["w"])  # the updates pass unchanged
        params = optax.apply_updates(params, updates)
        d = min(0.9, (1 + t) / (10 + t))
        ema = d * ema + (1 - d) * np.asarray(params["w"], np.float64)
    np.testing.assert_allclose(optim.ema_params(state)["w"], ema, rtol=1e-5)
    assert optim.ema_params(optax.sgd(0.1).init(params)) is None
    with pytest.raises(ValueError, match="ema_decay must lie in"):
        optim.params_ema(1.0)


def test_a_run_with_ema_evaluates_and_predicts_with_the_average(tmp_path):
    """config.optimizer.ema_decay: the validation loss, the best checkpoint and `load_trained`
    use the averaged weights, which differ from the trained ones and are saved with the run."""
    config = _random_config()
    config.num_epochs = 2
    config.optimizer.ema_decay = 0.5
    out = train.train_and_evaluate(config, tmp_path / "ema")
    model, variables, saved = train.load_trained(tmp_path / "ema", "latest")
    assert saved.optimizer.ema_decay == 0.5
    # the raw trained weights from the same checkpoint, through the optimiser-free route
    manager = workdir.checkpoint_manager(tmp_path / "ema", read_only=True)
    try:
        tx = optim.make_optimizer(saved, 1)
        example = jax.ShapeDtypeStruct((1, *saved.data.shape, 1), np.float32)
        abstract = steps.abstract_train_state(model, tx, example, sharding.make_mesh(1))
        state, _ = workdir.restore_checkpoint(manager, manager.latest_step(), abstract)
    finally:
        manager.close()
    avg = optim.ema_params(state.opt_state)
    for a, b in zip(jax.tree.leaves(variables["params"]), jax.tree.leaves(avg), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert any(
        not np.array_equal(np.asarray(a), np.asarray(b))
        for a, b in zip(jax.tree.leaves(avg), jax.tree.leaves(state.params), strict=True)
    )
    # the reported validation loss of the last epoch is the averaged weights' loss
    task = tasks.get_task(saved.get("task", tasks.DEFAULT_TASK))
    _, eval_step = steps.jit_steps(task, jax.device_put(state), sharding.make_mesh(1))
    batches = _random_source(saved, "validation", batch_size=saved.batch_size, seed=saved.seed,
                             epoch=0, train=False)  # fmt: skip
    loss = steps.evaluate_loss(eval_step, state, batches, saved.batch_size, sharding.make_mesh(1))
    rows = [json.loads(x) for x in (tmp_path / "ema/metrics.jsonl").read_text().splitlines()]
    assert loss == pytest.approx(rows[-1]["val_loss"], rel=1e-5)
    assert out["epochs_run"] == 2


def test_population_stats_are_stored_for_their_checkpoint_and_used_only_for_it(tmp_path):
    """write_population_stats stores the statistics of the best checkpoint over the given batches
    (the same numbers as population_batch_stats computed directly); load_trained uses them for
    that checkpoint ("auto", "population"), keeps the running averages on "running", and ignores
    a file written for another epoch; "population" without a file is an error."""
    config = _random_config()
    config.num_epochs = 2
    train.train_and_evaluate(config, tmp_path)
    rng = np.random.default_rng(5)
    xs = [rng.uniform(0, 1, size=(4, 8, 8, 8, 1)).astype(np.float32) for _ in range(3)]
    with pytest.raises(FileNotFoundError, match="no population batch-norm statistics"):
        train.load_trained(tmp_path, bn_stats="population")
    model, running, _ = train.load_trained(tmp_path, bn_stats="running")
    expected = train.population_batch_stats(model, running, xs)
    res = train.write_population_stats(tmp_path, iter(xs))
    assert res == {"epoch": train.checkpoint_step(tmp_path), "num_batches": 3}
    for how in ("auto", "population"):
        _, loaded, _ = train.load_trained(tmp_path, bn_stats=how)
        for a, b in zip(jax.tree.leaves(loaded["batch_stats"]), jax.tree.leaves(expected),
                        strict=True):  # fmt: skip
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6)
        assert jax.tree.structure(loaded["batch_stats"]) == jax.tree.structure(
            running["batch_stats"]
        )
    _, again, _ = train.load_trained(tmp_path, bn_stats="running")
    for a, b in zip(jax.tree.leaves(again["batch_stats"]), jax.tree.leaves(running["batch_stats"]),
                    strict=True):  # fmt: skip
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not all(
        np.allclose(np.asarray(a), np.asarray(b))
        for a, b in zip(
            jax.tree.leaves(expected), jax.tree.leaves(running["batch_stats"]), strict=True
        )  # fmt: skip
    )
    # statistics of another epoch (a later training moved the best checkpoint): not used
    from flax import serialization

    path = tmp_path / train.inference.POPULATION_STATS_FILE
    blob = serialization.msgpack_restore(path.read_bytes())
    blob["epoch"] = blob["epoch"] + 7
    path.write_bytes(serialization.msgpack_serialize(blob))
    _, stale, _ = train.load_trained(tmp_path)
    for a, b in zip(jax.tree.leaves(stale["batch_stats"]), jax.tree.leaves(running["batch_stats"]),
                    strict=True):  # fmt: skip
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(ValueError, match="bn_stats must be one of"):
        train.load_trained(tmp_path, bn_stats="precise")

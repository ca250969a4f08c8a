r"""Images per second of the POLARIS U-Net: training steps and prediction, any device.

    python -m benchmarks.unet_throughput --out=bench/unet_cpu --image_size=64 --batch_size=8 \
        --models=unet --base_features=16 --levels=3 --steps=5          # CPU (minutes)
    python -m benchmarks.unet_throughput --out=bench/unet_h200                  # one H200

Times the engine's own jitted train step (`dustjax.training.steps.make_train_step` on the
"polaris" task: dihedral augmentation, forward, MSE, backward, Adam) and the jitted prediction, on
random (B, S, S, 1) batches, after a warm-up (compilation excluded); FLOPs per step come from XLA's
cost analysis of the compiled step, and the achieved FLOP/s is given as a fraction of the device's
dense bf16 peak (H200/H100 SXM: 989 TFLOP/s; unknown devices: no fraction). Writes
``<out>/unet_throughput.json`` and ``<out>/unet_throughput.png`` and prints a table.
"""

from __future__ import annotations

import time

from absl import app, flags

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Define the command-line flags (only when run as a program, so that importing this module
    for its library function never collides with the flags of other entry points)."""
    flags.DEFINE_string("out", "bench/unet", "Output directory.")
    flags.DEFINE_list("models", ["unet", "unet_kan_branch", "knet", "ukan"], "Registered models.")
    flags.DEFINE_integer("image_size", 128, "Crop side in pixels.")
    flags.DEFINE_integer("batch_size", 32, "Images per step.")
    flags.DEFINE_integer("levels", 4, "U-Net levels (ukan uses levels + 1 with 3 KAN levels).")
    flags.DEFINE_integer("base_features", 64, "Base filters.")
    flags.DEFINE_integer("steps", 20, "Timed steps per measurement.")
    flags.DEFINE_enum("dtype", "auto", ["auto", "float32", "bfloat16"], "Compute dtype.")


PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12}  # dense, no sparsity


def _peak(device_kind: str):
    for name, peak in PEAK_BF16.items():
        if name in device_kind:
            return peak
    return None


def _flops(compiled) -> float:
    cost = compiled.cost_analysis()
    if isinstance(cost, list):
        cost = cost[0] if cost else {}
    return float((cost or {}).get("flops", 0.0))


def bench_model(name, *, image_size, batch_size, levels, base_features, steps, dtype) -> dict:
    import jax
    import jax.numpy as jnp
    import ml_collections
    import numpy as np

    from dustjax.polaris.data import INPUT_KEY, TARGET_KEY
    from dustjax.sharding import make_mesh
    from dustjax.training.optim import make_optimizer
    from dustjax.training.steps import (
        build_model,
        create_train_state,
        jit_steps,
        resolve_compute_dtype,
    )
    from dustjax.training.tasks import get_task

    kwargs = dict(levels=levels, base_features=base_features)
    if name == "ukan":
        kwargs.update(levels=levels + 1, kan_levels=3)
    config = ml_collections.ConfigDict(
        dict(model=dict(name=name, kwargs=kwargs), compute_dtype=dtype,
             optimizer=dict(name="adam", learning_rate=1e-3), schedule=dict(name="constant"))
    )  # fmt: skip
    model = build_model(config)
    task = get_task("polaris")
    mesh = make_mesh(1)
    tx = make_optimizer(config, 1)
    rng = np.random.default_rng(0)
    shape = (batch_size, image_size, image_size, 1)
    batch = {
        INPUT_KEY: jnp.asarray(rng.normal(size=shape), jnp.float32),
        TARGET_KEY: jnp.asarray(rng.normal(size=shape), jnp.float32),
    }
    state = create_train_state(model, tx, batch[INPUT_KEY][:1], jax.random.key(0),
                                     mesh)  # fmt: skip
    num_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
    train_step, _ = jit_steps(task, state, mesh)
    step_rng = jax.random.key(1)
    flops_train = _flops(train_step.lower(state, batch, step_rng).compile())
    for _ in range(2):
        state, metrics = train_step(state, batch, step_rng)
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for _ in range(steps):
        state, metrics = train_step(state, batch, step_rng)
    jax.block_until_ready(metrics)
    train_s = (time.perf_counter() - start) / steps

    variables = {"params": state.params, "batch_stats": state.batch_stats}
    predict = jax.jit(lambda v, x: model.apply(v, x, train=False))
    flops_predict = _flops(predict.lower(variables, batch[INPUT_KEY]).compile())
    out = predict(variables, batch[INPUT_KEY]).block_until_ready()
    start = time.perf_counter()
    for _ in range(steps):
        out = predict(variables, batch[INPUT_KEY])
    out.block_until_ready()
    predict_s = (time.perf_counter() - start) / steps
    device = jax.devices()[0]
    peak = _peak(device.device_kind)
    row = dict(
        model=name, params=num_params, image_size=image_size, batch_size=batch_size,
        compute_dtype=jnp.dtype(resolve_compute_dtype(dtype)).name,
        train_images_per_s=batch_size / train_s, predict_images_per_s=batch_size / predict_s,
        train_step_ms=1e3 * train_s, predict_step_ms=1e3 * predict_s,
        train_tflops=flops_train / train_s / 1e12, predict_tflops=flops_predict / predict_s / 1e12,
        device=device.device_kind, backend=jax.default_backend(),
    )  # fmt: skip
    if peak:
        row["train_fraction_of_bf16_peak"] = flops_train / train_s / peak
        row["predict_fraction_of_bf16_peak"] = flops_predict / predict_s / peak
    return row


def _flag_text(value) -> str:
    return ",".join(value) if isinstance(value, list) else str(value)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    import datetime

    import jax

    from dustjax import io as dio
    from dustjax.plots import pyplot, save_figure

    out = dio.ensure_writable_dir(FLAGS.out)
    rows = []
    for name in FLAGS.models:
        rows.append(bench_model(
            name, image_size=FLAGS.image_size, batch_size=FLAGS.batch_size, levels=FLAGS.levels,
            base_features=FLAGS.base_features, steps=FLAGS.steps, dtype=FLAGS.dtype,
        ))  # fmt: skip
        print(rows[-1])
    result = dict(
        date=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        jax=jax.__version__, device=jax.devices()[0].device_kind, rows=rows,
        command="python -m benchmarks.unet_throughput " + " ".join(
            f"--{k}={_flag_text(FLAGS[k].value)}"
            for k in ("out", "models", "image_size", "batch_size", "levels", "base_features",
                      "steps", "dtype")),
    )  # fmt: skip
    dio.write_json(out / "unet_throughput.json", result)
    fig, ax = pyplot().subplots(figsize=(7, 4))
    x = range(len(rows))
    ax.bar([i - 0.2 for i in x], [r["train_images_per_s"] for r in rows], 0.4, label="train")
    ax.bar([i + 0.2 for i in x], [r["predict_images_per_s"] for r in rows], 0.4, label="predict")
    ax.set_xticks(list(x), [r["model"] for r in rows])
    ax.set_ylabel(f"images/s ({FLAGS.image_size}^2, batch {FLAGS.batch_size})")
    ax.set_yscale("log")
    ax.legend()
    ax.set_title(f"POLARIS U-Net throughput on {result['device']}")
    save_figure(fig, out / "unet_throughput.png")
    header = f"{'model':<16}{'params':>10}{'train img/s':>13}{'pred img/s':>12}{'train TF/s':>12}"
    header += f"{'% bf16 peak':>13}"
    print("\n" + header)
    for r in rows:
        frac = r.get("train_fraction_of_bf16_peak")
        print(f"{r['model']:<16}{r['params']:>10}{r['train_images_per_s']:>13.1f}"
              f"{r['predict_images_per_s']:>12.1f}{r['train_tflops']:>12.3f}"
              f"{(f'{100 * frac:.1f}' if frac else '-'):>13}")  # fmt: skip
    print(f"results in {out}")


if __name__ == "__main__":
    define_flags()
    app.run(main)

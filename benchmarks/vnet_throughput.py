r"""Training throughput of the paper-size V-net (Chen, Qin & Li sect. 3.1): samples/s, fraction of
the GPU's bf16 peak, and data-parallel scaling.

    python -m benchmarks.vnet_throughput --out=out/bench_vnet                 # all visible GPUs
    python -m benchmarks.vnet_throughput --num_devices=1,2,4 --out=out/bench_vnet
    python -m benchmarks.vnet_throughput --variants=all --xla_variants=default,autotune4
    python -m benchmarks.vnet_throughput --small --out=/tmp/bench          # CPU smoke run

Each row is one variant of the model/step (`--variants`), timed as the real engine's jitted
``train_step`` (dustjax.training: sharded batch, replicated params, donated state, Adam) on a global
batch of ``--batch_size`` per device count (``--scaling=strong``: the global batch fixed, default
32, split over the devices; ``weak``: ``--batch_size`` per device). XLA-flag variants
(`--xla_variants`) need a fresh process each (flags are read when the backend starts): the script
re-runs itself once per flag set and gathers the rows.

FLOPs: the paper model costs about 697 GFLOP per training sample (forward 232 GFLOP counted layer
by layer, backward twice that); `--peak_tflops` (790, an H200's dense bf16) turns samples/s into a
fraction of the peak. The XLA cost analysis of the compiled step is printed too where the backend
reports it (it counts the transposed convolutions' dilated zeros, so it reads higher).

Variants (names in the table):
  base        bf16 compute, reflect padding, reshape max-pool (the engine's default on GPUs)
  f32         float32 compute (the reference without mixed precision)
  zero_pad    "SAME" (zero) padding handled inside cuDNN instead of an explicit reflect pad
  reflect_concat  reflect padding by jnp.pad (three concatenations) instead of the fused pad sum
  up_plain    flax's default transposed-conv kernel layout (runs as a zero-dilated forward conv)
  dhwio       3^3 conv kernels stored (3, 3, 3, c_in, c_out) as flax does (base: (c_out, 3, 3, 3,
              c_in), cuDNN's channels-last order, no weight transposes)
  f32_input   the input and the first conv block in float32 (the rest bfloat16)
  remat       recompute each conv block in the backward pass (less memory, more FLOPs)
  bs64        per-step batch 64 (more work per kernel launch; not the paper's batch)
  zero1       Adam moments split over the devices (ZeRO-1; the same as base on one device)
  bn_local    batch-norm statistics per device's shard of the batch (model bn_groups = devices;
              the same as base on one device): no all-reduces inside the layers
XLA flag sets: default; autotune4 (--xla_gpu_autotune_level=4); lhs (latency-hiding scheduler,
overlaps the gradient all-reduce with the backward pass); cmdbuf_off (no CUDA graphs); nhwc
(--xla_gpu_force_conv_nhwc: channels-last 3D convolutions, see `dustjax.runtime`); nhwc_lhs (both);
nhwc_lhs_split (both, gradient all-reduces combined only up to 32 MB: for overlap on 4 GPUs).
Rows are printed as each flag set's child process produces them (`--child_timeout` bounds each).

Results: one JSON per run and a markdown table in --out (stdout too).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from absl import app, flags

from benchmarks._common import VNET_VARIANTS, build_vnet_step

FLAGS = flags.FLAGS
flags.DEFINE_string("out", "out/bench_vnet", "Directory for results.json and results.md.")
flags.DEFINE_list("num_devices", [], "Device counts to time (default: 1 and all visible).")
flags.DEFINE_list("variants", ["base"], "Model/step variants (or 'all'); see the docstring.")
flags.DEFINE_list("xla_variants", ["default"], "XLA flag sets (or 'all'); see the docstring.")
flags.DEFINE_integer("batch_size", 32, "Global batch (strong scaling) or per device (weak).")
flags.DEFINE_enum("scaling", "strong", ["strong", "weak"], "How the batch grows with devices.")
flags.DEFINE_integer("steps", 20, "Timed steps per variant (after warm-up).")
flags.DEFINE_integer("warmup", 3, "Untimed steps after compilation.")
flags.DEFINE_bool("small", False, "Tiny model and cubes (CPU smoke test).")
flags.DEFINE_float("peak_tflops", 790.0, "Peak dense bf16 TFLOP/s of one device (H200: 790).")
flags.DEFINE_float("gflop_per_sample", 697.0, "Training GFLOP per 32^3 sample, paper model.")
flags.DEFINE_integer("child_timeout", 540, "Seconds allowed to each XLA flag set's process.")
flags.DEFINE_string("_child", "", "internal: run one XLA flag set and print JSON rows")

XLA_FLAG_SETS = {
    "default": "",
    "autotune4": "--xla_gpu_autotune_level=4",
    "lhs": "--xla_gpu_enable_latency_hiding_scheduler=true",
    "cmdbuf_off": "--xla_gpu_enable_command_buffer=",
    # XLA gives 3D convolutions NCDHW layouts on Hopper (2D ones get NHWC); cuDNN then transposes
    # to and from NHWC around every call. Forcing NHWC keeps the whole network channels-last.
    "nhwc": "--xla_gpu_force_conv_nhwc=true",
    "nhwc_lhs": "--xla_gpu_force_conv_nhwc=true --xla_gpu_enable_latency_hiding_scheduler=true",
    # Gradient all-reduces combined into pieces of at most 32 MB (not one at the end of the
    # backward pass), so the scheduler can start them while later layers' gradients compute.
    "nhwc_lhs_split": (
        "--xla_gpu_force_conv_nhwc=true --xla_gpu_enable_latency_hiding_scheduler=true "
        "--xla_gpu_all_reduce_combine_threshold_bytes=33554432"
    ),
}
VARIANTS = VNET_VARIANTS


def paper_forward_gflop(features=(128, 256, 512, 1024), size=32) -> float:
    """Forward GFLOP of one sample, layer by layer (2 * 27 * c_in * c_out per output voxel; a
    stride-2 transposed conv does 27 c_in c_out MACs per *input* voxel)."""
    flop, c, n = 0.0, 1, size**3
    for i, f in enumerate(features):
        flop += 2 * 27 * n * (c * f + f * f)
        c = f
        if i < len(features) - 1:
            n //= 8
    for i in reversed(range(len(features) - 1)):
        f = features[i]
        flop += 2 * 27 * n * c * f  # transposed conv from the coarse grid
        n *= 8
        if i > 0:
            flop += 2 * 27 * n * (2 * f * f + f * f)
            c = f
        else:
            c = 2 * f
    f1 = features[0]
    flop += 2 * 27 * n * (c * f1 + f1 * f1 + f1)
    return flop / 1e9


def time_variant(name: str, num_devices: int, small: bool) -> dict:
    import jax

    per_device = num_devices if FLAGS.scaling == "weak" else 1
    built = build_vnet_step(name, FLAGS.batch_size * per_device, num_devices, small)
    step, state, batch, key = (built[k] for k in ("step", "state", "batch", "key"))
    per_step, dtype = built["global_batch"], built["dtype"]
    features, size = built["features"], built["size"]

    t0 = time.perf_counter()
    compiled = step.lower(state, batch, key).compile()
    compile_s = time.perf_counter() - t0
    xla_gflop = None
    try:
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, list | tuple) else cost
        if cost and "flops" in cost:
            xla_gflop = float(cost["flops"]) / 1e9 / per_step
    except Exception:  # not every backend reports it
        pass
    for _ in range(FLAGS.warmup):
        state, metrics = step(state, batch, key)
    jax.block_until_ready(metrics)
    t0 = time.perf_counter()
    for _ in range(FLAGS.steps):
        state, metrics = step(state, batch, key)
    jax.block_until_ready(metrics)
    elapsed = time.perf_counter() - t0
    samples_s = FLAGS.steps * per_step / elapsed
    gflop = FLAGS.gflop_per_sample if not small else 3 * paper_forward_gflop(features, size)
    memory = None
    try:
        stats = jax.local_devices()[0].memory_stats() or {}
        memory = stats.get("peak_bytes_in_use", None)
    except Exception:
        pass
    return dict(
        variant=name,
        num_devices=num_devices,
        global_batch=per_step,
        dtype=dtype,
        samples_per_s=samples_s,
        step_ms=1e3 * elapsed / FLAGS.steps,
        tflops_per_device=samples_s * gflop / 1e3 / num_devices,
        peak_fraction=samples_s * gflop / 1e3 / num_devices / FLAGS.peak_tflops,
        xla_gflop_per_sample=xla_gflop,
        compile_s=compile_s,
        peak_bytes_device0=memory,
        loss=float(metrics["loss"]),
        device=str(jax.local_devices()[0].device_kind),
        backend=jax.default_backend(),
        small=small,
    )


def run_child(xla_name: str) -> list[dict]:
    import jax

    variants = list(VARIANTS) if FLAGS.variants == ["all"] else FLAGS.variants
    counts = [int(n) for n in FLAGS.num_devices] or sorted({1, jax.local_device_count()})
    rows = []
    for num in counts:
        for name in variants:
            try:
                row = time_variant(name, num, FLAGS.small)
            except Exception as err:  # a variant that fails (e.g. out of memory) is a row too
                row = dict(
                    variant=name, num_devices=num, error=f"{type(err).__name__}: {err}"[:300]
                )
            row["xla"] = xla_name
            rows.append(row)
            print("ROW " + json.dumps(row), flush=True)
    return rows


def table(rows: list[dict]) -> str:
    lines = [
        "| xla | variant | devices | global batch | dtype | samples/s | step ms | TFLOP/s/dev "
        "| peak frac | XLA GFLOP/sample | scaling eff. | compile s |",
        "|---" * 12 + "|",
    ]
    base = {}  # samples/s of one device, per (XLA flag set, variant)
    for r in rows:
        if "error" not in r and r["num_devices"] == 1:
            base[(r["xla"], r["variant"])] = r["samples_per_s"]
    for r in rows:
        if "error" in r:
            lines.append(
                f"| {r['xla']} | {r['variant']} | {r['num_devices']} | error: "
                f"{r['error'][:80]} |" + " |" * 8
            )
            continue
        eff = ""
        one = base.get((r["xla"], r["variant"]))
        if one and r["num_devices"] > 1:
            # samples/s on n devices over n times one device's (strong: same global batch)
            eff = f"{r['samples_per_s'] / (r['num_devices'] * one):.0%} ({FLAGS.scaling})"
        xla_gf = "" if r["xla_gflop_per_sample"] is None else f"{r['xla_gflop_per_sample']:.0f}"
        lines.append(
            f"| {r['xla']} | {r['variant']} | {r['num_devices']} | {r['global_batch']} | "
            f"{r['dtype']} | {r['samples_per_s']:.1f} | {r['step_ms']:.1f} | "
            f"{r['tflops_per_device']:.1f} | {r['peak_fraction']:.1%} | {xla_gf} | {eff} | "
            f"{r['compile_s']:.0f} |"
        )
    return "\n".join(lines)


def main(argv):
    del argv
    if FLAGS._child:
        run_child(FLAGS._child)
        return
    xla_names = list(XLA_FLAG_SETS) if FLAGS.xla_variants == ["all"] else FLAGS.xla_variants
    unknown = [n for n in xla_names if n not in XLA_FLAG_SETS]
    unknown += [v for v in FLAGS.variants if v not in VARIANTS and v != "all"]
    if unknown:
        raise app.UsageError(
            f"unknown variants {unknown}; known: {list(VARIANTS)}, XLA: {list(XLA_FLAG_SETS)}"
        )
    rows = []
    for xla_name in xla_names:
        env = dict(os.environ)
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + XLA_FLAG_SETS[xla_name]).strip()
        args = [a for a in sys.argv[1:] if not a.startswith("--xla_variants")]
        cmd = [sys.executable, "-m", "benchmarks.vnet_throughput", f"--_child={xla_name}", *args]
        print(f"== XLA flag set {xla_name}: XLA_FLAGS={env['XLA_FLAGS']!r}", flush=True)
        got, tail = [], []
        proc = subprocess.Popen(
            cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        timer = threading.Timer(FLAGS.child_timeout, proc.kill)
        timer.start()
        for line in proc.stdout:  # rows as they come: a later timeout keeps the earlier ones
            if line.startswith("ROW "):
                got.append(json.loads(line[4:]))
                print("  " + line[4:].strip()[:300], flush=True)
            else:
                tail = (tail + [line.rstrip()])[-5:]
        proc.wait()
        if not timer.is_alive():
            tail.append(f"killed after --child_timeout={FLAGS.child_timeout}s")
        timer.cancel()
        if proc.returncode != 0 and not got:
            got = [dict(variant="*", num_devices=0, xla=xla_name, error=" / ".join(tail)[-300:])]
        rows += got
    import jax

    md = table(rows)
    print(md)
    out = Path(FLAGS.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = dict(
        date=time.strftime("%Y-%m-%d %H:%M:%S"),
        command=" ".join(["python -m benchmarks.vnet_throughput", *sys.argv[1:]]),
        jax=jax.__version__,
        paper_forward_gflop=paper_forward_gflop(),
        gflop_per_sample=FLAGS.gflop_per_sample,
        peak_tflops=FLAGS.peak_tflops,
        scaling=FLAGS.scaling,
    )
    from dustjax.io import atomic_path

    with atomic_path(out / "results.json") as tmp:
        tmp.write_text(json.dumps(dict(meta=meta, rows=rows), indent=2))
    with atomic_path(out / "results.md") as tmp:
        tmp.write_text(f"{meta['command']}  ({meta['date']}, jax {meta['jax']})\n\n{md}\n")


if __name__ == "__main__":
    app.run(main)

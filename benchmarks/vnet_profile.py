r"""Where the V-net training step spends its GPU time: a kernel-level profile.

    python -m benchmarks.vnet_profile --variant=base --out=out/profile

Runs the engine's jitted train step (paper model, batch 32, bf16) a few times under
``jax.profiler.trace`` with a Perfetto trace, then sums the device time of every kernel by name and
by category (convolutions, batch-norm/elementwise fusions, transposes/copies, reductions ...), and
writes the optimised HLO so layouts and transposes can be read. Prints a table last.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from absl import app, flags

from benchmarks._common import VNET_VARIANTS, build_vnet_step
from benchmarks._trace import kernel_summary

FLAGS = flags.FLAGS
flags.DEFINE_string("out", "out/profile", "Output directory.")
flags.DEFINE_list("variants", ["base"], f"Variants to profile: {sorted(VNET_VARIANTS)}.")
flags.DEFINE_integer("batch_size", 32, "Global batch.")
flags.DEFINE_integer("steps", 5, "Profiled steps.")
flags.DEFINE_integer("top", 25, "Kernels listed.")


def profile(variant: str, out: Path) -> dict:
    import jax

    built = build_vnet_step(variant, FLAGS.batch_size)
    step, state, batch, key = (built[k] for k in ("step", "state", "batch", "key"))
    compiled = step.lower(state, batch, key).compile()
    (out / f"{variant}_hlo.txt").write_text(compiled.as_text())
    for _ in range(3):
        state, metrics = step(state, batch, key)
    jax.block_until_ready(metrics)
    trace_dir = out / f"trace_{variant}"
    t0 = time.perf_counter()
    with jax.profiler.trace(str(trace_dir), create_perfetto_trace=True):
        for _ in range(FLAGS.steps):
            state, metrics = step(state, batch, key)
        jax.block_until_ready(metrics)
    wall = (time.perf_counter() - t0) / FLAGS.steps
    summary = kernel_summary(trace_dir, FLAGS.steps, FLAGS.top)
    if "error" in summary:
        return dict(variant=variant, error=summary["error"])
    return dict(
        variant=variant,
        wall_ms_per_step=1e3 * wall,
        device_ms_per_step=summary["device_ms"],
        categories=summary["categories"],
        top_kernels=summary["top_kernels"],
        hlo_counts={
            w: compiled.as_text().count(w)
            for w in ("transpose(", "custom-call", "__cudnn$conv", "copy(", "fusion(")
        },
    )


def main(argv):
    del argv
    out = Path(FLAGS.out)
    out.mkdir(parents=True, exist_ok=True)
    results = [profile(v, out) for v in FLAGS.variants]
    (out / "profile.json").write_text(json.dumps(results, indent=2))
    for r in results:
        print(f"\n== {r['variant']}: {r.get('error', '')}")
        if "error" in r:
            continue
        print(f"wall {r['wall_ms_per_step']:.1f} ms/step, device {r['device_ms_per_step']:.1f} ms")
        print("HLO:", r["hlo_counts"])
        for k, v in r["categories"].items():
            print(f"  {k:<24}{v:8.2f} ms")
        for k, v in r["top_kernels"]:
            print(f"  {v:8.2f} ms  {k}")


if __name__ == "__main__":
    app.run(main)

r"""Which cross-device collectives the V-net train step runs: counted from the optimised HLO.

    python -m benchmarks.vnet_collectives --variants=base,bn_local,zero1     # all visible GPUs
    python -m benchmarks.vnet_collectives --small --fake_cpu_devices=4      # no accelerator

Compiles the engine's train step (`benchmarks._common.build_vnet_step`, global batch 32 split
over the devices) and counts the all-reduce, reduce-scatter and all-gather instructions of the
compiled program by element type, with the megabytes each device contributes to the all-reduces
(a combined all-reduce of several arrays counts once, its bytes summed). Why it matters: with
synchronised batch norm every batch-norm layer adds two small all-reduces on the critical path
(forward statistics and their gradient), where `bn_local` leaves only the gradients' (see
docs/benchmarks.md). Writes ``collectives.json`` and prints a table.
"""

from __future__ import annotations

import json
import os
import re
from collections import defaultdict
from pathlib import Path

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_list("variants", ["base", "bn_local"], "Variants of benchmarks._common.")
flags.DEFINE_integer("num_devices", 0, "Devices of the mesh (0: all visible).")
flags.DEFINE_integer("batch_size", 32, "Global batch.")
flags.DEFINE_bool("small", False, "Tiny model and cubes (CPU).")
flags.DEFINE_integer("fake_cpu_devices", 0, "Run on N fake CPU devices (before JAX starts).")
flags.DEFINE_string("out", "out/collectives", "Directory for collectives.json.")

COLLECTIVES = ("all-reduce", "reduce-scatter", "all-gather")
_ITEMSIZE = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "f32": 4, "s32": 4, "u32": 4,
             "f64": 8, "s64": 8}  # fmt: skip
_RESULT_TYPE = r"(\(.*?\)|[a-z0-9]+\[[0-9,]*\](?:\{[^}]*\})?)"  # a tuple or one array
_INSTR = re.compile(r"=\s+" + _RESULT_TYPE + r"\s+(" + "|".join(COLLECTIVES) + r")(-start)?\(")
_ARRAY = re.compile(r"([a-z]+[0-9]*)\[([0-9,]*)\]")


def count_collectives(hlo_text: str) -> dict:
    """``{op: {dtype: count}}`` and ``all_reduce_mb`` (per device) of an optimised HLO module.

    An async pair (``all-reduce-start``/``-done``) counts once; a combined (tuple) all-reduce
    counts once under the element type of its first array, its bytes under each array's type.
    """
    counts: dict = {op: defaultdict(int) for op in COLLECTIVES}
    mb: dict = defaultdict(float)
    for line in hlo_text.splitlines():
        m = _INSTR.search(line)
        if not m:
            continue
        arrays = _ARRAY.findall(m.group(1))
        counts[m.group(2)][arrays[0][0]] += 1
        if m.group(2) == "all-reduce":
            for dtype, dims in arrays:
                n = 1
                for d in filter(None, dims.split(",")):
                    n *= int(d)
                mb[dtype] += n * _ITEMSIZE.get(dtype, 4) / 1e6
    return dict(counts={op: dict(c) for op, c in counts.items() if c}, all_reduce_mb=dict(mb))


def main(argv):
    del argv
    if FLAGS.fake_cpu_devices:
        os.environ["JAX_PLATFORMS"] = "cpu"
        os.environ["XLA_FLAGS"] = (
            os.environ.get("XLA_FLAGS", "")
            + f" --xla_force_host_platform_device_count={FLAGS.fake_cpu_devices}"
        )
    import jax

    from benchmarks._common import build_vnet_step

    n = FLAGS.num_devices or jax.device_count()
    rows = []
    for variant in FLAGS.variants:
        built = build_vnet_step(variant, FLAGS.batch_size, n, small=FLAGS.small)
        compiled = built["step"].lower(built["state"], built["batch"], built["key"]).compile()
        rows.append(dict(variant=variant, num_devices=n, small=FLAGS.small,
                         device=str(jax.devices()[0].device_kind),
                         **count_collectives(compiled.as_text())))  # fmt: skip
    out = Path(FLAGS.out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "collectives.json.tmp"
    tmp.write_text(json.dumps(rows, indent=1))
    tmp.replace(out / "collectives.json")
    print("| variant | devices | collectives (count by first element type) | all-reduce MB |")
    print("| --- | --- | --- | --- |")
    for r in rows:
        ops = "; ".join(
            f"{op} " + ", ".join(f"{k} x{v}" for k, v in sorted(c.items()))
            for op, c in r["counts"].items()
        )
        mb = ", ".join(f"{k} {v:.1f}" for k, v in sorted(r["all_reduce_mb"].items()))
        print(f"| {r['variant']} | {r['num_devices']} | {ops or 'none'} | {mb} |")


if __name__ == "__main__":
    app.run(main)

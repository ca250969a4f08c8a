"""Device time per kernel from a ``jax.profiler`` Perfetto trace (shared by the profilers)."""

from __future__ import annotations

import collections
import gzip
import json
from pathlib import Path


def category(name: str) -> str:
    """A coarse kernel category from its name (cuDNN, cuBLAS, XLA fusions ...)."""
    n = name.lower()
    if any(s in n for s in ("conv", "cudnn", "implicit", "xmma", "sm90_", "wgrad", "dgrad")):
        return "convolution (cuDNN)"
    if "gemm" in n or "cublas" in n or "cutlass" in n or "trsm" in n:
        return "matmul"
    if "sort" in n:
        return "sort"
    if "transpose" in n or "copy" in n:
        return "transpose/copy"
    if "reduce" in n or "reduction" in n:
        return "reduction"
    if "fusion" in n or "loop" in n or "input" in n:
        return "fusion (elementwise)"
    if "memset" in n or "memcpy" in n:
        return "memset/memcpy"
    return "other"


def kernel_summary(trace_dir: Path, repeats: int = 1, top: int = 25) -> dict:
    """Device milliseconds per repeat, by category and for the `top` kernels, from the newest
    ``perfetto_trace.json.gz`` under `trace_dir` (written with ``create_perfetto_trace=True``)."""
    traces = sorted(Path(trace_dir).rglob("perfetto_trace.json.gz"))
    if not traces:
        return dict(error="no perfetto trace written")
    events = json.loads(gzip.open(traces[-1]).read())
    events = events["traceEvents"] if isinstance(events, dict) else events
    # Device kernels live in processes whose name mentions the GPU.
    pids = {
        e["pid"]
        for e in events
        if e.get("ph") == "M"
        and e.get("name") == "process_name"
        and "gpu" in str(e.get("args", {}).get("name", "")).lower()
    }
    by_name = collections.Counter()
    for e in events:
        if e.get("ph") == "X" and e.get("pid") in pids and "dur" in e:
            by_name[e["name"]] += e["dur"]
    by_cat = collections.Counter()
    for name, dur in by_name.items():
        by_cat[category(name)] += dur
    return dict(
        device_ms=sum(by_name.values()) / repeats / 1e3,
        categories={k: v / repeats / 1e3 for k, v in by_cat.most_common()},
        top_kernels=[(k[:120], v / repeats / 1e3) for k, v in by_name.most_common(top)],
    )

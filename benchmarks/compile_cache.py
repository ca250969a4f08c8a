r"""Benchmark: the persistent compilation cache, first run against second (issue 22).

    python -m benchmarks.compile_cache --out=bench_out/compile_cache
    # on a GPU, with the paper-size V-net in benchmarks.apply too
    python -m benchmarks.compile_cache --entries=train,apply,bench_apply --out=DIR

Each entry point runs twice, as its own process, on one fresh cache directory
(``$DUSTJAX_COMPILATION_CACHE``): the first run compiles and fills the cache, the second loads.
Each process reports its own compile time at exit (``$DUSTJAX_COMPILE_TIMES``,
`dustjax.runtime.CompileTimes`: tracing + lowering + XLA compilation or the cache's load), and
the wall time of the process is measured around it. Entries:

* ``train``: ``experiments.train`` with ``--config`` (default the ``vnet_test`` config), one
  epoch, a new workdir each run;
* ``apply``: ``experiments.apply --catalog=demo`` with the model the first ``train`` run wrote,
  ``--apply_stars`` demo stars and ``--apply_redraws`` Monte Carlo redraws;
* ``bench_apply``: ``benchmarks.apply`` (random V-net of ``--bench_features``, LR region);
* ``bench_apply_model``: the same with ``--model=--bench_model``, a training workdir (e.g. a
  random V-net written by ``benchmarks.apply --save_random_model=DIR``): apply's own loading
  path (an orbax restore, no initialisation program) instead of a random initialisation.

Results: results.json in --out (and a table on stdout). Target: the second run compiles in < 2 s.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

from absl import app, flags

FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_string("out", "bench_out/compile_cache", "Output directory.")
    flags.DEFINE_list("entries", ["train", "apply"], "train, apply, bench_apply(_model).")
    flags.DEFINE_string("config", "experiments/configs/vnet_test.py", "train: the config.")
    flags.DEFINE_integer("apply_stars", 20_000, "apply: demo stars.")
    flags.DEFINE_integer("apply_redraws", 32, "apply: Monte Carlo redraws.")
    flags.DEFINE_list("bench_features", ["16", "32", "64", "128"], "bench_apply: V-net widths.")
    flags.DEFINE_integer("bench_stars", 100_000, "bench_apply: demo stars.")
    flags.DEFINE_integer("bench_redraws", 32, "bench_apply: redraws.")
    flags.DEFINE_string("bench_model", None, "bench_apply_model: the training workdir.")
    flags.DEFINE_integer("timeout", 900, "Seconds for each run.")


def _command(entry: str, out: Path, run: int) -> list[str]:
    py = [sys.executable, "-m"]
    if entry == "train":
        return py + ["experiments.train", f"--config={FLAGS.config}",
                     f"--workdir={out / f'train{run}'}", "--config.num_epochs=1",
                     "--config.progress_bar=false"]  # fmt: skip
    if entry == "apply":
        return py + ["experiments.apply", "--region=SR", "--catalog=demo",
                     f"--model={out / 'train1'}", f"--demo_stars={FLAGS.apply_stars}",
                     f"--num_redraws={FLAGS.apply_redraws}", f"--workdir={out / f'apply{run}'}",
                     "--write_fits=false", "--plots=false"]  # fmt: skip
    if entry in ("bench_apply", "bench_apply_model"):
        model = []
        if entry == "bench_apply_model":
            if not FLAGS.bench_model:
                raise app.UsageError("bench_apply_model needs --bench_model=WORKDIR")
            model = [f"--model={FLAGS.bench_model}"]
        return py + ["benchmarks.apply", f"--features={','.join(FLAGS.bench_features)}",
                     f"--num_stars={FLAGS.bench_stars}", f"--num_redraws={FLAGS.bench_redraws}",
                     "--plots=false", "--mc_repeats=1", "--mc_only", *model,
                     f"--out={out / f'{entry}{run}'}"]  # fmt: skip
    raise app.UsageError(f"unknown entry {entry!r}")


def run_once(entry: str, out: Path, cache: Path, run: int) -> dict:
    times_file = out / f"{entry}{run}_compile.json"
    env = dict(os.environ, DUSTJAX_COMPILATION_CACHE=str(cache),
               DUSTJAX_COMPILE_TIMES=str(times_file), PYTHONUNBUFFERED="1")  # fmt: skip
    cmd = _command(entry, out, run)
    t0 = time.perf_counter()
    with open(out / f"{entry}{run}.log", "w") as log:
        code = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                               timeout=FLAGS.timeout)  # fmt: skip
    wall = time.perf_counter() - t0
    if code:
        tail = (out / f"{entry}{run}.log").read_text()[-2000:]
        raise RuntimeError(f"{' '.join(cmd)} failed ({code}):\n{tail}")
    row = json.loads(times_file.read_text())
    row["wall_s"] = wall
    row["command"] = " ".join(cmd[1:])
    return row


def main(argv):
    del argv
    import jax

    out = Path(FLAGS.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    cache = out / "jax_cache"
    shutil.rmtree(cache, ignore_errors=True)
    results = {}
    info = dict(
        date=time.strftime("%Y-%m-%d %H:%M:%S"),
        backend=jax.default_backend(),
        device=f"{jax.device_count()} x {jax.devices()[0].device_kind}",
        jax=jax.__version__,
        python=platform.python_version(),
        target_second_compile_s=2.0,
        results=results,
    )
    for entry in FLAGS.entries:  # results.json after every run (a cut-short run keeps its rows)
        for run, name in ((1, "first"), (2, "second")):
            results.setdefault(entry, {})[name] = run_once(entry, out, cache, run)
            size = sum(f.stat().st_size for f in cache.rglob("*") if f.is_file())
            info["cache_mib"] = size / 2**20
            tmp = out / "results.json.tmp"
            tmp.write_text(json.dumps(info, indent=2) + "\n")
            os.replace(tmp, out / "results.json")
    print(f"{info['device']}, jax {jax.__version__}, cache {info['cache_mib']:.1f} MiB")
    print(f"{'entry':<12}{'run':<8}{'compile s':>10}{'programs':>10}{'hits':>6}{'wall s':>9}")
    for entry, runs in results.items():
        for name, r in runs.items():
            print(f"{entry:<12}{name:<8}{r['compile_s']:>10.2f}{r['programs']:>10}"
                  f"{r['cache_hits']:>6}{r['wall_s']:>9.1f}")  # fmt: skip
    print(f"results: {out / 'results.json'}")


if __name__ == "__main__":
    define_flags()
    app.run(main)

"""The flags every entry point shares: several processes, and the compilation cache.

    --coordinator_address=HOST:PORT --num_processes=N --process_id=I   (several processes;
        detected by themselves under SLURM's srun and on Cloud TPU pod slices)
    --compilation_cache=DIR | off   (default ~/.cache/dustjax/jax, or $DUSTJAX_COMPILATION_CACHE)

`define_runtime_flags()` next to an entry point's own flags, `start_runtime()` first thing in its
main (before any JAX work): XLA flags, the compilation cache, `jax.distributed`, and, in every
process but the first, only warnings in the log (process 0 writes the logs and the files).
With ``$DUSTJAX_COMPILE_TIMES=FILE`` the process writes its compile time there at exit.
"""

from __future__ import annotations

from absl import flags

FLAGS = flags.FLAGS


def define_runtime_flags() -> None:
    flags.DEFINE_string(
        "coordinator_address", None,
        "Several processes: host:port of process 0 (not needed under SLURM or on a TPU pod).",
    )  # fmt: skip
    flags.DEFINE_integer("num_processes", None, "Several processes: how many in all.")
    flags.DEFINE_integer("process_id", None, "Several processes: this one's index, 0 .. N-1.")
    flags.DEFINE_string(
        "compilation_cache", None,
        "JAX's persistent compilation cache directory, or 'off' (default: "
        "$DUSTJAX_COMPILATION_CACHE, else ~/.cache/dustjax/jax).",
    )  # fmt: skip


def start_runtime() -> bool:
    """Set up the process (see the module docstring); True if several processes run."""
    from absl import logging

    from dustjax import distributed
    from dustjax.runtime import (
        configure_compilation_cache,
        configure_xla,
        quiet_library_logs,
        report_compile_times_at_exit,
    )

    configure_xla()  # before anything starts JAX's backend
    several = distributed.initialize(
        FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id
    )
    cache = configure_compilation_cache(FLAGS.compilation_cache)
    report_compile_times_at_exit()  # with $DUSTJAX_COMPILE_TIMES=file (benchmarks/compile_cache)
    quiet_library_logs()
    if several and not distributed.is_primary():
        logging.set_verbosity(logging.WARNING)
    logging.debug("compilation cache: %s", cache or "off")  # not a line for every run
    return several

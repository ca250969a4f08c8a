"""Process set-up for the entry points: XLA flags (before JAX starts its backend) and logging.

`quiet_library_logs()` drops orbax's per-save INFO chatter. The rest is about XLA flags:

XLA assigns 3D convolutions NCDHW layouts on Hopper GPUs (only 2D ones get NHWC), and cuDNN then
transposes every activation to NHWC and back around each call. ``--xla_gpu_force_conv_nhwc``
keeps the whole V-net channels-last: the paper model's training step on one H200 went from 89 to
77 ms (docs/benchmarks.md). The flag only concerns GPU convolutions; CPU and TPU ignore it.

`configure_xla()` appends the flags to ``XLA_FLAGS`` unless the user already set them (either
way), ``DUSTJAX_XLA_DEFAULTS=0`` is set, or JAX's backend has already started (XLA reads the
flags once); the entry points call it first thing, notebooks call it before any JAX work.
"""

from __future__ import annotations

import logging
import os

logger = logging.getLogger(__name__)

GPU_FLAGS = ("--xla_gpu_force_conv_nhwc=true",)


def configure_xla(flags=GPU_FLAGS) -> list[str]:
    """Add `flags` to ``XLA_FLAGS`` for this process; returns the ones added."""
    if os.environ.get("DUSTJAX_XLA_DEFAULTS", "1") == "0":
        return []
    current = os.environ.get("XLA_FLAGS", "")
    added = [f for f in flags if f.split("=")[0] not in current]
    if not added:
        return []
    try:
        from jax._src import xla_bridge

        started = xla_bridge.backends_are_initialized()
    except (ImportError, AttributeError):  # private API moved: assume not started
        started = False
    if started:
        logger.warning(
            "JAX's backend has already started, so %s will not take effect; call "
            "dustjax.runtime.configure_xla() before any JAX computation",
            " ".join(added),
        )
        return []
    os.environ["XLA_FLAGS"] = " ".join([current, *added]).strip()
    return added


def quiet_library_logs() -> None:
    """Drop orbax's per-save INFO chatter from absl logging (warnings and errors still show)."""

    class _Filter(logging.Filter):
        def filter(self, record):
            return record.levelno >= logging.WARNING or "orbax" not in record.pathname

    for handler in logging.getLogger("absl").handlers + logging.getLogger().handlers:
        handler.addFilter(_Filter())
    try:
        from absl import logging as absl_logging

        absl_logging.get_absl_handler().addFilter(_Filter())
    except ImportError:
        pass


# ==== persistent compilation cache ================================================================
CACHE_ENV = "DUSTJAX_COMPILATION_CACHE"
DEFAULT_CACHE_DIR = "~/.cache/dustjax/jax"
_OFF = ("", "0", "off", "none", "false", "no")


def configure_compilation_cache(path: str | None = None) -> str | None:
    """Turn on JAX's persistent compilation cache in `path`; returns the directory, or None
    when it is off.

    `path` None: ``$DUSTJAX_COMPILATION_CACHE``, else JAX's own ``JAX_COMPILATION_CACHE_DIR``
    when the user set it, else ``~/.cache/dustjax/jax``. "off" (or "0", "", "none") turns it
    off. Every compiled program is kept (no minimum compile time), with XLA's GPU autotuning
    results, so a second run of an entry point on the same shapes loads its programs instead of
    compiling them (docs/benchmarks.md). Safe to call after JAX has started.
    """
    import jax

    if path is None:
        path = os.environ.get(CACHE_ENV)
    if path is None:
        path = os.environ.get("JAX_COMPILATION_CACHE_DIR") or DEFAULT_CACHE_DIR
    if str(path).strip().lower() in _OFF:
        jax.config.update("jax_enable_compilation_cache", False)
        return None
    path = os.path.abspath(os.path.expanduser(str(path)))
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as err:
        logger.warning("compilation cache off: cannot create %s (%s)", path, err)
        return None
    jax.config.update("jax_enable_compilation_cache", True)
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path


# ==== compile time ================================================================================
COMPILE_EVENTS = {
    "/jax/core/compile/jaxpr_trace_duration": "trace_s",
    "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower_s",
    # XLA compilation, or the load from the persistent cache on a hit
    "/jax/core/compile/backend_compile_duration": "backend_compile_s",
    "/jax/compilation_cache/cache_retrieval_time_sec": "cache_retrieval_s",
}
COMPILE_TIMES_ENV = "DUSTJAX_COMPILE_TIMES"


class CompileTimes:
    """Seconds this process spends compiling, summed from JAX's monitoring events.

    ``compile_s`` = tracing + lowering + XLA compilation (or the persistent cache's load), the
    time a warm cache saves; ``programs`` counts the compiled programs, ``cache_hits`` those
    loaded from the persistent cache.
    """

    def __init__(self):
        import jax.monitoring as mon

        self.totals = dict.fromkeys(COMPILE_EVENTS.values(), 0.0)
        self.programs = 0
        self.cache_hits = 0

        def on_duration(event, duration, **_):
            name = COMPILE_EVENTS.get(event)
            if name:
                self.totals[name] += float(duration)
                self.programs += name == "backend_compile_s"

        def on_event(event, **_):
            self.cache_hits += event == "/jax/compilation_cache/cache_hits"

        mon.register_event_duration_secs_listener(on_duration)
        mon.register_event_listener(on_event)
        self._listeners = (on_duration, on_event)

    def summary(self) -> dict:
        t = self.totals
        return dict(
            compile_s=t["trace_s"] + t["lower_s"] + t["backend_compile_s"],
            **t,
            programs=self.programs,
            cache_hits=self.cache_hits,
        )

    def close(self) -> None:
        import jax.monitoring as mon

        mon.unregister_event_duration_listener(self._listeners[0])
        mon.unregister_event_listener(self._listeners[1])


def report_compile_times_at_exit(path: str | None = None) -> CompileTimes | None:
    """With ``$DUSTJAX_COMPILE_TIMES`` (or `path`) set, write this process's `CompileTimes`
    there as JSON when it exits (benchmarks/compile_cache.py reads it)."""
    path = path or os.environ.get(COMPILE_TIMES_ENV)
    if not path:
        return None
    import atexit
    import json

    times = CompileTimes()

    def write():
        tmp = f"{path}.tmp"
        with open(tmp, "w") as f:
            json.dump(times.summary(), f, indent=2)
        os.replace(tmp, path)

    atexit.register(write)
    return times

"""Process set-up for the entry points: XLA flags (before JAX starts its backend) and logging.

`quiet_library_logs()` keeps the logs to the run's own lines (no orbax INFO floods, no "Unable
to initialize backend 'tpu'", no TensorFlow oneDNN notices). The rest is about XLA flags:

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


# Known harmless orbax warnings of a read-only restore (apply, evaluate, predict_map load a run).
_ORBAX_NOISE = (
    "read_only=True",
    "directory is read only",
    "Metadata file does not exist",
)


class _QuietLibraries(logging.Filter):
    """Drops orbax's INFO lines (and its known harmless read-only warnings) from absl logging."""

    def filter(self, record):
        if "orbax" not in record.pathname and not record.name.startswith("orbax"):
            return True
        if record.levelno >= logging.ERROR:
            return True
        if record.levelno >= logging.WARNING:
            return not any(text in record.getMessage() for text in _ORBAX_NOISE)
        return False


def quiet_library_logs() -> None:
    """Only the run's own lines, warnings and errors: every entry point calls it first thing.

    - orbax logs each checkpoint save and restore in ~30 INFO lines through absl's logger (and
      a few harmless warnings on a read-only restore): a filter on the ``absl`` and ``orbax``
      loggers (and their handlers) drops them; orbax errors still show.
    - JAX logs "Unable to initialize backend 'tpu'" at INFO on every machine without a TPU:
      its ``jax._src.xla_bridge`` logger is set to WARNING.
    - TensorFlow (only the TFRecord reader and writer here: no TensorFlow arithmetic) prints a
      oneDNN notice and CPU-instruction notices when imported: ``TF_ENABLE_ONEDNN_OPTS=0`` and
      ``TF_CPP_MIN_LOG_LEVEL=1`` (each unless the user set it; must run before the import).
    Calling it twice adds nothing twice.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)
    targets = [logging.getLogger("absl"), logging.getLogger("orbax"), logging.getLogger()]
    targets += logging.getLogger("absl").handlers + logging.getLogger().handlers
    try:
        from absl import logging as absl_logging

        targets.append(absl_logging.get_absl_handler())
    except ImportError:
        pass
    for target in targets:
        if not any(isinstance(f, _QuietLibraries) for f in target.filters):
            target.addFilter(_QuietLibraries())


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing for the entry points (``app.run(main, flags_parser=parse_flags)``),
    with a bad config file or config key as one line instead of a 30-55 line traceback from
    ml_collections: ``error: --config.num_epoch: no key 'num_epoch' in the config. Did you mean
    "num_epochs" instead of "num_epoch"?``. Flag errors keep absl's own two lines."""
    import sys

    from absl import flags

    try:
        remaining = flags.FLAGS(argv)
        for name in list(flags.FLAGS):
            value = flags.FLAGS[name].value
            if type(value).__name__ == "_ErrorConfig":  # a config file that failed to load
                value.get("name")  # ml_collections defers the error to the first use: raise it
        return remaining
    except flags.Error as err:
        sys.stderr.write(f"FATAL Flags parsing error: {err}\n")
        sys.stderr.write("Pass --helpshort or --helpfull to see help on flags.\n")
        sys.exit(1)
    except (AttributeError, KeyError, OSError, TypeError, ValueError) as err:
        sys.exit(f"error: {config_error_line(err, argv)}")


def config_error_line(err: BaseException, argv: list[str]) -> str:
    """One line for an error raised while loading a config file or applying an override."""
    import difflib
    import re

    while err.args and isinstance(err.args[0], BaseException):  # AttributeError(KeyError(...))
        err = err.args[0]
    text = str(err.args[0] if err.args else err)
    # ml_collections: "'num_epoch'\nDid you mean ...": the key, then the suggestion
    match = re.match(r"^'*([\w.]+)'*\s*\n\s*(Did you mean.*)", text, re.S)
    if match:
        key, hint = match.group(1), " ".join(match.group(2).split())
        flag = next((a.split("=")[0] for a in argv if re.match(rf"--\w+\.(.*\.)?{key}\b", a)), "")
        return f"{flag + ': ' if flag else ''}no key {key!r} in the config. {hint}"
    missing = re.search(r"Attempted \[[^\]]*\]:\s*(\S+)\s*\[Errno 2\]", text)
    if missing:  # a config file that does not exist: name the nearest ones
        from pathlib import Path

        path = Path(missing.group(1))
        known = sorted(p.stem for p in path.parent.glob("*.py") if not p.stem.startswith("_"))
        close = difflib.get_close_matches(path.stem, known, n=1)
        hint = f" Did you mean {path.parent / close[0]}.py?" if close else ""
        where = f" ({len(known)} configs in {path.parent}/)" if known else ""
        return f"config file {path} not found.{hint}{where}"
    return " ".join(text.split())


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
    loaded from the persistent cache; ``by_function`` the seconds of the costliest functions by
    JAX's name for them (a traced function ``f``, its lowering and compilation ``jit(f)``).
    """

    def __init__(self):
        import collections

        import jax.monitoring as mon

        self.totals = dict.fromkeys(COMPILE_EVENTS.values(), 0.0)
        self.programs = 0
        self.cache_hits = 0
        self.by_function = collections.defaultdict(float)

        def on_duration(event, duration, fun_name=None, **_):
            name = COMPILE_EVENTS.get(event)
            if name:
                self.totals[name] += float(duration)
                self.programs += name == "backend_compile_s"
                if fun_name and name != "cache_retrieval_s":  # retrieval: inside the backend's
                    self.by_function[str(fun_name)] += float(duration)

        def on_event(event, **_):
            self.cache_hits += event == "/jax/compilation_cache/cache_hits"

        mon.register_event_duration_secs_listener(on_duration)
        mon.register_event_listener(on_event)
        self._listeners = (on_duration, on_event)

    def summary(self, top: int = 12) -> dict:
        t = self.totals
        costliest = sorted(self.by_function.items(), key=lambda kv: -kv[1])[:top]
        return dict(
            compile_s=t["trace_s"] + t["lower_s"] + t["backend_compile_s"],
            **t,
            programs=self.programs,
            cache_hits=self.cache_hits,
            by_function={name: round(s, 4) for name, s in costliest},
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

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

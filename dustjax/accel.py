"""XLA settings that make dustjax's models fast, applied before JAX starts its backend.

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
            "dustjax.accel.configure_xla() before any JAX computation",
            " ".join(added),
        )
        return []
    os.environ["XLA_FLAGS"] = " ".join([current, *added]).strip()
    return added

"""The run configurations: one module per config, each defining ``get_config()``.

``vnet_common.vnet_config`` and ``unet_common.unet_config`` hold every key a V-net or U-Net run may
override; ``gp_common.gp_config`` the GP's. `load_config_module(name)` loads
``experiments/configs/<name>.py`` by name (the notebooks, the tests); `choose_config` picks the
region's paper config on an accelerator and its CPU variant otherwise (`experiments.train` without
--config).
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent

log = logging.getLogger(__name__)


def has_accelerator() -> bool:
    import jax

    return jax.default_backend() != "cpu"


def default_config_names(model: str, region: str, accelerator: bool) -> list[str]:
    """Config names tried, in order, when --config is absent."""
    region = region.lower()
    paper = [f"{model}_{region}"] + (["unet"] if model == "unet" else [])
    cpu = [f"{model}_{region}_cpu"] + (["unet_cpu"] if model == "unet" else [])
    return paper if accelerator else cpu


def load_config_module(name: str):
    """``get_config()`` of ``experiments/configs/<name>.py``."""
    path = CONFIG_DIR / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"experiments.configs.{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def choose_config(model: str, region: str):
    """The config of `model` for `region`: the paper's on an accelerator, else the CPU variant
    (`default_config_names`); a `ValueError` naming the files looked for if none exists."""
    import jax

    accelerator = has_accelerator()
    names = default_config_names(model, region, accelerator)
    for name in names:
        if (CONFIG_DIR / f"{name}.py").exists():
            device = jax.default_backend()
            why = (
                f"accelerator found ({device}): the paper's config"
                if accelerator
                else "no accelerator (CPU only): the small CPU variant"
            )
            log.info("no --config given; %s -> experiments/configs/%s.py", why, name)
            return load_config_module(name)
    raise ValueError(
        f"no config for --model={model} --region={region}: looked for "
        + ", ".join(f"experiments/configs/{n}.py" for n in names)
        + (" (the U-Net configs come with issue 5)" if model == "unet" else "")
        + "; pass --config=..."
    )

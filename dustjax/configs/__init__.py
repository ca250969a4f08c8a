"""The run configurations: one module per config, each defining ``get_config()``.

``vnet_common.vnet_config`` and ``unet_common.unet_config`` hold every key a V-net or U-Net run may
override; ``gp_common.gp_config`` the GP's. The configs ship inside the package, so every entry
point finds them by name from any directory (``dustjax-train --config=vnet_sr``; `config_path`).
`load_config_module(name)` loads ``dustjax/configs/<name>.py`` by name (the notebooks, the tests);
`choose_config` picks the region's paper config on an accelerator and its CPU variant otherwise
(`dustjax-train` without --config).
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


def available_configs() -> list[str]:
    """The names of the packaged configs (each a module with ``get_config()``)."""
    return sorted(
        p.stem
        for p in CONFIG_DIR.glob("*.py")
        if not p.stem.startswith("_") and "def get_config" in p.read_text()
    )


def config_path(value: str) -> str:
    """The file behind a ``--config`` value: a config name (``vnet_sr`` or ``vnet_sr.py``) is the
    packaged config; an existing file is itself; a missing ``experiments/configs/<name>.py`` (the
    checkout's old spelling) or ``dustjax/configs/<name>.py``, from any directory, is the packaged
    config. A ``:argument`` suffix (ml_collections) is kept. A `ValueError` lists the packaged
    names otherwise."""
    path, colon, argument = str(value).partition(":")
    if Path(path).is_file():
        return str(value)
    parent = Path(path).parent.as_posix()
    name = Path(path).name.removesuffix(".py")
    candidate = CONFIG_DIR / f"{name}.py"
    packaged_spelling = parent == "." or parent.endswith(("experiments/configs", "dustjax/configs"))
    if packaged_spelling and name and not name.startswith("_") and candidate.is_file():
        return f"{candidate}{colon}{argument}"
    import difflib

    close = difflib.get_close_matches(name, available_configs(), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ValueError(
        f"no config file {path!r} and no packaged config of that name.{hint} Packaged configs: "
        + ", ".join(available_configs())
    )


def load_config_module(name: str):
    """``get_config()`` of the packaged config `name` (``dustjax/configs/<name>.py``)."""
    path = Path(config_path(name).partition(":")[0])
    spec = importlib.util.spec_from_file_location(f"dustjax.configs.{path.stem}", path)
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
            log.info("no --config given; %s -> %s (dustjax/configs/%s.py)", why, name, name)
            return load_config_module(name)
    raise ValueError(
        f"no config for --model={model} --region={region}: looked for "
        + ", ".join(f"dustjax/configs/{n}.py" for n in names)
        + (" (the U-Net configs come with issue 5)" if model == "unet" else "")
        + "; pass --config=..."
    )

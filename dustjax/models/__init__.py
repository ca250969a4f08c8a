"""Neural network models, by name: the names the training engine builds them from.

`dustjax.training` builds the model named by ``config.model.name`` through `get_model`. The
built-in names (the V-net, the POLARIS U-Net and its KAN variants) resolve lazily from the table
below, so a workdir's config.json alone is enough to rebuild its model in a fresh process. A name
is looked up in this table and in what `register_model` added in-process, never imported as a
module path from a config. To add a model from your own code:

    from dustjax.models import register_model
    register_model("mynet", MyNet)   # or "mypackage.module:MyNet", imported on first use

A constructor is called as ``ctor(**config.model.kwargs, dtype=compute_dtype)`` and must return a
flax.linen Module whose ``__call__(inputs, train: bool)`` maps a batch to predictions; batch-norm
statistics, if any, live in the "batch_stats" collection.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from dustjax.models.vnet import PAPER_FEATURES, VNet, VNetPaper

__all__ = [
    "PAPER_FEATURES",
    "VNet",
    "VNetPaper",
    "get_model",
    "register_model",
    "registered_models",
]

_MODELS: dict[str, Callable[..., Any] | str] = {
    "vnet": "dustjax.models.vnet:VNet",
    "vnet_paper": "dustjax.models.vnet:VNetPaper",
    "unet": "dustjax.models.unet:AttentionUNet",
    "knet": "dustjax.models.unet:KNet",
    "ukan": "dustjax.models.unet:UKAN",
    "unet_kan_branch": "dustjax.models.unet:UNetKANBranch",
}


def register_model(name: str, ctor: Callable[..., Any] | str, *, overwrite: bool = False) -> None:
    """Register `ctor` (a callable, or an ``"module:attribute"`` string imported lazily)."""
    if name in _MODELS and not overwrite and _MODELS[name] != ctor:
        raise ValueError(f"model {name!r} is already registered (pass overwrite=True to replace)")
    _MODELS[name] = ctor


def registered_models() -> list[str]:
    return sorted(_MODELS)


def resolve(spec: Callable[..., Any] | str, kind: str = "object") -> Any:
    """Import ``"package.module:attribute"`` (or return `spec` if it is already an object).

    Only for specs from dustjax's own tables or registered in-process: never a config's name."""
    if not isinstance(spec, str):
        return spec
    if ":" not in spec:
        raise ValueError(f"{kind} {spec!r} is not registered and is not a 'module:attribute' path")
    module_name, attr = spec.split(":", 1)
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"cannot import {kind} module {module_name!r}: {err}") from err
    try:
        return getattr(module, attr)
    except AttributeError as err:
        raise ValueError(f"module {module_name!r} has no {kind} {attr!r}") from err


def get_model(name: str) -> Callable[..., Any]:
    """The constructor of the model `name` (a `ValueError` naming the known ones if none)."""
    if name in _MODELS:
        return resolve(_MODELS[name], "model")
    raise ValueError(f"unknown model {name!r}; known models: {registered_models()}")

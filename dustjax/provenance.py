"""Provenance of every output: which dustjax wrote it, when, by which method, from which
configuration and which inputs.

`record(method, config=..., inputs=...)` is one small dict::

    {"dustjax_version": "0.1.0", "date_utc": "2026-11-30T01:02:03Z", "method": "gp",
     "config_name": "gp_test", "config_hash": "3f2a...", "inputs": ["stars.fits"]}

It goes under the key ``"provenance"`` of each JSON output (`stamp`: ``summary.json``,
``config.json``) and into each FITS primary header as the cards of `fits_cards` (``DJVERS``,
``DATE``, ``METHOD``, ``CONFIG``, ``CFGHASH``, ``INPUT1``...). Inputs are recorded by their
basenames, never by absolute paths (a path on one machine says nothing on another and may say
too much). The configuration hash is the SHA-256 of its canonical JSON (sorted keys), so two runs
with the same settings share it whatever the key order; the ``provenance`` key of a stamped
config is left out of it (`strip`).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
from typing import Any

KEY = "provenance"
HASH_CHARS = 16


def _version() -> str:
    """The running package's version (its ``__version__``, else the installed metadata)."""
    import dustjax

    version = getattr(dustjax, "__version__", None)
    if version:
        return str(version)
    try:
        from importlib.metadata import version as installed

        return installed("dustjax")
    except Exception:  # not installed: a bare checkout
        return "unknown"


def _plain_config(config) -> dict[str, Any] | None:
    if config is None:
        return None
    if hasattr(config, "to_json_best_effort"):  # ml_collections.ConfigDict
        return json.loads(config.to_json_best_effort())
    if hasattr(config, "to_dict"):
        return config.to_dict()
    return dict(config)


def config_hash(config) -> str | None:
    """First 16 hex digits of the SHA-256 of the config's canonical JSON (None: no config)."""
    plain = _plain_config(config)
    if plain is None:
        return None
    text = json.dumps(strip(plain), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:HASH_CHARS]


def input_names(inputs) -> list[str]:
    """Basenames of the inputs (paths or names); None and empty entries are dropped."""
    if inputs is None or isinstance(inputs, str | os.PathLike):
        inputs = [] if inputs is None else [inputs]
    names = []
    for item in inputs:
        if item is None or str(item) == "":
            continue
        names.append(os.path.basename(os.path.normpath(os.fspath(item))) or str(item))
    return names


def record(method: str, config=None, *, config_name: str | None = None, inputs=()) -> dict:
    """The provenance of an output made now by `method` from `config` and `inputs`.

    ``config_name`` defaults to the config's ``name`` field (every config in
    ``experiments/configs`` sets one).
    """
    plain = _plain_config(config)
    if config_name is None and plain is not None:
        config_name = plain.get("name")
    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)  # noqa: UP017
    return {
        "dustjax_version": _version(),
        "date_utc": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "method": str(method),
        "config_name": None if config_name is None else str(config_name),
        "config_hash": config_hash(plain),
        "inputs": input_names(inputs),
    }


def stamp(obj: dict, prov: dict) -> dict:
    """A copy of the JSON-ready dict `obj` with ``"provenance": prov``."""
    return {**obj, KEY: prov}


def strip(obj: dict) -> dict:
    """`obj` without its provenance (a stamped config read back, before use or comparison)."""
    return {k: v for k, v in obj.items() if k != KEY}


def fits_cards(prov: dict) -> dict[str, tuple[Any, str]]:
    """FITS keywords (8 characters, values <= 68 characters) of a provenance record."""

    def short(value) -> str:
        text = "" if value is None else str(value)
        return text if len(text) <= 68 else text[:65] + "..."

    cards = {
        "DJVERS": (short(prov["dustjax_version"]), "dustjax version"),
        "DATE": (prov["date_utc"].rstrip("Z"), "UTC date the file was written"),
        "METHOD": (short(prov["method"]), "dustjax method"),
        "CONFIG": (short(prov.get("config_name") or "none"), "configuration name"),
        "CFGHASH": (short(prov.get("config_hash") or "none"), "SHA-256 of the config JSON (16)"),
    }
    names = prov.get("inputs") or []
    cards["NINPUTS"] = (len(names), "number of inputs (INPUTn: basenames)")
    for i, name in enumerate(names[:99], start=1):
        cards[f"INPUT{i}"] = (short(name), "input (basename)")
    # A long value leaves no room for the comment on its 80-character card: drop the comment.
    return {k: (v, c if len(str(v)) + len(c) <= 60 else "") for k, (v, c) in cards.items()}


def add_to_header(header, prov: dict):
    """Set the cards of `fits_cards` on an astropy `Header` (or a dict); returns it."""
    for key, value in fits_cards(prov).items():
        header[key] = value
    return header

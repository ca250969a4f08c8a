"""File I/O shared by every part of dustjax: atomic writes, JSON, FITS cubes.

Every file that leaves the program is written to a temporary name in the same directory and then
renamed, so an interrupted run never leaves a half-written file under the final name.
astropy is imported lazily (the GPU machines do not have it).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


class OutputError(OSError):
    """An output location that cannot be written."""


def ensure_writable_dir(path: str | os.PathLike) -> Path:
    """Create `path` (and parents) and check that files can be written in it."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"cannot create output directory {path}: {err.strerror}") from err
    if not os.access(path, os.W_OK | os.X_OK):
        raise OutputError(f"output directory {path} is not writable")
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it onto `path` only on success."""
    path = Path(path)
    ensure_writable_dir(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write `obj` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(obj):
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"cannot serialise {type(obj).__name__} to JSON")


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())


def write_fits(path: str | os.PathLike, hdus, overwrite: bool = True) -> None:
    """Write an astropy HDUList (or a list of HDUs) atomically."""
    from astropy.io import fits

    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputError(f"{path} exists; pass overwrite=True to replace it")
    hdul = hdus if isinstance(hdus, fits.HDUList) else fits.HDUList(list(hdus))
    with atomic_path(path) as tmp:
        hdul.writeto(tmp, overwrite=True)

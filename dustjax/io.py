"""File I/O shared by every part of dustjax: atomic writes, JSON, FITS cubes.

Every file that leaves the program is written to a temporary name in the same directory and then
renamed, so an interrupted run never leaves a half-written file under the final name.
astropy is imported lazily (the GPU machines do not have it).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
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


def check_can_write_dir(path: str | os.PathLike) -> Path:
    """`OutputError` unless `ensure_writable_dir(path)` would succeed; creates nothing.

    Entry points call it before any computation, so an unwritable workdir or output is refused
    in a second, not after the work (and a refused run leaves no empty directory behind)."""
    path = Path(path)
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        if probe == path:
            raise OutputError(f"output directory {path} is a file, not a directory")
        raise OutputError(
            f"cannot create output directory {path}: {probe} is a file, not a directory"
        )
    if not os.access(probe, os.W_OK | os.X_OK):
        what = "output directory" if probe == path else f"output directory {path}: its parent"
        raise OutputError(f"{what} {probe} is not writable")
    return path


PREVIOUS_RUN_DIR = "previous_run"


def set_aside_previous_outputs(
    workdir: str | os.PathLike, names, *, keep=(), log=None
) -> list[str]:
    """Move an earlier run's outputs in `workdir` into ``workdir/previous_run/`` (replacing what
    an even earlier run left there), so that a new run never sits beside files that look like
    its own, and the run before it is kept (one run back only).

    Only the files a run writes (`names`) move; any other file (the user's) stays, and so do the
    paths in ``keep`` (the run's input, e.g. a catalogue) even where their names are an output's.
    Returns the names moved."""
    workdir = Path(workdir)
    kept = {Path(p).resolve() for p in keep if p}
    found = [
        workdir / name
        for name in sorted(names)
        if (workdir / name).is_file() and (workdir / name).resolve() not in kept
    ]
    if not found:
        return []
    previous = workdir / PREVIOUS_RUN_DIR
    if previous.exists():
        for old in previous.iterdir():
            if old.is_file():
                old.unlink()
    previous.mkdir(exist_ok=True)
    for path in found:
        path.replace(previous / path.name)
    moved = [p.name for p in found]
    if log is not None:
        log.warning("%s held an earlier run's outputs; moved to %s: %s", workdir, previous, moved)
    return moved


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
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write `obj` as indented JSON, atomically (NaN and infinities as null: `json_safe`)."""
    with atomic_path(path) as tmp:
        tmp.write_text(dumps_json(obj, indent=2) + "\n")


def json_safe(obj: Any) -> Any:
    """`obj` with every NaN or infinite float (numpy scalars and arrays included) as None:
    ``json.dumps`` would write them as NaN / Infinity, which is not JSON (other readers refuse
    it)."""
    import numpy as np

    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def dumps_json(obj: Any, **kwargs) -> str:
    """Strict JSON text of `obj` (sorted keys; NaN and infinities as null)."""
    return json.dumps(
        json_safe(obj), sort_keys=True, allow_nan=False, default=_json_default, **kwargs
    )


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


# ---- TFRecord datasets --------------------------------------------------------------------------
# Layout of a dataset directory:
#   <split>-<i>-of-<n>.tfrecord   shards, each written to a temporary name and renamed when whole
#   .partial.json                 the request of a run in progress (what a resume must match)
#   dataset_info.json, features.json   tensorflow_datasets' description of the same files, so
#                                 that `tfds.builder_from_directory(dir)` loads it with its splits
#   dustjax_dataset.json          written last: its presence is what makes a dataset complete
# Every feature is a float32 array stored as raw little-endian bytes (tfds' Tensor feature with
# encoding "bytes"); shapes live in the info files. Datasets written before 2026-11-30 have
# dustjax's info in dataset_info.json (no tfds files); they are still read.

DATASET_INFO = "dustjax_dataset.json"
LEGACY_DATASET_INFO = "dataset_info.json"  # dustjax's info before 2026-11-30
TFDS_INFO, TFDS_FEATURES = "dataset_info.json", "features.json"
TFDS_FILE_TEMPLATE = "{SPLIT}-{SHARD_X_OF_Y}.tfrecord"  # = shard_plan's file names
PARTIAL_INFO = ".partial.json"
FORMAT_VERSION = 1
TFRECORD_EXTRA = "pip install 'dustjax[tfrecord]'"


class DatasetError(RuntimeError):
    """A dataset directory that is missing, incomplete, mismatched or corrupt."""


class MissingExtraError(ImportError):
    """An optional dependency (an extra of the dustjax package) that is not installed."""


def import_tensorflow():
    """tensorflow, for the TFRecord datasets only; a `MissingExtraError` naming the extra if it is
    not installed (the core install trains, fits and maps without it)."""
    try:
        import tensorflow as tf
    except ImportError as err:
        raise MissingExtraError(
            f"TFRecord datasets need tensorflow, which is not installed ({err}). Install the "
            f"extra: {TFRECORD_EXTRA}. Training needs no dataset files: the default V-net and "
            "U-Net configs simulate their data on the device (config.data.source='simulate')."
        ) from None
    return tf


def dataset_complete(data_dir: str | os.PathLike) -> bool:
    """Whether `data_dir` holds a complete dataset (its info file was written last)."""
    data_dir = Path(data_dir)
    return (data_dir / DATASET_INFO).exists() or _legacy_info(data_dir) is not None


def _legacy_info(data_dir: Path) -> dict[str, Any] | None:
    """dustjax's info of a dataset written before the tfds files (in dataset_info.json)."""
    path = data_dir / LEGACY_DATASET_INFO
    if (data_dir / DATASET_INFO).exists() or not path.exists():
        return None
    try:
        info = read_json(path)
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) and "format_version" in info else None


def shard_plan(splits: dict[str, int], examples_per_shard: int) -> list[dict[str, Any]]:
    """Shards in writing order: split, file name, first global example index and count.

    Splits occupy consecutive ranges of example indices in the order given; the examples are
    independent draws, so a contiguous split is as random as a shuffled one.
    """
    if examples_per_shard < 1:
        raise ValueError(f"examples_per_shard must be positive, got {examples_per_shard}")
    plan, offset = [], 0
    for split, count in splits.items():
        if count < 0:
            raise ValueError(f"split {split!r} has a negative count {count}")
        num_shards = max(1, -(-count // examples_per_shard)) if count else 0
        for i in range(num_shards):
            start = i * examples_per_shard
            n = min(examples_per_shard, count - start)
            plan.append(
                dict(
                    split=split,
                    file=f"{split}-{i:05d}-of-{num_shards:05d}.tfrecord",
                    start=offset + start,
                    count=n,
                )
            )
        offset += count
    return plan


def write_sharded_dataset(
    out_dir: str | os.PathLike,
    *,
    splits: dict[str, int],
    features: dict[str, tuple[int, ...]],
    make_examples,
    metadata: dict[str, Any],
    examples_per_shard: int = 256,
    chunk: int = 16,
    overwrite: bool = False,
    desc: str = "examples",
    progress: bool = True,
) -> Path:
    """Write a sharded TFRecord dataset, resumably and atomically.

    Args:
      out_dir: the dataset directory.
      splits: example count per split, e.g. ``{"train": 7200, "validation": 1800, "test": 1000}``.
      features: name -> shape of each float32 feature of one example.
      make_examples: ``f(start, count) -> {name: float32 array (count, *shape)}`` for the global
        example indices ``start .. start + count - 1``; it must be a pure function of the indices
        (so a resumed run writes the same bytes as an uninterrupted one).
      metadata: stored in ``dustjax_dataset.json`` (region, simulator, seed, ...); a resumed run
        must ask for the same metadata, splits and features, or it is refused.
      examples_per_shard: shard size; chunk: examples generated per call of `make_examples`.
      overwrite: replace a complete (or partial) dataset already in `out_dir`.

    Returns the dataset directory. ``dustjax_dataset.json`` is written last; a directory without
    it never reads as a dataset. tensorflow_datasets' ``dataset_info.json`` and ``features.json``
    come just before it (`write_tfds_info`). A killed run's temporary files are removed by the
    next run; a run that fails before its first shard removes what it created.
    """
    out_dir = Path(out_dir)
    before = set(p.name for p in out_dir.iterdir()) if out_dir.is_dir() else None
    new_dirs = [d for d in (out_dir, *out_dir.parents) if not d.exists()]
    try:
        return _write_sharded_dataset(
            out_dir, splits=splits, features=features, make_examples=make_examples,
            metadata=metadata, examples_per_shard=examples_per_shard, chunk=chunk,
            overwrite=overwrite, desc=desc, progress=progress,
        )  # fmt: skip
    except BaseException:
        _remove_failed_start(out_dir, before, new_dirs)
        raise


def _remove_failed_start(out_dir: Path, before: set[str] | None, new_dirs) -> None:
    """After a failed run: if it completed no shard, remove what it created (its .partial.json,
    temporary files, the directories it made); completed shards stay, to be resumed."""
    if not out_dir.is_dir():
        return
    created = [p for p in out_dir.iterdir() if p.name not in (before or set())]
    if any(p.suffix == ".tfrecord" for p in created) or any(
        name.endswith(".tfrecord") for name in (before or ())
    ):
        return
    for path in created:
        if path.is_file():
            path.unlink()
    for directory in new_dirs:  # deepest first
        if directory.is_dir() and not any(directory.iterdir()):
            directory.rmdir()


def remove_stale_temporaries(out_dir: Path) -> list[str]:
    """Delete the temporary files (``.<name>.<random>.tmp``, `atomic_path`) that a killed run
    left in a dataset directory; returns their names."""
    stale = sorted(out_dir.glob(".*.tmp"))
    for path in stale:
        path.unlink(missing_ok=True)
    return [p.name for p in stale]


def dataset_settings(request: dict[str, Any]) -> str:
    """The settings of a (partial) dataset request as the make_dataset flags that ask for it,
    e.g. ``--region=SR --shape=16,16,16 --simulator=levy --num=600 --seed=0
    --examples_per_shard=256`` (V-net datasets), else the splits and shard size."""
    meta = request.get("metadata", {})
    region = meta.get("region") if isinstance(meta.get("region"), dict) else None
    num = sum(int(n) for n in request.get("splits", {}).values())
    shard = f"--examples_per_shard={request.get('examples_per_shard')}"
    if region is None or "simulator" not in meta:
        return f"splits {request.get('splits')}, {shard}"
    name = str(region.get("name", "")).split("@")[0]
    flags = [f"--region={name or '?'}"]
    if "@custom" in str(region.get("name", "")):
        flags += [
            "--lower_pc=" + ",".join(f"{v:g}" for v in region["lower_pc"]),
            "--upper_pc=" + ",".join(f"{v:g}" for v in region["upper_pc"]),
        ]
    if "@(" in str(region.get("name", "")):  # re-gridded: the region's default shape otherwise
        flags += ["--shape=" + ",".join(str(n) for n in region.get("shape", []))]
    flags += [f"--simulator={meta['simulator']}", f"--num={num}", f"--seed={meta.get('seed')}"]
    return " ".join([*flags, shard])


def _write_sharded_dataset(
    out_dir: Path,
    *,
    splits,
    features,
    make_examples,
    metadata,
    examples_per_shard,
    chunk,
    overwrite,
    desc,
    progress,
) -> Path:
    import hashlib

    import_tensorflow()  # before anything is written: a clear error naming the extra

    from tqdm.auto import tqdm

    out_dir = ensure_writable_dir(out_dir)
    request = dict(
        format_version=FORMAT_VERSION,
        splits=dict(splits),
        features={k: list(v) for k, v in features.items()},
        examples_per_shard=examples_per_shard,
        metadata=metadata,
    )
    request = json.loads(json.dumps(request, default=_json_default))
    info_path, partial_path = out_dir / DATASET_INFO, out_dir / PARTIAL_INFO
    if overwrite:
        _remove_dataset_files(out_dir)
    elif dataset_complete(out_dir):
        raise DatasetError(
            f"{out_dir} already holds a complete dataset; pass --overwrite to replace it"
        )
    elif partial_path.exists():
        previous = read_json(partial_path)
        if previous != request:
            raise DatasetError(
                f"{out_dir} holds an interrupted dataset made with other settings "
                f"({_diff_keys(previous, request)}): its settings are {dataset_settings(previous)}"
                f", yours {dataset_settings(request)}; resume it with `python -m "
                f"data_gen.make_dataset {dataset_settings(previous)} --out={out_dir}`, or pass "
                "--overwrite to start again with yours"
            )
    stale = remove_stale_temporaries(out_dir)
    if stale:
        logging.getLogger(__name__).info("removed a killed run's temporary files: %s", stale)
    write_json(partial_path, request)

    plan = shard_plan(splits, examples_per_shard)
    total = sum(s["count"] for s in plan)
    done = sum(s["count"] for s in plan if (out_dir / s["file"]).exists())
    bar = tqdm(total=total, initial=done, desc=desc, unit="ex", disable=not progress)
    shards_info = []
    for shard in plan:
        path = out_dir / shard["file"]
        if not path.exists():
            _write_shard(path, shard, features, make_examples, chunk, bar)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        shards_info.append(dict(shard, bytes=path.stat().st_size, sha256=digest))
    bar.close()
    info = dict(request, shards=shards_info, num_examples=total)
    write_tfds_info(out_dir, info)
    write_json(info_path, info)
    partial_path.unlink()
    return out_dir


def tfds_name(metadata: dict[str, Any]) -> str:
    """The dataset's tfds name: ``dustjax_<kind or simulator>`` (letters, digits, underscores)."""
    kind = str(metadata.get("kind") or metadata.get("simulator") or "dataset")
    return "dustjax_" + "".join(c if c.isalnum() else "_" for c in kind).lower()


def write_tfds_info(out_dir: str | os.PathLike, info: dict[str, Any]) -> None:
    """tensorflow_datasets' ``dataset_info.json`` and ``features.json`` for a dataset's shards
    (written without importing tfds): ``tfds.builder_from_directory(out_dir)`` then loads it, each
    split under its name, each feature a float32 `tfds.features.Tensor` in physical units."""
    out_dir = Path(out_dir)
    by_split: dict[str, list[dict[str, Any]]] = {name: [] for name in info["splits"]}
    for shard in info["shards"]:
        by_split[shard["split"]].append(shard)
    metadata = info.get("metadata", {})
    tensor = "tensorflow_datasets.core.features.tensor_feature.Tensor"
    features = {
        name: {
            "pythonClassName": tensor,
            "tensor": {
                "shape": {"dimensions": [str(int(n)) for n in shape]},
                "dtype": "float32",
                "encoding": "bytes",
            },
        }
        for name, shape in info["features"].items()
    }
    write_json(
        out_dir / TFDS_FEATURES,
        {
            "type": "tensorflow_datasets.core.features.features_dict.FeaturesDict",
            "content": {"features": features},
            "proto_cls": "tensorflow_datasets.FeaturesDict",
        },
    )
    units = metadata.get("units", {})
    write_json(
        out_dir / TFDS_INFO,
        {
            "name": tfds_name(metadata),
            "description": (
                f"Simulated by dustjax {metadata.get('dustjax_version', '')}: float32 features "
                + ", ".join(f"{k} ({units.get(k, 'physical units')})" for k in info["features"])
                + f". Full metadata in {DATASET_INFO}."
            ),
            "version": "1.0.0",
            "fileFormat": "tfrecord",
            "moduleName": "dustjax.io",
            "splits": [
                {
                    "name": name,
                    "shardLengths": [str(s["count"]) for s in shards],
                    "numBytes": str(sum(s.get("bytes", 0) for s in shards)),
                    "filepathTemplate": TFDS_FILE_TEMPLATE,
                }
                for name, shards in by_split.items()
                if shards
            ],
        },
    )


def _write_shard(path: Path, shard, features, make_examples, chunk, bar) -> None:
    import numpy as np

    tf = import_tensorflow()

    starts = list(range(shard["start"], shard["start"] + shard["count"], chunk))
    counts = [min(chunk, shard["start"] + shard["count"] - s) for s in starts]
    with atomic_path(path) as tmp:
        with tf.io.TFRecordWriter(str(tmp)) as writer:
            # Ask for the next chunk before serialising this one: JAX computes asynchronously,
            # so simulation and TFRecord writing overlap.
            pending = make_examples(starts[0], counts[0])
            for i, n in enumerate(counts):
                arrays = pending
                if i + 1 < len(starts):
                    pending = make_examples(starts[i + 1], counts[i + 1])
                for name, shape in features.items():
                    got = tuple(np.shape(arrays[name]))
                    if got != (n, *shape):
                        raise DatasetError(
                            f"make_examples gave {name} of shape {got}, expected {(n, *shape)}"
                        )
                arrays = {k: np.asarray(arrays[k], dtype="<f4") for k in features}
                for j in range(n):
                    feats = {
                        k: tf.train.Feature(bytes_list=tf.train.BytesList(value=[a[j].tobytes()]))
                        for k, a in arrays.items()
                    }
                    example = tf.train.Example(features=tf.train.Features(feature=feats))
                    writer.write(example.SerializeToString())
                bar.update(n)


def _remove_dataset_files(out_dir: Path) -> None:
    # The completeness markers go first, so an interrupted removal never looks complete.
    for name in (DATASET_INFO, LEGACY_DATASET_INFO, PARTIAL_INFO, TFDS_INFO, TFDS_FEATURES):
        (out_dir / name).unlink(missing_ok=True)
    for shard in out_dir.glob("*.tfrecord"):
        shard.unlink()


def _diff_keys(a: dict, b: dict) -> str:
    keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    return "differs in " + ", ".join(keys)


def read_dataset_info(data_dir: str | os.PathLike) -> dict[str, Any]:
    """The metadata of a complete dataset; a clear `DatasetError` otherwise."""
    data_dir = Path(data_dir)
    info_path = data_dir / DATASET_INFO
    legacy = _legacy_info(data_dir)
    if legacy is not None:
        info_path = data_dir / LEGACY_DATASET_INFO
    if not info_path.exists():
        if (data_dir / PARTIAL_INFO).exists():
            settings = dataset_settings(read_json(data_dir / PARTIAL_INFO))
            raise DatasetError(
                f"{data_dir} holds an interrupted dataset (no {DATASET_INFO}); finish it with "
                f"`python -m data_gen.make_dataset {settings} --out={data_dir}` (the settings "
                "it was started with)"
            )
        raise DatasetError(f"no dataset in {data_dir} (no {DATASET_INFO})")
    info = legacy if legacy is not None else read_json(info_path)
    if info.get("format_version") != FORMAT_VERSION:
        raise DatasetError(
            f"{info_path} has format version {info.get('format_version')}, "
            f"this dustjax reads {FORMAT_VERSION}"
        )
    return info


def verify_dataset(data_dir: str | os.PathLike, checksums: bool = False) -> dict[str, Any]:
    """Check that every shard is present with its recorded size (and sha256 if asked)."""
    import hashlib

    data_dir = Path(data_dir)
    info = read_dataset_info(data_dir)
    for shard in info["shards"]:
        path = data_dir / shard["file"]
        if not path.exists():
            raise DatasetError(f"corrupt dataset {data_dir}: shard {shard['file']} is missing")
        if path.stat().st_size != shard["bytes"]:
            raise DatasetError(
                f"corrupt shard {path}: {path.stat().st_size} bytes, expected {shard['bytes']}"
            )
        if checksums and hashlib.sha256(path.read_bytes()).hexdigest() != shard["sha256"]:
            raise DatasetError(f"corrupt shard {path}: sha256 does not match dataset_info.json")
    return info


def tfrecord_dataset(
    data_dir: str | os.PathLike,
    split: str,
    *,
    process_index: int = 0,
    process_count: int = 1,
):
    """A tf.data.Dataset of ``{name: float32 tensor}`` for one split (physical units).

    With several processes (multi-host), each reads a disjoint part: whole shards when there are
    at least as many shards as processes, else every `process_count`-th example.
    """
    tf = import_tensorflow()

    data_dir = Path(data_dir)
    info = verify_dataset(data_dir)
    files = [str(data_dir / s["file"]) for s in info["shards"] if s["split"] == split]
    if not files:
        raise DatasetError(
            f"split {split!r} not in {data_dir}; splits there: {sorted(info['splits'])}"
        )
    shapes = {k: tuple(v) for k, v in info["features"].items()}
    spec = {k: tf.io.FixedLenFeature([], tf.string) for k in shapes}

    def parse(record):
        parsed = tf.io.parse_single_example(record, spec)
        return {
            k: tf.reshape(tf.io.decode_raw(parsed[k], tf.float32, little_endian=True), shapes[k])
            for k in shapes
        }

    if process_count > 1 and len(files) >= process_count:
        files = files[process_index::process_count]
        ds = tf.data.TFRecordDataset(files)
    else:
        ds = tf.data.TFRecordDataset(files)
        if process_count > 1:
            ds = ds.shard(process_count, process_index)
    return ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE)

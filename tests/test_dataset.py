"""TFRecord datasets: splits, determinism, interruption and resume, corruption, bad input."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from data_gen.make_dataset import ensure_dataset, make_dataset
from dustjax.io import (
    DATASET_INFO,
    DatasetError,
    read_dataset_info,
    tfrecord_dataset,
    verify_dataset,
    write_sharded_dataset,
)
from dustjax.vnet.data import (
    MissingDatasetError,
    require_dataset,
    simulate_source,
    split_sizes,
    tfrecord_batches,
)
from experiments.configs.vnet_common import vnet_config

REPO = Path(__file__).resolve().parents[1]


def test_split_sizes_follow_the_paper():
    assert split_sizes(10_000) == {"train": 7200, "validation": 1800, "test": 1000}
    assert sum(split_sizes(37).values()) == 37
    with pytest.raises(ValueError, match="positive"):
        split_sizes(0)


def _fake_examples(start, count, fail_at=None):
    if fail_at is not None and start >= fail_at:
        raise KeyboardInterrupt  # an interrupted run
    index = np.arange(start, start + count, dtype=np.float32)
    return {"a": index[:, None, None] + np.zeros((count, 2, 3), np.float32)}


def _write(out, fail_at=None, overwrite=False, splits=None):
    return write_sharded_dataset(
        out,
        splits=splits or {"train": 7, "validation": 3, "test": 2},
        features={"a": (2, 3)},
        make_examples=lambda s, c: _fake_examples(s, c, fail_at),
        metadata={"seed": 0},
        examples_per_shard=2,
        chunk=1,
        overwrite=overwrite,
        progress=False,
    )


def _shard_bytes(path):
    return {p.name: p.read_bytes() for p in sorted(Path(path).glob("*.tfrecord"))}


def test_interrupted_run_is_not_complete_and_resumes_to_the_same_bytes(tmp_path):
    reference = _write(tmp_path / "ref")
    with pytest.raises(KeyboardInterrupt):
        _write(tmp_path / "run", fail_at=5)
    assert not (tmp_path / "run" / DATASET_INFO).exists()
    with pytest.raises(DatasetError, match="interrupted"):
        read_dataset_info(tmp_path / "run")
    with pytest.raises(MissingDatasetError, match="make data REGION=SR"):
        require_dataset(tmp_path / "run")
    assert not list((tmp_path / "run").glob("*.tmp"))  # no half-written shard under any name
    _write(tmp_path / "run")
    assert _shard_bytes(tmp_path / "run") == _shard_bytes(reference)
    info = read_dataset_info(tmp_path / "run")
    assert info["num_examples"] == 12 and info["splits"]["validation"] == 3
    values = [int(ex["a"][0, 0]) for ex in tfrecord_dataset(reference, "validation")]
    assert values == [7, 8, 9]


def test_complete_dataset_is_kept_unless_overwrite(tmp_path):
    _write(tmp_path / "d")
    with pytest.raises(DatasetError, match="--overwrite"):
        _write(tmp_path / "d")
    _write(tmp_path / "d", overwrite=True)
    assert read_dataset_info(tmp_path / "d")["num_examples"] == 12


def test_resume_with_other_settings_is_refused(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        _write(tmp_path / "d", fail_at=3)
    with pytest.raises(DatasetError, match="other settings"):
        _write(tmp_path / "d", splits={"train": 9, "validation": 3, "test": 2})


def test_corrupt_shards_are_reported(tmp_path):
    out = _write(tmp_path / "d")
    shard = out / "train-00001-of-00004.tfrecord"
    data = bytearray(shard.read_bytes())
    data[30] ^= 0xFF  # same size, bad CRC
    shard.write_bytes(bytes(data))
    with pytest.raises(DatasetError, match="sha256"):
        verify_dataset(out, checksums=True)
    shard.write_bytes(bytes(data[:-5]))  # truncated
    with pytest.raises(DatasetError, match="corrupt shard"):
        verify_dataset(out)


@pytest.fixture(scope="module")
def lr_dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("lr")
    make_dataset("LR", 20, str(out), seed=7, examples_per_shard=4, chunk=4, progress=False)
    return out


def test_same_seed_same_bytes(lr_dataset, tmp_path):
    make_dataset("LR", 20, str(tmp_path), seed=7, examples_per_shard=4, chunk=4, progress=False)
    assert _shard_bytes(tmp_path) == _shard_bytes(lr_dataset)
    info = read_dataset_info(lr_dataset)
    assert info["metadata"]["region"]["name"] == "LR"
    assert info["metadata"]["simulator"] == "lognormal" and info["metadata"]["seed"] == 7
    assert info["splits"] == {"train": 14, "validation": 4, "test": 2}
    assert info["features"] == {"extinction": [32, 32, 32], "density": [32, 32, 32]}


def test_both_sources_yield_identical_looking_batches(lr_dataset):
    from_files = next(tfrecord_batches(lr_dataset, "train", 4, shuffle=False))
    config = vnet_config("simulated", "LR")
    config.data.source, config.num_devices = "simulate", 1
    simulated = next(iter(simulate_source(config, "train", batch_size=4, seed=7, epoch=0,
                                          train=True)))  # fmt: skip
    for batch in (from_files, simulated):
        assert set(batch) == {"extinction", "density"}
        for value in batch.values():
            assert value.shape == (4, 32, 32, 32, 1) and value.dtype == np.float32
    # normalisation is eqs. 1-2 of the raw physical cubes
    raw = next(iter(tfrecord_dataset(lr_dataset, "train")))
    np.testing.assert_allclose(
        from_files["extinction"][0, ..., 0], np.log1p(raw["extinction"]), rtol=1e-6
    )
    np.testing.assert_allclose(
        from_files["density"][0, ..., 0], 10 * np.log1p(raw["density"]), rtol=1e-6
    )


def test_ensure_dataset_makes_a_missing_dataset_once(tmp_path):
    config = vnet_config("ensure", "LR")
    config.data.data_dir, config.data.num_examples, config.seed = str(tmp_path / "d"), 10, 7
    ensure_dataset(config)
    info = read_dataset_info(tmp_path / "d")
    assert info["splits"] == split_sizes(10) and info["metadata"]["seed"] == 7
    stamp = (tmp_path / "d" / DATASET_INFO).stat().st_mtime_ns
    ensure_dataset(config)  # there: nothing is rewritten
    assert (tmp_path / "d" / DATASET_INFO).stat().st_mtime_ns == stamp
    config.data.source = "simulate"
    config.data.data_dir = str(tmp_path / "none")
    ensure_dataset(config)  # a simulate config needs no dataset
    assert not (tmp_path / "none").exists()


def test_per_process_sharding_partitions_the_split(lr_dataset):
    def ids(**kw):
        batches = tfrecord_batches(
            lr_dataset, "train", 1, shuffle=False, drop_remainder=False, **kw
        )
        return {float(b["density"].sum()) for b in batches}

    everything = ids(process_index=0, process_count=1)
    part0 = ids(process_index=0, process_count=2)
    part1 = ids(process_index=1, process_count=2)
    assert part0 | part1 == everything and not part0 & part1 and len(everything) == 14


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "data_gen.make_dataset", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
        timeout=300,
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["--region=XR", "--num=4"], "unknown region 'XR'"),
        (["--region=SR", "--num=0"], "--num must be a positive"),
        (["--region=SR", "--num=4", "--out=/proc/forbidden"], "cannot create output directory"),
        (
            ["--region=SR", "--num=4", "--lower_pc=0,-9,-9", "--upper_pc=-10,9,9"],
            "X bounds are empty or inverted",
        ),
    ],
)
def test_cli_bad_input_one_clear_line(args, message, tmp_path):
    result = _cli(*args)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("make_dataset:")]
    assert len(errors) == 1 and message in errors[0]


def test_a_dataset_of_another_region_or_shape_is_refused(lr_dataset):
    """Issue 19 (1, 2): the LR dataset under an SR config, or under a config of another cube
    shape, is refused with one line naming both; the matching config passes."""
    from dustjax.vnet.data import check_dataset_matches

    info = read_dataset_info(lr_dataset)
    config = vnet_config("lr", "LR")
    config.data.data_dir = str(lr_dataset)
    check_dataset_matches(config, info)  # the matching config is accepted

    sr = vnet_config("sr", "SR")
    sr.data.data_dir = str(lr_dataset)
    with pytest.raises(ValueError, match="holds region LR cubes but the config trains on SR"):
        check_dataset_matches(sr, info)

    config.data.shape = (16, 16, 16)
    with pytest.raises(ValueError, match=r"shape \(32, 32, 32\) .* \(16, 16, 16\)") as err:
        check_dataset_matches(config, info)
    assert "\n" not in str(err.value)
    config.data.simulator = "levy"  # and the simulator check reads the same metadata
    with pytest.raises(ValueError, match="holds 'lognormal' cubes"):
        check_dataset_matches(config, info)


def test_tensorflow_datasets_loads_the_splits(tmp_path):
    """`tfds.builder_from_directory` reads a dustjax dataset: every split with its count, every
    feature float32 of its shape, the same values as dustjax's own reader."""
    tfds = pytest.importorskip("tensorflow_datasets")
    out = _write(tmp_path / "d")
    builder = tfds.builder_from_directory(str(out))
    splits = {name: split.num_examples for name, split in builder.info.splits.items()}
    assert splits == {"train": 7, "validation": 3, "test": 2}
    assert builder.info.features["a"].shape == (2, 3)
    assert np.dtype(builder.info.features["a"].np_dtype) == np.float32
    for split in splits:
        ours = [ex["a"] for ex in tfrecord_dataset(out, split).as_numpy_iterator()]
        theirs = [ex["a"] for ex in tfds.as_numpy(builder.as_dataset(split, shuffle_files=False))]
        np.testing.assert_array_equal(np.stack(theirs), np.stack(ours))
    assert [int(a[0, 0]) for a in theirs] == [10, 11]  # the test split: examples 10 and 11


def test_a_dataset_from_before_the_tfds_files_still_reads(tmp_path):
    """dustjax's info used to live in dataset_info.json (now tfds' file): such a dataset reads,
    counts as complete, and --overwrite replaces it."""
    from dustjax.io import LEGACY_DATASET_INFO, TFDS_FEATURES, dataset_complete

    out = _write(tmp_path / "old")
    (out / DATASET_INFO).replace(out / LEGACY_DATASET_INFO)
    (out / TFDS_FEATURES).unlink()
    assert dataset_complete(out)
    assert read_dataset_info(out)["splits"] == {"train": 7, "validation": 3, "test": 2}
    assert [int(ex["a"][0, 0]) for ex in tfrecord_dataset(out, "validation")] == [7, 8, 9]
    with pytest.raises(DatasetError, match="already holds a complete dataset"):
        _write(out)
    _write(out, overwrite=True)
    assert (out / DATASET_INFO).exists() and (out / TFDS_FEATURES).exists()


def test_without_tensorflow_the_tfrecord_path_names_the_extra(tmp_path, monkeypatch):
    """No tensorflow (the core install): one clear error naming the extra, and nothing written."""
    from dustjax.io import MissingExtraError

    monkeypatch.setitem(sys.modules, "tensorflow", None)  # `import tensorflow` now fails
    with pytest.raises(MissingExtraError, match=r"pip install 'dustjax\[tfrecord\]'"):
        _write(tmp_path / "d")
    assert not (tmp_path / "d").exists() or not any((tmp_path / "d").iterdir())
    with pytest.raises(MissingExtraError, match="tfrecord"):
        next(iter(tfrecord_batches(tmp_path / "d", "train", 2)))

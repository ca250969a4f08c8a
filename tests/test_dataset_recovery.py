"""What a killed or failed dataset run leaves, and what the next run and the hints say
(issue 19, item 8 and the interrupted-dataset hint)."""

from __future__ import annotations

import numpy as np
import pytest

from dustjax.io import (
    DATASET_INFO,
    PARTIAL_INFO,
    DatasetError,
    dataset_settings,
    read_dataset_info,
    write_sharded_dataset,
)

METADATA = dict(  # what data_gen.make_dataset records
    region=dict(name="SR@(16, 16, 16)", lower_pc=[-192, -96, -96], upper_pc=[0, 96, 96],
                shape=[16, 16, 16]),
    simulator="levy", seed=3,
)  # fmt: skip


def _write(out, fail_at=None, splits=None):
    def make_examples(start, count):
        if fail_at is not None and start >= fail_at:
            raise RuntimeError("simulator failed")
        index = np.arange(start, start + count, dtype=np.float32)
        return {"a": index[:, None] + np.zeros((count, 2), np.float32)}

    return write_sharded_dataset(
        out, splits=splits or {"train": 4, "validation": 2, "test": 2}, features={"a": (2,)},
        make_examples=make_examples, metadata=METADATA, examples_per_shard=2, chunk=2,
        progress=False,
    )  # fmt: skip


def test_a_killed_runs_temporary_shards_are_removed_by_the_next_run(tmp_path):
    out = tmp_path / "d"
    with pytest.raises(RuntimeError):
        _write(out, fail_at=2)  # one shard complete: kept for the resume
    # what `kill -9` in the middle of a shard leaves: atomic_path's temporary file
    stale = out / ".train-00001-of-00002.tfrecord.k1ll3d.tmp"
    stale.write_bytes(b"half a shard")
    _write(out)
    assert not stale.exists() and not list(out.glob(".*.tmp"))
    assert read_dataset_info(out)["num_examples"] == 8


def test_a_run_failing_before_its_first_shard_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError, match="simulator failed"):
        _write(tmp_path / "data" / "SR", fail_at=0)
    assert not (tmp_path / "data").exists()  # neither the directory nor its parent
    existing = tmp_path / "mine"
    existing.mkdir()
    (existing / "notes.txt").write_text("mine")
    with pytest.raises(RuntimeError):
        _write(existing, fail_at=0)
    assert [p.name for p in existing.iterdir()] == ["notes.txt"]


def test_the_interrupted_dataset_hint_gives_the_settings_that_resume_it(tmp_path):
    out = tmp_path / "d"
    with pytest.raises(RuntimeError):
        _write(out, fail_at=4)
    assert (out / PARTIAL_INFO).exists() and not (out / DATASET_INFO).exists()
    settings = (
        "--region=SR --shape=16,16,16 --simulator=levy --num=8 --seed=3 --examples_per_shard=2"
    )
    with pytest.raises(DatasetError) as err:
        read_dataset_info(out)
    assert f"python -m data_gen.make_dataset {settings} --out={out}" in str(err.value)
    # asking for another size is refused with both settings and the command that resumes
    with pytest.raises(DatasetError) as err:
        _write(out, splits={"train": 8, "validation": 2, "test": 2})
    assert f"its settings are {settings}" in str(err.value)
    assert "--num=12" in str(err.value) and "--overwrite" in str(err.value)
    assert dataset_settings({"splits": {"train": 2}, "examples_per_shard": 1}) == (
        "splits {'train': 2}, --examples_per_shard=1"
    )


def test_training_on_an_interrupted_dataset_names_the_command_that_finishes_it(tmp_path):
    from dustjax.vnet.data import MissingDatasetError, require_dataset

    out = tmp_path / "d"
    with pytest.raises(RuntimeError):
        _write(out, fail_at=4)
    with pytest.raises(MissingDatasetError) as err:
        require_dataset(out, "SR")
    assert str(err.value) == (
        f"{out} holds an interrupted dataset; finish it with `python -m data_gen.make_dataset "
        f"--region=SR --shape=16,16,16 --simulator=levy --num=8 --seed=3 --examples_per_shard=2 "
        f"--out={out}`"
    )  # (it said `make data REGION=SR DATA=...`: N=10000 cubes, refused as other settings)


def test_the_regions_own_shape_keeps_its_name_so_a_hinted_resume_matches():
    from data_gen.make_dataset import region_from_flags

    assert region_from_flags("LR", ["32", "32", "32"]).name == "LR"
    assert region_from_flags("SR", ["16", "16", "16"]).name == "SR@(16, 16, 16)"

"""tools.guard_replay: the collapse guard's verdicts on recorded runs, with checked input."""

import json

import pytest

from tools import guard_replay


def _write(path, losses):
    rows = [dict(epoch=e, train_loss=t, val_loss=v) for e, (t, v) in enumerate(losses, 1)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_table_names_each_verdict(tmp_path):
    spiky = _write(tmp_path / "spiky_metrics.jsonl", [(4, 5), (2, 2), (2, 7), (3, 6.5)])
    calm = _write(tmp_path / "calm_metrics.jsonl", [(4, 5), (2, 2), (1.9, 1.8)])
    runs = {p.name.removesuffix("_metrics.jsonl"): guard_replay.read_rows(p) for p in (spiky, calm)}
    lines = guard_replay.table(runs, dict(factor=3.0, train_factor=1.3)).splitlines()
    assert lines[2:] == [
        "| spiky | 3 | 3.50 | 1.00 | validation |",
        "| spiky | 4 | 3.25 | 1.50 | collapse |",
        "| calm | - | - | - | none |",
    ]
    every = guard_replay.table(runs, dict(factor=3.0, train_factor=0.0)).splitlines()
    assert every[2] == "| spiky | 3 | 3.50 | 1.00 | collapse |"
    assert every[3].endswith("collapse (after a collapse) |")


def test_bad_input_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        guard_replay.read_rows(tmp_path / "missing.jsonl")
    (tmp_path / "eval.jsonl").write_text(json.dumps(dict(epoch=1, loss=2.0)) + "\n")
    with pytest.raises(ValueError, match="not a training metrics.jsonl"):
        guard_replay.read_rows(tmp_path / "eval.jsonl")
    (tmp_path / "broken.jsonl").write_text('{"epoch": 1,\n')
    with pytest.raises(ValueError, match="broken.jsonl:1: not JSON"):
        guard_replay.read_rows(tmp_path / "broken.jsonl")
    _write(tmp_path / "order.jsonl", [(1, 1), (1, 1)])
    rows = (tmp_path / "order.jsonl").read_text().splitlines()
    (tmp_path / "order.jsonl").write_text(rows[1] + "\n" + rows[0] + "\n")
    with pytest.raises(ValueError, match="out of order"):
        guard_replay.read_rows(tmp_path / "order.jsonl")

"""The row record (recsys/data/record.py) is the one definition of a row: every operation on Columns, Batch and
Predictions covers every field it declares, and a field added to it reaches evaluation on every rank with no
other edit (issue 18, item 1)."""

import json
import os
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import REPO

from recsys.config import SideColumnsConfig, SplitConfig
from recsys.data.batch import Batch
from recsys.data.columns import Columns, Ragged
from recsys.data.dataset import Dataset
from recsys.data.loader import padding_columns
from recsys.data.record import EvalFields, arrays, row_fields
from recsys.data.spec import load_spec
from recsys.schema import Schema, SparseFeature, Task
from recsys.train import metrics
from recsys.train.metrics import PredictionCollector, Predictions

N = 7
FEATURES = ["single", "multi"]


def full_columns(seed: int = 0) -> Columns:
    """Columns with every field of the record present and distinct values everywhere, built from the definition
    alone (two keys per keyed field), so a field added to the record is covered here too."""
    rng = np.random.default_rng(seed)
    values = {}
    for name, f in row_fields(Columns):
        def column(shape, dtype=f.dtype):
            if np.issubdtype(dtype, np.integer):
                return rng.integers(0, 1 << 40, shape).astype(dtype)
            return rng.normal(size=shape).astype(dtype)

        if f.layout == "sparse":
            offsets = np.concatenate([[0], np.cumsum(rng.integers(1, 4, N))]).astype(np.int64)
            values[name] = {"single": rng.integers(0, 50, N).astype(np.int64),
                            "multi": Ragged(rng.integers(0, 50, offsets[-1]).astype(np.int64), offsets)}
        elif f.layout == "keyed":
            values[name] = {f"{name}_a": column(N), f"{name}_b": column(N)}
        elif f.layout == "matrix":
            values[name] = column((N, 3))
        else:
            values[name] = column(N)
    values["row_id"] = np.arange(N, dtype=np.int64) * 10  # distinct and >= 0 (evaluation keeps them)
    values["weights"] = np.linspace(0.5, 2.0, N).astype(np.float32)
    return Columns(**values)


def each_array(record):
    """{field or field/key: array} over every field but the sparse features (absent ones as None)."""
    out = {}
    for name, f in row_fields(type(record)):
        value = getattr(record, name)
        if f.layout == "keyed":
            out.update({f"{name}/{k}": v for k, v in value.items()})
        elif f.layout != "sparse":
            out[name] = value
    return out


def assert_same_rows(got, expected, rows=None):
    """Every array of record ``got`` equals ``expected``'s (rows ``rows`` of it), dtypes included."""
    want = each_array(expected)
    have = each_array(got)
    assert set(have) == set(want)
    for key, value in want.items():
        value = value if rows is None else value[rows]
        actual = have[key].numpy() if isinstance(have[key], torch.Tensor) else have[key]
        assert actual.dtype == value.dtype, key
        np.testing.assert_array_equal(actual, value, err_msg=key)


def test_columns_take_concat_and_pack_cover_every_field():
    cols = full_columns()
    idx = np.array([3, 0, 3, 6])
    assert_same_rows(cols.take(idx), cols, idx)
    assert_same_rows(cols.pack().take(idx), cols, idx)
    for first, second in ((cols, cols), (cols.pack(), cols.pack())):
        joined = Columns.concat([first.take(np.arange(3)), second.take(np.arange(3, N))])
        assert_same_rows(joined, cols)
        assert joined.sparse["multi"].values.tolist() == cols.sparse["multi"].values.tolist()
    assert cols.nbytes() == sum(a.nbytes for a in arrays(cols)) + cols.sparse["single"].nbytes + (
        cols.sparse["multi"].values.nbytes + cols.sparse["multi"].offsets.nbytes)


def test_an_optional_field_present_in_some_parts_only_is_refused():
    cols = full_columns()
    with pytest.raises(ValueError, match="some parts carry 'time' and some do not"):
        Columns.concat([cols, Columns(**{**{n: getattr(cols, n) for n, _ in row_fields(Columns)}, "time": None})])


def test_batch_conversion_device_moves_stream_recording_and_pinning_cover_every_field(monkeypatch):
    cols = full_columns()
    batch = cols.to_batch(FEATURES)
    assert_same_rows(batch, cols)
    assert batch.sparse.keys() == FEATURES and batch.sparse.stride() == N
    assert batch.sparse["multi"].values().tolist() == cols.sparse["multi"].values.tolist()

    moved = batch.to(torch.device("meta"))
    assert {t.device.type for t in arrays(moved)} == {"meta"} and moved.sparse.values().device.type == "meta"
    assert len(list(arrays(moved))) == len(list(arrays(batch))) == len(each_array(cols))

    recorded = []
    monkeypatch.setattr(torch.Tensor, "record_stream", lambda t, stream: recorded.append(t))
    batch.record_stream(object())
    for t in arrays(batch):  # every tensor of every field, then the KJT's own
        assert any(r is t for r in recorded)

    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda t: t.clone())
    pinned = batch.pin_memory()
    assert_same_rows(pinned, cols)
    assert not any(p is t for p, t in zip(arrays(pinned), arrays(batch)))


def test_absent_optional_fields_are_none_in_columns_and_empty_in_batches():
    cols = full_columns()
    bare = Columns(**{**{n: getattr(cols, n) for n, _ in row_fields(Columns)}, "time": None, "user_key": None})
    batch = bare.to_batch(FEATURES)
    optional = [name for name, f in row_fields(Batch) if f.optional]
    assert optional == ["user_key", "time"]
    for name in optional:
        assert getattr(batch, name).numel() == 0
        assert getattr(batch, name).dtype == getattr(cols.to_batch(FEATURES), name).dtype
    preds = Predictions.of_batch(batch, batch.row_id >= 0, [], {})
    assert preds.user_key is None and preds.users is preds.user


def test_padding_and_empty_records_follow_the_layout():
    cols = full_columns()
    pad = padding_columns(cols, rows=3)
    assert pad.layout() == cols.layout()
    for name, f in row_fields(Columns):
        if f.layout == "sparse":
            assert pad.sparse["single"].tolist() == [0, 0, 0]
            assert pad.sparse["multi"].values.tolist() == [0, 0, 0]
            assert pad.sparse["multi"].lengths.tolist() == [1, 1, 1]
            continue
        for key, value in each_array(pad).items():
            if key.split("/")[0] == name:
                assert value.dtype == f.dtype and (value == f.pad).all(), key
    assert (pad.row_id == -1).all() and (pad.user == -1).all() and (pad.weights == 0).all()
    empty = Columns.blank(cols.layout(), 0)
    assert len(empty) == 0 and empty.layout() == cols.layout()
    assert_same_rows(Columns.concat([empty, cols]), cols)


def test_a_datasets_layout_names_every_field_its_rows_carry(tiny_world, tmp_path):
    """Dataset.layout (what padding and empty splits copy) matches the encoded rows in every field, here with
    every optional part of a spec in use: history, time, user, oracle, groups, side columns, multi-hot."""
    side = tmp_path / "side.csv"
    side.write_text("row_id,flag\n0,1\n5,1\n")
    ds = Dataset(load_spec(os.path.join(REPO, "configs", "datasets", "synthetic.yaml")), root=tiny_world,
                 split=SplitConfig(valid=0.2, test=0.2), max_rows=2000,
                 side_columns=[SideColumnsConfig(str(side), ["flag"])])
    ds.fit()
    train = ds.read(splits=("train",))["train"]
    layout = train.layout()
    assert ds.empty().layout() == layout == ds.layout()
    assert all(layout.keys[name] for name, f in row_fields(Columns) if f.layout == "keyed")  # none left empty
    assert layout.present >= {name for name, f in row_fields(Columns) if f.optional}


SCHEMA = Schema(sparse=(SparseFeature("single", 50), SparseFeature("multi", 50, multi_hot=True)),
                tasks=(Task("labels_a"), Task("labels_b", kind="regression")))


def test_predictions_keep_every_evaluated_field_of_the_kept_rows_and_travel_as_columns():
    cols = full_columns()
    cols.labels["labels_a"] = (np.arange(N) % 2).astype(np.float32)
    batch = cols.to_batch(FEATURES)
    batch.weights[1] = 0.0  # dropped like padding
    collector = PredictionCollector(SCHEMA)
    collector.add({"labels_a": torch.zeros(N), "labels_b": torch.arange(N, dtype=torch.float32)}, batch)
    preds = collector.local()
    kept = np.array([0, 2, 3, 4, 5, 6])
    evaluated = [name for name, _ in row_fields(EvalFields)]
    assert [name for name, _ in row_fields(Predictions)] == evaluated + ["scores"]
    for name in evaluated:
        want, got = getattr(cols, name), getattr(preds, name)
        if isinstance(want, dict):
            assert list(got) == list(want)
            for k in want:
                np.testing.assert_array_equal(got[k], want[k][kept])
        else:
            np.testing.assert_array_equal(got, want[kept])
    np.testing.assert_array_equal(preds.scores["labels_a"], np.full(len(kept), 0.5, np.float32))
    np.testing.assert_array_equal(preds.scores["labels_b"], kept.astype(np.float32))

    ints, floats = metrics._columns(preds)
    assert {n for n, _ in ints} == {"row_id", "scenario", "user", "user_key", "groups/groups_a", "groups/groups_b"}
    again = metrics._from_columns(dict(ints + floats))
    assert_same_rows(again, preds)
    assert_same_rows(Predictions.concat([preds.subset(np.arange(2)), preds.subset(np.arange(2, len(kept)))]), preds)


# --- the acceptance test: one line in the definition, nothing else ----------------------------------------------
ANCHOR = '    user_key: Optional[A] = row_field("row", np.int64, optional=True)\n'
ADDED = '    session: Optional[A] = row_field("row", np.int64, pad=-7, optional=True)\n'

WORKER = r'''
import json, os, sys
import numpy as np, torch, torch.distributed as dist
from recsys.data.columns import Columns
from recsys.data.loader import BatchLoader
from recsys.schema import Schema, SparseFeature, Task
from recsys.train.metrics import PredictionCollector

dist.init_process_group("gloo")
rank = dist.get_rank()
n = (10, 7)[rank]  # rank 1 runs out of rows: its last batch is padding
row_id = np.arange(n, dtype=np.int64) + 100 * rank
cols = Columns(dense=np.zeros((n, 0), np.float32), sparse={"a": row_id % 5},
               labels={"ctr": (row_id % 2).astype(np.float32)},
               scenario=np.zeros(n, np.int64), user=row_id % 3, weights=np.ones(n, np.float32), row_id=row_id,
               session=row_id * 3 + 1)
schema = Schema(sparse=(SparseFeature("a", 5),), tasks=(Task("ctr"),))
collector, seen = PredictionCollector(schema), []
for batch in BatchLoader(cols, ["a"], batch_size=4, num_batches=3, prefetch=1):
    assert batch.to(torch.device("meta")).session.device.type == "meta"
    seen += batch.session.tolist()
    collector.add({"ctr": torch.zeros(batch.size)}, batch)
preds = collector.gather()
json.dump({"seen": seen, "row_id": preds.row_id.tolist(), "session": preds.session.tolist()},
          open(os.path.join(sys.argv[1], f"rank-{rank}.json"), "w"))
dist.destroy_process_group()
'''


def test_a_field_added_to_the_record_definition_reaches_evaluation_on_every_rank(tmp_path):
    """Issue 18: "adding a per-row field touches one definition". A copy of the package gets one more line in
    recsys/data/record.py and nothing else; the new field then goes Columns -> Batch (prefetch thread) -> device
    move -> padding rows -> Predictions -> the 2-rank tensor all-gather."""
    package = tmp_path / "src"
    shutil.copytree(os.path.join(REPO, "recsys"), package / "recsys", ignore=shutil.ignore_patterns("__pycache__"))
    record = package / "recsys" / "data" / "record.py"
    source = record.read_text()
    assert source.count(ANCHOR) == 1
    record.write_text(source.replace(ANCHOR, ANCHOR + ADDED))
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    with socket.socket() as s:  # a free port for the two ranks' rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [subprocess.Popen([sys.executable, str(worker), str(tmp_path)], cwd=tmp_path, stderr=subprocess.PIPE,
                              text=True, env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(package), RANK=str(r),
                                                  WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)))
             for r in range(2)]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-4000:]
    ranks = [json.loads((tmp_path / f"rank-{r}.json").read_text()) for r in range(2)]
    every_row = list(range(10)) + list(range(100, 107))
    for out in ranks:
        assert out["row_id"] == every_row  # rank order, padding dropped
        assert out["session"] == [r * 3 + 1 for r in every_row]
    assert sorted(ranks[1]["seen"]) == [-7] + sorted(r * 3 + 1 for r in range(100, 107))  # one padding row

import os

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsys.config import SplitConfig, from_dict
from recsys.data.columns import Columns, Ragged
from recsys.data.dataset import SPLITS, Dataset
from recsys.data.loader import BatchLoader
from recsys.data.spec import DatasetSpec, load_spec


def spec_of(data: dict, root: str) -> DatasetSpec:
    spec = from_dict(DatasetSpec, data, source="spec")
    spec.spec_dir = root
    spec.validate("spec")
    return spec


FRAME = pd.DataFrame({
    "uid": ["u3", "u1", "u2", "u1", "u9", "u3", "u1", "u2"],
    "item": [10, 11, 10, 12, 13, 11, 10, 10],
    "tags": ["a|b", "", "c", "a", "b|c|a", "a", None, "c"],
    "price": [1.0, 2.0, 3.5, 0.0, 10.0, 2.0, 1.0, 4.0],
    "click": [1, 0, 1, 0, 1, 1, 0, 0],
    "scene": ["x", "y", "x", "x", "y", "y", "x", "x"],
})


def base_spec(path: str, **extra) -> dict:
    d = {
        "name": "t",
        "source": {"path": path},
        "sparse": [
            {"name": "uid", "group": "user"},
            {"name": "item", "group": "item", "encoding": "hash", "num_embeddings": 7},
            {"name": "tags", "multi_hot": True},
        ],
        "dense": [{"name": "price", "transform": "log1p"}],
        "tasks": [{"name": "ctr", "column": "click"}],
        "scenario": {"column": "scene", "values": ["x", "y"]},
        "user": "uid",
    }
    d.update(extra)
    return d


def fitted(tmp_path, frame=FRAME, fmt="csv", split=None, **extra) -> Dataset:
    path = tmp_path / f"data.{fmt}"
    if fmt == "csv":
        frame.to_csv(path, index=False)
    else:
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path)
    ds = Dataset(spec_of(base_spec(path.name, **extra), str(tmp_path)),
                 split=split or SplitConfig(valid=0.0, test=0.0))
    ds.fit()
    return ds


def test_kjt_matches_frame(tmp_path):
    ds = fitted(tmp_path)
    cols = ds.read()["train"]
    order = np.argsort(cols.row_id)
    batch = cols.take(order).to_batch(ds.schema().feature_names)
    kjt = batch.sparse
    assert kjt.keys() == ["uid", "item", "tags"]
    assert kjt.stride() == len(FRAME)
    jt = kjt.to_dict()
    # uid: vocab ordered by frequency (u1:3, u2:2, u3:2, u9:1), row 0 is OOV
    vocab = {v: i + 1 for i, v in enumerate(["u1", "u2", "u3", "u9"])}
    assert jt["uid"].values().tolist() == [vocab[u] for u in FRAME.uid]
    assert jt["uid"].lengths().tolist() == [1] * len(FRAME)
    # multi-hot: lengths follow the cells ("" and null carry no id), values in cell order
    tags_vocab = {v: i + 1 for i, v in enumerate(["a", "c", "b"])}  # a:4, c:3, b:2
    expected = [[tags_vocab[t] for t in str(c).split("|")] if isinstance(c, str) and c else [] for c in FRAME.tags]
    assert jt["tags"].lengths().tolist() == [len(e) for e in expected]
    assert jt["tags"].values().tolist() == [v for e in expected for v in e]
    # hashed ids are stable and in range; equal raw ids share a row
    item = jt["item"].values().numpy()
    assert ((0 <= item) & (item < 7)).all()
    for raw in FRAME["item"].unique():
        assert len(set(item[FRAME["item"].to_numpy() == raw])) == 1
    np.testing.assert_allclose(batch.dense[:, 0].numpy(), np.log1p(FRAME.price), rtol=1e-6)
    assert batch.labels["ctr"].tolist() == FRAME.click.tolist()
    assert batch.scenario.tolist() == [0 if s == "x" else 1 for s in FRAME.scene]
    assert batch.user.tolist() == jt["uid"].values().tolist()
    assert batch.row_id.tolist() == list(range(len(FRAME)))


def test_csv_and_parquet_encode_alike(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = fitted(tmp_path / "a", fmt="csv").read()["train"]
    b = fitted(tmp_path / "b", fmt="parquet").read()["train"]
    for name in ("uid", "item"):
        np.testing.assert_array_equal(a.sparse[name], b.sparse[name])
    np.testing.assert_array_equal(a.sparse["tags"].values, b.sparse["tags"].values)


def test_unseen_ids_go_to_oov_bucket(tmp_path):
    ds = fitted(tmp_path, split=SplitConfig(kind="random", valid=0.0, test=0.4, seed=1))
    parts = ds.read()
    train_users = set(parts["train"].user.tolist())
    assert 0 not in train_users  # every training value is in the vocabulary
    schema = ds.schema()
    for part in parts.values():
        for name, col in part.sparse.items():
            ids = col.values if isinstance(col, Ragged) else col
            assert ids.min(initial=0) >= 0 and ids.max(initial=0) < schema.feature(name).num_embeddings


def test_random_split_independent_of_chunking_and_deterministic(tmp_path):
    frame = pd.DataFrame({"uid": np.arange(2000) % 37, "item": np.arange(2000) % 11, "tags": "a",
                          "price": 1.0, "click": np.arange(2000) % 2, "scene": "x"})
    path = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path, row_group_size=300)
    spec = spec_of(base_spec("d.parquet"), str(tmp_path))
    split = SplitConfig(valid=0.2, test=0.1, seed=7)
    ids = {}
    for chunk in (128, 5000):
        ds = Dataset(spec, split=split, chunk_rows=chunk)
        ds.fit()
        ids[chunk] = {s: sorted(c.row_id.tolist()) for s, c in ds.read().items()}
    assert ids[128] == ids[5000]
    sizes = {s: len(v) for s, v in ids[128].items()}
    assert sum(sizes.values()) == 2000
    assert 0.15 < sizes["valid"] / 2000 < 0.25 and 0.06 < sizes["test"] / 2000 < 0.14


def test_rank_shards_partition_rows_and_stream_matches_memory(tiny_world):
    spec = load_spec(os.path.join(os.path.dirname(__file__), "..", "configs", "datasets", "synthetic.yaml"))
    ds = Dataset(spec, root=tiny_world, chunk_rows=700)
    ds.fit()
    everything = ds.read()
    per_rank = [ds.read(rank=r, world_size=3) for r in range(3)]
    for split in SPLITS:
        union = np.concatenate([p[split].row_id for p in per_rank])
        assert sorted(union.tolist()) == sorted(everything[split].row_id.tolist())
        assert len(set(union.tolist())) == len(union)
    streamed = Columns.concat(list(ds.stream("train")))
    np.testing.assert_array_equal(streamed.row_id, everything["train"].row_id)
    np.testing.assert_array_equal(streamed.sparse["user_id"], everything["train"].sparse["user_id"])
    # rank 1's rows come from the middle of the files: parquet row groups before it are skipped
    assert per_rank[1]["train"].row_id.min() > 0


def test_time_split_orders_by_time(tiny_world):
    spec = load_spec(os.path.join(os.path.dirname(__file__), "..", "configs", "datasets", "synthetic.yaml"))
    ds = Dataset(spec, root=tiny_world, split=SplitConfig(kind="time", valid=0.1, test=0.2))
    ds.fit()
    parts = ds.read()
    assert parts["train"].time.max() <= parts["valid"].time.min() <= parts["valid"].time.max()
    assert parts["valid"].time.max() <= parts["test"].time.min()
    assert abs(len(parts["test"]) / 6000 - 0.2) < 0.02


def test_encoders_round_trip(tmp_path):
    ds = fitted(tmp_path)
    ds.save(str(tmp_path / "enc"))
    again = Dataset(ds.spec, split=ds.split)
    again.load(str(tmp_path / "enc"))
    a, b = ds.read()["train"], again.read()["train"]
    np.testing.assert_array_equal(a.sparse["uid"], b.sparse["uid"])
    np.testing.assert_array_equal(a.dense, b.dense)
    assert again.schema() == ds.schema()


def write_movielens(root) -> None:
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, "u.data"), "w") as f:
        for i in range(60):
            f.write(f"{1 + i % 5}\t{1 + i % 7}\t{1 + i % 5}\t{880000000 + i}\n")
    with open(os.path.join(root, "u.user"), "w") as f:
        for u, age in zip(range(1, 6), [19, 24, 30, 41, 60]):
            f.write(f"{u}|{age}|{'MF'[u % 2]}|job{u % 3}|0{u}123\n")
    with open(os.path.join(root, "u.item"), "w", encoding="latin-1") as f:
        for i in range(1, 8):
            genres = ["0"] * 19
            genres[(i % 4) + 1] = "1"
            f.write(f"{i}|Caf\xe9 {i} (1995)|01-Jan-1995||http://x|" + "|".join(genres) + "\n")


def test_movielens_spec_joins_and_derives(tmp_path):
    root = tmp_path / "ml"
    write_movielens(str(root))
    spec = load_spec(os.path.join(os.path.dirname(__file__), "..", "configs", "datasets", "movielens-100k.yaml"))
    ds = Dataset(spec, root=str(root), split=SplitConfig(valid=0.0, test=0.0))
    ds.fit()
    cols = ds.read()["train"]
    order = np.argsort(cols.row_id)
    like = cols.labels["like"][order]
    ratings = np.array([1 + i % 5 for i in range(60)])
    np.testing.assert_array_equal(like, (ratings > 3).astype(np.float32))
    users = np.array([1 + i % 5 for i in range(60)])
    age_group = {1: 0, 2: 0, 3: 1, 4: 2, 5: 2}
    np.testing.assert_array_equal(cols.scenario[order], [age_group[u] for u in users])
    schema = ds.schema()
    assert schema.num_scenarios == 3 and schema.scenario_names == ("<25", "25-34", "35+")
    assert schema.feature("first_genre").num_embeddings == 1 + 4  # four distinct genres + OOV


def test_loader_epochs_shuffle_deterministically_and_resume(tiny_world):
    spec = load_spec(os.path.join(os.path.dirname(__file__), "..", "configs", "datasets", "synthetic.yaml"))
    ds = Dataset(spec, root=tiny_world)
    ds.fit()
    train = ds.read()["train"]
    names = ds.schema().feature_names

    def ids(epoch, start=0, **kw):
        loader = BatchLoader(train, names, 500, shuffle=True, seed=1, drop_last=True, prefetch=0, **kw)
        loader.set_epoch(epoch, start)
        return [b.row_id.tolist() for b in loader]

    e0, e0b, e1 = ids(0), ids(0), ids(1)
    assert e0 == e0b and e0 != e1
    assert ids(0, start=3) == e0[3:]
    padded = ids(0, num_batches=len(e0) + 2)
    assert padded[: len(e0)] == e0 and all(r == -1 for b in padded[len(e0):] for r in b)
    assert len(ids(0, num_batches=2)) == 2
    # streaming with a shuffle buffer yields each row once
    stream = BatchLoader(lambda: ds.stream("train"), names, 300, shuffle=True, seed=1, prefetch=2,
                         shuffle_buffer_chunks=2)
    seen = sorted(r for b in stream for r in b.row_id.tolist())
    assert seen == sorted(train.row_id.tolist())


def test_ragged_take_matches_python():
    r = Ragged(np.array([1, 2, 3, 4, 5, 6]), np.array([0, 2, 2, 5, 6]))
    got = r.take(np.array([3, 0, 2, 1, 0]))
    rows = [[1, 2], [], [3, 4, 5], [6]]
    want = [rows[i] for i in [3, 0, 2, 1, 0]]
    assert got.lengths.tolist() == [len(w) for w in want]
    assert got.values.tolist() == [v for w in want for v in w]


def test_label_columns_cannot_be_features(tmp_path):
    from recsys.errors import ConfigError

    d = base_spec("x.csv")
    d["dense"] = [{"name": "leak", "column": "click"}]
    with pytest.raises(ConfigError, match="must not leak"):
        Dataset(spec_of(d, str(tmp_path)))
    d = base_spec("x.csv", derived=[{"name": "clicked", "op": "greater", "column": "click", "value": 0}])
    d["sparse"].append({"name": "clicked"})
    with pytest.raises(ConfigError, match="must not leak"):
        Dataset(spec_of(d, str(tmp_path)))

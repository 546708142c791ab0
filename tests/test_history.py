"""Per-user label history (recsys/data/history.py): leak-free by construction, on a shuffled-time fixture; exact
with as many time buckets as timestamps, bounded (one entry per user and bucket) with fewer."""

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsys.config import SplitConfig, from_dict
from recsys.data.dataset import Dataset
from recsys.data.history import HistoryBuilder, LabelHistory, TimeBuckets, history_keys
from recsys.data.loader import BatchLoader
from recsys.data.spec import DatasetSpec
from recsys.errors import ConfigError

TASKS = ("ctr", "stay", "cvr")
EXACT = {"buckets": 1000}  # more buckets than the fixture's 120 distinct timestamps


def shuffled_time_frame(seed: int = 0, n: int = 400) -> pd.DataFrame:
    """Rows of 6 users whose file order is a random permutation of time order, with timestamp ties."""
    rng = np.random.default_rng(seed)
    ts = rng.integers(0, 120, n) * 10  # ~3 rows per distinct timestamp: ties within a user happen
    click = (rng.random(n) < 0.5).astype(int)
    return pd.DataFrame({
        "row_id": rng.permutation(n) + 1000,
        "ts": ts,
        "uid": rng.choice(["a", "b", "c", "d", "e", "f"], n, p=[0.3, 0.25, 0.2, 0.15, 0.07, 0.03]),
        "item": rng.integers(0, 20, n),
        "click": click,
        "stay": np.where(click == 1, np.round(rng.exponential(60, n), 1), 0.0),
        "order": click * (rng.random(n) < 0.4),
    })


def write(frame: pd.DataFrame, folder) -> None:
    folder.mkdir(exist_ok=True)
    half = len(frame) // 2
    for i, part in enumerate((frame.iloc[:half], frame.iloc[half:])):
        pq.write_table(pa.Table.from_pandas(part, preserve_index=False), folder / f"part-{i}.parquet")


def spec(folder, history=None) -> DatasetSpec:
    data = {
        "name": "shuffled-time", "source": {"path": str(folder)},
        "sparse": [{"name": "uid", "group": "user"}, {"name": "item", "group": "item"}],
        "tasks": [{"name": "ctr", "column": "click"},
                  {"name": "stay", "kind": "regression", "depends_on": "ctr", "eval_threshold": 60},
                  {"name": "cvr", "column": "order", "depends_on": "ctr"}],
        "user": "uid", "time": "ts", "row_id": "row_id", "history": history if history is not None else {},
    }
    s = from_dict(DatasetSpec, data, source="spec")
    s.validate("spec")
    return s


def read(tmp_path, frame, name="data", chunk_rows=64, history=EXACT):
    folder = tmp_path / name
    write(frame, folder)
    ds = Dataset(spec(folder, history), split=SplitConfig(valid=0.2, test=0.2, seed=5), chunk_rows=chunk_rows)
    ds.fit()
    return ds, ds.read()


def by_row(parts):
    """{row_id: {history key: value}} over all splits, and the set of training row ids."""
    out = {}
    for cols in parts.values():
        for i, rid in enumerate(cols.row_id):
            out[int(rid)] = {k: float(v[i]) for k, v in cols.history.items()}
    return out, set(parts["train"].row_id.tolist())


def brute_force(frame: pd.DataFrame, train_ids, row) -> dict:
    earlier = frame[(frame.uid == row.uid) & (frame.ts < row.ts) & frame.row_id.isin(train_ids)]
    clicked = earlier[earlier.click == 1]
    return {
        "count": len(earlier),
        "ctr/count": len(earlier), "ctr/mean": earlier.click.mean() if len(earlier) else 0.0,
        "stay/count": len(clicked), "stay/mean": (clicked.stay > 60).mean() if len(clicked) else 0.0,
        "cvr/count": len(clicked), "cvr/mean": clicked.order.mean() if len(clicked) else 0.0,
    }


def test_history_is_the_users_strictly_earlier_training_labels_on_shuffled_time(tmp_path):
    frame = shuffled_time_frame()
    assert not frame.ts.is_monotonic_increasing  # file order is not time order
    ds, parts = read(tmp_path, frame)
    got, train_ids = by_row(parts)
    assert len(got) == len(frame) and 0 < len(train_ids) < len(frame)
    assert tuple(parts["valid"].history) == history_keys(TASKS)
    for row in frame.itertuples():
        expected = brute_force(frame, train_ids, row)
        for key, value in expected.items():
            assert got[row.row_id][key] == pytest.approx(value, abs=1e-6), (row.row_id, key)
    # ties: two training rows of one user at the same timestamp do not see each other
    train = frame[frame.row_id.isin(train_ids)]
    tied = train[train.duplicated(["uid", "ts"], keep=False)]
    assert len(tied)
    for _, group in tied.groupby(["uid", "ts"]):
        assert len({got[r]["count"] for r in group.row_id}) == 1


@pytest.mark.parametrize("history", [EXACT, {"buckets": 8}], ids=["exact", "8 buckets"])
def test_current_and_later_labels_never_reach_a_rows_history(tmp_path, history):
    frame = shuffled_time_frame(seed=1)
    _, parts = read(tmp_path, frame, "original", history=history)
    got, train_ids = by_row(parts)
    # a row in the middle of user a's timeline
    a = frame[frame.uid == "a"].sort_values("ts")
    pivot = a.iloc[len(a) // 2]
    poisoned = frame.copy()
    later = (poisoned.uid == "a") & (poisoned.ts >= pivot.ts)
    poisoned.loc[later, "click"] = 1 - poisoned.loc[later, "click"]
    poisoned.loc[later, "order"] = 0
    poisoned.loc[later & (poisoned.click == 1), "stay"] = 999.0
    poisoned.loc[later & (poisoned.click == 0), "stay"] = 0.0
    # labels of validation and test rows change too: they are never training labels
    held_out = ~poisoned.row_id.isin(train_ids)
    poisoned.loc[held_out, "click"] = 1
    poisoned.loc[held_out, "stay"] = 500.0
    poisoned.loc[held_out, "order"] = 1
    _, parts2 = read(tmp_path, poisoned, "poisoned", history=history)
    got2, train_ids2 = by_row(parts2)
    assert train_ids2 == train_ids  # the split depends on row ids only
    same = frame[(frame.uid != "a") | (frame.ts <= pivot.ts)]
    for rid in same.row_id:
        assert got2[rid] == got[rid], rid
    # ...while a later row of user a does see the changed earlier training labels (the check can fail)
    after = a[(a.ts > pivot.ts) & a.row_id.isin(train_ids)]
    assert any(got2[r]["ctr/mean"] != got[r]["ctr/mean"] for r in after.row_id)


@pytest.mark.parametrize("history", [EXACT, {"buckets": 8}], ids=["exact", "8 buckets"])
def test_history_is_the_same_in_memory_streamed_and_per_rank(tmp_path, history):
    frame = shuffled_time_frame(seed=2)
    ds, parts = read(tmp_path, frame, chunk_rows=50, history=history)
    whole, _ = by_row(parts)
    shards = [ds.read(rank, 3) for rank in range(3)]
    for shard in shards:
        got, _ = by_row(shard)
        assert all(got[r] == whole[r] for r in got)
    streamed = {}
    for cols in ds.stream("train"):
        for i, rid in enumerate(cols.row_id):
            streamed[int(rid)] = {k: float(v[i]) for k, v in cols.history.items()}
    assert streamed == {r: whole[r] for r in parts["train"].row_id.tolist()}
    # batches carry it, padding rows included
    loader = BatchLoader(parts["valid"], ds.schema().feature_names, 32, num_batches=20,
                         padding_like=ds.empty())
    batches = list(loader)
    assert set(batches[0].history) == set(history_keys(TASKS))
    assert batches[-1].history["count"].shape == (1,) and float(batches[-1].history["count"][0]) == 0.0
    assert ds.schema().history_tasks == TASKS


def bucketed_brute_force(frame: pd.DataFrame, train_ids, row, buckets: int) -> dict:
    """The bounded history by its definition: the user's training events grouped by time bucket (equal spans
    between the first and last timestamp of the source), a bucket counted when its latest event is earlier."""
    low, high = frame.ts.min(), frame.ts.max()
    train = frame[(frame.uid == row.uid) & frame.row_id.isin(train_ids)].copy()
    train["bucket"] = np.clip(np.floor((train.ts - low) * buckets / (high - low)), 0, buckets - 1)
    latest = train.groupby("bucket").ts.transform("max")
    return brute_force(train[latest < row.ts], train_ids, row._replace(ts=np.inf))


def test_bounded_history_is_its_definition_and_never_more_than_the_exact_one(tmp_path):
    frame = shuffled_time_frame(seed=3)
    _, exact_parts = read(tmp_path, frame, "exact")
    exact, train_ids = by_row(exact_parts)
    _, parts = read(tmp_path, frame, "bounded", history={"buckets": 8})
    got, _ = by_row(parts)
    for row in frame.itertuples():
        expected = bucketed_brute_force(frame, train_ids, row, 8)
        for key, value in expected.items():
            assert got[row.row_id][key] == pytest.approx(value, abs=1e-6), (row.row_id, key)
        for key in ("count", "ctr/count", "stay/count", "cvr/count"):
            assert got[row.row_id][key] <= exact[row.row_id][key]  # only earlier events, fewer of them
    assert any(got[r]["count"] < exact[r]["count"] for r in got)  # the bound does cost something here
    assert any(got[r]["count"] > 0 for r in got)


def test_bounded_history_memory_does_not_grow_with_rows():
    rng = np.random.default_rng(0)
    users, buckets = 50, 16
    sizes = {}
    for rows in (2_000, 20_000, 200_000):
        keys = rng.integers(1, users + 1, rows).astype(np.uint64)
        times = rng.random(rows) * 1e6
        clicks = rng.random(rows) < 0.3
        events = {"ctr": (np.ones(rows, bool), clicks)}
        bounded = HistoryBuilder(TimeBuckets.fit([times], buckets), ["ctr"], merge_every=1000)
        for part in np.array_split(np.arange(rows), 7):
            bounded.add(keys[part], times[part], {"ctr": (np.ones(len(part), bool), clicks[part])})
        hist = bounded.finish()
        assert len(hist) <= users * buckets and not hist.exact
        sizes[rows] = hist.nbytes
        exact = LabelHistory.build(keys, times, events)
        assert len(exact) == rows
        # the bounded counts are the exact ones of the bucket-latest times (a whole bucket or nothing)
        q_keys, q_times = keys[:500], times[:500] + 1.0
        got, want = hist.query(q_keys, q_times), exact.query(q_keys, q_times)
        assert np.all(got["count"] <= want["count"]) and np.all(got["count"] >= want["count"] - rows / users)
    assert sizes[200_000] <= 1.05 * sizes[20_000]  # the state is per (user, bucket), not per row


def test_history_builder_merges_chunks_to_the_one_pass_result():
    rng = np.random.default_rng(1)
    keys = rng.integers(1, 30, 5000).astype(np.uint64)
    times = rng.integers(0, 40, 5000).astype(np.float64)  # 40 distinct: exact with 64 buckets
    applies, clicks = rng.random(5000) < 0.7, rng.random(5000) < 0.3
    buckets = TimeBuckets.fit(np.array_split(times, 9), 64)
    assert buckets.exact
    merged = HistoryBuilder(buckets, ["ctr"], merge_every=10)
    for part in np.array_split(np.arange(5000), 13):
        merged.add(keys[part], times[part], {"ctr": (applies[part], clicks[part])})
    reference = LabelHistory.build(keys, times, {"ctr": (applies, clicks)})
    q_keys = rng.integers(0, 31, 2000).astype(np.uint64)  # users 0 and 30 have no events
    q_times = rng.integers(-1, 42, 2000).astype(np.float64)
    got, want = merged.finish().query(q_keys, q_times), reference.query(q_keys, q_times)
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)


def test_label_history_query_by_hand():
    users = np.array([7, 7, 7, 9], dtype=np.uint64)
    times = np.array([3.0, 1.0, 2.0, 1.0])
    clicks = np.array([1, 0, 1, 1], dtype=bool)
    hist = LabelHistory.build(users, times, {"ctr": (np.ones(4, bool), clicks)})
    q = hist.query(np.array([7, 7, 7, 9, 8], dtype=np.uint64), np.array([2.0, 3.5, 1.0, 5.0, 9.0]))
    np.testing.assert_array_equal(q["count"], [1, 3, 0, 1, 0])  # user 8 has no events
    np.testing.assert_allclose(q["ctr/mean"], [0.0, 2 / 3, 0.0, 1.0, 0.0])


def test_history_spec_is_checked(tmp_path):
    with pytest.raises(ConfigError, match="history task 'like' is not a task"):
        spec(tmp_path, history={"tasks": ["like"]})
    with pytest.raises(ConfigError, match="'history.buckets' must be positive, got 0"):
        spec(tmp_path, history={"buckets": 0})
    data = {"name": "x", "source": {"path": "."}, "sparse": [{"name": "u"}],
            "tasks": [{"name": "t", "kind": "regression"}], "user": "u", "time": "ts", "history": {}}
    with pytest.raises(ConfigError, match="without 'eval_threshold'"):
        from_dict(DatasetSpec, data).validate("spec")
    data.pop("time")
    with pytest.raises(ConfigError, match="'history' needs 'user' and 'time'"):
        from_dict(DatasetSpec, data).validate("spec")

"""The streaming data path: the same batches as in memory for a seed, prefetched without changing them, bounded
threads, and the label history only for models that read it."""

import os
import threading
from typing import List

import numpy as np
import pytest
import torch

from recsys.data.batch import Batch
from recsys.data.columns import Columns
from recsys.data.dataset import Dataset
from recsys.data.loader import BatchLoader
from recsys.data.spec import load_spec
from recsys.data.split_cache import SplitCache
from recsys.train.trainer import Trainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SYNTHETIC = os.path.join(REPO, "configs", "datasets", "synthetic.yaml")


@pytest.fixture(scope="module")
def fitted(tiny_world) -> Dataset:
    """The tiny world in 500-row chunks (12 chunks), fitted, without label history."""
    ds = Dataset(load_spec(SYNTHETIC), root=tiny_world, chunk_rows=500, history=False)
    ds.fit()
    return ds


def flat(batch: Batch) -> List[np.ndarray]:
    """Every tensor of a batch, the KJT as keys' values and lengths."""
    out = [batch.row_id.numpy(), batch.dense.numpy(), batch.user.numpy(), batch.scenario.numpy()]
    out += [batch.labels[k].numpy() for k in sorted(batch.labels)]
    out += [batch.sparse[k].values().numpy() for k in batch.sparse.keys()]
    out += [batch.sparse[k].lengths().numpy() for k in batch.sparse.keys()]
    return out


def assert_same_batches(a: List[Batch], b: List[Batch]) -> None:
    assert len(a) == len(b) and len(a) > 0
    for x, y in zip(a, b):
        for u, v in zip(flat(x), flat(y)):
            np.testing.assert_array_equal(u, v)


@pytest.mark.parametrize("drop_last", [True, False])
def test_stream_gives_the_in_memory_batches_for_a_seed(fitted, drop_last):
    names = fitted.schema(8).feature_names
    memory = fitted.read()["train"]
    kwargs = dict(batch_size=256, shuffle=True, seed=7, drop_last=drop_last)
    in_memory = BatchLoader(memory, names, **kwargs)
    # a shuffle window holding the whole split: the stream shuffles exactly as memory does
    streamed = BatchLoader(lambda: fitted.stream("train"), names, shuffle_buffer_chunks=64, **kwargs)
    for epoch in (0, 1):
        in_memory.set_epoch(epoch)
        streamed.set_epoch(epoch)
        assert_same_batches(list(in_memory), list(streamed))
    assert len(memory) == fitted.split_counts["train"]
    # evaluation order: streamed in small windows, still the rows of memory in order
    for split in ("valid", "test"):
        a = list(BatchLoader(fitted.read()[split], names, 300))
        b = list(BatchLoader(lambda split=split: fitted.stream(split), names, 300, shuffle_buffer_chunks=2))
        assert_same_batches(a, b)


def test_prefetching_changes_no_batch_and_resumes_alike(fitted):
    names = fitted.schema(8).feature_names
    def make(prefetch):
        return BatchLoader(lambda: fitted.stream("train"), names, 200, shuffle=True, seed=3,
                           shuffle_buffer_chunks=3, prefetch=prefetch)

    plain, ahead = make(0), make(4)
    assert_same_batches(list(plain), list(ahead))
    plain.set_epoch(2, start_batch=5)
    ahead.set_epoch(2, start_batch=5)
    assert_same_batches(list(plain), list(ahead))
    assert ahead.wait_seconds > 0.0


def test_a_consumer_stopping_early_leaves_no_loader_thread(fitted):
    names = fitted.schema(8).feature_names
    before = threading.active_count()
    loader = BatchLoader(lambda: fitted.stream("train"), names, 100, shuffle=True, shuffle_buffer_chunks=2,
                         prefetch=2)
    it = iter(loader)
    next(it)
    it.close()  # what a `break` out of the loop does
    for t in threading.enumerate():
        if t is not threading.current_thread() and t.daemon:
            t.join(timeout=5)
    assert threading.active_count() <= before


def test_stream_errors_reach_the_consumer(fitted, tiny_world):
    names = fitted.schema(8).feature_names

    def failing():
        yield from fitted.stream("train")
        raise RuntimeError("disk went away")

    with pytest.raises(RuntimeError, match="disk went away"):
        list(BatchLoader(failing, names, 256, prefetch=2))


def test_label_history_only_for_a_model_that_reads_it(tiny_config):
    plain = Trainer(tiny_config(extra=["train.max_steps=1"]))
    assert not plain.dataset.with_history and plain.schema.history_tasks == ()
    assert plain.dataset._history is None  # its pass over the files never ran
    batch = next(iter(plain.train_loader()))
    assert batch.history == {}
    stan = Trainer(tiny_config(model="stan", extra=["train.max_steps=1"], run="stan"))
    assert stan.dataset.with_history and stan.schema.history_tasks == ("ctr", "stay", "cvr")
    batch = next(iter(stan.train_loader()))
    assert set(batch.history) == {"count", "ctr/count", "ctr/mean", "stay/count", "stay/mean", "cvr/count",
                                  "cvr/mean"}
    assert torch.all(batch.history["count"] >= batch.history["ctr/count"])


def test_evaluation_split_cache_gives_the_streamed_rows_and_is_rebuilt_when_stale(fitted, tmp_path, tiny_world):
    names = fitted.schema(8).feature_names
    folder = str(tmp_path / "cache" / "valid")
    streamed = list(BatchLoader(lambda: fitted.stream("valid"), names, 128))
    first = list(BatchLoader(lambda: fitted.cached_stream("valid", folder), names, 128))  # writes through
    assert os.path.isfile(os.path.join(folder, "cache.json"))
    assert not any(name.endswith(".pkl") or name.endswith(".npy") for name in os.listdir(folder))
    calls = []
    original = fitted.stream
    fitted.stream = lambda *a, **k: calls.append(a) or original(*a, **k)  # noqa: E731
    try:
        again = list(BatchLoader(lambda: fitted.cached_stream("valid", folder), names, 128))
        assert calls == []  # read back, not decoded again
        assert_same_batches(streamed, first)
        assert_same_batches(streamed, again)
        # another key (here the rank's share; likewise changed files or refitted encoders) rebuilds it
        list(BatchLoader(lambda: fitted.cached_stream("valid", folder, rank=0, world_size=2), names, 128))
        assert len(calls) == 1
    finally:
        fitted.stream = original
    # an interrupted pass leaves no cache
    broken = str(tmp_path / "cache" / "test")
    it = fitted.cached_stream("test", broken)
    next(it)
    it.close()
    assert not os.path.exists(os.path.join(broken, "cache.json"))


def test_multi_hot_and_history_columns_survive_the_cache(tiny_world, tmp_path):
    ds = Dataset(load_spec(SYNTHETIC), root=tiny_world, chunk_rows=700, history=True)
    ds.fit()
    names = ds.schema(8).feature_names
    folder = str(tmp_path / "c")
    streamed = list(ds.stream("test"))
    list(ds.cached_stream("test", folder))
    cached = list(SplitCacheReader(ds, folder))
    a, b = Columns.concat(streamed), Columns.concat(cached)
    assert len(a) == len(b) and set(a.history) == set(b.history) and a.history
    assert_same_batches([a.to_batch(names)], [b.to_batch(names)])
    for k in a.history:
        np.testing.assert_array_equal(a.history[k], b.history[k])
    np.testing.assert_array_equal(a.time, b.time)
    np.testing.assert_array_equal(a.user_key, b.user_key)
    np.testing.assert_array_equal(a.oracle["ctr"], b.oracle["ctr"])
    np.testing.assert_array_equal(a.groups["stage"], b.groups["stage"])


def SplitCacheReader(ds: Dataset, folder: str):
    """The cache's chunks, failing if it would encode again."""
    def refuse():
        raise AssertionError("the cache should have been ready")
    return SplitCache(folder, ds.cache_key("test")).chunks(refuse, rows=333)


def test_streamed_training_evaluates_from_the_cache(tiny_config):
    trainer = Trainer(tiny_config(extra=["data.in_memory=false", "train.max_steps=2"]))
    report = trainer.fit()
    cache = os.path.join(trainer.run_dir, "cache")
    assert sorted(os.listdir(cache)) == ["test.rank0of1", "valid.rank0of1"]
    memory = Trainer(tiny_config(extra=["train.max_steps=2"], run="memory")).fit()
    assert report["test"]["ctr/auc"] == pytest.approx(memory["test"]["ctr/auc"], abs=1e-6)

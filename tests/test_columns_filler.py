"""ColumnsFiller (recsys/data/columns.py): rows written into arrays allocated once equal the parts concatenated."""

import numpy as np
import pytest

from recsys.data.columns import Columns, ColumnsFiller, Ragged


def chunk(rng, n, start, packed=True):
    lengths = rng.integers(0, 4, n)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    cols = Columns(
        dense=rng.random((n, 3)).astype(np.float32),
        sparse={"a": rng.integers(0, 9, n), "tags": Ragged(rng.integers(0, 50, offsets[-1]), offsets),
                "b": rng.integers(0, 9, n)},
        labels={"ctr": (rng.random(n) < 0.3).astype(np.float32), "stay": rng.random(n).astype(np.float32)},
        scenario=rng.integers(0, 4, n), user=rng.integers(0, 100, n), weights=np.ones(n, np.float32),
        row_id=np.arange(start, start + n), time=rng.random(n),
    )
    return cols.pack() if packed else cols


def assert_same(got: Columns, want: Columns):
    assert len(got) == len(want)
    np.testing.assert_array_equal(got.dense, want.dense)
    np.testing.assert_array_equal(got.row_id, want.row_id)
    np.testing.assert_array_equal(got.time, want.time)
    for k in want.labels:
        np.testing.assert_array_equal(got.labels[k], want.labels[k])
    assert list(got.sparse) == list(want.sparse)
    for k, v in want.sparse.items():
        if isinstance(v, Ragged):
            np.testing.assert_array_equal(got.sparse[k].values, v.values)
            np.testing.assert_array_equal(got.sparse[k].offsets, v.offsets)
        else:
            np.testing.assert_array_equal(got.sparse[k], v)
    assert (got.packed is None) == (want.packed is None)
    if want.packed is not None:
        np.testing.assert_array_equal(got.packed, want.packed)
        assert got.packed_names == want.packed_names
        assert np.shares_memory(got.sparse["a"], got.packed)  # sparse columns are views of the packed rows


@pytest.mark.parametrize("capacity", [0, 37, 250, 10_000], ids=["grows_from_nothing", "grows", "about_right", "spare"])
@pytest.mark.parametrize("packed", [True, False], ids=["packed", "unpacked"])
def test_filled_rows_equal_the_masked_parts_concatenated(capacity, packed):
    rng = np.random.default_rng(0)
    parts, filler, start = [], ColumnsFiller(capacity), 0
    for n in (60, 1, 90, 0, 99):
        cols = chunk(rng, n, start, packed)
        start += n
        keep = rng.random(n) < 0.7
        if n and keep.all():
            keep[0] = False
        parts.append(cols.mask(keep))
        filler.add(cols, np.flatnonzero(keep))
        whole = chunk(rng, 5, start, packed)  # a chunk kept whole
        start += 5
        parts.append(whole)
        filler.add(whole)
    want = Columns.concat([p for p in parts if len(p)])
    got = filler.finish()
    assert_same(got, want)
    assert ColumnsFiller(10).finish() is None

"""The artifact's standalone preprocessing (recsys/serving/runtime.py) against recsys's own encoders.

The runtime re-implements the encoders with numpy and pyarrow only (no recsys, no pandas). Each test encodes the
same raw rows both ways and requires identical table rows, lengths, dense values and scenarios, or the same
one-line error (column and row).
"""

import os

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import REPO

from recsys.config import SplitConfig, from_dict
from recsys.data.columns import Columns
from recsys.data.dataset import Dataset
from recsys.data.spec import DatasetSpec, load_spec
from recsys.errors import DataError
from recsys.serving import runtime
from recsys.serving.export import CROSS_HASH_KEY, feature_settings
from recsys.serving.module import batch_inputs

ALL_ROWS = SplitConfig(valid=0.0, test=0.0)


def spec_of(data: dict, root: str) -> DatasetSpec:
    spec = from_dict(DatasetSpec, data, source="spec")
    spec.spec_dir = root
    spec.validate("spec")
    return spec


def recsys_inputs(ds: Dataset, order_by_row_id: bool = True):
    """Every row the dataset reads, encoded by recsys, as the program's inputs (numpy), rows by row id."""
    parts = ds.read()
    cols = Columns.concat([p for p in parts.values() if len(p)])
    if order_by_row_id:
        cols = cols.take(np.argsort(cols.row_id, kind="stable"))
    dense, values, lengths, scenario = batch_inputs(cols.to_batch([f.name for f in ds.sparse]))
    return {"dense": dense.numpy(), "values": values.numpy(), "lengths": lengths.numpy().astype(np.int32),
            "scenario": scenario.numpy()}, cols.row_id


def preprocessor(ds: Dataset, folder: str) -> runtime.Preprocessor:
    encoders = os.path.join(folder, "encoders")
    ds.save(encoders)
    return runtime.Preprocessor(feature_settings(ds.spec, ds.schema(8)), encoders)


def assert_same_inputs(got, expected):
    assert set(got) == set(expected)
    for name in ("values", "lengths", "scenario"):
        assert got[name].dtype == expected[name].dtype, name
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)
    assert got["dense"].dtype == np.float32
    np.testing.assert_array_equal(got["dense"], expected["dense"])


def test_hash_is_pandas_siphash_bit_for_bit():
    rng = np.random.default_rng(0)
    texts = ["", "a", "12345678", "1234567", "123456789", "x" * 300, "héllo wörld", "日本語", "\0", "-17"]
    texts += ["".join(chr(c) for c in rng.integers(32, 0x2FF, size=int(rng.integers(0, 40)))) for _ in range(500)]
    for key in ("recsys-hash-v1\0\0", CROSS_HASH_KEY):
        expected = pd.util.hash_array(np.array(texts, dtype=object), hash_key=key)
        np.testing.assert_array_equal(runtime.hash_text(texts, key), expected)
    # a missing value hashes as pandas hashes None in an object array
    assert runtime.hash_text(["a", None], CROSS_HASH_KEY)[1] == pd.util.hash_array(
        np.array(["a", None], dtype=object), hash_key=CROSS_HASH_KEY)[1]


def test_synthetic_world_rows_preprocess_exactly_as_recsys_encodes_them(tmp_path, tiny_world):
    spec = load_spec(os.path.join(REPO, "configs/datasets/synthetic.yaml"))
    ds = Dataset(spec, root=tiny_world)
    ds.fit()
    expected, row_ids = recsys_inputs(ds)
    raw = pa.concat_tables([pq.read_table(f) for f in ds.files()])
    raw = raw.take(np.argsort(raw.column("row_id").to_numpy(), kind="stable"))
    assert np.array_equal(raw.column("row_id").to_numpy(), row_ids)
    got = preprocessor(ds, str(tmp_path))(raw)
    assert_same_inputs(got, expected)
    assert got["lengths"].reshape(len(ds.sparse), -1)[[f.name for f in ds.sparse].index("user_interests")].max() > 1


EDGE_TRAIN = pd.DataFrame({
    "rid": [1, 2, 3, 4, 5, 6],
    "uid": [10, 11, 12, 10, 11, 10],
    "tag": ["a", "b", "a", "c", "a", "b"],
    "tid": ["7", "8", "7", "9", "8", "7"],
    "h_text": ["x", "y", "z", "x", "y", "ü"],
    "h_int": [1, -2, 3, 4, 5, 6],
    "ident": [0, 1, 2, 3, 4, 5],
    "multi": ["a|b", "b", "", "c|a", None, "a"],
    "age": [15.0, 30.0, 45.0, 60.0, 22.0, 35.0],
    "x1": [0.0, 1.0, 0.0, 0.0, 2.0, 0.0],
    "x2": [1.0, 0.0, 0.0, 3.0, 0.0, 0.0],
    "price": [1.0, np.nan, 3.0, 10.0, 0.5, 2.0],
    "score": ["1.5", " 2 ", "", "4", "0.25", "8"],
    "scene": ["s1", "s2", "s3", "s1", "s2", "s3"],
    "click": [1, 0, 1, 0, 1, 0],
})
EDGE_NEW = pd.DataFrame({
    "rid": [101, 102, 103, 104, 105, 106, 107],
    "uid": [10, 99, 11, 12, 1 << 40, 10, 11],                       # 99, 2^40: unseen -> OOV row 0
    "tag": ["a", None, "zzz", "b", "c", "a", "b"],                   # None and unseen -> 0
    "tid": ["+007", " 8 ", "9.0", "1e1", "0009", "7", "8"],          # integer text, exactly
    "h_text": ["x", "", "日本", "new", "y", "ü", None],                # hashed text; a missing value -> 0
    "h_int": [1, -2, 1 << 62, 0, 7, -(1 << 63), 3],
    "ident": [9, 0, 5, 1, 2, 3, 4],
    "multi": ["a||b", " c |a", "", None, "zzz|a", "b", "a|a"],      # empty tokens dropped, untrimmed kept
    "age": [18.0, 25.0, 34.9, 35.0, 99.0, 0.0, 50.0],
    "x1": [0.0, 0.0, 5.0, 0.0, 0.0, 1.0, 0.0],
    "x2": [0.0, 2.0, 0.0, 0.0, 0.0, 0.0, 1.0],
    "price": [np.nan, 1e6, 0.0, 2.0, 3.0, np.inf, 1.0],
    "score": ["", "3", "-1.5", "2e2", " 7 ", "0", "1"],
    "scene": ["s3", "s1", "s2", "s2", "s1", "s3", "s1"],
    "click": [0, 1, 0, 1, 0, 1, 0],
})
EDGE_SPEC = {
    "name": "edge",
    "source": {"path": "data.parquet"},
    "row_id": "rid",
    "derived": [
        {"name": "age_bucket", "op": "bucketize", "column": "age", "boundaries": [25, 35, 50]},
        {"name": "adult", "op": "greater", "column": "age", "value": 17.5},
        {"name": "first_x", "op": "first_nonzero", "columns": ["x1", "x2"]},
        {"name": "uid_tag", "op": "cross", "columns": ["uid", "tag"]},
    ],
    "sparse": [
        {"name": "uid", "group": "user"},
        {"name": "tag"},
        {"name": "tid", "dtype": "int"},
        {"name": "h_text", "encoding": "hash", "num_embeddings": 97},
        {"name": "h_int", "encoding": "hash", "num_embeddings": 1000},
        {"name": "ident", "encoding": "identity", "num_embeddings": 10},
        {"name": "multi", "multi_hot": True, "pooling": "mean"},
        {"name": "age_bucket", "encoding": "identity", "num_embeddings": 4},
        {"name": "adult", "encoding": "identity", "num_embeddings": 2},
        {"name": "first_x", "encoding": "identity", "num_embeddings": 3},
        {"name": "uid_tag", "encoding": "hash", "num_embeddings": 101},
    ],
    "dense": [
        {"name": "price", "transform": "log1p_standardize", "fill": 0.0},
        {"name": "score", "transform": "standardize", "fill": -1.0},
    ],
    "tasks": [{"name": "ctr", "column": "click"}],
    "scenario": {"column": "scene", "values": ["s1", "s2", "s3"]},
    "user": "uid",
}


def write_parquet(frame: pd.DataFrame, folder, name: str = "data.parquet") -> str:
    os.makedirs(folder, exist_ok=True)
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), os.path.join(folder, name))
    return str(folder)


def test_edge_cases_preprocess_exactly_as_recsys_encodes_them(tmp_path):
    """Fitted on one file, applied to new rows: unseen and missing ids, integer text, hashed text and integers
    (64-bit), identity ids, multi-hot cells with empty tokens, derived columns, dense fills and transforms."""
    train = write_parquet(EDGE_TRAIN, tmp_path / "train")
    fit = Dataset(spec_of(EDGE_SPEC, train), split=ALL_ROWS)
    fit.fit()
    prep = preprocessor(fit, str(tmp_path))
    new = write_parquet(EDGE_NEW, tmp_path / "new")
    later = Dataset(spec_of(EDGE_SPEC, new), split=ALL_ROWS)
    later.load(str(tmp_path / "encoders"))
    expected, _ = recsys_inputs(later)
    raw = pq.read_table(os.path.join(new, "data.parquet"))
    got = prep(raw)
    assert_same_inputs(got, expected)
    # the same rows as {column: list}, the form a server builds from a request
    assert_same_inputs(prep({c: raw.column(c).to_pylist() for c in raw.column_names}), expected)
    by_feature = np.split(got["values"], np.cumsum(got["lengths"].reshape(len(fit.sparse), -1).sum(axis=1))[:-1])
    names = [f.name for f in fit.sparse]
    assert by_feature[names.index("uid")][1] == 0 and by_feature[names.index("tag")][1] == 0  # OOV rows


def test_csv_text_columns_preprocess_as_recsys_reads_them(tmp_path):
    """recsys reads every CSV column as text; the runtime's CSV reader does the same, so ids written as text
    ('007') and numbers parse alike."""
    train = tmp_path / "train"
    train.mkdir()
    EDGE_TRAIN.to_csv(train / "data.csv", index=False)
    spec = dict(EDGE_SPEC, source={"path": "data.csv"})
    fit = Dataset(spec_of(spec, str(train)), split=ALL_ROWS)
    fit.fit()
    prep = preprocessor(fit, str(tmp_path))
    new = tmp_path / "new"
    new.mkdir()
    EDGE_NEW.drop(columns=["h_int"]).assign(h_int=[1, -2, 5, 0, 7, 9, 3]).to_csv(new / "data.csv", index=False)
    later = Dataset(spec_of(spec, str(new)), split=ALL_ROWS)
    later.load(str(tmp_path / "encoders"))
    expected, _ = recsys_inputs(later)
    assert_same_inputs(prep(runtime.read_rows(str(new / "data.csv"))), expected)


BAD_ROWS = [
    ("ident", 12, "id 12 is outside [0, 10) under the 'identity' policy"),
    ("tid", "x7", "expected an integer id, got 'x7'"),
    ("tid", "7.5", "expected an integer id, got '7.5'"),
    ("scene", "s9", "scenario value 's9' is not declared in the spec"),
    ("uid", None, "missing id"),
]


@pytest.mark.parametrize("column,value,message", BAD_ROWS, ids=[f"{c}={v}" for c, v, _ in BAD_ROWS])
def test_a_bad_value_is_refused_naming_the_same_column_and_row_as_recsys(tmp_path, column, value, message):
    train = write_parquet(EDGE_TRAIN, tmp_path / "train")
    fit = Dataset(spec_of(EDGE_SPEC, train), split=ALL_ROWS)
    fit.fit()
    prep = preprocessor(fit, str(tmp_path))
    frame = EDGE_NEW.copy()
    frame[column] = frame[column].astype(object)
    frame.loc[3, column] = value
    if column == "uid":
        frame[column] = frame[column].astype("Int64")
    new = write_parquet(frame, tmp_path / "new")
    later = Dataset(spec_of(EDGE_SPEC, new), split=ALL_ROWS)
    later.load(str(tmp_path / "encoders"))
    with pytest.raises(DataError) as recsys_error:
        later.read()
    with pytest.raises(runtime.InputError) as runtime_error:
        prep(pq.read_table(os.path.join(new, "data.parquet")))
    assert f"column '{column}', row 4: {message}" in str(runtime_error.value)
    assert str(recsys_error.value).endswith(str(runtime_error.value)), (str(recsys_error.value),
                                                                       str(runtime_error.value))

"""Bad data through the CLI, and integer ids that stay exact end to end.

The CLI cases follow ``tests/test_bad_input.py``: exit code 2, exactly one line on stderr starting with ``error:``
that names the file, column and row (or the spec key), no traceback, nothing written to the run folder. Cases that
need a race (a file deleted between the fit and the read pass, or between listing and opening it) monkeypatch
the moment in between. The behaviour tests then check values: 64-bit ids keep one vocabulary row each, read alike
from CSV text and Parquet int64, and stay exact through the hash policy, row ids, side columns, joins and the
label history's user keys.
"""

import datetime
import os
from dataclasses import dataclass, replace
from typing import Callable, Dict, List, Optional

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_bad_input import GOOD_ROWS, HEADER, Case, edit, with_cell
from test_bad_input import test_bad_input_fails_cleanly as fails_cleanly
from test_data import spec_of

from recsys.config import SideColumnsConfig, SplitConfig
from recsys.data import reader as reader_module
from recsys.data.dataset import Dataset
from recsys.data.encoding import _HASH_KEY, Where, int_text, to_int
from recsys.data.reader import SourceReader
from recsys.data.spec import FileSpec
from recsys.errors import DataError

# the rows of GOOD_ROWS as columns, for Parquet files
BASE: Dict[str, list] = {
    "user": ["a", "b", "c", "a"], "item": [1, 2, 3, 2], "tags": ["x|y", "y", "", "x"], "price": [1.5, 2.0, 0.5, 3.0],
    "click": [1, 0, 1, 0], "watch": [30.5, 0.0, 12.0, 0.0], "scene": ["s1", "s2", "s1", "s1"],
}
NEAR = 1_230_000_000_000_000_000  # 64-bit hashes near 1.23e18: float64 has 256 between neighbours here


def table(**columns) -> pa.Table:
    """BASE with some columns replaced or added (values or pyarrow arrays)."""
    data = {**BASE, **columns}
    return pa.table({k: v if isinstance(v, (pa.Array, pa.ChunkedArray)) else pa.array(v) for k, v in data.items()})


def parquet(name: str, tbl: pa.Table) -> Callable[[str], None]:
    def run(folder: str) -> None:
        path = os.path.join(folder, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        pq.write_table(tbl, path)

    return run


def text(name: str, content: str) -> Callable[[str], None]:
    def run(folder: str) -> None:
        path = os.path.join(folder, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(content)

    return run


def chain(*steps: Callable[[str], None]) -> Callable[[str], None]:
    def run(folder: str) -> None:
        for step in steps:
            step(folder)

    return run


def with_column(name: str, values: List[str], rows: Optional[List[str]] = None) -> List[str]:
    """GOOD_ROWS (or ``rows``) with one more column."""
    rows = list(rows or GOOD_ROWS)
    return [rows[0] + "," + name] + [r + "," + v for r, v in zip(rows[1:], values)]


def users_as(values: List[str]) -> List[str]:
    """GOOD_ROWS with the user column replaced."""
    return [HEADER] + [",".join([v] + r.split(",")[1:]) for v, r in zip(values, GOOD_ROWS[1:])]


CSV = "\n".join(GOOD_ROWS) + "\n"
TWO_FILES = chain(text("parts/a.csv", CSV), text("parts/b.csv", CSV))
USER_INT = edit("spec.yaml", "{name: user, group: user", "{name: user, group: user, dtype: int")
TIME_SPLIT = chain(  # rows at times >= 10 are validation rows
    edit("spec.yaml", "user: user", "user: user\ntime: ts"),
    edit("config.yaml", "split: {valid: 0.0, test: 0.0}", "split: {kind: time, valid_from: 10, test_from: 100}"),
)
JOIN = edit("spec.yaml", "sparse:\n", "joins:\n  - {path: side.csv, on: item}\nsparse:\n  - {name: brand}\n")
JOIN_FOLDER = edit("spec.yaml", "sparse:\n", "joins:\n  - {path: side, on: item}\nsparse:\n  - {name: brand}\n")
SIDE_COLUMNS = edit("config.yaml", "batch_size: 4,", "batch_size: 4, side_columns: [{path: sc.csv, columns: [share]}],")
HEADERLESS = "{path: data.csv, header: false, columns: [user, item, tags, price, click, watch, scene]"


def time_rows(prices: List[str]) -> List[str]:
    """Four training rows (times 1-4) and one validation row (time 20) with the given prices."""
    cells = [r.split(",") for r in GOOD_ROWS[1:]] + [["b", "1", "x", "0", "1", "3", "s2"]]
    for c, p in zip(cells, prices):
        c[3] = p
    return [HEADER + ",ts"] + [",".join(c + [t]) for c, t in zip(cells, ["1", "2", "3", "4", "20"])]


# --- races: the moment between two steps is monkeypatched ---------------------------------------------------
def after_fit(action: Callable[[str], None]) -> Callable[[pytest.MonkeyPatch, str], None]:
    """Run ``action(folder)`` right after the fit pass, before the read pass."""
    def patch(monkeypatch: pytest.MonkeyPatch, folder: str) -> None:
        fit = Dataset.fit

        def fit_then_act(self) -> None:
            fit(self)
            action(folder)

        monkeypatch.setattr(Dataset, "fit", fit_then_act)

    return patch


def delete_after_listing(name: str) -> Callable[[pytest.MonkeyPatch, str], None]:
    """Delete ``name`` right after a reader has listed the files, before it opens them."""
    def patch(monkeypatch: pytest.MonkeyPatch, folder: str) -> None:
        init = SourceReader.__init__

        def list_then_delete(self, *args, **kwargs) -> None:
            init(self, *args, **kwargs)
            path = os.path.join(folder, name)
            if path in self.files and os.path.exists(path):
                os.remove(path)

        monkeypatch.setattr(SourceReader, "__init__", list_then_delete)

    return patch


def unreadable(name: str) -> Callable[[pytest.MonkeyPatch, str], None]:
    """Make ``name`` unreadable: chmod 000, or, where that does not stop us (root), make opening it fail the
    way pyarrow fails on such a file."""
    def patch(monkeypatch: pytest.MonkeyPatch, folder: str) -> None:
        path = os.path.join(folder, name)
        if os.geteuid() != 0:
            os.chmod(path, 0)
            return

        def refuse(real):
            def opener(source, *args, **kwargs):
                if str(source) == path:
                    raise PermissionError(13, f"Failed to open local file '{path}'. Detail: [errno 13] "
                                              "Permission denied")
                return real(source, *args, **kwargs)

            return opener

        monkeypatch.setattr(reader_module.pa_csv, "open_csv", refuse(pa_csv.open_csv))
        monkeypatch.setattr(reader_module.pq, "ParquetFile", refuse(pq.ParquetFile))

    return patch


@dataclass
class DataCase(Case):
    patch: Optional[Callable[[pytest.MonkeyPatch, str], None]] = None  # installed after ``before``


def dup_parquet() -> pa.Table:
    t = table()
    return pa.table(t.columns + [pa.array([9.0] * 4)], names=t.column_names + ["price"])


CASES = [
    # --- integer ids ----------------------------------------------------------------------------------------
    DataCase("id beyond int64 under dtype int", ["{data}", "column 'user'", "row 2",
                                                "id 9223372036854775808 does not fit a signed 64-bit integer",
                                                "'encoding: hash'"],
             rows=users_as(["101", "9223372036854775808", "103", "101"]), before=USER_INT),
    DataCase("identity id beyond int64", ["{data}", "column 'item'", "row 1",
                                          "id 99999999999999999999 does not fit a signed 64-bit integer"],
             rows=with_cell(1, "item", "99999999999999999999")),
    DataCase("uint64 identity id above int64 max", ["{data}", "column 'item'", "row 4",
                                                    "id 9223372036854775813 does not fit"],
             setup={"file": "data.parquet"},
             before=parquet("data.parquet", table(item=pa.array([1, 2, 3, 2**63 + 5], pa.uint64())))),
    DataCase("uint64 vocab id above int64 max", ["{data}", "column 'user'", "row 3",
                                                 "id 18446744073709551615 does not fit", "'encoding: hash'"],
             setup={"file": "data.parquet"},
             before=parquet("data.parquet", table(user=pa.array([1, 2, 2**64 - 1, 1], pa.uint64())))),
    DataCase("id stored as a float beyond 2^53", ["{data}", "column 'user'", "row 1", "beyond 2^53"],
             setup={"file": "data.parquet"},
             before=parquet("data.parquet", table(user=[1.23e18, 2.0, 3.0, 1.23e18]))),
    DataCase("text id under dtype int", ["{data}", "column 'user'", "row 3", "expected an integer id, got 'c'"],
             rows=users_as(["101", "102", "c", "101"]), before=USER_INT),
    DataCase("row id beyond int64", ["{data}", "column 'rid'", "row 3", "does not fit a signed 64-bit integer"],
             rows=with_column("rid", ["1", "2", "99999999999999999999", "4"]),
             before=edit("spec.yaml", "user: user", "user: user\nrow_id: rid")),
    DataCase("integer ids in one file, text in the next", ["{data}/b.parquet", "column 'user'",
                                                            "ids are text here but integers in {data}/a.parquet",
                                                            "'dtype: int' or 'dtype: string'"],
             setup={"file": "parts"},
             before=chain(parquet("parts/a.parquet", table(user=[12, 13, 14, 12])),
                          parquet("parts/b.parquet", table(user=["12", "13", "14", "15"])))),
    DataCase("unseen id after dropped rows names its file row", ["{data}", "column 'user'", "row 5",
                                                                 "'q' is not in the fitted vocabulary"],
             rows=[HEADER + ",ts", "a,1,x,1.5,1,30.5,s1,1", "b,2,y,2.0,0,0,s1,2", "c,3,,0.5,1,12,s2,3",
                   "zz,2,x,3.0,0,0,s2,20", "q,1,x,1.0,0,0,s1,21"],  # rows 3-4 are another scenario, dropped
             setup={"oov": "error"}, args=["--set", "data.scenarios=[0]"], before=TIME_SPLIT),
    # --- numbers beyond float32 -----------------------------------------------------------------------------
    DataCase("dense value beyond float32", ["{data}", "column 'price'", "row 1", "dense value 1e+39 overflows float32"],
             rows=with_cell(1, "price", "1e39")),
    DataCase("regression label beyond float32", ["{data}", "column 'watch'", "row 1", "overflows float32"],
             rows=with_cell(1, "watch", "1e39")),
    DataCase("sample weight beyond float32", ["{data}", "column 'w'", "row 2", "sample weight 1e+39 overflows"],
             rows=with_column("w", ["1", "1e39", "1", "1"]),
             before=edit("spec.yaml", "user: user", "user: user\nweight: w")),
    DataCase("standardized value beyond float32", ["{data}", "column 'price'", "row 5", "standardized value",
                                                   "overflows float32"],
             rows=time_rows(["0", "1e-30", "0", "1e-30", "1e10"]),
             before=chain(TIME_SPLIT, edit("spec.yaml", "{name: price}", "{name: price, transform: standardize}"))),
    DataCase("log1p_standardize value beyond float32", ["{data}", "column 'price'", "row 5", "standardized value",
                                                        "overflows float32"],
             rows=time_rows(["0", "1e-37", "0", "1e-37", "1e10"]),
             before=chain(TIME_SPLIT,
                          edit("spec.yaml", "{name: price}", "{name: price, transform: log1p_standardize}"))),
    # --- headers and specs ----------------------------------------------------------------------------------
    DataCase("duplicate CSV column", ["{data}", "column 'price'", "repeats in the file's header"],
             rows=with_column("price", ["9", "9", "9", "9"])),
    DataCase("duplicate Parquet column", ["{data}", "column 'price'", "repeats"], setup={"file": "data.parquet"},
             before=parquet("data.parquet", dup_parquet())),
    DataCase("header-less CSV names a column twice", ["spec.yaml", "'source.columns'", "'price' twice"],
             rows=GOOD_ROWS[1:], before=edit("spec.yaml", '{path: data.csv', HEADERLESS.replace("watch", "price"))),
    DataCase("empty multi-hot separator", ["spec.yaml", "'sparse[2].separator'", "must not be empty"],
             before=edit("spec.yaml", "multi_hot: true", 'multi_hot: true, separator: ""')),
    DataCase("NaN fill", ["spec.yaml", "'dense[0].fill'", "finite", "nan"],
             before=edit("spec.yaml", "{name: price}", "{name: price, fill: .nan}")),
    DataCase("infinite fill", ["spec.yaml", "'dense[0].fill'", "finite", "inf"],
             before=edit("spec.yaml", "{name: price}", "{name: price, fill: -.inf}")),
    DataCase("fill beyond float32", ["spec.yaml", "'dense[0].fill'", "float32"],
             before=edit("spec.yaml", "{name: price}", "{name: price, fill: 1.0e+39}")),
    DataCase("fill outside the log1p domain", ["spec.yaml", "'dense[0].fill'", "needs values > -1"],
             before=edit("spec.yaml", "{name: price}", "{name: price, transform: log1p, fill: -1.0}")),
    DataCase("non-positive table size", ["spec.yaml", "'sparse[0].num_embeddings'", "must be positive, got -4"],
             before=edit("spec.yaml", "{name: user, group: user",
                         "{name: user, encoding: hash, num_embeddings: -4, group: user")),
    DataCase("scenario value declared twice", ["spec.yaml", "'scenario.values'", "'s1' twice"],
             before=edit("spec.yaml", "values: [s1, s2]", "values: [s1, s2, s1]")),
    DataCase("empty delimiter", ["spec.yaml", "'source.delimiter' must be one or more characters"],
             setup={"delimiter": ""}),
    DataCase("unknown text encoding", ["spec.yaml", "'source.encoding'", "'utf-9'"],
             before=edit("spec.yaml", "extra_columns: allow}", "extra_columns: allow, encoding: utf-9}")),
    DataCase("file-label pattern that is no regular expression", ["spec.yaml", "'source.file_label.pattern'"],
             before=edit("spec.yaml", "extra_columns: allow}",
                         'extra_columns: allow, file_label: {column: region, pattern: "(["}}')),
    DataCase("bucket boundaries out of order", ["spec.yaml", "'derived[0].boundaries'", "must increase"],
             before=edit("spec.yaml", "dense:\n", "derived:\n  - {name: band, op: bucketize, column: price, "
                                                  "boundaries: [3, 1, 2]}\ndense:\n  - {name: band}\n")),
    DataCase("column name with surrounding spaces", ["{data}", "column 'price'", "missing column",
                                                     "the file has ' price', with surrounding spaces"],
             rows=[HEADER.replace("price", " price")] + GOOD_ROWS[1:]),
    # --- nested values --------------------------------------------------------------------------------------
    DataCase("list in a scenario column", ["{data}", "column 'scene'", "row 1", "nested value ['s1']"],
             setup={"file": "data.parquet"},
             before=parquet("data.parquet", table(scene=pa.array([["s1"], ["s2"], ["s1"], ["s1"]])))),
    DataCase("struct in a scenario column", ["{data}", "column 'scene'", "row 2", "nested value {'s': 1}"],
             setup={"file": "data.parquet"},
             before=parquet("data.parquet", table(scene=pa.array([None, {"s": 1}, {"s": 1}, {"s": 2}])))),
    DataCase("list in an evaluation-group column", ["{data}", "column 'stage'", "row 1", "nested value ['new']"],
             setup={"file": "data.parquet"},
             before=chain(edit("spec.yaml", "user: user", "user: user\neval_groups: {stage: {column: stage, "
                                                          "values: [new, old]}}"),
                          parquet("data.parquet", table(stage=pa.array([["new"], ["old"], ["new"], ["new"]]))))),
    DataCase("list of lists in a multi-hot column", ["{data}", "column 'tags'", "row 1", "nested value ['x']"],
             setup={"file": "data.parquet"},
             before=parquet("data.parquet", table(tags=pa.array([[["x"]], [["y"]], [], [["x"]]])))),
    DataCase("struct in an id column", ["{data}", "column 'user'", "row 1", "nested value {'id': 1}"],
             setup={"file": "data.parquet"}, before=parquet("data.parquet", table(user=pa.array([{"id": 1}] * 4)))),
    DataCase("list in a dense column", ["{data}", "column 'price'", "row 1", "nested value [1.0]"],
             setup={"file": "data.parquet"},
             before=parquet("data.parquet", table(price=pa.array([[1.0], [2.0], [3.0], [4.0]])))),
    DataCase("null-typed dense column", ["{data}", "column 'price'", "row 1", "missing value in a dense feature"],
             setup={"file": "data.parquet"}, before=parquet("data.parquet", table(price=pa.nulls(4)))),
    # --- files that vanish, change or cannot be read --------------------------------------------------------
    DataCase("file vanishes between the fit and the read pass", ["{data}/b.csv", "no such file",
                                                                  "after the fit pass"],
             setup={"file": "parts"}, before=TWO_FILES,
             patch=after_fit(lambda folder: os.remove(os.path.join(folder, "parts", "b.csv")))),
    DataCase("file changes between the fit and the read pass", ["{data}/b.csv", "changed after the fit pass"],
             setup={"file": "parts"}, before=TWO_FILES,
             patch=after_fit(lambda folder: open(os.path.join(folder, "parts", "b.csv"), "a").write(GOOD_ROWS[1]))),
    DataCase("file appears between the fit and the read pass", ["{data}/c.csv", "appeared after the fit pass"],
             setup={"file": "parts"}, before=TWO_FILES, patch=after_fit(text("parts/c.csv", CSV))),
    DataCase("file vanishes between listing and opening", ["{data}/b.csv", "no such file", "vanished"],
             setup={"file": "parts"}, before=TWO_FILES, patch=delete_after_listing("parts/b.csv")),
    DataCase("unreadable CSV file", ["{data}/b.csv", "cannot read (permission denied)"],
             setup={"file": "parts"}, before=TWO_FILES, patch=unreadable("parts/b.csv")),
    DataCase("unreadable Parquet file", ["{data}", "cannot read (permission denied)"],
             setup={"file": "data.parquet"}, before=parquet("data.parquet", table()), patch=unreadable("data.parquet")),
    DataCase("folder where a data file is expected", ["{data}/c.csv", "is a folder, not a data file"],
             setup={"file": "parts"},
             before=chain(TWO_FILES, lambda folder: os.mkdir(os.path.join(folder, "parts", "c.csv")))),
    # --- malformed CSV rows count data rows -----------------------------------------------------------------
    DataCase("malformed CSV line names its data row", ["{data}, row 3: malformed CSV line", "expected 7 fields"],
             rows=GOOD_ROWS[:3] + [GOOD_ROWS[3] + ",extra"] + GOOD_ROWS[4:]),
    DataCase("malformed CSV line after a quoted newline and a blank line", ["{data}, row 3: malformed CSV line"],
             rows=[HEADER, 'a,1,"x|\ny",1.5,1,30.5,s1', "", GOOD_ROWS[2], GOOD_ROWS[3] + ",extra", GOOD_ROWS[4]]),
    DataCase("malformed line in a header-less CSV", ["{data}, row 3: malformed CSV line"],
             rows=GOOD_ROWS[1:3] + [GOOD_ROWS[3] + ",extra"], before=edit("spec.yaml", "{path: data.csv", HEADERLESS)),
    # --- joins and side columns -----------------------------------------------------------------------------
    DataCase("missing join key in the side table", ["side.csv", "column 'item'", "row 2", "missing join key"],
             before=chain(JOIN, text("side.csv", "item,brand\n1,b1\n,b2\n2,b2\n3,b3\n"))),
    DataCase("repeated join key names both rows", ["side.csv", "column 'item'", "row 3", "join key '2' repeats",
                                                   "side.csv, row 2"],
             before=chain(JOIN, text("side.csv", "item,brand\n1,b1\n2,b2\n2,b3\n3,b3\n"))),
    DataCase("missing join key in a data row", ["{data}", "column 'item'", "row 2", "missing join key"],
             rows=with_cell(2, "item", ""), before=chain(JOIN, text("side.csv", "item,brand\n1,b1\n2,b2\n3,b3\n"))),
    DataCase("side-table files disagree on a column type", ["side/b.parquet", "column 'brand'",
                                                             "type string here but int64"],
             before=chain(JOIN_FOLDER, parquet("side/a.parquet", pa.table({"item": [1, 2], "brand": [7, 8]})),
                          parquet("side/b.parquet", pa.table({"item": ["3"], "brand": ["b3"]})))),
    DataCase("side-table files disagree on their columns", ["side/b.parquet", "column 'color'", "column only here"],
             before=chain(JOIN_FOLDER, parquet("side/a.parquet", pa.table({"item": [1, 2], "brand": ["b1", "b2"]})),
                          parquet("side/b.parquet", pa.table({"item": [3], "brand": ["b3"], "color": ["red"]})))),
    DataCase("side columns: repeated row id names its row", ["sc.csv", "column 'row_id'", "row 3", "row id 1 repeats"],
             before=chain(SIDE_COLUMNS, text("sc.csv", "row_id,share\n0,1\n1,0\n1,1\n"))),
    DataCase("side columns: non-finite value", ["sc.csv", "column 'share'", "row 2", "non-finite value inf"],
             before=chain(SIDE_COLUMNS, text("sc.csv", "row_id,share\n0,1\n2,inf\n1,1\n"))),
    DataCase("side columns: value beyond float32", ["sc.csv", "column 'share'", "row 2", "overflows float32"],
             before=chain(SIDE_COLUMNS, text("sc.csv", "row_id,share\n0,1\n2,1e39\n1,1\n"))),
    DataCase("side columns: row id beyond int64", ["sc.csv", "column 'row_id'", "row 2", "does not fit"],
             before=chain(SIDE_COLUMNS, text("sc.csv", "row_id,share\n0,1\n99999999999999999999,1\n1,1\n"))),
    # --- timestamps -----------------------------------------------------------------------------------------
    DataCase("infinite timestamp", ["{data}", "column 'ts'", "row 2", "non-finite timestamp inf"],
             rows=with_column("ts", ["1", "inf", "3", "4"]),
             before=edit("spec.yaml", "user: user", "user: user\ntime: ts")),
    DataCase("timestamp that is neither a number nor ISO 8601", ["{data}", "column 'ts'", "row 2", "'yesterday'"],
             rows=with_column("ts", ["1", "yesterday", "3", "4"]),
             before=edit("spec.yaml", "user: user", "user: user\ntime: ts")),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_data_fails_cleanly(tmp_path, capsys, monkeypatch, case):
    def before(folder: str) -> None:
        if case.before is not None:
            case.before(folder)
        if case.patch is not None:
            case.patch(monkeypatch, folder)

    fails_cleanly(tmp_path, capsys, replace(case, before=before))  # test_bad_input's checks, case by case


def test_there_are_at_least_30_bad_data_cases():
    assert len(CASES) >= 30


# --- exact integer ids ----------------------------------------------------------------------------------------
def id_frame(ids: List[int]) -> pd.DataFrame:
    n = len(ids)
    return pd.DataFrame({"user": ids, "rid": ids, "item": np.arange(n) % 5, "price": np.linspace(0, 1, n),
                         "click": np.arange(n) % 2, "ts": np.arange(n, dtype=np.float64)})


def id_spec(path: str, user: dict, **extra) -> dict:
    return {"name": "ids", "source": {"path": path}, "sparse": [{"name": "user", "group": "user", **user},
                                                                {"name": "item", "encoding": "identity",
                                                                 "num_embeddings": 5}],
            "dense": [{"name": "price"}], "tasks": [{"name": "ctr", "column": "click"}], "user": "user", **extra}


def fitted(tmp_path, frame: pd.DataFrame, fmt: str, user: dict, side_columns=(), **extra) -> Dataset:
    path = tmp_path / f"data.{fmt}"
    if fmt == "csv":
        frame.to_csv(path, index=False)
    else:
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path)
    ds = Dataset(spec_of(id_spec(path.name, user, **extra), str(tmp_path)), split=SplitConfig(valid=0.0, test=0.0),
                 side_columns=side_columns)
    ds.fit()
    return ds


NEAR_IDS = [NEAR + k for k in range(20)]


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_64bit_ids_keep_one_vocabulary_row_each(tmp_path, fmt):
    frame = id_frame(NEAR_IDS * 2 + NEAR_IDS[:5])  # ids 0-4 twice as frequent: they get rows 1-5
    ds = fitted(tmp_path, frame, fmt, {"dtype": "int"})
    user = ds.sparse[0]
    assert user.num_embeddings == 21  # 20 ids + the OOV row
    assert user.vocab.type == pa.int64()
    assert user.vocab.to_pylist() == NEAR_IDS[:5] + NEAR_IDS[5:]  # by frequency, then by value: exact
    encoded = ds.read()["train"]
    order = np.argsort(encoded.row_id)
    rows = encoded.sparse["user"][order]
    assert rows.tolist() == [NEAR_IDS.index(u) + 1 for u in frame.user]


@pytest.mark.parametrize("user", [{"dtype": "int"}, {"dtype": "int", "encoding": "hash", "num_embeddings": 1 << 20},
                                  {"dtype": "auto", "encoding": "hash", "num_embeddings": 1 << 20}],
                         ids=["vocab", "hash", "hash-auto"])
def test_an_id_reads_alike_from_csv_text_and_parquet_int64(tmp_path, user):
    frame = id_frame(NEAR_IDS)
    encoded = {}
    for fmt in ("csv", "parquet"):
        folder = tmp_path / fmt
        folder.mkdir()
        ds = fitted(folder, frame, fmt, user)
        cols = ds.read()["train"]
        encoded[fmt] = cols.sparse["user"][np.argsort(cols.row_id)]
    assert encoded["csv"].tolist() == encoded["parquet"].tolist()
    if user.get("encoding") == "hash":  # the hash of each id's exact decimal text
        expected = pd.util.hash_array(np.array([str(u) for u in NEAR_IDS], dtype=object), hash_key=_HASH_KEY)
        assert encoded["csv"].tolist() == (expected % np.uint64(1 << 20)).astype(np.int64).tolist()
    assert len(set(encoded["csv"].tolist())) == 20


def test_uint64_ids_are_exact_in_range_and_hashed_from_text_beyond(tmp_path):
    in_range = [2**63 - 1, 2**63 - 2, 5, 2**63 - 1]
    frame = id_frame(in_range)
    t = pa.Table.from_pandas(frame.drop(columns="user"), preserve_index=False)
    pq.write_table(t.append_column("user", pa.array(in_range, pa.uint64())), tmp_path / "data.parquet")
    ds = Dataset(spec_of(id_spec("data.parquet", {}), str(tmp_path)), split=SplitConfig(valid=0.0, test=0.0))
    ds.fit()
    assert ds.sparse[0].vocab.type == pa.int64()
    assert ds.sparse[0].vocab.to_pylist() == [2**63 - 1, 5, 2**63 - 2]  # exact, by frequency then value
    # beyond int64 under hash: a uint64 column and the same ids as CSV text land in the same buckets
    wide = [2**64 - 1, 2**63, 7, 2**64 - 1]
    user = {"encoding": "hash", "num_embeddings": 1 << 20, "dtype": "int"}
    encoded = {}
    for fmt in ("csv", "parquet"):
        folder = tmp_path / fmt
        folder.mkdir()
        if fmt == "csv":
            frame.assign(user=[str(v) for v in wide]).to_csv(folder / "data.csv", index=False)
        else:
            pq.write_table(t.append_column("user", pa.array(wide, pa.uint64())), folder / "data.parquet")
        ds = Dataset(spec_of(id_spec(f"data.{fmt}", user), str(folder)), split=SplitConfig(valid=0.0, test=0.0))
        ds.fit()
        cols = ds.read()["train"]
        encoded[fmt] = cols.sparse["user"][np.argsort(cols.row_id)].tolist()
    expected = pd.util.hash_array(np.array([str(v) for v in wide], dtype=object), hash_key=_HASH_KEY)
    assert encoded["csv"] == encoded["parquet"] == (expected % np.uint64(1 << 20)).astype(np.int64).tolist()
    where = Where("x.parquet", 0)
    assert int_text(pa.array(wide, pa.uint64()), where, "user").to_pylist() == [str(v) for v in wide]


def test_row_ids_side_columns_and_history_keep_64bit_ids_exact(tmp_path):
    ids = [NEAR + 1, NEAR + 2, NEAR + 1, NEAR + 2, NEAR + 1, NEAR + 3]  # differ by less than float64's spacing
    frame = id_frame(ids)
    side = tmp_path / "side.csv"
    pd.DataFrame({"row_id": [NEAR + 1, NEAR + 3], "share": [0.25, 0.75]}).to_csv(side, index=False)
    frame["rid"] = [NEAR + 3, NEAR + 4, NEAR + 5, NEAR + 6, NEAR + 7, NEAR + 1]
    ds = fitted(tmp_path, frame, "csv", {"dtype": "int"}, row_id="rid", time="ts", history={},
                side_columns=[SideColumnsConfig(str(side), ["share"], "row_id", fill=-1.0)])
    cols = ds.read()["train"]
    order = np.argsort(cols.time)
    assert cols.row_id[order].tolist() == frame.rid.tolist()
    assert cols.extras["share"][order].tolist() == [0.75, -1, -1, -1, -1, 0.25]
    # each user's history counts only that user's earlier rows: 0, 0, 1, 1, 2, 0
    assert cols.history["count"][order].tolist() == [0, 0, 1, 1, 2, 0]
    assert ds.sparse[0].num_embeddings == 4


def test_joins_match_64bit_keys_across_parquet_and_csv(tmp_path):
    keys = [NEAR + 1, NEAR + 2, NEAR + 3]
    frame = id_frame([1, 2, 3, 1])
    frame["key"] = [keys[0], keys[1], keys[2], keys[0]]
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), tmp_path / "data.parquet")
    (tmp_path / "side.csv").write_text("key,brand\n" + "".join(f"{k},b{i}\n" for i, k in enumerate(keys)))
    spec = id_spec("data.parquet", {}, joins=[{"path": "side.csv", "on": "key"}])
    spec["sparse"].append({"name": "brand"})
    ds = Dataset(spec_of(spec, str(tmp_path)), split=SplitConfig(valid=0.0, test=0.0))
    ds.fit()
    assert sorted(ds.sparse[2].vocab.to_pylist()) == ["b0", "b1", "b2"]
    cols = ds.read()["train"]
    brand = [ds.sparse[2].vocab[int(r) - 1].as_py() for r in cols.sparse["brand"][np.argsort(cols.row_id)]]
    assert brand == ["b0", "b1", "b2", "b0"]


@pytest.mark.parametrize("dtype,expected", [("int", [12, 13, 14]), ("string", ["12", "13", "14"])])
def test_int_and_text_ids_across_files_are_one_id_under_a_declared_dtype(tmp_path, dtype, expected):
    (tmp_path / "parts").mkdir()
    pq.write_table(pa.Table.from_pandas(id_frame([12, 13, 12]), preserve_index=False), tmp_path / "parts/a.parquet")
    text_ids = id_frame([12, 14, 12]).astype({"user": str})
    pq.write_table(pa.Table.from_pandas(text_ids, preserve_index=False), tmp_path / "parts/b.parquet")
    ds = Dataset(spec_of(id_spec("parts", {"dtype": dtype}), str(tmp_path)), split=SplitConfig(valid=0.0, test=0.0))
    ds.fit()
    assert ds.sparse[0].vocab.to_pylist() == expected  # "12" and 12 are one id (4 times), then 13, 14
    cols = ds.read()["train"]
    assert cols.sparse["user"][np.argsort(cols.row_id)].tolist() == [1, 2, 1, 1, 3, 1]


ID_TEXT = st.tuples(st.integers(-(2**70), 2**70), st.sampled_from(["", "+", " "]), st.integers(0, 3),
                    st.sampled_from(["", ".0", " "]))


@settings(max_examples=200, deadline=None)
@given(st.lists(ID_TEXT, min_size=1, max_size=8))
def test_integer_text_parses_exactly_like_python(cells):
    """Signs, padding, leading zeros and a ``.0`` suffix: to_int agrees with Python's int() on every id that
    fits int64 and refuses the first one that does not; int_text is the canonical decimal text of any width."""
    raw = [f"{pre if v >= 0 or pre == ' ' else ''}{'-' if v < 0 else ''}{'0' * zeros}{abs(v)}{post}"
           for v, pre, zeros, post in cells]
    values = [v for v, *_ in cells]
    where = Where("ids.csv", 0)
    assert int_text(pa.array(raw), where, "user").to_pylist() == [str(v) for v in values]
    wide = [i for i, v in enumerate(values) if not -(2**63) <= v < 2**63]
    if wide:
        with pytest.raises(DataError, match=f"row {wide[0] + 1}: id {values[wide[0]]} does not fit"):
            to_int(pa.array(raw), where, "user")
    else:
        assert to_int(pa.array(raw), where, "user").tolist() == values


# --- numbers and files that read correctly -------------------------------------------------------------------
def test_standardize_statistics_survive_a_large_offset(tmp_path):
    frame = id_frame(list(range(40)))
    frame["price"] = 1e9 + np.arange(40) % 4  # std 1.118 on an offset of 1e9 (E[x^2] - E[x]^2 cancels it)
    ds = fitted(tmp_path, frame, "parquet", {}, dense=[{"name": "price", "transform": "standardize"}])
    enc = ds.dense[0]
    assert enc.mean == pytest.approx(1e9 + 1.5, abs=1e-6)
    assert enc.std == pytest.approx(np.std(np.arange(40) % 4), rel=1e-9)


def test_log1p_reads_values_beyond_float32(tmp_path):
    frame = id_frame([1, 2, 3, 4])
    frame["price"] = [1e39, 0.0, 1.0, 1e300]  # beyond float32 raw, but the model sees log1p of them
    ds = fitted(tmp_path, frame, "csv", {}, dense=[{"name": "price", "transform": "log1p"}])
    cols = ds.read()["train"]
    dense = cols.dense[np.argsort(cols.row_id), 0]
    np.testing.assert_allclose(dense, np.log1p(frame.price.to_numpy()).astype(np.float32), rtol=1e-6)


def test_quoted_newlines_read_across_block_boundaries(tmp_path):
    n = 40000  # ~1.3 MB: more than one 1 MiB block (small chunks), so quoted newlines fall on block boundaries
    path = tmp_path / "q.csv"
    path.write_text("a,b,c\n" + "".join(f'{i},"line one\nline {i}",{i * 2}\n' for i in range(n)))
    reader = SourceReader(FileSpec("q.csv"), str(tmp_path), columns={"a", "b", "c"}, chunk_rows=1000,
                          string_columns=["b"])
    got = reader.read_all()
    assert got.num_rows == n
    assert got.column("a").to_pylist() == list(range(n))
    assert got.column("b")[12345].as_py() == "line one\nline 12345"
    assert got.column("c").to_pylist()[-1] == 2 * (n - 1)


def test_malformed_row_is_numbered_past_blocks_whose_types_differ(tmp_path):
    """The row is found by a second, single-threaded parse that reads every column as text: a column that
    holds numbers in the first block and text later (unused here) must not stop it before the bad row."""
    n = 100000  # ~1.3 MB each side of the text rows: the text and the bad row are in later 1 MiB blocks
    rows = [f"{i},{i}" for i in range(n)] + ["x,text"] * 10 + [f"{i},{i}" for i in range(n)] + ["1,2,3"]
    (tmp_path / "m.csv").write_text("a,b\n" + "\n".join(rows) + "\n4,5\n")
    reader = SourceReader(FileSpec("m.csv"), str(tmp_path), columns={"b"}, chunk_rows=1000, string_columns=["b"])
    with pytest.raises(DataError, match=f"m.csv, row {2 * n + 11}: malformed CSV line: expected 2 fields"):
        reader.read_all()


def test_byte_order_mark_and_crlf_read_like_plain_csv(tmp_path):
    (tmp_path / "bom.csv").write_bytes(("\ufeff" + "\r\n".join(GOOD_ROWS) + "\r\n").encode())
    reader = SourceReader(FileSpec("bom.csv"), str(tmp_path), columns=set(HEADER.split(",")),
                          string_columns=HEADER.split(","))
    got = reader.read_all()
    assert got.column_names == HEADER.split(",")
    assert got.column("scene").to_pylist() == ["s1", "s2", "s1", "s1"]  # no '\r' left
    assert got.column("user").to_pylist() == ["a", "b", "c", "a"]


def test_parquet_timestamps_and_iso_text_are_seconds(tmp_path):
    days = [datetime.datetime(2024, 1, d + 1, 12) for d in range(4)]
    seconds = [d.replace(tzinfo=datetime.timezone.utc).timestamp() for d in days]
    frame = id_frame([1, 2, 3, 4]).drop(columns="ts")
    for fmt, ts in (("parquet", pa.array(days, pa.timestamp("ms"))), ("csv", [d.isoformat() for d in days])):
        folder = tmp_path / fmt
        folder.mkdir()
        t = pa.Table.from_pandas(frame, preserve_index=False).append_column("ts", pa.array(ts))
        (pq.write_table if fmt == "parquet" else pa_csv.write_csv)(t, folder / f"data.{fmt}")
        ds = Dataset(spec_of(id_spec(f"data.{fmt}", {}, time="ts"), str(folder)),
                     split=SplitConfig(kind="time", valid=0.25, test=0.25))
        ds.fit()
        assert ds.valid_from == pytest.approx(np.quantile(seconds, 0.5))
        parts = ds.read()
        assert sorted(parts["train"].time.tolist() + parts["valid"].time.tolist() + parts["test"].time.tolist()) \
            == pytest.approx(seconds)


def test_decimal_dictionary_and_view_columns_read_as_values(tmp_path):
    frame = id_frame([1, 2, 3, 1])
    t = pa.Table.from_pandas(frame, preserve_index=False)
    t = t.set_column(t.column_names.index("price"), "price", pa.array([1, 2, 3, 4], pa.decimal128(10, 2)))
    t = t.set_column(t.column_names.index("user"), "user",
                     pa.array(["u1", "u2", "u3", "u1"]).dictionary_encode())
    t = t.append_column("scene", pa.array(["s1", "s2", "s1", "s1"], pa.string_view()))
    pq.write_table(t, tmp_path / "data.parquet")
    ds = Dataset(spec_of(id_spec("data.parquet", {}, scenario={"column": "scene", "values": ["s1", "s2"]}),
                         str(tmp_path)), split=SplitConfig(valid=0.0, test=0.0))
    ds.fit()
    assert ds.sparse[0].vocab.to_pylist() == ["u1", "u2", "u3"]
    cols = ds.read()["train"]
    order = np.argsort(cols.row_id)
    assert cols.dense[order, 0].tolist() == [1.0, 2.0, 3.0, 4.0]
    assert cols.scenario[order].tolist() == [0, 1, 0, 0]
    assert cols.sparse["user"][order].tolist() == [1, 2, 3, 1]

"""From a dataset spec to encoded columns: joins, derived columns, splits, fitting, validation, rank shards.

Two passes over the files:

1. :meth:`Dataset.fit` (rank 0 only in distributed runs; the state is broadcast) reads every row once, checks it
   (labels, dense values, ids under the ``identity`` policy, scenario values) and fits the vocabularies and
   dense statistics on the training split. Nothing is written before the whole pass succeeded.
2. :meth:`Dataset.read` (in memory) or :meth:`Dataset.stream` (chunk by chunk) encodes the rows of a rank's
   contiguous share of the files and routes them to train/valid/test.

The split of a row depends only on its id (random splits hash it with the seed) or its timestamp (time
splits), never on chunking, rank or world size.
"""

import logging
import os
import threading
from dataclasses import replace
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Set, Tuple

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from tqdm import tqdm

from recsys.config import Config, SideColumnsConfig, SplitConfig
from recsys.data.columns import Columns, Ragged
from recsys.data.record import RecordLayout
from recsys.data.encoding import (
    CategoryEncoder,
    DenseEncoder,
    SparseEncoder,
    Where,
    _to_numpy,
    key_text,
    load_encoders,
    save_encoders,
    to_float,
    to_float32,
    to_int,
    to_seconds,
)
from recsys.data.history import LabelHistory, history_keys, value_keys
from recsys.data.reader import RawChunk, SourceReader, concat_chunks, list_files
from recsys.data.spec import DatasetSpec, DerivedSpec, FileSpec, load_spec
from recsys.errors import ConfigError, DataError
from recsys.schema import DenseFeature, Schema, SparseFeature, Task

log = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
TEST_ROW_OFFSET = 1 << 40  # row ids of a separate test source start here


def splitmix64(x: np.ndarray) -> np.ndarray:
    """A well-mixed 64-bit hash of each element (SplitMix64 finaliser)."""
    with np.errstate(over="ignore"):
        z = x.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def hash_uniform(x: np.ndarray, seed: int) -> np.ndarray:
    """Uniform [0, 1) numbers determined by ``(x, seed)``."""
    with np.errstate(over="ignore"):
        h = splitmix64(x.astype(np.uint64) ^ splitmix64(np.array([seed], dtype=np.uint64)))
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def rank_range(total: int, rank: int, world_size: int) -> Tuple[int, int]:
    """The contiguous share ``[start, stop)`` of ``total`` rows read by ``rank``."""
    return total * rank // world_size, total * (rank + 1) // world_size


class Dataset:
    """A dataset spec bound to its files, with fitted encoders.

    Args:
        spec: the dataset spec.
        root: data root overriding the spec's.
        split: train/valid/test split policy.
        chunk_rows: rows per read chunk.
        max_rows: read only the first ``max_rows`` rows of the source.
        progress: show tqdm bars for passes over the files.
        scenarios: keep only the rows of these scenario indices (every split, and the fitting of encoders).
        side_columns: per-row side columns joined by row id into ``Columns.extras`` (see
            :class:`~recsys.config.SideColumnsConfig`); rows the side table does not list get its ``fill``.

    Example::

        ds = Dataset(load_spec("configs/datasets/movielens-100k.yaml"), root="../shared/data/ml-100k")
        ds.fit()
        schema = ds.schema(default_dim=16)
        parts = ds.read()        # {"train": Columns, "valid": Columns, "test": Columns}
    """

    def __init__(
        self,
        spec: DatasetSpec,
        root: Optional[str] = None,
        split: Optional[SplitConfig] = None,
        chunk_rows: int = 262144,
        max_rows: Optional[int] = None,
        progress: bool = False,
        scenarios: Optional[Sequence[int]] = None,
        side_columns: Sequence[SideColumnsConfig] = (),
    ) -> None:
        self.spec = spec
        self.root = spec.data_root(root)
        self.split = split or SplitConfig()
        self.chunk_rows = chunk_rows
        self.max_rows = max_rows
        self.progress = progress
        self.sparse = [SparseEncoder(s) for s in spec.sparse]
        self.dense = [DenseEncoder(d) for d in spec.dense]
        self.scenario = CategoryEncoder(spec.scenario, "scenario") if spec.scenario else None
        self.groups = {k: CategoryEncoder(v, k) for k, v in spec.eval_groups.items()}
        self.fitted = False
        self.valid_from: Optional[float] = self.split.valid_from
        self.test_from: Optional[float] = self.split.test_from
        self.source_rows: Optional[int] = None
        self.test_rows: Optional[int] = None
        self.split_counts: Dict[str, int] = {}
        self._joins: Optional[List[Tuple[str, pd.Index, pa.Table]]] = None
        self._history: Optional[LabelHistory] = None
        self._history_lock = threading.Lock()  # streams encode in loader threads
        self._check_no_label_leak()
        self.scenarios = None if scenarios is None else sorted(set(int(s) for s in scenarios))
        if self.scenarios is not None:
            if self.scenario is None:
                raise ConfigError(f"data.scenarios: dataset '{spec.name}' has no scenario column")
            bad = [s for s in self.scenarios if not 0 <= s < self.scenario.size]
            if bad or not self.scenarios:
                raise ConfigError(f"data.scenarios: {bad or 'an empty list'} is not a list of scenario indices in "
                                  f"[0, {self.scenario.size})")
        self.side_columns = list(side_columns)
        names = [c for sc in self.side_columns for c in sc.columns]
        if len(set(names)) != len(names):
            raise ConfigError(f"data.side_columns: column names repeat: {names}")
        self._side: Optional[List[Tuple[pd.Index, Dict[str, np.ndarray], float]]] = None
        self._fit_files: Optional[List[List[Any]]] = None  # fingerprint of the files the fit pass read

    @classmethod
    def from_config(cls, cfg: Config, progress: bool = False) -> "Dataset":
        if not cfg.data.spec:
            raise ConfigError("config: 'data.spec' (path of a dataset spec YAML) is required")
        spec = load_spec(cfg.resolve(cfg.data.spec))
        root = cfg.resolve(cfg.data.path) if cfg.data.path else None
        side = [SideColumnsConfig(cfg.resolve(sc.path), list(sc.columns), sc.key, sc.fill)
                for sc in cfg.data.side_columns]
        return cls(spec, root, cfg.data.split, cfg.data.chunk_rows, cfg.data.max_rows, progress,
                   scenarios=cfg.data.scenarios, side_columns=side)

    # --- columns -----------------------------------------------------------------------------------------
    def _label_columns(self) -> Set[str]:
        return {t.source_column for t in self.spec.tasks} | set(self.spec.oracle.values())

    def _check_no_label_leak(self) -> None:
        """Refuse specs where a feature is, or is derived from, a label or oracle column."""
        tainted = set(self._label_columns())
        for d in self.spec.derived:
            if ({d.column} | set(d.columns)) & tainted:
                tainted.add(d.name)
        for s in self.spec.sparse:
            if s.source_column in tainted:
                raise ConfigError(f"spec '{self.spec.name}': sparse feature '{s.name}' reads label column "
                                  f"'{s.source_column}' (a label must not leak into features)")
        for d in self.spec.dense:
            if d.source_column in tainted:
                raise ConfigError(f"spec '{self.spec.name}': dense feature '{d.name}' reads label column "
                                  f"'{d.source_column}' (a label must not leak into features)")

    def _used_columns(self) -> Set[str]:
        s = self.spec
        cols = {x.source_column for x in s.sparse} | {x.source_column for x in s.dense}
        cols |= {t.source_column for t in s.tasks} | set(s.oracle.values())
        cols |= {c for c in (s.time, s.weight, s.row_id) if c}
        if s.scenario:
            cols.add(s.scenario.column)
        cols |= {g.column for g in s.eval_groups.values()}
        return cols

    def _source_columns(self) -> Set[str]:
        """Columns the source files must provide (derived and joined ones are computed or looked up)."""
        need = self._used_columns()
        for d in reversed(self.spec.derived):
            if d.name in need:
                need.discard(d.name)
                need |= {d.column} if d.column else set()
                need |= set(d.columns)
        for j in self.spec.joins:
            cols = self._join_columns(j)
            need -= set(cols) - {j.on}
            need.add(j.on)
        return need

    def _join_columns(self, join) -> List[str]:
        if join.columns:
            return list(join.columns)
        reader = SourceReader(join.file_spec(), self.root, columns=None, chunk_rows=self.chunk_rows)
        return next(reader.chunks()).table.column_names

    def _reader(self, fs: FileSpec, columns: Optional[Set[str]] = None) -> SourceReader:
        cols = self._source_columns() if columns is None else columns
        return SourceReader(fs, self.root, columns=cols, chunk_rows=self.chunk_rows, string_columns=sorted(cols))

    @staticmethod
    def _keyed_table(reader: SourceReader, key: str, what: str,
                     read_key: Callable[[pa.Array, Where, str], Any]) -> Tuple[pa.Table, pd.Index, List[RawChunk]]:
        """A whole side table without its key column, its unique keys (``read_key`` of each chunk's key column,
        so an int64 key in one Parquet file and text in the next agree) and its chunks; a missing key column, a
        missing key or a repeated key names its file (and row)."""
        chunks, keys = list(reader.chunks()), []
        for c in chunks:
            if key not in c.table.column_names:
                raise DataError(f"missing {what} column", file=c.file, column=key)
            k = read_key(c.table.column(key), Where(c.file, c.file_row), key)
            keys.append(k if isinstance(k, np.ndarray) else _to_numpy(k))
        index = pd.Index(np.concatenate(keys) if keys else np.zeros(0, np.int64))
        if not index.is_unique:
            starts = np.cumsum([0] + [c.table.num_rows for c in chunks])

            def place(pos: int) -> Tuple[RawChunk, int]:
                k = int(np.searchsorted(starts, pos, side="right")) - 1
                return chunks[k], pos - int(starts[k])

            again = int(np.flatnonzero(index.duplicated())[0])
            first_chunk, first_row = place(int(np.flatnonzero(index == index[again])[0]))
            chunk, row = place(again)
            value = index[again]
            shown = repr(value) if isinstance(value, str) else str(value)
            raise Where(chunk.file, chunk.file_row).error(
                f"{what} {shown} repeats (first at {first_chunk.file}, row "
                f"{first_chunk.file_row + first_row + 1})", key, row)
        return concat_chunks([replace(c, table=c.table.drop_columns([key])) for c in chunks]), index, chunks

    def _side_tables(self) -> List[Tuple[str, pd.Index, pa.Table]]:
        if self._joins is None:
            self._joins = []
            for j in self.spec.joins:
                fs = j.file_spec()
                # the key is read as text from CSV: exact for any width, and what the source's CSV cells are
                reader = SourceReader(fs, self.root, columns=None, chunk_rows=self.chunk_rows,
                                      string_columns=list(j.columns or ()) + [j.on])
                table, keys, _ = self._keyed_table(reader, j.on, "join key", key_text)
                self._joins.append((j.on, keys, table))
        return self._joins

    def _side_tables_by_row(self) -> List[Tuple[pd.Index, Dict[str, np.ndarray], float]]:
        """The side-column files, each as (row-id index, {column: float32 values}, fill); read once."""
        if self._side is None:
            self._side = []
            for sc in self.side_columns:
                reader = SourceReader(FileSpec(sc.path), "", columns={sc.key, *sc.columns}, chunk_rows=self.chunk_rows,
                                      string_columns=[sc.key])
                _, keys, chunks = self._keyed_table(reader, sc.key, "row id", to_int)
                values: Dict[str, List[np.ndarray]] = {c: [] for c in sc.columns}
                for chunk in chunks:
                    where = Where(chunk.file, chunk.file_row)
                    for c in sc.columns:
                        col = chunk.table.column(c)
                        if pa.types.is_boolean(col.type):
                            col = pc.cast(col, pa.int8())
                        v = to_float(col, where, c)
                        bad = ~np.isfinite(v)
                        if bad.any():
                            i = int(np.flatnonzero(bad)[0])
                            raise where.error("missing value" if np.isnan(v[i]) else f"non-finite value {v[i]}", c, i)
                        values[c].append(to_float32(v, where, c, "value"))
                self._side.append((keys, {c: np.concatenate(v) for c, v in values.items()}, float(sc.fill)))
        return self._side

    def _extras(self, row_ids: np.ndarray) -> Dict[str, np.ndarray]:
        """Side columns of ``row_ids`` (``fill`` where a side table has no entry)."""
        out: Dict[str, np.ndarray] = {}
        for keys, values, fill in self._side_tables_by_row():
            pos = keys.get_indexer(row_ids)
            found = pos >= 0
            for name, v in values.items():
                out[name] = np.where(found, v[np.maximum(pos, 0)], np.float32(fill)).astype(np.float32)
        return out

    def _scenario_keep(self, table: pa.Table, where: Where) -> Optional[np.ndarray]:
        """Rows of the kept scenarios (None when every row is kept)."""
        if self.scenarios is None:
            return None
        assert self.scenario is not None
        codes = self.scenario.transform(table.column(self.scenario.spec.column), where)
        return np.isin(codes, self.scenarios)

    # --- per chunk ---------------------------------------------------------------------------------------
    def _prepare(self, chunk: RawChunk) -> Tuple[pa.Table, Where]:
        """Joins and derived columns, vectorised."""
        table = chunk.table
        where = Where(chunk.file, chunk.file_row)
        for (key, index, side), join in zip(self._side_tables(), self.spec.joins):
            if key not in table.column_names:
                raise where.error("join key column is missing", key)
            pos = index.get_indexer(_to_numpy(key_text(table.column(key), where, key)))
            if (pos < 0).any():
                i = int(np.flatnonzero(pos < 0)[0])
                raise where.error(f"value {table.column(key)[i].as_py()!r} has no match in {join.path}", key, i)
            taken = side.take(pa.array(pos))
            for name in taken.column_names:
                if name not in table.column_names:
                    table = table.append_column(name, taken.column(name))
        for d in self.spec.derived:
            table = table.append_column(d.name, pa.array(self._derive(d, table, where)))
        return table, where

    def _derive(self, d: DerivedSpec, table: pa.Table, where: Where) -> np.ndarray:
        def col(name: str) -> pa.Array:
            if name not in table.column_names:
                raise where.error(f"derived column '{d.name}' needs a missing column", name)
            return table.column(name)

        if d.op == "greater":
            x = to_float(col(d.column), where, d.column)
            if np.isnan(x).any():
                raise where.error("missing value", d.column, int(np.flatnonzero(np.isnan(x))[0]))
            return (x > d.value).astype(np.int64)
        if d.op == "bucketize":
            x = to_float(col(d.column), where, d.column)
            if np.isnan(x).any():
                raise where.error("missing value", d.column, int(np.flatnonzero(np.isnan(x))[0]))
            return np.searchsorted(np.asarray(d.boundaries, dtype=np.float64), x, side="right").astype(np.int64)
        if d.op == "first_nonzero":
            m = np.stack([np.nan_to_num(to_float(col(c), where, c)) != 0 for c in d.columns], axis=1)
            return np.where(m.any(axis=1), m.argmax(axis=1), len(d.columns)).astype(np.int64)
        # cross: combine the per-column hashes so the pair (a, b) differs from (b, a)
        h = np.zeros(table.num_rows, dtype=np.uint64)
        for c in d.columns:
            values = _to_numpy(pc.cast(col(c), pa.string())).astype(object)
            with np.errstate(over="ignore"):
                h = splitmix64(h ^ pd.util.hash_array(values, hash_key="recsys-cross-v1\0"))
        return (h >> np.uint64(1)).astype(np.int64)

    def _row_ids(self, chunk: RawChunk, table: pa.Table, where: Where, is_test_source: bool) -> np.ndarray:
        if self.spec.row_id:
            return to_int(table.column(self.spec.row_id), where, self.spec.row_id)
        base = TEST_ROW_OFFSET if is_test_source else 0
        return np.arange(chunk.global_row, chunk.global_row + table.num_rows, dtype=np.int64) + base

    def _time(self, table: pa.Table, where: Where) -> Optional[np.ndarray]:
        if not self.spec.time:
            return None
        t = to_seconds(table.column(self.spec.time), where, self.spec.time)
        bad = ~np.isfinite(t)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise where.error("missing timestamp" if np.isnan(t[i]) else f"non-finite timestamp {t[i]}",
                              self.spec.time, i)
        return t

    def _split_of(self, row_ids: np.ndarray, time: Optional[np.ndarray], is_test_source: bool) -> np.ndarray:
        """0 = train, 1 = valid, 2 = test."""
        test = 0.0 if self.spec.test_source is not None else self.split.test
        if is_test_source:
            return np.full(len(row_ids), 2, dtype=np.int8)
        if self.split.kind == "time":
            assert time is not None and self.valid_from is not None and self.test_from is not None
            out = np.zeros(len(row_ids), dtype=np.int8)
            out[time >= self.valid_from] = 1
            if self.spec.test_source is None:
                out[time >= self.test_from] = 2
            return out
        u = hash_uniform(row_ids, self.split.seed)
        return np.where(u < test, 2, np.where(u < test + self.split.valid, 1, 0)).astype(np.int8)

    def _labels(self, table: pa.Table, where: Where) -> Dict[str, np.ndarray]:
        labels: Dict[str, np.ndarray] = {}
        for t in self.spec.tasks:
            y = to_float(table.column(t.source_column), where, t.source_column)
            bad = ~np.isfinite(y)
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise where.error(f"label of task '{t.name}' is {'missing' if np.isnan(y[i]) else y[i]}",
                                  t.source_column, i)
            if t.kind == "binary":
                bad = (y != 0) & (y != 1)
                if bad.any():
                    i = int(np.flatnonzero(bad)[0])
                    raise where.error(f"binary label of task '{t.name}' must be 0 or 1, got {y[i]:g}",
                                      t.source_column, i)
            for limit, bad, what in ((t.min_value, y < (t.min_value or 0.0), "below the minimum"),
                                     (t.max_value, y > (t.max_value or 0.0), "above the maximum")):
                if limit is not None and bad.any():
                    i = int(np.flatnonzero(bad)[0])
                    raise where.error(f"label of task '{t.name}' is {y[i]:g}, {what} {limit:g} declared in the spec",
                                      t.source_column, i)
            if t.kind == "regression" and t.loss == "log_mse" and (y < 0).any():
                i = int(np.flatnonzero(y < 0)[0])
                raise where.error(f"label of task '{t.name}' must be >= 0 for the log_mse loss, got {y[i]:g}",
                                  t.source_column, i)
            labels[t.name] = to_float32(y, where, t.source_column, f"label of task '{t.name}'")
        for t in self.spec.tasks:
            if t.depends_on and t.kind == "binary":
                orphan = (labels[t.name] > 0) & (labels[t.depends_on] <= 0)
                if orphan.any():
                    i = int(np.flatnonzero(orphan)[0])
                    raise where.error(f"task '{t.name}' is positive where its parent '{t.depends_on}' is not",
                                      t.source_column, i)
        return labels

    def _weights(self, table: pa.Table, where: Where) -> np.ndarray:
        if not self.spec.weight:
            return np.ones(table.num_rows, dtype=np.float32)
        w = to_float(table.column(self.spec.weight), where, self.spec.weight)
        bad = ~np.isfinite(w) | (w < 0)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise where.error(f"sample weight must be finite and >= 0, got {w[i]}", self.spec.weight, i)
        return to_float32(w, where, self.spec.weight, "sample weight")

    def _oracle(self, table: pa.Table, where: Where) -> Dict[str, np.ndarray]:
        out = {}
        for task, column in self.spec.oracle.items():
            p = to_float(table.column(column), where, column)
            bad = ~((p >= 0) & (p <= 1)) if self.spec.tasks and self._task_kind(task) == "binary" else ~np.isfinite(p)
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise where.error(f"oracle value {p[i]} is not a probability", column, i)
            out[task] = to_float32(p, where, column, "oracle value")
        return out

    def _task_kind(self, name: str) -> str:
        return next(t.kind for t in self.spec.tasks if t.name == name)

    def _check_rows(self, table: pa.Table, where: Where) -> None:
        """Validation of everything that does not need fitted state (used by the fit pass)."""
        self._labels(table, where)
        self._weights(table, where)
        self._oracle(table, where)
        self._time(table, where)
        if self.scenario:
            self.scenario.transform(table.column(self.scenario.spec.column), where)
        for enc in self.groups.values():
            enc.transform(table.column(enc.spec.column), where)

    def _encode(self, table: pa.Table, where: Where, row_ids: np.ndarray) -> Columns:
        n = table.num_rows
        sparse = {e.name: e.transform(table.column(e.column), where) for e in self.sparse}
        dense = (
            np.stack([e.transform(table.column(e.column), where) for e in self.dense], axis=1)
            if self.dense else np.zeros((n, 0), dtype=np.float32)
        )
        if self.spec.user:
            user_col = sparse[self.spec.user]
            user = user_col if not isinstance(user_col, Ragged) else user_col.values[user_col.offsets[:-1]]
            user_key = self._user_keys(table, where)
        else:
            user, user_key = np.full(n, -1, dtype=np.int64), None
        return Columns(
            dense=dense,
            sparse=sparse,
            labels=self._labels(table, where),
            scenario=(self.scenario.transform(table.column(self.scenario.spec.column), where)
                      if self.scenario else np.zeros(n, dtype=np.int64)),
            user=np.asarray(user, dtype=np.int64),
            weights=self._weights(table, where),
            row_id=row_ids,
            groups={k: e.transform(table.column(e.spec.column), where) for k, e in self.groups.items()},
            oracle=self._oracle(table, where),
            time=self._time(table, where),
            history=self._history_of(table, where, user_key),
            extras=self._extras(row_ids),
            user_key=None if user_key is None else user_key.view(np.int64),
        )

    # --- label history (recsys.data.history) -------------------------------------------------------------
    @property
    def history_tasks(self) -> List[str]:
        h = self.spec.history
        if h is None:
            return []
        return list(h.tasks) if h.tasks is not None else [t.name for t in self.spec.tasks]

    def _user_keys(self, table: pa.Table, where: Where) -> np.ndarray:
        enc = next(e for e in self.sparse if e.name == self.spec.user)
        return value_keys(enc.normalised(table.column(enc.column), where))

    def _history_events(self, table: pa.Table, where: Where):
        """Per history task: (label defined, positive) of each row (see recsys.data.history)."""
        labels = self._labels(table, where)
        out = {}
        for name in self.history_tasks:
            task = next(t for t in self.spec.tasks if t.name == name)
            applies = labels[task.depends_on] > 0.5 if task.depends_on else np.ones(table.num_rows, dtype=bool)
            threshold = 0.5 if task.kind == "binary" else task.eval_threshold
            out[name] = (applies, labels[name] > threshold)
        return out

    def label_history(self) -> LabelHistory:
        """The training events of every rank's rows (one pass over the source, built once and cached)."""
        self._require_fitted()
        with self._history_lock:
            if self._history is None:
                self._history = self._build_history()
        return self._history

    def _build_history(self) -> LabelHistory:
        """Every training row of the source (all ranks' shares): user key, time, per task (defined, positive)."""
        users, times, events = [], [], {t: ([], []) for t in self.history_tasks}
        reader = self._reader(self.spec.source)  # a separate test source holds no training rows
        with self._bar("label history", self.source_rows) as bar:
            for chunk in reader.chunks(0, self.max_rows):
                table, where = self._prepare(chunk)
                time = self._time(table, where)
                train = self._split_of(self._row_ids(chunk, table, where, False), time, False) == 0
                bar.update(table.num_rows)
                if not train.any():
                    continue
                users.append(self._user_keys(table, where)[train])
                times.append(time[train])
                for name, (applies, positive) in self._history_events(table, where).items():
                    events[name][0].append(applies[train])
                    events[name][1].append(positive[train])
        return LabelHistory.build(
            np.concatenate(users), np.concatenate(times),
            {name: (np.concatenate(a), np.concatenate(p)) for name, (a, p) in events.items()},
        )

    def _history_of(self, table: pa.Table, where: Where, user_keys: np.ndarray) -> Dict[str, np.ndarray]:
        if self.spec.history is None:
            return {}
        return self.label_history().query(user_keys, self._time(table, where))

    # --- passes ------------------------------------------------------------------------------------------
    def _sources(self) -> List[Tuple[FileSpec, bool]]:
        out = [(self.spec.source, False)]
        if self.spec.test_source is not None:
            out.append((self.spec.test_source, True))
        return out

    def _bar(self, desc: str, total: Optional[int]):
        return tqdm(total=total, desc=desc, unit="row", unit_scale=True, disable=not self.progress, leave=False)

    def _fit_time_cuts(self) -> None:
        if self.split.kind != "time" or (self.valid_from is not None and self.test_from is not None):
            return
        if not self.spec.time:
            raise ConfigError(f"spec '{self.spec.name}': a time split needs 'time' (a timestamp column)")
        reader = self._reader(self.spec.source, {self.spec.time})
        times = [to_seconds(c.table.column(self.spec.time), Where(c.file, c.file_row), self.spec.time)
                 for c in reader.chunks(0, self.max_rows)]
        t = np.concatenate(times)
        test = 0.0 if self.spec.test_source is not None else self.split.test
        self.test_from = float(np.quantile(t, 1 - test)) if test > 0 else float("inf")
        self.valid_from = float(np.quantile(t, 1 - test - self.split.valid)) if self.split.valid > 0 else self.test_from

    def fit(self) -> None:
        """One pass: validate every row and fit encoders on the training split."""
        self._fit_time_cuts()
        if self.spec.user is not None:
            user_spec = next(s for s in self.spec.sparse if s.name == self.spec.user)
            if user_spec.multi_hot:
                raise ConfigError(f"spec '{self.spec.name}': the user feature '{self.spec.user}' must be single-hot")
        files = self._fingerprint()
        counts = {s: 0 for s in SPLITS}
        rows = {}
        for fs, is_test in self._sources():
            reader = self._reader(fs)
            stop = self.max_rows if not is_test else None
            seen = 0
            with self._bar(f"fit {os.path.basename(fs.path)}", stop) as bar:
                for chunk in reader.chunks(0, stop):
                    table, where = self._prepare(chunk)
                    self._check_rows(table, where)
                    row_ids = self._row_ids(chunk, table, where, is_test)
                    split = self._split_of(row_ids, self._time(table, where), is_test)
                    keep = self._scenario_keep(table, where)
                    if keep is not None:
                        split = np.where(keep, split, -1)  # rows of other scenarios belong to no split
                    for i, name in enumerate(SPLITS):
                        counts[name] += int((split == i).sum())
                    train = split == 0
                    for enc in self.sparse:
                        enc.fit(table.column(enc.column), where, train)
                    for enc in self.dense:
                        enc.fit(table.column(enc.column), where, train, encoded=split >= 0)
                    seen += table.num_rows
                    bar.update(table.num_rows)
            rows[is_test] = seen
        if counts["train"] == 0:
            raise DataError(f"dataset '{self.spec.name}': the training split is empty")
        for enc in self.sparse + self.dense:
            enc.finalize()
        self.source_rows = rows[False]
        self.test_rows = rows.get(True)
        self.split_counts = counts
        self._fit_files = files
        self.fitted = True

    def _require_fitted(self) -> None:
        if not self.fitted:
            raise RuntimeError("Dataset.fit() or Dataset.load() first")

    def _rows_of(self, fs: FileSpec, is_test: bool) -> int:
        """Rows of a source: from the fit when the files are unchanged, otherwise counted again."""
        known = self.test_rows if is_test else self.source_rows
        if known is None:
            counted = self._reader(fs).total_rows()
            known = counted if is_test or self.max_rows is None else min(counted, self.max_rows)
            if is_test:
                self.test_rows = known
            else:
                self.source_rows = known
        return known

    def _fingerprint(self) -> List[List[Any]]:
        """Name, size and modification time of every data file (to tell whether saved row counts apply); a
        file that vanishes while it is listed is left out."""
        out = []
        for f in self.files():
            try:
                st = os.stat(f)
            except FileNotFoundError:
                continue
            out.append([os.path.abspath(f), st.st_size, st.st_mtime_ns])
        return out

    def _check_files_unchanged(self) -> None:
        """The files must be those the encoders were fitted and the rows counted on: a file deleted, changed or
        added since would silently shift every rank's share of the rows (or drop them)."""
        if self._fit_files is None:
            return
        now = {f[0]: f for f in self._fingerprint()}
        fitted = {f[0] for f in self._fit_files}
        for entry in self._fit_files:
            if entry[0] not in now:
                raise DataError("no such file (it vanished after the fit pass read it)", file=entry[0])
            if now[entry[0]] != list(entry):
                raise DataError("changed after the fit pass read it (size or modification time); run again on "
                                "data that stays put", file=entry[0])
        for path in sorted(set(now) - fitted):
            raise DataError("appeared after the fit pass; run again on data that stays put", file=path)

    def _rank_chunks(self, rank: int, world_size: int) -> Iterator[Tuple[RawChunk, bool]]:
        self._require_fitted()
        self._check_files_unchanged()
        for fs, is_test in self._sources():
            start, stop = rank_range(self._rows_of(fs, is_test), rank, world_size)
            for chunk in self._reader(fs).chunks(start, stop):
                yield chunk, is_test

    def _encoded_chunks(self, rank: int, world_size: int, desc: str,
                        only: Optional[int] = None) -> Iterator[Tuple[Columns, np.ndarray]]:
        """Encoded chunks of this rank with each row's split; with ``only``, rows of other splits are dropped
        before encoding (the fit pass has already validated them)."""
        total = sum(self._rows_of(fs, t) for fs, t in self._sources()) // world_size
        with self._bar(desc, total) as bar:
            for chunk, is_test in self._rank_chunks(rank, world_size):
                table, where = self._prepare(chunk)
                row_ids = self._row_ids(chunk, table, where, is_test)
                split = self._split_of(row_ids, self._time(table, where), is_test)
                bar.update(table.num_rows)
                keep = self._scenario_keep(table, where)
                if only is not None:
                    keep = (split == only) if keep is None else keep & (split == only)
                if keep is not None:
                    if not keep.any():
                        continue
                    if not keep.all():
                        table, row_ids, split = table.filter(pa.array(keep)), row_ids[keep], split[keep]
                        where = Where(where.file, where.first_row, np.flatnonzero(keep))  # errors name file rows
                yield self._encode(table, where, row_ids).pack(), split

    def read(self, rank: int = 0, world_size: int = 1, splits: Sequence[str] = SPLITS) -> Dict[str, Columns]:
        """All of this rank's rows, encoded, per split (one pass over the files)."""
        parts: Dict[str, List[Columns]] = {s: [] for s in splits}
        for cols, split in self._encoded_chunks(rank, world_size, "read"):
            for name in splits:
                keep = split == SPLITS.index(name)
                if keep.any():
                    parts[name].append(cols if keep.all() else cols.mask(keep))
        return {s: Columns.concat(p) if p else self.empty() for s, p in parts.items()}

    def stream(self, split: str, rank: int = 0, world_size: int = 1) -> Iterator[Columns]:
        """This rank's rows of one split, chunk by chunk (for data larger than memory)."""
        for cols, _ in self._encoded_chunks(rank, world_size, f"stream {split}", only=SPLITS.index(split)):
            yield cols

    def layout(self) -> RecordLayout:
        """The keys, optional fields, widths and sparse features of this dataset's encoded rows."""
        s = self.spec
        return RecordLayout(
            keys={"labels": [t.name for t in s.tasks], "groups": list(self.groups), "oracle": list(s.oracle),
                  "history": history_keys(self.history_tasks) if s.history else [],
                  "extras": [c for sc in self.side_columns for c in sc.columns]},
            present=frozenset(name for name, wanted in (("time", s.time), ("user_key", s.user)) if wanted),
            widths={"dense": len(self.dense)},
            sparse=[(e.name, e.spec.multi_hot) for e in self.sparse],
        )

    def empty(self) -> Columns:
        """A zero-row Columns with the right fields."""
        return Columns.blank(self.layout(), 0)

    # --- schema and state --------------------------------------------------------------------------------
    def outline(self):
        """What the spec promises (tasks, scenarios, user, time) without reading any data."""
        from recsys.models.base import DataOutline

        return DataOutline(
            name=self.spec.name,
            tasks=tuple(Task(t.name, t.kind, t.depends_on, t.loss, t.weight, t.eval_threshold) for t in self.spec.tasks),
            num_scenarios=self.scenario.size if self.scenario else 1,
            user_feature=self.spec.user,
            has_time=self.spec.time is not None,
        )

    def schema(self, default_dim: int = 16) -> Schema:
        self._require_fitted()
        return self._schema([e.num_embeddings for e in self.sparse], default_dim)

    def declared_schema(self, default_dim: int = 16) -> Schema:
        """The schema from the spec alone, without reading or fitting data: every sparse feature must declare
        ``num_embeddings`` (``hash`` and ``identity`` encodings always do; a ``vocab`` feature's cap counts as
        its size). Used to plan sharding for data that is not at hand (``recsys plan``).

        Example::

            schema = Dataset(load_spec("configs/datasets/billion.yaml")).declared_schema()
            schema.feature("user_id").num_embeddings     # 1000000000
        """
        missing = [s.name for s in self.spec.sparse if not s.num_embeddings]
        if missing:
            raise ConfigError(
                f"spec '{self.spec.name}': sparse feature(s) {', '.join(repr(m) for m in missing)} declare no "
                "num_embeddings; table sizes are needed to build the model without data (give num_embeddings, "
                "or use the hash/identity encodings)"
            )
        return self._schema([int(s.num_embeddings) for s in self.spec.sparse], default_dim)

    def _schema(self, sizes: Sequence[int], default_dim: int) -> Schema:
        spec = self.spec
        scenario_features = [s.name for s in spec.sparse if s.group == "scenario"]
        return Schema(
            sparse=tuple(
                SparseFeature(
                    name=s.name, num_embeddings=size, embedding_dim=s.embedding_dim or default_dim,
                    group=s.group, multi_hot=s.multi_hot, pooling=s.pooling, table=s.table,
                )
                for s, size in zip(spec.sparse, sizes)
            ),
            dense=tuple(DenseFeature(d.name) for d in spec.dense),
            tasks=tuple(
                Task(t.name, t.kind, t.depends_on, t.loss, t.weight, t.eval_threshold) for t in spec.tasks
            ),
            num_scenarios=self.scenario.size if self.scenario else 1,
            scenario_names=tuple(spec.scenario.display_names()) if spec.scenario else (),
            user_feature=spec.user,
            scenario_feature=scenario_features[0] if len(scenario_features) == 1 else None,
            eval_groups=tuple((k, tuple(v.display_names())) for k, v in spec.eval_groups.items()),
            history_tasks=tuple(self.history_tasks),
        )

    def save(self, path: str) -> None:
        self._require_fitted()
        save_encoders(path, self.sparse, self.dense, self._extra_state())

    def _extra_state(self) -> Dict[str, Any]:
        return {
            "dataset": self.spec.name, "valid_from": self.valid_from, "test_from": self.test_from,
            "source_rows": self.source_rows, "test_rows": self.test_rows, "split_counts": self.split_counts,
            "files": self._fingerprint(), "max_rows": self.max_rows,
        }

    def load(self, path: str) -> None:
        extra = load_encoders(path, self.sparse, self.dense)
        try:
            self._load_extra(extra)
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"corrupt fitted encoders (entry {e})", file=os.path.join(path, "encoders.json")) from None

    def state_dict(self) -> Dict[str, Any]:
        """Fitted state as plain objects (for broadcasting from rank 0)."""
        self._require_fitted()
        return {
            "sparse": {e.name: (e.state(), e.vocab) for e in self.sparse},
            "dense": {e.spec.name: e.state() for e in self.dense},
            "extra": self._extra_state(),
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        for e in self.sparse:
            enc_state, vocab = state["sparse"][e.name]
            e.load_state(enc_state, vocab)
        for e in self.dense:
            e.load_state(state["dense"][e.spec.name])
        self._load_extra(state["extra"])

    def _load_extra(self, extra: Dict[str, Any]) -> None:
        self.valid_from, self.test_from = extra["valid_from"], extra["test_from"]
        same_files = extra.get("files") == self._fingerprint() and extra.get("max_rows") == self.max_rows
        # encoders fitted on other files (scoring new data with a trained model): count the new files' rows
        self.source_rows, self.test_rows = (extra["source_rows"], extra["test_rows"]) if same_files else (None, None)
        self.split_counts = extra.get("split_counts", {}) if same_files else {}
        self._fit_files = extra.get("files") if same_files else None
        self.fitted = True

    def files(self) -> List[str]:
        return [f for fs, _ in self._sources() for f in list_files(fs, self.root)]

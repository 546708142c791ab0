"""Side tables: the spec's ``joins`` (looked up by key for every chunk of the source) and the run config's
``data.side_columns`` (per-row values looked up by row id, handed to models as ``Batch.extras``).

Both are read whole, once, into memory; a missing key column, a missing key or a repeated key names its file
(and row).
"""

from dataclasses import replace
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from recsys.config import SideColumnsConfig
from recsys.data.encoding import Where, _to_numpy, key_text, to_float, to_float32, to_int
from recsys.data.reader import RawChunk, SourceReader, concat_chunks
from recsys.data.spec import FileSpec, JoinSpec
from recsys.errors import ConfigError, DataError


def read_keyed_table(
    reader: SourceReader, key: str, what: str, read_key: Callable[[pa.Array, Where, str], Any]
) -> Tuple[pa.Table, pd.Index, List[RawChunk]]:
    """A whole side table without its key column, its unique keys (``read_key`` of each chunk's key column, so
    an int64 key in one Parquet file and text in the next agree) and its chunks; ``what`` names the key in
    errors."""
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
            f"{what} {shown} repeats (first at {first_chunk.file}, row {first_chunk.file_row + first_row + 1})",
            key,
            row,
        )
    return concat_chunks([replace(c, table=c.table.drop_columns([key])) for c in chunks]), index, chunks


class Joins:
    """The spec's side tables (``joins``), each joined to every chunk by its key (a left join that must match).

    Args:
        joins: the spec's joins, in order.
        root: the data root their paths are relative to.
        chunk_rows: rows per read chunk.
    """

    def __init__(self, joins: Sequence[JoinSpec], root: str, chunk_rows: int) -> None:
        self.joins = list(joins)
        self.root = root
        self.chunk_rows = chunk_rows
        self._tables: Optional[List[Tuple[pd.Index, pa.Table]]] = None

    def columns_of(self, join: JoinSpec) -> List[str]:
        """The columns of ``join``'s table (declared, or its first chunk's)."""
        if join.columns:
            return list(join.columns)
        reader = SourceReader(join.file_spec(), self.root, columns=None, chunk_rows=self.chunk_rows)
        return next(reader.chunks()).table.column_names

    def _side_tables(self) -> List[Tuple[pd.Index, pa.Table]]:
        if self._tables is None:
            self._tables = []
            for j in self.joins:
                # the key is read as text from CSV: exact for any width, and what the source's CSV cells are
                reader = SourceReader(
                    j.file_spec(),
                    self.root,
                    columns=None,
                    chunk_rows=self.chunk_rows,
                    string_columns=list(j.columns or ()) + [j.on],
                )
                table, keys, _ = read_keyed_table(reader, j.on, "join key", key_text)
                self._tables.append((keys, table))
        return self._tables

    def apply(self, table: pa.Table, where: Where) -> pa.Table:
        """``table`` with the columns of every side table it does not have yet, looked up by key."""
        for (index, side), join in zip(self._side_tables(), self.joins):
            key = join.on
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
        return table


class SideColumns:
    """Per-row side columns (``data.side_columns``) joined by row id: ``Batch.extras``.

    Args:
        configs: the side-column files (each: path, columns, key column, fill of rows it does not list).
        chunk_rows: rows per read chunk.
    """

    def __init__(self, configs: Sequence[SideColumnsConfig], chunk_rows: int) -> None:
        self.configs = list(configs)
        self.chunk_rows = chunk_rows
        if len(set(self.names)) != len(self.names):
            raise ConfigError(f"data.side_columns: column names repeat: {self.names}")
        self._tables: Optional[List[Tuple[pd.Index, Dict[str, np.ndarray], float]]] = None

    @property
    def names(self) -> List[str]:
        """The columns handed to models, in order."""
        return [c for sc in self.configs for c in sc.columns]

    def _by_row(self) -> List[Tuple[pd.Index, Dict[str, np.ndarray], float]]:
        """The side-column files, each as (row-id index, {column: float32 values}, fill); read once."""
        if self._tables is None:
            self._tables = []
            for sc in self.configs:
                reader = SourceReader(
                    FileSpec(sc.path),
                    "",
                    columns={sc.key, *sc.columns},
                    chunk_rows=self.chunk_rows,
                    string_columns=[sc.key],
                )
                _, keys, chunks = read_keyed_table(reader, sc.key, "row id", to_int)
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
                self._tables.append((keys, {c: np.concatenate(v) for c, v in values.items()}, float(sc.fill)))
        return self._tables

    def of(self, row_ids: np.ndarray) -> Dict[str, np.ndarray]:
        """Side columns of ``row_ids`` (``fill`` where a side table has no entry): {column: [n] float32}."""
        out: Dict[str, np.ndarray] = {}
        for keys, values, fill in self._by_row():
            pos = keys.get_indexer(row_ids)
            found = pos >= 0
            for name, v in values.items():
                out[name] = np.where(found, v[np.maximum(pos, 0)], np.float32(fill)).astype(np.float32)
        return out

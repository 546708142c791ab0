"""Derived columns (the spec's ``derived``): computed from other columns of a chunk, vectorised, in spec order
(a derived column may read an earlier one); and the row conditions of the spec's ``filter``."""

from typing import Any, List, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from recsys.data.encoding import Where, _to_numpy, to_float
from recsys.data.spec import DerivedSpec, FilterSpec
from recsys.data.splits import splitmix64


def add_derived(derived: Sequence[DerivedSpec], table: pa.Table, where: Where) -> pa.Table:
    """``table`` with every derived column appended."""
    for d in derived:
        table = table.append_column(d.name, pa.array(derive(d, table, where)))
    return table


def derive(d: DerivedSpec, table: pa.Table, where: Where) -> np.ndarray:
    """The values of derived column ``d`` for every row of ``table``: [n] int64 (see :class:`DerivedSpec`)."""

    def col(name: str) -> pa.Array:
        if name not in table.column_names:
            raise where.error(f"derived column '{d.name}' needs a missing column", name)
        return table.column(name)

    column = d.column or ""  # every op but the ones reading no column names one (DerivedSpec's checks)
    if d.op == "in":
        return _is_in(col(column), d.values, where, column).astype(np.int64)
    if d.op in ("greater", "bucketize"):
        x = to_float(col(column), where, column)
        if np.isnan(x).any():
            raise where.error("missing value", d.column, int(np.flatnonzero(np.isnan(x))[0]))
        if d.op == "greater":
            return (x > d.value).astype(np.int64)
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


def _numeric(values: List[Any]) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def _is_in(arr: pa.Array, values: List[Any], where: Where, column: str) -> np.ndarray:
    """Whether each cell is one of ``values``: [n] bool (numbers compared as numbers, text as text; a missing
    cell is in no set)."""
    if _numeric(values):
        return np.isin(to_float(arr, where, column), np.asarray(values, dtype=np.float64))
    text = pc.cast(arr, pa.string())
    return _to_numpy(pc.fill_null(pc.is_in(text, value_set=pa.array([str(v) for v in values])), False)).astype(bool)


_COMPARE = {
    "eq": np.equal,
    "ne": np.not_equal,
    "lt": np.less,
    "le": np.less_equal,
    "gt": np.greater,
    "ge": np.greater_equal,
}
_COMPARE_TEXT = {
    "eq": pc.equal,
    "ne": pc.not_equal,
    "lt": pc.less,
    "le": pc.less_equal,
    "gt": pc.greater,
    "ge": pc.greater_equal,
}


def filter_mask(f: FilterSpec, table: pa.Table, where: Where) -> np.ndarray:
    """The rows of ``table`` that pass every condition of ``f``: [n] bool (see :class:`FilterSpec`)."""
    if f.column not in table.column_names:
        raise where.error("filter needs a missing column", f.column)
    arr = table.column(f.column)
    keep = np.ones(table.num_rows, dtype=bool)
    missing = _to_numpy(pc.is_null(arr)).astype(bool)
    for condition, operand in f.conditions():
        if condition == "not_null":
            keep &= ~missing
        elif condition in ("in", "not_in"):
            inside = _is_in(arr, operand, where, f.column)
            keep &= inside if condition == "in" else ~inside
        elif _numeric([operand]):
            x = to_float(arr, where, f.column)
            with np.errstate(invalid="ignore"):  # NaN (missing) fails every comparison but ne
                keep &= _COMPARE[condition](x, float(operand))
        else:
            passed = _COMPARE_TEXT[condition](pc.cast(arr, pa.string()), pa.scalar(str(operand)))
            keep &= _to_numpy(pc.fill_null(passed, condition == "ne")).astype(bool)
    return keep

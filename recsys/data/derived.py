"""Derived columns (the spec's ``derived``): computed from other columns of a chunk, vectorised, in spec order
(a derived column may read an earlier one)."""

from typing import Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from recsys.data.encoding import Where, _to_numpy, to_float
from recsys.data.spec import DerivedSpec
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

    if d.op in ("greater", "bucketize"):
        x = to_float(col(d.column), where, d.column)
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

"""Checks of the values that need no fitted state: labels, sample weights, oracle probabilities, timestamps.

The fit pass runs them over every row before anything is fitted or written, and encoding returns their
values. An error is one line naming the file, column and row (:meth:`recsys.data.encoding.Where.error`).

A label must be finite, inside the bounds its spec declares (``min_value``/``max_value``) and inside its loss's
domain (:data:`recsys.task_losses.TASK_LOSSES`: 0 or 1 for binary tasks, >= 0 for ``log_mse``). A loss's set of
values is checked before the spec's bounds and its minimum after them, so a label outside both is reported in
the spec's own terms.
"""

from typing import Dict, Mapping, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from recsys.data.encoding import Where, to_float, to_float32, to_seconds
from recsys.data.spec import TaskSpec
from recsys.task_losses import loss_of


def labels(tasks: Sequence[TaskSpec], table: pa.Table, where: Where) -> Dict[str, np.ndarray]:
    """Each task's labels, checked: {task: [n] float32}; a funnel child may only be positive where its parent
    is."""
    out: Dict[str, np.ndarray] = {}
    for t in tasks:
        y = to_float(table.column(t.source_column), where, t.source_column)
        bad = ~np.isfinite(y)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise where.error(
                f"label of task '{t.name}' is {'missing' if np.isnan(y[i]) else y[i]}", t.source_column, i
            )
        loss = loss_of(t)
        outside = loss.labels.first_outside_values(y)
        if outside is not None:
            raise where.error(loss.outside_values_message(t.name, y[outside]), t.source_column, outside)
        for limit, bad, what in (
            (t.min_value, y < (t.min_value or 0.0), "below the minimum"),
            (t.max_value, y > (t.max_value or 0.0), "above the maximum"),
        ):
            if limit is not None and bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise where.error(
                    f"label of task '{t.name}' is {y[i]:g}, {what} {limit:g} declared in the spec", t.source_column, i
                )
        below = loss.labels.first_below_minimum(y)
        if below is not None:
            raise where.error(loss.below_minimum_message(t.name, y[below]), t.source_column, below)
        out[t.name] = to_float32(y, where, t.source_column, f"label of task '{t.name}'")
    for t in tasks:
        if t.depends_on and t.kind == "binary":
            orphan = (out[t.name] > 0) & (out[t.depends_on] <= 0)
            if orphan.any():
                i = int(np.flatnonzero(orphan)[0])
                raise where.error(
                    f"task '{t.name}' is positive where its parent '{t.depends_on}' is not", t.source_column, i
                )
    return out


def weights(column: Optional[str], table: pa.Table, where: Where) -> np.ndarray:
    """Sample weights from ``column`` (1 for every row without one): [n] float32, finite and >= 0."""
    if not column:
        return np.ones(table.num_rows, dtype=np.float32)
    w = to_float(table.column(column), where, column)
    bad = ~np.isfinite(w) | (w < 0)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise where.error(f"sample weight must be finite and >= 0, got {w[i]}", column, i)
    return to_float32(w, where, column, "sample weight")


def oracle(
    columns: Mapping[str, str], tasks: Sequence[TaskSpec], table: pa.Table, where: Where
) -> Dict[str, np.ndarray]:
    """True probabilities {task: [n] float32} from ``columns`` (task -> column): in [0, 1] for binary tasks,
    finite otherwise."""
    kinds = {t.name: t.kind for t in tasks}
    out = {}
    for task, column in columns.items():
        p = to_float(table.column(column), where, column)
        bad = ~((p >= 0) & (p <= 1)) if kinds and kinds[task] == "binary" else ~np.isfinite(p)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise where.error(f"oracle value {p[i]} is not a probability", column, i)
        out[task] = to_float32(p, where, column, "oracle value")
    return out


def timestamps(
    column: Optional[str], table: pa.Table, where: Where, time_format: Optional[str] = None
) -> Optional[np.ndarray]:
    """Seconds from ``column`` ([n] float64, every one finite), or None without a time column; text is parsed
    with ``time_format`` (``strptime`` codes) when given (see :class:`recsys.data.spec.DatasetSpec`)."""
    if not column:
        return None
    arr = table.column(column)
    if time_format is not None:
        arr = parse_times(arr, time_format, where, column)
    t = to_seconds(arr, where, column)
    bad = ~np.isfinite(t)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise where.error("missing timestamp" if np.isnan(t[i]) else f"non-finite timestamp {t[i]}", column, i)
    return t


def parse_times(arr: pa.Array, time_format: str, where: Where, column: str) -> pa.Array:
    """Text (or numbers written as digits, such as Avazu's ``14102100``) parsed with ``time_format`` into
    timestamps (UTC when the format has ``%z``, naive otherwise); a cell that does not match names its row."""
    text = pc.cast(arr, pa.string())
    try:
        parsed = pc.strptime(text, format=time_format, unit="s", error_is_null=True)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        raise where.error(
            f"cannot parse times with time_format {time_format!r} ({str(e).splitlines()[0]})", column
        ) from None
    bad = np.asarray(pc.and_(pc.is_valid(text), pc.is_null(parsed)).to_numpy(zero_copy_only=False), dtype=bool)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise where.error(f"time {text[i].as_py()!r} does not match time_format {time_format!r}", column, i)
    return parsed

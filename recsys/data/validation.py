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
            raise where.error(f"label of task '{t.name}' is {'missing' if np.isnan(y[i]) else y[i]}",
                              t.source_column, i)
        loss = loss_of(t)
        i = loss.labels.first_outside_values(y)
        if i is not None:
            raise where.error(loss.outside_values_message(t.name, y[i]), t.source_column, i)
        for limit, bad, what in ((t.min_value, y < (t.min_value or 0.0), "below the minimum"),
                                 (t.max_value, y > (t.max_value or 0.0), "above the maximum")):
            if limit is not None and bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise where.error(f"label of task '{t.name}' is {y[i]:g}, {what} {limit:g} declared in the spec",
                                  t.source_column, i)
        i = loss.labels.first_below_minimum(y)
        if i is not None:
            raise where.error(loss.below_minimum_message(t.name, y[i]), t.source_column, i)
        out[t.name] = to_float32(y, where, t.source_column, f"label of task '{t.name}'")
    for t in tasks:
        if t.depends_on and t.kind == "binary":
            orphan = (out[t.name] > 0) & (out[t.depends_on] <= 0)
            if orphan.any():
                i = int(np.flatnonzero(orphan)[0])
                raise where.error(f"task '{t.name}' is positive where its parent '{t.depends_on}' is not",
                                  t.source_column, i)
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


def oracle(columns: Mapping[str, str], tasks: Sequence[TaskSpec], table: pa.Table,
           where: Where) -> Dict[str, np.ndarray]:
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


def timestamps(column: Optional[str], table: pa.Table, where: Where) -> Optional[np.ndarray]:
    """Seconds from ``column`` ([n] float64, every one finite), or None without a time column."""
    if not column:
        return None
    t = to_seconds(table.column(column), where, column)
    bad = ~np.isfinite(t)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise where.error("missing timestamp" if np.isnan(t[i]) else f"non-finite timestamp {t[i]}", column, i)
    return t

"""Per-user label history: for every row, statistics of the same user's strictly earlier training labels.

Models that learn from a user's past behaviour (STAN's user-state pseudo-labels, its Beta tracker's time-order
counter) need, per row, "what did this user do before this moment". Training batches are shuffled across time,
so that cannot be accumulated during training without mixing training order with time order. It is computed
from the data instead, leak-free by construction:

* the events are the **training-split** rows (the only labels training may see; with a random split, labels of
  validation and test rows never reach a training target);
* a row's history covers the events of the same user with a timestamp **strictly smaller** than the row's
  (the row itself, ties and later rows never count);
* per task, an event counts where the task's label is defined (its parent's label is positive for a task with
  ``depends_on``), and it is positive when the label is (binary) or the label exceeds the task's
  ``eval_threshold`` (regression: the same positives AUC uses).

For each row :meth:`LabelHistory.query` returns float32 columns::

    count            the user's earlier training rows
    <task>/count     of those, the rows where the task's label is defined
    <task>/mean      their positive rate (0 when <task>/count is 0)

Build cost: one sort of the training events (user key, time); query cost: three binary searches per row.
Memory: ~ (16 + 8 * tasks) bytes per training row on every rank. At industrial scale the same columns are the
output of an offline window job (per-user running sums by timestamp) joined to the rows.

Example::

    hist = LabelHistory.build(keys, times, {"ctr": (applies, positive)})
    cols = hist.query(keys_of_rows, times_of_rows)    # {"count": [n], "ctr/count": [n], "ctr/mean": [n]}
"""

from typing import Dict, List, Mapping, Sequence, Tuple

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from recsys.data.spec import DatasetSpec, TaskSpec
from recsys.errors import ConfigError

_KEY_HASH = "recsys-user-v1\0\0"  # 16 bytes: 64-bit keys of raw user values


def value_keys(values: pa.Array) -> np.ndarray:
    """64-bit keys of raw values (by their text, so an id reads alike from CSV text and Parquet ints); every
    distinct value is hashed once. Nulls get key 0."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    enc = pc.dictionary_encode(pc.cast(values, pa.string()))
    uniques = enc.dictionary.to_numpy(zero_copy_only=False).astype(object)
    hashed = pd.util.hash_array(uniques, hash_key=_KEY_HASH).astype(np.uint64)
    idx = pc.fill_null(enc.indices, -1).to_numpy(zero_copy_only=False).astype(np.int64)
    return np.where(idx >= 0, hashed[np.maximum(idx, 0)], np.uint64(0)).astype(np.uint64)


def history_keys(tasks: Sequence[str]) -> Tuple[str, ...]:
    """The column names :meth:`LabelHistory.query` returns for ``tasks``, in order."""
    return ("count",) + tuple(f"{t}/{s}" for t in tasks for s in ("count", "mean"))


def history_tasks(spec: DatasetSpec) -> List[str]:
    """The tasks the spec's ``history`` summarises (every task unless it names some; none without history)."""
    h = spec.history
    if h is None:
        return []
    return list(h.tasks) if h.tasks is not None else [t.name for t in spec.tasks]


def history_events(tasks: Sequence[TaskSpec], names: Sequence[str], labels: Mapping[str, np.ndarray],
                   rows: int) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
    """Per history task ``names``: (label defined, positive) of each of ``rows`` rows with ``labels`` (see the
    module docstring)."""
    by_name = {t.name: t for t in tasks}
    out = {}
    for name in names:
        task = by_name[name]
        applies = labels[task.depends_on] > 0.5 if task.depends_on else np.ones(rows, dtype=bool)
        threshold = 0.5 if task.kind == "binary" else task.eval_threshold
        out[name] = (applies, labels[name] > threshold)
    return out


class LabelHistory:
    """Training events sorted by (user, time), queried for the strictly earlier events of (user, time) pairs.

    Args:
        users: sorted distinct user keys of the events.
        times: sorted distinct event timestamps.
        keys: sorted combined keys ``user_code * (len(times) + 1) + time_rank`` of the events.
        cum: per task ``(applies, positive)`` running counts in key order, each ``[n + 1]`` (entry ``i`` counts
            the events before position ``i``).
    """

    def __init__(self, users: np.ndarray, times: np.ndarray, keys: np.ndarray,
                 cum: Dict[str, Tuple[np.ndarray, np.ndarray]]) -> None:
        self.users = users
        self.times = times
        self.keys = keys
        self.cum = cum
        self.tasks = list(cum)

    @classmethod
    def build(cls, users: np.ndarray, times: np.ndarray,
              tasks: Mapping[str, Tuple[np.ndarray, np.ndarray]]) -> "LabelHistory":
        """From events: user keys [n], timestamps [n], per task (applies [n] bool, positive [n] bool)."""
        users = np.asarray(users, dtype=np.uint64)
        times = np.asarray(times, dtype=np.float64)
        distinct_users = np.unique(users)
        distinct_times = np.unique(times)
        if len(distinct_users) * (len(distinct_times) + 1) >= 2**62:
            raise ConfigError("label history: too many users x distinct timestamps for 64-bit keys")
        code = np.searchsorted(distinct_users, users).astype(np.int64)
        rank = np.searchsorted(distinct_times, times).astype(np.int64)
        keys = code * (len(distinct_times) + 1) + rank
        order = np.argsort(keys, kind="stable")
        cum = {}
        for name, (applies, positive) in tasks.items():
            a = np.asarray(applies, dtype=bool)[order]
            p = (np.asarray(positive, dtype=bool) & np.asarray(applies, dtype=bool))[order]
            cum[name] = (_running(a), _running(p))
        return cls(distinct_users, distinct_times, keys[order], cum)

    def __len__(self) -> int:
        return len(self.keys)

    def query(self, users: np.ndarray, times: np.ndarray) -> Dict[str, np.ndarray]:
        """Statistics of each (user, time)'s strictly earlier events (see the module docstring)."""
        users = np.asarray(users, dtype=np.uint64)
        times = np.asarray(times, dtype=np.float64)
        width = len(self.times) + 1
        code = np.searchsorted(self.users, users)
        known = code < len(self.users)
        known[known] = self.users[code[known]] == users[known]
        code = np.where(known, code, 0).astype(np.int64)
        rank = np.searchsorted(self.times, times, side="left").astype(np.int64)  # event times < t
        start = np.searchsorted(self.keys, code * width, side="left")
        stop = np.searchsorted(self.keys, code * width + rank, side="left")
        stop = np.where(known, stop, start)
        out = {"count": (stop - start).astype(np.float32)}
        for name, (applies, positive) in self.cum.items():
            n = applies[stop] - applies[start]
            pos = positive[stop] - positive[start]
            out[f"{name}/count"] = n.astype(np.float32)
            out[f"{name}/mean"] = np.where(n > 0, pos / np.maximum(n, 1), 0.0).astype(np.float32)
        return out


def _running(x: np.ndarray) -> np.ndarray:
    out = np.zeros(len(x) + 1, dtype=np.int64)
    np.cumsum(x, out=out[1:])
    return out

"""Per-user label history: for every row, statistics of the same user's strictly earlier training labels.

Models that learn from a user's past behaviour (STAN's user-state pseudo-labels, its Beta tracker's time-order
counter) need, per row, "what did this user do before this moment". Training batches are shuffled across time,
so that cannot be accumulated during training without mixing training order with time order. It is computed
from the data instead, leak-free by construction:

* the events are the **training-split** rows (the only labels training may see; with a random split, labels of
  validation and test rows never reach a training target);
* a row's history covers events of the same user with a timestamp **strictly smaller** than the row's
  (the row itself, ties and later rows never count);
* per task, an event counts where the task's label is defined (its parent's label is positive for a task with
  ``depends_on``), and it is positive when the label is (binary) or the label exceeds the task's
  ``eval_threshold`` (regression: the same positives AUC uses).

**Bounded state.** The events are not kept row by row: the time axis is cut into at most ``buckets`` time buckets
(:class:`TimeBuckets`) and each user keeps, per bucket it has events in, one entry: the counts of the bucket's
events and the latest of their timestamps. A row at time ``t`` sees the entries whose latest timestamp is
``< t``, i.e. the user's events of earlier buckets, and of its own bucket when all of them are earlier. So:

* **exact** when the events have at most ``buckets`` distinct timestamps (then every bucket is one timestamp);
* otherwise a row misses the earlier events of its own bucket whenever that bucket also holds one of the user's
  events at or after ``t`` (never a later or tied label: still leak-free);
* memory is one entry per (user, bucket) with events: at most ``min(training rows, users x buckets)`` entries of
  ``~(32 + 16 * tasks)`` bytes, independent of the number of rows. The build reads the source in chunks and merges
  their entries as it goes (:class:`HistoryBuilder`), so it stays within a small multiple of that too.

For each row :meth:`LabelHistory.query` returns float32 columns::

    count            the user's earlier training rows
    <task>/count     of those, the rows where the task's label is defined
    <task>/mean      their positive rate (0 when <task>/count is 0)

Query cost: three binary searches per row. At industrial scale the same columns can also be the output of an
offline window job (per-user running sums by timestamp) joined to the rows.

Example::

    buckets = TimeBuckets.fit(chunks_of_times, 64)
    builder = HistoryBuilder(buckets, ["ctr"])
    builder.add(keys, times, {"ctr": (applies, positive)})       # per chunk of training rows
    hist = builder.finish()
    cols = hist.query(keys_of_rows, times_of_rows)    # {"count": [n], "ctr/count": [n], "ctr/mean": [n]}
"""

import threading
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

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
    if pa.types.is_dictionary(values.type):
        values = values.dictionary_decode()
    # distinct values first, then only they become text (the text of a value does not depend on its row)
    enc = pc.dictionary_encode(values)
    uniques = pc.cast(enc.dictionary, pa.string()).to_numpy(zero_copy_only=False).astype(object)
    hashed = pd.util.hash_array(uniques, hash_key=_KEY_HASH).astype(np.uint64)
    idx = pc.fill_null(enc.indices, -1).to_numpy(zero_copy_only=False).astype(np.int64)
    return np.where(idx >= 0, hashed[np.maximum(idx, 0)], np.uint64(0)).astype(np.uint64)


class ValueKeys:
    """:func:`value_keys` with a memo of the integer ids already hashed: a chunk's ids are looked up in one
    hash-table probe and only ids not seen before are turned into text and hashed (users recur from chunk to
    chunk, so after the first chunks that is almost none). Text ids and ids with nulls take :func:`value_keys`.
    Thread-safe (chunks decode on several threads); memory: 16 bytes per distinct id seen."""

    def __init__(self) -> None:
        self._ids = pd.Index(np.zeros(0, dtype=np.int64))
        self._keys = np.zeros(0, dtype=np.uint64)
        self._lock = threading.Lock()

    def __call__(self, values: pa.Array) -> np.ndarray:
        if isinstance(values, pa.ChunkedArray):
            values = values.combine_chunks()
        if not pa.types.is_integer(values.type) or values.null_count or pa.types.is_uint64(values.type):
            return value_keys(values)
        ids = values.to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
        with self._lock:
            index, keys = self._ids, self._keys
        pos = index.get_indexer(ids)
        missing = pos < 0
        if not missing.any():
            return keys[pos]
        new = np.unique(ids[missing])
        new_keys = value_keys(pa.array(new, type=values.type))
        with self._lock:  # another thread may have added some of them meanwhile: keep the first copy
            fresh = ~pd.Index(new).isin(self._ids)
            self._ids = self._ids.append(pd.Index(new[fresh]))
            self._keys = np.concatenate([self._keys, new_keys[fresh]])
            self._ids.get_indexer(new[:1])  # its hash engine built here, once, not by readers racing
            index, keys = self._ids, self._keys
        return keys[index.get_indexer(ids)]


def history_keys(tasks: Sequence[str]) -> Tuple[str, ...]:
    """The column names :meth:`LabelHistory.query` returns for ``tasks``, in order."""
    return ("count",) + tuple(f"{t}/{s}" for t in tasks for s in ("count", "mean"))


def history_tasks(spec: DatasetSpec) -> List[str]:
    """The tasks a label history of ``spec`` summarises: those its ``history.tasks`` names, otherwise every task
    whose positives are defined (binary tasks, regression tasks with ``eval_threshold``)."""
    if spec.history is not None and spec.history.tasks is not None:
        return list(spec.history.tasks)
    return [t.name for t in spec.tasks if t.kind == "binary" or t.eval_threshold is not None]


def history_possible(spec: DatasetSpec) -> bool:
    """Whether rows of ``spec`` can carry a label history (it needs the user feature and a timestamp)."""
    return spec.user is not None and spec.time is not None


def history_events(
    tasks: Sequence[TaskSpec], names: Sequence[str], labels: Mapping[str, np.ndarray], rows: int
) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
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


DEFAULT_BUCKETS = 64


def history_buckets(spec: DatasetSpec) -> int:
    """The number of time buckets a label history of ``spec`` keeps per user (its ``history.buckets``)."""
    return spec.history.buckets if spec.history is not None else DEFAULT_BUCKETS


class TimeBuckets:
    """The time buckets of a label history: one per distinct event timestamp when there are at most ``size``
    of them (exact), else ``size`` equal spans between the earliest and latest timestamp.

    Args:
        size: the most buckets.
        distinct: the sorted distinct timestamps (exact buckets), or None.
        low, high: the earliest and latest timestamp (equal spans; used when ``distinct`` is None).
    """

    def __init__(self, size: int, distinct: Optional[np.ndarray], low: float, high: float) -> None:
        self.size, self.distinct, self.low, self.high = size, distinct, low, high

    @classmethod
    def fit(cls, chunks: Iterable[np.ndarray], size: int) -> "TimeBuckets":
        """From the timestamps of the events, chunk by chunk (memory: ``size`` + 1 distinct values at most)."""
        distinct: Optional[np.ndarray] = np.zeros(0, dtype=np.float64)
        low, high = np.inf, -np.inf
        for times in chunks:
            if not len(times):
                continue
            times = np.asarray(times, dtype=np.float64)
            low, high = min(low, float(times.min())), max(high, float(times.max()))
            if distinct is not None:
                distinct = np.union1d(distinct, np.unique(times))
                if len(distinct) > size:
                    distinct = None  # too many for one bucket each: equal spans
        return cls(size, distinct, low, high)

    @property
    def exact(self) -> bool:
        """Every bucket holds one timestamp (the history is the exact one)."""
        return self.distinct is not None

    def of(self, times: np.ndarray) -> np.ndarray:
        """The bucket of each timestamp (int64 in ``[0, size)``)."""
        times = np.asarray(times, dtype=np.float64)
        if self.distinct is not None:
            return np.searchsorted(self.distinct, times).astype(np.int64)
        span = self.high - self.low
        scaled = (times - self.low) * (self.size / span) if span > 0 else np.zeros(len(times))
        return np.clip(np.floor(scaled), 0, self.size - 1).astype(np.int64)


class _Entries:
    """Aggregated events: per (user, bucket) the latest timestamp, the event count and per task the counts
    of rows where the label is defined and positive, sorted by (user, bucket), one entry per pair."""

    def __init__(
        self,
        users: np.ndarray,
        buckets: np.ndarray,
        times: np.ndarray,
        counts: np.ndarray,
        tasks: Dict[str, Tuple[np.ndarray, np.ndarray]],
    ) -> None:
        self.users, self.buckets, self.times, self.counts, self.tasks = users, buckets, times, counts, tasks

    def __len__(self) -> int:
        return len(self.users)

    @classmethod
    def merged(cls, parts: Sequence["_Entries"], names: Sequence[str]) -> "_Entries":
        """One entry per (user, bucket) of all of ``parts``' entries (counts added, latest time kept)."""
        users = np.concatenate([p.users for p in parts])
        buckets = np.concatenate([p.buckets for p in parts])
        order = np.lexsort((buckets, users))
        users, buckets = users[order], buckets[order]
        first = np.flatnonzero(np.concatenate([[True], (users[1:] != users[:-1]) | (buckets[1:] != buckets[:-1])]))

        def total(values: np.ndarray) -> np.ndarray:
            return np.add.reduceat(values[order], first) if len(first) else values[:0]

        times = np.concatenate([p.times for p in parts])[order]
        return cls(
            users[first],
            buckets[first],
            np.maximum.reduceat(times, first) if len(first) else times,
            total(np.concatenate([p.counts for p in parts])),
            {
                t: (
                    total(np.concatenate([p.tasks[t][0] for p in parts])),
                    total(np.concatenate([p.tasks[t][1] for p in parts])),
                )
                for t in names
            },
        )


class HistoryBuilder:
    """Accumulates training events chunk by chunk into per-(user, bucket) entries (see the module docstring);
    memory stays within ~2x the final entries plus ``merge_every`` pending ones.

    Args:
        buckets: the time buckets (:meth:`TimeBuckets.fit` over the same events' timestamps).
        tasks: the history tasks, in order.
        merge_every: pending entries that trigger a merge (at least; and at least as many as the merged ones,
            so merging costs O(1) per entry amortised).
    """

    def __init__(self, buckets: TimeBuckets, tasks: Sequence[str], merge_every: int = 1 << 20) -> None:
        self.time_buckets = buckets
        self.task_names = list(tasks)
        self.merge_every = merge_every
        self._merged: Optional[_Entries] = None
        self._pending: List[_Entries] = []
        self._pending_rows = 0

    def add(self, users: np.ndarray, times: np.ndarray, tasks: Mapping[str, Tuple[np.ndarray, np.ndarray]]) -> None:
        """Events: user keys [n] (uint64), timestamps [n], per task (label defined [n] bool, positive [n] bool)."""
        if not len(users):
            return
        ones = np.ones(len(users), dtype=np.int64)
        counts = {}
        for name in self.task_names:
            applies, positive = tasks[name]
            applies = np.asarray(applies, dtype=bool)
            counts[name] = (applies.astype(np.int64), (np.asarray(positive, dtype=bool) & applies).astype(np.int64))
        times = np.asarray(times, dtype=np.float64)
        events = _Entries(np.asarray(users, dtype=np.uint64), self.time_buckets.of(times), times, ones, counts)
        part = _Entries.merged([events], self.task_names)
        self._pending.append(part)
        self._pending_rows += len(part)
        if self._pending_rows >= max(self.merge_every, len(self._merged or ())):
            self._merge()

    def _merge(self) -> None:
        parts = ([self._merged] if self._merged is not None else []) + self._pending
        if parts:
            self._merged = _Entries.merged(parts, self.task_names)
        self._pending, self._pending_rows = [], 0

    def finish(self) -> "LabelHistory":
        """The history of every event added."""
        self._merge()
        entries = self._merged
        if entries is None:
            empty = np.zeros(0, dtype=np.int64)
            entries = _Entries(
                empty.astype(np.uint64),
                empty,
                empty.astype(np.float64),
                empty,
                {t: (empty, empty) for t in self.task_names},
            )
        return LabelHistory.from_entries(
            entries.users, entries.times, entries.counts, entries.tasks, exact=self.time_buckets.exact
        )


class LabelHistory:
    """Entries (per user, one per time bucket with events) sorted by (user, latest time), queried for the
    entries of a user whose latest time is strictly earlier than a row's.

    Args:
        users: sorted distinct user keys of the entries.
        times: sorted distinct latest times of the entries.
        keys: sorted combined keys ``user_code * (len(times) + 1) + time_rank`` of the entries.
        total: running event counts in key order ``[entries + 1]`` (entry ``i`` counts the events before
            position ``i``).
        cum: per task ``(applies, positive)`` running counts in key order, each ``[entries + 1]``.
        exact: whether every entry is one timestamp (see the module docstring).
    """

    def __init__(
        self,
        users: np.ndarray,
        times: np.ndarray,
        keys: np.ndarray,
        total: np.ndarray,
        cum: Dict[str, Tuple[np.ndarray, np.ndarray]],
        exact: bool = True,
    ) -> None:
        self.users = users
        self.times = times
        self.keys = keys
        self.total = total
        self.cum = cum
        self.exact = exact
        self.tasks = list(cum)

    @classmethod
    def build(
        cls, users: np.ndarray, times: np.ndarray, tasks: Mapping[str, Tuple[np.ndarray, np.ndarray]]
    ) -> "LabelHistory":
        """The exact history of events: user keys [n], timestamps [n], per task (applies [n] bool, positive [n]
        bool); one entry per event (memory per event: for a few events, and as the reference of the bounded
        :class:`HistoryBuilder`)."""
        applies = {name: np.asarray(a, dtype=bool) for name, (a, _) in tasks.items()}
        return cls.from_entries(
            np.asarray(users, dtype=np.uint64),
            np.asarray(times, dtype=np.float64),
            np.ones(len(users), np.int64),
            {
                name: (applies[name].astype(np.int64), (np.asarray(p, dtype=bool) & applies[name]).astype(np.int64))
                for name, (_, p) in tasks.items()
            },
        )

    @classmethod
    def from_entries(
        cls,
        users: np.ndarray,
        times: np.ndarray,
        counts: np.ndarray,
        tasks: Mapping[str, Tuple[np.ndarray, np.ndarray]],
        exact: bool = True,
    ) -> "LabelHistory":
        """From entries: user keys, latest times, event counts, per task (defined, positive) counts, all [m]."""
        distinct_users = np.unique(users)
        distinct_times = np.unique(times)
        if len(distinct_users) * (len(distinct_times) + 1) >= 2**62:
            raise ConfigError("label history: too many users x distinct timestamps for 64-bit keys")
        code = np.searchsorted(distinct_users, users).astype(np.int64)
        rank = np.searchsorted(distinct_times, times).astype(np.int64)
        keys = code * (len(distinct_times) + 1) + rank
        order = np.argsort(keys, kind="stable")
        cum = {name: (_running(a[order]), _running(p[order])) for name, (a, p) in tasks.items()}
        return cls(distinct_users, distinct_times, keys[order], _running(counts[order]), cum, exact)

    def __len__(self) -> int:
        """Number of entries (events, for an exact history built from events)."""
        return len(self.keys)

    @property
    def nbytes(self) -> int:
        """Memory of the index."""
        arrays = [self.users, self.times, self.keys, self.total] + [x for pair in self.cum.values() for x in pair]
        return sum(a.nbytes for a in arrays)

    def query(self, users: np.ndarray, times: np.ndarray) -> Dict[str, np.ndarray]:
        """Statistics of each (user, time)'s strictly earlier entries (see the module docstring)."""
        users = np.asarray(users, dtype=np.uint64)
        times = np.asarray(times, dtype=np.float64)
        width = len(self.times) + 1
        code = np.searchsorted(self.users, users)
        known = code < len(self.users)
        known[known] = self.users[code[known]] == users[known]
        code = np.where(known, code, 0).astype(np.int64)
        rank = np.searchsorted(self.times, times, side="left").astype(np.int64)  # entry times < t
        start = np.searchsorted(self.keys, code * width, side="left")
        stop = np.searchsorted(self.keys, code * width + rank, side="left")
        stop = np.where(known, stop, start)
        out = {"count": (self.total[stop] - self.total[start]).astype(np.float32)}
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

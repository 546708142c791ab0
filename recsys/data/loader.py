"""Batches from encoded columns: shuffled per epoch, resumable, prefetched in a background thread, and with an
exact number of batches per rank when asked (so sharded models never wait on a rank that ran out of data).

A stream runs in two background threads: one decodes the next chunks (a bounded queue of
``shuffle_buffer_chunks`` chunks, so the next shuffle window is ready when the current one is used up) and one
shuffles and builds batches (``prefetch`` batches ahead). Memory is bounded by the chunk size, the window and the
queues, never by the number of rows; the batches are the same with and without prefetching.
"""

import queue
import threading
import time
from typing import Callable, Iterator, List, Optional, Sequence, Union

import numpy as np

from recsys.data.batch import Batch
from recsys.data.columns import Columns

ColumnSource = Union[Columns, Callable[[], Iterator[Columns]]]


def padding_columns(like: Columns, rows: int = 1) -> Columns:
    """``rows`` placeholder rows shaped like ``like``: id 0 everywhere, weight 0, ``row_id == -1`` (see
    :meth:`Columns.blank`).

    They keep every rank's step count equal in collective forward passes and are dropped by evaluation."""
    return Columns.blank(like.layout(), rows)


class _Prefetch:
    """Runs an iterator in a daemon thread, ``depth`` items ahead; re-raises its exceptions here. Dropping (or
    closing) it stops the thread."""

    _END = object()

    def __init__(self, it: Iterator, depth: int) -> None:
        self._q: "queue.Queue" = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(it,), daemon=True)
        self._thread.start()

    def _run(self, it: Iterator) -> None:
        try:
            for item in it:
                while not self._stop.is_set():
                    try:
                        self._q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if self._stop.is_set():
                    return
            self._q.put(self._END)
        except BaseException as e:  # handed to the consumer
            self._q.put(e)

    def __iter__(self) -> "_Prefetch":
        return self

    def __next__(self):
        item = self._q.get()
        if item is self._END:
            raise StopIteration
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        self._stop.set()

    def __del__(self) -> None:
        self._stop.set()  # a consumer that stopped early (``num_batches``) leaves no thread holding chunks


class BatchLoader:
    """Iterates :class:`Batch` objects over one split.

    Args:
        source: in-memory :class:`Columns`, or a callable starting a new pass of column chunks (streaming).
        feature_names: KJT key order (the schema's sparse features).
        batch_size: rows per batch.
        shuffle: shuffle rows each epoch (streams shuffle within a buffer of chunks).
        seed: base seed; the order of epoch ``e`` depends only on ``(seed, e)``.
        drop_last: drop the last incomplete batch.
        num_batches: yield exactly this many batches, stopping early or padding with placeholder batches
            (``row_id == -1``); used to keep ranks in lock step.
        shuffle_buffer_chunks: chunks mixed before shuffling a stream (and decoded ahead of the window in use).
        prefetch: batches built ahead in a background thread, and for a stream chunks decoded ahead in another
            (0: none, everything runs in the consumer's thread).
        length: number of rows of a stream when known (for ``len``).

    Example::

        loader = BatchLoader(parts["train"], schema.feature_names, batch_size=4096, shuffle=True, seed=0)
        loader.set_epoch(1)
        for batch in loader: ...
    """

    def __init__(
        self,
        source: ColumnSource,
        feature_names: Sequence[str],
        batch_size: int,
        shuffle: bool = False,
        seed: int = 0,
        drop_last: bool = False,
        num_batches: Optional[int] = None,
        shuffle_buffer_chunks: int = 4,
        prefetch: int = 2,
        length: Optional[int] = None,
        padding_like: Optional[Columns] = None,
    ) -> None:
        self.source = source
        self.feature_names = list(feature_names)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.num_batches = num_batches
        self.shuffle_buffer_chunks = max(1, shuffle_buffer_chunks)
        self.prefetch = prefetch
        self.length = len(source) if isinstance(source, Columns) else length
        self.epoch = 0
        self.start_batch = 0
        self.wait_seconds = 0.0  # time consumers waited for batches (all passes): the loader-bound share of a loop
        self._padding_like = (
            padding_like if padding_like is not None else (source if isinstance(source, Columns) else None)
        )

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch's order; ``start_batch`` skips batches already trained (resume)."""
        self.epoch = epoch
        self.start_batch = start_batch

    def natural_batches(self) -> Optional[int]:
        """Batches one pass yields without ``num_batches`` (None for streams of unknown length)."""
        if self.length is None:
            return None
        full, rest = divmod(self.length, self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def __len__(self) -> int:
        n = self.num_batches if self.num_batches is not None else self.natural_batches()
        if n is None:
            raise TypeError("length of a stream of unknown size")
        return max(n - self.start_batch, 0)

    def _rng(self) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch])

    def _index_batches(self) -> Iterator[Columns]:
        """Column slices of one pass, before batching is capped or padded."""
        if isinstance(self.source, Columns):
            cols = self.source
            n = len(cols)
            order = self._rng().permutation(n) if self.shuffle else np.arange(n)
            stop = n - n % self.batch_size if self.drop_last else n
            for i in range(self.start_batch * self.batch_size, stop, self.batch_size):
                yield cols.take(order[i : i + self.batch_size])
            return
        yield from self._stream_batches()

    def _stream_batches(self) -> Iterator[Columns]:
        rng = self._rng()
        buffer: List[Columns] = []
        skip = self.start_batch
        carry: Optional[Columns] = None
        assert callable(self.source)

        def drain(parts: List[Columns], final: bool) -> Iterator[Columns]:
            nonlocal carry, skip
            if carry is not None:
                parts = [carry] + parts
                carry = None
            if not parts:
                return
            cols = Columns.concat(parts)
            order = rng.permutation(len(cols)) if self.shuffle else np.arange(len(cols))
            full = len(cols) - len(cols) % self.batch_size
            for i in range(0, full, self.batch_size):
                if skip:
                    skip -= 1
                    continue
                yield cols.take(order[i : i + self.batch_size])
            if full < len(cols):
                rest = cols.take(order[full:])
                if not final:
                    carry = rest
                elif not self.drop_last:
                    if skip:
                        skip -= 1
                    else:
                        yield rest

        chunks = self.source()
        if self.prefetch > 0:  # the next window decodes while this one is shuffled and trained on
            chunks = _Prefetch(chunks, self.shuffle_buffer_chunks)
        try:
            for chunk in chunks:
                buffer.append(chunk)
                if len(buffer) >= self.shuffle_buffer_chunks:
                    yield from drain(buffer, final=False)
                    buffer = []
            yield from drain(buffer, final=True)
        finally:
            if isinstance(chunks, _Prefetch):
                chunks.close()

    def _batches(self) -> Iterator[Batch]:
        produced = 0
        target = None if self.num_batches is None else self.num_batches - self.start_batch
        for cols in self._index_batches():
            if target is not None and produced >= target:
                return
            if self._padding_like is None:
                self._padding_like = cols
            yield cols.to_batch(self.feature_names)
            produced += 1
        if target is not None and produced < target:
            if self._padding_like is None:
                raise RuntimeError("cannot pad: this rank has no rows and no template was given")
            pad = padding_columns(self._padding_like).to_batch(self.feature_names)
            for _ in range(target - produced):
                yield pad

    def __iter__(self) -> Iterator[Batch]:
        it: Iterator[Batch] = self._batches()
        if self.prefetch > 0:
            it = _Prefetch(it, self.prefetch)
        return self._timed(it)

    def _timed(self, it: Iterator[Batch]) -> Iterator[Batch]:
        """``it``, adding the time each batch kept the consumer waiting to ``wait_seconds``."""
        try:
            while True:
                start = time.perf_counter()
                try:
                    batch = next(it)
                except StopIteration:
                    return
                finally:
                    self.wait_seconds += time.perf_counter() - start
                yield batch
        finally:
            if isinstance(it, _Prefetch):
                it.close()

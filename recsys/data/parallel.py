"""Chunk work on a few threads, results in input order.

Decoding a chunk (Arrow casts, vocabulary probes, numpy packing) spends most of its time in code that releases
the GIL, so a small thread pool decodes several chunks at once; results come back in the order of the input, so
what a caller sees (rows, errors, progress) is the same as with one thread:

* the first item runs in the caller's thread before any worker starts, so lazily built shared state (vocabulary
  engines, side tables, the label history) is built once, by one thread;
* at most ``2 * workers`` items are in flight (memory stays a few chunks);
* an error is raised when its item's turn comes, i.e. the error of the earliest failing item in input order;
  items after it are cancelled (running ones finish and are dropped).

Example::

    for cols in ordered_map(encode, reader.chunks(), workers=2): ...
"""

import collections
import os
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Deque, Iterable, Iterator, Optional, TypeVar

In = TypeVar("In")
Out = TypeVar("Out")


def default_workers() -> int:
    """Decode threads by default: the cores this process may use, at most 4 (beyond that reading the files, not
    decoding, is the limit)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(4, cores))


def ordered_map(fn: Callable[[In], Out], items: Iterable[In], workers: Optional[int] = None) -> Iterator[Out]:
    """``fn`` of each item, in input order, on ``workers`` threads (default :func:`default_workers`; 1: in the
    caller's thread only). See the module docstring."""
    workers = default_workers() if workers is None else workers
    it = iter(items)
    first = next(it, _NOTHING)
    if first is _NOTHING:
        return
    yield fn(first)  # type: ignore[arg-type]
    if workers <= 1:
        for item in it:
            yield fn(item)
        return
    pending: Deque[Future] = collections.deque()
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="recsys-decode")
    try:
        for item in it:
            pending.append(pool.submit(fn, item))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for future in pending:
            future.cancel()
        pool.shutdown(wait=True)


_NOTHING = object()

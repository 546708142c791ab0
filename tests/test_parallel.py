"""recsys/data/parallel.py: chunk work on threads gives what one thread gives (order, errors, rows)."""

import threading
import time

import numpy as np
import pytest

from recsys.data.dataset import Dataset
from recsys.data.parallel import ordered_map


def test_results_keep_input_order_whatever_finishes_first():
    def slow_for_small(i):
        time.sleep(0.002 * (10 - i % 10))  # earlier items finish later
        return i * i

    assert list(ordered_map(slow_for_small, range(40), workers=4)) == [i * i for i in range(40)]
    assert list(ordered_map(slow_for_small, [], workers=4)) == []


def test_first_item_runs_in_the_callers_thread_and_in_flight_items_are_bounded():
    threads, started, done = [], [], []
    lock = threading.Lock()

    def work(i):
        with lock:
            threads.append((i, threading.current_thread() is threading.main_thread()))
            started.append(i)
        time.sleep(0.001)
        with lock:
            done.append(i)
        return i

    consumed = 0
    for _ in ordered_map(work, range(30), workers=3):
        with lock:
            assert len(started) - consumed <= 2 * 3 + 1  # never more than 2 x workers ahead of the consumer
        consumed += 1
    assert dict(threads)[0] is True and not any(main for i, main in threads if i > 0)


def test_the_earliest_failing_item_raises_and_later_ones_are_dropped():
    def work(i):
        if i in (7, 3):
            time.sleep(0.01 if i == 3 else 0)  # item 7 fails first in time, item 3 first in order
            raise ValueError(f"item {i}")
        return i

    got = []
    with pytest.raises(ValueError, match="item 3"):
        for x in ordered_map(work, range(20), workers=4):
            got.append(x)
    assert got == [0, 1, 2]


def test_one_worker_runs_everything_in_the_callers_thread():
    assert list(ordered_map(lambda i: threading.current_thread() is threading.main_thread(), range(5), 1)) == [True] * 5


@pytest.mark.parametrize("workers", [2, 4])
def test_dataset_rows_are_the_same_for_any_number_of_decode_workers(tiny_world, workers):
    from recsys.data.spec import load_spec
    from tests.conftest import REPO

    spec = load_spec(f"{REPO}/configs/datasets/synthetic.yaml")
    one = Dataset(spec, root=tiny_world, chunk_rows=500, workers=1)
    one.fit()
    many = Dataset(spec, root=tiny_world, chunk_rows=500, workers=workers)
    many.fit()
    a, b = one.read(), many.read()
    for split in a:
        np.testing.assert_array_equal(a[split].row_id, b[split].row_id)
        np.testing.assert_array_equal(a[split].dense, b[split].dense)
        for name, x in a[split].sparse.items():
            y = b[split].sparse[name]
            for field in ("values", "offsets") if hasattr(x, "offsets") else (None,):
                np.testing.assert_array_equal(getattr(x, field) if field else x, getattr(y, field) if field else y)
    streamed = [c.row_id for c in many.stream("valid")]
    np.testing.assert_array_equal(np.concatenate(streamed), a["valid"].row_id)

"""Which split a row belongs to, and which rows a rank reads.

The split of a row depends only on its id (``random``: a seeded hash of it) or its timestamp (``time``: cut
points fitted as quantiles of the source's timestamps, or given), never on chunking, rank or world size.
"""

from typing import Optional, Tuple

import numpy as np

from recsys.config import SplitConfig

SPLITS = ("train", "valid", "test")
TEST_ROW_OFFSET = 1 << 40  # row ids of a separate test source start here


def splitmix64(x: np.ndarray) -> np.ndarray:
    """A well-mixed 64-bit hash of each element (SplitMix64 finaliser)."""
    with np.errstate(over="ignore"):
        z = x.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def hash_uniform(x: np.ndarray, seed: int) -> np.ndarray:
    """Uniform [0, 1) numbers determined by ``(x, seed)``."""
    with np.errstate(over="ignore"):
        h = splitmix64(x.astype(np.uint64) ^ splitmix64(np.array([seed], dtype=np.uint64)))
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def rank_range(total: int, rank: int, world_size: int) -> Tuple[int, int]:
    """The contiguous share ``[start, stop)`` of ``total`` rows read by ``rank``."""
    return total * rank // world_size, total * (rank + 1) // world_size


class Splitter:
    """Assigns rows to splits (0 = train, 1 = valid, 2 = test, the indices of :data:`SPLITS`).

    Args:
        split: the policy (``random`` or ``time``, the shares, the seed, optional cut timestamps).
        separate_test: whether the dataset has a separate test source: its rows are all test, and the split
            only carves validation rows out of the main source.

    Example::

        splitter = Splitter(SplitConfig(valid=0.2, test=0.2, seed=42), separate_test=False)
        splitter.split_of(np.arange(8), None, is_test_source=False)   # array([1, 0, 0, 0, 1, 0, 0, 2], dtype=int8)
    """

    def __init__(self, split: SplitConfig, separate_test: bool) -> None:
        self.config = split
        self.separate_test = separate_test
        self.valid_from: Optional[float] = split.valid_from
        self.test_from: Optional[float] = split.test_from

    @property
    def test_share(self) -> float:
        """The share of the main source that is test (0 with a separate test source)."""
        return 0.0 if self.separate_test else self.config.test

    def needs_cuts(self) -> bool:
        """Whether a time split still has to fit its cut timestamps (:meth:`fit_cuts`)."""
        return self.config.kind == "time" and (self.valid_from is None or self.test_from is None)

    def fit_cuts(self, times: np.ndarray) -> None:
        """The cut timestamps of a time split: the latest ``test`` share of ``times`` (every timestamp of the
        main source) is test, the ``valid`` share before it validation."""
        test = self.test_share
        self.test_from = float(np.quantile(times, 1 - test)) if test > 0 else float("inf")
        self.valid_from = (float(np.quantile(times, 1 - test - self.config.valid)) if self.config.valid > 0
                           else self.test_from)

    def split_of(self, row_ids: np.ndarray, time: Optional[np.ndarray], is_test_source: bool) -> np.ndarray:
        """The split index of each row: [n] int8."""
        if is_test_source:
            return np.full(len(row_ids), 2, dtype=np.int8)
        if self.config.kind == "time":
            assert time is not None and self.valid_from is not None and self.test_from is not None
            out = np.zeros(len(row_ids), dtype=np.int8)
            out[time >= self.valid_from] = 1
            if not self.separate_test:
                out[time >= self.test_from] = 2
            return out
        test = self.test_share
        u = hash_uniform(row_ids, self.config.seed)
        return np.where(u < test, 2, np.where(u < test + self.config.valid, 1, 0)).astype(np.int8)

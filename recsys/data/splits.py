"""Which split a row belongs to, and which rows a rank reads.

The split of a row depends only on its id (``random``: a seeded hash of it) or its timestamp (``time``: cut
points fitted as quantiles of the source's timestamps, or given), never on chunking, rank or world size.
"""

import datetime
from typing import Collection, Optional, Tuple, Union

import numpy as np

from recsys.config import SplitConfig

SPLITS = ("train", "valid", "test")
TEST_ROW_OFFSET = 1 << 40  # row ids of a separate test source start here
VALID_ROW_OFFSET = 2 << 40  # and those of a separate validation source here


def row_offset(split: Optional[int]) -> int:
    """Where the row ids of a file set start: 0 for the main file set, else its split's own range."""
    return {None: 0, 1: VALID_ROW_OFFSET, 2: TEST_ROW_OFFSET}[split]


def cut_seconds(cut: Union[None, float, str]) -> Optional[float]:
    """A cut point of a time split as the time column's number: a number as it is, an ISO 8601 date or
    datetime as seconds since the Unix epoch (naive: as written, like the time column's text; with an offset:
    in UTC)."""
    if cut is None or isinstance(cut, (int, float)):
        return cut
    moment = datetime.datetime.fromisoformat(cut)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    return moment.timestamp()


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
        split: the policy (``random`` or ``time``, the shares, the seed, optional cut points).
        separate: the splits the dataset has file sets of its own for (1 = valid, 2 = test): their rows are all
            of that split, and the policy only carves the other splits out of the main file set.

    Example::

        splitter = Splitter(SplitConfig(valid=0.2, test=0.2, seed=42), separate=())
        splitter.split_of(np.arange(8), None, fixed=None)   # array([1, 0, 0, 0, 1, 0, 0, 2], dtype=int8)
    """

    def __init__(self, split: SplitConfig, separate: Collection[int] = ()) -> None:
        self.config = split
        self.separate_test = 2 in separate
        self.separate_valid = 1 in separate
        self.valid_from: Optional[float] = cut_seconds(split.valid_from)
        self.test_from: Optional[float] = cut_seconds(split.test_from)
        if self.separate_test:  # no test rows in the main file set
            self.test_from = float("inf")
        if self.separate_valid:  # no validation rows in the main file set
            self.valid_from = self.test_from

    @property
    def test_share(self) -> float:
        """The share of the main file set that is test (0 with a separate test file set)."""
        return 0.0 if self.separate_test else self.config.test

    @property
    def valid_share(self) -> float:
        """The share of the main file set that is validation (0 with a separate validation file set)."""
        return 0.0 if self.separate_valid else self.config.valid

    def needs_cuts(self) -> bool:
        """Whether a time split still has to fit its cut timestamps (:meth:`fit_cuts`)."""
        return self.config.kind == "time" and (self.valid_from is None or self.test_from is None)

    def fit_cuts(self, times: np.ndarray) -> None:
        """The cut timestamps of a time split: the latest ``test`` share of ``times`` (every timestamp of the
        main source) is test, the ``valid`` share before it validation."""
        test, valid = self.test_share, self.valid_share
        if self.test_from is None:
            self.test_from = float(np.quantile(times, 1 - test)) if test > 0 else float("inf")
        if self.valid_from is None:
            self.valid_from = float(np.quantile(times, 1 - test - valid)) if valid > 0 else self.test_from

    def split_of(self, row_ids: np.ndarray, time: Optional[np.ndarray], fixed: Optional[int]) -> np.ndarray:
        """The split index of each row of a file set: [n] int8; ``fixed`` is the split of a file set that is a
        whole split (see ``separate``), None for the main file set."""
        if fixed is not None:
            return np.full(len(row_ids), fixed, dtype=np.int8)
        if self.config.kind == "time":
            assert time is not None and self.valid_from is not None and self.test_from is not None
            out = np.zeros(len(row_ids), dtype=np.int8)
            out[time >= self.valid_from] = 1
            if not self.separate_test:
                out[time >= self.test_from] = 2
            return out
        test = self.test_share
        u = hash_uniform(row_ids, self.config.seed)
        return np.where(u < test, 2, np.where(u < test + self.valid_share, 1, 0)).astype(np.int8)

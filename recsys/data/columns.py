"""Encoded, columnar samples in numpy: what readers produce and loaders slice batches from.

Keeping the data columnar makes a batch a handful of fancy-indexing calls: building the KeyedJaggedTensor of a
4096-row batch costs well under a millisecond, where per-row Python would cost tens of milliseconds.
"""

from dataclasses import dataclass, replace
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recsys.data.batch import Batch
from recsys.data.record import RecordLayout, RowFields, arrays, blank, concat_fields, layout_of, tree_map


@dataclass
class Ragged:
    """Multi-hot ids: ``values[offsets[i]:offsets[i+1]]`` are row i's ids."""

    values: np.ndarray  # int64 [nnz]
    offsets: np.ndarray  # int64 [n + 1]

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def take(self, idx: np.ndarray) -> "Ragged":
        starts = self.offsets[:-1][idx]
        lengths = self.offsets[1:][idx] - starts
        new_offsets = np.zeros(len(idx) + 1, dtype=np.int64)
        np.cumsum(lengths, out=new_offsets[1:])
        # position j of the output reads starts[row(j)] + (j - new_offsets[row(j)])
        gather = np.repeat(starts - new_offsets[:-1], lengths) + np.arange(new_offsets[-1], dtype=np.int64)
        return Ragged(self.values[gather], new_offsets)

    @staticmethod
    def concat(parts: Sequence["Ragged"]) -> "Ragged":
        values = np.concatenate([p.values for p in parts]) if parts else np.zeros(0, np.int64)
        lengths = np.concatenate([p.lengths for p in parts]) if parts else np.zeros(0, np.int64)
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        return Ragged(values, offsets)


SparseColumn = Union[np.ndarray, Ragged]


@dataclass(kw_only=True)
class Columns(RowFields[np.ndarray, Dict[str, SparseColumn]]):
    """Encoded samples: the row record (:mod:`recsys.data.record`) as numpy arrays, the sparse features as
    {feature: int64 ids [n] (single-hot) or Ragged}; an absent optional field is None.

    Example::

        cols = Columns(dense=np.zeros((2, 0), np.float32), sparse={"item": np.array([3, 1])},
                       labels={"ctr": np.array([1, 0], np.float32)}, scenario=np.zeros(2, np.int64),
                       user=np.full(2, -1), weights=np.ones(2, np.float32), row_id=np.arange(2))
        cols.take(np.array([1])).to_batch(["item"]).sparse.values()   # tensor([1])
    """

    # single-hot ids stored row-major [n, F1] (``sparse`` then holds column views of it): a batch gathers each
    # row's ids with one contiguous read instead of F1 scattered ones
    packed: Optional[np.ndarray] = None
    packed_names: Tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.row_id)

    def pack(self) -> "Columns":
        """The same rows with single-hot ids packed row-major (see ``packed``)."""
        names = tuple(k for k, v in self.sparse.items() if not isinstance(v, Ragged))
        if self.packed is not None and names == self.packed_names:
            return self
        matrix = np.stack([np.asarray(self.sparse[k]) for k in names], axis=1) if names else None
        return replace(self, sparse=_with_views(self.sparse, matrix, names), packed=matrix, packed_names=names)

    def take(self, idx: np.ndarray) -> "Columns":
        """Rows ``idx`` (any order, repeats allowed)."""
        if self.packed is not None:
            matrix = self.packed[idx]
            ragged = {k: (v.take(idx) if isinstance(v, Ragged) else None) for k, v in self.sparse.items()}
            sparse = _with_views(ragged, matrix, self.packed_names)
        else:
            matrix = None
            sparse = {k: (v.take(idx) if isinstance(v, Ragged) else v[idx]) for k, v in self.sparse.items()}
        return tree_map(
            self,
            lambda a, f: a[idx],
            sparse=lambda _: sparse,
            packed=matrix,
            packed_names=self.packed_names if matrix is not None else (),
        )

    def mask(self, keep: np.ndarray) -> "Columns":
        return self.take(np.flatnonzero(keep))

    @staticmethod
    def concat(parts: List["Columns"]) -> "Columns":
        if len(parts) == 1:
            return parts[0]
        if not parts:
            raise ValueError("concat of no parts")
        first = parts[0]
        if all(p.packed is not None and p.packed_names == first.packed_names for p in parts):
            matrix = np.concatenate([p.packed for p in parts if p.packed is not None])
            ragged = {
                k: (_cat([p.sparse[k] for p in parts]) if isinstance(v, Ragged) else None)
                for k, v in first.sparse.items()
            }
            sparse = _with_views(ragged, matrix, first.packed_names)
        else:
            matrix, sparse = None, {k: _cat([p.sparse[k] for p in parts]) for k in first.sparse}
        return concat_fields(
            parts,
            lambda arrays, f: _cat(arrays),
            sparse=lambda _: sparse,
            packed=matrix,
            packed_names=first.packed_names if matrix is not None else (),
        )

    def layout(self) -> RecordLayout:
        """The keys, widths, optional fields and sparse features of these columns (what padding copies)."""
        return layout_of(self, multi_hot=lambda column: isinstance(column, Ragged))

    @staticmethod
    def blank(layout: RecordLayout, rows: int) -> "Columns":
        """``rows`` placeholder rows of ``layout``: id 0 in every feature (one id per multi-hot row), every other
        array its field's ``pad`` (``row_id`` and ``user`` -1, the rest 0); ``rows=0`` is an empty record.

        Example::

            pad = Columns.blank(cols.layout(), 1)   # a padding row shaped like ``cols``
        """

        def sparse(n: int) -> Dict[str, SparseColumn]:
            return {
                k: (
                    Ragged(np.zeros(n, np.int64), np.arange(n + 1, dtype=np.int64))
                    if multi_hot
                    else np.zeros(n, np.int64)
                )
                for k, multi_hot in layout.sparse
            }

        return blank(Columns, layout, rows, sparse)

    def nbytes(self) -> int:
        total = sum(a.nbytes for a in arrays(self))  # ``packed`` is counted through the views in ``sparse``
        for v in self.sparse.values():
            total += v.values.nbytes + v.offsets.nbytes if isinstance(v, Ragged) else v.nbytes
        return total

    def to_batch(self, feature_names: Sequence[str]) -> Batch:
        """Tensors for all rows; the KJT keys follow ``feature_names``."""
        n = len(self)
        values, lengths = [], []
        packed_t = self.packed.T if self.packed is not None else None  # feature-major view of the rows
        position = {k: j for j, k in enumerate(self.packed_names)}
        for name in feature_names:
            col = self.sparse[name]
            if isinstance(col, Ragged):
                values.append(col.values)
                lengths.append(col.lengths)
            else:
                values.append(packed_t[position[name]] if packed_t is not None else col)
                lengths.append(np.ones(n, dtype=np.int64))
        kjt = KeyedJaggedTensor(
            keys=list(feature_names),
            values=torch.from_numpy(np.concatenate(values) if values else np.zeros(0, np.int64)),
            lengths=torch.from_numpy(np.concatenate(lengths).astype(np.int32) if lengths else np.zeros(0, np.int32)),
            stride=n,
        )
        return tree_map(
            self,
            lambda a, f: torch.from_numpy(np.ascontiguousarray(a) if f.layout == "matrix" else a),
            sparse=lambda _: kjt,
            into=Batch,
            absent=lambda f: torch.from_numpy(np.zeros(0, f.dtype)),
        )


def _cat(arrays: List[Any]) -> Any:
    """Arrays (or Ragged columns) joined row-wise."""
    return Ragged.concat(arrays) if isinstance(arrays[0], Ragged) else np.concatenate(arrays)


def _with_views(
    sparse: Mapping[str, Optional[SparseColumn]], matrix: Optional[np.ndarray], names: Sequence[str]
) -> Dict[str, SparseColumn]:
    """``sparse`` with the packed features (``names``, None in ``sparse``) replaced by column views of ``matrix``
    (order kept)."""
    position = {k: j for j, k in enumerate(names)}
    out: Dict[str, SparseColumn] = {}
    for k, v in sparse.items():
        if k in position and matrix is not None:
            out[k] = matrix[:, position[k]]
        elif v is not None:
            out[k] = v
        else:
            raise ValueError(f"sparse feature '{k}' is neither packed nor a column")
    return out


class ColumnsFiller:
    """Rows of one split collected chunk by chunk into arrays allocated once: no list of parts kept alive beside
    a final concatenation (half the peak memory of an in-memory read, and one copy of every row instead of
    three: the mask, the part, the concatenation).

    Args:
        capacity: the rows expected (the split's count from the fit pass); more are taken by growing the arrays
            (doubling), fewer leave the arrays' tail unused (the result is a view of the filled rows).

    Example::

        filler = ColumnsFiller(ds.split_counts["train"])
        for cols, split in chunks: filler.add(cols, np.flatnonzero(split == 0))
        train = filler.finish()
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = max(int(capacity), 0)
        self.rows = 0
        self._out: Optional[Columns] = None
        self._ragged: Dict[str, List[Ragged]] = {}

    def add(self, cols: Columns, idx: Optional[np.ndarray] = None) -> None:
        """Rows ``idx`` of ``cols`` (all when None), in that order."""
        n = len(cols) if idx is None else len(idx)
        if n == 0:
            return
        if self._out is None:
            self._ragged = {k: [] for k, v in cols.sparse.items() if isinstance(v, Ragged)}
            self._out = self._allocate(cols, max(self.capacity, n))
        elif self.rows + n > len(self._out):
            self._out = self._grown(self._out, max(2 * len(self._out), self.rows + n))
        if (self._out.packed is None) != (cols.packed is None) or self._out.packed_names != cols.packed_names:
            raise ValueError("ColumnsFiller: chunks of one split must be packed alike")
        end = self.rows + n
        for dst, src in zip(_row_arrays(self._out), _row_arrays(cols)):
            _put(dst[self.rows : end], src, idx)
        for k, v in cols.sparse.items():
            if isinstance(v, Ragged):
                self._ragged[k].append(v if idx is None else v.take(idx))
        self.rows = end

    def finish(self) -> Optional[Columns]:
        """The rows added (None when there were none)."""
        if self._out is None:
            return None
        rows = self.rows
        return _mapped(self._out, lambda a: a[:rows], {k: Ragged.concat(p) for k, p in self._ragged.items()})

    @staticmethod
    def _allocate(like: Columns, rows: int) -> Columns:
        """Arrays for ``rows`` rows shaped like ``like``'s (its multi-hot features kept as placeholders)."""
        return _mapped(
            like,
            lambda a: np.empty((rows,) + a.shape[1:], dtype=a.dtype),
            {k: v for k, v in like.sparse.items() if isinstance(v, Ragged)},
        )

    def _grown(self, out: Columns, rows: int) -> Columns:
        bigger = self._allocate(out, rows)
        for dst, src in zip(_row_arrays(bigger), _row_arrays(out)):
            dst[: self.rows] = src[: self.rows]
        return bigger


def _row_arrays(cols: Columns) -> List[np.ndarray]:
    """Every per-row array of ``cols`` but the multi-hot features: the record's arrays, then the packed single-hot
    ids (or each single-hot column), in an order fixed by the layout."""
    single = (
        [cols.packed] if cols.packed is not None else [v for v in cols.sparse.values() if not isinstance(v, Ragged)]
    )
    return list(arrays(cols)) + single


def _mapped(cols: Columns, fn: Callable[[np.ndarray], np.ndarray], ragged: Mapping[str, Ragged]) -> Columns:
    """``cols`` with ``fn`` of each of its :func:`_row_arrays` (sparse views rebuilt on the packed ids) and the
    multi-hot features from ``ragged``."""
    matrix = fn(cols.packed) if cols.packed is not None else None
    if matrix is not None:
        sparse = _with_views({k: ragged.get(k) for k in cols.sparse}, matrix, cols.packed_names)
    else:
        sparse = {k: ragged[k] if isinstance(v, Ragged) else fn(v) for k, v in cols.sparse.items()}
    return tree_map(cols, lambda a, f: fn(a), sparse=lambda _: sparse, packed=matrix, packed_names=cols.packed_names)


def _put(dst: np.ndarray, src: np.ndarray, idx: Optional[np.ndarray]) -> None:
    """``dst[:] = src[idx]`` without a temporary (``src`` whole when ``idx`` is None)."""
    if idx is None:
        dst[...] = src
    else:
        np.take(src, idx, axis=0, out=dst)

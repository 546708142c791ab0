"""Encoded, columnar samples in numpy: what readers produce and loaders slice batches from.

Keeping the data columnar makes a batch a handful of fancy-indexing calls: building the KeyedJaggedTensor of a
4096-row batch costs well under a millisecond, where per-row Python would cost tens of milliseconds.
"""

from dataclasses import dataclass, replace
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

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
        matrix = np.stack([self.sparse[k] for k in names], axis=1) if names else None
        return replace(self, sparse=_with_views(self.sparse, matrix, names), packed=matrix, packed_names=names)

    def take(self, idx: np.ndarray) -> "Columns":
        """Rows ``idx`` (any order, repeats allowed)."""
        if self.packed is not None:
            matrix = self.packed[idx]
            sparse = {k: (v.take(idx) if isinstance(v, Ragged) else None) for k, v in self.sparse.items()}
            sparse = _with_views(sparse, matrix, self.packed_names)
        else:
            matrix = None
            sparse = {k: (v.take(idx) if isinstance(v, Ragged) else v[idx]) for k, v in self.sparse.items()}
        return tree_map(self, lambda a, f: a[idx], sparse=lambda _: sparse, packed=matrix,
                        packed_names=self.packed_names if matrix is not None else ())

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
            matrix = np.concatenate([p.packed for p in parts])
            sparse = {k: (Ragged.concat([p.sparse[k] for p in parts]) if isinstance(v, Ragged) else None)
                      for k, v in first.sparse.items()}
            sparse = _with_views(sparse, matrix, first.packed_names)
        else:
            matrix, sparse = None, {k: _cat([p.sparse[k] for p in parts]) for k in first.sparse}
        return concat_fields(parts, lambda arrays, f: _cat(arrays), sparse=lambda _: sparse, packed=matrix,
                             packed_names=first.packed_names if matrix is not None else ())

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
            return {k: (Ragged(np.zeros(n, np.int64), np.arange(n + 1, dtype=np.int64)) if multi_hot
                        else np.zeros(n, np.int64)) for k, multi_hot in layout.sparse}

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
            self, lambda a, f: torch.from_numpy(np.ascontiguousarray(a) if f.layout == "matrix" else a),
            sparse=lambda _: kjt, into=Batch, absent=lambda f: torch.from_numpy(np.zeros(0, f.dtype)),
        )


def _cat(arrays: List[Any]) -> Any:
    """Arrays (or Ragged columns) joined row-wise."""
    return Ragged.concat(arrays) if isinstance(arrays[0], Ragged) else np.concatenate(arrays)


def _with_views(sparse: Dict[str, Optional[SparseColumn]], matrix: Optional[np.ndarray],
                names: Sequence[str]) -> Dict[str, SparseColumn]:
    """``sparse`` with the packed features replaced by column views of ``matrix`` (order kept)."""
    position = {k: j for j, k in enumerate(names)}
    return {k: (matrix[:, position[k]] if k in position else v) for k, v in sparse.items()}

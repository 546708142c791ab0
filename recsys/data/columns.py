"""Encoded, columnar samples in numpy: what readers produce and loaders slice batches from.

Keeping the data columnar makes a batch a handful of fancy-indexing calls: building the KeyedJaggedTensor of a
4096-row batch costs well under a millisecond, where per-row Python would cost tens of milliseconds.
"""

from dataclasses import dataclass, field, fields, replace
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recsys.data.batch import Batch


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


@dataclass
class Columns:
    """Encoded samples, one numpy array per field (see :class:`recsys.data.batch.Batch` for meanings)."""

    dense: np.ndarray  # float32 [n, Dd]
    sparse: Dict[str, SparseColumn]  # int64 [n] (single-hot) or Ragged
    labels: Dict[str, np.ndarray]  # float32 [n]
    scenario: np.ndarray  # int64 [n]
    user: np.ndarray  # int64 [n]
    weights: np.ndarray  # float32 [n]
    row_id: np.ndarray  # int64 [n]
    groups: Dict[str, np.ndarray] = field(default_factory=dict)
    oracle: Dict[str, np.ndarray] = field(default_factory=dict)
    time: Optional[np.ndarray] = None  # float64 [n]
    history: Dict[str, np.ndarray] = field(default_factory=dict)  # float32 [n] each (recsys.data.history)
    extras: Dict[str, np.ndarray] = field(default_factory=dict)  # float32 [n], side columns joined by row id
    user_key: Optional[np.ndarray] = None  # int64 [n], raw-user keys (see Batch.user_key)
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
        return Columns(
            dense=self.dense[idx],
            sparse=sparse,
            packed=matrix,
            packed_names=self.packed_names if matrix is not None else (),
            labels={k: v[idx] for k, v in self.labels.items()},
            scenario=self.scenario[idx],
            user=self.user[idx],
            weights=self.weights[idx],
            row_id=self.row_id[idx],
            groups={k: v[idx] for k, v in self.groups.items()},
            oracle={k: v[idx] for k, v in self.oracle.items()},
            time=None if self.time is None else self.time[idx],
            history={k: v[idx] for k, v in self.history.items()},
            extras={k: v[idx] for k, v in self.extras.items()},
            user_key=None if self.user_key is None else self.user_key[idx],
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

        def cat(key, sub=None):
            arrays = [getattr(p, key) if sub is None else getattr(p, key)[sub] for p in parts]
            if isinstance(arrays[0], Ragged):
                return Ragged.concat(arrays)
            return np.concatenate(arrays)

        if all(p.packed is not None and p.packed_names == first.packed_names for p in parts):
            matrix = np.concatenate([p.packed for p in parts])
            sparse = {k: (Ragged.concat([p.sparse[k] for p in parts]) if isinstance(v, Ragged) else None)
                      for k, v in first.sparse.items()}
            sparse = _with_views(sparse, matrix, first.packed_names)
        else:
            matrix, sparse = None, {k: cat("sparse", k) for k in first.sparse}
        return Columns(
            dense=cat("dense"),
            sparse=sparse,
            packed=matrix,
            packed_names=first.packed_names if matrix is not None else (),
            labels={k: cat("labels", k) for k in first.labels},
            scenario=cat("scenario"),
            user=cat("user"),
            weights=cat("weights"),
            row_id=cat("row_id"),
            groups={k: cat("groups", k) for k in first.groups},
            oracle={k: cat("oracle", k) for k in first.oracle},
            time=None if first.time is None else cat("time"),
            history={k: cat("history", k) for k in first.history},
            extras={k: cat("extras", k) for k in first.extras},
            user_key=None if first.user_key is None else cat("user_key"),
        )

    def nbytes(self) -> int:
        total = 0
        for f in fields(self):
            if f.name in ("packed", "packed_names"):
                continue  # ``sparse`` already counts the packed ids through its views
            v = getattr(self, f.name)
            items = v.values() if isinstance(v, dict) else [v]
            for a in items:
                if isinstance(a, Ragged):
                    total += a.values.nbytes + a.offsets.nbytes
                elif a is not None:
                    total += a.nbytes
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
        return Batch(
            dense=torch.from_numpy(np.ascontiguousarray(self.dense)),
            sparse=kjt,
            labels={k: torch.from_numpy(v) for k, v in self.labels.items()},
            scenario=torch.from_numpy(self.scenario),
            user=torch.from_numpy(self.user),
            weights=torch.from_numpy(self.weights),
            row_id=torch.from_numpy(self.row_id),
            groups={k: torch.from_numpy(v) for k, v in self.groups.items()},
            oracle={k: torch.from_numpy(v) for k, v in self.oracle.items()},
            time=torch.from_numpy(self.time) if self.time is not None else torch.empty(0, dtype=torch.float64),
            history={k: torch.from_numpy(v) for k, v in self.history.items()},
            extras={k: torch.from_numpy(v) for k, v in self.extras.items()},
            user_key=(torch.from_numpy(self.user_key) if self.user_key is not None
                      else torch.empty(0, dtype=torch.int64)),
        )


def _with_views(sparse: Dict[str, Optional[SparseColumn]], matrix: Optional[np.ndarray],
                names: Sequence[str]) -> Dict[str, SparseColumn]:
    """``sparse`` with the packed features replaced by column views of ``matrix`` (order kept)."""
    position = {k: j for j, k in enumerate(names)}
    return {k: (matrix[:, position[k]] if k in position else v) for k, v in sparse.items()}

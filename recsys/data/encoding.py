"""Vectorised encoders from raw column values to model inputs.

* :class:`SparseEncoder`: raw ids -> table rows under an explicit policy (``vocab``, ``hash``, ``identity``);
  the result is always in ``[0, num_embeddings)``, so no table is ever indexed out of range.
* :class:`DenseEncoder`: numbers -> float32 with NaN policy and a transform fitted on the training split.
* :class:`CategoryEncoder`: closed sets (scenario, evaluation groups) -> ``0..n-1``; anything undeclared is
  an error.

All work on pyarrow arrays with pyarrow/numpy kernels; no Python loop runs per row. Errors name the file,
column and 1-based data row.
"""

import json
import os
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recsys.data.columns import Ragged, SparseColumn
from recsys.data.spec import CategorySpec, DenseSpec, SparseSpec
from recsys.errors import DataError

_HASH_KEY = "recsys-hash-v1\0\0"  # 16 bytes, fixed so hashed ids are stable across runs and machines


class Where:
    """Location of a chunk for error messages: file and the 0-based row of the chunk's first row."""

    def __init__(self, file: str, first_row: int) -> None:
        self.file = file
        self.first_row = first_row

    def error(self, message: str, column: Optional[str] = None, index: Optional[int] = None) -> DataError:
        row = None if index is None else self.first_row + int(index) + 1
        return DataError(message, file=self.file, column=column, row=row)


def _to_numpy(arr: pa.Array) -> np.ndarray:
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    return arr.to_numpy(zero_copy_only=False)


def _first(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def to_float(arr: pa.Array, where: Where, column: str) -> np.ndarray:
    """Numbers (or numeric strings) as float64 with NaN for nulls; unparsable text names its row."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if pa.types.is_boolean(arr.type) or pa.types.is_integer(arr.type) or pa.types.is_floating(arr.type):
        return _to_numpy(pc.cast(arr, pa.float64())).astype(np.float64, copy=False)
    if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
        try:
            return _to_numpy(pc.cast(arr, pa.float64()))
        except pa.ArrowInvalid:
            # slow path, only for columns with something unparsable: blanks count as missing (NaN, then the
            # caller's missing-value policy applies); anything else names its row
            raw = pd.Series(_to_numpy(arr), dtype=object)
            parsed = pd.to_numeric(raw.str.strip(), errors="coerce")
            blank = (raw.isna() | raw.astype(str).str.strip().eq("")).to_numpy()
            bad = parsed.isna().to_numpy() & ~blank
            if bad.any():
                i = _first(bad)
                raise where.error(f"expected a number, got {raw.iloc[i]!r}", column, i) from None
            return parsed.to_numpy(dtype=np.float64, na_value=np.nan)
    raise where.error(f"expected numbers, the column has type {arr.type}", column)


def to_int(arr: pa.Array, where: Where, column: str) -> np.ndarray:
    """Integers (or integer strings) as int64; nulls, fractions and text name their row."""
    values = to_float(arr, where, column) if not pa.types.is_integer(arr.type) else None
    if values is None:
        a = arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr
        if a.null_count:
            raise where.error("missing id", column, _first(_to_numpy(a.is_null())))
        return _to_numpy(pc.cast(a, pa.int64()))
    if np.isnan(values).any():
        raise where.error("missing id", column, _first(np.isnan(values)))
    bad = ~np.isfinite(values) | (values != np.round(values))
    if bad.any():
        i = _first(bad)
        raise where.error(f"expected an integer id, got {values[i]!r}", column, i)
    return values.astype(np.int64)


def _split_multi_hot(arr: pa.Array, separator: str) -> Tuple[pa.Array, np.ndarray]:
    """Flat tokens and row offsets of a multi-hot column (list-typed, or text joined by ``separator``)."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
        arr = pc.split_pattern(arr, separator)
    elif not (pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type)):
        # a plain scalar column used as multi-hot: one id per row
        return arr, np.arange(len(arr) + 1, dtype=np.int64)
    lengths = _to_numpy(pc.fill_null(pc.list_value_length(arr), 0)).astype(np.int64)
    flat = pc.list_flatten(arr)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    if pa.types.is_string(flat.type) or pa.types.is_large_string(flat.type):
        keep = _to_numpy(pc.fill_null(pc.not_equal(pc.utf8_trim_whitespace(flat), ""), False)).astype(bool)
        if not keep.all():  # "" cells and doubled separators carry no id
            kept = np.zeros(len(keep) + 1, dtype=np.int64)
            np.cumsum(keep, out=kept[1:])
            offsets = kept[offsets]
            flat = pc.filter(flat, pa.array(keep))
    return flat, offsets


class SparseEncoder:
    """Raw ids of one feature -> rows of its table.

    Args:
        spec: the feature's spec (policy, table size, multi-hot separator, ...).
        is_csv: the source is CSV, so ``dtype: auto`` means text for ``vocab``/``hash``.

    Vocabulary order is by frequency (descending), then by value, so hot ids get low rows; row 0 is the
    out-of-vocabulary bucket.
    """

    def __init__(self, spec: SparseSpec) -> None:
        self.spec = spec
        self._counts: Optional[pd.Series] = None
        self.vocab: Optional[pa.Array] = None
        self._size: Optional[int] = spec.num_embeddings if spec.encoding != "vocab" else None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def column(self) -> str:
        return self.spec.source_column

    @property
    def num_embeddings(self) -> int:
        if self._size is None:
            raise RuntimeError(f"encoder '{self.name}' is not fitted")
        return self._size

    @property
    def needs_fit(self) -> bool:
        return self.spec.encoding == "vocab"

    def _normalise(self, flat: pa.Array, where: Where) -> pa.Array:
        """Apply the declared dtype so the same id reads the same from CSV text and Parquet ints."""
        want = self.spec.dtype
        if self.spec.encoding == "identity" or want == "int":
            return pa.array(to_int(flat, where, self.column))
        if want == "string" and not pa.types.is_string(flat.type):
            return pc.cast(flat, pa.string())
        if pa.types.is_floating(flat.type):  # ids written as floats: use the integer value
            return pa.array(to_int(flat, where, self.column))
        return flat

    def _tokens(self, arr: pa.Array, where: Where) -> Tuple[pa.Array, Optional[np.ndarray]]:
        if self.spec.multi_hot:
            flat, offsets = _split_multi_hot(arr, self.spec.separator)
            try:
                return self._normalise(flat, where), offsets
            except DataError as e:
                # report the row that holds the bad token, not the token's position
                bad_token = int(e.row) - where.first_row - 1 if e.row is not None else 0
                row = int(np.searchsorted(offsets, bad_token, side="right")) - 1
                raise where.error(f"multi-hot cell does not parse: {str(e).split(': ', 1)[-1]}", self.column, row)
        if isinstance(arr, pa.ChunkedArray):
            arr = arr.combine_chunks()
        if pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type):
            raise where.error("a list column needs 'multi_hot: true' in the spec", self.column)
        return self._normalise(arr, where), None

    def normalised(self, arr: pa.Array, where: Where) -> pa.Array:
        """The raw values of a single-hot column with the declared dtype applied (no vocabulary)."""
        return self._tokens(arr, where)[0]

    # --- fitting -----------------------------------------------------------------------------------------
    def fit(self, arr: pa.Array, where: Where, mask: Optional[np.ndarray] = None) -> None:
        """Validate every row of ``arr``; count the values of rows where ``mask`` holds (all when None)."""
        if not self.needs_fit:
            self.transform(arr, where)  # validates (ids in range under 'identity')
            return
        flat, offsets = self._tokens(arr, where)
        if mask is not None:
            token_mask = mask if offsets is None else np.repeat(mask, np.diff(offsets))
            flat = flat.filter(pa.array(token_mask))
        counts = pc.value_counts(pc.drop_null(flat))
        series = pd.Series(
            _to_numpy(counts.field("counts")), index=_to_numpy(counts.field("values")), dtype=np.int64
        )
        self._counts = series if self._counts is None else self._counts.add(series, fill_value=0)

    def finalize(self) -> None:
        if not self.needs_fit:
            return
        counts = self._counts if self._counts is not None else pd.Series(dtype=np.int64)
        counts = counts[counts >= self.spec.min_count]
        order = pd.DataFrame({"v": counts.index, "c": counts.to_numpy()})
        order = order.sort_values(["c", "v"], ascending=[False, True], kind="stable")
        values = order["v"].to_numpy()
        if self.spec.num_embeddings is not None:
            values = values[: max(self.spec.num_embeddings - 1, 0)]
        self.vocab = pa.array(values) if len(values) else pa.array([], type=pa.string())
        self._size = self.spec.num_embeddings or (len(values) + 1)
        self._counts = None

    # --- transform ---------------------------------------------------------------------------------------
    def transform(self, arr: pa.Array, where: Where) -> SparseColumn:
        flat, offsets = self._tokens(arr, where)
        ids = self._encode_flat(flat, where, offsets)
        return ids if offsets is None else Ragged(ids, offsets)

    def _row_of(self, token_index: int, offsets: Optional[np.ndarray]) -> int:
        if offsets is None:
            return token_index
        return int(np.searchsorted(offsets, token_index, side="right")) - 1

    def _encode_flat(self, flat: pa.Array, where: Where, offsets: Optional[np.ndarray]) -> np.ndarray:
        policy = self.spec.encoding
        if policy == "identity":
            ids = flat.to_numpy(zero_copy_only=False) if isinstance(flat, pa.Array) else np.asarray(flat)
            ids = ids.astype(np.int64, copy=False)
            bad = (ids < 0) | (ids >= self.num_embeddings)
            if bad.any():
                i = _first(bad)
                raise where.error(
                    f"id {ids[i]} is outside [0, {self.num_embeddings}) under the 'identity' policy",
                    self.column, self._row_of(i, offsets),
                )
            return ids
        if policy == "hash":
            return self._hash(flat)
        if self.vocab is None:
            raise RuntimeError(f"encoder '{self.name}' is not fitted")
        vocab = self.vocab
        if len(vocab) and vocab.type != flat.type:
            try:
                flat = pc.cast(flat, vocab.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                flat = pc.cast(flat, pa.string())
                vocab = pc.cast(vocab, pa.string())
        index = pc.index_in(flat, value_set=vocab) if len(vocab) else pa.nulls(len(flat), pa.int32())
        found = _to_numpy(pc.fill_null(index, -1)).astype(np.int64)
        if self.spec.oov == "error":
            missing = (found < 0) & _to_numpy(flat.is_valid())
            if missing.any():
                i = _first(missing)
                raise where.error(
                    f"value {flat[i].as_py()!r} is not in the fitted vocabulary (oov: error)",
                    self.column, self._row_of(i, offsets),
                )
        return found + 1  # row 0 is the OOV bucket

    def _hash(self, flat: pa.Array) -> np.ndarray:
        """Hash each value's text (so an id reads alike from CSV text and Parquet integers); every distinct
        value is hashed once and gathered. Nulls go to row 0."""
        n = self.num_embeddings
        if isinstance(flat, pa.ChunkedArray):
            flat = flat.combine_chunks()
        enc = pc.dictionary_encode(pc.cast(flat, pa.string()))
        uniques = _to_numpy(enc.dictionary).astype(object)
        hashed = (pd.util.hash_array(uniques, hash_key=_HASH_KEY) % np.uint64(n)).astype(np.int64)
        idx = _to_numpy(pc.fill_null(enc.indices, -1)).astype(np.int64)
        return np.where(idx >= 0, hashed[np.maximum(idx, 0)], 0)

    # --- state -------------------------------------------------------------------------------------------
    def state(self) -> Dict[str, Any]:
        return {"policy": self.spec.encoding, "num_embeddings": self._size}

    def load_state(self, state: Dict[str, Any], vocab: Optional[pa.Array]) -> None:
        self._size = int(state["num_embeddings"])
        self.vocab = vocab


class DenseEncoder:
    """A numeric column -> float32 with the spec's NaN policy and transform (statistics from training rows)."""

    def __init__(self, spec: DenseSpec) -> None:
        self.spec = spec
        self._n = 0
        self._sum = 0.0
        self._sumsq = 0.0
        self.mean = 0.0
        self.std = 1.0

    @property
    def column(self) -> str:
        return self.spec.source_column

    def _pre(self, arr: pa.Array, where: Where) -> np.ndarray:
        x = to_float(arr, where, self.column)
        bad = ~np.isfinite(x)
        if bad.any():
            if self.spec.fill is None:
                i = _first(bad)
                what = "missing value" if np.isnan(x[i]) else f"non-finite value {x[i]}"
                raise where.error(f"{what} in a dense feature (set 'fill' in the spec to replace it)", self.column, i)
            x = np.where(bad, self.spec.fill, x)
        if self.spec.transform.startswith("log1p"):
            neg = x <= -1
            if neg.any():
                i = _first(neg)
                raise where.error(f"log1p transform needs values > -1, got {x[i]}", self.column, i)
            x = np.log1p(x)
        return x

    def fit(self, arr: pa.Array, where: Where, mask: Optional[np.ndarray] = None) -> None:
        """Validate every row; accumulate statistics of rows where ``mask`` holds (all when None)."""
        x = self._pre(arr, where)
        if mask is not None:
            x = x[mask]
        self._n += len(x)
        self._sum += float(x.sum())
        self._sumsq += float(np.square(x).sum())

    def finalize(self) -> None:
        if self.spec.transform.endswith("standardize") and self._n > 0:
            self.mean = self._sum / self._n
            var = max(self._sumsq / self._n - self.mean**2, 0.0)
            self.std = float(np.sqrt(var)) or 1.0

    def transform(self, arr: pa.Array, where: Where) -> np.ndarray:
        x = self._pre(arr, where)
        if self.spec.transform.endswith("standardize"):
            x = (x - self.mean) / self.std
        return x.astype(np.float32)

    def state(self) -> Dict[str, Any]:
        return {"mean": self.mean, "std": self.std}

    def load_state(self, state: Dict[str, Any]) -> None:
        self.mean, self.std = float(state["mean"]), float(state["std"])


class CategoryEncoder:
    """A closed categorical column -> indices ``0..n-1``; undeclared values are an error."""

    def __init__(self, spec: CategorySpec, what: str) -> None:
        self.spec = spec
        self.what = what
        self._values = pa.array(spec.values) if spec.values is not None else None

    @property
    def size(self) -> int:
        return self.spec.size()

    def transform(self, arr: pa.Array, where: Where) -> np.ndarray:
        col = self.spec.column
        if isinstance(arr, pa.ChunkedArray):
            arr = arr.combine_chunks()
        if self._values is None:
            idx = to_int(arr, where, col)
            bad = (idx < 0) | (idx >= self.size)
            if bad.any():
                i = _first(bad)
                raise where.error(f"{self.what} {idx[i]} is outside [0, {self.size}) declared in the spec", col, i)
            return idx
        values = self._values
        if values.type != arr.type:
            try:
                arr = pc.cast(arr, values.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                arr, values = pc.cast(arr, pa.string()), pc.cast(values, pa.string())
        idx = _to_numpy(pc.fill_null(pc.index_in(arr, value_set=values), -1)).astype(np.int64)
        if (idx < 0).any():
            i = _first(idx < 0)
            raise where.error(
                f"{self.what} value {arr[i].as_py()!r} is not declared in the spec (declared: {self.spec.values})",
                col, i,
            )
        return idx


def save_encoders(path: str, sparse: List[SparseEncoder], dense: List[DenseEncoder], extra: Dict[str, Any]) -> None:
    """Write fitted encoder state to folder ``path`` (JSON plus one Parquet file per vocabulary), atomically."""
    tmp = path + ".tmp"
    os.makedirs(tmp, exist_ok=True)
    for enc in sparse:
        if enc.vocab is not None:
            pq.write_table(pa.table({"value": enc.vocab}), os.path.join(tmp, f"vocab.{enc.name}.parquet"))
    state = {
        "sparse": {e.name: e.state() for e in sparse},
        "dense": {e.spec.name: e.state() for e in dense},
        **extra,
    }
    with open(os.path.join(tmp, "encoders.json"), "w") as f:
        json.dump(state, f, indent=1, default=float)
    if os.path.isdir(path):
        import shutil

        shutil.rmtree(path)
    os.replace(tmp, path)


def load_encoders(path: str, sparse: List[SparseEncoder], dense: List[DenseEncoder]) -> Dict[str, Any]:
    """Restore state written by :func:`save_encoders`; returns the extra entries."""
    file = os.path.join(path, "encoders.json")
    try:
        with open(file, encoding="utf-8") as f:
            state = json.load(f)
        if not isinstance(state, dict) or not isinstance(state.get("sparse"), dict) or not isinstance(
                state.get("dense"), dict):
            raise ValueError("no 'sparse'/'dense' sections")
    except FileNotFoundError:
        raise DataError("no fitted encoders here (train first, or pass the run folder)", file=file) from None
    except (ValueError, UnicodeDecodeError) as e:
        raise DataError(f"corrupt fitted encoders ({str(e).splitlines()[0][:120]}); train the run again",
                        file=file) from None
    for enc in sparse:
        if enc.name not in state["sparse"]:
            raise DataError(f"sparse feature '{enc.name}' was not fitted in this run", file=file)
        vfile = os.path.join(path, f"vocab.{enc.name}.parquet")
        vocab = None
        if enc.needs_fit:
            try:
                vocab = pq.read_table(vfile).column("value").combine_chunks()
            except FileNotFoundError:
                raise DataError(f"the vocabulary of sparse feature '{enc.name}' is missing (deleted?); train the "
                                "run again", file=vfile) from None
            except (pa.ArrowInvalid, KeyError, OSError) as e:
                raise DataError(f"corrupt vocabulary ({str(e).splitlines()[0][:120]})", file=vfile) from None
        try:
            enc.load_state(state["sparse"][enc.name], vocab)
        except (KeyError, TypeError, ValueError):
            raise DataError(f"corrupt state of sparse feature '{enc.name}'", file=file) from None
        if enc.needs_fit and len(vocab) >= enc.num_embeddings:
            raise DataError(f"the vocabulary of '{enc.name}' has {len(vocab)} values for a table of "
                            f"{enc.num_embeddings} rows", file=vfile)
    for enc in dense:
        try:
            enc.load_state(state["dense"][enc.spec.name])
        except (KeyError, TypeError, ValueError):
            raise DataError(f"corrupt state of dense feature '{enc.spec.name}'", file=file) from None
    return {k: v for k, v in state.items() if k not in ("sparse", "dense")}

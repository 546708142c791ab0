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
import threading
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recsys.data.columns import Ragged, SparseColumn
from recsys.data.spec import FLOAT32_MAX, CategorySpec, DenseSpec, SparseSpec
from recsys.errors import DataError

_HASH_KEY = "recsys-hash-v1\0\0"  # 16 bytes, fixed so hashed ids are stable across runs and machines


class Where:
    """Location of a chunk for error messages: file, the 0-based file row of the chunk's first row and, for a
    chunk some of whose rows were dropped (other scenarios or splits), the positions of the rows it kept."""

    def __init__(self, file: str, first_row: int, kept: Optional[np.ndarray] = None) -> None:
        self.file = file
        self.first_row = first_row
        self.kept = kept

    def row(self, index: int) -> int:
        """The 1-based data row of the file that holds the chunk's row ``index``."""
        return self.first_row + int(index if self.kept is None else self.kept[index]) + 1

    def at(self, index: int) -> "Where":
        """A one-row chunk: its row ``index``."""
        return Where(self.file, self.row(index) - 1)

    def error(self, message: str, column: Optional[str] = None, index: Optional[int] = None) -> DataError:
        return DataError(message, file=self.file, column=column, row=None if index is None else self.row(index))


INT64_MAX = int(np.iinfo(np.int64).max)
FLOAT_EXACT_INT = 2**53  # every integer up to here is exact in float64; beyond, ids written as floats are not
_INT_TEXT = r"^[+-]?[0-9]+$"
_SECONDS_PER_UNIT = {"s": 1.0, "ms": 1e3, "us": 1e6, "ns": 1e9}


def _to_numpy(arr: pa.Array) -> np.ndarray:
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    return arr.to_numpy(zero_copy_only=False)


def _first(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def _mask(arr: pa.Array, null: bool = False) -> np.ndarray:
    """A boolean pyarrow array as numpy (nulls read as ``null``)."""
    return _to_numpy(pc.fill_null(arr, null)).astype(bool)


def _raise_first(where: Where, column: str, checks: Sequence[Tuple[np.ndarray, Callable[[int], str]]]) -> None:
    """Raise the message of the earliest row any of ``checks`` (mask, message of row) flags."""
    flagged = [(_first(mask), message) for mask, message in checks if mask.any()]
    if flagged:
        i, message = min(flagged, key=lambda f: f[0])
        raise where.error(message(i), column, i)


def plain(arr: Union[pa.Array, pa.ChunkedArray]) -> pa.Array:
    """One contiguous array with dictionary encoding and view layouts undone (pandas categoricals and Polars
    string views read like plain values)."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    if pa.types.is_string_view(arr.type):
        arr = pc.cast(arr, pa.string())
    elif pa.types.is_binary_view(arr.type):
        arr = pc.cast(arr, pa.binary())
    return arr


def _is_text(arr: pa.Array) -> bool:
    return pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)


def refuse_nested(arr: pa.Array, where: Where, column: str, what: str = "value") -> None:
    """A list, struct or map where one value per row is expected names the first row that holds one."""
    if pa.types.is_nested(arr.type):
        valid = _mask(arr.is_valid())
        i = _first(valid) if valid.any() else 0
        shown = repr(arr[i].as_py()) if len(arr) else ""
        raise where.error(
            f"nested value {shown[:60]} (type {arr.type}) where one {what} per row is expected",
            column,
            i if len(arr) else None,
        )


def to_float(arr: pa.Array, where: Where, column: str) -> np.ndarray:
    """Numbers (or numeric strings) as float64 with NaN for nulls; unparsable text names its row."""
    arr = plain(arr)
    refuse_nested(arr, where, column, "number")
    if pa.types.is_null(arr.type):
        return np.full(len(arr), np.nan)
    if (
        pa.types.is_boolean(arr.type)
        or pa.types.is_integer(arr.type)
        or pa.types.is_floating(arr.type)
        or pa.types.is_decimal(arr.type)
    ):
        return _to_numpy(pc.cast(arr, pa.float64())).astype(np.float64, copy=False)
    if _is_text(arr):
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


def to_seconds(arr: pa.Array, where: Where, column: str) -> np.ndarray:
    """Timestamps as float64 seconds: numbers as they are, Parquet timestamp/date columns and ISO 8601 text
    (``2024-05-01T12:00:00``) since the Unix epoch; nulls are NaN."""
    arr = plain(arr)
    if pa.types.is_timestamp(arr.type):
        unit = _SECONDS_PER_UNIT[arr.type.unit]
        return _to_numpy(pc.cast(pc.cast(arr, pa.int64()), pa.float64())) / unit
    if pa.types.is_date(arr.type):
        return to_seconds(pc.cast(arr, pa.timestamp("s")), where, column)
    if _is_text(arr):
        try:
            return _to_numpy(pc.cast(arr, pa.float64()))
        except pa.ArrowInvalid:
            for moment in (pa.timestamp("us"), pa.timestamp("us", "UTC")):  # naive, or with a UTC offset
                try:
                    return to_seconds(pc.cast(arr, moment), where, column)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                    pass  # neither numbers nor ISO 8601 throughout: name the first cell that is no number
    return to_float(arr, where, column)


def to_float32(x: np.ndarray, where: Where, column: str, what: str, hint: str = "") -> np.ndarray:
    """``x`` (float64) as float32, the precision models train in; a finite value beyond float32's range names
    its row instead of turning into inf (and a NaN loss steps later)."""
    with np.errstate(over="ignore"):
        out = x.astype(np.float32)
    bad = ~np.isfinite(out) & np.isfinite(x)
    if bad.any():
        i = _first(bad)
        raise where.error(f"{what} {x[i]:g} overflows float32 (largest {FLOAT32_MAX:.4g}){hint}", column, i)
    return out


def _refuse_nulls(arr: pa.Array, where: Where, column: str) -> None:
    if arr.null_count:
        raise where.error("missing id", column, _first(_mask(arr.is_null())))


def _float_checks(x: np.ndarray, raw: Callable[[int], Any]) -> List[Tuple[np.ndarray, Callable[[int], str]]]:
    """Checks of integer ids held as floats: missing, fractional and (beyond 2^53) inexact values."""
    missing = np.isnan(x)
    fractional = ~missing & (~np.isfinite(x) | (x != np.round(x)))
    inexact = ~missing & ~fractional & (np.abs(x) > FLOAT_EXACT_INT)
    return [
        (missing, lambda i: "missing id"),
        (fractional, lambda i: f"expected an integer id, got {raw(i)!r}"),
        (
            inexact,
            lambda i: (
                f"id {raw(i)!r} is written as a floating-point number beyond 2^53, where integers "
                "are not exact (write ids as integers or text)"
            ),
        ),
    ]


def _text_ids(arr: pa.Array, where: Where, column: str) -> Tuple[np.ndarray, np.ndarray, pa.Array]:
    """Integer ids from text, exactly and vectorised (for text a plain cast refused; see :func:`_int_ids`).
    Surrounding blanks, a ``+`` sign, leading zeros and a ``.0`` suffix are accepted; an exponent or decimal
    form (``1e3``) goes through float64 and must be exact there."""
    text = pc.utf8_trim_whitespace(arr)
    blank = _mask(pc.equal(text, ""), null=True)
    text = pc.replace_substring_regex(text, r"^([+-]?[0-9]+)\.0*$", r"\1")
    integral = _mask(pc.match_substring_regex(text, _INT_TEXT))
    canon = pc.replace_substring_regex(pc.replace_substring_regex(text, r"^\+", ""), r"^(-?)0+([0-9])", r"\1\2")
    negative = _mask(pc.starts_with(canon, "-"))
    magnitude = pc.utf8_ltrim(canon, "-")
    digits = _to_numpy(pc.fill_null(pc.utf8_length(magnitude), 0))
    limit = pa.array(np.where(negative, str(INT64_MAX + 1), str(INT64_MAX)))
    wide = integral & ((digits > 19) | ((digits == 19) & _mask(pc.greater(magnitude, limit))))
    values = np.array(_to_numpy(pc.cast(pc.if_else(pa.array(integral & ~wide), canon, "0"), pa.int64())))
    other = ~blank & ~integral
    floats = np.zeros(len(arr))
    if other.any():  # usually no cell: only these go through pandas' parser
        floats[other] = pd.to_numeric(
            pd.Series(_to_numpy(text.filter(pa.array(other))), dtype=object), errors="coerce"
        ).to_numpy(dtype=np.float64, na_value=np.nan)
    unparsable = other & np.isnan(floats)
    raw = lambda i: arr[i].as_py()  # noqa: E731
    _raise_first(
        where,
        column,
        [
            (blank, lambda i: "missing id"),
            (unparsable, lambda i: f"expected an integer id, got {raw(i)!r}"),
            *_float_checks(np.where(unparsable, 0.0, floats), raw),
        ],
    )
    values[other] = floats[other].astype(np.int64)
    return values, wide, canon


def _int_ids(arr: pa.Array, where: Where, column: str) -> Tuple[np.ndarray, Optional[np.ndarray], Optional[pa.Array]]:
    """Integer ids exactly, never through float64 (64-bit hashes stay distinct): ``(values, wide, text)`` with
    int64 ``values`` (0 where an id does not fit), ``wide`` marking ids beyond int64 (None when there are none:
    Parquet uint64, long digit strings) and ``text`` the canonical decimal text of every id where ``wide`` is
    given. Missing ids, fractions, text and ids stored as floats beyond 2^53 name their row."""
    arr = plain(arr)
    refuse_nested(arr, where, column, "id")
    if pa.types.is_null(arr.type):
        raise where.error("missing id", column, 0 if len(arr) else None)
    if pa.types.is_boolean(arr.type):
        arr = pc.cast(arr, pa.int8())
    if pa.types.is_decimal(arr.type):
        arr = pc.cast(arr, pa.string())
    if pa.types.is_integer(arr.type):
        _refuse_nulls(arr, where, column)
        if pa.types.is_uint64(arr.type):
            wide = _mask(pc.greater(arr, pa.scalar(INT64_MAX, pa.uint64())))
            if wide.any():
                values = _to_numpy(pc.cast(pc.if_else(pa.array(wide), pa.scalar(0, pa.uint64()), arr), pa.int64()))
                return values, wide, pc.cast(arr, pa.string())
        return _to_numpy(pc.cast(arr, pa.int64())), None, None
    if pa.types.is_floating(arr.type):
        x = _to_numpy(pc.cast(arr, pa.float64())).astype(np.float64)
        _raise_first(where, column, _float_checks(x, lambda i: float(x[i])))
        return x.astype(np.int64), None, None
    if _is_text(arr):
        try:
            ints = pc.cast(arr, pa.int64())  # the fast path: plain digits, exact
        except pa.ArrowInvalid:
            return _text_ids(arr, where, column)
        _refuse_nulls(ints, where, column)
        return _to_numpy(ints), None, None
    raise where.error(f"expected integer ids, the column has type {arr.type}", column)


def to_int(arr: pa.Array, where: Where, column: str, wide_hint: str = "") -> np.ndarray:
    """Integer ids (or integer text) as exact int64; missing ids, fractions, text and ids beyond int64 name their
    row (``wide_hint`` is added to the last)."""
    values, wide, text = _int_ids(arr, where, column)
    if wide is not None and text is not None and wide.any():
        i = _first(wide)
        raise where.error(f"id {text[i].as_py()} does not fit a signed 64-bit integer{wide_hint}", column, i)
    return values


def int_text(arr: pa.Array, where: Where, column: str) -> pa.Array:
    """The canonical decimal text of integer ids (``007`` and 7 alike), exact beyond int64 too: what the
    ``hash`` policy hashes, so an id hashes alike from CSV text and from Parquet int64 or uint64."""
    values, wide, text = _int_ids(arr, where, column)
    out = pc.cast(pa.array(values), pa.string())
    if wide is not None and wide.any():
        out = pc.if_else(pa.array(wide), text, out)
    return out


def key_text(arr: pa.Array, where: Where, column: str) -> pa.Array:
    """Join keys as text that matches across file types: integers (and integral floats) as their canonical
    decimal text, exactly; text as written. A missing key names its row."""
    arr = plain(arr)
    refuse_nested(arr, where, column, "key")
    if arr.null_count:
        raise where.error("missing join key", column, _first(_mask(arr.is_null())))
    if any(f(arr.type) for f in (pa.types.is_integer, pa.types.is_floating, pa.types.is_decimal)):
        return int_text(arr, where, column)
    return arr if pa.types.is_string(arr.type) else pc.cast(arr, pa.string())


def _split_multi_hot(arr: pa.Array, separator: str) -> Tuple[pa.Array, np.ndarray]:
    """Flat tokens and row offsets of a multi-hot column (list-typed, or text joined by ``separator``)."""
    arr = plain(arr)
    if _is_text(arr):
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


class VocabIndex:
    """A fitted vocabulary's hash index, built once: the position of each value in it, vectorised.

    ``pc.index_in(value_set=vocab)`` hashes the whole vocabulary again on every call (seconds per chunk at 10^7
    ids); this keeps one pandas hash engine per vocabulary (integer ids probe it directly, text probes it once per
    distinct value of a chunk), so a chunk costs a probe per value.

    Args:
        vocab: the vocabulary (int64 or text), distinct values in row order (row ``i + 1`` holds ``vocab[i]``).

    Example::

        index = VocabIndex(pa.array([30, 10, 20]))
        index.positions(pa.array([10, 99, 30]))    # array([ 1, -1,  0])
    """

    def __init__(self, vocab: pa.Array) -> None:
        self.vocab = vocab
        self._engines: Dict[bool, pd.Index] = {}  # integer engine (False) and text engine (True), built on demand
        self._lock = threading.Lock()  # streams encode in loader threads: build each engine once

    def _engine(self, text: bool) -> pd.Index:
        with self._lock:
            if text not in self._engines:
                if text:
                    values = self.vocab if _is_text(self.vocab) else pc.cast(self.vocab, pa.string())
                    engine = pd.Index(pd.array(values, dtype="string[pyarrow]"))
                else:
                    engine = pd.Index(_to_numpy(self.vocab).astype(np.int64, copy=False))
                engine.get_indexer(engine[:1])  # builds the hash table now, not in the first chunk's timing
                self._engines[text] = engine
            return self._engines[text]

    def positions(self, values: pa.Array) -> np.ndarray:
        """int64 positions of ``values`` in the vocabulary, -1 where absent (nulls too). Values of another type
        than the vocabulary's are cast to it, or both compare as text when that cast fails."""
        if isinstance(values, pa.ChunkedArray):
            values = values.combine_chunks()
        if not len(self.vocab):
            return np.full(len(values), -1, dtype=np.int64)
        integer = pa.types.is_integer(self.vocab.type)
        if values.type != self.vocab.type:
            try:
                values = pc.cast(values, self.vocab.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                values, integer = pc.cast(values, pa.string()), False
        if integer and not values.null_count:
            return self._engine(False).get_indexer(_to_numpy(values)).astype(np.int64, copy=False)
        # text (and integers with nulls): probe each distinct value of the chunk once
        codes = pc.dictionary_encode(values if integer else pc.cast(values, pa.string()))
        uniques = codes.dictionary
        found = (
            self._engine(False).get_indexer(_to_numpy(uniques))
            if integer
            else self._engine(True).get_indexer(pd.array(uniques, dtype="string[pyarrow]"))
        )
        idx = _to_numpy(pc.fill_null(codes.indices, -1)).astype(np.int64)
        return np.where(idx >= 0, found.astype(np.int64)[np.maximum(idx, 0)], -1)


class SparseEncoder:
    """Raw ids of one feature -> rows of its table.

    Args:
        spec: the feature's spec (policy, table size, multi-hot separator, ``dtype``, ...).

    Ids keep their type exactly: integers become int64 without a float round trip (64-bit hashes stay
    distinct), text stays text. ``dtype: int`` reads integer text and Parquet integers alike (``"12"`` and 12 are
    one id), ``dtype: string`` reads both as text; under ``dtype: auto`` CSV cells are text and Parquet columns
    keep their type, and a vocabulary whose files disagree (integers in one, text in another) is an error
    naming the second file. Ids beyond int64 (Parquet uint64, long digit strings) are an error, except under
    ``hash``, which hashes their decimal text.

    Vocabulary order is by frequency (descending), then by value, so hot ids get low rows; row 0 is the
    out-of-vocabulary bucket.
    """

    def __init__(self, spec: SparseSpec) -> None:
        self.spec = spec
        self._counts: Optional[pd.Series] = None
        self.vocab: Optional[pa.Array] = None
        self._size: Optional[int] = spec.num_embeddings if spec.encoding != "vocab" else None
        self._kind: Optional[Tuple[str, str]] = None  # (type of the fitted ids, file it was first seen in)
        self._index: Optional[VocabIndex] = None  # of ``vocab``, built on first use
        self._index_lock = threading.Lock()

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
        """Apply the declared dtype so the same id reads the same from CSV text and Parquet ints: int64 (or,
        under ``hash``, canonical decimal text) for integer ids, ``string`` otherwise."""
        flat = plain(flat)
        refuse_nested(flat, where, self.column, "id")
        numeric = any(f(flat.type) for f in (pa.types.is_integer, pa.types.is_floating, pa.types.is_decimal))
        if self.spec.encoding == "identity" or self.spec.dtype == "int" or (self.spec.dtype == "auto" and numeric):
            if self.spec.encoding == "hash":
                return int_text(flat, where, self.column)
            hint = " (wider ids need 'encoding: hash')" if self.spec.encoding == "vocab" else ""
            return pa.array(to_int(flat, where, self.column, wide_hint=hint), pa.int64())
        return flat if pa.types.is_string(flat.type) else pc.cast(flat, pa.string())

    def _tokens(self, arr: pa.Array, where: Where) -> Tuple[pa.Array, Optional[np.ndarray]]:
        if self.spec.multi_hot:
            flat, offsets = _split_multi_hot(arr, self.spec.separator)
            try:
                return self._normalise(flat, Where(where.file, -1)), offsets  # "rows" are token positions
            except DataError as e:
                # report the row that holds the bad token, not the token's position
                bad_token = int(e.row) if e.row is not None else 0
                row = int(np.searchsorted(offsets, bad_token, side="right")) - 1
                raise where.error(
                    f"multi-hot cell does not parse: {str(e).split(': ', 1)[-1]}", self.column, row
                ) from None
        arr = plain(arr)
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
        self._check_kind(flat, where)
        if mask is not None:
            token_mask = mask if offsets is None else np.repeat(mask, np.diff(offsets))
            flat = flat.filter(pa.array(token_mask))
        counts = pc.value_counts(pc.drop_null(flat))
        series = pd.Series(_to_numpy(counts.field("counts")), index=_to_numpy(counts.field("values")), dtype=np.int64)
        self._counts = series if self._counts is None else self._counts.add(series, fill_value=0)

    def _check_kind(self, flat: pa.Array, where: Where) -> None:
        """Under ``dtype: auto`` a vocabulary holds one type: integer ids in one file and text in another would
        count ``12`` and ``"12"`` as two ids (or fail to sort), so the second file is refused."""
        kind = "integers" if pa.types.is_integer(flat.type) else "text"
        if self._kind is None:
            self._kind = (kind, where.file)
        elif self._kind[0] != kind:
            raise where.error(
                f"ids are {kind} here but {self._kind[0]} in {self._kind[1]}; set 'dtype: int' or 'dtype: string' "
                f"on sparse feature '{self.name}' so every file reads alike",
                self.column,
            )

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
        self._kind = None

    # --- transform ---------------------------------------------------------------------------------------
    def transform(self, arr: pa.Array, where: Where) -> SparseColumn:
        flat, offsets = self._tokens(arr, where)
        ids = self._encode_flat(flat, where, offsets)
        return ids if offsets is None else Ragged(ids, offsets)

    def _vocab_index(self) -> VocabIndex:
        """The index of the current ``vocab`` (rebuilt when ``vocab`` was replaced: fit, load)."""
        with self._index_lock:
            if self._index is None or self._index.vocab is not self.vocab:
                assert self.vocab is not None
                self._index = VocabIndex(self.vocab)
            return self._index

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
                    self.column,
                    self._row_of(i, offsets),
                )
            return ids
        if policy == "hash":
            return self._hash(flat)
        if self.vocab is None:
            raise RuntimeError(f"encoder '{self.name}' is not fitted")
        found = self._vocab_index().positions(flat)
        if self.spec.oov == "error":
            missing = (found < 0) & _to_numpy(flat.is_valid())
            if missing.any():
                i = _first(missing)
                raise where.error(
                    f"value {flat[i].as_py()!r} is not in the fitted vocabulary (oov: error)",
                    self.column,
                    self._row_of(i, offsets),
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
    """A numeric column -> float32 with the spec's NaN policy and transform (statistics from training rows).

    Every value must fit float32 after its ``log1p`` (a finite 1e39 would otherwise become inf and a NaN loss
    steps later); under ``standardize`` the fit pass also checks that the most extreme encoded value of any split
    stays finite once standardized with the training statistics. Mean and variance are merged chunk by chunk
    (Chan et al.), so a large offset (timestamps, prices in cents) does not cancel the variance away.
    """

    def __init__(self, spec: DenseSpec) -> None:
        self.spec = spec
        self._n = 0
        self._mean = 0.0
        self._m2 = 0.0  # sum of squared deviations from the running mean
        self._extremes: List[Tuple[float, Where, int]] = []  # (value, chunk, index) of the lowest and highest
        self.mean = 0.0
        self.std = 1.0

    @property
    def column(self) -> str:
        return self.spec.source_column

    @property
    def standardizes(self) -> bool:
        return self.spec.transform.endswith("standardize")

    def _pre(self, arr: pa.Array, where: Where) -> np.ndarray:
        x = to_float(arr, where, self.column)
        bad = ~np.isfinite(x)
        if bad.any():
            if self.spec.fill is None:
                i = _first(bad)
                what = "missing value" if np.isnan(x[i]) else f"non-finite value {x[i]}"
                raise where.error(f"{what} in a dense feature (set 'fill' in the spec to replace it)", self.column, i)
            x = np.where(bad, self.spec.fill, x)
        if self.spec.clip_min is not None:
            x = np.maximum(x, self.spec.clip_min)
        if self.spec.transform.startswith("log1p"):
            neg = x <= -1
            if neg.any():
                i = _first(neg)
                raise where.error(f"log1p transform needs values > -1, got {x[i]}", self.column, i)
            x = np.log1p(x)
        return x

    def _float32(self, x: np.ndarray, where: Where) -> np.ndarray:
        return to_float32(x, where, self.column, "dense value", hint="; rescale the column or use a 'log1p' transform")

    def fit(
        self, arr: pa.Array, where: Where, mask: Optional[np.ndarray] = None, encoded: Optional[np.ndarray] = None
    ) -> None:
        """Validate every row; accumulate statistics of rows where ``mask`` holds (all when None) and remember
        the extremes of rows where ``encoded`` holds (rows some split will encode; all when None)."""
        x = self._pre(arr, where)
        self._float32(x, where)
        if self.standardizes and len(x) and (encoded is None or encoded.any()):
            low = x if encoded is None else np.where(encoded, x, np.inf)
            high = x if encoded is None else np.where(encoded, x, -np.inf)
            for i in (int(low.argmin()), int(high.argmax())):
                self._extremes.append((float(x[i]), where, i))
            self._extremes = [min(self._extremes, key=lambda e: e[0]), max(self._extremes, key=lambda e: e[0])]
        if mask is not None:
            x = x[mask]
        if len(x):
            n, mean = len(x), float(x.mean())
            m2 = float(np.square(x - mean).sum())
            total = self._n + n
            delta = mean - self._mean
            self._m2 += m2 + delta * delta * self._n * n / total
            self._mean += delta * n / total
            self._n = total

    def finalize(self) -> None:
        if self.standardizes and self._n > 0:
            self.mean = self._mean
            self.std = float(np.sqrt(self._m2 / self._n)) or 1.0
            for value, where, i in self._extremes:
                self._standardized(np.array([value]), where.at(i))
        self._extremes = []

    def _standardized(self, x: np.ndarray, where: Where) -> np.ndarray:
        return to_float32(
            (x - self.mean) / self.std,
            where,
            self.column,
            "standardized value",
            hint=f" (training mean {self.mean:g}, std {self.std:g}); use a 'log1p' transform",
        )

    def transform(self, arr: pa.Array, where: Where) -> np.ndarray:
        x = self._pre(arr, where)
        return self._standardized(x, where) if self.standardizes else self._float32(x, where)

    def state(self) -> Dict[str, Any]:
        return {"mean": self.mean, "std": self.std}

    def load_state(self, state: Dict[str, Any]) -> None:
        self.mean, self.std = float(state["mean"]), float(state["std"])


class CategoryEncoder:
    """A closed categorical column -> indices ``0..n-1``; undeclared values are an error."""

    def __init__(self, spec: CategorySpec, what: str) -> None:
        self.spec = spec
        self.what = what
        self._values = _declared(spec.values) if spec.values is not None else None

    @property
    def size(self) -> int:
        return self.spec.size()

    def transform(self, arr: pa.Array, where: Where) -> np.ndarray:
        col = self.spec.column
        arr = plain(arr)
        refuse_nested(arr, where, col, f"{self.what} value")
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
                col,
                i,
            )
        return idx


def _declared(values: List[Any]) -> pa.Array:
    """Declared category values as one array; values of mixed YAML types (``[1, s2]``) compare as text."""
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError):
        return pa.array([str(v) for v in values], pa.string())  # the declared values, not a pass over rows


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
        if (
            not isinstance(state, dict)
            or not isinstance(state.get("sparse"), dict)
            or not isinstance(state.get("dense"), dict)
        ):
            raise ValueError("no 'sparse'/'dense' sections")
    except FileNotFoundError:
        raise DataError("no fitted encoders here (train first, or pass the run folder)", file=file) from None
    except (ValueError, UnicodeDecodeError) as e:
        raise DataError(
            f"corrupt fitted encoders ({str(e).splitlines()[0][:120]}); train the run again", file=file
        ) from None
    for enc in sparse:
        if enc.name not in state["sparse"]:
            raise DataError(f"sparse feature '{enc.name}' was not fitted in this run", file=file)
        vfile = os.path.join(path, f"vocab.{enc.name}.parquet")
        vocab = None
        if enc.needs_fit:
            try:
                vocab = pq.read_table(vfile).column("value").combine_chunks()
            except FileNotFoundError:
                raise DataError(
                    f"the vocabulary of sparse feature '{enc.name}' is missing (deleted?); train the run again",
                    file=vfile,
                ) from None
            except (pa.ArrowInvalid, KeyError, OSError) as e:
                raise DataError(f"corrupt vocabulary ({str(e).splitlines()[0][:120]})", file=vfile) from None
        try:
            enc.load_state(state["sparse"][enc.name], vocab)
        except (KeyError, TypeError, ValueError):
            raise DataError(f"corrupt state of sparse feature '{enc.name}'", file=file) from None
        if vocab is not None and len(vocab) >= enc.num_embeddings:
            raise DataError(
                f"the vocabulary of '{enc.name}' has {len(vocab)} values for a table of {enc.num_embeddings} rows",
                file=vfile,
            )
    for denc in dense:
        try:
            denc.load_state(state["dense"][denc.spec.name])
        except (KeyError, TypeError, ValueError):
            raise DataError(f"corrupt state of dense feature '{denc.spec.name}'", file=file) from None
    return {k: v for k, v in state.items() if k not in ("sparse", "dense")}

"""The scoring runtime of a recsys serving artifact: raw feature values -> tensors -> scores, without recsys.

``recsys export`` copies this file verbatim into every artifact as ``runtime.py``. It imports neither recsys nor
torchrec: preprocessing needs numpy and pyarrow only, and running the program needs torch and fbgemm_gpu (whose
operators the program calls). What it reads, all written by ``recsys export`` (docs/serving.md describes each):

    MANIFEST.json       format, model, tasks, program format, versions, size and SHA-256 of every other file
    model.pt            the TorchScript program (model.pt2: an AOTInductor package)
    features.json       how each input column becomes a model input (encoding policy, dtype, transform, ...)
    encoders/           the run's fitted encoders as they are: encoders.json (table sizes, dense statistics) and
                        vocab.<feature>.parquet (one column ``value``; the row of a value is its position + 1,
                        row 0 is the out-of-vocabulary row)
    runtime.py          this file

Opening an artifact checks the manifest first: an unknown format, a missing, changed or unlisted file is refused
with one line (:class:`ArtifactError`) before anything is parsed or loaded. The checksums detect corruption and
mix-ups, not malice: a program is code (an AOTInductor package is a shared library), so load artifacts you
built or trust.

Preprocessing mirrors recsys's encoders exactly (``tests/test_serving_runtime.py`` compares them on the same rows):
integer ids stay exact int64 (no float round trip), text stays text, unseen values go to the OOV row 0, hashed
features use SipHash-2-4 (key in features.json) followed by the SplitMix64 finaliser, modulo the table size.
Joins are not done here: give the columns a joined table would have (derived columns are computed when absent).

Command line (exit code 2 and one ``error:`` line for a bad artifact or bad input)::

    python runtime.py check ARTIFACT
    python runtime.py score ARTIFACT --input rows.parquet --out scores.parquet [--keep-columns user_id,item_id]

Python::

    import sys; sys.path.insert(0, "ARTIFACT")
    from runtime import Artifact
    artifact = Artifact.open("ARTIFACT")
    inputs = artifact.preprocess(table)     # {"dense": [B, Dd] float32, "values": [N] int64,
                                            #  "lengths": [F * B] int32, "scenario": [B] int64}
    scores = artifact.score(table)          # {"ctr": [B] float32 probabilities, ...}
"""

import argparse
import hashlib
import json
import math
import os
import re
import sys
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

FORMAT = "recsys-serving-v1"
FEATURES_FORMAT = "recsys-features-v1"
MANIFEST = "MANIFEST.json"
FEATURES = "features.json"
ENCODERS = "encoders"
INPUT_NAMES = ("dense", "values", "lengths", "scenario")
PROGRAM_FORMATS = ("torchscript", "aoti")
INT64_MAX = (1 << 63) - 1
FLOAT_EXACT_INT = 1 << 53  # integers up to here are exact in float64
FLOAT32_MAX = float(np.finfo(np.float32).max)
_HASH_BLOCK = 1 << 22
_IGNORED = ("__pycache__",)  # Python writes it beside runtime.py when the artifact folder is imported from

Rows = Union[pa.Table, Mapping[str, Any]]


class ArtifactError(Exception):
    """An artifact that is missing, damaged, of another format or version, or that cannot be loaded here."""


class InputError(ValueError):
    """A bad input value: names the column and the 1-based row."""

    def __init__(self, message: str, column: Optional[str] = None, row: Optional[int] = None) -> None:
        where = ", ".join(([f"column '{column}'"] if column else []) + ([f"row {row + 1}"] if row is not None else []))
        super().__init__(f"{where}: {message}" if where else message)
        self.column = column
        self.row = row


# --- hashing -----------------------------------------------------------------------------------------------
_MASK = np.uint64(0xFFFFFFFFFFFFFFFF)


def _rotl(x: np.ndarray, bits: int) -> np.ndarray:
    return (x << np.uint64(bits)) | (x >> np.uint64(64 - bits))


def _sip_round(v0, v1, v2, v3):
    v0 = v0 + v1
    v1 = _rotl(v1, 13) ^ v0
    v0 = _rotl(v0, 32)
    v2 = v2 + v3
    v3 = _rotl(v3, 16) ^ v2
    v0 = v0 + v3
    v3 = _rotl(v3, 21) ^ v0
    v2 = v2 + v1
    v1 = _rotl(v1, 17) ^ v2
    v2 = _rotl(v2, 32)
    return v0, v1, v2, v3


def siphash24(key: bytes, messages: Sequence[bytes]) -> np.ndarray:
    """SipHash-2-4 (Aumasson and Bernstein 2012) of each message under a 16-byte key, as uint64, vectorised
    over the messages (each message's 8-byte little-endian words; the last word holds the remaining bytes and
    the length modulo 256 in its top byte)."""
    if len(key) != 16:
        raise ValueError(f"SipHash needs a 16-byte key, got {len(key)} bytes")
    n = len(messages)
    k0 = np.uint64(int.from_bytes(key[:8], "little"))
    k1 = np.uint64(int.from_bytes(key[8:], "little"))
    lengths = np.fromiter((len(m) for m in messages), dtype=np.int64, count=n)
    words = lengths // 8 + 1
    width = int(words.max()) if n else 1
    block = np.zeros((n, 8 * width), dtype=np.uint8)
    data = np.frombuffer(b"".join(messages), dtype=np.uint8)
    starts = np.cumsum(lengths) - lengths
    block[np.repeat(np.arange(n), lengths), np.arange(len(data)) - np.repeat(starts, lengths)] = data
    block[np.arange(n), 8 * (words - 1) + 7] = (lengths & 0xFF).astype(np.uint8)
    m = block.view("<u8")
    v0 = np.full(n, k0 ^ np.uint64(0x736F6D6570736575))
    v1 = np.full(n, k1 ^ np.uint64(0x646F72616E646F6D))
    v2 = np.full(n, k0 ^ np.uint64(0x6C7967656E657261))
    v3 = np.full(n, k1 ^ np.uint64(0x7465646279746573))
    for j in range(width):
        live = j < words
        w = m[:, j]
        a0, a1, a2, a3 = v0, v1, v2, v3 ^ w
        for _ in range(2):
            a0, a1, a2, a3 = _sip_round(a0, a1, a2, a3)
        v0, v1, v2, v3 = (np.where(live, a, v) for a, v in ((a0 ^ w, v0), (a1, v1), (a2, v2), (a3, v3)))
    v2 = v2 ^ np.uint64(0xFF)
    for _ in range(4):
        v0, v1, v2, v3 = _sip_round(v0, v1, v2, v3)
    return v0 ^ v1 ^ v2 ^ v3


def splitmix64(x: np.ndarray) -> np.ndarray:
    """The SplitMix64 finaliser (with its increment 0x9E3779B97F4A7C15) of each uint64."""
    z = x.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    return _mix64(z)


def _mix64(z: np.ndarray) -> np.ndarray:
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def hash_text(values: Sequence[Optional[str]], key: str) -> np.ndarray:
    """uint64 hash of each text: ``mix64(siphash24(key, utf-8 bytes))``, ``2^64 - 1`` for a missing value (what
    ``pandas.util.hash_array`` computes for an object array, so recsys and this runtime agree)."""
    present = [v is not None for v in values]
    out = np.full(len(values), _MASK, dtype=np.uint64)
    texts = [v.encode("utf-8") for v in values if v is not None]
    if texts:
        out[np.asarray(present)] = _mix64(siphash24(key.encode("utf-8"), texts))
    return out


# --- raw columns ---------------------------------------------------------------------------------------------
def _plain(arr: Any) -> pa.Array:
    """One contiguous Arrow array, dictionary encoding and view layouts undone."""
    if not isinstance(arr, (pa.Array, pa.ChunkedArray)):
        arr = pa.array(arr.tolist() if isinstance(arr, np.ndarray) and arr.dtype == object else arr)
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    if pa.types.is_string_view(arr.type) or pa.types.is_large_string(arr.type):
        arr = pc.cast(arr, pa.string())
    elif pa.types.is_binary_view(arr.type):
        arr = pc.cast(arr, pa.binary())
    return arr


def _is_text(arr: pa.Array) -> bool:
    return pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)


def _is_number(arr: pa.Array) -> bool:
    t = arr.type
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)


def _numpy(arr: pa.Array) -> np.ndarray:
    return arr.to_numpy(zero_copy_only=False)


def _first(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def _refuse_nested(arr: pa.Array, column: str, what: str) -> None:
    if pa.types.is_nested(arr.type):
        raise InputError(f"nested value (type {arr.type}) where one {what} per row is expected", column, 0)


def _unique_map(arr: pa.Array, fn: Callable[[Optional[str]], Any]) -> List[Any]:
    """``fn`` of each row's value, computed once per distinct value."""
    enc = pc.dictionary_encode(arr)
    results = [fn(v) for v in enc.dictionary.to_pylist()]
    null = fn(None) if arr.null_count else None
    return [results[i] if i is not None else null for i in enc.indices.to_pylist()]


def _int_of_text(text: Optional[str]) -> Tuple[Optional[int], Optional[str]]:
    """(the integer id written in ``text``, or an error message): blanks are missing; a sign, leading zeros,
    surrounding blanks and a ``.0`` suffix are accepted; exponent or decimal forms must be exact integers."""
    if text is None or not text.strip():
        return None, "missing id"
    t = text.strip()
    m = re.fullmatch(r"([+-]?[0-9]+)\.0*", t)
    if m:
        t = m.group(1)
    if re.fullmatch(r"[+-]?[0-9]+", t):
        return int(t), None
    try:
        x = float(t) if "_" not in t else math.nan
    except ValueError:
        x = math.nan
    if math.isnan(x) or not math.isfinite(x) or x != round(x):
        return None, f"expected an integer id, got {text!r}"
    if abs(x) > FLOAT_EXACT_INT:
        return None, (
            f"id {text!r} is written as a floating-point number beyond 2^53, where integers are not "
            "exact (write ids as integers or text)"
        )
    return int(x), None


def integer_ids(arr: Any, column: str, wide_ok: bool = False) -> Tuple[np.ndarray, Optional[List[str]]]:
    """Integer ids exactly (never through float64): ``(int64 values, canonical decimal text of every id)``; the
    text (given only with ``wide_ok`` when some id is beyond int64) is what hashing reads."""
    arr = _plain(arr)
    _refuse_nested(arr, column, "id")
    if pa.types.is_null(arr.type):
        raise InputError("missing id", column, 0 if len(arr) else None)
    if pa.types.is_boolean(arr.type):
        arr = pc.cast(arr, pa.int8())
    if pa.types.is_decimal(arr.type):
        arr = pc.cast(arr, pa.string())
    if pa.types.is_integer(arr.type):
        if arr.null_count:
            raise InputError("missing id", column, _first(_numpy(arr.is_null())))
        if pa.types.is_uint64(arr.type):
            big = _numpy(pc.greater(arr, pa.scalar(INT64_MAX, pa.uint64())))
            if big.any():
                if not wide_ok:
                    i = _first(big)
                    raise InputError(f"id {arr[i].as_py()} does not fit a signed 64-bit integer", column, i)
                return np.where(big, 0, _numpy(arr).astype(np.int64)), [str(v) for v in arr.to_pylist()]
        return _numpy(pc.cast(arr, pa.int64())).astype(np.int64), None
    if pa.types.is_floating(arr.type):
        x = _numpy(pc.cast(arr, pa.float64())).astype(np.float64)
        missing = np.isnan(x)
        fractional = ~missing & (~np.isfinite(x) | (x != np.round(x)))
        inexact = ~missing & ~fractional & (np.abs(x) > FLOAT_EXACT_INT)
        if (missing | fractional | inexact).any():
            i = _first(missing | fractional | inexact)
            raise InputError(
                "missing id"
                if missing[i]
                else f"expected an integer id, got {float(x[i])!r}"
                if fractional[i]
                else f"id {float(x[i])!r} is written as a floating-point number "
                "beyond 2^53, where integers are not exact (write ids as integers or text)",
                column,
                i,
            )
        return x.astype(np.int64), None
    if _is_text(arr):
        try:
            ints = pc.cast(arr, pa.int64())  # plain digits: exact
            if ints.null_count:
                raise InputError("missing id", column, _first(_numpy(ints.is_null())))
            return _numpy(ints).astype(np.int64), None
        except pa.ArrowInvalid:
            pass
        parsed = _unique_map(arr, _int_of_text)
        for i, (_, error) in enumerate(parsed):
            if error is not None:
                raise InputError(error, column, i)
        fits = [-INT64_MAX - 1 <= v <= INT64_MAX for v, _ in parsed]
        if not all(fits) and not wide_ok:
            i = fits.index(False)
            raise InputError(f"id {parsed[i][0]} does not fit a signed 64-bit integer", column, i)
        wide = not all(fits)
        values = np.array([v if -INT64_MAX - 1 <= v <= INT64_MAX else 0 for v, _ in parsed], dtype=np.int64)
        return values, ([str(v) for v, _ in parsed] if wide else None)
    raise InputError(f"expected integer ids, the column has type {arr.type}", column)


def numbers(arr: Any, column: str) -> np.ndarray:
    """Numbers (or numeric text) as float64, NaN for missing values and blanks; other text names its row."""
    arr = _plain(arr)
    _refuse_nested(arr, column, "number")
    if pa.types.is_null(arr.type):
        return np.full(len(arr), np.nan)
    if pa.types.is_boolean(arr.type) or _is_number(arr):
        return _numpy(pc.cast(arr, pa.float64())).astype(np.float64)
    if _is_text(arr):
        try:
            return _numpy(pc.cast(arr, pa.float64())).astype(np.float64)
        except pa.ArrowInvalid:
            pass

        def parse(text: Optional[str]) -> Tuple[float, Optional[str]]:
            if text is None or not text.strip():
                return math.nan, None
            try:
                if "_" in text:
                    raise ValueError
                return float(text.strip()), None
            except ValueError:
                return math.nan, f"expected a number, got {text!r}"

        parsed = _unique_map(arr, parse)
        for i, (_, error) in enumerate(parsed):
            if error is not None:
                raise InputError(error, column, i)
        return np.array([v for v, _ in parsed], dtype=np.float64)
    raise InputError(f"expected numbers, the column has type {arr.type}", column)


def _float32(x: np.ndarray, column: str, what: str) -> np.ndarray:
    with np.errstate(over="ignore"):
        out = x.astype(np.float32)
    bad = ~np.isfinite(out) & np.isfinite(x)
    if bad.any():
        i = _first(bad)
        raise InputError(f"{what} {x[i]:g} overflows float32 (largest {FLOAT32_MAX:.4g})", column, i)
    return out


# --- the encoders --------------------------------------------------------------------------------------------
class SparseFeature:
    """One sparse feature: raw ids of its column -> rows of its table (``features.json`` entry + fitted state).

    Policies: ``vocab`` (position in the vocabulary + 1; unseen -> 0, or an error under ``oov: error``),
    ``hash`` (hash of the id's text modulo the table size; missing -> 0), ``identity`` (the id itself, which
    must lie in ``[0, num_embeddings)``).
    """

    def __init__(self, entry: Dict[str, Any], num_embeddings: int, vocab: Optional[pa.Array], hash_key: str) -> None:
        self.name: str = entry["name"]
        self.column: str = entry["column"]
        self.encoding: str = entry["encoding"]
        self.dtype: str = entry["dtype"]
        self.multi_hot: bool = bool(entry["multi_hot"])
        self.separator: str = entry["separator"]
        self.oov: str = entry["oov"]
        self.num_embeddings = int(num_embeddings)
        self.vocab = vocab
        self.hash_key = hash_key

    def _normalise(self, flat: pa.Array, column: str) -> pa.Array:
        """The declared dtype applied: int64 ids (canonical decimal text under ``hash``) or text."""
        flat = _plain(flat)
        _refuse_nested(flat, column, "id")
        if self.encoding == "identity" or self.dtype == "int" or (self.dtype == "auto" and _is_number(flat)):
            values, text = integer_ids(flat, column, wide_ok=self.encoding == "hash")
            if self.encoding == "hash":
                return pa.array(text, pa.string()) if text is not None else pc.cast(pa.array(values), pa.string())
            return pa.array(values, pa.int64())
        return flat if pa.types.is_string(flat.type) else pc.cast(flat, pa.string())

    def _tokens(self, arr: Any) -> Tuple[pa.Array, Optional[np.ndarray]]:
        """The flat ids and, for a multi-hot feature, row offsets."""
        arr = _plain(arr)
        if not self.multi_hot:
            if pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type):
                raise InputError("a list column needs 'multi_hot: true' in the spec", self.column)
            return self._normalise(arr, self.column), None
        if _is_text(arr):
            arr = pc.split_pattern(arr, self.separator)
        elif not (pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type)):
            return self._normalise(arr, self.column), np.arange(len(arr) + 1, dtype=np.int64)
        lengths = _numpy(pc.fill_null(pc.list_value_length(arr), 0)).astype(np.int64)
        flat = _plain(pc.list_flatten(arr))
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        if _is_text(flat):
            keep = _numpy(pc.fill_null(pc.not_equal(pc.utf8_trim_whitespace(flat), ""), False)).astype(bool)
            if not keep.all():  # "" cells and doubled separators carry no id
                kept = np.zeros(len(keep) + 1, dtype=np.int64)
                np.cumsum(keep, out=kept[1:])
                offsets = kept[offsets]
                flat = pc.filter(flat, pa.array(keep))
        try:
            return self._normalise(flat, self.column), offsets
        except InputError as e:  # name the row holding the bad token, not the token's position
            row = int(np.searchsorted(offsets, e.row or 0, side="right")) - 1
            raise InputError(f"multi-hot cell does not parse: {str(e).split(': ', 1)[-1]}", self.column, row) from None

    def encode(self, arr: Any) -> Tuple[np.ndarray, np.ndarray]:
        """(table rows [nnz] int64, ids per row [B] int32) of a column."""
        flat, offsets = self._tokens(arr)
        rows = self._rows(flat, offsets)
        lengths = np.ones(len(rows), np.int32) if offsets is None else np.diff(offsets).astype(np.int32)
        return rows, lengths

    def _rows(self, flat: pa.Array, offsets: Optional[np.ndarray]) -> np.ndarray:
        def row_of(token: int) -> int:
            return token if offsets is None else int(np.searchsorted(offsets, token, side="right")) - 1

        if self.encoding == "identity":
            ids = _numpy(flat).astype(np.int64)
            bad = (ids < 0) | (ids >= self.num_embeddings)
            if bad.any():
                i = _first(bad)
                raise InputError(
                    f"id {ids[i]} is outside [0, {self.num_embeddings}) under the 'identity' policy",
                    self.column,
                    row_of(i),
                )
            return ids
        if self.encoding == "hash":
            text = pc.cast(flat, pa.string())
            enc = pc.dictionary_encode(text)
            hashed = hash_text(enc.dictionary.to_pylist(), self.hash_key) % np.uint64(self.num_embeddings)
            index = _numpy(pc.fill_null(enc.indices, -1)).astype(np.int64)
            return np.where(index >= 0, hashed.astype(np.int64)[np.maximum(index, 0)], 0)
        vocab = self.vocab
        if vocab is None:
            raise ArtifactError(f"sparse feature '{self.name}' has no vocabulary")
        if len(vocab) and vocab.type != flat.type:
            try:
                flat = pc.cast(flat, vocab.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                flat, vocab = pc.cast(flat, pa.string()), pc.cast(vocab, pa.string())
        index = pc.index_in(flat, value_set=vocab) if len(vocab) else pa.nulls(len(flat), pa.int32())
        found = _numpy(pc.fill_null(index, -1)).astype(np.int64)
        if self.oov == "error":
            unseen = (found < 0) & _numpy(flat.is_valid()).astype(bool)
            if unseen.any():
                i = _first(unseen)
                raise InputError(
                    f"value {flat[i].as_py()!r} is not in the fitted vocabulary (oov: error)", self.column, row_of(i)
                )
        return found + 1  # row 0 is the out-of-vocabulary row


class DenseFeature:
    """One dense feature: numbers -> float32 with the spec's missing-value fill and fitted transform."""

    def __init__(self, entry: Dict[str, Any], state: Dict[str, Any]) -> None:
        self.name: str = entry["name"]
        self.column: str = entry["column"]
        self.transform: str = entry["transform"]
        self.fill: Optional[float] = entry["fill"]
        self.mean = float(state["mean"])
        self.std = float(state["std"])

    def encode(self, arr: Any) -> np.ndarray:
        x = numbers(arr, self.column)
        bad = ~np.isfinite(x)
        if bad.any():
            if self.fill is None:
                i = _first(bad)
                what = "missing value" if np.isnan(x[i]) else f"non-finite value {x[i]}"
                raise InputError(f"{what} in a dense feature (set 'fill' in the spec to replace it)", self.column, i)
            x = np.where(bad, self.fill, x)
        if self.transform.startswith("log1p"):
            low = x <= -1
            if low.any():
                i = _first(low)
                raise InputError(f"log1p transform needs values > -1, got {x[i]}", self.column, i)
            x = np.log1p(x)
        if self.transform.endswith("standardize"):
            return _float32((x - self.mean) / self.std, self.column, "standardized value")
        return _float32(x, self.column, "dense value")


class Scenario:
    """The scenario column -> indices ``0..S-1`` (declared values, or indices already); undeclared -> error."""

    def __init__(self, entry: Optional[Dict[str, Any]]) -> None:
        self.entry = entry

    def encode(self, rows: Rows, n: int) -> np.ndarray:
        if self.entry is None:
            return np.zeros(n, dtype=np.int64)
        column = self.entry["column"]
        arr = _plain(_column(rows, column))
        _refuse_nested(arr, column, "scenario value")
        values = self.entry.get("values")
        if values is None:
            idx, _ = integer_ids(arr, column)
            size = int(self.entry["num"])
            bad = (idx < 0) | (idx >= size)
            if bad.any():
                i = _first(bad)
                raise InputError(f"scenario {idx[i]} is outside [0, {size}) declared in the spec", column, i)
            return idx
        try:
            declared = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError):
            declared = pa.array([str(v) for v in values], pa.string())
        if declared.type != arr.type:
            try:
                arr = pc.cast(arr, declared.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                arr, declared = pc.cast(arr, pa.string()), pc.cast(declared, pa.string())
        idx = _numpy(pc.fill_null(pc.index_in(arr, value_set=declared), -1)).astype(np.int64)
        if (idx < 0).any():
            i = _first(idx < 0)
            raise InputError(
                f"scenario value {arr[i].as_py()!r} is not declared in the spec (declared: {values})", column, i
            )
        return idx


def _column(rows: Rows, name: str) -> Any:
    names = rows.column_names if isinstance(rows, pa.Table) else list(rows)
    if name not in names:
        raise InputError("missing from the input (every feature's column is needed; joins are not done here)", name)
    return rows.column(name) if isinstance(rows, pa.Table) else rows[name]


def _num_rows(rows: Rows) -> int:
    if isinstance(rows, pa.Table):
        return rows.num_rows
    lengths = {len(v) for v in rows.values()}
    if len(lengths) > 1:
        raise InputError(f"input columns differ in length: {sorted(lengths)}")
    return lengths.pop() if lengths else 0


def derive(entry: Dict[str, Any], rows: Rows, cross_key: str) -> np.ndarray:
    """A derived column (``greater``, ``bucketize``, ``first_nonzero``, ``cross``) as recsys computes it."""
    op = entry["op"]

    def finite(column: str) -> np.ndarray:
        x = numbers(_column(rows, column), column)
        if np.isnan(x).any():
            raise InputError("missing value", column, _first(np.isnan(x)))
        return x

    if op == "greater":
        return (finite(entry["column"]) > entry["value"]).astype(np.int64)
    if op == "bucketize":
        x = finite(entry["column"])
        return np.searchsorted(np.asarray(entry["boundaries"], dtype=np.float64), x, side="right").astype(np.int64)
    if op == "first_nonzero":
        m = np.stack([np.nan_to_num(numbers(_column(rows, c), c)) != 0 for c in entry["columns"]], axis=1)
        return np.where(m.any(axis=1), m.argmax(axis=1), len(entry["columns"])).astype(np.int64)
    if op == "cross":  # the pair (a, b) differs from (b, a)
        h = np.zeros(_num_rows(rows), dtype=np.uint64)
        for c in entry["columns"]:
            text = pc.cast(_plain(_column(rows, c)), pa.string()).to_pylist()
            h = splitmix64(h ^ hash_text(text, cross_key))
        return (h >> np.uint64(1)).astype(np.int64)
    raise ArtifactError(f"{FEATURES}: unknown derived op '{op}'")


class Preprocessor:
    """Raw rows -> the program's inputs, from ``features.json`` and the fitted encoders.

    Args:
        features: the parsed ``features.json``.
        encoders: the folder holding ``encoders.json`` and the vocabularies.

    Shapes: rows (B of them) -> ``{"dense": [B, Dd] float32, "values": [N] int64, "lengths": [F * B] int32,
    "scenario": [B] int64}``; ``values``/``lengths`` are feature-major in ``features.json``'s feature order.
    """

    def __init__(self, features: Dict[str, Any], encoders: str) -> None:
        state_file = os.path.join(encoders, "encoders.json")
        state = _read_json(state_file, "fitted encoders")
        try:
            self.hash_key: str = features["hash"]["key"]
            self.cross_key: str = features["hash"]["cross_key"]
            self.derived: List[Dict[str, Any]] = list(features["derived"])
            self.sparse = [
                SparseFeature(e, state["sparse"][e["name"]]["num_embeddings"], self._vocab(encoders, e), self.hash_key)
                for e in features["sparse"]
            ]
            self.dense = [DenseFeature(e, state["dense"][e["name"]]) for e in features["dense"]]
            self.scenario = Scenario(features["scenario"])
        except (KeyError, TypeError, ValueError) as e:
            raise ArtifactError(f"{FEATURES} or {state_file}: missing or malformed entry ({e})") from None

    @staticmethod
    def _vocab(encoders: str, entry: Dict[str, Any]) -> Optional[pa.Array]:
        if entry["encoding"] != "vocab":
            return None
        file = os.path.join(encoders, f"vocab.{entry['name']}.parquet")
        try:
            return pq.read_table(file).column("value").combine_chunks()
        except (OSError, KeyError, pa.ArrowInvalid) as e:
            raise ArtifactError(f"{file}: unreadable vocabulary ({str(e).splitlines()[0][:120]})") from None

    @property
    def feature_names(self) -> List[str]:
        return [f.name for f in self.sparse]

    def __call__(self, rows: Rows) -> Dict[str, np.ndarray]:
        if not isinstance(rows, pa.Table):
            rows = dict(rows)
        n = _num_rows(rows)
        for entry in self.derived:
            names = rows.column_names if isinstance(rows, pa.Table) else list(rows)
            if entry["name"] not in names:
                column = pa.array(derive(entry, rows, self.cross_key))
                rows = (
                    rows.append_column(entry["name"], column)
                    if isinstance(rows, pa.Table)
                    else {**rows, entry["name"]: column}
                )
        values, lengths = [], []
        for f in self.sparse:
            ids, per_row = f.encode(_column(rows, f.column))
            values.append(ids)
            lengths.append(per_row)
        dense = (
            np.stack([d.encode(_column(rows, d.column)) for d in self.dense], axis=1)
            if self.dense
            else np.zeros((n, 0), dtype=np.float32)
        )
        return {
            "dense": np.ascontiguousarray(dense, dtype=np.float32),
            "values": np.concatenate(values).astype(np.int64) if values else np.zeros(0, np.int64),
            "lengths": np.concatenate(lengths).astype(np.int32) if lengths else np.zeros(0, np.int32),
            "scenario": self.scenario.encode(rows, n),
        }


# --- the artifact --------------------------------------------------------------------------------------------
def _read_json(path: str, what: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise ArtifactError(f"{path}: missing ({what})") from None
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{path}: unreadable {what} ({str(e).splitlines()[0][:120]})") from None


def file_digest(path: str) -> str:
    """SHA-256 of a file, hex."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_HASH_BLOCK), b""):
            h.update(block)
    return h.hexdigest()


def check_files(
    path: str,
    files: Mapping[str, Mapping[str, Any]],
    present: Sequence[str],
    error: Callable[[str], Exception],
    what: str,
) -> None:
    """Folder ``path``'s files (``present``, relative) against a manifest's table ``files`` (name -> size,
    sha256): a file it does not list, a missing, truncated or changed file raises ``error`` with one line naming
    it (``what``: "artifact", "checkpoint"). recsys checks its checkpoints with this too."""
    unlisted = sorted(set(present) - set(files))
    if unlisted:
        raise error(
            f"{path}: file '{unlisted[0]}' is not in the {what}'s manifest; refusing a {what} with files it was "
            "not written with"
        )
    for name, entry in files.items():
        full = os.path.join(path, name)
        if not os.path.isfile(full):
            raise error(f"{full}: missing (listed in the {what}'s manifest)")
        size = os.path.getsize(full)
        if size != entry["size"]:
            raise error(f"{full}: {size} bytes, the manifest says {entry['size']} (truncated or replaced)")
        if file_digest(full) != entry["sha256"]:
            raise error(f"{full}: content differs from the {what}'s manifest (corrupt or replaced)")


def artifact_files(path: str) -> List[str]:
    """Every file under ``path`` (relative, ``/``-separated) except the manifest and Python's caches."""
    out = []
    for folder, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if d not in _IGNORED)
        for name in sorted(files):
            rel = os.path.relpath(os.path.join(folder, name), path).replace(os.sep, "/")
            if rel != MANIFEST:
                out.append(rel)
    return out


def verify(path: str) -> Dict[str, Any]:
    """The manifest of artifact folder ``path`` after checking every file against it (one-line errors)."""
    if not os.path.isdir(path):
        raise ArtifactError(f"{path}: no such artifact folder")
    file = os.path.join(path, MANIFEST)
    if not os.path.isfile(file):
        raise ArtifactError(f"{path}: no {MANIFEST}; not a recsys serving artifact (write one with recsys export)")
    manifest = _read_json(file, "artifact manifest")
    found = manifest.get("format") if isinstance(manifest, dict) else None
    if found != FORMAT:
        raise ArtifactError(
            f"{file}: format {found!r}, expected {FORMAT!r}: not a recsys serving artifact of this "
            "version (export it again with this version of recsys)"
        )
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise ArtifactError(f"{file}: corrupt manifest (no file table)")
    for name, entry in files.items():
        if (
            not isinstance(name, str)
            or name.startswith("/")
            or ".." in name.split("/")
            or not isinstance(entry, dict)
            or not isinstance(entry.get("size"), int)
            or not isinstance(entry.get("sha256"), str)
        ):
            raise ArtifactError(f"{file}: corrupt manifest (bad entry {name!r})")
    check_files(path, files, artifact_files(path), ArtifactError, "artifact")
    program = manifest.get("program")
    if (
        not isinstance(program, dict)
        or program.get("format") not in PROGRAM_FORMATS
        or program.get("file") not in files
    ):
        raise ArtifactError(f"{file}: corrupt manifest (program entry)")
    return manifest


def load_program(file: str, program_format: str, exported_with: Optional[str] = None) -> Any:
    """The program of an artifact, callable as ``program(dense, values, lengths, scenario) -> {name: [B]}``.

    Imports torch and fbgemm_gpu (the program calls fbgemm's operators; recsys and torchrec are not needed)."""
    try:
        import fbgemm_gpu  # noqa: F401 - registers the torch.ops.fbgemm operators the program calls
        import torch
    except ImportError as e:
        raise ArtifactError(f"{file}: running the program needs torch and fbgemm_gpu ({e})") from None
    if program_format == "aoti":
        if exported_with and exported_with != torch.__version__:
            raise ArtifactError(
                f"{file}: an AOTInductor package runs on the torch it was compiled with "
                f"({exported_with}); this is torch {torch.__version__}"
            )
        try:
            return torch._inductor.aoti_load_package(file)
        except Exception as e:  # a damaged package surfaces as RuntimeError or zipfile errors
            raise ArtifactError(
                f"{file}: cannot load the AOTInductor package ({str(e).splitlines()[0][:160]})"
            ) from None
    try:
        program = torch.jit.load(file, map_location="cpu")
    except Exception as e:  # RuntimeError from TorchScript's reader for a damaged or foreign file
        raise ArtifactError(f"{file}: cannot load the TorchScript program ({str(e).splitlines()[0][:160]})") from None
    return program.eval()


class Artifact:
    """An exported model ready to score raw rows.

    Example::

        artifact = Artifact.open("artifacts/wide_deep")
        scores = artifact.score({"user_id": [17, 3], "item_id": [5, 5], ...})   # {"ctr": array([...]), ...}
    """

    def __init__(self, path: str, manifest: Dict[str, Any]) -> None:
        self.path = path
        self.manifest = manifest
        self.features = _read_json(os.path.join(path, FEATURES), "feature settings")
        if not isinstance(self.features, dict) or self.features.get("format") != FEATURES_FORMAT:
            raise ArtifactError(f"{os.path.join(path, FEATURES)}: not {FEATURES_FORMAT} feature settings")
        self.preprocess = Preprocessor(self.features, os.path.join(path, ENCODERS))
        self._program: Any = None

    @classmethod
    def open(cls, path: str) -> "Artifact":
        """Check ``path`` against its manifest and read its preprocessing (the program loads on first use)."""
        return cls(path, verify(path))

    @property
    def outputs(self) -> List[str]:
        """The program's output names: the tasks, then any per-user state (``user_state/<task>``)."""
        return list(self.manifest["program"]["outputs"])

    @property
    def tasks(self) -> List[str]:
        return [t["name"] for t in self.manifest["tasks"]]

    @property
    def program(self) -> Any:
        if self._program is None:
            entry = self.manifest["program"]
            self._program = load_program(
                os.path.join(self.path, entry["file"]), entry["format"], self.manifest.get("versions", {}).get("torch")
            )
        return self._program

    def run(self, inputs: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """The program on preprocessed inputs: ``{output: [B] float32}``."""
        import torch

        args = [torch.from_numpy(np.ascontiguousarray(inputs[name])) for name in INPUT_NAMES]
        with torch.inference_mode():
            out = self.program(*args)
        return {name: out[name].numpy() for name in self.outputs}

    def score(self, rows: Rows, batch_size: int = 4096) -> Dict[str, np.ndarray]:
        """Preprocess and score ``rows`` (a pyarrow Table or ``{column: values}``) ``batch_size`` rows at a time."""
        table = rows if isinstance(rows, pa.Table) else pa.table({k: _plain(v) for k, v in dict(rows).items()})
        parts: Dict[str, List[np.ndarray]] = {name: [] for name in self.outputs}
        for start in range(0, table.num_rows, batch_size):
            chunk = table.slice(start, batch_size)
            try:
                out = self.run(self.preprocess(chunk))
            except InputError as e:
                if e.row is None:
                    raise
                raise InputError(str(e).split(": ", 1)[-1], e.column, e.row + start) from None
            for name, value in out.items():
                parts[name].append(value)
        return {name: (np.concatenate(v) if v else np.zeros(0, np.float32)) for name, v in parts.items()}


# --- command line --------------------------------------------------------------------------------------------
def read_rows(path: str) -> pa.Table:
    """Rows of a Parquet file as stored, or of a CSV/TSV file with a header, every column as text (nulls for
    empty cells), as recsys reads CSV files: the encoders parse ids and numbers exactly."""
    try:
        if path.endswith((".csv", ".csv.gz", ".tsv", ".txt")):
            import pyarrow.csv as pcsv

            parse = pcsv.ParseOptions(delimiter="\t" if path.endswith(".tsv") else ",", newlines_in_values=True)
            names = pcsv.open_csv(path, parse_options=parse).schema.names
            convert = pcsv.ConvertOptions(column_types={n: pa.string() for n in names}, strings_can_be_null=True)
            return pcsv.read_csv(path, parse_options=parse, convert_options=convert)
        return pq.read_table(path)
    except (OSError, pa.ArrowInvalid) as e:
        raise InputError(f"{path}: cannot read ({str(e).splitlines()[0][:160]})") from None


def output_column(name: str, tasks: Sequence[str]) -> str:
    """The column of an output in a scores file: ``score_<task>`` for a task (as ``recsys predict`` writes),
    the name with ``/`` as ``_`` otherwise (``user_state_<task>``)."""
    return f"score_{name}" if name in tasks else name.replace("/", "_")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="runtime.py", description="Score rows with a recsys serving artifact.")
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="verify an artifact against its manifest and load its program")
    check.add_argument("artifact")
    score = sub.add_parser("score", help="score a Parquet or CSV file of raw rows")
    score.add_argument("artifact")
    score.add_argument("--input", required=True, help="Parquet or CSV file with the feature columns")
    score.add_argument("--out", required=True, help="Parquet file of scores to write")
    score.add_argument("--keep-columns", default="", help="input columns copied next to the scores (comma-separated)")
    score.add_argument("--batch-size", type=int, default=4096)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        artifact = Artifact.open(args.artifact)
        if args.command == "check":
            artifact.program  # noqa: B018 - loading is part of the check
            entry = artifact.manifest["program"]
            print(
                f"{args.artifact}: {artifact.manifest['model']['name']}, {entry['format']} "
                f"({entry['quantize']}), outputs {', '.join(artifact.outputs)}"
            )
            return 0
        if args.batch_size < 1:
            raise InputError(f"--batch-size must be >= 1, got {args.batch_size}")
        table = read_rows(args.input)
        keep = [c for c in args.keep_columns.split(",") if c]
        for c in keep:
            _column(table, c)
        scores = artifact.score(table, args.batch_size)
        columns = {c: table.column(c) for c in keep}
        columns.update({output_column(k, artifact.tasks): v for k, v in scores.items()})
        tmp = f"{args.out}.tmp.{os.getpid()}"
        try:
            pq.write_table(pa.table(columns), tmp)
            os.replace(tmp, args.out)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        print(f"wrote {table.num_rows} rows of scores to {args.out}")
        return 0
    except InputError as e:
        where = getattr(args, "input", None)
        print(f"error: {where + ', ' if where else ''}{e}", file=sys.stderr)
        return 2
    except (ArtifactError, OSError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

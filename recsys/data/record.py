"""The row record: every per-row field of the data, declared once.

:class:`~recsys.data.columns.Columns` (numpy, what readers produce), :class:`~recsys.data.batch.Batch` (torch,
what models read) and :class:`~recsys.train.metrics.Predictions` (numpy, what evaluation keeps) are this record
in different array types. Every operation on them (take, concat, padding and empty records, tensor conversion,
device moves, stream recording, the evaluation gather across ranks) walks the fields declared below, so a new
per-row field is one line in :class:`EvalFields` (evaluation keeps it) or :class:`RowFields` (models and
losses read it); only its producer (``Dataset._encode`` and the spec-derived layout ``Dataset.layout``) has to
fill it.

Per-row values that only some models read (side columns such as SSIM's shared-instance flags) need no field
of their own: they go in ``extras``, the one keyed namespace for them (float32, filled by
``data.side_columns``).

Layouts of a field (``RowField.layout``):
    ``row``: one array [n]. An ``optional`` one may be absent: None in Columns and Predictions, an empty
        tensor in Batch (torchrec's pipelines move and record every tensor of a batch).
    ``matrix``: one array [n, D] (the dense features).
    ``keyed``: {name: [n]}, e.g. labels per task.
    ``sparse``: the sparse features; Columns hold {feature: ids [n] or Ragged}, Batch a KeyedJaggedTensor.

Example::

    from recsys.data.record import row_fields
    [name for name, _ in row_fields(Batch)]   # ['row_id', 'scenario', 'user', 'labels', ...]
"""

import dataclasses
import functools
from dataclasses import dataclass, field
from typing import (
    Any,
    Callable,
    Dict,
    FrozenSet,
    Generic,
    Iterator,
    List,
    Literal,
    Mapping,
    Optional,
    Sequence,
    Tuple,
    Type,
    TypeVar,
)

import numpy as np

Layout = Literal["row", "matrix", "keyed", "sparse"]
_META = "recsys.row_field"

A = TypeVar("A")  # the array type: np.ndarray (Columns, Predictions) or torch.Tensor (Batch)
S = TypeVar("S")  # the sparse features' type: {feature: ids} (Columns) or a KeyedJaggedTensor (Batch)
R = TypeVar("R")


@dataclass(frozen=True)
class RowField:
    """How one field of the row record is stored.

    Args:
        layout: ``row``, ``matrix``, ``keyed`` or ``sparse`` (see the module docstring).
        dtype: numpy dtype of its arrays (torch tensors have the matching dtype).
        pad: value of placeholder rows (``row_id`` and ``user``: -1; everything else 0).
        optional: the field may be absent (``row`` layout only).
    """

    layout: Layout
    dtype: np.dtype
    pad: float = 0
    optional: bool = False


def row_field(layout: Layout, dtype: Any, pad: float = 0, optional: bool = False, required: bool = False) -> Any:
    """A dataclass field of the row record: required, or for a keyed field without ``required`` an empty dict
    by default, or for an ``optional`` field None by default."""
    meta = {_META: RowField(layout, np.dtype(dtype), pad, optional)}
    if optional:
        return field(default=None, metadata=meta)
    if layout == "keyed" and not required:
        return field(default_factory=dict, metadata=meta)
    return field(metadata=meta)


@dataclass(kw_only=True)
class EvalFields(Generic[A]):
    """The fields evaluation keeps of every row (shapes for n rows).

    Attributes:
        row_id: [n] int64 stable instance id; -1 marks padding rows that only keep ranks in step.
        scenario: [n] int64 in [0, num_scenarios).
        user: [n] int64, the user's encoded id (-1 when the data has no user); what models read.
        labels: {task: [n] float32}.
        groups: {name: [n] int64} evaluation-only breakdowns (e.g. lifecycle stage).
        oracle: {task: [n] float32} true probabilities (synthetic data only).
        user_key: [n] int64, a 64-bit key of the raw user value (the bits of
            :func:`recsys.data.history.value_keys`), or absent: tells users apart in evaluation (GAUC, NDCG)
            where unseen users share one encoded id.
    """

    row_id: A = row_field("row", np.int64, pad=-1)
    scenario: A = row_field("row", np.int64)
    user: A = row_field("row", np.int64, pad=-1)
    labels: Dict[str, A] = row_field("keyed", np.float32, required=True)
    groups: Dict[str, A] = row_field("keyed", np.int64)
    oracle: Dict[str, A] = row_field("keyed", np.float32)
    user_key: Optional[A] = row_field("row", np.int64, optional=True)


@dataclass(kw_only=True)
class RowFields(EvalFields[A], Generic[A, S]):
    """Every per-row field: the evaluated ones plus what models and losses read (shapes for n rows,
    Dd = number of dense features).

    Attributes:
        dense: [n, Dd] float32.
        sparse: the sparse features (schema order).
        weights: [n] float32 sample weights (0 for padding rows).
        time: [n] float64 timestamp, or absent.
        history: {name: [n] float32} the user's strictly earlier training labels, when the dataset spec asks
            for them (see :mod:`recsys.data.history`): ``count``, ``<task>/count``, ``<task>/mean``; training
            targets only, never model inputs.
        extras: {name: [n] float32} per-row side columns joined by row id (``data.side_columns``), e.g. SSIM's
            shared-instance flags: the namespace for optional per-row values.
    """

    dense: A = row_field("matrix", np.float32)
    sparse: S = row_field("sparse", np.int64)
    weights: A = row_field("row", np.float32)
    time: Optional[A] = row_field("row", np.float64, optional=True)
    history: Dict[str, A] = row_field("keyed", np.float32)
    extras: Dict[str, A] = row_field("keyed", np.float32)


def row_fields(cls: type) -> Tuple[Tuple[str, RowField], ...]:
    """The row-record fields of dataclass ``cls`` (its own bookkeeping fields left out), in declaration order."""
    return _row_fields(cls)


@functools.lru_cache(maxsize=None)
def _row_fields(cls: Any) -> Tuple[Tuple[str, RowField], ...]:  # Any: typeshed does not call type[R] Hashable
    return tuple((f.name, f.metadata[_META]) for f in dataclasses.fields(cls) if _META in f.metadata)


@dataclass
class RecordLayout:
    """What a record holds besides its rows: what placeholder (padding) and empty records copy.

    Args:
        keys: the names of each keyed field (a field not listed has none).
        present: the optional fields that are present.
        widths: the width of each matrix field.
        sparse: the sparse features in order, each with whether it is multi-hot.
    """

    keys: Mapping[str, Sequence[str]]
    present: FrozenSet[str]
    widths: Mapping[str, int]
    sparse: Sequence[Tuple[str, bool]]

    def __post_init__(self) -> None:  # one spelling, so that layouts compare equal
        self.keys = {k: tuple(v) for k, v in self.keys.items()}
        self.present = frozenset(self.present)
        self.widths = dict(self.widths)
        self.sparse = tuple((name, bool(multi_hot)) for name, multi_hot in self.sparse)


def tree_map(
    record: Any,
    fn: Callable[[Any, RowField], Any],
    sparse: Optional[Callable[[Any], Any]] = None,
    into: Optional[Type[R]] = None,
    absent: Callable[[RowField], Any] = lambda f: None,
    **given: Any,
) -> R:
    """A record of class ``into`` (default: ``record``'s) with ``fn(array, field)`` of each of ``record``'s arrays
    (every value of a keyed field); ``sparse`` maps the sparse features, ``absent(field)`` stands for an absent
    optional field, and ``given`` fields are taken as they are.

    Example::

        moved = tree_map(batch, lambda t, f: t.to(device), sparse=lambda kjt: kjt.to(device))
    """
    cls = into or type(record)
    values: Dict[str, Any] = dict(given)
    for name, f in row_fields(cls):
        if name in values:
            continue
        value = getattr(record, name)
        if f.layout == "sparse":
            values[name] = _sparse_fn(sparse, cls)(value)
        elif f.layout == "keyed":
            values[name] = {k: fn(v, f) for k, v in value.items()}
        else:
            values[name] = absent(f) if value is None else fn(value, f)
    return cls(**values)


def concat_fields(
    parts: Sequence[R],
    cat: Callable[[List[Any], RowField], Any],
    sparse: Optional[Callable[[List[Any]], Any]] = None,
    consume: bool = False,
    **given: Any,
) -> R:
    """The records ``parts`` (one class, at least one) joined row-wise: ``cat(arrays, field)`` of each field's
    arrays (each key of a keyed field, the keys of the first part), ``sparse`` of the sparse features; an optional
    field must be present in every part or in none. With ``consume`` each field is cleared from the parts once
    joined, so the peak holds the rows once plus one field (the parts are spent)."""
    first = parts[0]
    values: Dict[str, Any] = dict(given)
    for name, f in row_fields(type(first)):
        if name in values:
            continue
        items = [getattr(p, name) for p in parts]
        if f.layout == "sparse":
            values[name] = _sparse_fn(sparse, type(first))(items)
        elif f.layout == "keyed":
            values[name] = {k: cat([v[k] for v in items], f) for k in items[0]}
        else:
            missing = [v is None for v in items]
            if any(missing) and not all(missing):
                raise ValueError(f"some parts carry '{name}' and some do not")
            values[name] = None if missing[0] else cat(items, f)
        if consume:
            del items
            for p in parts:
                setattr(p, name, None)
    return type(first)(**values)


def _sparse_fn(fn: Optional[Callable[[Any], Any]], cls: type) -> Callable[[Any], Any]:
    if fn is None:
        raise TypeError(f"{cls.__name__} has sparse features: say how to map them")
    return fn


def arrays(record: Any) -> Iterator[Any]:
    """Every array of ``record`` except the sparse features (each value of a keyed field; absent ones skipped)."""
    for name, f in row_fields(type(record)):
        value = getattr(record, name)
        if f.layout == "keyed":
            yield from value.values()
        elif f.layout != "sparse" and value is not None:
            yield value


def blank(cls: Type[R], layout: RecordLayout, rows: int, sparse: Callable[[int], Any]) -> R:
    """``rows`` placeholder rows of ``layout`` (numpy): every array filled with its field's ``pad``; ``sparse``
    builds the sparse features of ``rows`` rows."""
    values: Dict[str, Any] = {}
    for name, f in row_fields(cls):
        if f.layout == "sparse":
            values[name] = sparse(rows)
        elif f.layout == "keyed":
            values[name] = {k: np.full(rows, f.pad, f.dtype) for k in layout.keys.get(name, ())}
        elif f.layout == "matrix":
            values[name] = np.full((rows, layout.widths.get(name, 0)), f.pad, f.dtype)
        elif f.optional and name not in layout.present:
            values[name] = None
        else:
            values[name] = np.full(rows, f.pad, f.dtype)
    return cls(**values)


def layout_of(record: Any, multi_hot: Callable[[Any], bool]) -> RecordLayout:
    """The layout of numpy record ``record``; ``multi_hot(column)`` tells a multi-hot sparse column."""
    keys: Dict[str, Tuple[str, ...]] = {}
    present, widths, sparse = set(), {}, []
    for name, f in row_fields(type(record)):
        value = getattr(record, name)
        if f.layout == "keyed":
            keys[name] = tuple(value)
        elif f.layout == "matrix":
            widths[name] = value.shape[1]
        elif f.layout == "sparse":
            sparse = [(k, multi_hot(v)) for k, v in value.items()]
        elif f.optional and value is not None:
            present.add(name)
    return RecordLayout(keys, frozenset(present), widths, sparse)

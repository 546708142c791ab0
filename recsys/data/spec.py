"""Dataset specs: a YAML file mapping the columns of CSV/Parquet files to the schema.

A spec says where the rows are (``source``, or files per split in ``sources``; optional side tables to
``joins``), which rows to keep (``filter``), which columns to compute (``derived``), and how each column becomes
a sparse feature (with its id-encoding policy), a dense feature, a task label, the scenario, the user, time,
weight or an evaluation group.

Paths: ``root`` is relative to the spec file; the files' ``path`` (a file, folder or glob) is relative to the
data root (``root``, or ``data.path`` / ``--data`` of a run, which replace it). An absolute path is used as is.

Files per split (``sources``): ``train`` (or ``source``) is the main file set, which the run config's split rule
divides; a ``valid`` or ``test`` file set given here is that split as a whole, and the rule then carves only the
other splits out of the main files (given ``test``, a random or time-based ``valid`` comes from ``train``).

Example (MovieLens-100K, original files)::

    name: movielens-100k
    source: {path: u.data, format: csv, delimiter: "\\t", header: false,
             columns: [user_id, item_id, rating, timestamp]}
    joins:
      - {path: u.user, delimiter: "|", header: false, on: user_id,
         columns: [user_id, age, gender, occupation, zip]}
    derived:
      - {name: like, op: greater, column: rating, value: 3}
    sparse:
      - {name: user_id, group: user}
    tasks:
      - {name: like, kind: binary}

Encoding policies:
    ``vocab``: a vocabulary fitted on the training split; index 0 is the out-of-vocabulary bucket (``oov:
    bucket``) or unseen values are an error (``oov: error``). ``num_embeddings`` caps the table (the most
    frequent values are kept) or is fitted when omitted.
    ``hash``: values hashed into ``num_embeddings`` buckets (no fitting; collisions possible).
    ``identity``: the column already holds integer ids; any id outside ``[0, num_embeddings)`` is an error.

Id types (``dtype``): integer ids stay exact 64-bit integers end to end (never a float round trip, so 64-bit
hashes stay distinct); an id beyond int64 is an error, except under ``hash``, which hashes its decimal text.
``int`` reads CSV text and Parquet integers alike (``"12"`` and 12 are one id); ``string`` reads both as text;
``auto`` (default) keeps CSV cells as text and Parquet columns as they are, and refuses a vocabulary whose files
disagree (integers in one file, text in another), naming the second file: declare ``int`` or ``string`` then.
"""

import codecs
import math
import os
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Dict, List, Literal, Optional, Tuple

import numpy as np

from recsys.config import from_dict, read_yaml
from recsys.errors import ConfigError
from recsys.schema import FeatureGroup, Pooling, RegressionLoss, TaskKind

if TYPE_CHECKING:
    from recsys.config import Config

FLOAT32_MAX = float(np.finfo(np.float32).max)  # models train in float32: larger values overflow to inf


@dataclass
class FileLabel:
    """Adds a column whose value comes from each file's name (e.g. per-country files as scenarios).

    ``pattern`` is a regular expression with one group, searched in the file name (``match: name``) or in the
    file's path relative to the data root (``match: path``, for per-country folders such as
    ``AliExpress_NL/train.csv``).
    """

    column: str
    pattern: str
    match: Literal["name", "path"] = "name"


@dataclass
class FileSpec:
    """One logical table: a file, a folder of files, or a glob, read in chunks.

    Args:
        path: file, folder (all ``*.csv``/``*.parquet`` inside, sorted) or glob, relative to the data root.
        format: ``csv``, ``parquet`` or ``auto`` (from the extension).
        delimiter: CSV field separator; one character, or a longer one (MovieLens-1M's ``::``, UCI Census's
            ``", "``), which is read as one field separator.
        header: whether CSV files start with a header row.
        columns: column names for header-less CSV files.
        encoding: CSV text encoding.
        file_label: derive a column from each file's name.
        extra_columns: ``error`` refuses files with columns the spec does not use (catches files that do not
            match their spec); ``allow`` ignores them.
        quoting: whether ``"`` quotes values (RFC 4180); ``false`` for files whose text holds bare quotes
            (MovieLens's ``.dat`` files).
    """

    path: str
    format: Literal["auto", "csv", "parquet"] = "auto"
    delimiter: str = ","
    header: bool = True
    columns: Optional[List[str]] = None
    encoding: str = "utf-8"
    file_label: Optional[FileLabel] = None
    extra_columns: Literal["allow", "error"] = "allow"
    quoting: bool = True


@dataclass
class JoinSpec:
    """A side table loaded in memory and joined to each chunk by key (a left join that must match)."""

    path: str
    on: str
    format: Literal["auto", "csv", "parquet"] = "auto"
    delimiter: str = ","
    header: bool = True
    columns: Optional[List[str]] = None
    encoding: str = "utf-8"
    quoting: bool = True

    def file_spec(self) -> FileSpec:
        return FileSpec(
            self.path, self.format, self.delimiter, self.header, self.columns, self.encoding, quoting=self.quoting
        )


@dataclass
class DerivedSpec:
    """A column computed from others, vectorised, in spec order.

    ops:
        ``greater``: ``column > value`` as 0/1.
        ``in``: whether ``column`` is one of ``values`` as 0/1 (text compared as text, numbers as numbers; e.g.
        Census-Income's ``income`` is ``50000+.``).
        ``bucketize``: index of the bucket of ``column`` between ``boundaries`` (``x < b0`` is 0).
        ``first_nonzero``: index of the first non-zero among ``columns`` (``len(columns)`` when none).
        ``cross``: a 64-bit hash of the values of ``columns`` together (a crossed feature for wide models).
    """

    name: str
    op: Literal["greater", "in", "bucketize", "first_nonzero", "cross"]
    column: Optional[str] = None
    columns: List[str] = field(default_factory=list)
    value: Optional[float] = None
    values: List[Any] = field(default_factory=list)
    boundaries: List[float] = field(default_factory=list)


@dataclass
class FilterSpec:
    """Keeps the rows whose ``column`` passes every condition given (applied before anything is encoded; the
    fit pass logs how many rows each file set dropped).

    Conditions: ``in`` / ``not_in`` a list of values, the comparisons ``eq``, ``ne``, ``lt``, ``le``, ``gt``,
    ``ge`` against a value, and ``not_null``. Numbers compare as numbers (a cell that is not a number is an
    error naming its row), text as text. A missing value passes only ``not_in`` and ``ne``.

    Example::

        filter: {column: tab, in: [0, 1, 2, 4, 6]}
        filter: [{column: play_time_ms, gt: 0}, {column: user_id, not_null: true}]
    """

    column: str
    is_in: Optional[List[Any]] = field(default=None, metadata={"key": "in"})
    not_in: Optional[List[Any]] = None
    eq: Optional[Any] = None
    ne: Optional[Any] = None
    lt: Optional[Any] = None
    le: Optional[Any] = None
    gt: Optional[Any] = None
    ge: Optional[Any] = None
    not_null: bool = False

    def conditions(self) -> List[Tuple[str, Any]]:
        """The (condition, operand) pairs given, in declaration order (``not_null`` has operand None)."""
        out = [(k, getattr(self, "is_in" if k == "in" else k)) for k in FILTER_CONDITIONS[:-1]]
        out = [(k, v) for k, v in out if v is not None]
        return out + ([("not_null", None)] if self.not_null else [])


FILTER_CONDITIONS = ("in", "not_in", "eq", "ne", "lt", "le", "gt", "ge", "not_null")


@dataclass
class SourcesSpec:
    """File sets per split (see the module docstring): ``train`` is the main file set, ``valid`` and ``test``
    are whole splits."""

    train: Optional[FileSpec] = None
    valid: Optional[FileSpec] = None
    test: Optional[FileSpec] = None


@dataclass
class SparseSpec:
    """A sparse feature and its id-encoding policy (see the module docstring)."""

    name: str
    column: Optional[str] = None
    group: FeatureGroup = "context"
    encoding: Literal["vocab", "hash", "identity"] = "vocab"
    num_embeddings: Optional[int] = None
    oov: Literal["bucket", "error"] = "bucket"
    min_count: int = 1
    multi_hot: bool = False
    separator: str = "|"
    pooling: Pooling = "sum"
    embedding_dim: Optional[int] = None
    table: Optional[str] = None
    dtype: Literal["auto", "int", "string"] = "auto"

    @property
    def source_column(self) -> str:
        return self.column or self.name


@dataclass
class DenseSpec:
    """A numeric feature: ``transform`` is fitted on the training split; ``fill`` replaces NaN/missing values
    (when ``fill`` is not given, a NaN or infinite value is an error); ``clip_min`` raises smaller values to it
    before the transform (Criteo's ``I2`` holds -1..-3: ``clip_min: 0`` before ``log1p``)."""

    name: str
    column: Optional[str] = None
    transform: Literal["none", "log1p", "standardize", "log1p_standardize"] = "none"
    fill: Optional[float] = None
    clip_min: Optional[float] = None

    @property
    def source_column(self) -> str:
        return self.column or self.name


@dataclass
class TaskSpec:
    """A label column and its task (see :class:`recsys.schema.Task`); ``min_value``/``max_value`` bound a
    regression label's domain (a negative stay time is an error). The loss's own label domain (0/1 for binary
    tasks, >= 0 for ``log_mse``) is checked too (:data:`recsys.task_losses.TASK_LOSSES`)."""

    name: str
    column: Optional[str] = None
    kind: TaskKind = "binary"
    depends_on: Optional[str] = None
    loss: RegressionLoss = "mse"
    weight: float = 1.0
    eval_threshold: Optional[float] = None
    min_value: Optional[float] = None
    max_value: Optional[float] = None

    @property
    def source_column(self) -> str:
        return self.column or self.name


@dataclass
class CategorySpec:
    """A categorical column with a closed set of values (scenario, evaluation groups).

    Either ``values`` lists the raw values in index order (an undeclared value is an error), or ``num`` says
    the column already holds indices ``0..num-1``. ``names`` are display names.
    """

    column: str
    values: Optional[List[Any]] = None
    num: Optional[int] = None
    names: Optional[List[str]] = None

    def size(self) -> int:
        return len(self.values) if self.values is not None else int(self.num or 0)

    def display_names(self) -> List[str]:
        if self.names:
            return list(self.names)
        if self.values is not None:
            return [str(v) for v in self.values]
        return [str(i) for i in range(self.size())]


@dataclass
class HistorySpec:
    """Per-row statistics of the user's strictly earlier training labels (``Batch.history``), for models that
    learn from a user's past (see :mod:`recsys.data.history`). Needs ``user`` and ``time``.

    Args:
        tasks: tasks to summarise (default: all); a regression task needs ``eval_threshold`` (its positives).
        buckets: time buckets each user's state keeps at most (memory: one entry per user and bucket with
            events, whatever the number of rows); exact when the training rows have at most this many distinct
            timestamps, otherwise a row misses the earlier events of its own bucket when the user also has a
            later event there (never leaks; see :mod:`recsys.data.history`).
    """

    tasks: Optional[List[str]] = None
    buckets: int = 64


@dataclass
class DatasetSpec:
    """The whole mapping from files to the schema.

    Args:
        name: dataset name (shown in reports).
        root: data root, relative to the spec file, that file paths are relative to.
        source: the rows (the main file set; ``sources.train`` is another name for it).
        sources: file sets per split (``train``, ``valid``, ``test``; see the module docstring).
        test_source: separate test rows (the same as ``sources.test``).
        joins: side tables joined by key.
        filter: conditions rows must meet to be used at all (see :class:`FilterSpec`).
        derived: computed columns.
        sparse, dense, tasks: features and labels.
        scenario: the scenario column (absent: one scenario).
        user: name of the sparse feature holding the user id (GAUC, per-user state).
        time: column with a timestamp (time splits, per-user order): numbers (in any unit, used as they are),
            Parquet dates and timestamps, or text: ISO 8601 dates and datetimes (``2007-07-10``,
            ``2014-10-21 13:00:00``) or any ``time_format``. Naive datetimes are read as they are (no time zone is
            assumed or applied); a UTC offset in the text (``+02:00``, ``%z``) is converted to UTC.
        time_format: a ``strptime`` format of text in the time column (Avazu's ``hour``: ``"%y%m%d%H"``).
        weight: column with sample weights.
        row_id: column with a stable instance id (default: the global row number).
        oracle: task name -> column with the true probability (synthetic data).
        eval_groups: extra columns evaluation reports metrics by (e.g. a lifecycle stage).
        history: also compute each row's label history (``Batch.history``; one more pass over the files).
    """

    name: str
    source: Optional[FileSpec] = None
    root: str = "."
    sources: Optional[SourcesSpec] = None
    test_source: Optional[FileSpec] = None
    joins: List[JoinSpec] = field(default_factory=list)
    filter: List[FilterSpec] = field(default_factory=list)
    derived: List[DerivedSpec] = field(default_factory=list)
    sparse: List[SparseSpec] = field(default_factory=list)
    dense: List[DenseSpec] = field(default_factory=list)
    tasks: List[TaskSpec] = field(default_factory=list)
    scenario: Optional[CategorySpec] = None
    user: Optional[str] = None
    time: Optional[str] = None
    time_format: Optional[str] = None
    weight: Optional[str] = None
    row_id: Optional[str] = None
    oracle: Dict[str, str] = field(default_factory=dict)
    eval_groups: Dict[str, CategorySpec] = field(default_factory=dict)
    history: Optional[HistorySpec] = None
    # where the spec file lives (relative roots resolve against it)
    spec_dir: str = field(default=".", metadata={"internal": True})

    def data_root(self, override: Optional[str] = None) -> str:
        if override:
            return override
        return self.root if os.path.isabs(self.root) else os.path.normpath(os.path.join(self.spec_dir, self.root))

    @property
    def main_source(self) -> FileSpec:
        """The main file set (``source`` or ``sources.train``), which the split rule divides."""
        main = self.source or (self.sources.train if self.sources else None)
        assert main is not None, "validate() refuses a spec without one"
        return main

    def split_sources(self) -> List[Tuple[Optional[int], FileSpec]]:
        """(split index, files) of every file set: index None for the main file set, 1 for ``valid``, 2 for
        ``test`` (the indices of :data:`recsys.data.splits.SPLITS`)."""
        out: List[Tuple[Optional[int], FileSpec]] = [(None, self.main_source)]
        valid = self.sources.valid if self.sources else None
        test = self.test_source or (self.sources.test if self.sources else None)
        out += [(1, valid)] if valid is not None else []
        return out + ([(2, test)] if test is not None else [])

    def validate(self, source: str) -> None:
        given = [
            k
            for k, v in (("source", self.source), ("sources.train", self.sources.train if self.sources else None))
            if v is not None
        ]
        if len(given) != 1:
            raise ConfigError(
                f"{source}: give the rows in exactly one of 'source' or 'sources.train'"
                + (" (both are given)" if given else "")
            )
        if self.test_source is not None and self.sources is not None and self.sources.test is not None:
            raise ConfigError(f"{source}: give the test rows in one of 'test_source' or 'sources.test', not both")
        for i, f in enumerate(self.filter):
            if not f.conditions():
                raise ConfigError(
                    f"{source}: 'filter[{i}]' on '{f.column}' needs a condition (one of {', '.join(FILTER_CONDITIONS)})"
                )
            for key in ("in", "not_in"):
                values = getattr(f, "is_in" if key == "in" else key)
                if values is not None and not values:
                    raise ConfigError(f"{source}: 'filter[{i}].{key}' on '{f.column}' must list values")
            if len({_is_number(v) for _, v in f.conditions() for v in _operands(v)}) > 1:
                raise ConfigError(f"{source}: 'filter[{i}]' on '{f.column}' mixes numbers and text")
        sparse_names = [s.name for s in self.sparse]
        if len(set(sparse_names)) != len(sparse_names):
            raise ConfigError(f"{source}: sparse feature names repeat")
        if not self.sparse:
            raise ConfigError(f"{source}: at least one sparse feature is needed")
        if not self.tasks:
            raise ConfigError(f"{source}: at least one task is needed")
        task_names = [t.name for t in self.tasks]
        for i, s in enumerate(self.sparse):
            if s.encoding in ("hash", "identity") and s.num_embeddings is None:
                raise ConfigError(f"{source}: sparse '{s.name}': encoding '{s.encoding}' needs num_embeddings")
            if s.num_embeddings is not None and s.num_embeddings < 1:
                raise ConfigError(
                    f"{source}: 'sparse[{i}].num_embeddings' of '{s.name}' must be positive, got {s.num_embeddings}"
                )
            if not s.separator:
                raise ConfigError(
                    f"{source}: 'sparse[{i}].separator' of '{s.name}' must not be empty (a multi-hot "
                    "cell is split at it)"
                )
            if s.multi_hot and s.encoding == "identity" and s.dtype == "string":
                raise ConfigError(f"{source}: sparse '{s.name}': identity ids must be integers")
        for i, dense in enumerate(self.dense):
            if dense.fill is None:
                continue
            if not math.isfinite(dense.fill) or abs(dense.fill) > FLOAT32_MAX:
                raise ConfigError(
                    f"{source}: 'dense[{i}].fill' of '{dense.name}' must be a finite float32 number, got "
                    f"{dense.fill} (it replaces missing and non-finite values)"
                )
            if dense.transform.startswith("log1p") and dense.fill <= -1:
                raise ConfigError(
                    f"{source}: 'dense[{i}].fill' of '{dense.name}' is {dense.fill:g}, but the "
                    f"'{dense.transform}' transform needs values > -1"
                )
        names = {
            None: "source" if self.source else "sources.train",
            1: "sources.valid",
            2: "test_source" if self.test_source else "sources.test",
        }
        files = [(names[split], fs) for split, fs in self.split_sources()]
        for key, fs in files + [(f"joins[{i}]", j) for i, j in enumerate(self.joins)]:
            _check_file_options(source, key, fs)
        for t in self.tasks:
            if t.depends_on is not None and t.depends_on not in task_names:
                raise ConfigError(f"{source}: task '{t.name}': depends_on '{t.depends_on}' is not a task")
        if self.user is not None and self.user not in sparse_names:
            raise ConfigError(f"{source}: 'user' must name a sparse feature, got '{self.user}'")
        for name in self.oracle:
            if name not in task_names:
                raise ConfigError(f"{source}: oracle '{name}' is not a task")
        for where, cat in ([("scenario", self.scenario)] if self.scenario else []) + [
            (f"eval_groups.{k}", v) for k, v in self.eval_groups.items()
        ]:
            if (cat.values is None) == (cat.num is None):
                raise ConfigError(f"{source}: '{where}' needs exactly one of 'values' or 'num'")
            repeated = _first_repeat([str(v) for v in cat.values or []])
            if repeated is not None:
                raise ConfigError(f"{source}: '{where}.values' declares {repeated!r} twice")
            if cat.num is not None and cat.num < 1:
                raise ConfigError(f"{source}: '{where}.num' must be positive, got {cat.num}")
            if cat.names is not None and len(cat.names) != cat.size():
                raise ConfigError(f"{source}: '{where}.names' must have one name per value")
        if self.history is not None:
            if self.user is None or self.time is None:
                raise ConfigError(f"{source}: 'history' needs 'user' and 'time'")
            if self.history.buckets < 1:
                raise ConfigError(f"{source}: 'history.buckets' must be positive, got {self.history.buckets}")
            for name in self.history.tasks if self.history.tasks is not None else task_names:
                if name not in task_names:
                    raise ConfigError(f"{source}: history task '{name}' is not a task")
                task = next(t for t in self.tasks if t.name == name)
                if task.kind == "regression" and task.eval_threshold is None:
                    raise ConfigError(
                        f"{source}: history task '{name}' is a regression task without "
                        "'eval_threshold' (which defines its positives)"
                    )
        for i, d in enumerate(self.derived):
            if d.op in ("greater", "bucketize") and not d.column:
                raise ConfigError(f"{source}: derived '{d.name}': op '{d.op}' needs 'column'")
            if d.op == "in" and (not d.column or not d.values):
                raise ConfigError(f"{source}: derived '{d.name}': op 'in' needs 'column' and 'values'")
            if d.op == "greater" and d.value is None:
                raise ConfigError(f"{source}: derived '{d.name}': op 'greater' needs 'value'")
            if d.op == "bucketize" and not d.boundaries:
                raise ConfigError(f"{source}: derived '{d.name}': op 'bucketize' needs 'boundaries'")
            if d.op == "bucketize" and any(b >= a for a, b in zip(d.boundaries[1:], d.boundaries)):
                raise ConfigError(
                    f"{source}: 'derived[{i}].boundaries' of '{d.name}' must increase, got {d.boundaries}"
                )
            if d.op in ("first_nonzero", "cross") and len(d.columns) < (1 if d.op == "first_nonzero" else 2):
                raise ConfigError(f"{source}: derived '{d.name}': op '{d.op}' needs 'columns'")


def _check_file_options(source: str, key: str, fs: Any) -> None:
    """Options of a :class:`FileSpec` or :class:`JoinSpec` that pyarrow would otherwise refuse with a traceback
    (or, for repeated names, read ambiguously)."""
    if not fs.delimiter or "\n" in fs.delimiter or "\r" in fs.delimiter:
        raise ConfigError(
            f"{source}: '{key}.delimiter' must be one or more characters other than line breaks, got {fs.delimiter!r}"
        )
    try:
        codecs.lookup(fs.encoding)
    except LookupError:
        raise ConfigError(f"{source}: '{key}.encoding' is not a known text encoding: {fs.encoding!r}") from None
    repeated = _first_repeat(fs.columns or [])
    if repeated is not None:
        raise ConfigError(f"{source}: '{key}.columns' names column '{repeated}' twice")
    label = getattr(fs, "file_label", None)
    if label is not None:
        try:
            re.compile(label.pattern)
        except re.error as e:
            raise ConfigError(f"{source}: '{key}.file_label.pattern' is not a regular expression ({e})") from None


def _first_repeat(items: List[str]) -> Optional[str]:
    seen = set()
    for item in items:
        if item in seen:
            return item
        seen.add(item)
    return None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _operands(value: Any) -> List[Any]:
    return [] if value is None else list(value) if isinstance(value, list) else [value]


def merge_spec(base: Any, changes: Any, where: str) -> Any:
    """``changes`` (a partial spec) merged into ``base`` (raw spec data): mappings merge key by key, other values
    replace; a list of named entries (``sparse``, ``dense``, ``tasks``, ...) also takes ``{name or index:
    {key: value}}``, which changes that entry.

    Example::

        merge_spec({"sparse": [{"name": "user_id"}]}, {"sparse": {"user_id": {"embedding_dim": 8}}}, "data.spec")
        # {'sparse': [{'name': 'user_id', 'embedding_dim': 8}]}
    """
    if isinstance(base, dict) and isinstance(changes, dict):
        out = dict(base)
        for key, value in changes.items():
            out[key] = merge_spec(base[key], value, f"{where}.{key}") if key in base else value
        return out
    if isinstance(base, list) and isinstance(changes, dict):
        entries = list(base)
        names = [e.get("name") if isinstance(e, dict) else None for e in base]
        for key, value in changes.items():
            index = int(key) if isinstance(key, int) or str(key).isdigit() else -1  # ``--set`` keys are text
            if 0 <= index < len(base):
                i = index
            elif str(key) in [str(n) for n in names]:
                i = [str(n) for n in names].index(str(key))
            else:
                known = ", ".join(str(n) for n in names if n is not None) or f"indices 0..{len(base) - 1}"
                raise ConfigError(f"{where}.{key}: no such entry (entries: {known})")
            entries[i] = merge_spec(base[i], value, f"{where}.{key}")
        return entries
    return changes


def _filter_list(data: Dict[str, Any]) -> Dict[str, Any]:
    """``filter`` as a list (one condition may be written without the list around it)."""
    if isinstance(data.get("filter"), dict) and "column" in data["filter"]:
        return {**data, "filter": [data["filter"]]}
    return data


def load_spec(path: str, overrides: Optional[Dict[str, Any]] = None) -> DatasetSpec:
    """Read and check a dataset spec YAML, with ``overrides`` (a partial spec, see :func:`merge_spec`; a run
    config's ``data.spec_overrides``) merged in."""
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    source = path
    data = _filter_list(data)
    if overrides:
        data = merge_spec(data, _filter_list(overrides), "data.spec")
        source = f"{path} (with the data.spec overrides)"
    spec = from_dict(DatasetSpec, data, source=source)
    spec.spec_dir = os.path.dirname(os.path.abspath(path))
    spec.validate(source)
    return spec


def spec_of(cfg: "Config") -> DatasetSpec:
    """The dataset spec of a run config: ``data.spec`` with ``data.spec_overrides`` applied."""
    if not cfg.data.spec:
        raise ConfigError("config: 'data.spec' (path of a dataset spec YAML) is required")
    return load_spec(cfg.resolve(cfg.data.spec), cfg.data.spec_overrides)

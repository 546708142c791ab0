"""Dataset specs: a YAML file mapping the columns of CSV/Parquet files to the schema.

A spec says where the rows are (``source``, optional side tables to ``joins`` and separate ``test_source``),
which columns to compute (``derived``), and how each column becomes a sparse feature (with its id-encoding
policy), a dense feature, a task label, the scenario, the user, time, weight or an evaluation group.

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
from typing import Any, Dict, List, Literal, Optional

import numpy as np

from recsys.config import from_dict, read_yaml
from recsys.errors import ConfigError
from recsys.schema import FeatureGroup, Pooling, RegressionLoss, TaskKind

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
        delimiter: CSV field separator.
        header: whether CSV files start with a header row.
        columns: column names for header-less CSV files.
        encoding: CSV text encoding.
        file_label: derive a column from each file's name.
        extra_columns: ``error`` refuses files with columns the spec does not use (catches files that do not
            match their spec); ``allow`` ignores them.
    """

    path: str
    format: Literal["auto", "csv", "parquet"] = "auto"
    delimiter: str = ","
    header: bool = True
    columns: Optional[List[str]] = None
    encoding: str = "utf-8"
    file_label: Optional[FileLabel] = None
    extra_columns: Literal["allow", "error"] = "allow"


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

    def file_spec(self) -> FileSpec:
        return FileSpec(self.path, self.format, self.delimiter, self.header, self.columns, self.encoding)


@dataclass
class DerivedSpec:
    """A column computed from others, vectorised, in spec order.

    ops:
        ``greater``: ``column > value`` as 0/1.
        ``bucketize``: index of the bucket of ``column`` between ``boundaries`` (``x < b0`` is 0).
        ``first_nonzero``: index of the first non-zero among ``columns`` (``len(columns)`` when none).
        ``cross``: a 64-bit hash of the values of ``columns`` together (a crossed feature for wide models).
    """

    name: str
    op: Literal["greater", "bucketize", "first_nonzero", "cross"]
    column: Optional[str] = None
    columns: List[str] = field(default_factory=list)
    value: Optional[float] = None
    boundaries: List[float] = field(default_factory=list)


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
    (when ``fill`` is not given, a NaN or infinite value is an error)."""

    name: str
    column: Optional[str] = None
    transform: Literal["none", "log1p", "standardize", "log1p_standardize"] = "none"
    fill: Optional[float] = None

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
    """

    tasks: Optional[List[str]] = None


@dataclass
class DatasetSpec:
    """The whole mapping from files to the schema.

    Args:
        name: dataset name (shown in reports).
        root: data root, relative to the spec file, that file paths are relative to.
        source: the rows.
        test_source: separate test rows (the split then only carves validation out of ``source``).
        joins: side tables joined by key.
        derived: computed columns.
        sparse, dense, tasks: features and labels.
        scenario: the scenario column (absent: one scenario).
        user: name of the sparse feature holding the user id (GAUC, per-user state).
        time: column with a timestamp (time splits, per-user order).
        weight: column with sample weights.
        row_id: column with a stable instance id (default: the global row number).
        oracle: task name -> column with the true probability (synthetic data).
        eval_groups: extra columns evaluation reports metrics by (e.g. a lifecycle stage).
        history: also compute each row's label history (``Batch.history``; one more pass over the files).
    """

    name: str
    source: FileSpec
    root: str = "."
    test_source: Optional[FileSpec] = None
    joins: List[JoinSpec] = field(default_factory=list)
    derived: List[DerivedSpec] = field(default_factory=list)
    sparse: List[SparseSpec] = field(default_factory=list)
    dense: List[DenseSpec] = field(default_factory=list)
    tasks: List[TaskSpec] = field(default_factory=list)
    scenario: Optional[CategorySpec] = None
    user: Optional[str] = None
    time: Optional[str] = None
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

    def validate(self, source: str) -> None:
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
                raise ConfigError(f"{source}: 'sparse[{i}].num_embeddings' of '{s.name}' must be positive, got "
                                  f"{s.num_embeddings}")
            if not s.separator:
                raise ConfigError(f"{source}: 'sparse[{i}].separator' of '{s.name}' must not be empty (a multi-hot "
                                  "cell is split at it)")
            if s.multi_hot and s.encoding == "identity" and s.dtype == "string":
                raise ConfigError(f"{source}: sparse '{s.name}': identity ids must be integers")
        for i, d in enumerate(self.dense):
            if d.fill is None:
                continue
            if not math.isfinite(d.fill) or abs(d.fill) > FLOAT32_MAX:
                raise ConfigError(f"{source}: 'dense[{i}].fill' of '{d.name}' must be a finite float32 number, got "
                                  f"{d.fill} (it replaces missing and non-finite values)")
            if d.transform.startswith("log1p") and d.fill <= -1:
                raise ConfigError(f"{source}: 'dense[{i}].fill' of '{d.name}' is {d.fill:g}, but the "
                                  f"'{d.transform}' transform needs values > -1")
        files = [("source", self.source)] + ([("test_source", self.test_source)] if self.test_source else [])
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
            for name in self.history.tasks if self.history.tasks is not None else task_names:
                if name not in task_names:
                    raise ConfigError(f"{source}: history task '{name}' is not a task")
                task = next(t for t in self.tasks if t.name == name)
                if task.kind == "regression" and task.eval_threshold is None:
                    raise ConfigError(f"{source}: history task '{name}' is a regression task without "
                                      "'eval_threshold' (which defines its positives)")
        for i, d in enumerate(self.derived):
            if d.op in ("greater", "bucketize") and not d.column:
                raise ConfigError(f"{source}: derived '{d.name}': op '{d.op}' needs 'column'")
            if d.op == "greater" and d.value is None:
                raise ConfigError(f"{source}: derived '{d.name}': op 'greater' needs 'value'")
            if d.op == "bucketize" and not d.boundaries:
                raise ConfigError(f"{source}: derived '{d.name}': op 'bucketize' needs 'boundaries'")
            if d.op == "bucketize" and any(b >= a for a, b in zip(d.boundaries[1:], d.boundaries)):
                raise ConfigError(f"{source}: 'derived[{i}].boundaries' of '{d.name}' must "
                                  f"increase, got {d.boundaries}")
            if d.op in ("first_nonzero", "cross") and len(d.columns) < (1 if d.op == "first_nonzero" else 2):
                raise ConfigError(f"{source}: derived '{d.name}': op '{d.op}' needs 'columns'")


def _check_file_options(source: str, key: str, fs: Any) -> None:
    """Options of a :class:`FileSpec` or :class:`JoinSpec` that pyarrow would otherwise refuse with a traceback
    (or, for repeated names, read ambiguously)."""
    if len(fs.delimiter) != 1:
        raise ConfigError(f"{source}: '{key}.delimiter' must be one character, got {fs.delimiter!r} (convert files "
                          "with a longer separator, such as MovieLens-1M's '::', first)")
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


def load_spec(path: str) -> DatasetSpec:
    """Read and check a dataset spec YAML."""
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    spec = from_dict(DatasetSpec, data, source=path)
    spec.spec_dir = os.path.dirname(os.path.abspath(path))
    spec.validate(path)
    return spec

"""Typed run configuration loaded from YAML, with ``--set a.b=c`` overrides.

Every section is a dataclass; unknown keys are rejected with the closest valid key suggested, values are
type-checked, and incompatible combinations are refused before any data is read. Model-specific options
(``model.params``) are checked against the model's own dataclass by the model registry.

Example::

    cfg = load_config("configs/wide_deep_synthetic.yaml", overrides=["train.epochs=2"])
    cfg.train.epochs  # 2
"""

import dataclasses
import datetime
import difflib
import math
import os
import re
import typing
from dataclasses import dataclass, field
from typing import Annotated, Any, Dict, List, Literal, Optional, Sequence, Type, TypeVar, Union, cast

import yaml

from recsys.errors import ConfigError
from recsys.schema import COMPUTE_KERNELS, GPU_COMPUTE_KERNELS, GPU_SHARDING_TYPES, SHARDING_TYPES, ComputeKernel

T = TypeVar("T")


# --- value ranges --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Range:
    """A numeric range checked when a config is loaded (``Annotated[int, Range(lo=1)]``).

    Args:
        lo, hi: bounds (None: unbounded).
        lo_open, hi_open: exclude the bound itself.
    """

    lo: Optional[float] = None
    hi: Optional[float] = None
    lo_open: bool = False
    hi_open: bool = False

    def contains(self, value: float) -> bool:
        if self.lo is not None and (value < self.lo or (self.lo_open and value == self.lo)):
            return False
        return self.hi is None or not (value > self.hi or (self.hi_open and value == self.hi))

    def describe(self) -> str:
        lo = "" if self.lo is None else f"{'>' if self.lo_open else '>='} {self.lo:g}"
        hi = "" if self.hi is None else f"{'<' if self.hi_open else '<='} {self.hi:g}"
        return " and ".join(x for x in (lo, hi) if x)


PositiveInt = Annotated[int, Range(lo=1)]
NonNegativeInt = Annotated[int, Range(lo=0)]
PositiveFloat = Annotated[float, Range(lo=0, lo_open=True)]
NonNegativeFloat = Annotated[float, Range(lo=0)]
Fraction = Annotated[float, Range(lo=0, hi=1, hi_open=True)]  # dropout, split shares: [0, 1)
Probability = Annotated[float, Range(lo=0, hi=1)]
Seed = Annotated[int, Range(lo=0, hi=2**63 - 1)]
Width = PositiveInt  # a layer width, a number of experts or heads


# --- sections ------------------------------------------------------------------------------------------------
@dataclass
class SplitConfig:
    """How rows are split into train/valid/test.

    ``random``: a seeded hash of the row id decides, so the split does not depend on chunking or rank.
    ``time``: the latest ``test`` fraction (by ``time`` column of the dataset) is test, the ``valid`` before it
    is validation; or give explicit ``valid_from``/``test_from`` cut points: numbers in the time column's own
    units, or ISO 8601 dates and datetimes (``2014-10-30``, ``2022-05-01T12:00``) for a time column of dates or
    datetimes (naive, like the column's; an offset such as ``+02:00`` is converted to UTC).

    A split the dataset spec gives files for (``sources.valid`` / ``sources.test``) is not carved out of the
    training files: its share here is not used.
    """

    kind: Literal["random", "time"] = "random"
    valid: Fraction = 0.1
    test: Fraction = 0.1
    seed: Seed = 42
    valid_from: Optional[Union[float, str]] = None
    test_from: Optional[Union[float, str]] = None


@dataclass
class SideColumnsConfig:
    """Per-row values joined to every split by row id and handed to models as ``batch.extras[name]``.

    Args:
        path: a Parquet or CSV file with the key column and the named columns (e.g. the shared-instance set that
            ``recsys ssim export`` writes).
        columns: columns to attach (float32; booleans become 0/1).
        key: the row-id column of the file (matches the dataset's ``row_id``).
        fill: the value of rows the file does not list.
    """

    path: str
    columns: List[str]
    key: str = "row_id"
    fill: float = 0.0


@dataclass
class DataConfig:
    """Where the data is and how it is batched.

    Args:
        spec: dataset spec YAML (a path in a config file is relative to that file; see :func:`load_config`).
        spec_overrides: keys of the dataset spec to change, as a partial spec merged into it (mappings merge, other
            values replace; a list of named entries such as ``sparse`` also takes ``{name or index: {key:
            value}}``). ``--set data.spec.KEY=VALUE`` on the command line sets ``data.spec_overrides.KEY``.
            Paths in it (``root``, ``...path``) are relative to the config file, or on the command line to the
            working directory. The run folder's ``spec.yaml`` holds the spec with them applied.
        path: data root the spec's file paths are relative to (defaults to the spec's ``root``).
        batch_size: training batch size per rank.
        eval_batch_size: evaluation batch size per rank (defaults to ``batch_size``).
        in_memory: materialise the encoded columns in memory (fast epochs); otherwise stream chunks from disk.
        chunk_rows: rows per read chunk.
        shuffle_buffer_chunks: when streaming, how many chunks are mixed before shuffling.
        max_rows: read at most this many rows (quick runs).
        scenarios: keep only the rows of these scenario indices (e.g. one model per scenario, the ST baseline);
            encoders are fitted on the kept training rows only.
        side_columns: per-row side columns joined by row id (``batch.extras``).
        decode_workers: threads that decode chunks of the files (the in-memory read, streams, evaluation
            passes); default: the cores this process may use, at most 4. Rows are the same for any number.
    """

    spec: str = ""
    spec_overrides: Dict[str, Any] = field(default_factory=dict)
    path: Optional[str] = None
    batch_size: PositiveInt = 4096
    eval_batch_size: Optional[PositiveInt] = None
    in_memory: bool = True
    chunk_rows: PositiveInt = 262144
    shuffle_buffer_chunks: PositiveInt = 4
    max_rows: Optional[PositiveInt] = None
    split: SplitConfig = field(default_factory=SplitConfig)
    scenarios: Optional[List[NonNegativeInt]] = None
    side_columns: List[SideColumnsConfig] = field(default_factory=list)
    decode_workers: Optional[PositiveInt] = None


@dataclass
class ModelConfig:
    """Which model and its options.

    Args:
        name: a name from the model registry (``recsys models`` lists them).
        embedding_dim: default embedding width for features whose spec gives none: any width >= 1 (FBGEMM's
            tables take multiples of 4; a table of another width is created at the next multiple of 4 and the
            model sees only the width asked for, see :class:`recsys.modules.sparse.SparseArch`).
        params: model-specific options, checked against the model's config dataclass.
    """

    name: str = "wide_deep"
    embedding_dim: PositiveInt = 16
    params: Dict[str, Any] = field(default_factory=dict)


@dataclass
class OptimizerConfig:
    """Dense-parameter optimizer (regular torch optimizer)."""

    name: Literal["adam", "adamw", "adagrad", "sgd"] = "adam"
    lr: PositiveFloat = 1e-3
    weight_decay: NonNegativeFloat = 0.0
    eps: PositiveFloat = 1e-8


@dataclass
class EmbeddingOptimizerConfig:
    """Embedding optimizer, fused into the FBGEMM backward (the gradient never materialises)."""

    name: Literal["rowwise_adagrad", "adagrad", "adam", "sgd"] = "rowwise_adagrad"
    lr: PositiveFloat = 0.05
    eps: PositiveFloat = 1e-8
    weight_decay: NonNegativeFloat = 0.0


@dataclass
class EarlyStoppingConfig:
    """Stop when the validation metric has not improved for ``patience`` evaluations.

    ``metric`` is a key of the evaluation report such as ``ctr/auc``, ``ctr/gauc`` or ``stay/rmse``.
    """

    metric: str = "auto"
    mode: Literal["max", "min", "auto"] = "auto"
    patience: PositiveInt = 2


@dataclass
class TrainConfig:
    """The training loop.

    Args:
        epochs: passes over the training split.
        max_steps: stop after this many steps in total (overrides epochs when reached first).
        seed: seeds model init and data order.
        eval_every_steps: validate every N steps (default: at the end of each epoch).
        log_every_steps: interval of the TensorBoard training scalars and of the loss beside the progress bar.
        grad_clip_norm: clip the dense gradients' norm (the fused embedding update has no gradient to clip).
        pipeline: ``sparse_dist`` overlaps input distribution with compute (TrainPipelineSparseDist);
            ``plain`` is a simple loop; ``auto`` picks ``sparse_dist`` on GPU.
        checkpoint_every_steps: also checkpoint every N steps (default: after each evaluation).
        keep_checkpoints: how many recent checkpoints to keep besides the best.
        progress: show progress: tqdm bars when stderr is a terminal, else a plain line every 30 s (see
            :mod:`recsys.console`).
    """

    epochs: PositiveInt = 1
    max_steps: Optional[PositiveInt] = None
    seed: Seed = 0
    dense_optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    embedding_optimizer: EmbeddingOptimizerConfig = field(default_factory=EmbeddingOptimizerConfig)
    task_weights: Dict[str, NonNegativeFloat] = field(default_factory=dict)
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    eval_every_steps: Optional[PositiveInt] = None
    log_every_steps: PositiveInt = 50
    grad_clip_norm: Optional[PositiveFloat] = None
    pipeline: Literal["auto", "sparse_dist", "plain"] = "auto"
    checkpoint_every_steps: Optional[PositiveInt] = None
    keep_checkpoints: PositiveInt = 2
    progress: bool = True


@dataclass
class TableShardingConfig:
    """Planner constraints for one table (see torchrec ParameterConstraints).

    Args:
        sharding_types: allowed sharding types of this table (default: ``sharding.sharding_types``).
        compute_kernels: allowed kernels (default: ``sharding.compute_kernel``).
        pooling_factor: expected ids per sample (the planner's cost model; default 1).
        min_partition: width of a column-wise shard (a multiple of 4; torchrec's default is 128, so narrower
            tables are not split unless this is set: ``embedding_dim: 16, min_partition: 8`` gives 2 shards).
    """

    sharding_types: List[str] = field(default_factory=list)
    compute_kernels: List[str] = field(default_factory=list)
    pooling_factor: Optional[PositiveFloat] = None
    min_partition: Optional[PositiveInt] = None


# the hardware a sharding plan describes (``auto``: the job's own device)
DeviceType = Literal["auto", "cpu", "h100", "h200"]


@dataclass
class ShardingConfig:
    """How DistributedModelParallel's planner may shard the embedding tables.

    Args:
        sharding_types: allowed types for every table (``table_wise``, ``column_wise``, ``table_column_wise``,
            ``row_wise``/``table_row_wise`` on GPU, ``data_parallel``).
        compute_kernel: ``fused`` (FBGEMM TBE with the optimizer in backward), ``dense`` (the same
            embedding optimizer, stepped after the backward; the only kernel of ``data_parallel`` tables), or on
            GPU ``fused_uvm_caching`` (table in host memory, an HBM cache of hot rows) and ``fused_uvm``.
        tables: per-table overrides.
        device_type: the hardware the planner's topology describes: ``auto`` (the job's own device: its
            real memory), ``h100`` (80 GB HBM per GPU), ``h200`` (141 GB) or ``cpu``; see
            :data:`recsys.train.sharding.DEVICES`.
        hbm_gb: device memory per rank the planner may use (GPU); default from ``device_type``.
        ddr_gb: host memory per rank the planner may use; default ``host_ddr_gb`` split over the host's ranks.
        host_ddr_gb: host memory per machine (default: this machine's, or the device type's preset).
        bounds_check: FBGEMM bounds-check mode (``fatal`` raises on an out-of-range id).
    """

    sharding_types: List[str] = field(default_factory=lambda: ["table_wise"])
    compute_kernel: ComputeKernel = "fused"
    tables: Dict[str, TableShardingConfig] = field(default_factory=dict)
    device_type: DeviceType = "auto"
    hbm_gb: Optional[PositiveFloat] = None
    ddr_gb: Optional[PositiveFloat] = None
    host_ddr_gb: Optional[PositiveFloat] = None
    bounds_check: Literal["fatal", "warning", "ignore", "none"] = "fatal"


@dataclass
class Config:
    """A whole run: data, model, training, sharding and where outputs go."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sharding: ShardingConfig = field(default_factory=ShardingConfig)
    run_dir: str = "runs/default"  # relative to the config file (or, from the command line, to the cwd)
    tensorboard: bool = True
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # folder of the YAML file; relative paths inside the config resolve against it first
    base_dir: str = field(default=".", metadata={"internal": True})

    def resolve(self, path: str) -> str:
        """A path from the config as an absolute path: :func:`load_config` has already made file and
        command-line paths absolute; a relative path set in code is relative to ``base_dir`` (the config file's
        folder, else the current directory)."""
        return path if os.path.isabs(path) else os.path.abspath(os.path.join(self.base_dir, path))


# --- generic typed loading -----------------------------------------------------------------------------------
def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Annotated:
        return _type_name(typing.get_args(tp)[0])
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin is typing.Union:
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is not None:
        return f"{getattr(origin, '__name__', str(origin))}[{', '.join(_type_name(a) for a in typing.get_args(tp))}]"
    return getattr(tp, "__name__", str(tp))


class _OutOfRange(ConfigError):
    """A value of the right type outside its :class:`Range`."""


def shown(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters, for one-line messages about arbitrary (even huge) values."""
    if isinstance(value, (list, tuple, dict)) and len(value) > 20:
        return f"<{type(value).__name__} of {len(value)} items>"
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _convert(tp: Any, value: Any, where: str, source: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)

    def bad() -> ConfigError:
        return ConfigError(f"{source}: '{where}' must be {_type_name(tp)}, got {shown(value)}")

    if tp is Any:
        return value
    if origin is Annotated:
        out = _convert(args[0], value, where, source)
        for rule in tp.__metadata__:
            if isinstance(rule, Range) and isinstance(out, (int, float)) and not rule.contains(out):
                raise _OutOfRange(f"{source}: '{where}' must be {rule.describe()}, got {shown(value)}")
        return out
    if origin is typing.Union:
        if value is None and type(None) in args:
            return None
        given = [a for a in args if a is not type(None)]
        if len(given) == 1 and dataclasses.is_dataclass(given[0]) and isinstance(value, dict):
            return _convert(given[0], value, where, source)  # its own errors name the key inside it
        for a in args:
            if a is type(None):
                continue
            try:
                return _convert(a, value, where, source)
            except _OutOfRange:
                raise  # the type fits, the value does not: say so rather than "must be int | None"
            except ConfigError:
                continue
        raise bad()
    if origin is Literal:
        if value in args:
            return value
        close = difflib.get_close_matches(str(value), [str(a) for a in args], n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"{source}: '{where}' must be one of {list(args)}, got {shown(value)}{hint}")
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise bad()
        return from_dict(tp, value, where=where, source=source)
    if origin in (list, List, Sequence, tuple):
        if not isinstance(value, (list, tuple)):
            raise bad()
        inner = args[0] if args else Any
        out = [_convert(inner, v, f"{where}[{i}]", source) for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin in (dict, Dict):
        if not isinstance(value, dict):
            raise bad()
        kt, vt = args if args else (Any, Any)
        return {_convert(kt, k, where, source): _convert(vt, v, f"{where}.{k}", source) for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad()
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise bad()
    if tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value) if abs(value) < 1e308 or isinstance(value, float) else math.inf
        elif isinstance(value, str):
            try:  # YAML 1.1 reads "1e-3" as a string
                number = float(value)
            except ValueError:
                pass
        if number is None:
            raise bad()
        if not math.isfinite(number):
            raise _OutOfRange(f"{source}: '{where}' must be a finite number, got {shown(value)}")
        return number
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, datetime.date):  # YAML reads an unquoted 2014-10-30 as a date
            return value.isoformat()
        raise bad()
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise bad()


def from_dict(cls: Type[T], data: Dict[str, Any], where: str = "", source: str = "config") -> T:
    """Build dataclass ``cls`` from ``data``, rejecting unknown keys (with a suggestion) and wrong types."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: '{where or 'top level'}' must be a mapping, got {shown(data)}")
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = {_key_of(f): f for f in dataclasses.fields(cast(Any, cls)) if not f.metadata.get("internal")}
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.5)
            hint = f"; did you mean '{close[0]}'?" if close else f"; valid keys: {', '.join(fields)}"
            raise ConfigError(f"{source}: unknown key '{path}'{hint}")
        kwargs[fields[key].name] = _convert(hints[fields[key].name], value, path, source)
    missing = [
        n
        for n, f in fields.items()
        if f.name not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"{source}: missing key '{(where + '.') if where else ''}{missing[0]}'")
    return cls(**kwargs)


def _key_of(f: "dataclasses.Field[Any]") -> str:
    """A field's key in YAML: its name, or ``metadata["key"]`` for keys that are Python keywords (``in``)."""
    return str(f.metadata.get("key", f.name))


def to_dict(obj: Any) -> Any:
    """A dataclass config as plain YAML-able data (internal fields left out)."""
    if dataclasses.is_dataclass(obj):
        return {
            _key_of(f): to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj) if not f.metadata.get("internal")
        }
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


MAX_YAML_NODES = 100_000  # after alias expansion; real configs and specs have a few hundred


class _Loader(yaml.SafeLoader):
    """A safe loader with YAML 1.2 scalars (only true/false are booleans, so a key ``on:`` stays a string;
    ``1e-3`` is a float), no duplicate keys, and a cap on the size of the document after alias expansion (a
    1 KB "billion laughs" file must not become gigabytes of lists)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> Dict[Any, Any]:
        seen = set()
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {shown(key)} (each key may appear once)", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _expanded_size(node: yaml.Node, memo: Dict[int, int]) -> int:
    """Nodes in the document once every alias is expanded (memoised, so linear in the file's size)."""
    known = memo.get(id(node))
    if known is not None:
        return known
    memo[id(node)] = 1  # cycles (recursive anchors) count once; construction refuses them anyway
    size = 1
    if isinstance(node, yaml.SequenceNode):
        size += sum(_expanded_size(child, memo) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        size += sum(_expanded_size(k, memo) + _expanded_size(v, memo) for k, v in node.value)
    memo[id(node)] = size
    return size


_Loader.yaml_implicit_resolvers = {
    k: [(tag, rx) for tag, rx in v if tag != "tag:yaml.org,2002:bool"]
    for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def parse_yaml(text: str) -> Any:
    """Parse YAML text safely (no object construction, no duplicate keys, bounded alias expansion) with YAML 1.2
    booleans."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        size = _expanded_size(node, {})
        if size > MAX_YAML_NODES:
            raise yaml.YAMLError(
                f"the document expands to {size:,} values through aliases (at most "
                f"{MAX_YAML_NODES:,}); is it an alias bomb?"
            )
        return loader.construct_document(node)
    finally:
        loader.dispose()


def read_yaml(path: str) -> Any:
    """Safely load a YAML file, with one-line errors naming the file and the line."""
    if os.path.isdir(path):
        raise ConfigError(f"{path}: is a folder, not a YAML file")
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ConfigError(
            f"{path}: line {line}: not UTF-8 text (byte 0x{raw[e.start]:02x}); save it as UTF-8"
        ) from None
    try:
        return parse_yaml(text)
    except RecursionError:
        raise ConfigError(f"{path}: invalid YAML (nested too deeply)") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{path}:{where}: invalid YAML ({problem})") from None


SPEC_PREFIX = "data.spec."  # ``--set data.spec.KEY=VALUE`` sets a key of the dataset spec


def apply_overrides(data: Dict[str, Any], overrides: Sequence[str], source: str = "--set") -> Dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (values parsed as YAML) to a raw config mapping; ``data.spec.KEY=value``
    goes to ``data.spec_overrides.KEY`` (a key of the dataset spec, see :class:`DataConfig`)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"{source}: '{item}' is not of the form key=value")
        key, raw = item.split("=", 1)
        try:
            value = parse_yaml(raw) if raw != "" else ""
        except yaml.YAMLError:
            raise ConfigError(f"{source}: value of '{key}' is not valid YAML: {raw!r}") from None
        node = data
        key = key.strip()
        if key.startswith(SPEC_PREFIX):
            key = "data.spec_overrides." + key[len(SPEC_PREFIX) :]
        parts = key.split(".")
        for p in parts[:-1]:
            child = node.get(p)
            if child is None:
                child = node[p] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"{source}: '{key}': '{p}' is not a section")
            node = child
        node[parts[-1]] = value
    return data


def _path_slots(data: Dict[str, Any]) -> List[Any]:
    """(mapping, key) of every path-valued key of a raw config: data.spec, data.path, data.side_columns[].path,
    run_dir, and in data.spec_overrides every ``root`` and ``path`` key."""
    slots: List[Any] = [(data, "run_dir")]
    section = data.get("data")
    if isinstance(section, dict):
        slots += [(section, "spec"), (section, "path")]
        side = section.get("side_columns")
        if isinstance(side, list):
            slots += [(entry, "path") for entry in side if isinstance(entry, dict)]
        slots += _spec_path_slots(section.get("spec_overrides"))
    return slots


def _spec_path_slots(tree: Any) -> List[Any]:
    """(mapping, key) of the ``root`` and ``path`` keys anywhere in a (partial) dataset spec."""
    slots: List[Any] = []
    if isinstance(tree, dict):
        slots += [(tree, key) for key in ("root", "path") if key in tree]
        for value in tree.values():
            slots += _spec_path_slots(value)
    elif isinstance(tree, list):
        for value in tree:
            slots += _spec_path_slots(value)
    return slots


def absolutize_paths(data: Dict[str, Any], base: str) -> Dict[str, Any]:
    """Make the relative paths of a raw config absolute against ``base`` (in place); non-strings are left for
    type checking."""
    for mapping, key in _path_slots(data):
        value = mapping.get(key)
        if isinstance(value, str) and value and not os.path.isabs(value):
            mapping[key] = os.path.normpath(os.path.join(base, os.path.expanduser(value)))
    return data


def load_config(path: Optional[str] = None, overrides: Sequence[str] = ()) -> Config:
    """Load a run config from YAML (or defaults when ``path`` is None) and apply overrides.

    Paths written in the file (``data.spec``, ``data.path``, ``data.side_columns[].path``, ``run_dir``, and the
    ``root`` and ``path`` keys of ``data.spec_overrides``) are relative to the file's folder; paths given on the
    command line (overrides, ``--data``, ``--run-dir``) are relative to the current directory. The loaded config
    holds absolute paths only. (Inside a dataset spec, ``root`` is relative to the spec file and the files'
    paths to the data root: see :mod:`recsys.data.spec`.)
    """
    data: Dict[str, Any] = {}
    if path is not None:
        loaded = read_yaml(path)
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping")
        data = absolutize_paths(loaded, os.path.dirname(os.path.abspath(path)))
    data = absolutize_paths(apply_overrides(data, overrides), os.getcwd())
    cfg = from_dict(Config, data, source=path or "config")
    cfg.base_dir = os.path.dirname(os.path.abspath(path)) if path else os.getcwd()
    validate_config(cfg, source=path or "config")
    return cfg


def check_config(cfg: Config, source: str = "config") -> None:
    """The checks :func:`load_config` makes (types, ranges, unknown values, cross-section rules), for a config
    built in code: the same one-line :class:`ConfigError` naming the key.

    Example::

        cfg = Config(model=ModelConfig(name="dnn", params={"hidden": [64]}), run_dir="runs/dnn")
        check_config(cfg)      # the Trainer calls it too
    """
    from_dict(Config, to_dict(cfg), source=source)
    validate_config(cfg, source)


def validate_config(cfg: Config, source: str = "config") -> None:
    """Checks that span sections; data-dependent checks happen once the schema is known."""
    if cfg.data.batch_size < 1:
        raise ConfigError(f"{source}: 'data.batch_size' must be >= 1")
    if not 0 <= cfg.data.split.valid < 1 or not 0 <= cfg.data.split.test < 1:
        raise ConfigError(f"{source}: 'data.split.valid' and 'data.split.test' must be fractions in [0, 1)")
    if cfg.data.split.valid + cfg.data.split.test >= 1:
        raise ConfigError(f"{source}: 'data.split.valid' + 'data.split.test' must leave rows for training")
    for key in ("valid_from", "test_from"):
        cut = getattr(cfg.data.split, key)
        if isinstance(cut, str):
            try:
                datetime.datetime.fromisoformat(cut)
            except ValueError:
                raise ConfigError(
                    f"{source}: 'data.split.{key}' must be a number (in the time column's units) or "
                    f"an ISO 8601 date or datetime such as '2014-10-30', got {cut!r}"
                ) from None
    if cfg.train.epochs < 1:
        raise ConfigError(f"{source}: 'train.epochs' must be >= 1")
    valid_types = set(SHARDING_TYPES)
    for where, types in [("sharding.sharding_types", cfg.sharding.sharding_types)] + [
        (f"sharding.tables.{t}.sharding_types", c.sharding_types) for t, c in cfg.sharding.tables.items()
    ]:
        for st in types:
            if st not in valid_types:
                close = difflib.get_close_matches(st, sorted(valid_types), n=1)
                hint = f"; did you mean '{close[0]}'?" if close else ""
                raise ConfigError(f"{source}: '{where}' has unknown sharding type '{st}'{hint}")
    valid_kernels = set(COMPUTE_KERNELS)
    for name, c in cfg.sharding.tables.items():
        for kernel in c.compute_kernels:
            if kernel not in valid_kernels:
                close = difflib.get_close_matches(kernel, sorted(valid_kernels), n=1)
                hint = f"; did you mean '{close[0]}'?" if close else f"; kernels: {sorted(valid_kernels)}"
                raise ConfigError(
                    f"{source}: 'sharding.tables.{name}.compute_kernels' has unknown kernel '{kernel}'{hint}"
                )
        if c.min_partition is not None and (c.min_partition < 4 or c.min_partition % 4):
            raise ConfigError(
                f"{source}: 'sharding.tables.{name}.min_partition' must be a positive multiple of 4 "
                f"(FBGEMM), got {c.min_partition}"
            )
    if cfg.sharding.ddr_gb is not None and cfg.sharding.host_ddr_gb is not None:
        raise ConfigError(f"{source}: give 'sharding.ddr_gb' (per rank) or 'sharding.host_ddr_gb' (per host), not both")
    for key in ("hbm_gb", "ddr_gb", "host_ddr_gb"):
        value = getattr(cfg.sharding, key)
        if value is not None and value <= 0:
            raise ConfigError(f"{source}: 'sharding.{key}' must be > 0, got {value}")
    if cfg.device == "cpu":  # under "auto" the device is not known yet: the trainer checks once it is
        check_device_support(cfg.sharding, "cpu", source)


def check_device_support(sharding: ShardingConfig, device_type: str, source: str = "config") -> None:
    """Refuse sharding types and compute kernels that ``device_type`` (``cpu`` or ``cuda``) cannot run: row-wise
    sharding needs NCCL, the UVM kernels CUDA. Nothing is probed: :func:`validate_config` calls it for
    ``device: cpu`` and the trainer with the device it runs on.

    Example::

        check_device_support(cfg.sharding, trainer.device.type)
    """
    if device_type != "cpu":
        return
    gpu_only = set(GPU_SHARDING_TYPES) & (
        set(sharding.sharding_types) | {s for c in sharding.tables.values() for s in c.sharding_types}
    )
    if gpu_only:
        raise ConfigError(
            f"{source}: sharding type(s) {sorted(gpu_only)} need CUDA/NCCL; on CPU use table_wise, "
            "column_wise, table_column_wise or data_parallel"
        )
    uvm = set(GPU_COMPUTE_KERNELS) & (
        {sharding.compute_kernel} | {k for c in sharding.tables.values() for k in c.compute_kernels}
    )
    if uvm:
        raise ConfigError(f"{source}: compute kernel(s) {sorted(uvm)} need CUDA; on CPU use fused or dense")

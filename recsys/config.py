"""Typed run configuration loaded from YAML, with ``--set a.b=c`` overrides.

Every section is a dataclass; unknown keys are rejected with the closest valid key suggested, values are
type-checked, and incompatible combinations are refused before any data is read. Model-specific options
(``model.params``) are checked against the model's own dataclass by the model registry.

Example::

    cfg = load_config("configs/wide_deep_synthetic.yaml", overrides=["train.epochs=2"])
    cfg.train.epochs  # 2
"""

import dataclasses
import difflib
import os
import re
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, List, Literal, Optional, Sequence, Type, TypeVar

import yaml

from recsys.errors import ConfigError

T = TypeVar("T")


# --- sections ------------------------------------------------------------------------------------------------
@dataclass
class SplitConfig:
    """How rows are split into train/valid/test.

    ``random``: a seeded hash of the row id decides, so the split does not depend on chunking or rank.
    ``time``: the latest ``test`` fraction (by ``time`` column of the dataset) is test, the ``valid`` before it
    is validation; or give explicit ``valid_from``/``test_from`` timestamps.
    """

    kind: Literal["random", "time"] = "random"
    valid: float = 0.1
    test: float = 0.1
    seed: int = 42
    valid_from: Optional[float] = None
    test_from: Optional[float] = None


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
        spec: dataset spec YAML (relative paths resolve against the config file's folder, then the cwd).
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
    """

    spec: str = ""
    path: Optional[str] = None
    batch_size: int = 4096
    eval_batch_size: Optional[int] = None
    in_memory: bool = True
    chunk_rows: int = 262144
    shuffle_buffer_chunks: int = 4
    max_rows: Optional[int] = None
    split: SplitConfig = field(default_factory=SplitConfig)
    scenarios: Optional[List[int]] = None
    side_columns: List[SideColumnsConfig] = field(default_factory=list)


@dataclass
class ModelConfig:
    """Which model and its options.

    Args:
        name: a name from the model registry (``recsys models`` lists them).
        embedding_dim: default embedding width for features whose spec gives none.
        params: model-specific options, checked against the model's config dataclass.
    """

    name: str = "wide_deep"
    embedding_dim: int = 16
    params: Dict[str, Any] = field(default_factory=dict)


@dataclass
class OptimizerConfig:
    """Dense-parameter optimizer (regular torch optimizer)."""

    name: Literal["adam", "adamw", "adagrad", "sgd"] = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    eps: float = 1e-8


@dataclass
class EmbeddingOptimizerConfig:
    """Embedding optimizer, fused into the FBGEMM backward (the gradient never materialises)."""

    name: Literal["rowwise_adagrad", "adagrad", "adam", "sgd"] = "rowwise_adagrad"
    lr: float = 0.05
    eps: float = 1e-8
    weight_decay: float = 0.0


@dataclass
class EarlyStoppingConfig:
    """Stop when the validation metric has not improved for ``patience`` evaluations.

    ``metric`` is a key of the evaluation report such as ``ctr/auc``, ``ctr/gauc`` or ``stay/rmse``.
    """

    metric: str = "auto"
    mode: Literal["max", "min", "auto"] = "auto"
    patience: int = 2


@dataclass
class TrainConfig:
    """The training loop.

    Args:
        epochs: passes over the training split.
        max_steps: stop after this many steps in total (overrides epochs when reached first).
        seed: seeds model init and data order.
        eval_every_steps: validate every N steps (default: at the end of each epoch).
        log_every_steps: TensorBoard scalar interval.
        grad_clip_norm: clip the dense gradients' norm (the fused embedding update has no gradient to clip).
        pipeline: ``sparse_dist`` overlaps input distribution with compute (TrainPipelineSparseDist);
            ``plain`` is a simple loop; ``auto`` picks ``sparse_dist`` on GPU.
        checkpoint_every_steps: also checkpoint every N steps (default: after each evaluation).
        keep_checkpoints: how many recent checkpoints to keep besides the best.
        progress: show tqdm progress bars.
    """

    epochs: int = 1
    max_steps: Optional[int] = None
    seed: int = 0
    dense_optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    embedding_optimizer: EmbeddingOptimizerConfig = field(default_factory=EmbeddingOptimizerConfig)
    task_weights: Dict[str, float] = field(default_factory=dict)
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    eval_every_steps: Optional[int] = None
    log_every_steps: int = 50
    grad_clip_norm: Optional[float] = None
    pipeline: Literal["auto", "sparse_dist", "plain"] = "auto"
    checkpoint_every_steps: Optional[int] = None
    keep_checkpoints: int = 2
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
    pooling_factor: Optional[float] = None
    min_partition: Optional[int] = None


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
    compute_kernel: Literal["fused", "dense", "fused_uvm_caching", "fused_uvm"] = "fused"
    tables: Dict[str, TableShardingConfig] = field(default_factory=dict)
    device_type: Literal["auto", "cpu", "h100", "h200"] = "auto"
    hbm_gb: Optional[float] = None
    ddr_gb: Optional[float] = None
    host_ddr_gb: Optional[float] = None
    bounds_check: Literal["fatal", "warning", "ignore", "none"] = "fatal"


@dataclass
class Config:
    """A whole run: data, model, training, sharding and where outputs go."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sharding: ShardingConfig = field(default_factory=ShardingConfig)
    run_dir: str = "runs/default"
    tensorboard: bool = True
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # folder of the YAML file; relative paths inside the config resolve against it first
    base_dir: str = field(default=".", metadata={"internal": True})

    def resolve(self, path: str) -> str:
        """A path from the config: absolute, else relative to the config's folder if it exists there, else
        to the current directory."""
        if os.path.isabs(path):
            return path
        candidate = os.path.join(self.base_dir, path)
        return candidate if os.path.exists(candidate) else path


# --- generic typed loading -----------------------------------------------------------------------------------
def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin is typing.Union:
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is not None:
        return f"{getattr(origin, '__name__', str(origin))}[{', '.join(_type_name(a) for a in typing.get_args(tp))}]"
    return getattr(tp, "__name__", str(tp))


def _convert(tp: Any, value: Any, where: str, source: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)

    def bad() -> ConfigError:
        return ConfigError(f"{source}: '{where}' must be {_type_name(tp)}, got {value!r}")

    if tp is Any:
        return value
    if origin is typing.Union:
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _convert(a, value, where, source)
            except ConfigError:
                continue
        raise bad()
    if origin is Literal:
        if value in args:
            return value
        close = difflib.get_close_matches(str(value), [str(a) for a in args], n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"{source}: '{where}' must be one of {list(args)}, got {value!r}{hint}")
    if dataclasses.is_dataclass(tp):
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
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:  # YAML 1.1 reads "1e-3" as a string
                return float(value)
            except ValueError:
                pass
        raise bad()
    if tp is str:
        if isinstance(value, str):
            return value
        raise bad()
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise bad()


def from_dict(cls: Type[T], data: Dict[str, Any], where: str = "", source: str = "config") -> T:
    """Build dataclass ``cls`` from ``data``, rejecting unknown keys (with a suggestion) and wrong types."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: '{where or 'top level'}' must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.5)
            hint = f"; did you mean '{close[0]}'?" if close else f"; valid keys: {', '.join(fields)}"
            raise ConfigError(f"{source}: unknown key '{path}'{hint}")
        kwargs[key] = _convert(hints[key], value, path, source)
    missing = [
        n for n, f in fields.items()
        if n not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"{source}: missing key '{(where + '.') if where else ''}{missing[0]}'")
    return cls(**kwargs)


def to_dict(obj: Any) -> Any:
    """A dataclass config as plain YAML-able data (internal fields left out)."""
    if dataclasses.is_dataclass(obj):
        return {
            f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj) if not f.metadata.get("internal")
        }
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


class _Loader(yaml.SafeLoader):
    """A safe loader with YAML 1.2 scalars: only true/false are booleans (so a key ``on:`` stays a string) and
    ``1e-3`` is a float."""


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
    """Parse YAML text safely (no object construction) with YAML 1.2 booleans."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader derives from SafeLoader


def read_yaml(path: str) -> Any:
    """Safely load a YAML file, with one-line errors naming the file and the line."""
    try:
        with open(path, encoding="utf-8") as f:
            return parse_yaml(f.read())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{path}:{line}: invalid YAML ({problem})") from None


def apply_overrides(data: Dict[str, Any], overrides: Sequence[str], source: str = "--set") -> Dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (values parsed as YAML) to a raw config mapping."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"{source}: '{item}' is not of the form key=value")
        key, raw = item.split("=", 1)
        try:
            value = parse_yaml(raw) if raw != "" else ""
        except yaml.YAMLError:
            raise ConfigError(f"{source}: value of '{key}' is not valid YAML: {raw!r}") from None
        node = data
        parts = key.strip().split(".")
        for p in parts[:-1]:
            child = node.get(p)
            if child is None:
                child = node[p] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"{source}: '{key}': '{p}' is not a section")
            node = child
        node[parts[-1]] = value
    return data


def load_config(path: Optional[str] = None, overrides: Sequence[str] = ()) -> Config:
    """Load a run config from YAML (or defaults when ``path`` is None) and apply overrides."""
    data: Dict[str, Any] = {}
    if path is not None:
        loaded = read_yaml(path)
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping")
        data = loaded
    data = apply_overrides(data, overrides)
    cfg = from_dict(Config, data, source=path or "config")
    cfg.base_dir = os.path.dirname(os.path.abspath(path)) if path else os.getcwd()
    validate_config(cfg, source=path or "config")
    return cfg


def validate_config(cfg: Config, source: str = "config") -> None:
    """Checks that span sections; data-dependent checks happen once the schema is known."""
    if cfg.data.batch_size < 1:
        raise ConfigError(f"{source}: 'data.batch_size' must be >= 1")
    if not 0 <= cfg.data.split.valid < 1 or not 0 <= cfg.data.split.test < 1:
        raise ConfigError(f"{source}: 'data.split.valid' and 'data.split.test' must be fractions in [0, 1)")
    if cfg.data.split.valid + cfg.data.split.test >= 1:
        raise ConfigError(f"{source}: 'data.split.valid' + 'data.split.test' must leave rows for training")
    if cfg.model.embedding_dim < 4 or cfg.model.embedding_dim % 4:
        raise ConfigError(f"{source}: 'model.embedding_dim' must be a positive multiple of 4 (FBGEMM), "
                          f"got {cfg.model.embedding_dim}")
    if cfg.train.epochs < 1:
        raise ConfigError(f"{source}: 'train.epochs' must be >= 1")
    valid_types = {"table_wise", "column_wise", "table_column_wise", "row_wise", "table_row_wise", "data_parallel"}
    for where, types in [("sharding.sharding_types", cfg.sharding.sharding_types)] + [
        (f"sharding.tables.{t}.sharding_types", c.sharding_types) for t, c in cfg.sharding.tables.items()
    ]:
        for st in types:
            if st not in valid_types:
                close = difflib.get_close_matches(st, sorted(valid_types), n=1)
                hint = f"; did you mean '{close[0]}'?" if close else ""
                raise ConfigError(f"{source}: '{where}' has unknown sharding type '{st}'{hint}")
    valid_kernels = {"fused", "dense", "fused_uvm_caching", "fused_uvm"}
    for name, c in cfg.sharding.tables.items():
        for kernel in c.compute_kernels:
            if kernel not in valid_kernels:
                close = difflib.get_close_matches(kernel, sorted(valid_kernels), n=1)
                hint = f"; did you mean '{close[0]}'?" if close else f"; kernels: {sorted(valid_kernels)}"
                raise ConfigError(f"{source}: 'sharding.tables.{name}.compute_kernels' has unknown kernel "
                                  f"'{kernel}'{hint}")
        if c.min_partition is not None and (c.min_partition < 4 or c.min_partition % 4):
            raise ConfigError(f"{source}: 'sharding.tables.{name}.min_partition' must be a positive multiple of 4 "
                              f"(FBGEMM), got {c.min_partition}")
    if cfg.sharding.ddr_gb is not None and cfg.sharding.host_ddr_gb is not None:
        raise ConfigError(f"{source}: give 'sharding.ddr_gb' (per rank) or 'sharding.host_ddr_gb' (per host), "
                          "not both")
    for key in ("hbm_gb", "ddr_gb", "host_ddr_gb"):
        value = getattr(cfg.sharding, key)
        if value is not None and value <= 0:
            raise ConfigError(f"{source}: 'sharding.{key}' must be > 0, got {value}")
    if cfg.device == "cpu" or (cfg.device == "auto" and not _cuda_available()):
        gpu_only = {"row_wise", "table_row_wise"} & (
            set(cfg.sharding.sharding_types) | {s for c in cfg.sharding.tables.values() for s in c.sharding_types}
        )
        if gpu_only:
            raise ConfigError(
                f"{source}: sharding type(s) {sorted(gpu_only)} need CUDA/NCCL; on CPU use table_wise, "
                "column_wise, table_column_wise or data_parallel"
            )
        uvm = {"fused_uvm_caching", "fused_uvm"} & (
            {cfg.sharding.compute_kernel} | {k for c in cfg.sharding.tables.values() for k in c.compute_kernels}
        )
        if uvm:
            raise ConfigError(f"{source}: compute kernel(s) {sorted(uvm)} need CUDA; on CPU use fused or dense")


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()
